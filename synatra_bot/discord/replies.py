"""Show the core's replies in Discord: queue notices, streaming through the character's webhook,
the final text with its buttons; and the buttons' presses, handed back to the core."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

import discord
from discord import app_commands
from sqlalchemy.exc import SQLAlchemyError

from synatra_bot.discord.i18n import t
from synatra_bot.discord.interactions import ComponentError, actor_of, place_of
from synatra_bot.discord.streaming import (
    FINAL_DEADLINE_S,
    ChannelPoster,
    ReplyMessages,
    WebhookPoster,
    dm_heading,
    transient,
)
from synatra_bot.discord.suggestions import SuggestionButton
from synatra_bot.discord.webhooks import WebhookPool
from synatra_bot.engine.base import CONTINUATION
from synatra_bot.errors import EngineError, StorageError, StorageUnavailable, UserFacingError
from synatra_bot.roleplay.core import COMMIT_EVERY_S, ActiveRoleplay, Started
from synatra_bot.roleplay.names import player_label
from synatra_bot.roleplay.scheduler import QueueTicket
from synatra_bot.roleplay.turns import Ending, Reply, ReplyOutcome, Shown, Turns
from synatra_bot.roleplay.types import Actor, Place
from synatra_bot.storage import open_replies
from synatra_bot.storage.batching import Batcher
from synatra_bot.storage.records import CharacterRecord, MessageRecord
from synatra_bot.storage.retry import retrying

log = logging.getLogger(__name__)
T = TypeVar("T")
Item = TypeVar("Item")

#: A turn that waits longer than this shows its queue position, refreshed at most this often.
QUEUE_NOTICE_AFTER_S = 1.0
QUEUE_REFRESH_S = 10.0
BUTTON_TEMPLATE = r"rp:(?P<action>regen|prev|next|stop|cont):(?P<target>[0-9]+)"
SPEAK_TEMPLATE = r"rp:speak:(?P<character>[0-9]+)"
#: The rows under a group reply that hold a button per character (a row holds 5, a message 5
#: rows; the reply's own buttons take the first two).
SPEAK_ROWS = (2, 3, 4)


class ReplyHost(Protocol):
    """What the controller needs of the bot (the bot holds the controller: no import back)."""

    turns: Turns
    webhooks: WebhookPool
    replies: ReplyController

    def serves(self, guild_id: int | None) -> bool: ...

    def get_channel(self, channel_id: int, /) -> Any: ...

    def get_partial_messageable(
        self, id: int, *, guild_id: int | None = None, type: discord.ChannelType | None = None
    ) -> discord.PartialMessageable: ...

    async def fetch_webhook(self, webhook_id: int, /) -> discord.Webhook: ...

    @property
    def tree(self) -> app_commands.CommandTree[Any]: ...

    def locale_for(self, channel: object) -> str: ...

    def public(self, error: BaseException, locale: discord.Locale | str | None = None) -> str: ...


class ReplyButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=BUTTON_TEMPLATE):
    """The buttons under a reply. Their custom ids carry everything, so they keep working
    after a restart: `rp:<action>:<message id>`; ⏹'s names the open reply it stops."""

    STYLES: ClassVar[dict[str, tuple[str, discord.ButtonStyle]]] = {
        "prev": ("◀", discord.ButtonStyle.secondary),
        "next": ("▶", discord.ButtonStyle.secondary),
        "regen": ("🔄", discord.ButtonStyle.secondary),
        "cont": ("➡️", discord.ButtonStyle.secondary),
        "stop": ("⏹", discord.ButtonStyle.danger),
    }

    def __init__(self, action: str, target: int, *, disabled: bool = False) -> None:
        emoji, style = self.STYLES[action]
        super().__init__(
            discord.ui.Button(
                style=style, emoji=emoji, custom_id=f"rp:{action}:{target}", disabled=disabled
            )
        )
        self.action = action
        self.target = target

    @classmethod
    async def from_custom_id(  # type: ignore[override]
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Button[Any],
        match: Any,
    ) -> ReplyButton:
        return cls(match["action"], int(match["target"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:  # type: ignore[override]
        bot = interaction.client
        bot.replies.track_current()
        await bot.replies.press(interaction, self.action, self.target)


class SwipePosition(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"rp:pos:[0-9]+"):
    """The disabled "2/3" label between ◀ and ▶. A dynamic item like the buttons, so discord.py
    keeps no view per message for it (a plain button would be stored for ever, one per reply)."""

    def __init__(self, message_id: int, label: str) -> None:
        super().__init__(
            discord.ui.Button(
                label=label,
                disabled=True,
                custom_id=f"rp:pos:{message_id}",
                style=discord.ButtonStyle.secondary,
            )
        )

    @classmethod
    async def from_custom_id(  # type: ignore[override]
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Button[Any],
        match: Any,
    ) -> SwipePosition:
        return cls(0, item.label or "")

    async def callback(self, interaction: discord.Interaction[Any]) -> None:  # type: ignore[override]
        await interaction.response.defer()  # disabled: Discord never sends a press


class SpeakButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=SPEAK_TEMPLATE):
    """A character's name under a group reply: pressed, that character speaks next (as
    `/rp next`). The custom id carries the character, so it works after a restart."""

    def __init__(self, character_id: int, name: str = "", *, row: int | None = None) -> None:
        super().__init__(
            discord.ui.Button(
                style=discord.ButtonStyle.primary,
                emoji="💬",
                label=name[:80] or None,
                custom_id=f"rp:speak:{character_id}",
                row=row,
            )
        )
        self.character_id = character_id

    @classmethod
    async def from_custom_id(  # type: ignore[override]
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Button[Any],
        match: Any,
    ) -> SpeakButton:
        return cls(int(match["character"]), item.label or "")

    async def callback(self, interaction: discord.Interaction[Any]) -> None:  # type: ignore[override]
        bot = interaction.client
        bot.replies.track_current()
        await bot.replies.press(interaction, "speak", self.character_id)


def reply_view(
    message_id: int,
    *,
    index: int = 0,
    count: int = 1,
    greeting: bool = False,
    speakers: Sequence[CharacterRecord] = (),
) -> discord.ui.View:
    """The buttons under a stored reply; in a group scene, one more per character that may
    speak (`speakers`, as many as `SPEAK_ROWS` hold)."""
    view = discord.ui.View(timeout=None)
    if count > 1:
        view.add_item(ReplyButton("prev", message_id, disabled=index <= 0))
        view.add_item(SwipePosition(message_id, f"{index + 1}/{count}"))
        view.add_item(ReplyButton("next", message_id, disabled=index >= count - 1))
    if not greeting:
        view.add_item(ReplyButton("regen", message_id))
        view.add_item(ReplyButton("cont", message_id))
    view.add_item(SuggestionButton("new"))
    for n, character in enumerate(speakers[: 5 * len(SPEAK_ROWS)]):
        view.add_item(SpeakButton(character.id, character.name, row=SPEAK_ROWS[n // 5]))
    return view


def speakers_of(active: ActiveRoleplay | None) -> tuple[CharacterRecord, ...]:
    """Who gets a button under a reply of `active`: in a group scene, every character that
    may answer on its own (muted ones are called with `/rp next`)."""
    if active is None or not active.is_group:
        return ()
    return active.speakers


def streaming_view(open_reply_id: int) -> discord.ui.View:
    """The stop button shown while a reply streams: it stops that reply and no other."""
    view = discord.ui.View(timeout=None)
    view.add_item(ReplyButton("stop", open_reply_id))
    return view


class ReplyController:
    """Everything about showing replies in Discord; the roleplay cog and buttons call it."""

    def __init__(
        self,
        host: ReplyHost,
        *,
        final_deadline_s: float = FINAL_DEADLINE_S,
    ) -> None:
        self.host = host
        self.final_deadline_s = final_deadline_s
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Open replies are written in group commits, as the turns are, in order.
        self._book = Batcher(
            functools.partial(open_replies.write_many, host.turns.core.sessions),
            every=COMMIT_EVERY_S,
        )
        #: The open replies shown here that have been recorded (they have messages on screen).
        self._recorded: set[int] = set()
        #: The open replies this process is showing, by id (⏹ finds its reply here).
        self._live: dict[int, Reply] = {}
        #: Open replies to finish (`unfinished.UnfinishedReplies`): left by a process that
        #: died, or by a reply here whose final state Discord refused.
        self.unfinished: set[int] = set()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        return self.track(asyncio.create_task(coro))

    def track(self, task: asyncio.Future[Any]) -> asyncio.Task[Any]:
        """Count `task` among the work shutdown waits for."""
        assert isinstance(task, asyncio.Task)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def track_current(self) -> None:
        """Count the running task (one discord.py made for an event or an interaction) among
        the work shutdown waits for, instead of starting a task of our own."""
        task = asyncio.current_task()
        if task is not None:
            self.track(task)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, StorageUnavailable):  # logged where found
            log.error("a message handler failed", exc_info=error)

    async def close(self, *, grace_s: float = 10.0) -> None:
        """Let running handlers finish (the scheduler has already stopped generation, so
        they only store or discard what they have), then cancel whatever is left. A reply
        cut off here stays recorded as open: the next start finishes it."""
        others = self._tasks - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=grace_s)
        others = self._tasks - {asyncio.current_task()}
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    # --- webhooks ---------------------------------------------------------------------------

    async def writer_for(self, channel: Any, character: CharacterRecord) -> ReplyMessages:
        """How `character` speaks in `channel`: its webhook (made again if someone deletes
        it), or in a DM the bot itself."""
        if isinstance(channel, discord.DMChannel):
            return ReplyMessages(
                ChannelPoster(channel),
                heading=dm_heading(character.name),
                final_deadline_s=self.final_deadline_s,
            )
        parent = channel.parent if isinstance(channel, discord.Thread) else channel
        if not isinstance(parent, discord.TextChannel | discord.ForumChannel):
            raise UserFacingError("this channel cannot have webhooks", key="error.channel_type")
        webhooks = self.host.webhooks
        webhook = await webhooks.get(parent, character)

        async def renew() -> discord.Webhook:
            webhooks.forget_channel(parent.id)
            return await webhooks.get(parent, character)

        thread = channel if isinstance(channel, discord.Thread) else None
        poster = WebhookPoster(
            webhook, username=character.name, thread=thread, renew=renew, channel=channel
        )
        return ReplyMessages(poster, final_deadline_s=self.final_deadline_s)

    async def show_greeting(self, channel: Any, started: Started) -> None:
        """A character's greeting (a new scene's, or one joining it), with its alternatives."""
        greeting = started.greeting
        if greeting is None:
            return
        writer = await self.writer_for(channel, started.character)
        view = reply_view(
            greeting.id, index=greeting.swipe_index, count=started.greeting_count, greeting=True
        )
        ids = await writer.finish(started.greeting_display or greeting.content, view=view)
        for alternative in await self.host.turns.core.alternatives(greeting.id):
            await self.host.turns.core.attach_discord_ids(alternative.id, ids)

    async def show(self, channel: Any, character: CharacterRecord, shown: Shown) -> None:
        """Post a stored reply afresh with its buttons, as `shown` shows it (a scene reopened
        or branched shows where it stands); the turn then lives in that message."""
        writer = await self.writer_for(channel, character)
        ids = await writer.finish(shown.text, view=self.view_of(shown))
        for alternative in await self.host.turns.core.alternatives(shown.message.id):
            await self.host.turns.core.attach_discord_ids(alternative.id, ids)

    async def post_as_player(
        self, channel: Any, place: Place, user: discord.abc.User, text: str
    ) -> int:
        """Post a player's line for them (a suggestion they sent), labelled as theirs: in a
        server through the scene's webhook under their name with their Discord name and their
        avatar (`player_label`), in a DM by the bot under their name. Returns the first
        message's id."""
        core = self.host.turns.core
        actor = Actor(user.id, user.display_name, guild_id=None if place.dm else place.guild_id)
        name = await core.user_name(actor, place_guild=actor.guild_id)
        if isinstance(channel, discord.DMChannel):
            writer = ReplyMessages(ChannelPoster(channel), heading=dm_heading(name))
        else:
            active = await core.require_active(place)
            parent = channel.parent if isinstance(channel, discord.Thread) else channel
            if not isinstance(parent, discord.TextChannel | discord.ForumChannel):
                raise UserFacingError("this channel cannot have webhooks", key="error.channel_type")
            webhook = await self.host.webhooks.get(parent, active.lead)
            thread = channel if isinstance(channel, discord.Thread) else None
            avatar = str(user.display_avatar.url)
            # Through the character's webhook the line must not read as the character's or
            # another member's: it carries the player's Discord name too.
            label = player_label(
                name,
                user.display_name,
                handle=user.name,
                cast=[character.name for character in active.cast],
            )
            poster = WebhookPoster(webhook, username=label, avatar_url=avatar, thread=thread)
            writer = ReplyMessages(poster)
        ids = await writer.finish(text, view=None)
        return ids[0]

    async def show_in(self, message_id: int, ids: Sequence[int]) -> None:
        """Every alternative of `message_id`'s turn is shown in the Discord messages `ids`."""
        core = self.host.turns.core
        for alternative in await core.alternatives(message_id):
            if list(alternative.discord_message_ids) != list(ids):
                await core.attach_discord_ids(alternative.id, ids)

    async def take_back(
        self, channel: Any, active: ActiveRoleplay, removed: Sequence[MessageRecord]
    ) -> None:
        """Delete the characters' messages of turns that left the story (undo)."""
        for message in removed:
            if message.role == "assistant" and message.discord_message_ids:
                character = active.member(message.character_id) or active.lead
                writer = await self.writer_for(channel, character)
                await writer.adopted(list(message.discord_message_ids)).discard()

    # --- a reply ----------------------------------------------------------------------------

    async def play(
        self, reply: Reply, *, channel: Any, notify: discord.Message | None = None
    ) -> ReplyOutcome | None:
        """Show one reply of the core's as it streams, and how it ended.

        Whatever fails, the player is told and nothing stays half-finished on screen (the core
        has stored nothing half-written; a regenerated or continued reply shows what it showed
        before; a reply Discord would not show leaves the story and is finished on screen
        once Discord answers again). Returns the outcome, or None when Discord refused to
        show the reply.
        """
        locale = self.host.locale_for(channel)
        try:
            return await self._play(reply, channel, notify, locale)
        except discord.Forbidden:
            log.warning("missing permissions for webhooks in channel %s", reply.place.channel_id)
            await self.tell(notify, channel, t(locale, "error.webhook_permission"))
        except discord.NotFound:
            # The channel, or a webhook that could not be made again: the next turn starts over.
            place = reply.place
            self.host.webhooks.forget_channel(place.parent_channel_id or place.channel_id)
            await self.tell(notify, channel, t(locale, "error.webhook_gone"))
        except UserFacingError as error:  # the database could not keep the reply's record
            await self.tell(notify, channel, self.text(locale, error))
        except discord.HTTPException as error:
            if not transient(error):
                log.exception("reply in channel %s failed", reply.place.channel_id)
                await self.tell(notify, channel, t(locale, "error.unexpected"))
            else:
                log.warning(
                    "Discord answered %s past the deadline; reply in channel %s not shown",
                    error.status,
                    reply.place.channel_id,
                )
                await self.tell(notify, channel, t(locale, "reply.not_shown"))
        except Exception:
            log.exception("reply in channel %s failed", reply.place.channel_id)
            await self.tell(notify, channel, t(locale, "error.unexpected"))
        return None

    async def _play(
        self, reply: Reply, channel: Any, notify: discord.Message | None, locale: str
    ) -> ReplyOutcome:
        writer = await self.writer_for(channel, reply.character)
        if reply.replacing:
            assert reply.target is not None
            writer = writer.adopted(reply.target.discord_message_ids)
        open_id = self._open(reply, channel, writer)
        self._live[open_id] = reply
        try:
            outcome = await self._stream(reply, writer, open_id, notify, channel, locale)
        except BaseException:
            # Left on screen unfinished: the sweeper (or, after a crash, the next start)
            # finishes it once Discord answers.
            self.unfinished.add(open_id)
            raise
        finally:
            del self._live[open_id]
        if open_id in self._recorded:
            self._recorded.discard(open_id)
            await self._write(open_replies.OpenReplyChange(open_id, close=True))
        return outcome

    @property
    def live(self) -> frozenset[int]:
        """The open replies this process is showing now."""
        return frozenset(self._live)

    async def _write(self, write: open_replies.OpenReplyWrite) -> None:
        """One write of the open replies' book, in order with the others, with the core's
        patience for a busy database. A write the database cannot take costs only the
        finishing of this reply after a crash: it is logged, and the reply goes on."""
        try:
            await retrying(lambda: self._book.submit(write), self.host.turns.core.patience)
        except (StorageError, SQLAlchemyError) as error:
            log.warning("could not write open reply %s: %s", _open_id(write), error)

    def _open(self, reply: Reply, channel: Any, writer: ReplyMessages) -> int:
        """Record the reply as open as soon as it has messages on screen (at once for one
        that replaces a shown reply), and keep its messages up to date in the record. No
        database round waits before the first post: a crash between the post and its record
        leaves a message that the next start's read-back finds by its stop button. Returns
        the reply's id."""
        poster = writer.poster

        def webhook_id() -> int | None:
            return poster.webhook_id if isinstance(poster, WebhookPoster) else None

        open_id = open_replies.new_open_id()
        thread = isinstance(channel, discord.Thread)

        def record(ids: Sequence[int]) -> None:
            write: open_replies.OpenReplyWrite
            if open_id in self._recorded:
                write = open_replies.OpenReplyChange(open_id, tuple(ids), webhook_id())
            else:
                self._recorded.add(open_id)
                write = open_replies.NewOpenReply(
                    id=open_id,
                    guild_id=reply.place.guild_id,
                    channel_id=channel.id,
                    parent_channel_id=channel.parent_id if thread else None,
                    webhook_id=webhook_id(),
                    session_id=reply.active.session.id,
                    kind=reply.kind,
                    discord_message_ids=tuple(ids),
                )
            self.spawn(self._write(write))

        async def posted(ids: list[int]) -> None:
            record(ids)

        if writer.message_ids:
            record(writer.message_ids)
        writer.posting_to(posted)
        return open_id

    async def _stream(
        self,
        reply: Reply,
        writer: ReplyMessages,
        open_id: int,
        notify: discord.Message | None,
        channel: Any,
        locale: str,
    ) -> ReplyOutcome:
        opened = False
        stop_view = streaming_view(open_id)

        async def open_or_show(text: str) -> None:
            nonlocal opened
            if not opened:
                opened = True
                await writer.open(text, view=stop_view)
            else:
                await writer.update_status(text)

        notice: asyncio.Task[Any] | None = None

        async def show_queue(ticket: QueueTicket) -> None:
            # Most waits are short: say nothing unless the turn has waited a moment, then
            # refresh the position slowly (positions change with every admission anywhere).
            await asyncio.sleep(QUEUE_NOTICE_AFTER_S)
            shown = 0
            while (position := ticket.position) > 0:
                if position != shown:
                    shown = position
                    await open_or_show(t(locale, "reply.queued", position=shown))
                await asyncio.sleep(QUEUE_REFRESH_S)

        def on_queued(ticket: QueueTicket) -> None:
            nonlocal notice
            notice = self.spawn(show_queue(ticket))

        if reply.kind == "reply":
            # The reply's message appears at once, a cursor while the turn waits and thinks.
            opened = True
            await writer.open("▌", view=stop_view)
        try:
            async with reply.stream(
                on_queued=on_queued, shown_in=lambda: writer.message_ids
            ) as texts:
                began = False
                async for text in texts:
                    if not began:
                        began = True
                        if notice is not None:
                            notice.cancel()
                        writer.pace_from_now()  # a turn that waited shows its words after a beat
                        if not opened:
                            opened = True
                            await writer.open((text + " ▌").strip(), view=stop_view)
                        continue
                    await writer.update(text)
        finally:
            if notice is not None:
                notice.cancel()
        outcome = reply.outcome
        assert outcome is not None
        await self._show_outcome(reply, outcome, writer, opened, notify, channel, locale)
        return outcome

    async def _show_outcome(
        self,
        reply: Reply,
        outcome: ReplyOutcome,
        writer: ReplyMessages,
        opened: bool,
        notify: discord.Message | None,
        channel: Any,
        locale: str,
    ) -> None:
        ending = outcome.ending
        if ending is Ending.STORED:
            assert outcome.shown is not None
            stored = outcome.shown.message
            note = t(locale, "reply.stopped") if outcome.stopped else ""
            try:
                view = self.view_of(outcome.shown, reply.active)
                ids = await writer.finish(outcome.text, view=view, note=note)
            except Exception:
                # What the model remembers is what the channel shows.
                await self.host.turns.unstore(reply, stored)
                raise
            if reply.replacing:
                await self.show_in(stored.id, ids)  # every alternative lives in these now
            elif ids != list(stored.discord_message_ids):
                await self.host.turns.core.attach_discord_ids(stored.id, ids)
            settings = [name for name in outcome.refused if name != CONTINUATION]
            if settings:
                await self._say(
                    channel, t(locale, "engine.settings_refused", names=", ".join(settings))
                )
            if CONTINUATION in outcome.refused:
                await self._say(channel, t(locale, "engine.cannot_continue"))
            return
        if ending in (Ending.WITHDRAWN, Ending.DISCARDED):
            if opened and reply.replacing:
                await self._restore(writer, reply)
            elif opened:
                await writer.discard()
            return
        if ending is Ending.CUT:
            note_key = "reply.timed_out" if outcome.timed_out else "reply.cancelled"
            await writer.finish(outcome.text, view=None, note=t(locale, note_key))
            if reply.replacing:
                await self._restore(writer, reply)
            return
        note = self.failure_note(locale, outcome.error)
        if reply.replacing:
            if opened:
                await self._restore(writer, reply)
            await self.tell(notify, channel, note)
            return
        await writer.finish(outcome.text, view=None, note=note)

    def failure_note(self, locale: str, error: Exception | None) -> str:
        """What players read about a reply that failed (`error` None: unexpected)."""
        if isinstance(error, UserFacingError):
            return self.text(locale, error)
        if isinstance(error, EngineError):
            return t(locale, "reply.failed", message=self.host.public(error, locale))
        return t(locale, "error.unexpected")

    @staticmethod
    def view_of(shown: Shown, active: ActiveRoleplay | None = None) -> discord.ui.View:
        message = shown.message
        return reply_view(
            message.id,
            index=shown.index,
            count=shown.count,
            greeting=shown.greeting,
            speakers=() if shown.greeting else speakers_of(active),
        )

    async def _restore(self, writer: ReplyMessages, reply: Reply) -> None:
        """Put the turn that was being regenerated or continued back on screen."""
        shown = await reply.restored()
        ids = await writer.finish(shown.message.content, view=self.view_of(shown, reply.active))
        await self.show_in(shown.message.id, ids)

    def text(self, locale: str, error: UserFacingError) -> str:
        """A domain error as players read it (localised, secrets masked)."""
        return t(locale, error.key, message=self.host.public(error), **error.params)

    async def _say(self, channel: Any, text: str) -> None:
        """A notice that stays in the channel (for its moderators to read later)."""
        try:
            await channel.send(text)
        except discord.HTTPException:
            log.info("could not post a notice in %s", getattr(channel, "id", "?"))

    async def tell(self, notify: discord.Message | None, channel: Any, text: str) -> None:
        """A short notice that goes away: a reply to `notify`, or a message in `channel`."""
        try:
            if notify is not None:
                await notify.reply(text, mention_author=False, delete_after=15)
            else:
                await channel.send(text, delete_after=15)
        except discord.HTTPException:
            log.info("could not post a notice in %s", getattr(channel, "id", "?"))

    # --- a player's line the database keeps waiting ------------------------------------------

    def waiting_notice(self, notify: discord.Message) -> Callable[[], None]:
        """For the core to call when the database keeps `notify`'s line waiting (it is tried
        again): its player is told, once."""
        told = False

        def tell_once() -> None:
            nonlocal told
            if not told:
                told = True
                locale = self.host.locale_for(notify.channel)
                self.spawn(self.tell(notify, notify.channel, t(locale, "storage.waiting")))

        return tell_once

    async def unless_kept(self, stored: asyncio.Future[Any], notify: discord.Message) -> None:
        """Tell the player when their line could not be kept (a reply to it says so itself)."""
        await asyncio.wait([stored])
        error = None if stored.cancelled() else stored.exception()
        if isinstance(error, StorageUnavailable):
            locale = self.host.locale_for(notify.channel)
            await self.tell(notify, notify.channel, self.text(locale, error))

    # --- buttons ----------------------------------------------------------------------------

    async def press(
        self, interaction: discord.Interaction[Any], action: str, target_id: int
    ) -> None:
        try:
            await self.on_button(interaction, action, target_id)
        except Exception as error:  # the tree's policy decides what the user sees
            await self.host.tree.on_error(interaction, ComponentError(error))

    async def on_button(
        self, interaction: discord.Interaction[Any], action: str, target_id: int
    ) -> None:
        assert interaction.channel is not None
        channel = interaction.channel
        place = place_of(channel, interaction.guild_id)
        actor = actor_of(interaction)
        turns = self.host.turns
        if action == "stop":
            live = self._live.get(target_id)
            if live is None:
                raise UserFacingError("that reply has already ended", key="reply.stop_stale")
            await turns.stop_reply(live, actor)
            await interaction.response.defer()
            return
        if action in ("prev", "next"):
            step = -1 if action == "prev" else 1
            shown, on_screen = await turns.browse(place, actor, target_id, step)
            await interaction.response.defer()
            active = await turns.core.require_active(place)
            message = shown.message
            writer = await self.writer_for(
                channel, active.member(message.character_id) or active.lead
            )
            # The alternative takes the place of the messages on screen, however many it needs.
            view = self.view_of(shown, active)
            ids = await writer.adopted(on_screen).finish(shown.text, view=view)
            await self.show_in(message.id, ids)
            return
        if action == "speak":  # the target is a character of the scene
            reply = await turns.next_speaker(place, actor, target_id)
        elif action == "regen":
            reply = await turns.regenerate(place, actor, target_id)
        else:
            reply = await turns.continue_reply(place, actor, target_id)
        # Refused above, the presser is told privately; admitted, the channel sees the reply.
        await interaction.response.defer()
        await self.play(reply, channel=channel)


def _open_id(write: open_replies.OpenReplyWrite) -> int:
    return write.id if isinstance(write, open_replies.NewOpenReply) else write.reply_id
