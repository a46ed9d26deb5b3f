"""Gateway events as Discord really delivers them: twice now and then, deletes and edits racing
the line they change, and sessions that cannot be resumed. The real bot against the fake
Discord: each line is handled once, and what the story keeps is what the channel shows."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, datetime, timedelta

import discord
import pytest

from synatra_bot.discord.catchup import LATE_AFTER
from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.roleplay.lines import Lines
from synatra_bot.storage import repository as repo
from synatra_bot.storage.database import create_engine, create_sessionmaker
from synatra_bot.storage.migrate import upgrade_database
from tests.bot_harness import BotHarness, eventually, has_buttons
from tests.db_helpers import postgres_server

STORY = "옛날 옛적에 작은 마을에 이야기꾼이 살았어. " * 12


def answering_the_newest_line(prompt: str) -> str:
    """A scripted reply that quotes the newest player line, so a test sees what it answers."""
    blocks = [b.split("<|im_end|>", 1)[0].strip() for b in prompt.split("<|im_start|>")]
    users = [b for b in blocks if b.startswith("user")]
    newest = users[-1].splitlines()[-1] if users else ""
    return f"「{newest.split(': ', 1)[-1]}」에 답할게."


def replies_in(channel, after: int = 0) -> list:
    """The characters' messages still on screen, newer than message id `after`."""
    return [m for m in channel.messages if m.webhook_id and not m.deleted and m.id > after]


def notices_in(fake, channel) -> list:
    """What the bot itself posted in the channel: not as a character, not answering a command."""
    return [
        m
        for m in channel.messages
        if m.author is not None
        and m.author.id == fake.bot_user.id
        and not m.webhook_id
        and m.interaction_id is None
    ]


async def history_of(harness: BotHarness, channel) -> list:
    active = await repo.get_active_session(harness.sessions, channel_id=channel.id)
    return await repo.recent_history(harness.sessions, session_id=active.id, limit=100)


async def answered(harness: BotHarness, channel, message) -> object:
    """The character's reply to `message`, once it is final."""
    reply = await harness.fake.wait_for_message(
        channel, lambda m: m.webhook_id is not None, after=message
    )
    await harness.fake.wait_until(lambda: has_buttons(reply), timeout=20)
    return reply


@contextlib.asynccontextmanager
async def database_locked(path):
    """Another connection holds SQLite's write lock: the bot's statements wait on it. (Taken
    in a thread: the bot may be inside a transaction that needs the event loop to end.)"""
    other = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    try:
        await asyncio.to_thread(other.execute, "BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
    finally:
        other.close()


async def events_handled(harness: BotHarness, channel) -> None:
    """Return once the bot has handled every gateway event sent before this: a command that
    needs no database, answered in the order its event came."""
    record = await harness.fake.slash(harness.scenario.moderator, "rp cast list", channel=channel)
    await harness.fake.wait_for_response(record)


def held_back(monkeypatch, owner: object, name: str) -> tuple[asyncio.Event, asyncio.Event]:
    """The bot's coroutine method `owner.name`, held at each call until `release` is set:
    (`reached`, set when a call begins; `release`)."""
    reached, release = asyncio.Event(), asyncio.Event()
    method = getattr(owner, name)

    async def held(*args, **kwargs):
        reached.set()
        await release.wait()
        return await method(*args, **kwargs)

    monkeypatch.setattr(owner, name, held)
    return reached, release


# --- each message once -----------------------------------------------------------------------


def test_a_line_the_process_may_not_remember_is_looked_up_in_the_database():
    start = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    lines = Lines(limit=2, clock=lambda: start)
    sent_before_start = lines.take(1, start - timedelta(minutes=5))
    assert lines.unsure(sent_before_start)  # the process before may have taken it
    second = lines.take(2, start + timedelta(minutes=2))
    assert not lines.unsure(second)
    assert lines.take(2, start + timedelta(minutes=2)) is None  # taken: delivered again
    lines.take(3, start + timedelta(minutes=3))
    lines.take(4, start + timedelta(minutes=4))  # room for two: line 2 is forgotten
    again = lines.take(2, start + timedelta(minutes=2))
    assert again is not None and lines.unsure(again)
    assert not lines.unsure(lines.take(5, start + timedelta(minutes=5)))


async def test_a_message_delivered_twice_is_answered_and_stored_once(start_bot, tokenizer):
    engine = ScriptedEngine(answering_the_newest_line, tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        greeting = replies_in(s.general)[0]

        # Both copies arrive back to back, before the first is stored.
        twice = await fake.say(s.general, s.members[0], "두 번 배달된 말", duplicate=True)
        first_reply = await answered(harness, s.general, twice)
        # And once more after it is stored and answered.
        await fake.dispatch("MESSAGE_CREATE", twice.payload(with_member=True), s.guild.id)
        then = await fake.say(s.general, s.members[1], "그다음 말")
        after = await answered(harness, s.general, then)

        assert replies_in(s.general, greeting.id) == [first_reply, after]
        assert first_reply.content == "「두 번 배달된 말」에 답할게."
        history = await history_of(harness, s.general)
        assert [m.role for m in history] == ["assistant", "user", "assistant", "user", "assistant"]
        assert [m.discord_message_id for m in history if m.role == "user"] == [twice.id, then.id]
        assert len(engine.prompts) == 2


async def test_a_line_the_previous_process_stored_is_not_taken_again_after_a_restart(
    start_bot, tmp_path
):
    database = f"sqlite+aiosqlite:///{tmp_path / 'restart.db'}"
    async with start_bot(database=database) as harness:
        s = harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        said = await harness.fake.say(s.general, s.members[0], "재시작 전에 한 말")
        await answered(harness, s.general, said)
    async with start_bot(database=database) as harness:
        fake, s = harness.fake, harness.scenario
        shown = len(replies_in(s.general))
        # The new process gets the line again (an event replayed to it, or read back).
        await fake.dispatch("MESSAGE_CREATE", said.payload(with_member=True), s.guild.id)
        after = await harness.reply_to(s.general, s.members[1], "재시작 후에 한 말")

        assert replies_in(s.general)[shown:] == [after]
        history = await history_of(harness, s.general)
        assert [m.role for m in history] == ["assistant", "user", "assistant", "user", "assistant"]
        assert [m.content for m in history if m.role == "user"] == [
            "재시작 전에 한 말",
            "재시작 후에 한 말",
        ]


# --- deletes and edits -----------------------------------------------------------------------


async def test_a_line_deleted_while_its_reply_streams_stops_the_reply_and_leaves_nothing(
    start_bot,
):
    engine = ScriptedEngine(STORY, delay_s=0.03)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        said = await fake.say(s.general, s.members[0], "곧 지울 말")
        reply = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=said
        )
        await fake.wait_until(lambda: "옛날" in reply.content)

        await fake.delete(said)
        await fake.wait_until(lambda: reply.deleted)  # the half reply is taken off screen
        assert engine.cancelled  # and its generation stopped

        async def only_the_greeting():
            history = await history_of(harness, s.general)
            return [m.role for m in history] == ["assistant"]

        assert await eventually(only_the_greeting)
        after = await harness.reply_to(s.general, s.members[1], "다음 사람의 말")
        assert after.content == STORY.strip()
        assert "곧 지울 말" not in engine.prompts[-1]
        history = await history_of(harness, s.general)
        assert [m.content for m in history if m.role == "user"] == ["다음 사람의 말"]


async def test_a_line_deleted_before_it_is_stored_is_neither_answered_nor_kept(
    start_bot, monkeypatch
):
    async with start_bot() as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        greeting = replies_in(s.general)[0]
        # The delete comes while the bot is still choosing who answers the line: nothing of it
        # is stored yet.
        choosing, chosen = held_back(monkeypatch, harness.bot.turns, "responders")

        said = await fake.say(s.general, s.members[0], "보내자마자 지운 말")
        await choosing.wait()
        await fake.delete(said)
        await events_handled(harness, s.general)
        chosen.set()
        after = await harness.reply_to(s.general, s.members[1], "그다음 말")

        assert replies_in(s.general, greeting.id) == [after]
        history = await history_of(harness, s.general)
        assert [m.content for m in history if m.role == "user"] == ["그다음 말"]
        active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        assert await repo.has_discord_messages(harness.sessions, [(active.id, said.id)]) == [False]


async def test_an_edit_made_while_the_line_is_being_stored_reaches_the_story(start_bot, tmp_path):
    database = tmp_path / "locked.db"
    async with start_bot(database=f"sqlite+aiosqlite:///{database}") as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)

        async with database_locked(database):
            said = await fake.say(s.general, s.members[0], "오타가 잇는 말")
            await fake.edit(said, "오타를 고친 말")
            await events_handled(harness, s.general)
        await answered(harness, s.general, said)

        async def edited():
            history = await history_of(harness, s.general)
            users = [m for m in history if m.role == "user"]
            return len(users) == 1 and users[0].content == "오타를 고친 말" and users[0].edited_at

        assert await eventually(edited)


# --- a session replaced instead of resumed ---------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'scenes.db'}"
        return
    with postgres_server() as server:
        if server is None:
            pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
        yield server.create_database("gateway")


async def test_the_scenes_to_read_back_are_the_running_ones_with_their_newest_message(
    database_url,
):
    await upgrade_database(database_url)
    engine = create_engine(database_url)
    sessions = create_sessionmaker(engine)
    # Discord snowflakes, as large as real ones.
    here, elsewhere, player = 1579401778347114498, 1579401778347114499, 1579401778347114500
    try:
        character = await repo.create_character(
            sessions, owner_id=player, guild_id=here, name="민지"
        )

        async def scene(guild_id, channel_id, *discord_ids):
            started = await repo.start_session(
                sessions,
                guild_id=guild_id,
                channel_id=channel_id,
                parent_channel_id=None,
                character_id=character.id,
                started_by=player,
            )
            for discord_id in discord_ids:
                await repo.add_message(
                    sessions,
                    session_id=started.id,
                    role="user",
                    content="말",
                    author_id=player,
                    discord_message_ids=[discord_id],
                )
            return started

        ended = await scene(here, here + 10, here + 100)
        replaced = await scene(here, here + 10, here + 200)  # the channel's running scene now
        quiet = await scene(here, here + 11)
        busy = await scene(here, here + 12, here + 300, here + 150)
        await repo.add_removed_message(
            sessions,
            session_id=busy.id,
            role="user",
            content="늦게 읽힌 말",
            author_id=player,
            discord_message_ids=[here + 400],
        )
        await scene(elsewhere, elsewhere + 20, here + 500)
        dm = await scene(None, player + 1, here + 250)

        found = await repo.active_scenes(sessions, guild_ids=[here], dms=True, limit=10)
        assert [(s.id, newest) for s, newest in found] == [
            (busy.id, here + 400),
            (dm.id, here + 250),
            (replaced.id, here + 200),
            (quiet.id, None),
        ]
        found = await repo.active_scenes(sessions, guild_ids=[here], dms=False, limit=2)
        assert [s.id for s, _ in found] == [busy.id, replaced.id]
        assert ended.id not in [s.id for s, _ in found]
        assert await repo.has_discord_messages(
            sessions, [(busy.id, here + 400), (replaced.id, here + 400)]
        ) == [True, False]
        history = await repo.recent_history(sessions, session_id=busy.id, limit=10)
        assert [m.content for m in history] == ["말", "말"]  # the removed line is not shown
    finally:
        await engine.dispose()


async def test_lines_sent_while_the_session_was_replaced_are_answered_in_order(
    start_bot, tokenizer
):
    engine = ScriptedEngine(answering_the_newest_line, tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        harness.identify_at_once()
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        await harness.reply_to(s.general, s.members[0], "끊기기 전의 말")

        async with fake.gateway_outage():
            await fake.invalidate_session()
            missed = [
                await fake.say(s.general, s.members[0], "끊긴 동안 한 말"),
                await fake.say(s.general, s.members[1], "나도 끊긴 동안 한마디"),
            ]
        await fake.wait_until(
            lambda: (
                len(replies_in(s.general, missed[-1].id)) == 2
                and all(has_buttons(m) for m in replies_in(s.general, missed[-1].id))
            ),
            timeout=20,
        )

        assert (fake.invalid_session_count, fake.resume_count, fake.identify_count) == (1, 0, 2)
        assert [m.content for m in replies_in(s.general, missed[-1].id)] == [
            "「끊긴 동안 한 말」에 답할게.",
            "「나도 끊긴 동안 한마디」에 답할게.",
        ]
        history = await history_of(harness, s.general)
        assert [m.role for m in history] == ["assistant"] + ["user", "assistant"] * 3
        users = [m for m in history if m.role == "user"][1:]
        assert [m.discord_message_id for m in users] == [m.id for m in missed]
        assert notices_in(fake, s.general) == []


async def test_a_dm_line_sent_while_the_session_was_replaced_is_answered(start_bot, tokenizer):
    engine = ScriptedEngine(answering_the_newest_line, tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        harness.identify_at_once()
        user = s.members[0]
        character = await harness.character(user)
        dm = fake.open_dm(user)
        record = await harness.slash(user, "rp start", channel=dm, character=str(character))
        await harness.final_text(record)
        await fake.wait_for_message(dm, lambda m: m.content.startswith("**민지**"), after=0)

        async with fake.gateway_outage():
            await fake.invalidate_session()
            missed = await fake.say(dm, user, "DM에서 끊긴 동안 한 말")
        reply = await fake.wait_for_message(dm, lambda m: m.author.id == fake.bot_user.id)
        await fake.wait_until(lambda: has_buttons(reply), timeout=20)

        assert reply.content == "**민지**\n「DM에서 끊긴 동안 한 말」에 답할게."
        history = await history_of(harness, dm)
        assert [(m.role, m.discord_message_id) for m in history][1:] == [
            ("user", missed.id),
            ("assistant", reply.id),
        ]


async def test_lines_too_old_when_read_back_are_told_once_and_kept_out_of_the_story(
    start_bot, tokenizer
):
    engine = ScriptedEngine(answering_the_newest_line, tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        harness.identify_at_once()
        catch_up = harness.bot.get_cog("Roleplay").catch_up
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)

        async with fake.gateway_outage():
            await fake.invalidate_session()
            old = await fake.say(s.general, s.members[0], "한참 전에 한 말")
            await asyncio.sleep(0.005)  # the two lines some milliseconds apart
            recent = await fake.say(s.general, s.members[1], "방금 한 말")
            # Read back when the first line is just past the limit and the second is not.
            sent = discord.utils.snowflake_time(old.id)
            gap = discord.utils.snowflake_time(recent.id) - sent
            assert gap.total_seconds() >= 0.002
            read_at: datetime = sent + LATE_AFTER + gap / 2
            catch_up.clock = lambda: read_at

        reply = await answered(harness, s.general, recent)
        assert reply.content == "「방금 한 말」에 답할게."
        [notice] = notices_in(fake, s.general)
        assert "1개" in notice.content and "10분" in notice.content  # the server's Korean
        assert notice.reference["message_id"] == str(old.id)
        assert notice.id < reply.id
        history = await history_of(harness, s.general)
        assert [m.content for m in history if m.role == "user"] == ["방금 한 말"]

        # Another lost session later: what was told is not told again.
        catch_up.clock = discord.utils.utcnow
        async with fake.gateway_outage():
            await fake.invalidate_session()
            again = await fake.say(s.general, s.members[0], "또 끊긴 동안 한 말")
        await answered(harness, s.general, again)
        assert fake.identify_count == 3
        assert notices_in(fake, s.general) == [notice]
        history = await history_of(harness, s.general)
        assert [m.content for m in history if m.role == "user"] == [
            "방금 한 말",
            "또 끊긴 동안 한 말",
        ]
        assert not any("한참 전에 한 말" in prompt for prompt in engine.prompts)
