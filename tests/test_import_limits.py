"""Imported chats are data, not time or weight: through the real discord.py client and the fake
Discord, a chat file's dates cannot keep a scene busy, its swipes and rows are bounded, it is
read and stored off the event loop, and its history is summarised at a bounded rate."""

from __future__ import annotations

import itertools
import json
import threading
from datetime import UTC, datetime, timedelta

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.prompt.builder import SUMMARY_DIALOGUE_HEADING
from synatra_bot.prompt.st_chat import MAX_CHAT_ROWS, MAX_SWIPES_PER_MESSAGE
from synatra_bot.roleplay.memory import SUMMARIES_PER_REPLY
from synatra_bot.roleplay.types import Place
from synatra_bot.storage import repository as repo
from tests.bot_harness import eventually, has_buttons


def numbered_replies(tokenizer) -> ScriptedEngine:
    counter = itertools.count(1)
    return ScriptedEngine(lambda prompt: f"답장 {next(counter)}.", tokenizer=tokenizer)


def chat_file(*messages: dict) -> bytes:
    header = {"user_name": "민수", "character_name": "하늘", "create_date": "2024-06-05@14h56m50s"}
    return "\n".join(json.dumps(row, ensure_ascii=False) for row in (header, *messages)).encode()


def line(text: str, *, is_user: bool, **fields) -> dict:
    return {"name": "민수" if is_user else "하늘", "is_user": is_user, "mes": text, **fields}


async def import_file(harness, member, channel, character: int, data: bytes, name="chat.jsonl"):
    record = await harness.slash(
        member,
        "rp import",
        channel=channel,
        file=(name, data, "application/jsonl"),
        character=str(character),
    )
    return await harness.final_text(record)


async def open_channel(harness):
    """#general enabled by a moderator's scene, which the moderator then ends."""
    s = harness.scenario
    character = await harness.character(s.moderator, "민지")
    await harness.start_roleplay(s.moderator, s.general, character)
    await harness.final_text(await harness.slash(s.moderator, "rp stop", channel=s.general))


async def test_a_chat_dated_in_the_far_future_is_taken_over_once_idle(start_bot, tokenizer):
    async with start_bot(engine=numbered_replies(tokenizer)) as harness:
        s = harness.scenario
        await open_channel(harness)
        hers = await harness.character(s.members[0], "하늘")
        his = await harness.character(s.members[1], "바다")
        far = "9999-12-31T23:59:59.000Z"
        data = chat_file(
            line("미래에서 왔어.", is_user=True, send_date=far),
            line("그럴 리가.", is_user=False, send_date=far),
        )
        before = datetime.now(UTC)
        assert "2개" in await import_file(harness, s.members[0], s.general, hers, data)
        imported = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        assert imported.started_by == s.members[0].user.id
        turns = await repo.recent_history(harness.sessions, session_id=imported.id, limit=10)
        after = datetime.now(UTC)
        stored = [m.created_at.replace(tzinfo=UTC) for m in turns]
        assert [m.content for m in turns] == ["미래에서 왔어.", "그럴 리가."]
        assert all(before <= t <= after for t in stored)

        # Freshly imported, the scene is its importer's ...
        refused = await harness.slash(
            s.members[1], "rp start", channel=s.general, character=str(his)
        )
        assert "진행 중" in await harness.final_text(refused)

        # ... until nothing happened in it for half an hour: then anyone may take it over.
        real_now = harness.bot.core.now
        harness.bot.core.now = lambda: real_now() + timedelta(minutes=31)
        taken = await harness.slash(s.members[1], "rp start", channel=s.general, character=str(his))
        await harness.final_text(taken)

        async def taken_over():
            active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
            return active.started_by == s.members[1].user.id

        assert await eventually(taken_over)


async def scene_count(harness) -> tuple[int, int]:
    from sqlalchemy import func, select

    from synatra_bot.storage.models import Message, RoleplaySession

    async with harness.sessions() as session:
        scenes = await session.scalar(select(func.count(RoleplaySession.id)))
        rows = await session.scalar(select(func.count(Message.id)))
    return scenes, rows


async def test_a_message_with_twenty_thousand_swipes_is_refused_naming_the_limit(
    start_bot, tokenizer
):
    async with start_bot(engine=numbered_replies(tokenizer)) as harness:
        s = harness.scenario
        await open_channel(harness)
        hers = await harness.character(s.members[0], "하늘")
        before = await scene_count(harness)
        swipes = [""] * 20_000
        data = chat_file(
            line("안녕.", is_user=True),
            line("", is_user=False, swipes=swipes, swipe_id=0),
        )
        assert len(data) < 100_000
        text = await import_file(harness, s.members[0], s.general, hers, data)
        assert "3번째 줄" in text and "스와이프" in text and f"{MAX_SWIPES_PER_MESSAGE}개" in text
        assert await scene_count(harness) == before

        # At the limit it is taken, every swipe kept.
        data = chat_file(
            line("안녕.", is_user=True),
            line(
                "답 0",
                is_user=False,
                swipes=[f"답 {i}" for i in range(MAX_SWIPES_PER_MESSAGE)],
                swipe_id=0,
            ),
        )
        assert "2개" in await import_file(harness, s.members[0], s.general, hers, data)
        active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        [_, last] = await repo.recent_history(harness.sessions, session_id=active.id, limit=10)
        options = await repo.alternatives(harness.sessions, message_id=last.id)
        assert len(options) == MAX_SWIPES_PER_MESSAGE


async def test_a_chat_of_more_rows_than_one_import_holds_is_refused_naming_the_limit(
    start_bot, tokenizer
):
    async with start_bot(engine=numbered_replies(tokenizer)) as harness:
        s = harness.scenario
        await open_channel(harness)
        hers = await harness.character(s.members[0], "하늘")
        before = await scene_count(harness)
        per_message = MAX_SWIPES_PER_MESSAGE
        messages = MAX_CHAT_ROWS // per_message + 1
        data = chat_file(
            *(
                line("", is_user=False, swipes=[""] * per_message, swipe_id=0)
                for _ in range(messages)
            )
        )
        text = await import_file(harness, s.members[0], s.general, hers, data)
        assert f"{MAX_CHAT_ROWS}개" in text and f"{messages + 1}번째 줄" in text
        assert await scene_count(harness) == before


async def test_a_large_chat_is_read_on_a_worker_thread_and_stored_in_rounds(
    start_bot, tokenizer, monkeypatch
):
    """What would hold the event loop is done elsewhere or cut small: the file is read on a
    worker thread, and no transaction writes more than `IMPORT_BATCH_ROWS` rows."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from synatra_bot.roleplay import archive
    from synatra_bot.storage.archives import IMPORT_BATCH_ROWS
    from synatra_bot.storage.models import Message

    read_on: list[threading.Thread] = []
    real_parse = archive.parse_chat

    def parse_chat(data: bytes, *, filename: str | None = None):
        read_on.append(threading.current_thread())
        return real_parse(data, filename=filename)

    monkeypatch.setattr(archive, "parse_chat", parse_chat)
    written: list[int] = []

    def executed(state) -> None:
        if state.is_insert and state.statement.table.name == Message.__tablename__:
            rows = state.parameters if isinstance(state.parameters, list) else [state.parameters]
            state.session.info["rows"] = state.session.info.get("rows", 0) + len(rows)

    def committed(session) -> None:
        written.append(session.info.pop("rows", 0))

    async with start_bot(engine=numbered_replies(tokenizer)) as harness:
        s = harness.scenario
        await open_channel(harness)
        hers = await harness.character(s.members[0], "하늘")
        pairs = 500
        data = chat_file(
            *itertools.chain.from_iterable(
                (
                    line(f"{n}번째 이야기.", is_user=True),
                    line(f"대답 {n}.", is_user=False, swipes=[f"대답 {n}.", f"다른 답 {n}."]),
                )
                for n in range(pairs)
            )
        )
        event.listen(Session, "do_orm_execute", executed)
        event.listen(Session, "after_commit", committed)
        try:
            text = await import_file(harness, s.members[0], s.general, hers, data)
        finally:
            event.remove(Session, "do_orm_execute", executed)
            event.remove(Session, "after_commit", committed)
        assert f"{2 * pairs}개" in text
        assert read_on and threading.main_thread() not in read_on
        rounds = [rows for rows in written if rows]
        assert sum(rounds) == 3 * pairs
        assert len(rounds) >= 3 * pairs // IMPORT_BATCH_ROWS
        assert max(rounds) <= IMPORT_BATCH_ROWS

        active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        turns = await repo.recent_history(harness.sessions, session_id=active.id, limit=5000)
        assert len(turns) == 2 * pairs and turns[-1].content == f"대답 {pairs - 1}."
        options = await repo.alternatives(harness.sessions, message_id=turns[-1].id)
        assert [m.content for m in options] == [f"대답 {pairs - 1}.", f"다른 답 {pairs - 1}."]


async def test_a_long_imported_chat_is_summarised_a_few_requests_per_reply(start_bot, tokenizer):
    """600 imported lines overflow the context many times over: each message sent after the
    import costs its reply and at most `SUMMARIES_PER_REPLY` summaries, the reply first."""
    async with start_bot(engine=numbered_replies(tokenizer)) as harness:
        s, engine = harness.scenario, harness.engine
        await open_channel(harness)
        hers = await harness.character(s.members[0], "하늘")
        story = "우리는 안개 낀 숲길을 따라 오래된 등대까지 천천히 걸어가며 이야기를 나눴다"
        data = chat_file(*(line(f"{n}번째 줄: {story}.", is_user=n % 2 == 0) for n in range(600)))
        assert "600개" in await import_file(harness, s.members[0], s.general, hers, data)
        shown = await harness.fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and m.content.startswith("599번째")
        )
        await harness.fake.wait_until(lambda: has_buttons(shown))
        asked = len(engine.prompts)

        for turn in range(3):
            reply = await harness.reply_to(s.general, s.members[0], f"{turn}: 등대에 도착했어.")
            assert reply.content.startswith("답장")
            await harness.bot.scheduler.background_idle()
            new = engine.prompts[asked:]
            asked = len(engine.prompts)
            summaries = [p for p in new if SUMMARY_DIALOGUE_HEADING in p]
            assert SUMMARY_DIALOGUE_HEADING not in new[0]  # the player's reply came first
            assert len(new) == 1 + len(summaries)
            assert 1 <= len(summaries) <= SUMMARIES_PER_REPLY

        status = await harness.bot.core.memory_status(
            Place(channel_id=s.general.id, guild_id=s.guild.id)
        )
        assert status.text and status.until_id is not None


async def test_an_import_whose_later_round_fails_leaves_nothing_behind(tmp_path):
    """The rounds before the failure were committed: they are deleted again, and the channel's
    running scene stays the one it had."""
    import pytest
    from sqlalchemy import func, select
    from sqlalchemy.exc import IntegrityError

    from synatra_bot.storage import archives
    from synatra_bot.storage.archives import IMPORT_BATCH_ROWS, ImportedTurn
    from synatra_bot.storage.database import create_engine, create_sessionmaker
    from synatra_bot.storage.migrate import upgrade_database
    from synatra_bot.storage.models import Message, RoleplaySession

    url = f"sqlite+aiosqlite:///{tmp_path / 'import.db'}"
    await upgrade_database(url)
    database = create_engine(url)
    sessions = create_sessionmaker(database)
    try:
        character = await repo.create_character(
            sessions, owner_id=7, guild_id=1, name="하늘", description="안내인."
        )
        running = await repo.start_session(
            sessions,
            guild_id=1,
            channel_id=500,
            parent_channel_id=None,
            character_id=character.id,
            started_by=7,
        )
        good = [ImportedTurn(role="user", options=("숲길을 걸었다.",), author_id=7)]
        broken = ImportedTurn(role=None, options=("없는 역할",))  # type: ignore[arg-type]
        with pytest.raises(IntegrityError):
            await archives.import_scene(
                sessions,
                guild_id=1,
                channel_id=500,
                parent_channel_id=None,
                character_id=character.id,
                started_by=7,
                turns=good * (2 * IMPORT_BATCH_ROWS) + [broken],
            )
        active = await repo.get_active_session(sessions, channel_id=500)
        assert active.id == running.id and active.ended_at is None
        async with sessions() as session:
            assert await session.scalar(select(func.count(RoleplaySession.id))) == 1
            assert (
                await session.scalar(
                    select(func.count(Message.id)).where(Message.session_id != running.id)
                )
                == 0
            )
    finally:
        await database.dispose()
