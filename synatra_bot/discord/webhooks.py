"""Channel webhooks that speak as characters: one per (channel, character), with its avatar."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import discord

from synatra_bot.storage.records import CharacterRecord

log = logging.getLogger(__name__)
T = TypeVar("T")

WebhookChannel = discord.TextChannel | discord.ForumChannel
WEBHOOK_PREFIX = "synatra-"
MAX_WEBHOOKS_PER_CHANNEL = 8
USERNAME_LIMIT = 80
FALLBACK_USERNAME = "Synatra"
#: Discord refuses a webhook name or username containing these words in any case; one Latin
#: letter of each becomes its Cyrillic twin, so the name reads the same and passes.
_FORBIDDEN_WORDS = re.compile(r"discord|clyde", re.IGNORECASE)
_LOOK_ALIKES = str.maketrans({"o": "\u043e", "O": "\u041e", "y": "\u0443", "Y": "\u0423"})


def webhook_name(character_id: int) -> str:
    return f"{WEBHOOK_PREFIX}{character_id}"


def webhook_username(name: str) -> str:
    """The name a webhook message may carry for `name`: 1-80 characters, without the words
    Discord refuses. Only what Discord shows changes; the prompt keeps the stored name."""
    shown = name.strip()
    # Overlapping matches ("discordiscord") need another pass once the first is replaced.
    while _FORBIDDEN_WORDS.search(shown):
        shown = _FORBIDDEN_WORDS.sub(lambda m: m.group().translate(_LOOK_ALIKES), shown)
    return shown[:USERNAME_LIMIT].rstrip() or FALLBACK_USERNAME


class WebhookPool:
    """Finds or creates the webhook a character speaks through in a channel.

    Discord allows 15 webhooks per channel; the pool keeps at most `max_per_channel` of its own
    there, deleting the least recently used. Threads use their parent channel's webhooks.
    """

    def __init__(self, *, max_per_channel: int = MAX_WEBHOOKS_PER_CHANNEL) -> None:
        self._max = max_per_channel
        self._cache: OrderedDict[tuple[int, int], tuple[discord.Webhook, datetime]] = OrderedDict()
        self._locks: dict[int, asyncio.Lock] = {}

    def forget_channel(self, channel_id: int) -> None:
        for key in [k for k in self._cache if k[0] == channel_id]:
            del self._cache[key]

    async def get(self, channel: WebhookChannel, character: CharacterRecord) -> discord.Webhook:
        key = (channel.id, character.id)
        cached = self._cache.get(key)
        if cached is not None and cached[1] == character.updated_at:
            self._cache.move_to_end(key)
            return cached[0]
        async with self._locks.setdefault(channel.id, asyncio.Lock()):
            webhook = await self._find_or_create(channel, character, stale=cached is not None)
        self._cache[key] = (webhook, character.updated_at)
        self._cache.move_to_end(key)
        return webhook

    async def _find_or_create(
        self, channel: WebhookChannel, character: CharacterRecord, *, stale: bool
    ) -> discord.Webhook:
        me = channel.guild.me
        ours = [
            w
            for w in await channel.webhooks()
            if w.name and w.name.startswith(WEBHOOK_PREFIX) and (w.user is None or w.user == me)
        ]
        existing = next((w for w in ours if w.name == webhook_name(character.id)), None)
        if existing is not None:
            if stale:
                await _with_avatar(
                    character,
                    lambda avatar: existing.edit(avatar=avatar, reason="character avatar changed"),
                )
            return existing
        while len(ours) >= self._max:
            oldest = min(ours, key=lambda w: self._last_use(channel.id, w))
            ours.remove(oldest)
            await oldest.delete(reason="synatra-bot keeps a few webhooks per channel")
            self._cache.pop((channel.id, _character_id(oldest)), None)
        return await _with_avatar(
            character,
            lambda avatar: channel.create_webhook(
                name=webhook_name(character.id),
                avatar=avatar,
                reason=f"synatra-bot speaks as {character.name}",
            ),
        )

    def _last_use(self, channel_id: int, webhook: discord.Webhook) -> int:
        keys = list(self._cache)
        key = (channel_id, _character_id(webhook))
        return keys.index(key) if key in self._cache else -1


async def _with_avatar(
    character: CharacterRecord, send: Callable[[bytes | None], Awaitable[T]]
) -> T:
    """`send` with the character's avatar, or without it when the image cannot be one (an
    avatar stored before avatars were re-encoded as PNG: discord.py refuses a format it does
    not know, Discord an image it cannot read), so the character still speaks."""
    if character.avatar is None:
        return await send(None)
    try:
        return await send(character.avatar)
    except (ValueError, discord.HTTPException) as error:
        if isinstance(error, discord.HTTPException) and error.status != 400:
            raise
        log.warning(
            "the avatar of character %s cannot be a webhook's (%s); it speaks without it",
            character.id,
            error,
        )
        return await send(None)


def _character_id(webhook: discord.Webhook) -> int:
    try:
        return int((webhook.name or "").removeprefix(WEBHOOK_PREFIX))
    except ValueError:
        return -1
