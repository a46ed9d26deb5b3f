"""Per-member quotas on imported and branched scenes, through the real discord.py client and the
fake Discord: the rows and bytes a member's copied scenes hold in a server are bounded (a
moderator sets the bounds), so branching a scene again and again or importing chat after chat
stops at the bound with a message naming it, and nothing more is stored."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from synatra_bot.errors import QuotaReached, SceneRowsReached
from synatra_bot.roleplay.config import DEFAULT_SCENE_MEGABYTES, DEFAULT_SCENE_ROWS, scene_quota
from synatra_bot.storage import archives
from synatra_bot.storage import repository as repo
from synatra_bot.storage.archives import ImportedTurn, SceneQuota
from synatra_bot.storage.migrate import upgrade_database
from synatra_bot.storage.models import Message, RoleplaySession
from tests.db_helpers import (
    assert_kept_down_and_up,
    assert_old_scene_kept,
    opened,
    upgraded_from_0001,
)
from tests.test_import_limits import (
    chat_file,
    import_file,
    line,
    numbered_replies,
    open_channel,
    scene_count,
)
from tests.test_scene_rules import member_scene, webhook_messages
from tests.test_scene_rules import numbered_replies as numbered_replies_plain


async def copied_usage(sessions, member_id: int, guild_id: int | None) -> tuple[int, int]:
    async with sessions() as session:
        return await archives._copied_usage(session, started_by=member_id, guild_id=guild_id)


async def test_branches_past_the_members_rows_are_refused_naming_the_limit(start_bot, tokenizer):
    async with start_bot(engine=numbered_replies(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        member = s.members[0]
        await open_channel(harness)
        await harness.final_text(
            await harness.slash(s.moderator, "config ratelimit", channel=s.general, per_minute=60)
        )
        refused = await harness.slash(member, "config archive", rows=10)
        assert "관리자만" in await harness.final_text(refused)
        saved = await harness.slash(s.moderator, "config archive", rows=10)
        assert "scene_rows=10" in await harness.final_text(saved)
        shown = await harness.final_text(await harness.slash(s.moderator, "config show"))
        assert "`scene_rows` 10/member" in shown

        hers = await harness.character(member, "하늘")
        data = chat_file(
            line("안녕, 하늘.", is_user=True),
            line("어서 와.", is_user=False),
            line("오늘은 바다에 가자.", is_user=True),
            line("좋아, 가자.", is_user=False),
        )
        assert "4개" in await import_file(harness, member, s.general, hers, data)
        first = await harness.slash(member, "rp branch", channel=s.general)
        assert "새 갈래" in await harness.final_text(first)
        assert await copied_usage(harness.sessions, member.user.id, s.guild.id) == (8, _bytes(8))
        branch = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        before = await scene_count(harness)

        second = await harness.slash(member, "rp branch", channel=s.general)
        text = await harness.final_text(second)
        assert second.ephemeral
        assert "가져오거나 갈라낸 장면은 모두 합쳐 10줄까지" in text and "12줄" in text
        menu = await fake.message_command(
            member, "Branch from here", webhook_messages(s.general)[-1]
        )
        assert "10줄까지" in await harness.final_text(menu)
        assert await scene_count(harness) == before
        running = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        assert running.id == branch.id

        # Raised by a moderator, there is room again.
        await harness.final_text(await harness.slash(s.moderator, "config archive", rows=12))
        third = await harness.slash(member, "rp branch", channel=s.general)
        assert "새 갈래" in await harness.final_text(third)
        assert (await copied_usage(harness.sessions, member.user.id, s.guild.id))[0] == 12


def _bytes(rows: int) -> int:
    """The bytes of the chat's lines, `rows` of them taken from the start (the chat repeats)."""
    texts = ["안녕, 하늘.", "어서 와.", "오늘은 바다에 가자.", "좋아, 가자."]
    return sum(len(texts[n % 4].encode()) for n in range(rows))


async def test_imports_past_the_members_bytes_are_refused_and_nothing_is_stored(
    start_bot, tokenizer
):
    async with start_bot(engine=numbered_replies(tokenizer)) as harness:
        s = harness.scenario
        member = s.members[0]
        await open_channel(harness)
        saved = await harness.slash(s.moderator, "config archive", megabytes=1)
        assert "scene_megabytes=1" in await harness.final_text(saved)
        hers = await harness.character(member, "하늘")
        heavy = "가나다라마바사아" * 6_250  # 150 KB as stored; four lines are 600 KB
        data = chat_file(*(line(heavy, is_user=n % 2 == 0) for n in range(4)))

        assert "4개" in await import_file(harness, member, s.general, hers, data)
        imported = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        before = await scene_count(harness)
        text = await import_file(harness, member, s.general, hers, data)
        assert "가져오거나 갈라낸 장면은 모두 합쳐 1.0 MiB까지" in text and "1.1 MiB" in text
        assert await scene_count(harness) == before
        running = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        assert running.id == imported.id

        # A chat that fits in what is left is imported.
        small = chat_file(line("짧게.", is_user=True), line("응.", is_user=False))
        assert "2개" in await import_file(harness, member, s.general, hers, small)


async def test_scenes_played_here_do_not_count(start_bot):
    async with start_bot(engine=numbered_replies_plain()) as harness:
        s = harness.scenario
        member = s.members[0]
        await member_scene(harness, member)
        await harness.reply_to(s.general, member, "안녕")
        assert await copied_usage(harness.sessions, member.user.id, s.guild.id) == (0, 0)
        assert scene_quota(None) == (DEFAULT_SCENE_ROWS, DEFAULT_SCENE_MEGABYTES)


async def test_scene_quota_holds_when_imported_and_branched_at_the_same_moment(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'scenes.db'}"
    await upgrade_database(url)
    async with opened(url) as sessions:
        await check_scene_quota_holds(sessions)


async def check_scene_quota_holds(sessions) -> None:
    """Imports and branches of one member at the same moment never take their copied scenes
    past the quota as the database counts them; a refused one stores nothing. Shared with the
    PostgreSQL tests (its own member and server there)."""
    member, guild = 4242, 4343
    character = await repo.create_character(sessions, owner_id=member, guild_id=guild, name="하늘")
    turns = [ImportedTurn(role="user", options=(f"말 {n}",), author_id=member) for n in range(4)]
    quota = SceneQuota(rows=22, bytes=1024 * 1024)

    async def imported(channel_id: int) -> archives.SessionRecord:
        return await archives.import_scene(
            sessions,
            guild_id=guild,
            channel_id=channel_id,
            parent_channel_id=None,
            character_id=character.id,
            started_by=member,
            turns=turns,
            quota=quota,
        )

    first = await imported(44_000)
    newest = (await repo.recent_history(sessions, session_id=first.id, limit=1))[-1]

    async def stored(attempt) -> bool:
        try:
            await attempt
        except (SceneRowsReached, QuotaReached) as refused:
            assert refused.key == "error.scene_rows_quota"
            return False
        return True

    attempts = [imported(44_001 + n) for n in range(5)] + [
        archives.branch_scene(sessions, message_id=newest.id, started_by=member, quota=quota)
        for _ in range(5)
    ]
    results = await asyncio.gather(*(stored(attempt) for attempt in attempts))
    rows, _ = await copied_usage(sessions, member, guild)
    assert rows <= quota.rows
    assert rows == 4 * (1 + sum(results))
    assert 0 < sum(results) < len(results)
    mine = select(RoleplaySession.id).where(RoleplaySession.started_by == member)
    async with sessions() as session:
        scenes = await session.scalar(select(func.count()).select_from(mine.subquery()))
        messages = await session.scalar(
            select(func.count(Message.id)).where(Message.session_id.in_(mine))
        )
    assert (scenes, messages) == (1 + sum(results), rows)


async def test_upgrade_to_0013_keeps_scenes_uncounted_and_servers_on_the_default_quota(tmp_path):
    url, old = await upgraded_from_0001(tmp_path, "0012")
    async with opened(url) as sessions:
        await assert_old_scene_kept(sessions, old)
        guild = await repo.get_guild_settings(sessions, guild_id=old.guild_id)
        assert scene_quota(guild) == (DEFAULT_SCENE_ROWS, DEFAULT_SCENE_MEGABYTES)
        assert await copied_usage(sessions, old.player_id, old.guild_id) == (0, 0)
        await repo.update_guild_settings(sessions, guild_id=old.guild_id, scene_rows=5)
        guild = await repo.get_guild_settings(sessions, guild_id=old.guild_id)
        assert scene_quota(guild) == (5, DEFAULT_SCENE_MEGABYTES)
    await assert_kept_down_and_up(url, "0012", old)


async def test_the_recall_index_of_copied_scenes_counts_in_the_bytes_quota(tmp_path):
    """A copied scene's search terms and vectors (one row of each per turn, at most) count
    with its text, so indexing and embedding it cannot grow what a member keeps past the
    quota; indexing the same turns again after an edit adds nothing."""
    from synatra_bot.prompt.terms import KoreanTerms
    from synatra_bot.roleplay.embedded_recall import TurnEmbeddings
    from synatra_bot.roleplay.recall import TurnRecall
    from synatra_bot.storage.models import MessageTerms, MessageVector
    from tests.test_embedded_recall import DIMENSIONS, ConceptEmbedder

    url = f"sqlite+aiosqlite:///{tmp_path / 'scenes.db'}"
    await upgrade_database(url)
    member, guild = 4242, 4343
    texts = ["고양이 나비는 축제에서 만났어.", "버스가 늦었다.", "점심은 김치찌개.", "비가 온다."]
    turns = [ImportedTurn(role="user", options=(text,), author_id=member) for text in texts]
    text_bytes = sum(len(text.encode()) for text in texts)
    terms = KoreanTerms()
    terms.load()
    async with opened(url) as sessions:
        character = await repo.create_character(
            sessions, owner_id=member, guild_id=guild, name="하늘"
        )

        async def imported(channel_id: int, quota: SceneQuota | None = None):
            return await archives.import_scene(
                sessions,
                guild_id=guild,
                channel_id=channel_id,
                parent_channel_id=None,
                character_id=character.id,
                started_by=member,
                turns=turns,
                quota=quota,
            )

        scene = await imported(45_000)
        assert await copied_usage(sessions, member, guild) == (4, text_bytes)
        recall = TurnRecall(
            sessions,
            terms=terms,
            embeddings=TurnEmbeddings(sessions, ConceptEmbedder(), query_timeout_s=5),
        )
        try:
            await recall.recall(
                session_id=scene.id, query="나비", before_id=10**9, budget=100, count=len
            )
            await recall.settled()
            async with sessions() as session:
                terms_bytes = sum(
                    len(t.encode()) for t in (await session.scalars(select(MessageTerms.terms)))
                )
                vectors = await session.scalar(select(func.count(MessageVector.message_id)))
            indexed = text_bytes + terms_bytes + vectors * DIMENSIONS * 4
            assert vectors == 4 and terms_bytes > 0
            assert await copied_usage(sessions, member, guild) == (4, indexed)

            # Indexed again after an edit: one row of each per turn still.
            first = (await repo.recent_history(sessions, session_id=scene.id, limit=10))[0]
            await recall.turns_changed(scene.id, first.id)
            await recall.settled()
            assert await copied_usage(sessions, member, guild) == (4, indexed)
        finally:
            await recall.close()

        # Room for the next import's text, not with what the index already takes.
        quota = SceneQuota(rows=100, bytes=2 * text_bytes + (indexed - text_bytes) - 1)
        try:
            await imported(45_001, quota)
        except QuotaReached as refused:
            assert refused.key == "error.scene_quota"
        else:
            raise AssertionError("the import went past the quota")
        assert await copied_usage(sessions, member, guild) == (4, indexed)
