"""Start-up of the Discord bot: settings, logging, database, engine, then the client."""

from __future__ import annotations

import asyncio

from synatra_bot.settings import Settings, configure_logging, load_settings


def run_bot(*, env_file: str = ".env") -> int:
    settings = load_settings(env_file=env_file)
    configure_logging(settings)
    return asyncio.run(serve(settings))


async def serve(settings: Settings) -> int:
    from synatra_bot.storage.migrate import upgrade_database

    await upgrade_database(settings.database_url)
    raise NotImplementedError("the Discord adapter lands with issue 6")
