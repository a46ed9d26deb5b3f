"""The SQLite driver connection: one trip to aiosqlite's thread per statement, same results."""

import asyncio
import sqlite3
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from synatra_bot.storage import repository as repo
from synatra_bot.storage.database import create_engine, create_sessionmaker
from synatra_bot.storage.migrate import upgrade_database
from synatra_bot.storage.sqlite_driver import OneTripConnection


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "synatra.db"


@pytest.fixture
async def engine(db_path):
    url = f"sqlite+aiosqlite:///{db_path}"
    await upgrade_database(url)
    engine = create_engine(url)
    yield engine
    await engine.dispose()


@pytest.fixture
def trips(monkeypatch):
    """Every hand-off to the database thread, by what it ran."""
    seen: list[str] = []
    original = OneTripConnection._execute

    async def counted(self, fn, *args, **kwargs):
        seen.append(getattr(fn, "__qualname__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(OneTripConnection, "_execute", counted)
    return seen


async def _session_id(sessions) -> int:
    character = await repo.create_character(
        sessions, owner_id=1, guild_id=1, name="민지", description="대학생", first_message="안녕"
    )
    await repo.update_channel_settings(sessions, channel_id=5, guild_id=1, enabled=True)
    started = await repo.start_session(
        sessions,
        guild_id=1,
        channel_id=5,
        parent_channel_id=None,
        character_id=character.id,
        started_by=1,
    )
    return started.id


async def test_a_batch_of_turns_is_two_trips_begin_and_insert_then_commit(engine, trips):
    sessions = create_sessionmaker(engine)
    session_id = await _session_id(sessions)
    turns = [
        repo.NewMessage(session_id=session_id, role="user", content=f"{n}번째 말", token_count=n)
        for n in range(20)
    ]
    trips.clear()
    records = await repo.add_messages(sessions, turns)
    assert [r.content for r in records] == [t.content for t in turns]
    assert len(trips) == 2  # BEGIN IMMEDIATE + INSERT ... RETURNING + fetch, then COMMIT
    history = await repo.recent_history(sessions, session_id=session_id, limit=50)
    assert [m.content for m in history][-20:] == [t.content for t in turns]


async def test_a_read_is_one_trip_and_the_rollback_after_it_another(engine, trips):
    sessions = create_sessionmaker(engine)
    session_id = await _session_id(sessions)
    trips.clear()
    found = await repo.get_session(sessions, session_id=session_id)
    assert found is not None and found.id == session_id
    assert len(trips) == 2  # BEGIN IMMEDIATE + SELECT + fetch; the read's transaction ends


async def test_results_rowcounts_and_streams_match_sqlite(engine):
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        many = await conn.exec_driver_sql(
            "INSERT INTO notes (body) VALUES (?)", [(f"메모 {n}",) for n in range(250)]
        )
        assert many.rowcount == 250
        one = await conn.exec_driver_sql("INSERT INTO notes (body) VALUES ('마지막')")
        assert one.lastrowid == 251
        changed = await conn.execute(text("UPDATE notes SET body = body || '!' WHERE id <= 10"))
        assert changed.rowcount == 10
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT id, body FROM notes ORDER BY id"))
        assert result.keys() == ["id", "body"]
        first = result.fetchmany(3)
        assert [tuple(row) for row in first] == [(1, "메모 0!"), (2, "메모 1!"), (3, "메모 2!")]
        assert len(result.fetchall()) == 248
        streamed = await conn.stream(text("SELECT body FROM notes ORDER BY id"))
        bodies = [row.body async for row in streamed]
        assert len(bodies) == 251 and bodies[-1] == "마지막"
        empty = await conn.execute(text("SELECT id FROM notes WHERE id < 0"))
        assert empty.all() == []


async def test_a_failed_statement_raises_and_the_next_transaction_is_clean(engine):
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE once (id INTEGER PRIMARY KEY)")
        await conn.exec_driver_sql("INSERT INTO once (id) VALUES (1)")
    with pytest.raises(Exception, match="UNIQUE"):
        async with engine.begin() as conn:
            await conn.exec_driver_sql("INSERT INTO once (id) VALUES (2)")
            await conn.exec_driver_sql("INSERT INTO once (id) VALUES (1)")
    async with engine.begin() as conn:
        await conn.exec_driver_sql("INSERT INTO once (id) VALUES (3)")
    async with engine.connect() as conn:
        rows = (await conn.exec_driver_sql("SELECT id FROM once ORDER BY id")).all()
    assert [r.id for r in rows] == [1, 3]  # the failed transaction left nothing behind


async def test_begin_immediate_waits_for_another_writer_then_fails_clearly(engine, db_path):
    async with engine.begin() as conn:
        await conn.exec_driver_sql("PRAGMA busy_timeout=100")
        await conn.exec_driver_sql("CREATE TABLE notes (body TEXT)")
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            async with engine.begin() as conn:
                await conn.exec_driver_sql("INSERT INTO notes VALUES ('못 씀')")
    finally:
        other.rollback()
        other.close()
    async with engine.begin() as conn:  # no half-open transaction was left behind
        await conn.exec_driver_sql("INSERT INTO notes VALUES ('이제 됨')")
    async with engine.connect() as conn:
        rows = (await conn.exec_driver_sql("SELECT body FROM notes")).all()
    assert [r.body for r in rows] == ["이제 됨"]


async def test_a_caller_cancelled_mid_statement_leaves_the_connection_usable(engine):
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE notes (body TEXT)")

    async def write(body: str) -> None:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("INSERT INTO notes VALUES (?)", (body,))

    for steps in range(20):  # cancel at every point a trip can be in flight
        task = asyncio.create_task(write("취소됨"))
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await write("남음")
    async with engine.connect() as conn:
        rows = (await conn.exec_driver_sql("SELECT body FROM notes")).all()
    assert sum(r.body == "남음" for r in rows) == 20


async def test_a_statement_still_running_after_its_caller_gave_up_is_not_kept(engine):
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE notes (body TEXT)")
        driver = (await conn.get_raw_connection()).driver_connection
    gate = threading.Event()
    driver._tx.put_nowait((None, gate.wait))  # the database thread is busy for a while

    async def write(body: str) -> None:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("INSERT INTO notes VALUES (?)", (body,))

    task = asyncio.create_task(write("취소됨"))
    await asyncio.sleep(0.05)  # its statement is queued behind the busy thread
    task.cancel()
    await asyncio.sleep(0.05)
    gate.set()  # the statement runs now, for a caller that is gone
    await asyncio.gather(task, return_exceptions=True)
    await write("남음")
    async with engine.connect() as conn:
        rows = (await conn.exec_driver_sql("SELECT body FROM notes")).all()
    assert [r.body for r in rows] == ["남음"]
