"""Replies left unfinished on screen, finished: those a process that died left (found at
start in the open replies it recorded), and those whose final state Discord refused here
(tried again by a sweep). Each is finished in a channel this process serves as what the story
holds: its stored turn with its buttons, or the words already shown marked as cut (not in the
story), or nothing where nothing was said yet."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord

from synatra_bot.discord.i18n import t
from synatra_bot.discord.replies import ReplyController
from synatra_bot.discord.streaming import (
    CURSOR,
    ChannelPoster,
    ReplyMessages,
    WebhookPoster,
    dm_heading,
    transient,
)
from synatra_bot.roleplay.types import Place
from synatra_bot.storage import open_replies
from synatra_bot.storage.records import OpenReplyRecord

log = logging.getLogger(__name__)

#: How often replies left unfinished on screen (Discord refused their final state) are tried
#: again.
SWEEP_EVERY_S = 60.0
#: How far back a reply's first message is looked for when a crash came before its id was
#: written down.
HISTORY_SEARCH_LIMIT = 50


class UnfinishedReplies:
    """Finishes the open replies `replies` has left, and those of a process before it."""

    def __init__(self, replies: ReplyController, *, sweep_every_s: float = SWEEP_EVERY_S) -> None:
        self._replies = replies
        self._host = replies.host
        self.sweep_every_s = sweep_every_s
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def _sessions(self) -> Any:
        return self._host.turns.core.sessions

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    async def adopt_left_over(self) -> int:
        """Before the gateway connects: every reply still recorded as open was left by a
        process that is gone. They are finished once the bot is ready (`start_sweeping`)."""
        left = await open_replies.open_replies(self._sessions)
        self._replies.unfinished.update(record.id for record in left)
        return len(left)

    def start_sweeping(self) -> None:
        """Finish what was left unfinished now, then every `sweep_every_s` while any is."""
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            try:
                finished = await self.finish_unfinished()
                if finished:
                    log.info("finished %d replies left unfinished on screen", finished)
            except Exception:
                log.exception("finishing replies left unfinished failed")
            await asyncio.sleep(self.sweep_every_s)

    async def finish_unfinished(self) -> int:
        """Finish every reply left unfinished in a channel this process serves: its stored
        turn with its buttons, or what was generated marked as cut (not in the story), or
        nothing where nothing was said. Returns how many were finished; those Discord still
        refuses stay for the next sweep."""
        pending = self._replies.unfinished - self._replies.live
        if not pending:
            return 0
        records = await open_replies.open_replies(self._sessions, ids=pending)
        self._replies.unfinished -= pending - {record.id for record in records}  # closed elsewhere
        finished = 0
        for record in records:
            if not self._host.serves(record.guild_id):
                self._replies.unfinished.discard(record.id)  # another shard's process finishes it
                continue
            try:
                await self._finish_left_over(record)
            except discord.HTTPException as error:
                if transient(error):
                    log.info("open reply %s: Discord answered %s, later", record.id, error.status)
                    continue
                log.warning("open reply %s cannot be finished: %s", record.id, error)
            await open_replies.close_open_reply(self._sessions, reply_id=record.id)
            self._replies.unfinished.discard(record.id)
            finished += 1
        return finished

    async def _finish_left_over(self, record: OpenReplyRecord) -> None:
        dm = record.guild_id is None
        messageable = self._host.get_partial_messageable(
            record.channel_id,
            guild_id=record.guild_id,
            type=discord.ChannelType.private if dm else None,
        )
        ids = list(record.discord_message_ids) or await self._find_posted(messageable, record.id)
        if not ids:
            return  # killed before its first message went out
        poster: ChannelPoster | WebhookPoster
        if record.webhook_id is None:
            poster = ChannelPoster(messageable)
        else:
            try:
                webhook = await self._host.fetch_webhook(record.webhook_id)
            except discord.NotFound:
                for message_id in ids:  # the webhook is gone: its messages can only go
                    await WebhookPoster.remove_stale_from(messageable, message_id)
                return
            thread = discord.Object(record.channel_id) if record.parent_channel_id else None
            poster = WebhookPoster(webhook, username=webhook.name or "", thread=thread)
        stored = await self._host.turns.core.shown_in(ids[0])
        if stored is not None and stored.role == "assistant":
            place = Place(
                channel_id=record.channel_id,
                guild_id=record.guild_id or 0,
                parent_channel_id=record.parent_channel_id,
                dm=dm,
            )
            shown = await self._host.turns.shown_now(stored, place)
            heading = dm_heading(shown.message.display_name) if dm else ""
            writer = ReplyMessages(poster, heading=heading, final_deadline_s=0).adopted(ids)
            shown_ids = await writer.finish(shown.text, view=self._replies.view_of(shown))
            await self._replies.show_in(shown.message.id, shown_ids)
            return
        last = await messageable.fetch_message(ids[-1])
        text = _without_cursor(last.content)
        if len(ids) == 1 and not _says_anything(text, dm=dm):
            for message_id in ids:
                await poster.delete(message_id)
            return
        channel = self._host.get_channel(record.channel_id)
        note = "\n-# " + t(self._host.locale_for(channel or messageable), "reply.restarted")
        body = text if len(text) + len(note) <= 2000 else text[: 1999 - len(note)] + "…"
        await poster.edit(ids[-1], body + note, view=None)

    @staticmethod
    async def _find_posted(messageable: discord.PartialMessageable, open_id: int) -> list[int]:
        """The message carrying open reply `open_id`'s stop button, for a crash that came
        between its post and the record of its id."""
        async for message in messageable.history(limit=HISTORY_SEARCH_LIMIT):
            if stop_id(message) == open_id:
                return [message.id]
        return []

    async def finish_found(self, message: discord.Message) -> bool:
        """A reply of this bot's found in a channel's history (read back after a new gateway
        session) with the stop button of a reply nobody shows and no record holds (its
        process died before the record of it was written): finished as a left-over."""
        open_id = stop_id(message)
        replies = self._replies
        if open_id is None or open_id in replies.live or open_id in replies.unfinished:
            return False
        channel = message.channel
        record = OpenReplyRecord(
            id=open_id,
            guild_id=message.guild.id if message.guild is not None else None,
            channel_id=channel.id,
            parent_channel_id=channel.parent_id if isinstance(channel, discord.Thread) else None,
            webhook_id=message.webhook_id,
            session_id=None,
            kind="reply",
            discord_message_ids=(message.id,),
            created_at=message.created_at,
        )
        try:
            await self._finish_left_over(record)
        except discord.HTTPException as error:
            log.info("a reply left on screen could not be finished: %s", error)
            return False
        log.info("finished a reply left unfinished on screen without its record")
        return True


def stop_id(message: discord.Message) -> int | None:
    """The open reply a message's stop button names, if it carries one."""
    for row in message.components:
        for item in getattr(row, "children", ()):
            custom_id = getattr(item, "custom_id", None) or ""
            if custom_id.startswith("rp:stop:"):
                return int(custom_id.removeprefix("rp:stop:"))
    return None


def _without_cursor(content: str) -> str:
    """A streaming frame's text without its typing cursor."""
    return content.removesuffix(CURSOR).removesuffix(CURSOR.strip()).rstrip()


def _says_anything(text: str, *, dm: bool) -> bool:
    """Whether a reply's only message holds words, not just the character's name (a DM's
    heading) or a queue notice."""
    if dm and text.startswith("**"):
        text = text.partition("\n")[2]
    return bool(text.strip()) and not text.startswith("⏳")
