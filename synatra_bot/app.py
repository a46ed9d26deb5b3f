"""The composition root: settings -> database -> tokenizer -> engine -> core, for every front end
(the Discord bot, the terminal), and the bot's start-up and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from synatra_bot import eventloop
from synatra_bot.errors import DiscordUnusable
from synatra_bot.observe import IGNORED, Observer
from synatra_bot.roleplay.characters import CharacterService
from synatra_bot.roleplay.core import RoleplayCore
from synatra_bot.roleplay.initiative import Timers
from synatra_bot.roleplay.scheduler import Scheduler
from synatra_bot.roleplay.turns import Turns
from synatra_bot.settings import Settings, configure_logging, load_settings

if TYPE_CHECKING:
    from synatra_bot.discord.bot import SynatraBot
    from synatra_bot.engine.base import Engine
    from synatra_bot.roleplay.embedded_recall import TurnEmbeddings

log = logging.getLogger(__name__)


def run_bot(*, env_file: str | None = None) -> int:
    # Until `serve` takes the signals over, SIGTERM interrupts as SIGINT does: a host that
    # stops the bot while it reads its settings and imports its libraries gets a clean exit.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        settings = load_settings(env_file=env_file)
        configure_logging(settings)
        return eventloop.run(serve(settings), kind=settings.event_loop)
    except KeyboardInterrupt:
        log.info("stopped during start-up")
        return 0


@dataclass(frozen=True, slots=True)
class Storage:
    """The database, migrated, and the services that read and write it."""

    sessions: Any
    characters: CharacterService


@contextlib.asynccontextmanager
async def open_storage(
    settings: Settings, *, observer: Observer = IGNORED
) -> AsyncIterator[Storage]:
    """Apply pending migrations and open the database (its statements reported to
    `observer`); closed on exit."""
    from synatra_bot.storage.database import (
        create_engine,
        create_sessionmaker,
        observe_statements,
    )
    from synatra_bot.storage.migrate import upgrade_database

    before, after = await upgrade_database(settings.database_url)
    if before != after:
        log.info("database upgraded from %s to %s", before or "empty", after)
    database = create_engine(settings.database_url, busy_timeout_s=settings.database_busy_timeout_s)
    if observer is not IGNORED:
        observe_statements(database, observer)
    try:
        sessions = create_sessionmaker(database)
        characters = CharacterService(
            sessions,
            max_card_bytes=settings.max_attachment_bytes,
            lorebook_quota_bytes=settings.lorebook_quota_bytes,
        )
        yield Storage(sessions, characters)
    finally:
        await database.dispose()


@contextlib.asynccontextmanager
async def open_engine(
    settings: Settings,
    *,
    engine: Engine | None = None,
    tokenizer: object | None = None,
    on_loading: Callable[[], None] | None = None,
    observer: Observer = IGNORED,
    before_engine: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[tuple[Engine, object]]:
    """The tokenizer and the started engine the settings name (or the ones given: tests pass
    a scripted engine); `before_engine` is awaited once the tokenizer is loaded, before the
    engine is built or started (its error stops the start), and `on_loading` is called before
    a model starts to load. Closed on exit."""
    from synatra_bot.engine.factory import build_engine
    from synatra_bot.tokenizer import load_tokenizer

    if tokenizer is None:
        tokenizer = await asyncio.to_thread(load_tokenizer, settings.model_id)
    if before_engine is not None:
        await before_engine()
    if engine is None:
        if on_loading is not None:
            on_loading()
        engine = build_engine(settings, tokenizer=tokenizer, observer=observer)
    try:
        await engine.start()
        yield engine, tokenizer
    finally:
        await engine.close()


def build_core(
    settings: Settings,
    storage: Storage,
    engine: Engine,
    tokenizer: object,
    *,
    max_concurrent: int | None = None,
    rate_limited: bool = True,
    observer: Observer = IGNORED,
) -> Turns:
    """The roleplay core and its scheduler over `storage` and `engine`, behind the turns
    every front end (the bot, the terminal) plays; the scenes' automatic memory runs in the
    scheduler's background lane (`turns.core.memory`). `rate_limited=False` counts no turns
    against anyone (the terminal: whatever a channel's setting says)."""
    from synatra_bot.prompt.builder import PromptBuilder
    from synatra_bot.roleplay.config import Defaults
    from synatra_bot.roleplay.memory import MemoryKeeper
    from synatra_bot.roleplay.recall import TurnRecall
    from synatra_bot.storage.retry import Patience

    core = RoleplayCore(
        sessions=storage.sessions,
        characters=storage.characters,
        builder=PromptBuilder(tokenizer),  # type: ignore[arg-type]
        defaults=Defaults.from_settings(settings),
        patience=Patience(locked_s=settings.database_retry_s),
    )
    scheduler = Scheduler(
        engine,
        max_concurrent=max_concurrent or settings.max_concurrent_replies,
        turn_timeout_s=settings.turn_timeout_s,
        rate_limited=rate_limited,
        observer=observer,
    )
    MemoryKeeper(core, scheduler)  # attaches itself to the core
    core.recall = TurnRecall(storage.sessions, embeddings=_turn_embeddings(settings, storage))
    return Turns(core, scheduler)


def _turn_embeddings(settings: Settings, storage: Storage) -> TurnEmbeddings | None:
    """Recall by meaning, when the host configured an embeddings server."""
    if not settings.embeddings_url:
        return None
    from synatra_bot.engine.embeddings import EmbeddingsClient
    from synatra_bot.roleplay.embedded_recall import TurnEmbeddings

    client = EmbeddingsClient(
        settings.embeddings_url,
        model=settings.embeddings_model,
        api_key=settings.embeddings_api_key,
    )
    log.info("recall: old turns are recalled by meaning too (%s)", client.shown_url)
    return TurnEmbeddings(storage.sessions, client, query_timeout_s=settings.embeddings_timeout_s)


@contextlib.asynccontextmanager
async def running_bot(
    settings: Settings,
    *,
    engine: Engine | None = None,
    tokenizer: object | None = None,
    before_engine: Callable[[], Awaitable[None]] | None = None,
    timers: Timers | None = None,
    **bot_options: Any,
) -> AsyncIterator[SynatraBot]:
    """Build everything the bot depends on and tear it down in order afterwards.

    Tests pass their own engine (scripted or tiny) and tokenizer; `serve` builds the real ones
    and checks the login in `before_engine`. With METRICS_ADDR set, every layer reports to one
    set of metrics, served with /healthz while the bot runs.
    """
    from synatra_bot.discord.bot import BotDependencies, SynatraBot

    metrics = None
    if settings.metrics_addr is not None:
        from synatra_bot.metrics import PrometheusMetrics

        metrics = PrometheusMetrics()
    observer = metrics or IGNORED
    async with (
        open_storage(settings, observer=observer) as storage,
        open_engine(
            settings,
            engine=engine,
            tokenizer=tokenizer,
            observer=observer,
            before_engine=before_engine,
        ) as (
            engine,
            tokenizer,
        ),
    ):
        turns = build_core(settings, storage, engine, tokenizer, observer=observer)
        scheduler = turns.scheduler
        recall = turns.core.recall
        if recall is not None:
            recall.start_catch_up()
        if settings.shard_count is not None:
            bot_options.setdefault("shard_count", settings.shard_count)
        if settings.shard_ids is not None:
            bot_options.setdefault("shard_ids", list(settings.shard_ids))
        bot = SynatraBot(BotDependencies(settings, turns, engine, observer, timers), **bot_options)
        async with contextlib.AsyncExitStack() as endpoints:
            # Listening before the bot starts: a taken address stops the start here, and
            # /healthz answers (503, not connected yet) while the bot logs in.
            if metrics is not None and settings.metrics_addr is not None:
                from synatra_bot.health import Watched, serving

                watched = Watched(bot, storage.sessions, engine, metrics)
                await endpoints.enter_async_context(serving(settings.metrics_addr, watched))
            # Everything loaded so far (torch, transformers, the tokenizer) lives as long as
            # the process: keep it out of the garbage collector's full passes, which otherwise
            # stall the event loop for a few hundred milliseconds now and then.
            gc.collect()
            gc.freeze()
            try:
                yield bot
            finally:
                # Stop generating (nothing half-written is stored), let the handlers store or
                # discard what they have, then disconnect.
                await scheduler.shutdown(finish=False)
                await bot.initiative.close()
                if recall is not None:
                    await recall.close()
                await bot.replies.close()
                await bot.close()
                # What was frozen goes back to the collector with the bot: its cycles would
                # never be freed, and a process that starts another bot (the tests, the load
                # test's repeats) would keep every earlier one.
                gc.unfreeze()


async def serve(
    settings: Settings, *, engine: Engine | None = None, tokenizer: object | None = None
) -> int:
    """Run until Discord closes the connection or SIGINT/SIGTERM arrives.

    The token and Discord's reachability are checked before the model loads (after the
    database and the tokenizer, whose errors are quicker), so a refused token or a missing
    network is one line in seconds rather than after minutes of loading.

    A signal while the bot runs shuts it down in order (`running_bot`). One during start-up
    (migrating the database, loading the tokenizer, checking the login, loading the model) stops
    the start where it is: what was opened so far is closed, and the exit is as clean.
    `engine` and `tokenizer` default to the ones the settings name (tests pass their own).
    """
    from synatra_bot.discord.login import check_login, login_error

    loop = asyncio.get_running_loop()
    starting = asyncio.current_task()
    stop = asyncio.Event()
    signalled: str | None = None

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signalled
        if signalled is not None:
            return  # already stopping: a second signal must not cut the clean-up short
        signalled = sig.name
        stop.set()
        if starting is not None:
            starting.cancel()

    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal, sig)
            handled.append(sig)
    try:
        async with running_bot(
            settings,
            engine=engine,
            tokenizer=tokenizer,
            before_engine=functools.partial(check_login, settings.discord_token),
        ) as bot:
            starting = None  # started: a signal now ends the wait below
            log.info("event loop: %s", eventloop.loop_name(loop))
            runner = asyncio.create_task(bot.start(settings.discord_token))
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if runner in done:
                error = runner.exception()
                if error is not None:
                    raise login_error(error) or error
            else:
                log.info("shutting down")
    except DiscordUnusable as error:
        log.error("%s", error)
        return 2
    except asyncio.CancelledError:
        if signalled is None or starting is None:
            raise
        log.info("stopped by %s during start-up; everything it had opened is closed", signalled)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    return 0
