"""Pytest fixtures for the fake Discord; register with ``pytest_plugins``."""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator

import pytest

from .server import FakeDiscord

with warnings.catch_warnings():
    # discord.py imports the stdlib audioop (deprecated on 3.11+) for voice.
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import discord


@pytest.fixture
async def discord_fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    """A started fake with the default scenario; discord.py points at it until teardown."""
    fake = FakeDiscord()
    fake.add_default_scenario()
    await fake.start()
    fake.install(monkeypatch)
    try:
        yield fake
    finally:
        await fake.stop()


@contextlib.asynccontextmanager
async def running_client(
    client: discord.Client,
    fake: FakeDiscord,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> AsyncIterator[discord.Client]:
    """Start ``client`` against ``fake``, wait until ready, close it on exit.

    Build the client with ``guild_ready_timeout=0.05`` or on_ready waits 2 s after the
    last GUILD_CREATE (discord.py's default).
    """
    task = asyncio.create_task(client.start(fake.token))
    try:
        ready = asyncio.create_task(client.wait_until_ready())
        done, _ = await asyncio.wait({ready, task}, timeout=timeout, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
            if task in done:
                task.result()  # re-raise the login/connect error
            raise TimeoutError("discord client did not become ready against the fake")
        yield client
    finally:
        await client.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task
