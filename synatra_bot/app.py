"""Start-up and shutdown of the Discord bot: settings, logging, database, engine, client."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from synatra_bot import eventloop
from synatra_bot.settings import Settings, configure_logging, load_settings

if TYPE_CHECKING:
    from synatra_bot.discord.bot import SynatraBot
    from synatra_bot.engine.base import Engine

log = logging.getLogger(__name__)


def run_bot(*, env_file: str | None = None) -> int:
    settings = load_settings(env_file=env_file)
    configure_logging(settings)
    return eventloop.run(serve(settings), kind=settings.event_loop)


@contextlib.asynccontextmanager
async def running_bot(
    settings: Settings,
    *,
    engine: Engine | None = None,
    tokenizer: object | None = None,
    **bot_options: Any,
) -> AsyncIterator[SynatraBot]:
    """Build everything the bot depends on and tear it down in order afterwards.

    Tests pass their own engine (scripted or tiny) and tokenizer; `serve` builds the real ones.
    """
    from synatra_bot.discord.bot import BotDependencies, SynatraBot
    from synatra_bot.engine.factory import build_engine
    from synatra_bot.prompt.builder import PromptBuilder
    from synatra_bot.roleplay.characters import CharacterService
    from synatra_bot.roleplay.config import Defaults
    from synatra_bot.roleplay.core import RoleplayCore
    from synatra_bot.roleplay.scheduler import Scheduler
    from synatra_bot.storage.database import create_engine, create_sessionmaker
    from synatra_bot.storage.migrate import upgrade_database
    from synatra_bot.tokenizer import load_tokenizer

    before, after = await upgrade_database(settings.database_url)
    if before != after:
        log.info("database upgraded from %s to %s", before or "empty", after)
    database = create_engine(settings.database_url)
    if tokenizer is None:
        tokenizer = await asyncio.to_thread(load_tokenizer, settings.model_id)
    engine = engine or build_engine(settings, tokenizer=tokenizer)
    try:
        await engine.start()
        sessions = create_sessionmaker(database)
        core = RoleplayCore(
            sessions=sessions,
            characters=CharacterService(sessions, max_card_bytes=settings.max_attachment_bytes),
            builder=PromptBuilder(tokenizer),  # type: ignore[arg-type]
            defaults=Defaults.from_settings(settings),
        )
        scheduler = Scheduler(
            engine,
            max_concurrent=settings.max_concurrent_replies,
            turn_timeout_s=settings.turn_timeout_s,
        )
        if settings.shard_count is not None:
            bot_options.setdefault("shard_count", settings.shard_count)
        if settings.shard_ids is not None:
            bot_options.setdefault("shard_ids", list(settings.shard_ids))
        bot = SynatraBot(BotDependencies(settings, core, scheduler, engine), **bot_options)
        # Everything loaded so far (torch, transformers, the tokenizer) lives as long as the
        # process: keep it out of the garbage collector's full passes, which otherwise stall
        # the event loop for a few hundred milliseconds now and then.
        gc.collect()
        gc.freeze()
        try:
            yield bot
        finally:
            # Stop generating (nothing half-written is stored), let the handlers store or
            # discard what they have, then disconnect.
            await scheduler.shutdown(finish=False)
            await bot.replies.close()
            await bot.close()
            # What was frozen goes back to the collector with the bot: its cycles would never
            # be freed, and a process that starts another bot (the tests, the load test's
            # repeats) would keep every earlier one.
            gc.unfreeze()
    finally:
        await engine.close()
        await database.dispose()


async def serve(
    settings: Settings, *, engine: Engine | None = None, tokenizer: object | None = None
) -> int:
    """Run until Discord closes the connection or SIGINT/SIGTERM arrives.

    `engine` and `tokenizer` default to the ones the settings name (tests pass their own).
    """
    import aiohttp
    import discord

    async with running_bot(settings, engine=engine, tokenizer=tokenizer) as bot:
        loop = asyncio.get_running_loop()
        log.info("event loop: %s", eventloop.loop_name(loop))
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        runner = asyncio.create_task(bot.start(settings.discord_token))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if runner in done:
            try:
                runner.result()
            except discord.LoginFailure:
                log.error("DISCORD_TOKEN was refused by Discord: reset it in the developer portal")
                return 2
            except (aiohttp.ClientConnectionError, OSError, TimeoutError) as error:
                log.error("Discord cannot be reached (%s): check this machine's network", error)
                return 2
        else:
            log.info("shutting down")
    return 0
