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
#: How long a reply's first and final states keep being tried while Discord fails (5xx) or
#: rate limits past discord.py's own tries; the wait between tries doubles up to the cap.
FINAL_DEADLINE_S = 60.0
RETRY_BACKOFF_S = 0.5
RETRY_BACKOFF_CAP_S = 8.0
#: Discord's JSON error codes for a webhook or a message that no longer exists.
UNKNOWN_WEBHOOK = 10015
UNKNOWN_MESSAGE = 10008
T = TypeVar("T")
#: Told when the messages of a reply change (posted anew, or a first one added).
PostedCallback = Callable[[list[int]], Awaitable[None]]
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


def transient(error: discord.HTTPException) -> bool:
    """Discord failing or rate limiting: the same request may pass later."""
    return error.status == 429 or error.status >= 500


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

    async def renew(self) -> bool:
        """Get a fresh way to post after Discord said the old one is gone (a deleted
        webhook); False when there is none."""
        ...

    async def remove_stale(self, message_id: int) -> None:
        """Delete a message this poster can no longer change (its webhook was deleted)."""
        ...


#: Makes a character's webhook in a channel again (the old one was deleted).
Renew = Callable[[], Awaitable[discord.Webhook]]


class WebhookPoster:
    """A character's webhook in a server channel (or a thread of it)."""

    def __init__(
        self,
        webhook: discord.Webhook,
        *,
        username: str,
        avatar_url: str | None = None,
        thread: discord.abc.Snowflake | None = None,
        renew: Renew | None = None,
        channel: discord.abc.Messageable | None = None,
    ) -> None:
        self._webhook = webhook
        self._username = webhook_username(username)
        self._avatar_url = avatar_url
        self._thread = thread if thread is not None else discord.utils.MISSING
        self._renew = renew
        self._channel = channel

    @property
    def webhook_id(self) -> int:
        return self._webhook.id

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

    async def renew(self) -> bool:
        if self._renew is None:
            return False
        self._webhook = await self._renew()
        return True

    async def remove_stale(self, message_id: int) -> None:
        if self._channel is not None:
            await self.remove_stale_from(self._channel, message_id)

    @staticmethod
    async def remove_stale_from(channel: discord.abc.Messageable, message_id: int) -> None:
        """Delete a message of a deleted webhook in `channel`, where the bot may."""
        get = getattr(channel, "get_partial_message", None)
        if get is None:
            return
        try:
            await get(message_id).delete()
        except discord.HTTPException as error:
            # Deleting another's message needs Manage Messages; without it the old message
            # stays as it was last shown.
            log.warning("could not delete a message of a deleted webhook: %s", error.status)


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

    async def renew(self) -> bool:
        return False

    async def remove_stale(self, message_id: int) -> None:
        with contextlib.suppress(discord.HTTPException):
            await self.delete(message_id)


def dm_heading(name: str) -> str:
    """What a reply in a DM starts with: the character's name in bold, on its own line."""
    safe = discord.utils.escape_markdown(" ".join(name.split()))[:80] or "…"
    return f"**{safe}**\n"


class ReplyMessages:
    """One reply shown as messages of a `Poster`. `update` is cheap to call for every delta:
    it starts an edit at most once per `interval`, in the background, and skips frames while
    one is still on its way (a slow or failing Discord never holds up the stream);
    `finish` writes the final text with the buttons, trying for `final_deadline_s` while
    Discord fails. A view handed to `finish` is spent once sent (`release_view`). `heading`
    starts the first message (a DM's character name). `on_posted` hears the message ids
    whenever a message is added or posted anew (a deleted webhook or message)."""

    def __init__(
        self,
        poster: Poster,
        *,
        heading: str = "",
        interval: float = EDIT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        final_deadline_s: float = FINAL_DEADLINE_S,
        on_posted: PostedCallback | None = None,
    ) -> None:
        self._poster = poster
        self._heading = heading
        self._interval = interval
        self._clock = clock
        self._final_deadline_s = final_deadline_s
        self._on_posted = on_posted
        self._ids: list[int] = []
        self._shown: list[str] = []
        self._last_flush = 0.0
        self._lock = asyncio.Lock()
        self._frame: asyncio.Task[None] | None = None

    @property
    def message_ids(self) -> list[int]:
        return list(self._ids)

    @property
    def poster(self) -> Poster:
        return self._poster

    async def open(self, placeholder: str, *, view: discord.ui.View | None = None) -> None:
        """Post the first message right away (a typing cursor or the queue position), with
        `view` (the reply's stop button) on it while the reply streams."""
        async with self._lock:
            await self._sync(
                split_reply(self._heading + placeholder),
                view=view,
                final=bool(self._ids),
                patient=True,
            )
        self._last_flush = self._clock()

    def pace_from_now(self) -> None:
        """Count the next edit's interval from now: a reply that finishes within it is shown
        once, by `finish`, instead of by an edit and then `finish`."""
        self._last_flush = self._clock()

    async def update(self, text: str) -> None:
        if self._clock() - self._last_flush < self._interval or self._lock.locked():
            return
        if self._frame is not None and not self._frame.done():
            return  # the last frame is still on its way: this one is not worth queueing
        self._last_flush = self._clock()
        self._frame = asyncio.create_task(self._show_frame(text))

    async def _show_frame(self, text: str) -> None:
        async with self._lock:
            try:
                await self._sync(split_reply(self._heading + text + CURSOR), view=None)
            except discord.HTTPException as error:
                # A streaming frame is not worth waiting for: the next one or `finish` shows it.
                log.info("skipped a streaming edit: Discord answered %s", error.status)
            self._last_flush = self._clock()

    async def finish(self, text: str, *, view: discord.ui.View | None, note: str = "") -> list[int]:
        """Show the final text (plus an optional italic note) with `view` on the last message."""
        body = shown(text.strip())
        if note:
            body = f"{body}\n-# {note}"
        try:
            async with self._lock:
                await self._sync(
                    split_reply(self._heading + body), view=view, final=True, patient=True
                )
        finally:
            release_view(view)
        return self.message_ids

    async def _patiently(self, call: Callable[[], Awaitable[T]], *, patient: bool) -> T:
        """Run one Discord call. A patient one is tried again, with growing waits, while
        Discord fails or rate limits past discord.py's own tries, for `final_deadline_s`:
        the reply's first and final states must arrive, or the player sees a dead cursor."""
        deadline = time.monotonic() + self._final_deadline_s
        wait = RETRY_BACKOFF_S
        while True:
            try:
                return await call()
            except discord.HTTPException as error:
                left = deadline - time.monotonic()
                if not patient or not transient(error) or left <= 0:
                    raise
                log.warning("Discord answered %s; trying again in %.1f s", error.status, wait)
                await asyncio.sleep(min(wait, left))
                wait = min(wait * 2, RETRY_BACKOFF_CAP_S)

    async def _sync(
        self,
        pieces: list[str],
        *,
        view: discord.ui.View | None,
        final: bool = False,
        patient: bool = False,
    ) -> None:
        """Make the messages show `pieces`; a deleted webhook is made again and the reply
        posted anew through it (the old messages are deleted where the bot may)."""
        try:
            await self._sync_once(pieces, view=view, final=final, patient=patient)
        except discord.NotFound as error:
            if error.code != UNKNOWN_WEBHOOK or not await self._poster.renew():
                raise
            log.warning("a character's webhook was deleted; the reply goes on through a new one")
            stale, self._ids, self._shown = self._ids, [], []
            await self._sync_once(pieces, view=view, final=final, patient=patient)
            for message_id in stale:
                await self._poster.remove_stale(message_id)
            await self._posted()

    async def _sync_once(
        self, pieces: list[str], *, view: discord.ui.View | None, final: bool, patient: bool
    ) -> None:
        missing = discord.utils.MISSING
        added = False
        for index, piece in enumerate(map(shown, pieces)):
            last = index == len(pieces) - 1
            piece_view = view if last else None
            if index < len(self._ids):
                if self._shown[index] == piece and not final:
                    continue
                try:
                    await self._patiently(
                        functools.partial(
                            self._poster.edit,
                            self._ids[index],
                            piece,
                            view=piece_view if final else missing,
                        ),
                        patient=patient,
                    )
                except discord.NotFound as error:
                    if error.code != UNKNOWN_MESSAGE:
                        raise
                    # Someone deleted this message: the text is posted again in its place.
                    self._ids[index] = await self._patiently(
                        functools.partial(self._poster.send, piece, view=piece_view),
                        patient=patient,
                    )
                    added = True
                self._shown[index] = piece
            else:
                message_id = await self._patiently(
                    functools.partial(self._poster.send, piece, view=piece_view),
                    patient=patient,
                )
                self._ids.append(message_id)
                self._shown.append(piece)
                added = True
        # A reply that shrank (a regenerated alternative) leaves no stale tail behind.
        while final and len(self._ids) > len(pieces):
            extra = self._ids.pop()
            self._shown.pop()
            with contextlib.suppress(discord.NotFound):
                await self._poster.delete(extra)
        if added:
            await self._posted()

    async def _posted(self) -> None:
        if self._on_posted is not None:
            await self._on_posted(self.message_ids)

    def adopted(self, message_ids: Sequence[int]) -> ReplyMessages:
        """A writer on the same webhook that takes over already posted messages (to show
        another alternative, or a continuation, in their place)."""
        writer = ReplyMessages(
            self._poster,
            heading=self._heading,
            interval=self._interval,
            clock=self._clock,
            final_deadline_s=self._final_deadline_s,
            on_posted=self._on_posted,
        )
        writer._ids = list(message_ids)
        writer._shown = [""] * len(message_ids)
        return writer

    def posting_to(self, on_posted: PostedCallback | None) -> None:
        """Tell `on_posted` of every change to the messages from now on."""
        self._on_posted = on_posted

    async def update_status(self, text: str) -> None:
        """Replace what the first message shows (a queue position) while nothing streams yet;
        a status Discord refuses now is not worth retrying."""
        async with self._lock:
            try:
                await self._sync(split_reply(self._heading + text), view=None)
            except discord.HTTPException as error:
                if not transient(error):
                    raise
                log.info("skipped a queue notice: Discord answered %s", error.status)

    async def discard(self) -> None:
        """Delete the posted messages (a turn that was superseded before it said anything)."""
        async with self._lock:
            await self._sync([], view=None, final=True, patient=True)  # deletes every message
