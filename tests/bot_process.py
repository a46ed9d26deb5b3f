"""The real bot in a child process (`python -m tests.fault_helpers bot`, the same `serve` a
deployment runs) against a fake Discord in the test process: for faults that are a process's
death or its signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any

from synatra_bot.storage import repository as repo
from synatra_bot.storage.database import create_engine, create_sessionmaker


def bot_env(fake, database: Path, tokenizer_dir: Path, prompts: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DISCORD_TOKEN": fake.token,
        "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "MODEL_ID": str(tokenizer_dir),
        "FAULT_PROMPT_LOG": str(prompts),
        "FAULT_DELAY_S": "0.05",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


async def spawn_bot(fake, env: dict[str, str], output: IO[bytes]) -> asyncio.subprocess.Process:
    """Start the bot process, its output to `output`; it logs in to `fake` on its own."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fault_helpers",
        "bot",
        fake.api_base,
        fake.gateway_url,
        env=env,
        stdout=output,
        stderr=asyncio.subprocess.STDOUT,
    )


@contextlib.asynccontextmanager
async def bot_process(
    fake, env: dict[str, str], log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """The real bot (`serve`, with its signal handlers) in a child process, logged in to `fake`."""
    identified = fake.identify_count
    with log.open("wb") as output:
        process = await spawn_bot(fake, env, output)
        try:
            await fake.wait_until(
                lambda: (
                    (fake.identify_count > identified and fake.connected)
                    or process.returncode is not None
                ),
                timeout=60,
            )
            assert process.returncode is None, log.read_text(errors="replace")
            yield process
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def start_scene(fake, database: Path, channels: Sequence[Any], **character: Any) -> None:
    """With a bot process running on `database`: the moderator's character 민지 (greeting
    "안녕, {{user}}!", other card fields from `character`) starts a scene in each channel, and
    its greeting is on screen."""
    s = fake.scenario
    storage = create_engine(f"sqlite+aiosqlite:///{database}")
    try:
        made = await repo.create_character(
            create_sessionmaker(storage),
            owner_id=s.moderator.user.id,
            guild_id=s.guild.id,
            name="민지",
            first_message="안녕, {{user}}!",
            **character,
        )
    finally:
        await storage.dispose()
    for channel in channels:
        record = await fake.slash(s.moderator, "rp start", channel=channel, character=str(made.id))
        await fake.wait_for_response(record)
        await fake.wait_for_message(channel, lambda m: m.webhook_id is not None, after=0)
