"""The database misbehaving under the running bot: PostgreSQL restarting, SQLite locked by another
process past its busy timeout, the SQLite file removed or replaced. No line is lost without its
player being told, and nothing is written where it would be lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from synatra_bot.discord.i18n import t
from synatra_bot.errors import StorageUnavailable
from synatra_bot.storage import repository as repo
from synatra_bot.storage.database import create_engine, create_sessionmaker
from synatra_bot.storage.migrate import upgrade_database
from synatra_bot.storage.models import Message
from synatra_bot.storage.retry import Patience, retrying
from tests.bot_harness import BotHarness, eventually, has_buttons
from tests.db_helpers import postgres_server

#: The fake's servers speak Korean.
LOCALE = "ko"


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of this module's own, as the tests here restart it."""
    with postgres_server() as server:
        if server is None:
            pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
        yield server


async def history_of(harness: BotHarness, channel) -> list:
    active = await repo.get_active_session(harness.sessions, channel_id=channel.id)
    return await repo.recent_history(harness.sessions, session_id=active.id, limit=100)


async def idle(harness: BotHarness, session_id: int) -> bool:
    memory = harness.bot.core.memory
    return memory is None or not memory.updating(session_id)


def errors_in(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def texts_after(channel, message) -> list[str]:
    """What the bot and the characters posted after `message`, each edit included."""
    return [
        version.get("content") or ""
        for m in channel.messages
        if m.id > message.id and not m.from_test
        for version in m.versions
    ]


async def told(fake, channel, message, text: str) -> None:
    await fake.wait_until(lambda: any(text in posted for posted in texts_after(channel, message)))


# --- PostgreSQL restarts ---------------------------------------------------------------------


async def test_a_postgresql_restart_between_two_lines_loses_neither(start_bot, postgres, caplog):
    database = postgres.create_database("restart_between_lines")
    async with start_bot(database=database) as harness:
        s = harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)
        before = await harness.reply_to(s.general, s.members[0], "재시작 전에 한 말이야")
        assert has_buttons(before)
        # The scene's memory looks at the history after each reply: the restart comes once
        # the bot is idle, between two lines, as a host's maintenance would.
        scene = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        assert await eventually(lambda: idle(harness, scene.id))

        # Maintenance: every pooled connection of the bot's is cut.
        await asyncio.to_thread(postgres.restart)

        after = await harness.reply_to(s.general, s.members[0], "재시작 뒤에 한 말도 기억해?")
        assert has_buttons(after)
        history = await history_of(harness, s.general)
    assert [(m.role, m.content) for m in history if m.role == "user"] == [
        ("user", "재시작 전에 한 말이야"),
        ("user", "재시작 뒤에 한 말도 기억해?"),
    ]
    assert [m.role for m in history] == ["assistant", "user", "assistant", "user", "assistant"]
    assert history[-1].discord_message_ids == (after.id,)
    assert errors_in(caplog) == []


@contextlib.asynccontextmanager
async def scene_on(url: str) -> AsyncIterator[tuple]:
    """A migrated database with a scene in it, through the bot's own engine settings."""
    await upgrade_database(url)
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    try:
        character = await repo.create_character(sessions, owner_id=1, guild_id=2, name="민지")
        scene = await repo.start_session(
            sessions,
            guild_id=2,
            channel_id=3,
            parent_channel_id=None,
            character_id=character.id,
            started_by=1,
        )
        yield engine, sessions, scene
    finally:
        await engine.dispose()


async def _lines(sessions, content: str) -> int:
    async with sessions() as session:
        return await session.scalar(
            select(func.count()).select_from(Message).where(Message.content == content)
        )


async def test_a_unit_of_work_whose_connection_drops_runs_again_once_and_stores_once(postgres):
    async with scene_on(postgres.create_database("dropped_once")) as (_, sessions, scene):
        tries = 0

        async def store_line() -> None:
            nonlocal tries
            tries += 1
            async with sessions.begin() as session:
                session.add(Message(session_id=scene.id, role="user", content="끊겨도 한 번만"))
                await session.flush()
                if tries == 1:  # the server restarts in the middle of the first try
                    await asyncio.to_thread(postgres.restart, "immediate")
                await session.execute(text("SELECT 1"))

        await retrying(store_line, Patience())
        assert tries == 2
        assert await _lines(sessions, "끊겨도 한 번만") == 1


async def test_a_unit_of_work_whose_connection_drops_twice_is_not_tried_a_third_time(postgres):
    async with scene_on(postgres.create_database("dropped_twice")) as (_, sessions, scene):
        tries = 0

        async def store_line() -> None:
            nonlocal tries
            tries += 1
            async with sessions.begin() as session:
                session.add(Message(session_id=scene.id, role="user", content="두 번 끊긴 말"))
                await session.flush()
                await asyncio.to_thread(postgres.restart, "immediate")
                await session.execute(text("SELECT 1"))

        with pytest.raises(StorageUnavailable) as failed:
            await retrying(store_line, Patience())
        assert tries == 2
        assert failed.value.key == "storage.not_kept"
        assert await _lines(sessions, "두 번 끊긴 말") == 0


# --- SQLite locked by another process --------------------------------------------------------


@contextlib.asynccontextmanager
async def write_lock(database: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another process holds SQLite's write lock until `release(holder)`."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fault_helpers",
        "lock",
        str(database),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert await asyncio.wait_for(holder.stdout.readline(), timeout=30) == b"locked\n"
        yield holder
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def release(holder: asyncio.subprocess.Process) -> None:
    holder.stdin.write(b"go\n")
    await holder.stdin.drain()
    assert await asyncio.wait_for(holder.stdout.readline(), timeout=30) == b"released\n"
    assert await asyncio.wait_for(holder.wait(), timeout=30) == 0


async def test_a_line_sent_while_sqlite_is_locked_waits_is_told_and_is_kept_once(
    start_bot, tmp_path, caplog
):
    database = tmp_path / "locked.db"
    env = {"DATABASE_BUSY_TIMEOUT_S": "0.2", "DATABASE_RETRY_S": "600"}
    async with start_bot(database=f"sqlite+aiosqlite:///{database}", env=env) as harness:
        fake, s = harness.fake, harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)
        harness.bot.core.forget()  # a channel the bot has not read for a while: read it again

        async with write_lock(database) as holder:
            said = await fake.say(s.general, s.members[0], "잠겨 있어도 이 말은 꼭 기억해 줘")
            await told(fake, s.general, said, t(LOCALE, "storage.waiting"))
            await release(holder)

        reply = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=said
        )
        await fake.wait_until(lambda: has_buttons(reply), timeout=20)
        history = await history_of(harness, s.general)
    assert [(m.role, m.content) for m in history[1:]] == [
        ("user", "잠겨 있어도 이 말은 꼭 기억해 줘"),
        ("assistant", reply.content),
    ]
    assert history[1].discord_message_ids == (said.id,)
    assert not any(t(LOCALE, "storage.not_kept") in text for text in texts_after(s.general, said))
    assert errors_in(caplog) == []


@pytest.mark.parametrize("recently_read", [True, False])
async def test_a_line_that_finds_sqlite_locked_past_every_retry_is_not_kept_and_its_player_is_told(
    start_bot, tmp_path, caplog, recently_read
):
    database = tmp_path / "locked.db"
    env = {"DATABASE_BUSY_TIMEOUT_S": "0.1", "DATABASE_RETRY_S": "0.5"}
    async with start_bot(database=f"sqlite+aiosqlite:///{database}", env=env) as harness:
        fake, s = harness.fake, harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)
        if not recently_read:
            harness.bot.core.forget()

        async with write_lock(database) as holder:
            said = await fake.say(s.general, s.members[0], "이 말은 저장되지 못할 거야")
            await told(fake, s.general, said, t(LOCALE, "storage.not_kept"))
            await release(holder)

        # The lock gone, the scene goes on; the line that was not kept is not in it.
        reply = await harness.reply_to(s.general, s.members[0], "이제 들려?")
        assert has_buttons(reply)
        history = await history_of(harness, s.general)
    assert [(m.role, m.content) for m in history[1:]] == [
        ("user", "이제 들려?"),
        ("assistant", reply.content),
    ]
    assert errors_in(caplog) == []
    assert any("stayed locked" in r.getMessage() for r in caplog.records)


# --- the SQLite file removed or replaced -----------------------------------------------------


def _other_database(path: Path) -> bytes:
    """Another SQLite database (as a backup moved into place would be); its bytes."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE note (text TEXT)")
        connection.execute("INSERT INTO note VALUES ('복원본')")
        connection.commit()
    return path.read_bytes()


@pytest.mark.parametrize("change", ["removed", "replaced"])
async def test_a_database_file_removed_or_replaced_under_the_bot_stops_every_write(
    start_bot, tmp_path, caplog, change
):
    database = tmp_path / "bot.db"
    async with start_bot(database=f"sqlite+aiosqlite:///{database}") as harness:
        fake, s = harness.fake, harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)
        assert has_buttons(await harness.reply_to(s.general, s.members[0], "파일이 있을 때 한 말"))

        if change == "removed":
            database.unlink()
        else:
            replacement = tmp_path / "backup.db"
            kept = _other_database(replacement)
            os.replace(replacement, database)

        note = t(LOCALE, "storage.gone")
        for text in ("파일이 없어진 뒤에 한 말", "그 다음 말"):
            said = await fake.say(s.general, s.members[1], text)
            await told(fake, s.general, said, note)
            assert not any(has_buttons(m) for m in s.general.messages if m.id > said.id)

    lines = [r for r in errors_in(caplog)]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].getMessage().startswith(f"database file {database} was {change} ")
    assert lines[0].exc_info is None
    if change == "removed":
        assert not database.exists()  # no new, empty database in its place
    else:
        assert database.read_bytes() == kept  # nothing written into the file put there
