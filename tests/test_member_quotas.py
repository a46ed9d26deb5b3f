"""Per-member quotas in bytes, through the real discord.py client and the fake Discord: what a
member stores (personal lorebooks, characters) is bounded in bytes as stored as well as in rows,
and past the bound the member is told the limit and nothing is stored."""

from __future__ import annotations

import asyncio
import json

from synatra_bot.errors import QuotaReached
from synatra_bot.storage import repository as repo
from synatra_bot.storage.migrate import upgrade_database
from synatra_bot.storage.models import PersonalLorebook
from tests.db_helpers import opened


def big_book(name: str, entries: int) -> tuple[str, bytes, str]:
    """A lorebook file of `entries` entries of 2,000 Hangul syllables each."""
    book = {
        "name": name,
        "entries": {
            str(n): {"uid": n, "key": [f"열쇠{n}"], "content": "가나다라" * 500, "position": 1}
            for n in range(entries)
        },
    }
    return (f"{name}.json", json.dumps(book, ensure_ascii=False).encode(), "application/json")


async def test_lorebooks_past_the_members_bytes_are_refused_and_shrinking_is_allowed(
    start_bot, tokenizer
):
    async with start_bot(env={"LOREBOOK_QUOTA_BYTES": str(64 * 1024)}) as harness:
        s = harness.scenario
        member = s.members[0]
        first = await harness.slash(member, "lorebook import", file=big_book("마을", 4))
        assert "내 로어북으로 저장했어요" in await harness.final_text(first)

        second = await harness.slash(member, "lorebook import", file=big_book("숲", 4))
        text = await harness.final_text(second)
        assert second.ephemeral and "로어북은 모두 합쳐 64 KiB까지 둘 수 있어요" in text
        books = await repo.lorebooks_of(harness.sessions, owner_id=member.user.id)
        assert [book.name for book in books] == ["마을"]

        # Replaced by a smaller book of the same name, and room is left for another.
        smaller = await harness.slash(member, "lorebook import", file=big_book("마을", 1))
        assert "내 로어북으로 저장했어요" in await harness.final_text(smaller)
        small = await harness.slash(member, "lorebook import", file=big_book("숲", 1))
        assert "내 로어북으로 저장했어요" in await harness.final_text(small)
        books = await repo.lorebooks_of(harness.sessions, owner_id=member.user.id)
        assert sorted(len(book.book["entries"]) for book in books) == [1, 1]

        # Another member's quota is their own.
        other = await harness.slash(s.members[1], "lorebook import", file=big_book("바다", 4))
        assert "내 로어북으로 저장했어요" in await harness.final_text(other)


async def check_lorebook_bytes_hold(sessions) -> None:
    """Saved at the same moment, a member's lorebooks never pass their bytes quota as the
    database counts them; a refused save stores nothing. Shared with the PostgreSQL tests."""
    book = {"entries": [{"keys": ["열쇠"], "content": "가" * 3000}]}
    quota = 40_000

    async def save(n: int) -> bool:
        try:
            await repo.save_lorebook(
                sessions, owner_id=7, name=f"책 {n}", book=book, max_owned=50, max_bytes=quota
            )
        except QuotaReached as refused:
            assert refused.key == "error.lorebook_quota"
            return False
        return True

    saved = await asyncio.gather(*(save(n) for n in range(12)))
    kept = await repo.lorebooks_of(sessions, owner_id=7)
    assert 0 < sum(saved) == len(kept) < 12
    async with sessions() as session:
        used = await repo._bytes_owned(
            session, PersonalLorebook.owner_id == 7, PersonalLorebook.book
        )
    assert used <= quota


async def test_lorebook_bytes_hold_when_saved_at_the_same_moment(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'quota.db'}"
    await upgrade_database(url)
    async with opened(url) as sessions:
        await check_lorebook_bytes_hold(sessions)
