"""Per-member quotas in bytes, through the real discord.py client and the fake Discord: what a
member stores (personal lorebooks, characters) is bounded in bytes as stored as well as in rows,
and past the bound the member is told the limit and nothing is stored."""

from __future__ import annotations

import asyncio
import json

import pytest

from synatra_bot.errors import QuotaReached
from synatra_bot.roleplay.config import DEFAULT_CHARACTER_MEGABYTES, character_megabytes
from synatra_bot.storage import repository as repo
from synatra_bot.storage.migrate import upgrade_database
from synatra_bot.storage.models import PersonalLorebook
from tests.db_helpers import (
    assert_kept_down_and_up,
    assert_old_scene_kept,
    opened,
    upgraded_from_0001,
)
from tests.prompt_helpers import v2_card
from tests.test_resources import owned


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


async def check_quotas_hold(sessions) -> None:
    """Saved at the same moment, a member's lorebooks and characters never pass their bytes
    quota as the database counts them; a refused save stores nothing. Shared with the
    PostgreSQL tests."""
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

    async def create(n: int) -> bool:
        try:
            await repo.create_character(
                sessions,
                owner_id=7,
                guild_id=1,
                name=f"캐릭터 {n}",
                max_bytes=quota,
                description="나" * 3000,
            )
        except QuotaReached as refused:
            assert refused.key == "error.character_quota"
            return False
        return True

    saved = await asyncio.gather(*(save(n) for n in range(12)))
    created = await asyncio.gather(*(create(n) for n in range(12)))
    kept = await repo.lorebooks_of(sessions, owner_id=7)
    assert 0 < sum(saved) == len(kept) < 12
    characters = await repo.characters_owned_by(sessions, owner_id=7)
    assert 0 < sum(created) == len(characters) < 12
    async with sessions() as session:
        books = PersonalLorebook.owner_id == 7
        assert await repo._bytes_owned(session, books, PersonalLorebook.book) <= quota
        mine = repo._characters_of(7, 1)
        assert await repo._bytes_owned(session, mine, *repo._CHARACTER_CONTENT) <= quota


async def test_quotas_hold_when_saved_at_the_same_moment(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'quota.db'}"
    await upgrade_database(url)
    async with opened(url) as sessions:
        await check_quotas_hold(sessions)


def heavy_card(name: str) -> tuple[str, bytes, str]:
    """A card JSON of about 700 KB as stored: four fields of 60,000 Hangul syllables."""
    text = "가나다라마바사아" * 7500
    card = v2_card(name=name, description=text, personality=text, scenario=text, first_mes=text)
    return (f"{name}.json", json.dumps(card, ensure_ascii=False).encode(), "application/json")


async def test_characters_past_the_members_bytes_in_a_server_are_refused(start_bot, tokenizer):
    async with start_bot() as harness:
        s = harness.scenario
        member = s.members[0]
        refused = await harness.slash(member, "config characters", megabytes=1)
        assert "관리자만" in await harness.final_text(refused)
        saved = await harness.slash(s.moderator, "config characters", megabytes=1)
        assert "character_megabytes=1" in await harness.final_text(saved)
        shown = await harness.final_text(await harness.slash(s.moderator, "config show"))
        assert "`character_megabytes` 1 MiB/member" in shown

        first = await harness.slash(member, "character import", file=heavy_card("무거운 하나"))
        assert "가져왔어요" in await harness.final_text(first)
        second = await harness.slash(member, "character import", file=heavy_card("무거운 둘"))
        text = await harness.final_text(second)
        assert second.ephemeral
        assert "여기서 내 캐릭터는 모두 합쳐 1.0 MiB까지 둘 수 있어요" in text
        assert "무거운 둘" not in await owned(harness, member, s.guild.id)
        # Each member has a quota of their own.
        other = await harness.slash(s.members[1], "character import", file=heavy_card("남의 것"))
        assert "가져왔어요" in await harness.final_text(other)
        # Raised by a moderator, there is room again.
        await harness.final_text(await harness.slash(s.moderator, "config characters", megabytes=2))
        again = await harness.slash(member, "character import", file=heavy_card("무거운 둘"))
        assert "가져왔어요" in await harness.final_text(again)


async def test_an_edit_past_the_owners_bytes_changes_nothing(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'quota.db'}"
    await upgrade_database(url)
    async with opened(url) as sessions:
        made = await repo.create_character(
            sessions, owner_id=7, guild_id=1, name="민지", max_bytes=100_000, description="짧다"
        )
        with pytest.raises(QuotaReached):
            await repo.update_character(
                sessions, character_id=made.id, max_bytes=100_000, description="가" * 40_000
            )
        kept = await repo.get_character(sessions, character_id=made.id)
        assert kept.description == "짧다"
        # Someone already over a lowered quota may still make a character smaller.
        await repo.update_character(sessions, character_id=made.id, description="가" * 20_000)
        smaller = await repo.update_character(
            sessions, character_id=made.id, max_bytes=1_000, description="가" * 10
        )
        assert smaller.description == "가" * 10


async def test_upgrade_to_0012_keeps_server_settings_with_the_default_quota(tmp_path):
    url, old = await upgraded_from_0001(tmp_path, "0011")
    async with opened(url) as sessions:
        await assert_old_scene_kept(sessions, old)
        guild = await repo.get_guild_settings(sessions, guild_id=old.guild_id)
        assert guild.character_megabytes is None
        assert character_megabytes(guild) == DEFAULT_CHARACTER_MEGABYTES
        await repo.update_guild_settings(sessions, guild_id=old.guild_id, character_megabytes=5)
        guild = await repo.get_guild_settings(sessions, guild_id=old.guild_id)
        assert character_megabytes(guild) == 5
    await assert_kept_down_and_up(url, "0011", old)
