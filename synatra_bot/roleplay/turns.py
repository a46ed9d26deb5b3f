"""A turn of a scene, from what a player did to the stored reply: the rules every front end shares.

Front ends (Discord, the terminal) hand over what a player did: a message, regenerate, continue,
`next` (a character speaks now), browse, undo, an edit or a delete; `speak_up` makes a character
speak with nobody speaking to it (`roleplay.initiative`). Actions that make a character
speak give back `Reply` objects: each streams its text while it is generated and ends with a
`ReplyOutcome` saying what was stored and what the player should see. Front ends only render.

The rules, once: who may do what (`rules`), which characters answer (by the channel's turn
order, `turn_order`; a new player line ends the round of answers to the one before), what is
refused before it costs anything (`admit`, one turn of the player's rate limit per line however
many characters answer it), what is stored (a finished reply, or one its player stopped with
text in it; never a half-written one), which alternative enters history, and what a stop, a
timeout or a failure leaves on screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from synatra_bot.engine.base import CONTINUATION, SamplingParams
from synatra_bot.errors import (
    EngineError,
    EngineUnavailable,
    NotFound,
    PermissionDenied,
    StorageUnavailable,
    TurnCancelled,
    UserFacingError,
)
from synatra_bot.prompt.builder import BuiltPrompt
from synatra_bot.roleplay.addressing import Addressable, addressed
from synatra_bot.roleplay.characters import can_use, names_of
from synatra_bot.roleplay.core import ActiveRoleplay, RoleplayCore, Started
from synatra_bot.roleplay.lines import Line, Lines
from synatra_bot.roleplay.rules import (
    require_may_stop,
    require_starter_or_moderator,
    require_voice,
)
from synatra_bot.roleplay.scheduler import QueueTicket, Scheduler, TurnOutcome, TurnSlot
from synatra_bot.roleplay.sent import SentPrompts
from synatra_bot.roleplay.turn_order import (
    Pick,
    Reason,
    natural_order,
    pooled_order,
    seeded,
    spoken_since_player,
)
from synatra_bot.roleplay.types import Actor, Place
from synatra_bot.storage.records import CharacterRecord, MessageRecord, PinRecord

log = logging.getLogger(__name__)

#: What a reply does: a new turn, a new alternative of the newest reply, more of its text, or
#: a line suggested for the player (shown to them, never stored).
ReplyKind = Literal["reply", "regenerate", "continue", "suggest"]
#: The cancel reason of a reply its player stopped (kept, unlike one superseded or shut down).
STOPPED_BY_USER = "stopped"


@dataclass(frozen=True, slots=True)
class SpokeUp:
    """Why a character spoke with nobody speaking to it: the scene was quiet for
    `quiet_minutes`; in a group's auto-mode, as turn `turn` of `of`."""

    name: str
    quiet_minutes: int
    turn: int = 1
    of: int = 1


class SceneWatcher(Protocol):
    """What hears of a scene's life (`roleplay.initiative.Initiative`), declared here so the
    turns need no import of it."""

    def player_spoke(self, place: Place, active: ActiveRoleplay) -> None: ...

    def character_spoke(self, place: Place, active: ActiveRoleplay) -> None: ...

    def scene_ended(self, place: Place) -> None: ...


class Ending(enum.Enum):
    """How a reply ended, and so what its front end shows."""

    #: Finished, or stopped by its player with text in it: stored; show `outcome.shown`.
    STORED = "stored"
    #: Never began (stopped or superseded while waiting, or shutting down): take back what was
    #: shown for it; a regenerated or continued reply goes back to `Reply.restored()`.
    WITHDRAWN = "withdrawn"
    #: A new reply superseded by a newer message mid-stream, or shut down: nothing is kept.
    DISCARDED = "discarded"
    #: Ended early (timed out, or stopped before saying anything): the text stays on screen
    #: with a note, nothing is stored; a replaced reply then goes back to what it was.
    CUT = "cut"
    #: An error: a new reply keeps its text with the error's note; a regenerated or continued
    #: one goes back to what it was and the note is told apart.
    FAILED = "failed"
    #: A suggestion written to its end (or stopped with text in it): shown to its player only.
    SUGGESTED = "suggested"


@dataclass(frozen=True, slots=True)
class Shown:
    """A stored reply as a front end shows it: its place among its alternatives."""

    message: MessageRecord
    index: int
    count: int
    greeting: bool = False
    #: What the channel shows for it where its card's display scripts change the stored text.
    display: str | None = None

    @property
    def text(self) -> str:
        return self.message.content if self.display is None else self.display


@dataclass(frozen=True, slots=True)
class ReplyOutcome:
    ending: Ending
    #: The reply's text as last shown (a continued reply's earlier text included).
    text: str = ""
    shown: Shown | None = None
    #: STORED because its player stopped it.
    stopped: bool = False
    #: CUT because it ran out of time.
    timed_out: bool = False
    #: FAILED: the UserFacingError or EngineError to show; None for an unexpected failure
    #: (logged with its traceback here; players get a short apology).
    error: Exception | None = None
    #: STORED: sampling settings of this channel the engine's server refused (CONTINUATION:
    #: it could not write on from the reply's start), not yet told to this server (the reply
    #: was written without them).
    refused: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Edited:
    """What an edit of a stored message leads to: a regenerated reply (the channel asks for
    that), or a reply to offer regenerating; neither when the edit changes nothing after it."""

    regenerate: Reply | None = None
    offer: MessageRecord | None = None


class Reply:
    """One character's reply: `stream()` plays it, then `outcome` says how it ended."""

    def __init__(
        self,
        turns: Turns,
        *,
        active: ActiveRoleplay,
        place: Place,
        actor: Actor | None,
        character: CharacterRecord,
        kind: ReplyKind = "reply",
        target: MessageRecord | None = None,
        after: Awaitable[Any] | None = None,
        spoke_up: SpokeUp | None = None,
    ) -> None:
        self._turns = turns
        #: Nobody spoke to it: it gives way to every player's turn (`Turns.speak_up`).
        self.spoke_up = spoke_up
        self.active = active
        self.place = place
        self.actor = actor
        self.character = character
        self.kind: ReplyKind = kind
        self.target = target
        self._after = after
        self.prefix = target.content if kind == "continue" and target is not None else ""
        self.outcome: ReplyOutcome | None = None
        self._ticket: QueueTicket | None = None
        self._slot: TurnSlot | None = None
        self._stop_asked = False
        #: The player's line it answers was deleted: it leaves nothing (`line_deleted`).
        self._line_gone = False

    @property
    def begun(self) -> bool:
        """It holds the channel's turn (it is being written, or has been)."""
        return self._slot is not None

    @property
    def replacing(self) -> bool:
        """A regenerated or continued reply takes the place of one already shown."""
        return self.kind in ("regenerate", "continue") and self.target is not None

    @contextlib.asynccontextmanager
    async def stream(
        self,
        *,
        on_queued: Callable[[QueueTicket], None] | None = None,
        shown_in: Callable[[], Sequence[int]] | None = None,
    ) -> AsyncIterator[AsyncIterator[str]]:
        """The reply's text so far (a continued reply's earlier text first): once when the turn
        begins (it leaves the queue), then as it grows. `on_queued` hears when the turn has
        to wait; `shown_in` names the front end's messages showing it (stored with it).

        When the iteration ends, `outcome` is set. Leaving early (the front end failed) stops
        the turn and stores nothing.
        """
        texts = self._texts(on_queued, shown_in)
        try:
            yield texts
        finally:
            await texts.aclose()
        if self.outcome is None:
            self.outcome = ReplyOutcome(Ending.DISCARDED)

    async def stop(self) -> None:
        """Stop this reply (its player pressed its stop button): withdrawn while it waits,
        cut where it stands while it streams, ended at once if it is admitted later."""
        self._stop_asked = True
        scheduler = self._turns.scheduler
        if self._slot is not None:
            await scheduler.cancel(self._slot, reason=STOPPED_BY_USER)
        elif self._ticket is not None:
            scheduler.withdraw(self._ticket, reason=STOPPED_BY_USER)

    async def line_deleted(self) -> None:
        """The player's line it answers left the story while it was being written: it stops
        and leaves nothing, on screen or stored. Once stored, a reply stays."""
        self._line_gone = True
        await self.stop()

    async def restored(self) -> Shown:
        """What a regenerated or continued reply goes back to: its chosen alternative."""
        assert self.target is not None
        return await self._turns.shown(self.target)

    async def _texts(
        self,
        on_queued: Callable[[QueueTicket], None] | None,
        shown_in: Callable[[], Sequence[int]] | None,
    ) -> AsyncGenerator[str]:
        turns, config = self._turns, self.active.config
        slot: TurnSlot | None = None
        built: BuiltPrompt | None = None

        def queued(ticket: QueueTicket) -> None:
            self._ticket = ticket
            if on_queued is not None:
                on_queued(ticket)

        if self._stop_asked:
            self.outcome = ReplyOutcome(Ending.WITHDRAWN)
            return
        try:
            async with turns.scheduler.turn(
                channel_id=self.place.channel_id,
                user_id=self.actor.user_id if self.actor else 0,
                # A newer message may replace a reply still being written; nothing else
                # (a suggestion, /rp next, regenerate, continue) cuts another player's reply.
                policy="restart"
                if config.busy_policy == "restart" and self.kind == "reply"
                else "queue",
                on_queued=queued,
                charged=True,  # by Turns.admit
                yielding=self.spoke_up is not None,
            ) as slot:
                self._slot, self._ticket = slot, None
                if self._stop_asked:
                    await turns.scheduler.cancel(slot, reason=STOPPED_BY_USER)
                yield self.prefix
                built = await self._prompt()
                turns.sent.record(
                    self.active.session.id, built, speaker=self.character.name, kind=self.kind
                )
                sampling = config.sampling
                stops = await turns.core.stop_strings(
                    self.active, for_player=self.kind == "suggest"
                )
                if stops:
                    stops = (*sampling.stop_strings, *stops)
                    sampling = dataclasses.replace(sampling, stop_strings=stops)
                async for _delta in slot.stream(built.input_ids, sampling):
                    yield self.prefix + self._generated(slot)
                # Stored while the turn still holds the channel: the next turn's prompt,
                # admitted once this one ends, sees this reply.
                try:
                    self.outcome = await self._settle(slot, list(shown_in()) if shown_in else [])
                except StorageUnavailable as error:  # logged where it was found
                    self.outcome = self._failed(slot, error)
                except Exception:
                    log.exception("storing the reply in channel %s failed", self.place.channel_id)
                    self.outcome = self._failed(slot, None)
        except TurnCancelled:
            self.outcome = ReplyOutcome(Ending.WITHDRAWN)
            return
        except UserFacingError as error:
            self.outcome = self._failed(slot, error)
            return
        except EngineError as error:
            if isinstance(error, EngineUnavailable) and slot is None:
                self.outcome = ReplyOutcome(Ending.WITHDRAWN)  # shutting down: never began
                return
            log.warning("reply in channel %s failed: %s", self.place.channel_id, error)
            self.outcome = self._failed(slot, error)
            return
        except Exception:
            log.exception("reply in channel %s failed", self.place.channel_id)
            self.outcome = self._failed(slot, None)
            return
        if self.outcome is None:
            self.outcome = ReplyOutcome(Ending.DISCARDED)
        if self.outcome.ending is Ending.STORED and built is not None:
            turns.reply_stored(self.active, built)
            if self.kind == "reply":
                turns.character_spoke(self.place, self.active, self.spoke_up)

    def _generated(self, slot: TurnSlot) -> str:
        # A group scene's prompt (and a suggestion's) ends with "name:"; the text starts after
        # its space.
        if self.kind == "suggest":
            return slot.text.lstrip(" ")
        if self.active.is_group and self.kind != "continue":
            text = slot.text.lstrip(" ")
            # A model that says the name again ("민지: ...") has it taken off.
            return text.removeprefix(f"{self.character.name}:").lstrip(" ")
        return slot.text

    def _failed(self, slot: TurnSlot | None, error: Exception | None) -> ReplyOutcome:
        text = self.prefix + (self._generated(slot) if slot is not None else "")
        return ReplyOutcome(Ending.FAILED, text=text, error=error)

    async def _prompt(self) -> BuiltPrompt:
        if self._after is not None:
            await self._after
        target = self.target
        return await self._turns.core.build_prompt(
            self.active,
            speaker=self.actor,
            character=self.character,
            exclude_message_id=target.id if self.kind == "regenerate" and target else None,
            continue_message=target if self.kind == "continue" else None,
            impersonate=self.kind == "suggest",
            unprompted=self.spoke_up is not None,
        )

    async def _scripted(self, text: str) -> tuple[str, str]:
        """The reply as stored and as shown, after its character's card scripts."""
        core = self._turns.core
        user = "user"
        if self.actor is not None:
            user = await core.user_name(self.actor, place_guild=self.active.session.guild_id)
        return await core.scripted_reply(self.active, self.character, text, user=user)

    async def _settle(self, slot: TurnSlot, shown_in: list[int]) -> ReplyOutcome:
        """What a reply that ran to its end (or was stopped or cut) leaves behind."""
        text = self._generated(slot)
        shown = self.prefix + text
        if self._line_gone:
            return ReplyOutcome(Ending.DISCARDED, text=shown)
        stopped = slot.outcome is TurnOutcome.CANCELLED and slot.cancel_reason == STOPPED_BY_USER
        if self.kind == "suggest":
            if slot.outcome is TurnOutcome.FINISHED or (stopped and text.strip()):
                return ReplyOutcome(Ending.SUGGESTED, text=text.strip(), stopped=stopped)
            timed_out = slot.outcome is TurnOutcome.TIMED_OUT
            return ReplyOutcome(Ending.CUT, text=text, timed_out=timed_out)
        if slot.outcome is TurnOutcome.FINISHED and not text.strip():
            # A model that wrote nothing (or only the speaker's name) has no line to store.
            log.warning("the reply in channel %s came back empty", self.place.channel_id)
            empty = EngineError("the engine's reply was empty", key="engine.empty")
            return ReplyOutcome(Ending.FAILED, text=shown, error=empty)
        if slot.outcome is TurnOutcome.FINISHED or (stopped and text.strip()):
            text, scripted = await self._scripted(text)
            shown = self.prefix + scripted
            stored = await self._turns.core.store_reply(
                self.active,
                text,
                character=self.character,
                regenerate_of=self.target.id if self.kind == "regenerate" and self.target else None,
                continue_of=self.target if self.kind == "continue" else None,
                discord_message_ids=shown_in,
            )
            if self.kind == "reply":
                place = Shown(stored, stored.swipe_index, stored.swipe_index + 1)
            else:
                place = await self._turns.shown(stored)
            refused = self._turns.untold_refusals(
                self.place,
                self.active.config.sampling,
                continues=self.kind == "continue" or self.active.is_group,
            )
            return ReplyOutcome(
                Ending.STORED, text=shown, shown=place, stopped=stopped, refused=refused
            )
        if slot.outcome is TurnOutcome.CANCELLED and self.kind == "reply" and not stopped:
            return ReplyOutcome(Ending.DISCARDED, text=shown)
        timed_out = slot.outcome is TurnOutcome.TIMED_OUT
        return ReplyOutcome(Ending.CUT, text=shown, timed_out=timed_out)


class Said:
    """A player's message: `stored` is the task storing it; `replies()` gives the characters'
    answers one after another (the next only once the one before was stored), until one is
    stopped or fails, or a newer player line in the channel ends the round (`supersede`)."""

    def __init__(
        self,
        stored: asyncio.Future[MessageRecord],
        replies: Sequence[Reply],
        *,
        too_late: bool = False,
    ) -> None:
        self.stored = stored
        self._replies = list(replies)
        #: A line that came too late to be answered: kept out of the story (see `Turns.say`).
        self.too_late = too_late
        self._superseded = False
        self._playing: Reply | None = None

    @property
    def answered(self) -> bool:
        return bool(self._replies)

    async def replies(self) -> AsyncIterator[Reply]:
        for reply in self._replies:
            if self._superseded:
                return  # a newer line came: its own answer follows instead
            self._playing = reply
            yield reply
            outcome = reply.outcome
            if outcome is None or outcome.ending is not Ending.STORED or outcome.stopped:
                return  # stopped or failed: the other characters keep quiet

    async def supersede(self) -> None:
        """A newer player line came in the channel: the characters yet to answer this line keep
        quiet, and one of them still waiting for its turn is withdrawn (the line's first answer,
        and one already being written, go on as the channel's busy policy says)."""
        self._superseded = True
        playing = self._playing
        if playing is not None and playing is not self._replies[0] and not playing.begun:
            await playing.stop()


class Turns:
    """Plays the turns of every scene: the one entry point front ends use to act on one."""

    def __init__(self, core: RoleplayCore, scheduler: Scheduler) -> None:
        self.core = core
        self.scheduler = scheduler
        #: (server, setting) pairs whose refusal by the engine's server was told there.
        self._told_refusals: set[tuple[int, str]] = set()
        #: The players' lines taken lately: each once; edits and deletes after their store.
        self.lines = Lines()
        #: What the model was last shown in each scene (`/rp context`).
        self.sent = SentPrompts()
        #: Per channel, the round of answers to its newest player line (while it plays).
        self._rounds: weakref.WeakValueDictionary[int, Said] = weakref.WeakValueDictionary()
        #: Per channel, who answered its newest answered line and why (for the inspector).
        self._last_picks: dict[int, tuple[Reason, ...]] = {}
        #: Per channel, why its newest reply came with nobody speaking to it, if it did.
        self._spoke_up: dict[int, SpokeUp] = {}
        #: Hears when players and characters speak (characters who speak up on their own).
        self.watcher: SceneWatcher | None = None

    def untold_refusals(
        self, place: Place, sampling: SamplingParams, *, continues: bool = False
    ) -> tuple[str, ...]:
        """The settings `sampling` uses that the engine's server refused (and CONTINUATION when
        the reply `continues` from a prompt's open end: a group speaker's name, a message being
        continued) that this server has not been told of yet; each is told once per server
        (and process)."""
        in_use = sampling.settings_in_use() | ({CONTINUATION} if continues else set())
        refused = self.scheduler.engine.health().refused & in_use
        untold = sorted(
            name for name in refused if (place.guild_id, name) not in self._told_refusals
        )
        self._told_refusals.update((place.guild_id, name) for name in untold)
        return tuple(untold)

    def reply_stored(self, active: ActiveRoleplay, built: BuiltPrompt) -> None:
        """A reply built from `built` was stored: the scene's memory may have turns to fold
        (a job for it starts in the background, never in the way of a player's turn)."""
        if self.core.memory is not None:
            self.core.memory.reply_stored(active, built)

    # --- refusing early -----------------------------------------------------------------------

    def _admit_answer(
        self,
        active: ActiveRoleplay,
        place: Place,
        actor: Actor,
        characters: Sequence[CharacterRecord],
    ) -> None:
        """Admit the answer to a player's line: every character that answers may speak here,
        and the first costs the player's turn (one line, one turn)."""
        if not characters:
            return
        for character in characters[1:]:
            self.core.check_may_generate(active, place, character)
        self.admit(active, place, actor, characters[0])

    def admit(
        self, active: ActiveRoleplay, place: Place, actor: Actor | None, character: CharacterRecord
    ) -> None:
        """Refuse a turn before it costs anything: the gate every path that makes a character
        speak passes (a message, a suggestion sent, regenerate, continue, an edit and the offer
        to regenerate, `/rp next`): a voice here at this moment, the channel rules, a character
        the actor may still use in a DM (one who left its server may not), then one turn
        counted against the actor's rate limit."""
        if actor is not None:
            require_voice(actor)
            if place.dm and not can_use(actor, character):
                raise PermissionDenied(
                    "the character is no longer available",
                    key="error.character_unavailable",
                    name=character.name,
                )
        self.core.check_may_generate(active, place, character)
        user_id = actor.user_id if actor else 0
        self.scheduler.charge(user_id, active.config.user_rate_limit)

    # --- pins ----------------------------------------------------------------------------------

    async def pin(
        self, actor: Actor, active: ActiveRoleplay, text: str, *, message_id: int | None = None
    ) -> PinRecord:
        """Pin a line (`RoleplayCore.pin`). Each change of a scene's pins changes the start of
        its prompts, so the engine reads the whole prompt again on the next turn: a pin, an
        edit and an unpin each cost one turn of the actor's rate limit, once allowed."""
        await self.core.pins.require_may_pin(actor, active.session)
        self.scheduler.charge(actor.user_id, active.config.user_rate_limit)
        return await self.core.pin(actor, active, text, message_id=message_id)

    async def edit_pin(
        self, actor: Actor, active: ActiveRoleplay, pin_id: int, text: str
    ) -> PinRecord:
        """Change a pin's text (`RoleplayCore.edit_pin`), for one turn of the rate limit."""
        await self.core.pins.require_may_change(actor, active.session, pin_id)
        self.scheduler.charge(actor.user_id, active.config.user_rate_limit)
        return await self.core.edit_pin(actor, active, pin_id, text)

    async def unpin(self, actor: Actor, active: ActiveRoleplay, pin_id: int) -> PinRecord:
        """Unpin (`RoleplayCore.unpin`), for one turn of the rate limit."""
        await self.core.pins.require_may_change(actor, active.session, pin_id)
        self.scheduler.charge(actor.user_id, active.config.user_rate_limit)
        return await self.core.unpin(actor, active, pin_id)

    # --- scenes --------------------------------------------------------------------------------

    async def admit_change(self, actor: Actor, place: Place, *, starts: bool = False) -> None:
        """The gate of every command that changes which scene plays here or who is in it
        (start, resume, branch, import, reset, cast add), before anything changes: a voice
        here, an enabled channel (moderators excepted: a moderator's new scene enables it),
        for a new scene nobody else's running one, and one turn of the actor's rate limit
        (each posts as a character). A refusal after this gate has still cost that turn."""
        require_voice(actor)
        config = await self.core.config_for(place, user_id=actor.user_id)
        if not config.enabled and not actor.is_moderator:
            raise UserFacingError("channel disabled", key="error.channel_disabled")
        if starts:
            await self.core.ensure_can_start(actor, place)
        self.scheduler.charge(actor.user_id, config.user_rate_limit)
        if starts and not config.enabled:
            await self.core.update_channel_settings(place, enabled=True)

    async def scene_changing(self, place: Place, *, reason: str) -> None:
        """The scene here ends or another takes its place: whatever plays here stops, and so
        do the characters speaking up on their own (`watcher.scene_ended`)."""
        await self.scheduler.cancel_channel(place.channel_id, reason=reason)
        if self.watcher is not None:
            self.watcher.scene_ended(place)

    async def admit_start(self, actor: Actor, place: Place) -> None:
        """Refuse a new scene here (`start`, resume, branch, import) before anything changes."""
        await self.admit_change(actor, place, starts=True)

    async def start(
        self, actor: Actor, place: Place, *, character_id: int, greeting_index: int = 0
    ) -> Started:
        """A new scene here (after `admit_start`): whatever streams here stops first, once the
        character is known to be one `actor` may start here."""
        await self.core.check_start(actor, place, character_id=character_id)
        await self.scene_changing(place, reason="a new roleplay started")
        return await self.core.start(
            actor, place, character_id=character_id, greeting_index=greeting_index
        )

    async def admit_reset(self, actor: Actor, place: Place) -> None:
        """Refuse a `reset` before anything changes (the starter or a moderator; the gate)."""
        active = await self.core.require_active(place)
        require_starter_or_moderator(actor, active.session)
        await self.admit_change(actor, place)

    async def reset(self, actor: Actor, place: Place) -> Started:
        """Start over with the same lead character (after `admit_reset`)."""
        active = await self.core.require_active(place)
        await self.core.check_start(actor, place, character_id=active.lead.id)
        await self.scene_changing(place, reason="roleplay reset")
        return await self.core.reset(actor, place)

    async def end(self, place: Place, actor: Actor) -> ActiveRoleplay:
        """End the scene here (the starter or a moderator); its history is kept."""
        active = await self.core.require_active(place)
        require_starter_or_moderator(actor, active.session)
        await self.scene_changing(place, reason="roleplay stopped")
        await self.core.stop(place)
        return active

    async def join(self, actor: Actor, place: Place, character_id: int) -> Started:
        """A character joins the scene (the starter or a moderator; its greeting is one turn
        of the actor's rate limit, behind the gate of `admit_change`)."""
        await self.core.check_join(actor, place, character_id=character_id)
        await self.admit_change(actor, place)
        return await self.core.add_to_cast(actor, place, character_id=character_id)

    async def leave(self, actor: Actor, place: Place, character_id: int) -> CharacterRecord:
        """A character leaves the scene (the starter or a moderator); a reply streaming here
        stops first, it may be theirs."""
        active = await self.core.require_active(place)
        require_starter_or_moderator(actor, active.session)
        if active.member(character_id) is not None and len(active.cast) > 1:
            await self.scheduler.cancel_channel(place.channel_id, reason="cast changed")
        return await self.core.remove_from_cast(actor, place, character_id=character_id)

    # --- a player's message -------------------------------------------------------------------

    async def say(
        self,
        place: Place,
        actor: Actor,
        text: str,
        *,
        message_id: int | None = None,
        sent_at: datetime | None = None,
        mentioned: bool = False,
        to: int | None = None,
        late: bool = False,
        read_back: bool = False,
        on_wait: Callable[[], None] | None = None,
    ) -> Said | None:
        """A player's message in the story. None when no scene plays here (nothing stored).

        Refused (UserFacingError) before anything is stored when the characters may not answer.
        Where the channel answers only messages that mention the bot, others are stored
        without a reply. `to` names the character the player talks to (the terminal's `@name`).
        `on_wait` hears when the database keeps the line waiting (it is tried again); a line
        that cannot be kept fails with StorageUnavailable, here or in `Said.stored`.

        A message with a front end's `message_id` (sent at `sent_at`) is taken once: delivered
        again, or read back when the scene already stores it (a restart), it gets None. A `late`
        one (read back after the gateway lost it, too long after it was sent) that a character
        would answer is not answered and stays out of the story: it is kept as a removed line,
        so it is taken once too, and `Said.too_late` tells the front end to say so. A line
        `read_back` from the channel's history is always looked up among the stored lines.
        """
        handling = functools.partial(
            self._say,
            place,
            actor,
            text,
            mentioned=mentioned,
            to=to,
            late=late,
            read_back=read_back,
            on_wait=on_wait,
        )
        if message_id is None:
            return await handling(None)
        line = self.lines.take(message_id, sent_at)
        if line is None:
            return None  # delivered again: the first delivery has it
        try:
            return await handling(line)
        finally:
            line.settle_unstored()

    async def _say(
        self,
        place: Place,
        actor: Actor,
        text: str,
        line: Line | None,
        *,
        mentioned: bool,
        to: int | None,
        late: bool,
        read_back: bool,
        on_wait: Callable[[], None] | None,
    ) -> Said | None:
        active = await self.core.active(place, on_wait=on_wait)
        if active is None or not active.config.enabled:
            return None
        require_voice(actor)  # a suggestion sent is posted for its player, answered or not
        message_id = line.message_id if line is not None else None
        if (
            line is not None
            and (read_back or self.lines.unsure(line))
            and await self.core.line_stored(active, line.message_id, on_wait=on_wait)
        ):
            return None  # stored by an earlier process (read back after a restart)
        answer = active.config.reply_mode != "mention" or mentioned
        addressee = active.member(to)
        if not answer:
            characters = []
        elif addressee is not None:
            characters = [addressee]
        else:
            characters = await self.responders(active, actor, text, place=place)
        if line is not None and line.gone:
            return None  # deleted before it was stored
        if characters and late:
            stored = asyncio.ensure_future(
                self.core.add_removed_line(
                    active, actor, text, discord_message_id=message_id, on_wait=on_wait
                )
            )
            if line is not None:
                line.storing(stored, ())
            return Said(stored, (), too_late=True)
        self._admit_answer(active, place, actor, characters)
        # Admitted (a refused line is not stored): the characters' own turns give way to it.
        self._spoke_up.pop(place.channel_id, None)
        if self.watcher is not None:
            self.watcher.player_spoke(place, active)
        # Stored while the reply's first message goes out: the prompt waits for it.
        stored = asyncio.ensure_future(
            self.core.add_user_message(
                active, actor, text, discord_message_id=message_id, on_wait=on_wait
            )
        )
        replies = [
            Reply(self, active=active, place=place, actor=actor, character=c, after=stored)
            for c in characters
        ]
        if line is not None:
            line.storing(stored, replies)
        return await self._new_round(place, Said(stored, replies))

    async def _new_round(self, place: Place, said: Said) -> Said:
        """A player's line was taken: the round answering the channel's line before it ends
        (as SillyTavern stops a group's round when its user sends), and this one begins."""
        previous = self._rounds.get(place.channel_id)
        if previous is not None:
            await previous.supersede()
        self._rounds[place.channel_id] = said
        return said

    async def answer_waiting(self, place: Place, actor: Actor, line: MessageRecord) -> Said:
        """Answer a scene's newest line that never got its answer (the process stopped before
        it could): the characters that would have answered it, as for a new line; refused
        (UserFacingError) the same way. Nothing is stored again, and a line this process has
        taken (it came live, or is answered already) is left to that."""
        stored: asyncio.Future[MessageRecord] = asyncio.get_running_loop().create_future()
        stored.set_result(line)
        taken = (
            self.lines.take(line.discord_message_id, line.created_at)
            if line.discord_message_id is not None
            else None
        )
        if taken is None:
            return Said(stored, ())
        try:
            active = await self.core.require_active(place)
            characters: list[CharacterRecord] = []
            if active.config.enabled and active.config.reply_mode != "mention":
                characters = await self.responders(
                    active, actor, line.content, place=place, line_id=line.id
                )
            self._admit_answer(active, place, actor, characters)
            replies = [
                Reply(self, active=active, place=place, actor=actor, character=c)
                for c in characters
            ]
            taken.storing(stored, replies)  # its player deleting it stops them
            return Said(stored, replies)
        finally:
            taken.settle_unstored()

    async def responders(
        self,
        active: ActiveRoleplay,
        actor: Actor,
        text: str,
        *,
        place: Place | None = None,
        line_id: int | None = None,
    ) -> list[CharacterRecord]:
        """Who answers a player's line (`line_id`: stored already), in order: the only
        character of a one-character scene, else as the channel's turn order says
        (`turn_order`); muted characters never. Who answered why is kept for `last_picks`."""
        if not active.is_group:
            return [active.lead]
        picks = await self._picks(active, actor, text, line_id)
        if place is not None:
            self._last_picks[place.channel_id] = tuple(pick.reason for pick in picks)
        return [pick.character for pick in picks]

    def last_picks(self, place: Place) -> tuple[Reason, ...]:
        """Who answered the newest line answered in `place` in this process, and why."""
        return self._last_picks.get(place.channel_id, ())

    async def _picks(
        self, active: ActiveRoleplay, actor: Actor, text: str, line_id: int | None
    ) -> list[Pick]:
        order, speakers = active.config.turn_order, active.speakers
        if order == "manual":
            return []
        if order == "list":
            return [Pick(character, "listed") for character in speakers]
        cast = [Addressable(c.id, names_of(c)) for c in speakers]
        named = [c for c in map(active.member, addressed(text, cast)) if c is not None]
        history = await self.core.recent(active)
        if line_id is not None:
            history = [m for m in history if m.id < line_id]
        rng = seeded(active.session.id, history[-1].id if history else 0)
        if order == "natural":
            return natural_order(named, speakers, rng)
        if order == "pooled":
            return pooled_order(speakers, (), rng)  # nobody has spoken since this line
        if named:
            kept = named if active.config.answer_every_addressed else named[:1]
            return [Pick(character, "named") for character in kept]
        last = self._last_to(active, history, actor.user_id)
        return [Pick(last, "last")] if last is not None else []

    async def _drawn_next(self, active: ActiveRoleplay) -> Pick:
        """Who speaks next without a player line: one of the unmuted cast that has not spoken
        since the last player line (all have: anyone but the last to speak), by the scene's
        seeded draw."""
        history = await self.core.recent(active)
        spoken = spoken_since_player([(m.role, m.character_id) for m in history])
        rng = seeded(active.session.id, history[-1].id if history else 0)
        picks = pooled_order(active.speakers, spoken, rng)
        if not picks:
            raise UserFacingError("every character is muted", key="error.all_muted")
        return picks[0]

    @staticmethod
    def _last_to(
        active: ActiveRoleplay, history: Sequence[MessageRecord], user_id: int
    ) -> CharacterRecord | None:
        """The speaker (not muted) that last answered this player, else the one that spoke
        last, else the first; None when every character is muted."""
        speakers = {c.id: c for c in active.speakers}
        last_any: CharacterRecord | None = None
        for before, message in zip(reversed(history[:-1]), reversed(history[1:]), strict=True):
            character = speakers.get(message.character_id or -1)
            if message.role != "assistant" or character is None:
                continue
            last_any = last_any or character
            if before.role == "user" and before.author_id == user_id:
                return character
        if last_any is None and history:
            last_any = speakers.get(history[0].character_id or -1)
        return last_any or next(iter(active.speakers), None)

    # --- replies to act on --------------------------------------------------------------------

    async def regenerate(self, place: Place, actor: Actor, target_id: int) -> Reply:
        """A new alternative of the newest reply (any player with a voice here)."""
        require_voice(actor)
        active, latest = await self._latest(place, target_id)
        if await self.core.is_greeting(latest):
            raise UserFacingError("a greeting is not regenerated", key="reply.greeting_fixed")
        character = self._speaker_of(active, latest)
        self.admit(active, place, actor, character)
        return Reply(
            self,
            active=active,
            place=place,
            actor=actor,
            character=character,
            kind="regenerate",
            target=latest,
        )

    @staticmethod
    def _speaker_of(active: ActiveRoleplay, message: MessageRecord) -> CharacterRecord:
        """The cast member who spoke `message`; one who left the scene no longer speaks."""
        character = active.member(message.character_id)
        if character is not None:
            return character
        if message.character_id is not None:
            raise NotFound("that character left the scene", key="error.not_in_cast")
        return active.lead

    async def continue_reply(
        self, place: Place, actor: Actor, target_id: int | None = None
    ) -> Reply:
        """More of the newest reply (the scene's starter or a moderator); with no reply yet,
        the lead speaks first."""
        active = await self.core.require_active(place)
        require_starter_or_moderator(actor, active.session)
        if target_id is None:
            latest = await self.core.latest_reply(place)
        else:
            _, latest = await self._latest(place, target_id)
        character = self._speaker_of(active, latest) if latest else active.lead
        self.admit(active, place, actor, character)
        if latest is None:
            return Reply(self, active=active, place=place, actor=actor, character=character)
        return Reply(
            self,
            active=active,
            place=place,
            actor=actor,
            character=character,
            kind="continue",
            target=latest,
        )

    async def next_speaker(self, place: Place, actor: Actor, character_id: int | None) -> Reply:
        """One character of the cast speaks now, without a player's message: the one asked
        for, or (None) one drawn as the pooled order draws a turn without a player line."""
        require_voice(actor)
        active = await self.core.require_active(place)
        drawn = await self._drawn_next(active) if character_id is None else None
        character = drawn.character if drawn is not None else active.member(character_id)
        if character is None:
            raise NotFound("not in the scene", key="error.not_in_cast")
        self.admit(active, place, actor, character)
        if drawn is not None:
            self._last_picks[place.channel_id] = (drawn.reason,)
        return Reply(self, active=active, place=place, actor=actor, character=character)

    def speak_up(
        self,
        active: ActiveRoleplay,
        place: Place,
        character: CharacterRecord,
        why: SpokeUp,
        *,
        payer: Actor | None = None,
        paid: bool = False,
    ) -> Reply:
        """A character speaks with nobody speaking to it (`roleplay.initiative`): refused as a
        player's turn is (the channel's rules, the character's availability), and charged like
        one to `payer` (the player who asked for it; by default the scene's starter). Its turn
        gives way to every player's. `paid`: the turn was counted already (`admit`)."""
        if place.dm:
            raise UserFacingError("not in a DM", key="error.channel_disabled")
        if paid:
            self.core.check_may_generate(active, place, character)
        else:
            payer = payer or Actor(active.session.started_by, "", guild_id=place.guild_id)
            self.admit(active, place, payer, character)
        return Reply(
            self, active=active, place=place, actor=None, character=character, spoke_up=why
        )

    def character_spoke(
        self, place: Place, active: ActiveRoleplay, spoke_up: SpokeUp | None
    ) -> None:
        """A new reply was stored in `place`: `spoke_up` says why when nobody asked for it."""
        if spoke_up is None:
            self._spoke_up.pop(place.channel_id, None)
        else:
            self._spoke_up[place.channel_id] = spoke_up
        if self.watcher is not None:
            self.watcher.character_spoke(place, active)

    def last_spoke_up(self, place: Place) -> SpokeUp | None:
        """Why the newest reply in `place` came unasked, when it did (in this process)."""
        return self._spoke_up.get(place.channel_id)

    async def suggest(self, place: Place, actor: Actor) -> Reply:
        """The model writes `actor`'s own next line in their persona's voice, for them alone to
        send, regenerate or edit: never stored, one turn of their rate limit."""
        require_voice(actor)
        active = await self.core.require_active(place)
        self.admit(active, place, actor, active.lead)
        return Reply(
            self, active=active, place=place, actor=actor, character=active.lead, kind="suggest"
        )

    async def edited(
        self, place: Place | None, editor: Actor, message_id: int, content: str | None
    ) -> Edited:
        """A player changed a stored message (`content` None: it left the story, as if deleted);
        in the running scene the card scripts that run on edit change it first. Editing the
        newest player message that a reply answers regenerates that reply, or offers to. An
        edit that comes while its line is still being stored applies after it."""
        if content is None:
            await self.deleted(message_id)
            return Edited()
        line = self.lines.get(message_id)
        if line is not None:
            await line.settled()
        active = await self.core.active(place) if place is not None else None
        edit = await self.core.message_edited(message_id, content, active=active, editor=editor)
        if edit is None or not edit.is_last_user_turn or place is None:
            return Edited()
        if active is None or edit.message.session_id != active.session.id:
            return Edited()  # a message of an archived scene: the running one is not touched
        latest = await self.core.latest_reply(place)
        if latest is None or latest.id < edit.message.id or await self.core.is_greeting(latest):
            return Edited()
        character = active.member(latest.character_id) or active.lead
        if active.config.edit_policy != "regenerate":
            try:
                self.admit(active, place, editor, character)  # an offer posts here, too
            except UserFacingError:
                return Edited()  # the edit stays; nothing is posted
            return Edited(offer=latest)
        self.admit(active, place, editor, character)  # the editor's turn, on their own limit
        reply = Reply(
            self,
            active=active,
            place=place,
            actor=editor,
            character=character,
            kind="regenerate",
            target=latest,
        )
        return Edited(regenerate=reply)

    async def deleted(self, message_id: int) -> None:
        """A message left the front end. A player's line takes its turn with it: the replies
        still being written for it stop and leave nothing (finished ones stay), and a line
        still being stored is removed once it is (or never stored, when not yet begun)."""
        line = self.lines.get(message_id)
        if line is not None:
            line.gone = True
            for reply in line.replies:
                await reply.line_deleted()
            await line.settled()
        await self.core.message_deleted(message_id)

    # --- acting without generating ------------------------------------------------------------

    async def browse(
        self, place: Place, actor: Actor, target_id: int, step: int
    ) -> tuple[Shown, tuple[int, ...]]:
        """Show another alternative of a reply; every press costs the presser one turn.
        Returns it, and the front end's messages that show the turn now (the alternative
        chosen until this press)."""
        require_voice(actor)
        active = await self.core.require_active(place)
        target = await self._in_scene(active, target_id)
        self.scheduler.charge(actor.user_id, active.config.user_rate_limit)
        before = (await self.shown(target)).message
        on_screen = before.discord_message_ids or target.discord_message_ids
        chosen, index, count = await self.core.browse(target.id, step)
        greeting = await self.core.is_greeting(chosen)
        user = await self.core.user_name(actor, place_guild=active.session.guild_id)
        display = await self.core.displayed(active, chosen, user=user)
        return Shown(chosen, index, count, greeting, display), on_screen

    async def stop_reply(self, reply: Reply, actor: Actor) -> None:
        """Stop one reply, waiting or streaming: its player, the starter or a moderator; one
        nobody asked for, any player with a voice here."""
        if reply.spoke_up is not None:
            require_voice(actor)
        else:
            require_may_stop(
                actor, reply.active.session, reply.actor.user_id if reply.actor else None
            )
        await reply.stop()

    async def unstore(self, reply: Reply, stored: MessageRecord) -> None:
        """A stored reply that Discord never showed leaves the story again, so the model
        remembers only what the channel shows: a new turn is deleted, a new alternative gives
        way to the one chosen before, a continuation is cut back to where it began."""
        target = reply.target
        if reply.kind == "continue" and target is not None:
            await self.core.revert_continuation(target)
        elif reply.kind == "regenerate" and target is not None:
            await self.core.drop_alternative(stored, back_to=target)
        else:
            await self.core.drop_reply(stored)

    async def undo(self, place: Place, actor: Actor) -> list[MessageRecord]:
        """Take back the newest exchange (the starter or a moderator); returns what went."""
        active = await self.core.require_active(place)
        require_starter_or_moderator(actor, active.session)
        await self.scheduler.cancel_channel(place.channel_id, reason="undo")
        removed = await self.core.undo(place)
        if not removed:
            raise UserFacingError("nothing to undo", key="error.nothing_to_undo")
        return removed

    async def shown(self, message: MessageRecord) -> Shown:
        """The chosen alternative of `message`'s turn, as a front end shows it."""
        options = await self.core.alternatives(message.id)
        chosen = next((m for m in options if m.chosen), message)
        index = next((i for i, m in enumerate(options) if m.id == chosen.id), 0)
        greeting = await self.core.is_greeting(chosen)
        return Shown(chosen, index, max(1, len(options)), greeting)

    async def shown_now(
        self, message: MessageRecord, place: Place, actor: Actor | None = None
    ) -> Shown:
        """`shown`, with what the channel shows for it where its card's display scripts change
        it ({{user}}: `actor`, else the scene's newest player): a reply posted afresh (a scene
        reopened, a reply finished after a restart) looks as it did when it was written."""
        shown = await self.shown(message)
        active = await self.core.active(place)
        if active is None or active.session.id != message.session_id:
            return shown
        if actor is not None:
            user = await self.core.user_name(actor, place_guild=active.session.guild_id)
        else:
            user = await self.core.last_player_name(active)
        display = await self.core.displayed(active, shown.message, user=user)
        return dataclasses.replace(shown, display=display)

    async def _in_scene(self, active: ActiveRoleplay, message_id: int) -> MessageRecord:
        target = await self.core.get_message(message_id)
        if target is None or target.session_id != active.session.id:
            raise UserFacingError("that reply is no longer part of the story", key="reply.gone")
        return target

    async def _latest(self, place: Place, target_id: int) -> tuple[ActiveRoleplay, MessageRecord]:
        """The scene and its newest reply, which `target_id` must be an alternative of."""
        active = await self.core.require_active(place)
        target = await self._in_scene(active, target_id)
        latest = await self.core.latest_reply(place)
        if latest is None or latest.turn_group != target.turn_group:
            raise UserFacingError("only the newest reply can be changed", key="reply.not_latest")
        return active, latest
