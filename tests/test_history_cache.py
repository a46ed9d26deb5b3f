"""The in-memory recent history: what a reply's prompt reads instead of the database."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event

from synatra_bot.prompt.builder import PromptBuilder
from synatra_bot.roleplay.characters import CharacterService
from synatra_bot.roleplay.config import Defaults
from synatra_bot.roleplay.core import RoleplayCore
from synatra_bot.roleplay.history import APPEND_LOG, HistoryCache
from synatra_bot.roleplay.types import Actor, Place
from synatra_bot.settings import settings_from_env
from synatra_bot.storage import repository as repo
from synatra_bot.storage.database import create_engine, create_sessionmaker
from synatra_bot.storage.migrate import upgrade_database
from synatra_bot.storage.records import MessageRecord
from tests.fakes import FakeClock, stored_turn

SESSION = 7


def turn(message_id: int, content: str = "안녕", session_id: int = SESSION) -> MessageRecord:
    return stored_turn(message_id, session_id=session_id, content=content)


def test_a_kept_read_is_served_and_new_turns_join_it_up_to_the_limit() -> None:
    cache = HistoryCache(ttl_s=60, max_turns=1000, max_sessions=10)
    assert cache.get(SESSION, limit=3, since_id=None) is None
    version = cache.version()
    cache.put(SESSION, limit=3, since_id=None, records=[turn(1), turn(2)], version=version)
    assert [m.id for m in cache.get(SESSION, limit=3, since_id=None) or []] == [1, 2]
    cache.appended(turn(3))
    cache.appended(turn(4))
    assert [m.id for m in cache.get(SESSION, limit=3, since_id=None) or []] == [2, 3, 4]
    # A different window (another context size, or a new trimming anchor) is not this read.
    assert cache.get(SESSION, limit=5, since_id=None) is None
    assert cache.get(SESSION, limit=3, since_id=2) is None


def test_a_read_that_raced_an_append_gets_it_merged_in() -> None:
    cache = HistoryCache(ttl_s=60, max_turns=1000, max_sessions=10)
    version = cache.version()
    cache.appended(turn(3))  # committed after the read's SELECT: the read lacks it
    cache.appended(turn(4))
    cache.put(SESSION, limit=3, since_id=None, records=[turn(1), turn(2)], version=version)
    assert [m.id for m in cache.get(SESSION, limit=3, since_id=None) or []] == [2, 3, 4]
    # ... or already has it (committed before the SELECT): kept once.
    version = cache.version()
    cache.appended(turn(5))
    cache.put(SESSION, limit=9, since_id=None, records=[turn(4), turn(5)], version=version)
    assert [m.id for m in cache.get(SESSION, limit=9, since_id=None) or []] == [4, 5]


def test_a_read_that_raced_a_change_is_not_kept() -> None:
    cache = HistoryCache(ttl_s=60, max_turns=1000, max_sessions=10)
    version = cache.version()
    cache.changed(SESSION)  # an edit or a delete while the read was in flight
    cache.put(SESSION, limit=5, since_id=None, records=[turn(1), turn(2)], version=version)
    assert cache.get(SESSION, limit=5, since_id=None) is None
    other = cache.version()
    cache.put(SESSION + 1, limit=5, since_id=None, records=[turn(9, session_id=8)], version=other)
    assert cache.get(SESSION + 1, limit=5, since_id=None) is not None


def test_a_read_that_raced_more_appends_than_the_log_holds_is_not_kept() -> None:
    cache = HistoryCache(ttl_s=60, max_turns=1000, max_sessions=10)
    version = cache.version()
    for message_id in range(10, 10 + APPEND_LOG + 1):
        cache.appended(turn(message_id))
    cache.put(SESSION, limit=500, since_id=None, records=[turn(1)], version=version)
    assert cache.get(SESSION, limit=500, since_id=None) is None


def test_a_change_or_the_ttl_drops_the_entry() -> None:
    clock = FakeClock(100.0)
    cache = HistoryCache(ttl_s=60, max_turns=1000, max_sessions=10, clock=clock)
    cache.put(SESSION, limit=5, since_id=None, records=[turn(1)], version=cache.version())
    cache.changed(SESSION)
    assert cache.get(SESSION, limit=5, since_id=None) is None
    cache.put(SESSION, limit=5, since_id=None, records=[turn(1)], version=cache.version())
    clock.now += 61
    assert cache.get(SESSION, limit=5, since_id=None) is None


def test_a_turn_appended_twice_makes_the_session_read_again() -> None:
    cache = HistoryCache(ttl_s=60, max_turns=1000, max_sessions=10)
    cache.put(SESSION, limit=5, since_id=None, records=[turn(1)], version=cache.version())
    cache.appended(turn(1, "다른 내용"))
    assert cache.get(SESSION, limit=5, since_id=None) is None


def test_stored_token_counts_are_kept_with_the_cached_turns() -> None:
    cache = HistoryCache(ttl_s=60, max_turns=1000, max_sessions=10)
    cache.put(SESSION, limit=5, since_id=None, records=[turn(1), turn(2)], version=cache.version())
    cache.counted(SESSION, {2: 11})
    assert [m.token_count for m in cache.get(SESSION, limit=5, since_id=None) or []] == [None, 11]


def test_the_sessions_used_least_recently_go_first_when_too_many_turns_are_kept() -> None:
    cache = HistoryCache(ttl_s=60, max_turns=5, max_sessions=10)
    for session in (1, 2):
        records = [turn(session * 10 + i, session_id=session) for i in range(2)]
        cache.put(session, limit=9, since_id=None, records=records, version=cache.version())
    assert cache.get(1, limit=9, since_id=None) is not None  # 1 is now the most recent
    records = [turn(30, session_id=3), turn(31, session_id=3)]
    cache.put(3, limit=9, since_id=None, records=records, version=cache.version())
    assert cache.get(2, limit=9, since_id=None) is None  # evicted: used least recently
    assert cache.get(1, limit=9, since_id=None) is not None
    assert cache.turns == 4
    cache.appended(turn(32, session_id=3))
    assert cache.turns == 5
    cache.changed(1)
    assert cache.turns == 3


def test_too_many_changed_sessions_start_over_and_forget_reads_in_flight() -> None:
    cache = HistoryCache(ttl_s=60, max_turns=1000, max_sessions=2)
    in_flight = cache.version()
    for session in range(2, 12):  # more sessions than the bookkeeping remembers
        cache.changed(session)
    cache.put(1, limit=5, since_id=None, records=[turn(1, session_id=1)], version=in_flight)
    assert cache.get(1, limit=5, since_id=None) is None  # older than the new epoch
    cache.put(1, limit=5, since_id=None, records=[turn(1, session_id=1)], version=cache.version())
    assert cache.get(1, limit=5, since_id=None) is not None


# --- through the roleplay core, on a real database ------------------------------------------

ACTOR = Actor(42, "민수", guild_id=1)
PLACE = Place(channel_id=500, guild_id=1)


@pytest.fixture
async def core(tmp_path: Path, tokenizer):
    url = f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
    await upgrade_database(url)
    database = create_engine(url)
    sessions = create_sessionmaker(database)
    reads: list[str] = []

    def count_reads(_conn, _cursor, statement: str, *_args) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM messages" in statement:
            reads.append(statement)

    event.listen(database.sync_engine, "before_cursor_execute", count_reads)
    settings = settings_from_env({"DISCORD_TOKEN": "", "DATABASE_URL": url}, require_token=False)
    core = RoleplayCore(
        sessions=sessions,
        characters=CharacterService(sessions, max_card_bytes=1 << 20),
        builder=PromptBuilder(tokenizer),
        defaults=Defaults.from_settings(settings),
    )
    character = await repo.create_character(
        sessions, owner_id=ACTOR.user_id, guild_id=1, name="하늘", first_message="어서 와!"
    )
    await core.start(ACTOR, PLACE, character_id=character.id)
    yield core, reads
    await database.dispose()


async def say(core: RoleplayCore, text: str, discord_id: int) -> MessageRecord:
    active = await core.require_active(PLACE)
    return await core.add_user_message(active, ACTOR, text, discord_message_id=discord_id)


async def prompt_text(core: RoleplayCore) -> str:
    active = await core.require_active(PLACE)
    return (await core.build_prompt(active, speaker=ACTOR)).text


async def test_the_next_prompt_reads_no_history_and_stores_no_counts(core) -> None:
    core, reads = core
    await say(core, "오늘 날씨 좋다", 9001)
    assert "오늘 날씨 좋다" in await prompt_text(core)
    reads.clear()
    active = await core.require_active(PLACE)
    reply = await core.store_reply(active, "그러게, 산책 갈까?")
    mine = await say(core, "좋아, 공원으로 가자", 9002)
    assert mine.token_count is not None and reply.token_count is not None
    built = await core.build_prompt(active, speaker=ACTOR)
    assert reads == []  # served from memory
    assert built.new_token_counts == {}  # counted when stored
    assert built.text.index("산책 갈까") < built.text.index("공원으로 가자")


async def test_edits_deletes_undo_and_swipes_show_in_the_next_prompt(core) -> None:
    core, _reads = core
    await say(core, "사과를 좋아해", 9101)
    assert "사과를 좋아해" in await prompt_text(core)
    await core.message_edited(9101, "배를 좋아해")
    text = await prompt_text(core)
    assert "배를 좋아해" in text and "사과를 좋아해" not in text

    active = await core.require_active(PLACE)
    first = await core.store_reply(active, "첫 번째 대답")
    await core.store_reply(active, "두 번째 대답", regenerate_of=first.id)
    text = await prompt_text(core)
    assert "두 번째 대답" in text and "첫 번째 대답" not in text
    await core.browse(first.id, -1)
    text = await prompt_text(core)
    assert "첫 번째 대답" in text and "두 번째 대답" not in text

    await say(core, "지울 말", 9102)
    assert "지울 말" in await prompt_text(core)
    await core.message_deleted(9102)
    assert "지울 말" not in await prompt_text(core)

    await core.undo(PLACE)
    text = await prompt_text(core)
    assert "첫 번째 대답" not in text and "배를 좋아해" not in text


def test_a_trimming_anchor_moving_forward_is_served_from_the_kept_turns() -> None:
    cache = HistoryCache(ttl_s=60, max_turns=1000, max_sessions=10)
    records = [turn(i) for i in range(1, 6)]
    cache.put(SESSION, limit=10, since_id=None, records=records, version=cache.version())
    assert [m.id for m in cache.get(SESSION, limit=10, since_id=3) or []] == [2, 3, 4, 5]
    assert [m.id for m in cache.get(SESSION, limit=10, since_id=4) or []] == [3, 4, 5]
    assert cache.get(SESSION, limit=10, since_id=2) is None  # backwards: turn 1 is not here
    full = HistoryCache(ttl_s=60, max_turns=1000, max_sessions=10)
    full.put(SESSION, limit=10, since_id=None, records=records, version=full.version())
    assert [m.id for m in full.get(SESSION, limit=10, since_id=1) or []] == [1, 2, 3, 4, 5]
    cut = HistoryCache(ttl_s=60, max_turns=1000, max_sessions=10)
    cut.put(SESSION, limit=5, since_id=None, records=records, version=cut.version())
    assert cut.get(SESSION, limit=5, since_id=1) is None  # older turns may exist
