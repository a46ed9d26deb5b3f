"""Run the real bot (real discord.py client) against the fake Discord with a chosen engine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from synatra_bot.app import running_bot
from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.settings import settings_from_env
from synatra_bot.storage import repository as repo
from tests.discord_fake import FakeDiscord, FakeMessage, InteractionRecord


@dataclass
class BotHarness:
    fake: FakeDiscord
    bot: Any
    engine: Any

    @property
    def scenario(self):
        return self.fake.scenario

    @property
    def sessions(self):
        return self.bot.core.sessions

    def identify_at_once(self) -> None:
        """discord.py waits 5 s before every IDENTIFY after the first (Discord's identify rate
        limit); a test that makes the bot lose its session need not wait for that."""

        async def at_once(shard_id: int | None, *, initial: bool = False) -> None:
            return None

        self.bot.before_identify_hook = at_once

    async def slash(self, member, command: str, **options) -> InteractionRecord:
        record = await self.fake.slash(member, command, **options)
        await self.fake.wait_for_response(record)
        return record

    async def final_text(self, record: InteractionRecord) -> str:
        """What the user finally sees for an interaction (deferred ones: the followup/edit)."""

        def text():
            if record.followups:
                return record.followups[-1].content
            if record.original is not None and record.original.content:
                return record.original.content
            if record.callback_type in (4,) and record.callback_data:
                return record.callback_data.get("content") or ""
            return None

        return await self.fake.wait_until(text)

    async def character(self, owner, name: str = "민지", **fields) -> int:
        fields.setdefault("description", "{{char}}는 활발한 대학생이다.")
        fields.setdefault("first_message", "안녕, {{user}}! 오늘 뭐 할래?")
        record = await repo.create_character(
            self.sessions,
            owner_id=owner.user.id,
            guild_id=self.scenario.guild.id,
            name=name,
            **fields,
        )
        return record.id

    async def start_roleplay(self, member, channel, character_id: int) -> FakeMessage:
        record = await self.slash(member, "rp start", channel=channel, character=str(character_id))
        await self.final_text(record)
        return await self.fake.wait_for_message(
            channel, lambda m: m.webhook_id is not None, after=0
        )

    async def reply_to(self, channel, member, text: str, **kwargs) -> FakeMessage:
        """Say something and wait until the character's reply is final (has its buttons)."""
        said = await self.fake.say(channel, member, text, **kwargs)
        reply = await self.fake.wait_for_message(
            channel, lambda m: m.webhook_id is not None, after=said
        )
        await self.fake.wait_until(lambda: has_buttons(reply) or "⚠️" in reply.content, timeout=20)
        return reply


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
    """Poll an async check (database state trails what Discord shows by a write or two)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(0.02)


async def _ready(bot: Any, client: asyncio.Task[None], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    ready = asyncio.create_task(bot.wait_until_ready())
    done, _ = await asyncio.wait({ready, client}, timeout=timeout, return_when="FIRST_COMPLETED")
    if ready not in done:
        ready.cancel()
        if client in done:
            client.result()  # the login or connect error
        raise TimeoutError("the bot did not become ready against the fake")


def has_buttons(message: FakeMessage) -> bool:
    return any(
        c.get("custom_id", "").startswith("rp:regen")
        for row in message.components
        for c in row.get("components", [])
    )


def button_ids(message: FakeMessage) -> list[str]:
    return [c.get("custom_id", "") for row in message.components for c in row.get("components", [])]


def stop_button(message: FakeMessage) -> str | None:
    """The custom id of the ⏹ on a streaming reply (it names the reply it stops)."""
    return next((i for i in button_ids(message) if i.startswith("rp:stop:")), None)


@pytest.fixture
def start_bot(discord_fake, tmp_path, tokenizer) -> Callable[..., Any]:
    """`async with start_bot(engine=..., env={...}) as harness:` runs the bot until exit."""

    @contextlib.asynccontextmanager
    async def start(
        engine: Any = None,
        env: dict[str, str] | None = None,
        database: str | None = None,
        timers: Any = None,
    ) -> AsyncIterator[BotHarness]:
        settings = settings_from_env(
            {
                "DISCORD_TOKEN": discord_fake.token,
                "DATABASE_URL": database or f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
                **(env or {}),
            }
        )
        engine = engine or ScriptedEngine(tokenizer=tokenizer)
        # The bot's own shutdown (running_bot) stops generation, drains its handlers and then
        # disconnects, as in production; the client task ends after that.
        client: asyncio.Task[None] | None = None
        try:
            async with running_bot(
                settings,
                engine=engine,
                tokenizer=tokenizer,
                timers=timers,
                guild_ready_timeout=0.05,
            ) as bot:
                client = asyncio.create_task(bot.start(discord_fake.token))
                await _ready(bot, client)
                yield BotHarness(discord_fake, bot, engine)
        finally:
            if client is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await client

    return start


@pytest.fixture
async def harness(start_bot) -> AsyncIterator[BotHarness]:
    async with start_bot() as running:
        yield running
