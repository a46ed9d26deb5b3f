"""Load test: the real bot, then a bare discord.py echo bot, driven through the fake Discord.

    python -m benchmarks.load [--channels 50 --members 200 --rate 200 --seconds 10
                               --engine scripted|tiny --loop auto|uvloop|asyncio --short
                               --repeat 3 --json out.json]

The fake Discord and the load driver run in a child process (its own core and event loop), the
bot under test in this one, so neither steals the other's loop and the fake's cost per REST call
is the same for both bots. Both bots run on the same event loop, by default the one a deployed
bot gets (`--loop auto`: uvloop where installed); the child always runs asyncio's own.

Per run: a guild with N enabled channels (each with an active roleplay, greeting posted, so the
webhook exists), M members, and `rate` Korean messages per second for `seconds`, round-robin
over channels from random members. The per-user rate limit is raised for the guild
(`user_rate_limit`) and the fake's edit rate limit is off: both would otherwise refuse or slow
most turns at this rate, and neither is bot overhead.

Measured: overhead per message = the fake sending MESSAGE_CREATE to the fake receiving the
next webhook execute in that channel (matched first in, first out per channel; our bot posts
its reply or its queue position before it builds the prompt, so engine time is not in it),
engine time to first delta, event-loop lag (a 10 ms sampler in the bot's loop), RSS before and
after. Integrity (our bot): every user message stored exactly once, every final reply (the
webhook message with its buttons) stored exactly once, one final reply per user message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import logging
import multiprocessing
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from synatra_bot import eventloop
from synatra_bot.eventloop import EVENT_LOOP_KINDS

LINES = (
    "안녕? 오늘 하루는 어땠어?",
    "카페에 가서 따뜻한 라떼 한 잔 마시자.",
    "비가 오는데 우산을 깜빡했어…",
    "*문을 살짝 열고 안을 들여다본다*",
    "그 책 벌써 다 읽었어? 결말이 궁금해!",
    "내일 시험인데 하나도 공부를 안 했어.",
    "저기 봐, 하늘에 무지개가 떴어!",
    "배고프다. 떡볶이 먹으러 갈래?",
)
SAMPLE_INTERVAL_S = 0.01
ECHO_NAME = "에코"


@dataclass(frozen=True)
class LoadConfig:
    channels: int = 50
    members: int = 200
    rate: float = 200.0
    seconds: float = 10.0
    engine: str = "scripted"
    max_new_tokens: int = 24
    drain_timeout_s: float = 120.0
    seed: int = 0
    profile: Path | None = None


@dataclass
class RunResult:
    bot: str
    engine: str
    sent: int = 0
    send_seconds: float = 0.0
    drain_seconds: float = 0.0
    handled: int = 0
    replies_posted: int = 0
    replies_failed: int = 0
    stored_rows: int = 0
    overhead_ms: list[float] = field(default_factory=list, repr=False)
    unmatched_executes: int = 0
    engine_ttft_ms: list[float] = field(default_factory=list, repr=False)
    loop_lag_ms: list[float] = field(default_factory=list, repr=False)
    gc_pause_ms: list[float] = field(default_factory=list, repr=False)
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    bot_cpu_s: float = 0.0
    fake_cpu_s: float = 0.0
    rest_calls: int = 0
    webhook_executes: int = 0
    webhook_edits: int = 0
    rest_routes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    logged_errors: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("overhead_ms", "engine_ttft_ms", "loop_lag_ms", "gc_pause_ms"):
            values = data.pop(name)
            data[name] = {"n": len(values), "p50": percentile(values, 50)}
            data[name].update(p99=percentile(values, 99), max=max(values, default=0.0))
        return data


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# --- the fake Discord and the load driver (child process) -----------------------------------


def _timed_fake_class() -> Any:
    from tests.discord_fake import FakeDiscord

    class TimedFake(FakeDiscord):
        """Records when each MESSAGE_CREATE left and when the next webhook execute came in."""

        def __init__(self) -> None:
            super().__init__()
            self.recording = False
            self.pending: dict[int, deque[float]] = defaultdict(deque)
            self.overhead_ms: list[float] = []
            self.unmatched = 0
            self.executes = 0

        def mark_sent(self, channel_id: int) -> None:
            self.pending[channel_id].append(time.perf_counter())

        async def _execute_webhook(self, req: Any) -> Any:
            arrived = time.perf_counter()
            webhook = self.webhooks.get(int(req.params["webhook_id"]))
            if self.recording and webhook is not None:
                self.executes += 1
                waiting = self.pending[webhook.channel_id]
                if waiting:
                    self.overhead_ms.append((arrived - waiting.popleft()) * 1000)
                else:
                    self.unmatched += 1
            return await super()._execute_webhook(req)

    return TimedFake


def _is_final(message: Any, bot: str) -> bool:
    if bot == "bare":
        return True
    return any(
        c.get("custom_id", "").startswith("rp:regen")
        for row in message.components
        for c in row.get("components", [])
    )


async def _drive(conn: Connection, config: LoadConfig) -> None:
    import psutil

    from tests.discord_fake import MANAGE_GUILD

    fake = _timed_fake_class()()
    fake.rate_limits.enabled = False
    guild = fake.add_guild("부하 테스트 서버")
    channels = [fake.add_channel(guild, f"롤플레이-{i + 1}") for i in range(config.channels)]
    moderator_role = fake.add_role(guild, "운영진", MANAGE_GUILD, position=2)
    moderator = fake.add_member(guild, "moderator", nick="관리자 민수", roles=[moderator_role])
    members = [
        fake.add_member(guild, f"player{i}", global_name=f"플레이어{i + 1}")
        for i in range(config.members)
    ]
    await fake.start()
    try:
        conn.send(
            {
                "api_base": fake.api_base,
                "gateway_url": fake.gateway_url,
                "token": fake.token,
                "guild_id": guild.id,
                "channel_ids": [c.id for c in channels],
                "moderator_id": moderator.user.id,
            }
        )
        bot = await asyncio.to_thread(conn.recv)
        conn.send(await _load(fake, config, bot, channels, members, psutil.Process()))
        await asyncio.to_thread(conn.recv)  # the bot has closed
    finally:
        await fake.stop()


async def _load(
    fake: Any, config: LoadConfig, bot: str, channels: list[Any], members: list[Any], me: Any
) -> dict[str, Any]:
    rng = random.Random(config.seed)
    loop = asyncio.get_running_loop()
    boundary = fake.snowflake()
    calls_before = len(fake.calls)
    cpu_before = sum(me.cpu_times()[:2])
    total = round(config.rate * config.seconds)
    sent: list[tuple[int, int, str]] = []
    fake.recording = True
    start = loop.time()
    for index in range(total):  # bounded: exactly `total` messages, paced to the target rate
        delay = start + index / config.rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        channel = channels[index % len(channels)]
        text = f"{rng.choice(LINES)} #{index}"
        fake.mark_sent(channel.id)
        message = await fake.say(channel, rng.choice(members), text)
        sent.append((channel.id, message.id, text))
    send_seconds = loop.time() - start

    def replies() -> list[Any]:
        return [m for m in fake.messages.values() if m.id > boundary and m.webhook_id is not None]

    deadline = loop.time() + config.drain_timeout_s
    previous, stable_since = -1, loop.time()
    while loop.time() < deadline:  # bounded wait for the replies to be final
        finals = sum(_is_final(m, bot) for m in replies())
        if finals >= total:
            break
        if finals != previous:
            previous, stable_since = finals, loop.time()
        elif loop.time() - stable_since > 15:
            break  # nothing has moved for 15 s: report what is missing
        await asyncio.sleep(0.1)
    drain_seconds = loop.time() - start - send_seconds
    fake.recording = False
    calls = fake.calls[calls_before:]
    posted = replies()
    return {
        "sent": sent,
        "send_seconds": send_seconds,
        "drain_seconds": drain_seconds,
        "finals": [(m.channel_id, m.id, m.content) for m in posted if _is_final(m, bot)],
        "not_final": [(m.channel_id, m.id, m.content) for m in posted if not _is_final(m, bot)],
        "overhead_ms": fake.overhead_ms,
        "unmatched": fake.unmatched,
        "executes": fake.executes,
        "rest_calls": len(calls),
        "edits": sum(1 for c in calls if c.method == "PATCH" and "/webhooks/" in c.path),
        "routes": dict(Counter(_route(c.method, c.path) for c in calls).most_common()),
        "fake_cpu_s": sum(me.cpu_times()[:2]) - cpu_before,
    }


def _route(method: str, path: str) -> str:
    """`PATCH /webhooks/{id}/{token}/messages/{id}` for a call's path (ids and tokens folded)."""
    path = re.sub(r"/webhooks/(\d+)/[^/?]+", "/webhooks/{id}/{token}", path.split("?")[0])
    path = re.sub(r"/\d+", "/{id}", path)
    return f"{method} {path}"


def _fake_process_main(conn: Connection, config: LoadConfig) -> None:
    asyncio.run(_drive(conn, config))


# --- the bots under test (this process) ---------------------------------------------------


class TimedEngine:
    """Wraps an engine to record its time to first delta (what the overhead excludes)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.ttft_ms: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def stream(self, prompt: Any, params: Any, *, request_id: str) -> AsyncIterator[str]:
        start = time.perf_counter()
        deltas = self.inner.stream(prompt, params, request_id=request_id)
        first = True
        try:
            async for delta in deltas:
                if first:
                    self.ttft_ms.append((time.perf_counter() - start) * 1000)
                    first = False
                yield delta
        finally:
            close = getattr(deltas, "aclose", None)
            if close is not None:
                await close()


@contextlib.contextmanager
def _pointed_at(info: dict[str, Any]) -> Any:
    """Point discord.py's REST base and gateway at the fake (restored afterwards)."""
    import discord.gateway
    import discord.http
    import yarl

    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = info["api_base"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(info["gateway_url"] + "/")
    try:
        yield
    finally:
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


@contextlib.asynccontextmanager
async def _started(
    client: Any,
    token: str,
    *,
    close: bool = True,
    timeout: float = 30.0,  # noqa: ASYNC109
) -> AsyncIterator[Any]:
    """Run `client` until exit. With close=False whoever owns the client closes it (our bot:
    `running_bot` stops generation and drains the handlers before it disconnects)."""
    task = asyncio.create_task(client.start(token))
    try:
        ready = asyncio.create_task(client.wait_until_ready())
        done, _ = await asyncio.wait({ready, task}, timeout=timeout, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            if task in done:
                task.result()
            raise TimeoutError("the bot did not become ready against the fake")
        yield task
    finally:
        if close or not client.is_ready():
            await client.close()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class ErrorCounter(logging.Handler):
    """Counts what the bot logs at ERROR, by exception type (printing 1000s of tracebacks
    under overload helps nobody)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        self.counts[
            f"{record.getMessage()}: {type(error).__name__}" if error else record.getMessage()
        ] += 1


def _bare_echo_bot() -> Any:
    """The baseline: commands.Bot with message_content that echoes through a channel webhook."""
    import discord
    from discord.ext import commands

    intents = discord.Intents.default()
    intents.message_content = True
    bot = commands.Bot(command_prefix="!", intents=intents, guild_ready_timeout=0.05)
    bot.echo_webhooks = {}  # type: ignore[attr-defined]

    @bot.event
    async def on_message(message: discord.Message) -> None:
        if message.author.bot or message.webhook_id is not None or message.guild is None:
            return
        webhook = bot.echo_webhooks[message.channel.id]  # type: ignore[attr-defined]
        await webhook.send(
            message.content,
            username=ECHO_NAME,
            wait=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    return bot


class LoadRun:
    """One bot against one fake: start both, set up, load, check, stop."""

    def __init__(self, config: LoadConfig, bot: str, workdir: Path, tokenizer: Any) -> None:
        self.config = config
        self.bot = bot
        self.workdir = workdir
        self.tokenizer = tokenizer
        self.result = RunResult(bot=bot, engine=config.engine if bot == "synatra" else "-")

    async def run(self) -> RunResult:
        context = multiprocessing.get_context("spawn")
        conn, child_conn = context.Pipe()
        process = context.Process(target=_fake_process_main, args=(child_conn, self.config))
        process.start()
        try:
            info = await asyncio.wait_for(asyncio.to_thread(conn.recv), 60)
            errors = ErrorCounter()
            logging.getLogger().addHandler(errors)
            try:
                with _pointed_at(info):
                    if self.bot == "bare":
                        await self._run_bare(conn, info)
                    else:
                        await self._run_synatra(conn, info)
            finally:
                logging.getLogger().removeHandler(errors)
            self.result.logged_errors = dict(errors.counts)
            self.result.problems.extend(
                f"logged {n}x: {what}" for what, n in errors.counts.most_common(5)
            )
            conn.send("closed")
        finally:
            await asyncio.to_thread(process.join, 30)
            if process.is_alive():
                process.terminate()
        return self.result

    async def _load(self, conn: Connection) -> dict[str, Any]:
        import psutil

        me = psutil.Process()
        self.result.rss_before_mb = me.memory_info().rss / 2**20
        cpu_before = sum(me.cpu_times()[:2])
        sampler = asyncio.create_task(self._sample_lag())
        profiler = cProfile.Profile() if self.config.profile else None
        gc_started = 0.0

        def on_gc(phase: str, _info: dict[str, Any]) -> None:
            nonlocal gc_started
            if phase == "start":
                gc_started = time.perf_counter()
            else:
                self.result.gc_pause_ms.append((time.perf_counter() - gc_started) * 1000)

        gc.callbacks.append(on_gc)
        conn.send(self.bot)
        try:
            if profiler is not None:
                profiler.enable()
            data: dict[str, Any] = await asyncio.to_thread(conn.recv)
        finally:
            gc.callbacks.remove(on_gc)
            if profiler is not None:
                profiler.disable()
                assert self.config.profile is not None
                profiler.dump_stats(self.config.profile.with_suffix(f".{self.bot}.pstats"))
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        self.result.bot_cpu_s = sum(me.cpu_times()[:2]) - cpu_before
        self.result.rss_after_mb = me.memory_info().rss / 2**20
        r = self.result
        r.sent = len(data["sent"])
        r.send_seconds, r.drain_seconds = data["send_seconds"], data["drain_seconds"]
        r.replies_posted = len(data["finals"])
        r.replies_failed = len(data["not_final"])
        r.overhead_ms, r.unmatched_executes = data["overhead_ms"], data["unmatched"]
        r.rest_calls, r.webhook_executes = data["rest_calls"], data["executes"]
        r.webhook_edits, r.fake_cpu_s = data["edits"], data["fake_cpu_s"]
        r.rest_routes = data["routes"]
        if r.replies_posted != r.sent:
            r.problems.append(f"{r.sent} messages sent but {r.replies_posted} final replies")
        return data

    async def _sample_lag(self) -> None:
        lag = self.result.loop_lag_ms
        while True:
            start = time.perf_counter()
            await asyncio.sleep(SAMPLE_INTERVAL_S)
            lag.append(max(0.0, (time.perf_counter() - start - SAMPLE_INTERVAL_S) * 1000))

    async def _run_bare(self, conn: Connection, info: dict[str, Any]) -> None:
        bot = _bare_echo_bot()
        async with _started(bot, info["token"]):
            for channel_id in info["channel_ids"]:
                channel = bot.get_channel(channel_id)
                bot.echo_webhooks[channel_id] = await channel.create_webhook(name="echo")
            # As our bot does at start-up (`running_bot`): what exists now, including what the
            # bot tested before this one left behind in this process, stays out of the
            # collector's full passes, so neither bot pays for the other's garbage.
            gc.collect()
            gc.freeze()
            try:
                data = await self._load(conn)
            finally:
                gc.unfreeze()  # as `running_bot` does when its bot stops
        echoed = Counter(text for _, _, text in data["finals"])
        sent = Counter(text for _, _, text in data["sent"])
        self.result.handled = sum(min(echoed[t], 1) for t in sent)
        if echoed != sent:
            self.result.problems.append("echoes do not match the messages one to one")

    def _engine(self) -> Any:
        if self.config.engine == "tiny":
            from synatra_bot.engine.transformers_engine import TransformersEngine
            from tests.model_fixtures import write_tiny_model

            model_dir = write_tiny_model(self.workdir / "tiny-model")
            return TimedEngine(TransformersEngine(str(model_dir), context_size=1024))
        from synatra_bot.engine.scripted import ScriptedEngine

        return TimedEngine(ScriptedEngine())

    async def _run_synatra(self, conn: Connection, info: dict[str, Any]) -> None:
        from synatra_bot.app import running_bot
        from synatra_bot.settings import settings_from_env

        settings = settings_from_env(
            {
                "DISCORD_TOKEN": info["token"],
                "DATABASE_URL": f"sqlite+aiosqlite:///{self.workdir / 'load.db'}",
                "MAX_NEW_TOKENS": str(self.config.max_new_tokens),
                "CONTEXT_SIZE": "1024" if self.config.engine == "tiny" else "4096",
            }
        )
        engine = self._engine()
        async with (
            running_bot(
                settings, engine=engine, tokenizer=self.tokenizer, guild_ready_timeout=0.05
            ) as bot,
            _started(bot, info["token"], close=False) as client_task,
        ):
            await self._set_up(bot, info)
            data = await self._load(conn)
            self.result.engine_ttft_ms = list(engine.ttft_ms)
            await self._check_storage(bot, info, data)
        with contextlib.suppress(asyncio.CancelledError):
            await client_task

    async def _set_up(self, bot: Any, info: dict[str, Any]) -> None:
        from synatra_bot.roleplay.types import Actor, Place
        from synatra_bot.storage import repository as repo

        sessions, guild_id = bot.core.sessions, info["guild_id"]
        await repo.update_guild_settings(sessions, guild_id=guild_id, user_rate_limit=1_000_000)
        owner = Actor(info["moderator_id"], "관리자 민수", guild_id, is_moderator=True)
        character = await repo.create_character(
            sessions,
            owner_id=owner.user_id,
            guild_id=guild_id,
            name="민지",
            description="{{char}}는 활발한 대학생이다.",
            first_message="안녕, {{user}}! 오늘 뭐 할래?",
        )
        for channel_id in info["channel_ids"]:
            await repo.update_channel_settings(
                sessions, channel_id=channel_id, guild_id=guild_id, enabled=True
            )
            place = Place(channel_id=channel_id, guild_id=guild_id)
            started = await bot.core.start(owner, place, character_id=character.id)
            await bot.replies.show_greeting(bot.get_channel(channel_id), started)

    async def _check_storage(self, bot: Any, info: dict[str, Any], data: dict[str, Any]) -> None:
        """Poll briefly (the last writes trail the final edit), then record what is wrong."""
        problems: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                problems = await self._storage_problems(bot, info, data)
            except Exception as error:  # under overload even reads can fail: that is a finding
                problems = [f"integrity check could not read the database: {error!r:.200}"]
            if not problems:
                break
            await asyncio.sleep(0.1)
        self.result.problems.extend(problems)

    async def _storage_problems(
        self, bot: Any, info: dict[str, Any], data: dict[str, Any]
    ) -> list[str]:
        from synatra_bot.storage import repository as repo

        users: Counter[int] = Counter()
        replies: Counter[int] = Counter()
        rows = 0
        problems: list[str] = []
        for channel_id in info["channel_ids"]:
            session = await repo.get_active_session(bot.core.sessions, channel_id=channel_id)
            if session is None:
                problems.append(f"channel {channel_id} lost its session")
                continue
            history = await repo.recent_history(
                bot.core.sessions, session_id=session.id, limit=10**9
            )
            rows += len(history)
            for message in history[1:]:  # history[0] is the greeting
                target = users if message.role == "user" else replies
                if not message.discord_message_ids:
                    problems.append(f"stored {message.role} turn {message.id} has no Discord id")
                target.update(message.discord_message_ids)
        sent_ids = [message_id for _, message_id, _ in data["sent"]]
        final_ids = [message_id for _, message_id, _ in data["finals"]]
        self.result.stored_rows = rows
        self.result.handled = sum(1 for i in sent_ids if users[i] >= 1)
        lost = [i for i in sent_ids if users[i] == 0]
        twice = [i for i in sent_ids if users[i] > 1]
        if lost:
            problems.append(f"{len(lost)} user messages not stored, e.g. {lost[:3]}")
        if twice:
            problems.append(f"{len(twice)} user messages stored twice, e.g. {twice[:3]}")
        if set(users) - set(sent_ids):
            problems.append("stored user turns that nobody sent")
        missing = [i for i in final_ids if replies[i] == 0]
        doubled = [i for i in final_ids if replies[i] > 1]
        if missing:
            problems.append(f"{len(missing)} final replies not stored, e.g. {missing[:3]}")
        if doubled:
            problems.append(f"{len(doubled)} final replies stored twice, e.g. {doubled[:3]}")
        unposted = set(replies) - set(final_ids)
        if unposted:
            problems.append(f"{len(unposted)} stored replies were not posted as final replies")
        return problems


async def run_load(
    config: LoadConfig, *, bots: Sequence[str] = ("synatra", "bare")
) -> list[RunResult]:
    """Run each bot in turn against its own fresh fake; return their results."""
    from synatra_bot.tokenizer import load_tokenizer
    from tests.model_fixtures import write_tokenizer

    results = []
    with tempfile.TemporaryDirectory(prefix="synatra-load-") as tmp:
        workdir = Path(tmp)
        tokenizer = load_tokenizer(write_tokenizer(workdir / "tokenizer"))
        for bot in bots:
            run_dir = workdir / bot
            run_dir.mkdir()
            results.append(await LoadRun(config, bot, run_dir, tokenizer).run())
    return results


def overhead_ratios(results: Sequence[RunResult]) -> tuple[float, float] | None:
    """Our bot's p50 and p99 overhead over the bare bot's, from one pair of runs."""
    ours = next((r for r in results if r.bot == "synatra"), None)
    bare = next((r for r in results if r.bot == "bare"), None)
    if not (ours and bare and bare.overhead_ms and ours.overhead_ms):
        return None
    p50 = percentile(ours.overhead_ms, 50) / max(percentile(bare.overhead_ms, 50), 1e-9)
    p99 = percentile(ours.overhead_ms, 99) / max(percentile(bare.overhead_ms, 99), 1e-9)
    return p50, p99


def format_repeats(pairs: Sequence[Sequence[RunResult]]) -> str:
    """The ratios of repeated pairs and their median: on a shared machine the speed drifts
    from minute to minute, and one pair's p99 ratio moves with it."""
    ratios = [r for r in (overhead_ratios(pair) for pair in pairs) if r is not None]
    if not ratios:
        return "no pair had both bots"
    p50s = sorted(r[0] for r in ratios)
    p99s = sorted(r[1] for r in ratios)
    listed = ", ".join(f"{r[1]:.2f}x" for r in ratios)
    return (
        f"over {len(ratios)} pairs: p99 ratios {listed}; median p50 {percentile(p50s, 50):.2f}x,"
        f" median p99 {percentile(p99s, 50):.2f}x (target <= 2x)"
    )


def format_table(results: Sequence[RunResult]) -> str:
    head = (
        "| bot | engine | sent | send s | handled | replies | failed | rows | overhead p50 ms |"
        " overhead p99 ms | engine TTFT p50/p99 ms | loop lag p50/p99/max ms | RSS MB before→after |"
        " GC pauses n / max ms | bot CPU s | fake CPU s | REST calls |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        o, t, lag = r.overhead_ms, r.engine_ttft_ms, r.loop_lag_ms
        ttft = f"{percentile(t, 50):.1f} / {percentile(t, 99):.1f}" if t else "-"
        lines.append(
            f"| {r.bot} | {r.engine} | {r.sent} | {r.send_seconds:.1f} | {r.handled} |"
            f" {r.replies_posted} | {r.replies_failed} | {r.stored_rows or '-'} |"
            f" {percentile(o, 50):.1f} | {percentile(o, 99):.1f} | {ttft} |"
            f" {percentile(lag, 50):.1f} / {percentile(lag, 99):.1f} / {max(lag, default=0):.0f} |"
            f" {r.rss_before_mb:.0f}→{r.rss_after_mb:.0f} |"
            f" {len(r.gc_pause_ms)} / {max(r.gc_pause_ms, default=0):.1f} |"
            f" {r.bot_cpu_s:.1f} | {r.fake_cpu_s:.1f} |"
            f" {r.rest_calls} |"
        )
    ratios = overhead_ratios(results)
    if ratios is not None:
        lines.append("")
        lines.append(
            f"ratio synatra/bare: p50 {ratios[0]:.2f}x, p99 {ratios[1]:.2f}x (target <= 2x)"
        )
    for r in results:
        per_message = ", ".join(
            f"{route} {count / max(r.sent, 1):.2f}" for route, count in r.rest_routes.items()
        )
        lines.append(f"REST calls per message ({r.bot}): {per_message}")
    for r in results:
        for problem in r.problems:
            lines.append(f"PROBLEM ({r.bot}): {problem}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--engine", choices=("scripted", "tiny"), default="scripted")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="max wait for replies")
    parser.add_argument(
        "--loop",
        choices=EVENT_LOOP_KINDS,
        default="auto",
        help="the bots' event loop (auto: uvloop where installed, as the deployed bot)",
    )
    parser.add_argument("--short", action="store_true", help="5 channels, 20 members, 30/s, 2 s")
    parser.add_argument("--bots", default="synatra,bare", help="comma-separated: synatra,bare")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the bots this many times in turn; median ratio"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="cProfile the bot's process while the load runs; writes PROFILE.<bot>.pstats",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    config = LoadConfig(
        channels=5 if args.short else args.channels,
        members=20 if args.short else args.members,
        rate=30.0 if args.short else args.rate,
        seconds=2.0 if args.short else args.seconds,
        engine=args.engine,
        max_new_tokens=args.max_new_tokens,
        drain_timeout_s=args.drain_timeout,
        profile=args.profile,
    )
    import warnings

    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    # Errors are counted per run and listed under the table; only CRITICAL goes to stderr.
    logging.basicConfig(level=logging.CRITICAL, format="%(levelname)s %(name)s: %(message)s")
    print(f"config: {config}, event loop: {eventloop.resolve(args.loop)}", flush=True)
    pairs = []
    for _ in range(max(1, args.repeat)):
        results = eventloop.run(run_load(config, bots=args.bots.split(",")), kind=args.loop)
        print(format_table(results), flush=True)
        pairs.append(results)
    if len(pairs) > 1:
        print(format_repeats(pairs))
    everything = [r for pair in pairs for r in pair]
    if args.json is not None:
        args.json.write_text(
            json.dumps([r.summary() for r in everything], ensure_ascii=False, indent=2), "utf-8"
        )
    return 1 if any(r.problems for r in everything) else 0


if __name__ == "__main__":
    sys.exit(main())
