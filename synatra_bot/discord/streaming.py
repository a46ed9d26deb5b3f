"""Show a streaming reply in Discord: messages edited about once a second, split at 2,000
characters on a line or sentence boundary, never pinging anyone. In a server a character speaks
through a webhook with its own name; in a DM (no webhooks there) the bot posts, the name in bold
above the text."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import discord

from synatra_bot.discord.webhooks import webhook_username

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
EDIT_INTERVAL_S = 1.0
CURSOR = " ▌"
NO_MENTIONS = discord.AllowedMentions.none()
#: Extra rounds, with backoff, for a 429 that outlasts discord.py's own five tries.
RATE_LIMIT_ROUNDS = 3
RATE_LIMIT_BACKOFF_S = 0.5
T = TypeVar("T")
#: What a reply with nothing visible shows: Discord refuses blank messages, and zero-width
#: characters alone would look like a dead message.
EMPTY_REPLY = "…"
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"
_SENTENCE_END = re.compile(r"[.!?。！？…~](?:[\"'”’)\]]*)\s")


def split_reply(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Cut `text` into pieces of at most `limit` characters, preferring line breaks, then
    sentence ends, then spaces; a piece is cut mid-word only when nothing else fits."""
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = window.rfind("\n", limit // 2)
        if cut <= 0:
            ends = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() > limit // 3]
            cut = ends[-1] if ends else window.rfind(" ", limit // 2)
        if cut <= 0:
            cut = limit
        piece, rest = rest[:cut].rstrip(), rest[cut:].lstrip("\n ")
        if piece:
            pieces.append(piece)
    if rest or not pieces:
        pieces.append(rest)
    return pieces


def shown(piece: str) -> str:
    """`piece` as a message may carry it: one with nothing visible becomes `EMPTY_REPLY`."""
    return piece if piece.strip().strip(_INVISIBLE).strip() else EMPTY_REPLY


def release_view(view: discord.ui.View | None) -> None:
    """Drop the items of a sent view made only of dynamic items.

    discord.py finds a dynamic item by its custom id, never through the view it was sent with,
    so such a view is done once sent. Its items point back at it: without this the pair (about
    thirty objects a reply) waits for the cyclic garbage collector, whose extra passes land on
    other players' messages.
    """
    if view is not None and all(isinstance(item, discord.ui.DynamicItem) for item in view.children):
        view.clear_items()


class Poster(Protocol):
    """Where a reply's messages go: send, edit and delete them by id."""

    async def send(self, content: str, *, view: discord.ui.View | None) -> int: ...

    async def edit(self, message_id: int, content: str, *, view: Any) -> None: ...

    async def delete(self, message_id: int) -> None: ...


class WebhookPoster:
    """A character's webhook in a server channel (or a thread of it)."""

    def __init__(
        self,
        webhook: discord.Webhook,
        *,
        username: str,
        avatar_url: str | None = None,
        thread: discord.abc.Snowflake | None = None,
    ) -> None:
        self._webhook = webhook
        self._username = webhook_username(username)
        self._avatar_url = avatar_url
        self._thread = thread if thread is not None else discord.utils.MISSING

    async def send(self, content: str, *, view: discord.ui.View | None) -> int:
        message = await self._webhook.send(
            content,
            username=self._username,
            avatar_url=self._avatar_url or discord.utils.MISSING,
            thread=self._thread,
            wait=True,
            allowed_mentions=NO_MENTIONS,
            view=view or discord.utils.MISSING,
        )
        return message.id

    async def edit(self, message_id: int, content: str, *, view: Any) -> None:
        await self._webhook.edit_message(
            message_id,
            content=content,
            thread=self._thread,
            allowed_mentions=NO_MENTIONS,
            view=view,
        )

    async def delete(self, message_id: int) -> None:
        await self._webhook.delete_message(message_id, thread=self._thread)


class ChannelPoster:
    """The bot's own messages in a channel (a DM with the bot)."""

    def __init__(self, channel: discord.abc.Messageable) -> None:
        self._channel = channel

    async def send(self, content: str, *, view: discord.ui.View | None) -> int:
        message = await self._channel.send(
            content, allowed_mentions=NO_MENTIONS, view=view or discord.utils.MISSING
        )
        return message.id

    def _message(self, message_id: int) -> discord.PartialMessage:
        get = getattr(self._channel, "get_partial_message", None)
        if get is None:
            raise TypeError("this channel cannot edit its messages")
        message: discord.PartialMessage = get(message_id)
        return message

    async def edit(self, message_id: int, content: str, *, view: Any) -> None:
        await self._message(message_id).edit(
            content=content, allowed_mentions=NO_MENTIONS, view=view
        )

    async def delete(self, message_id: int) -> None:
        await self._message(message_id).delete()


def dm_heading(name: str) -> str:
    """What a reply in a DM starts with: the character's name in bold, on its own line."""
    safe = discord.utils.escape_markdown(" ".join(name.split()))[:80] or "…"
    return f"**{safe}**\n"


class ReplyMessages:
    """One reply shown as messages of a `Poster`. `update` is cheap to call for every delta:
    it edits at most once per `interval`; `finish` writes the final text with the buttons.
    A view handed to `finish` is spent once sent (`release_view`). `heading` starts the first
    message (a DM's character name)."""

    def __init__(
        self,
        poster: Poster,
        *,
        heading: str = "",
        interval: float = EDIT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._poster = poster
        self._heading = heading
        self._interval = interval
        self._clock = clock
        self._ids: list[int] = []
        self._shown: list[str] = []
        self._last_flush = 0.0
        self._lock = asyncio.Lock()

    @property
    def message_ids(self) -> list[int]:
        return list(self._ids)

    async def open(self, placeholder: str, *, view: discord.ui.View | None = None) -> None:
        """Post the first message right away (a typing cursor or the queue position), with
        `view` (the stop button, shared by every reply) on it while the reply streams."""
        async with self._lock:
            await self._sync(
                split_reply(self._heading + placeholder), view=view, final=bool(self._ids)
            )
        self._last_flush = self._clock()

    def pace_from_now(self) -> None:
        """Count the next edit's interval from now: a reply that finishes within it is shown
        once, by `finish`, instead of by an edit and then `finish`."""
        self._last_flush = self._clock()

    async def update(self, text: str) -> None:
        if self._clock() - self._last_flush < self._interval or self._lock.locked():
            return
        async with self._lock:
            try:
                pieces = split_reply(self._heading + text + CURSOR)
                await self._sync(pieces, view=None, patient=False)
            except discord.HTTPException as error:
                if error.status != 429:
                    raise
                # A streaming frame is not worth waiting for: the next one or `finish` shows it.
                log.info("skipped a streaming edit: Discord is still rate limiting")
            self._last_flush = self._clock()

    async def finish(self, text: str, *, view: discord.ui.View | None, note: str = "") -> list[int]:
        """Show the final text (plus an optional italic note) with `view` on the last message."""
        body = shown(text.strip())
        if note:
            body = f"{body}\n-# {note}"
        try:
            async with self._lock:
                await self._sync(split_reply(self._heading + body), view=view, final=True)
        finally:
            release_view(view)
        return self.message_ids

    async def _patiently(self, call: Callable[[], Awaitable[T]], *, patient: bool) -> T:
        """Run one webhook call; a 429 that discord.py gave up on gets a few bounded rounds more
        (the reply's first and final states must arrive, or the player sees a dead cursor)."""
        for attempt in range(RATE_LIMIT_ROUNDS if patient else 0):
            try:
                return await call()
            except discord.HTTPException as error:
                if error.status != 429:
                    raise
                log.warning("webhook still rate limited; trying again (round %d)", attempt + 2)
                await asyncio.sleep(RATE_LIMIT_BACKOFF_S * 2**attempt)
        return await call()

    async def _sync(
        self,
        pieces: list[str],
        *,
        view: discord.ui.View | None,
        final: bool = False,
        patient: bool = True,
    ) -> None:
        missing = discord.utils.MISSING
        for index, piece in enumerate(map(shown, pieces)):
            last = index == len(pieces) - 1
            piece_view = view if last else None
            if index < len(self._ids):
                if self._shown[index] == piece and not final:
                    continue
                await self._patiently(
                    functools.partial(
                        self._poster.edit,
                        self._ids[index],
                        piece,
                        view=piece_view if final else missing,
                    ),
                    patient=patient,
                )
                self._shown[index] = piece
            else:
                message_id = await self._patiently(
                    functools.partial(self._poster.send, piece, view=piece_view),
                    patient=patient,
                )
                self._ids.append(message_id)
                self._shown.append(piece)
        # A reply that shrank (a regenerated alternative) leaves no stale tail behind.
        while final and len(self._ids) > len(pieces):
            extra = self._ids.pop()
            self._shown.pop()
            with contextlib.suppress(discord.NotFound):
                await self._poster.delete(extra)

    def adopted(self, message_ids: Sequence[int]) -> ReplyMessages:
        """A writer on the same webhook that takes over already posted messages (to show
        another alternative, or a continuation, in their place)."""
        writer = ReplyMessages(
            self._poster, heading=self._heading, interval=self._interval, clock=self._clock
        )
        writer._ids = list(message_ids)
        writer._shown = [""] * len(message_ids)
        return writer

    async def update_status(self, text: str) -> None:
        """Replace what the first message shows (a queue position) while nothing streams yet."""
        async with self._lock:
            await self._sync(split_reply(self._heading + text), view=None)

    async def discard(self) -> None:
        """Delete the posted messages (a turn that was superseded before it said anything)."""
        async with self._lock:
            await self._sync([], view=None, final=True)  # deletes every message it posted
