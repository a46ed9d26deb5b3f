"""Run one character reply in a channel: queue, stream through the webhook, store, add buttons."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import discord

from synatra_bot.discord.i18n import t
from synatra_bot.discord.interactions import ComponentError, actor_of, place_of
from synatra_bot.discord.streaming import ReplyMessages
from synatra_bot.errors import EngineError, EngineUnavailable, TurnCancelled, UserFacingError
from synatra_bot.roleplay.core import STOPPED_BY_USER, ActiveRoleplay, ReplyKind
from synatra_bot.roleplay.rules import (
    require_may_stop,
    require_starter_or_moderator,
    require_voice,
)
from synatra_bot.roleplay.scheduler import QueueTicket, TurnOutcome, TurnSlot
from synatra_bot.roleplay.types import Actor, Place
from synatra_bot.storage.records import MessageRecord

if TYPE_CHECKING:
    from synatra_bot.discord.bot import SynatraBot

log = logging.getLogger(__name__)

#: A turn that waits longer than this shows its queue position, refreshed at most this often.
QUEUE_NOTICE_AFTER_S = 1.0
QUEUE_REFRESH_S = 10.0
BUTTON_TEMPLATE = r"rp:(?P<action>regen|prev|next|stop|cont):(?P<target>[0-9]+)"


class ReplyButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=BUTTON_TEMPLATE):
    """The buttons under a reply. Their custom ids carry everything, so they keep working
    after a restart: `rp:<action>:<message id>`."""

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
        interaction: discord.Interaction[SynatraBot],
        item: discord.ui.Button[Any],
        match: Any,
    ) -> ReplyButton:
        return cls(match["action"], int(match["target"]))

    async def callback(self, interaction: discord.Interaction[SynatraBot]) -> None:  # type: ignore[override]
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
        interaction: discord.Interaction[SynatraBot],
        item: discord.ui.Button[Any],
        match: Any,
    ) -> SwipePosition:
        return cls(0, item.label or "")

    async def callback(self, interaction: discord.Interaction[SynatraBot]) -> None:  # type: ignore[override]
        await interaction.response.defer()  # disabled: Discord never sends a press


def reply_view(
    message_id: int, *, index: int = 0, count: int = 1, greeting: bool = False
) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    if count > 1:
        view.add_item(ReplyButton("prev", message_id, disabled=index <= 0))
        view.add_item(SwipePosition(message_id, f"{index + 1}/{count}"))
        view.add_item(ReplyButton("next", message_id, disabled=index >= count - 1))
    if not greeting:
        view.add_item(ReplyButton("regen", message_id))
        view.add_item(ReplyButton("cont", message_id))
    return view


def streaming_view() -> discord.ui.View:
    """The stop button shown while a reply streams. It is the same for every reply (a dynamic
    item, found by its custom id), so the controller builds it once and shares it."""
    view = discord.ui.View(timeout=None)
    view.add_item(ReplyButton("stop", 0))
    return view


@dataclass
class _Job:
    place: Place
    active: ActiveRoleplay
    channel: Any
    speaker: Actor | None
    kind: ReplyKind
    target: MessageRecord | None
    #: Work the prompt must wait for (storing the player's message).
    after: Awaitable[Any] | None = None


class ReplyController:
    """Everything about showing replies in Discord; the roleplay cog and buttons call it."""

    def __init__(self, bot: SynatraBot) -> None:
        self.bot = bot
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop_view: discord.ui.View | None = None

    @property
    def stop_view(self) -> discord.ui.View:
        """The shared `streaming_view` (made on first use: a view needs the running loop)."""
        if self._stop_view is None:
            self._stop_view = streaming_view()
        return self._stop_view

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        return self.track(asyncio.create_task(coro))

    def track(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        """Count `task` among the work shutdown waits for."""
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
        if not task.cancelled() and task.exception() is not None:
            log.error("a message handler failed", exc_info=task.exception())

    async def close(self, *, grace_s: float = 10.0) -> None:
        """Let running handlers finish (the scheduler has already stopped generation, so
        they only store or discard what they have), then cancel whatever is left."""
        others = self._tasks - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=grace_s)
        others = self._tasks - {asyncio.current_task()}
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    # --- webhooks ---------------------------------------------------------------------------

    async def writer_for(self, channel: Any, active: ActiveRoleplay) -> ReplyMessages:
        parent = channel.parent if isinstance(channel, discord.Thread) else channel
        if not isinstance(parent, discord.TextChannel | discord.ForumChannel):
            raise UserFacingError("this channel cannot have webhooks", key="error.channel_type")
        webhook = await self.bot.webhooks.get(parent, active.character)
        thread = channel if isinstance(channel, discord.Thread) else None
        return ReplyMessages(
            webhook, username=active.character.name, avatar_url=None, thread=thread
        )

    async def show_greeting(
        self, channel: Any, active: ActiveRoleplay, greeting: MessageRecord, count: int
    ) -> None:
        writer = await self.writer_for(channel, active)
        index = greeting.swipe_index
        ids = await writer.finish(
            greeting.content,
            view=reply_view(greeting.id, index=index, count=count, greeting=True),
        )
        for alternative in await self.bot.core.alternatives(greeting.id):
            await self.bot.core.attach_discord_ids(alternative.id, ids)

    # --- a turn -----------------------------------------------------------------------------

    async def run(
        self,
        *,
        channel: Any,
        place: Place,
        active: ActiveRoleplay,
        speaker: Actor | None,
        kind: ReplyKind = "reply",
        target: MessageRecord | None = None,
        notify: discord.Message | None = None,
        after: Awaitable[Any] | None = None,
        admitted: bool = False,
    ) -> MessageRecord | None:
        """Generate and show one reply; returns the stored turn, or None when nothing was stored.

        The turn goes through `admit` before anything is posted (`admitted`: the caller did
        that already). Whatever fails later, the player is told, nothing half-written is
        stored, and a regenerated or continued reply goes back to what it showed before.
        """
        job = _Job(place, active, channel, speaker, kind, target, after)
        locale = self.bot.locale_for(channel)
        if not admitted:
            try:
                self.admit(active, place, speaker)
            except UserFacingError as error:
                await self.tell(notify, channel, self.text(locale, error))
                return None
        try:
            return await self._run(job, notify, locale)
        except discord.Forbidden:
            log.warning("missing permissions for webhooks in channel %s", place.channel_id)
            await self.tell(notify, channel, t(locale, "error.webhook_permission"))
        except discord.NotFound:
            # Someone deleted our webhook or message: forget it, the next turn makes a new one.
            parent = place.parent_channel_id or place.channel_id
            self.bot.webhooks.forget_channel(parent)
            await self.tell(notify, channel, t(locale, "error.webhook_gone"))
        except Exception:
            log.exception("reply in channel %s failed", place.channel_id)
            await self.tell(notify, channel, t(locale, "error.unexpected"))
        return None

    def admit(self, active: ActiveRoleplay, place: Place, speaker: Actor | None) -> None:
        """Refuse a turn before it costs anything: the channel rules every path obeys, then one
        turn counted against the speaker's rate limit."""
        self.bot.core.check_may_generate(active, place)
        user_id = speaker.user_id if speaker else 0
        self.bot.scheduler.charge(user_id, active.config.user_rate_limit)

    def text(self, locale: str, error: UserFacingError) -> str:
        """A domain error as players read it (localised, secrets masked)."""
        return t(locale, error.key, message=self.bot.public(error), **error.params)

    async def _run(
        self, job: _Job, notify: discord.Message | None, locale: str
    ) -> MessageRecord | None:
        channel, place, active = job.channel, job.place, job.active
        speaker, kind, target = job.speaker, job.kind, job.target
        writer = await self.writer_for(channel, active)
        prefix = target.content if kind == "continue" and target else ""
        replacing = target is not None and kind != "reply"
        if replacing:
            assert target is not None
            writer = writer.adopted(target.discord_message_ids)
        opened = False

        async def open_or_show(text: str) -> None:
            nonlocal opened
            if not opened:
                opened = True
                await writer.open(text, view=self.stop_view)
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

        async def withdraw() -> None:
            """Take back a turn that never began: a new reply's message goes, a regenerated or
            continued one shows what it showed before."""
            if notice is not None:
                notice.cancel()
            if not opened:
                return
            if replacing:
                assert target is not None
                await self._restore(writer, target)
            else:
                await writer.discard()

        async def give_up(note: str) -> None:
            """End a turn that failed: a regenerated or continued reply shows what it showed
            before (the note goes to the channel), a new reply keeps its text with the note."""
            if notice is not None:
                notice.cancel()
            if replacing:
                assert target is not None
                if opened:
                    await self._restore(writer, target)
                await self.tell(notify, channel, note)
                return
            text = prefix + (slot.text if slot is not None else "")
            await writer.finish(text, view=None, note=note)

        user_id = speaker.user_id if speaker else 0
        slot: TurnSlot | None = None
        if kind == "reply":
            # The reply's message appears at once, a cursor while the turn waits and thinks.
            opened = True
            await writer.open("▌", view=self.stop_view)
        try:
            async with self.bot.scheduler.turn(
                channel_id=place.channel_id,
                user_id=user_id,
                policy="restart" if active.config.busy_policy == "restart" else "queue",
                on_queued=on_queued,
                charged=True,  # by admit()
            ) as slot:
                if notice is not None:
                    notice.cancel()
                writer.pace_from_now()  # a turn that waited shows its first words after a beat
                if not opened:
                    opened = True
                    await writer.open((prefix + " ▌").strip(), view=self.stop_view)
                built = await self._prompt(job)
                async for _delta in slot.stream(built.input_ids, active.config.sampling):
                    await writer.update(prefix + slot.text)
        except TurnCancelled:
            await withdraw()
            return None
        except UserFacingError as error:
            await give_up(self.text(locale, error))
            return None
        except EngineError as error:
            if isinstance(error, EngineUnavailable) and slot is None:
                await withdraw()  # the bot is shutting down: the turn never began
                return None
            # Also an engine that became unavailable mid-reply: never leave the cursor hanging.
            log.warning("reply in channel %s failed: %s", place.channel_id, error)
            await give_up(t(locale, "reply.failed", message=self.bot.public(error, locale)))
            return None
        except (discord.Forbidden, discord.NotFound):
            raise  # the webhook itself is unusable: run() tells the channel
        except Exception:
            log.exception("reply in channel %s failed", place.channel_id)
            await give_up(t(locale, "error.unexpected"))
            return None
        try:
            return await self._settle(
                job, writer, slot.outcome, slot.cancel_reason, prefix, slot.text, locale
            )
        except (discord.Forbidden, discord.NotFound):
            raise
        except Exception:
            log.exception("storing the reply in channel %s failed", place.channel_id)
            await give_up(t(locale, "error.unexpected"))
            return None

    async def _prompt(self, job: _Job) -> Any:
        if job.after is not None:
            await job.after
        return await self.bot.core.build_prompt(
            job.active,
            speaker=job.speaker,
            exclude_message_id=job.target.id if job.kind == "regenerate" and job.target else None,
            continue_message=job.target if job.kind == "continue" else None,
        )

    async def _settle(
        self,
        job: _Job,
        writer: ReplyMessages,
        outcome: TurnOutcome,
        reason: str,
        prefix: str,
        text: str,
        locale: str,
    ) -> MessageRecord | None:
        core = self.bot.core
        stopped = outcome is TurnOutcome.CANCELLED and reason == STOPPED_BY_USER
        if outcome is TurnOutcome.FINISHED or (stopped and text.strip()):
            stored = await core.store_reply(
                job.active,
                text,
                regenerate_of=job.target.id if job.kind == "regenerate" and job.target else None,
                continue_of=job.target if job.kind == "continue" else None,
                discord_message_ids=writer.message_ids,
            )
            index, count = stored.swipe_index, stored.swipe_index + 1
            if job.kind != "reply":
                options = await core.alternatives(stored.id)
                index = next((i for i, m in enumerate(options) if m.id == stored.id), 0)
                count = len(options)
            ids = await writer.finish(
                prefix + text,
                view=reply_view(stored.id, index=index, count=count),
                note=t(locale, "reply.stopped") if stopped else "",
            )
            if ids != list(stored.discord_message_ids):
                await core.attach_discord_ids(stored.id, ids)
            return stored
        if outcome is TurnOutcome.CANCELLED and job.kind == "reply" and not stopped:
            await writer.discard()  # superseded by a newer message, or shut down
            return None
        note_key = "reply.timed_out" if outcome is TurnOutcome.TIMED_OUT else "reply.cancelled"
        await writer.finish(prefix + text, view=None, note=t(locale, note_key))
        if job.target is not None and job.kind != "reply":
            await self._restore(writer, job.target)
        return None

    async def _restore(self, writer: ReplyMessages, target: MessageRecord) -> None:
        """Put the turn that was being regenerated or continued back on screen."""
        options = await self.bot.core.alternatives(target.id)
        chosen = next((m for m in options if m.chosen), target)
        index = next((i for i, m in enumerate(options) if m.id == chosen.id), 0)
        await writer.finish(
            chosen.content, view=reply_view(chosen.id, index=index, count=len(options))
        )

    async def tell(self, notify: discord.Message | None, channel: Any, text: str) -> None:
        """A short notice that goes away: a reply to `notify`, or a message in `channel`."""
        try:
            if notify is not None:
                await notify.reply(text, mention_author=False, delete_after=15)
            else:
                await channel.send(text, delete_after=15)
        except discord.HTTPException:
            log.info("could not post a notice in %s", getattr(channel, "id", "?"))

    # --- buttons ----------------------------------------------------------------------------

    async def press(
        self, interaction: discord.Interaction[SynatraBot], action: str, target_id: int
    ) -> None:
        try:
            await self.on_button(interaction, action, target_id)
        except Exception as error:  # the tree's policy decides what the user sees
            await self.bot.tree.on_error(interaction, ComponentError(error))

    async def on_button(
        self, interaction: discord.Interaction[SynatraBot], action: str, target_id: int
    ) -> None:
        assert interaction.guild_id is not None and interaction.channel is not None
        place = place_of(interaction.channel, interaction.guild_id)
        actor = actor_of(interaction)
        require_voice(actor)
        core = self.bot.core
        if action == "stop":
            running = await core.active(place)
            if running is not None:
                turn_user = self.bot.scheduler.turn_user(place.channel_id)
                require_may_stop(actor, running.session, turn_user)
            await interaction.response.defer()
            await self.bot.scheduler.cancel_channel(place.channel_id, reason=STOPPED_BY_USER)
            return
        active = await core.require_active(place)
        target = await core.get_message(target_id)
        if target is None or target.session_id != active.session.id:
            raise UserFacingError("that reply is no longer part of the story", key="reply.gone")
        if action in ("prev", "next"):
            # Every press costs an edit in the channel: it counts against the presser's limit.
            self.bot.scheduler.charge(actor.user_id, active.config.user_rate_limit)
            await interaction.response.defer()
            chosen, index, count = await core.browse(target_id, -1 if action == "prev" else 1)
            writer = await self.writer_for(interaction.channel, active)
            writer = writer.adopted(chosen.discord_message_ids or target.discord_message_ids)
            greeting = await core.is_greeting(chosen)
            await writer.finish(
                chosen.content,
                view=reply_view(chosen.id, index=index, count=count, greeting=greeting),
            )
            return
        latest = await core.latest_reply(place)
        if latest is None or latest.turn_group != target.turn_group:
            raise UserFacingError("only the newest reply can be changed", key="reply.not_latest")
        if action == "cont":
            require_starter_or_moderator(actor, active.session)
        self.admit(active, place, actor)  # refused here, the presser is told privately
        await interaction.response.defer()
        kind: ReplyKind = "regenerate" if action == "regen" else "continue"
        await self.run(
            channel=interaction.channel,
            place=place,
            active=active,
            speaker=actor,
            kind=kind,
            target=latest,
            admitted=True,
        )
