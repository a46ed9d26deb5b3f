"""Storage: migrations agree with the models, repository behaviour, concurrent writers, bad files."""

import asyncio
import functools
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from synatra_bot.errors import StorageError
from synatra_bot.storage import repository as repo
from synatra_bot.storage.database import create_engine, create_sessionmaker
from synatra_bot.storage.migrate import current_revision, head_revision, upgrade_database
from tests.db_helpers import schema_diff

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'synatra.db'}"


@pytest.fixture
async def sessions(db_url):
    await upgrade_database(db_url)
    engine = create_engine(db_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def test_upgrade_creates_schema_and_second_run_changes_nothing(db_url, tmp_path):
    before, after = await upgrade_database(db_url)
    assert (before, after) == (None, head_revision(db_url))
    assert (tmp_path / "data" / "synatra.db").is_file()
    again = await upgrade_database(db_url)
    assert again == (after, after)


async def test_models_and_migrations_agree(db_url):
    await upgrade_database(db_url)
    assert await schema_diff(db_url) == []


async def test_every_connection_gets_the_pragmas(sessions):
    async with sessions() as session:
        conn = await session.connection()
        values = {
            name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
        }
    assert values == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "busy_timeout": 10000,
        "synchronous": 1,
    }


async def test_database_from_a_newer_version_is_refused(db_url):
    await upgrade_database(db_url)
    path = db_url.removeprefix("sqlite+aiosqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
    with pytest.raises(StorageError, match="newer than this synatra-bot knows"):
        await upgrade_database(db_url)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (
            "9999_future",
        )


async def test_corrupt_database_file_is_refused_and_kept(tmp_path):
    path = tmp_path / "synatra.db"
    path.write_bytes(b"\x00\x01 not a database \xff" * 100)
    original = path.read_bytes()
    with pytest.raises(StorageError, match="not a SQLite database"):
        await upgrade_database(f"sqlite+aiosqlite:///{path}")
    assert path.read_bytes() == original


async def test_truncated_sqlite_file_is_reported_corrupt(tmp_path, db_url):
    await upgrade_database(db_url)
    source = Path(db_url.removeprefix("sqlite+aiosqlite:///"))
    with sqlite3.connect(source) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    broken = tmp_path / "broken.db"
    broken.write_bytes(source.read_bytes()[:1500])
    original = broken.read_bytes()
    with pytest.raises(StorageError, match="corrupt"):
        await upgrade_database(f"sqlite+aiosqlite:///{broken}")
    assert broken.read_bytes() == original


async def test_folder_that_cannot_be_created_gives_a_clear_error(tmp_path):
    blocker = tmp_path / "occupied"
    blocker.write_text("a file where the folder should be", encoding="utf-8")
    with pytest.raises(StorageError, match="cannot create database folder"):
        await upgrade_database(f"sqlite+aiosqlite:///{blocker / 'synatra.db'}")


def test_db_upgrade_command_is_idempotent(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'new' / 'bot.db'}",
    }
    run = [sys.executable, "-m", "synatra_bot.cli", "db"]
    first = subprocess.run([*run, "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "upgraded from empty" in first.stdout
    second = subprocess.run(
        [*run, "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert second.returncode == 0
    assert "up to date" in second.stdout
    current = subprocess.run(
        [*run, "current"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert current.stdout.strip() == f"{head_revision(env['DATABASE_URL'])} (up to date)"


async def test_current_revision_of_empty_database_is_none(db_url):
    assert await current_revision(db_url) is None


async def _new_session(sessions, channel_id=10):
    character = await repo.create_character(
        sessions, owner_id=1, guild_id=100, name="민지", description="활발한 대학생"
    )
    return await repo.start_session(
        sessions,
        guild_id=100,
        channel_id=channel_id,
        parent_channel_id=None,
        character_id=character.id,
        started_by=1,
    )


async def test_concurrent_writers_to_one_session_lose_no_rows(sessions):
    rp = await _new_session(sessions)

    async def writer(player: int) -> None:
        for n in range(25):
            await repo.add_message(
                sessions,
                session_id=rp.id,
                role="user",
                author_id=player,
                display_name=f"플레이어{player}",
                content=f"{player}번의 {n}번째 말",
                discord_message_ids=[player * 1000 + n],
            )

    await asyncio.gather(*(writer(p) for p in range(1, 9)))
    assert await repo.count_history(sessions, session_id=rp.id) == 200
    history = await repo.recent_history(sessions, session_id=rp.id, limit=500)
    assert len({m.content for m in history}) == 200
    for player in range(1, 9):
        mine = [m.content for m in history if m.author_id == player]
        assert mine == [f"{player}번의 {n}번째 말" for n in range(25)]


async def test_concurrent_writers_across_engines_lose_no_rows(db_url):
    await upgrade_database(db_url)
    engines = [create_engine(db_url) for _ in range(3)]
    makers = [create_sessionmaker(e) for e in engines]
    try:
        rp = await _new_session(makers[0])

        async def writer(maker, tag):
            for n in range(20):
                await repo.add_message(maker, session_id=rp.id, role="user", content=f"{tag}-{n}")
                await repo.recent_history(maker, session_id=rp.id, limit=5)

        await asyncio.gather(*(writer(m, i) for i, m in enumerate(makers)))
        assert await repo.count_history(makers[0], session_id=rp.id) == 60
    finally:
        for engine in engines:
            await engine.dispose()


async def test_starting_a_new_session_archives_the_old_one(sessions):
    first = await _new_session(sessions)
    await repo.add_message(sessions, session_id=first.id, role="user", content="첫 대화")
    second = await _new_session(sessions)
    active = await repo.get_active_session(sessions, channel_id=10)
    assert active is not None and active.id == second.id
    archived = await repo.get_session(sessions, session_id=first.id)
    assert archived is not None and archived.ended_at is not None
    assert [
        m.content for m in await repo.recent_history(sessions, session_id=first.id, limit=5)
    ] == ["첫 대화"]
    assert await repo.end_session(sessions, channel_id=10) == second.id
    assert await repo.get_active_session(sessions, channel_id=10) is None


async def test_swipes_keep_alternatives_and_history_shows_the_chosen_one(sessions):
    rp = await _new_session(sessions)
    await repo.add_message(sessions, session_id=rp.id, role="user", content="안녕?")
    first = await repo.add_message(
        sessions, session_id=rp.id, role="assistant", content="안녕하세요!"
    )
    second = await repo.add_alternative(sessions, message_id=first.id, content="어, 왔어?")
    assert second.swipe_index == 1 and second.swipe_group == first.id
    history = await repo.recent_history(sessions, session_id=rp.id, limit=10)
    assert [m.content for m in history] == ["안녕?", "어, 왔어?"]
    await repo.choose_alternative(sessions, message_id=first.id)
    history = await repo.recent_history(sessions, session_id=rp.id, limit=10)
    assert [m.content for m in history] == ["안녕?", "안녕하세요!"]
    assert [a.content for a in await repo.alternatives(sessions, message_id=second.id)] == [
        "안녕하세요!",
        "어, 왔어?",
    ]


async def test_undo_removes_the_last_exchange_only(sessions):
    rp = await _new_session(sessions)
    await repo.add_message(sessions, session_id=rp.id, role="assistant", content="어서 와.")
    await repo.add_message(sessions, session_id=rp.id, role="user", content="하나")
    await repo.add_message(sessions, session_id=rp.id, role="assistant", content="둘")
    await repo.add_message(sessions, session_id=rp.id, role="user", content="셋")
    await repo.add_message(sessions, session_id=rp.id, role="user", content="넷")
    reply = await repo.add_message(sessions, session_id=rp.id, role="assistant", content="다섯")
    await repo.add_alternative(sessions, message_id=reply.id, content="다섯(다른 버전)")
    removed = await repo.undo_last_exchange(sessions, session_id=rp.id)
    assert [m.content for m in removed] == ["셋", "넷", "다섯(다른 버전)"]
    history = await repo.recent_history(sessions, session_id=rp.id, limit=10)
    assert [m.content for m in history] == ["어서 와.", "하나", "둘"]
    assert await repo.undo_last_exchange(sessions, session_id=rp.id) != []
    assert await repo.undo_last_exchange(sessions, session_id=rp.id) == []


async def test_undo_takes_system_lines_from_an_imported_chat_one_at_a_time(sessions):
    rp = await _new_session(sessions)
    await repo.add_message(sessions, session_id=rp.id, role="assistant", content="어서 와.")
    await repo.add_message(sessions, session_id=rp.id, role="user", content="안녕")
    await repo.add_message(sessions, session_id=rp.id, role="system", content="장면 전환")
    await repo.add_message(sessions, session_id=rp.id, role="assistant", content="다음 날 아침.")
    await repo.add_message(sessions, session_id=rp.id, role="system", content="밤이 되었다")

    async def undone() -> list[str]:
        return [m.content for m in await repo.undo_last_exchange(sessions, session_id=rp.id)]

    assert await undone() == ["밤이 되었다"]  # the newest turn, on its own
    assert await undone() == ["다음 날 아침."]  # a reply after a system line goes alone
    assert await undone() == ["장면 전환"]
    assert await undone() == ["안녕"]  # a message nobody answered yet
    history = await repo.recent_history(sessions, session_id=rp.id, limit=10)
    assert [m.content for m in history] == ["어서 와."]
    assert await undone() == []  # the greeting stays


async def test_discord_edits_and_deletes_reach_history(sessions):
    rp = await _new_session(sessions)
    msg = await repo.add_message(
        sessions, session_id=rp.id, role="user", content="오타 있는 말", discord_message_ids=[555]
    )
    await repo.save_token_counts(sessions, counts={msg.id: 7})
    found = await repo.find_by_discord_id(sessions, discord_message_id=555)
    assert found is not None and found.token_count == 7
    edited = await repo.update_message(sessions, message_id=msg.id, content="고친 말", edited=True)
    assert edited is not None and edited.token_count is None and edited.edited_at is not None
    assert await repo.delete_messages(sessions, message_ids=[msg.id]) == 1
    assert await repo.find_by_discord_id(sessions, discord_message_id=555) is None
    assert await repo.recent_history(sessions, session_id=rp.id, limit=5) == []


async def test_characters_are_visible_by_owner_and_server_rules(sessions):
    mine = await repo.create_character(sessions, owner_id=1, guild_id=100, name="민지")
    shared = await repo.create_character(
        sessions, owner_id=2, guild_id=100, name="민수", visibility="guild", approval="approved"
    )
    await repo.create_character(
        sessions, owner_id=2, guild_id=100, name="민호", visibility="guild", approval="pending"
    )
    await repo.create_character(sessions, owner_id=2, guild_id=100, name="민아")
    await repo.create_character(
        sessions, owner_id=3, guild_id=200, name="민재", visibility="guild", approval="approved"
    )
    visible = await repo.visible_characters(sessions, guild_id=100, user_id=1, name_prefix="민")
    assert {c.id for c in visible} == {mine.id, shared.id}
    assert [c.name for c in await repo.characters_awaiting_approval(sessions, guild_id=100)] == [
        "민호"
    ]


async def test_persona_for_server_overrides_global(sessions):
    await repo.set_persona(sessions, user_id=5, guild_id=0, name="여행자", description="떠돌이")
    assert (await repo.get_persona(sessions, user_id=5, guild_id=100)).name == "여행자"
    await repo.set_persona(
        sessions, user_id=5, guild_id=100, name="기사", description="왕국의 기사"
    )
    assert (await repo.get_persona(sessions, user_id=5, guild_id=100)).name == "기사"
    assert await repo.clear_persona(sessions, user_id=5, guild_id=100)
    assert (await repo.get_persona(sessions, user_id=5, guild_id=100)).name == "여행자"


async def test_settings_round_trip_and_reject_unknown_fields(sessions):
    await repo.update_guild_settings(
        sessions, guild_id=100, temperature=0.7, approval_required=True
    )
    guild = await repo.get_guild_settings(sessions, guild_id=100)
    assert guild.temperature == 0.7 and guild.approval_required
    channel = await repo.update_channel_settings(
        sessions, channel_id=10, guild_id=100, enabled=True, reply_mode="mention"
    )
    assert channel.enabled and channel.reply_mode == "mention"
    with pytest.raises(ValueError, match="unknown fields"):
        await repo.update_channel_settings(sessions, channel_id=10, guild_id=100, bogus=1)


async def test_history_since_a_start_id_includes_one_older_turn(sessions):
    rp = await _new_session(sessions)
    ids = [
        (await repo.add_message(sessions, session_id=rp.id, role="user", content=f"말 {n}")).id
        for n in range(10)
    ]
    await repo.delete_messages(sessions, message_ids=[ids[5]])
    history = await repo.recent_history(sessions, session_id=rp.id, limit=100, since_id=ids[6])
    assert [m.content for m in history] == ["말 4", "말 6", "말 7", "말 8", "말 9"]
    first = await repo.recent_history(sessions, session_id=rp.id, limit=100, since_id=ids[0])
    assert len(first) == 9


# --- group commit -----------------------------------------------------------------------------


def _statements(sessions) -> list[str]:
    """Every SQL statement the engine behind `sessions` runs from now on."""
    from sqlalchemy import event

    seen: list[str] = []
    engine = sessions.kw["bind"].sync_engine
    event.listen(
        engine, "before_cursor_execute", lambda _c, _cur, statement, *_a: seen.append(statement)
    )
    event.listen(engine, "begin", lambda _connection: seen.append("BEGIN"))  # not via a cursor
    return seen


async def test_turns_stored_together_share_one_transaction_in_order(sessions):
    from synatra_bot.storage.batching import Batcher

    first, second = (
        await _new_session(sessions, channel_id=10),
        await _new_session(sessions, channel_id=11),
    )
    writer = Batcher(functools.partial(repo.add_messages, sessions))
    statements = _statements(sessions)
    turns = [
        repo.NewMessage(session_id=s.id, role="user", content=f"{n}번째 말", token_count=n)
        for n in range(20)
        for s in (first, second)
    ]
    turns.append(repo.NewMessage(session_id=first.id, role="assistant", content="대답"))
    records = await asyncio.gather(*(writer.submit(turn) for turn in turns))
    assert [r.content for r in records] == [t.content for t in turns]
    assert [r.id for r in records] == sorted(r.id for r in records)
    assert all(r.swipe_group is None for r in records)
    assert sum(s.startswith("BEGIN") for s in statements) == 1
    assert sum(s.startswith("INSERT") for s in statements) == 1
    history = await repo.recent_history(sessions, session_id=first.id, limit=100)
    assert [m.content for m in history][-2:] == ["19번째 말", "대답"]
    assert [m.token_count for m in history][:3] == [0, 1, 2]


async def test_one_bad_turn_in_a_batch_fails_alone(sessions):
    from synatra_bot.storage.batching import Batcher

    rp = await _new_session(sessions)
    writer = Batcher(functools.partial(repo.add_messages, sessions))
    good = [repo.NewMessage(session_id=rp.id, role="user", content=f"말 {n}") for n in range(3)]
    bad = repo.NewMessage(session_id=999_999, role="user", content="없는 세션")
    results = await asyncio.gather(
        *(writer.submit(turn) for turn in (good[0], bad, good[1], good[2])), return_exceptions=True
    )
    assert isinstance(results[1], Exception)  # the foreign key refuses it
    assert [r.content for r in results if not isinstance(r, Exception)] == ["말 0", "말 1", "말 2"]
    history = await repo.recent_history(sessions, session_id=rp.id, limit=10)
    assert [m.content for m in history] == ["말 0", "말 1", "말 2"]


async def test_a_caller_that_gives_up_does_not_lose_the_turn_for_the_others(sessions):
    from synatra_bot.storage.batching import Batcher

    rp = await _new_session(sessions)
    writer = Batcher(functools.partial(repo.add_messages, sessions))
    turns = [repo.NewMessage(session_id=rp.id, role="user", content=f"말 {n}") for n in range(3)]
    tasks = [asyncio.create_task(writer.submit(turn)) for turn in turns]
    await asyncio.sleep(0)
    tasks[0].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[0], asyncio.CancelledError)
    assert [r.content for r in done[1:]] == ["말 1", "말 2"]
    history = await repo.recent_history(sessions, session_id=rp.id, limit=10)
    assert len(history) == 3  # the cancelled caller's turn was already in the batch


async def test_persona_reads_at_the_same_moment_are_one_read(sessions):
    from synatra_bot.storage.batching import Batcher

    await repo.set_persona(sessions, user_id=1, guild_id=0, name="여행자", description="어디서나")
    await repo.set_persona(sessions, user_id=1, guild_id=100, name="기사", description="이 서버")
    await repo.set_persona(sessions, user_id=2, guild_id=0, name="상인", description="")
    reads = Batcher(functools.partial(repo.get_personas, sessions))
    statements = _statements(sessions)
    keys = [(1, 100), (1, 200), (2, 100), (3, 100)]
    found = await asyncio.gather(*(reads.submit(key) for key in keys))
    assert [p.name if p else None for p in found] == ["기사", "여행자", "상인", None]
    assert sum("FROM personas" in s for s in statements) == 1
    for (user_id, guild_id), persona in zip(keys, found, strict=True):
        assert persona == await repo.get_persona(sessions, user_id=user_id, guild_id=guild_id)


async def test_a_batch_that_fails_for_another_reason_fails_at_once_for_everyone(sessions):
    from synatra_bot.storage.batching import Batcher

    calls: list[int] = []

    async def locked(items):
        calls.append(len(items))
        raise sqlite3.OperationalError("database is locked")

    batcher = Batcher(locked)
    results = await asyncio.gather(*(batcher.submit(n) for n in range(5)), return_exceptions=True)
    assert all(isinstance(r, sqlite3.OperationalError) for r in results)
    assert calls == [5]  # not retried one by one (each retry would wait out the busy timeout)


def test_returned_rows_in_any_order_are_matched_back_to_their_turns():
    import random

    from tests.fakes import stored_turn

    turns = [
        repo.NewMessage(session_id=1, role="user", content=text, discord_message_ids=ids)
        for text, ids in [("같은 말", ()), ("다른 말", (7,)), ("같은 말", ()), ("같은 말", (9,))]
    ]
    records = [
        stored_turn(
            100 + n,
            session_id=t.session_id,
            content=t.content,
            role=t.role,
            author_id=t.author_id,
            display_name=t.display_name,
            token_count=t.token_count,
            discord_message_ids=t.discord_message_ids,
        )
        for n, t in enumerate(turns)
    ]
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    assert [r.id for r in repo._in_turn_order(shuffled, turns)] == [100, 101, 102, 103]


async def test_rounds_start_at_most_every_interval_and_fill_up_meanwhile():
    from synatra_bot.storage.batching import Batcher

    rounds: list[tuple[float, list[int]]] = []
    loop = asyncio.get_running_loop()

    async def run(items):
        rounds.append((loop.time(), list(items)))
        return [n * 10 for n in items]

    batcher = Batcher(run, every=0.2)
    start = loop.time()
    assert await batcher.submit(1) == 10  # idle: at once
    results = await asyncio.gather(*(batcher.submit(n) for n in (2, 3, 4)))
    assert results == [20, 30, 40]
    assert [items for _, items in rounds] == [[1], [2, 3, 4]]
    assert rounds[0][0] - start < 0.1
    assert rounds[1][0] - rounds[0][0] >= 0.2 - 0.01  # the second round waited and filled up
    await asyncio.sleep(0.25)
    idle_since = loop.time()
    assert await batcher.submit(5) == 50
    assert rounds[2][0] - idle_since < 0.1  # idle again: at once


async def check_limits_hold_concurrently(sessions) -> None:
    """Counting then adding runs one owner at a time (SQLite and PostgreSQL): of many
    concurrent additions, exactly the limit's worth land (PostgreSQL's READ COMMITTED alone
    would let every one of them past it)."""
    from synatra_bot.errors import LimitReached, LorebookLimitReached

    owner, guild = 1575980247692607600, 1575980247692607601

    async def character(n: int) -> bool:
        try:
            await repo.create_character(
                sessions, owner_id=owner, guild_id=guild, name=f"동시 {n}", max_owned=5
            )
        except LimitReached:
            return False
        return True

    async def lorebook(n: int) -> bool:
        try:
            await repo.save_lorebook(
                sessions,
                owner_id=owner,
                name=f"책 {n}",
                book={"entries": {}},
                max_owned=3,
                max_bytes=1 << 20,
            )
        except LorebookLimitReached:
            return False
        return True

    async def preset(n: int) -> bool:
        saved = await repo.save_preset(
            sessions, guild_id=guild, name=f"프리셋 {n}", values={"temperature": 1.0}, max_saved=2
        )
        return saved is not None

    assert sum(await asyncio.gather(*(character(n) for n in range(12)))) == 5
    assert sum(await asyncio.gather(*(lorebook(n) for n in range(12)))) == 3
    assert sum(await asyncio.gather(*(preset(n) for n in range(12)))) == 2


async def test_limits_hold_when_members_add_at_the_same_moment(sessions):
    await check_limits_hold_concurrently(sessions)
