"""Fault injection: the real bot against the fake Discord while the engine, the remote engine
server, the gateway, Discord's rate limits, the process and SQLite misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sqlite3
import sys
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from synatra_bot.app import running_bot
from synatra_bot.engine.base import SamplingParams
from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.errors import EngineUnavailable, GenerationInterrupted
from synatra_bot.settings import settings_from_env
from synatra_bot.storage import repository as repo
from synatra_bot.storage.database import create_engine, create_sessionmaker
from tests.bot_harness import BotHarness, eventually, has_buttons
from tests.bot_process import bot_env, bot_process, start_scene
from tests.discord_fake.fixtures import running_client
from tests.engine_helpers import free_port, running_process
from tests.fault_helpers import LONG_REPLY, SHORT_REPLY, long_when_asked

WEBHOOK_SEND = "/webhooks/{webhook_id}/{token}"
WEBHOOK_EDIT = "/webhooks/{webhook_id}/{token}/messages/{message_id}"


class FailingEngine(ScriptedEngine):
    """A scripted engine whose next requests break after a few deltas with the given errors."""

    def __init__(self, failures: Sequence[Exception], **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.failures = list(failures)

    async def stream(  # type: ignore[override]
        self, prompt: Sequence[int] | str, params: SamplingParams, *, request_id: str
    ) -> AsyncIterator[str]:
        failure = self.failures.pop(0) if self.failures else None
        sent = 0
        async for delta in super().stream(prompt, params, request_id=request_id):
            if failure is not None and sent >= 4:
                raise failure
            sent += 1
            yield delta


async def history_of(harness: BotHarness, channel) -> list:
    active = await repo.get_active_session(harness.sessions, channel_id=channel.id)
    return await repo.recent_history(harness.sessions, session_id=active.id, limit=100)


def character_posts(calls) -> list:
    """Webhook sends as the character (interaction followups share the route, not the name)."""
    return [
        c
        for c in calls
        if c.method == "POST"
        and c.route == WEBHOOK_SEND
        and c.status == 200
        and (c.json or {}).get("username") == "민지"
    ]


def webhook_messages_after(channel, message) -> list:
    return [m for m in channel.messages if m.id > message.id and m.webhook_id is not None]


# --- 1. the engine raises mid-stream ---------------------------------------------------------


async def test_engine_breaking_mid_stream_shows_an_error_stores_nothing_and_the_channel_goes_on(
    start_bot,
):
    engine = FailingEngine(
        [
            GenerationInterrupted("모델 연결이 끊김", partial_text=""),
            EngineUnavailable("엔진 프로세스가 죽었음"),
        ],
        replies="이 답장은 꽤 길어서 중간에 끊어질 수도 있어요.",
    )
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)

        broken = await harness.reply_to(s.general, s.members[0], "첫 번째 말")
        assert "⚠️" in broken.content and "끊겼어요" in broken.content
        assert not has_buttons(broken)
        died = await harness.reply_to(s.general, s.members[1], "두 번째 말")
        assert "⚠️" in died.content
        assert not has_buttons(died)
        history = await history_of(harness, s.general)
        assert [m.role for m in history] == ["assistant", "user", "user"]

        fine = await harness.reply_to(s.general, s.members[0], "세 번째 말")
        assert fine.content == "이 답장은 꽤 길어서 중간에 끊어질 수도 있어요."
        assert has_buttons(fine)
        history = await history_of(harness, s.general)
        assert [m.role for m in history] == ["assistant", "user", "user", "user", "assistant"]
        assert history[-1].content == fine.content
        assert history[-1].discord_message_ids == (fine.id,)


# --- 3. the gateway drops during a reply -----------------------------------------------------


async def test_gateway_drop_during_a_reply_resumes_without_double_posts_or_lost_messages(
    start_bot, tokenizer
):
    engine = ScriptedEngine(long_when_asked, delay_s=0.02, tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)
        identified = fake.identify_count

        said = await fake.say(s.general, s.members[0], "길게 옛날 이야기 해 줘")
        reply = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=said
        )
        await fake.wait_until(lambda: "옛날" in reply.content)
        await fake.drop_connection()
        assert not fake.connected
        during = await fake.say(s.general, s.members[1], "연결 끊긴 동안 보낸 말")
        await fake.wait_until(lambda: fake.connected)

        await fake.wait_until(
            lambda: (
                len(webhook_messages_after(s.general, said)) == 2
                and all(has_buttons(m) for m in webhook_messages_after(s.general, said))
            ),
            timeout=20,
        )
        first, second = webhook_messages_after(s.general, said)
        assert first.content == LONG_REPLY.strip()
        assert second.content == SHORT_REPLY
        assert fake.identify_count == identified  # resumed, not a new session

        async def settled():
            history = await history_of(harness, s.general)
            return history if len(history) == 5 and history[-1].discord_message_ids else None

        history = await eventually(settled)
        assert history is not None
        users = [m for m in history if m.role == "user"]
        assert sorted(m.content for m in users) == sorted(
            ["길게 옛날 이야기 해 줘", "연결 끊긴 동안 보낸 말"]
        )
        assert sorted(m.discord_message_id for m in users) == sorted([said.id, during.id])
        replies = [m for m in history if m.role == "assistant"][1:]
        assert [m.discord_message_ids for m in replies] == [(first.id,), (second.id,)]
        # Greeting, the first reply, the second one (posted as its queue place, then edited).
        assert len(character_posts(fake.calls)) == 3


# --- 4. 429 storms on webhook sends and edits ------------------------------------------------


async def test_429_storms_on_sends_and_edits_still_finish_replies_with_bounded_requests(
    start_bot, tokenizer
):
    engine = ScriptedEngine(long_when_asked, delay_s=0.01, tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)
        fake.rate_limits.edit_limit = 2
        fake.rate_limits.edit_window = 0.3
        before = len(fake.calls)
        # More 429s in a row than discord.py retries (five) on its own.
        fake.force_rate_limit("POST", WEBHOOK_SEND, times=8, retry_after=0.02)
        fake.force_rate_limit("PATCH", WEBHOOK_EDIT, times=12, retry_after=0.02)

        texts = ["길게 말해 줘", "또 길게 말해 줘", "짧게"]
        shown = []
        for member, text in zip(s.members, texts, strict=True):
            shown.append(await harness.reply_to(s.general, member, text))
        assert [m.content for m in shown] == [LONG_REPLY.strip(), LONG_REPLY.strip(), SHORT_REPLY]
        assert all(has_buttons(m) for m in shown)

        async def stored():
            history = await history_of(harness, s.general)
            done = [m for m in history if m.role == "assistant" and m.discord_message_ids]
            return history if len(done) == 4 else None

        history = await eventually(stored)
        assert history is not None
        assert [m.content.strip() for m in history if m.role == "assistant"][1:] == [
            LONG_REPLY.strip(),
            LONG_REPLY.strip(),
            SHORT_REPLY,
        ]
        webhook_calls = [c for c in fake.calls[before:] if c.route in (WEBHOOK_SEND, WEBHOOK_EDIT)]
        limited = [c for c in webhook_calls if c.status == 429]
        assert limited  # the storm happened
        # Every 429 costs one retry; beyond that each reply needs a send, a few edits, a finish.
        assert len(webhook_calls) - len(limited) <= 3 * 8
        assert len(webhook_calls) <= 3 * 8 + (8 + 12) + 10
        assert len(character_posts(webhook_calls)) == 3


# --- 2. the remote engine is down, hangs or talks garbage ------------------------------------


def _engine_server(url: str, action: str) -> dict:
    method = "POST" if action.startswith("mode/") else "GET"
    request = urllib.request.Request(f"{url}/{action}", method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


async def test_remote_engine_down_hanging_or_garbage_gives_a_clear_message_and_stores_nothing(
    discord_fake, tokenizer, tokenizer_dir, tmp_path
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = settings_from_env(
        {
            "DISCORD_TOKEN": discord_fake.token,
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'remote.db'}",
            "ENGINE": "openai",
            "ENGINE_URL": url,
            "MODEL_ID": str(tokenizer_dir),
            "ENGINE_TIMEOUT_S": "1",
            "TURN_TIMEOUT_S": "6",
        }
    )
    with contextlib.ExitStack() as server:
        async with (
            running_bot(settings, tokenizer=tokenizer, guild_ready_timeout=0.05) as bot,
            running_client(bot, discord_fake),
        ):
            harness = BotHarness(discord_fake, bot, None)
            s = harness.scenario
            character_id = await harness.character(s.moderator)
            await harness.start_roleplay(s.moderator, s.general, character_id)

            # Down: nothing listens. Four connection attempts with backoff, then a clear note.
            down = await harness.reply_to(s.general, s.members[0], "엔진 꺼져 있니?")
            assert "⚠️" in down.content and "4번 시도 후 포기했어요" in down.content
            assert not has_buttons(down)

            log = tmp_path / "engine.log"
            args = [sys.executable, "-m", "tests.fault_helpers", "engine", str(port)]
            await asyncio.to_thread(
                server.enter_context, running_process(args, f"{url}/stats", log)
            )
            # Hangs: each attempt times out after ENGINE_TIMEOUT_S; the turn ends at its limit.
            await asyncio.to_thread(_engine_server, url, "mode/hang")
            slow = await harness.reply_to(s.general, s.members[1], "왜 이렇게 느려?")
            assert "너무 오래 걸려서" in slow.content and not has_buttons(slow)
            hang_requests = (await asyncio.to_thread(_engine_server, url, "stats"))["counts"]
            assert 2 <= hang_requests["hang"] <= 4  # retried, but bounded

            # Garbage: a 200 answer that is not an event stream.
            await asyncio.to_thread(_engine_server, url, "mode/garbage")
            garbage = await harness.reply_to(s.general, s.members[2], "이상한 답이 와?")
            assert "⚠️" in garbage.content and "끊겼어요" in garbage.content
            assert not has_buttons(garbage)

            history = await history_of(harness, s.general)
            assert [m.role for m in history] == ["assistant", "user", "user", "user"]

            # Flaky: two 503s are retried and the reply arrives and is stored.
            await asyncio.to_thread(_engine_server, url, "mode/flaky")
            fine = await harness.reply_to(s.general, s.members[0], "이제 괜찮아?")
            assert fine.content == "다시 연결됐어요!" and has_buttons(fine)
            counts = (await asyncio.to_thread(_engine_server, url, "stats"))["counts"]
            assert counts["flaky"] == 3 and counts["garbage"] == 1
            stored = await eventually(
                lambda: _last_assistant_with_ids(harness, s.general, [fine.id])
            )
            assert stored is not None and stored.content == "다시 연결됐어요!"


async def _last_assistant_with_ids(harness: BotHarness, channel, ids: list[int]):
    history = await history_of(harness, channel)
    last = history[-1]
    return last if last.role == "assistant" and last.discord_message_ids == tuple(ids) else None


# --- 5. SIGTERM during generation ------------------------------------------------------------


async def _stop(process: asyncio.subprocess.Process, sig: int) -> int:
    process.send_signal(sig)
    return await asyncio.wait_for(process.wait(), timeout=20)


def _stored_turns(database: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return connection.execute("SELECT role, content FROM messages ORDER BY id").fetchall()


async def test_sigterm_during_generation_exits_cleanly_and_the_session_continues_on_restart(
    discord_fake, tokenizer_dir, tmp_path
):
    fake, s = discord_fake, discord_fake.scenario
    database, prompts = tmp_path / "signal.db", tmp_path / "prompts.log"
    env = bot_env(fake, database, tokenizer_dir, prompts)
    async with bot_process(fake, env, tmp_path / "bot1.log") as process:
        await start_scene(fake, database, [s.general], description="{{char}}는 활발한 대학생이다.")

        said = await fake.say(s.general, s.members[0], "기억해 줘: 내 고양이 이름은 나비야")
        first = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=said
        )
        await fake.wait_until(lambda: has_buttons(first), timeout=20)

        asked = await fake.say(s.general, s.members[0], "길게 이야기해 줘")
        partial = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=asked
        )
        await fake.wait_until(lambda: "옛날" in partial.content, timeout=20)
        assert await _stop(process, signal.SIGTERM) == 0
    # The bot ran on the loop a deployment gets by default, signal handlers included.
    assert "event loop: uvloop" in (tmp_path / "bot1.log").read_text(encoding="utf-8")

    turns = _stored_turns(database)
    assert ("user", "길게 이야기해 줘") in turns
    assert [role for role, _ in turns] == ["assistant", "user", "assistant", "user"]
    assert not any("옛날" in content for _, content in turns)
    # What the player sees: the half reply was taken down, nothing with buttons claims it.
    assert not any("옛날" in m.content and has_buttons(m) for m in s.general.visible_messages)

    async with bot_process(fake, env, tmp_path / "bot2.log") as process:
        again = await fake.say(s.general, s.members[0], "내 고양이 이름 기억나?")
        reply = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=again
        )
        await fake.wait_until(lambda: has_buttons(reply), timeout=20)
        assert reply.content == SHORT_REPLY
        last_prompt = prompts.read_text(encoding="utf-8").split("\0")[-2]
        assert "내 고양이 이름은 나비야" in last_prompt and "길게 이야기해 줘" in last_prompt
        assert await _stop(process, signal.SIGINT) == 0
    assert [role for role, _ in _stored_turns(database)][-2:] == ["user", "assistant"]


# --- 6. SQLite busy under concurrent writers -------------------------------------------------


async def test_sqlite_busy_with_another_writer_process_loses_no_rows(start_bot, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    database = tmp_path / "busy.db"
    fake = None
    async with start_bot(database=f"sqlite+aiosqlite:///{database}") as harness:
        fake, s = harness.fake, harness.scenario
        channels = [s.general] + [fake.add_channel(s.guild, f"방-{i}") for i in range(3)]
        character_id = await harness.character(s.moderator)
        for channel in channels:
            await fake.wait_until(lambda channel=channel: harness.bot.get_channel(channel.id))
            await harness.start_roleplay(s.moderator, channel, character_id)

        writer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.fault_helpers",
            "writer",
            str(database),
            "8",
            "0.25",
            stdout=asyncio.subprocess.PIPE,
        )
        said = await asyncio.gather(
            *(
                fake.say(channel, member, f"{channel.name}에서 {member.user.username}의 말")
                for member in s.members
                for channel in channels
            )
        )
        written, _ = await asyncio.wait_for(writer.communicate(), timeout=30)
        assert writer.returncode == 0 and int(written) == 8 * 20

        async def all_stored():
            counts = []
            for channel in channels:
                history = await history_of(harness, channel)
                done = [m for m in history if m.role == "assistant" and m.discord_message_ids]
                counts.append((len([m for m in history if m.role == "user"]), len(done)))
            return counts if all(c == (3, 4) for c in counts) else None

        assert await eventually(all_stored, timeout=30) is not None
        await fake.wait_until(
            lambda: all(
                len([m for m in channel.messages if m.webhook_id and has_buttons(m)]) == 3
                for channel in channels
            ),
            timeout=30,
        )
        for channel in channels:
            history = await history_of(harness, channel)
            users = sorted(m.discord_message_id for m in history if m.role == "user")
            assert users == sorted(m.id for m in said if m.channel_id == channel.id)
            replies = [m for m in channel.messages if m.webhook_id][1:]  # after the greeting
            assert len(replies) == 3 and all(has_buttons(m) for m in replies)

    with contextlib.closing(sqlite3.connect(database)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert connection.execute("SELECT count(*) FROM fault_writer").fetchone() == (160,)
    problems = [
        r for r in caplog.records if r.levelno >= logging.ERROR or "locked" in r.getMessage()
    ]
    assert problems == []


async def test_two_shard_processes_share_one_database_and_answer_each_message_once(
    monkeypatch, tokenizer_dir, tmp_path
):
    """The scale-out path: one process per shard (SHARD_COUNT/SHARD_IDS), one SQLite file.

    Each process serves only its own server's channels, both write the same database at once
    (BEGIN IMMEDIATE and the busy timeout arbitrate), and every message in both servers gets
    exactly one reply, stored exactly once.
    """
    from tests.discord_fake import MANAGE_GUILD, FakeDiscord

    fake = FakeDiscord(shard_count=2)
    guilds = []
    while {fake.shard_for(g.id) for g in guilds} != {0, 1}:  # one server on each shard
        guild = fake.add_guild(f"서버 {len(guilds) + 1}")
        if fake.shard_for(guild.id) not in {fake.shard_for(g.id) for g in guilds}:
            guilds.append(guild)
    places = []
    for guild in guilds:
        role = fake.add_role(guild, "운영진", MANAGE_GUILD, position=2)
        moderator = fake.add_member(guild, f"mod{guild.id}", roles=[role])
        players = [fake.add_member(guild, f"p{guild.id}-{n}") for n in range(3)]
        places.append((guild, fake.add_channel(guild, "롤플레이"), moderator, players))
    await fake.start()
    fake.install(monkeypatch)
    database, prompts = tmp_path / "shards.db", tmp_path / "prompts.log"
    env = {**bot_env(fake, database, tokenizer_dir, prompts), "FAULT_DELAY_S": "0.005"}
    try:
        async with contextlib.AsyncExitStack() as stack:
            for shard in (0, 1):
                shard_env = {**env, "SHARD_COUNT": "2", "SHARD_IDS": str(shard)}
                log = tmp_path / f"shard{shard}.log"
                await stack.enter_async_context(bot_process(fake, shard_env, log))
            storage = create_engine(f"sqlite+aiosqlite:///{database}")
            try:
                for guild, channel, moderator, _ in places:
                    character = await repo.create_character(
                        create_sessionmaker(storage),
                        owner_id=moderator.user.id,
                        guild_id=guild.id,
                        name=f"민지{guild.id % 100}",
                        first_message="안녕!",
                    )
                    record = await fake.slash(
                        moderator, "rp start", channel=channel, character=str(character.id)
                    )
                    await fake.wait_for_response(record)
                    await fake.wait_for_message(
                        channel, lambda m: m.webhook_id is not None, after=0
                    )
            finally:
                await storage.dispose()

            said = []
            for n in range(6):  # both servers at once, several players each
                for _, channel, _, players in places:
                    text = f"{n}번째 말이야, 들려?"
                    said.append((channel, await fake.say(channel, players[n % 3], text)))

            def replies(channel):  # the greeting (no buttons without alternates) and replies
                return [m for m in channel.messages if m.webhook_id is not None]

            def settled() -> bool:
                return all(
                    len(replies(channel)) == 1 + 6
                    and all(has_buttons(m) for m in replies(channel)[1:])
                    for _, channel, _, _ in places
                )

            await fake.wait_until(settled, timeout=60)
            await asyncio.sleep(0.5)  # nothing more may arrive
            assert settled()
    finally:
        await fake.stop()

    turns = _stored_turns(database)
    said_texts = [m.content for _, m in said]
    assert sorted(c for r, c in turns if r == "user") == sorted(said_texts)
    assert sum(r == "assistant" for r, _ in turns) == 2 * (1 + 6)
