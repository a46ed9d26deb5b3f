"""Characters who speak up on their own: a quiet scene goes on without a player's word.

Off by default; a channel's moderators turn it on (`ChannelConfig.initiative`). Once a player
has spoken in a scene, each word in it (a player's line, a stored reply) starts its quiet time
over. When `initiative_quiet_minutes` pass without one, the character the players last talked
with speaks up: a reply with no player line before it (none is made up; the prompt's note asks
the character to go on), stored as any reply is, so the model remembers what the channel shows.
In a group, the characters then take `initiative_auto_turns` turns among themselves, each next
speaker picked by the scene's turn order from what the one before said (auto-mode).

Each such turn is admitted and charged like a player's turn, to the scene's starter
(`Turns.speak_up`), and gives way to every player's turn in the scheduler. It stops for good
(until a player speaks again) after `initiative_in_a_row` times with no player answering, when
the scene ends or changes, when moderators turn it off, after `IDLE_LIMIT_S` without a player,
on ⏹, on a refusal, and when a player speaks (the player is answered instead). Nothing of it
is stored across restarts: after one, nothing speaks until a player does. A player may also ask
for such turns among the characters at once (`Initiative.auto`, `/rp auto`; each charged to
them), and the terminal's `/auto N` plays `take_turns` itself.

The quiet times run on injected `Timers`, so tests move time themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from synatra_bot.errors import RateLimited, UserFacingError
from synatra_bot.roleplay.addressing import Addressable, addressed
from synatra_bot.roleplay.characters import names_of
from synatra_bot.roleplay.core import ActiveRoleplay
from synatra_bot.roleplay.rules import require_voice
from synatra_bot.roleplay.turn_order import natural_order, pooled_order, seeded, spoken_since_player
from synatra_bot.roleplay.turns import Ending, Reply, SpokeUp, Turns
from synatra_bot.roleplay.types import Actor, Place
from synatra_bot.storage.records import CharacterRecord, MessageRecord

log = logging.getLogger(__name__)

#: A scene whose players have been away this long is left quiet.
IDLE_LIMIT_S = 24 * 60 * 60


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """Monotonic time and callbacks after a delay (the event loop's, or a test's clock)."""

    def monotonic(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...


class LoopTimers:
    """The running event loop's clock and timers."""

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)


class Stage(Protocol):
    """Where the replies are shown: the front end's own gates, and the playing."""

    def may_speak(self, place: Place, active: ActiveRoleplay, payer: Actor | None = None) -> bool:
        """The front end can still post in `place` for its scene (reachable, and who pays the
        turn, `payer` or by default the scene's starter, still allowed to speak there)."""
        ...

    async def perform(self, reply: Reply) -> None:
        """Play `reply` to its end (its `outcome` set), shown as any reply is."""
        ...


async def take_turns(
    turns: Turns,
    stage: Stage,
    place: Place,
    count: int,
    *,
    quiet_minutes: int = 0,
    wanted: Callable[[], bool] = lambda: True,
    on_reply: Callable[[Reply], None] = lambda reply: None,
    payer: Actor | None = None,
    first_paid: bool = False,
    needs_initiative: bool = False,
) -> tuple[int, bool]:
    """`count` turns of the scene's characters with nobody speaking to them: the one the
    players last talked with first, then (in a group) whom the turn order picks from what was
    said. Ends early when `wanted()` turns false, the scene ends or changes, the channel is
    disabled (or, `needs_initiative`, its initiative turned off), a reply is stopped or fails,
    or a turn is refused (RateLimited is raised; other refusals end it quietly): the scene is
    read again before each turn. `on_reply` hears of each reply before it plays; `payer` is
    charged each turn (by default the scene's starter; the first turn not when `first_paid`).
    Returns the turns stored, and whether all `count` were."""
    stored = 0
    active = await turns.core.active(place)
    if active is None or not active.speakers:
        return 0, False
    session_id = active.session.id
    history = await turns.core.recent(active)
    character: CharacterRecord | None = last_talked_with(active, history)
    spoken = spoken_since_player([(m.role, m.character_id) for m in history])
    for turn in range(1, count + 1):
        if character is None or not wanted():
            break
        fresh = await turns.core.active(place)
        if (
            fresh is None
            or fresh.session.id != session_id
            or not fresh.config.enabled
            or (needs_initiative and not fresh.config.initiative)
            or not wanted()
        ):
            break  # the scene ended or changed, or moderators turned it off meanwhile
        active, character = fresh, fresh.member(character.id)
        if character is None:
            break  # left the cast meanwhile
        if not stage.may_speak(place, active, payer):
            break
        why = SpokeUp(character.name, quiet_minutes, turn, count)
        try:
            paid = first_paid and turn == 1
            reply = turns.speak_up(active, place, character, why, payer=payer, paid=paid)
        except RateLimited:
            raise
        except UserFacingError as error:
            log.info("nobody speaks up in %s: %s", place.channel_id, error)
            break
        on_reply(reply)
        await stage.perform(reply)
        outcome = reply.outcome
        if outcome is None or outcome.ending is not Ending.STORED or outcome.shown is None:
            break
        stored += 1
        if outcome.stopped:
            break
        spoken.append(character.id)
        character = next_speaker(active, character, outcome.shown.message, spoken)
    return stored, stored == count


def last_talked_with(
    active: ActiveRoleplay, history: list[MessageRecord]
) -> CharacterRecord | None:
    """The character (not muted) that last answered a player, else the last that spoke, else
    the first that may speak."""
    speakers = {c.id: c for c in active.speakers}
    last_any: CharacterRecord | None = None
    for before, message in zip(reversed(history[:-1]), reversed(history[1:]), strict=True):
        character = speakers.get(message.character_id or -1)
        if message.role != "assistant" or character is None:
            continue
        last_any = last_any or character
        if before.role == "user":
            return character
    return last_any or next(iter(active.speakers), None)


def next_speaker(
    active: ActiveRoleplay,
    speaking: CharacterRecord,
    said: MessageRecord,
    spoken: Sequence[int] = (),
) -> CharacterRecord:
    """Who answers `speaking`'s line `said` among the other characters, by the scene's turn
    order: pooled, one drawn among those not in `spoken` (who spoke since the last player
    line, oldest first); otherwise whom it names first (natural: then the seeded draw of
    talkativeness); otherwise, and in the list order, the next in cast order. In a scene of
    one speaker, it goes on."""
    others = [c for c in active.speakers if c.id != speaking.id]
    if not others:
        return speaking
    if active.config.turn_order == "pooled":
        drawn = pooled_order(active.speakers, spoken, seeded(active.session.id, said.id))
        if drawn:
            return drawn[0].character
    cast = [Addressable(c.id, names_of(c)) for c in others]
    named = [c for c in map(active.member, addressed(said.content, cast)) if c is not None]
    order = active.config.turn_order
    if order == "natural":
        picks = natural_order(named, others, seeded(active.session.id, said.id))
        if picks:
            return picks[0].character
    elif order != "list" and named:
        return named[0]
    ids = [c.id for c in active.speakers]
    if speaking.id not in ids:
        return others[0]
    at = ids.index(speaking.id)
    return active.speakers[(at + 1) % len(ids)]


@dataclass(eq=False)
class _Watch:
    """One scene whose players spoke since this process started."""

    place: Place
    session_id: int
    #: When a player last spoke (Timers.monotonic).
    player_at: float
    in_a_row: int = 0
    timer: TimerHandle | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    #: The reply speaking up now (withdrawn when a player speaks before it begins).
    playing: Reply | None = field(default=None, repr=False)


class Initiative:
    """Watches the scenes players speak in and lets their characters speak up when quiet."""

    def __init__(
        self, turns: Turns, stage: Stage, timers: Timers, *, idle_limit_s: float = IDLE_LIMIT_S
    ) -> None:
        self.turns = turns
        self.stage = stage
        self.timers = timers
        self.idle_limit_s = idle_limit_s
        self._watches: dict[int, _Watch] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        turns.watcher = self

    # --- what the turns tell ----------------------------------------------------------------

    def player_spoke(self, place: Place, active: ActiveRoleplay) -> None:
        """A player spoke: the characters' own turns in a row end, the quiet time starts."""
        old = self._watches.pop(place.channel_id, None)
        if old is not None:
            if old.timer is not None:
                old.timer.cancel()
            if old.playing is not None and not old.playing.begun:
                # Still waiting for its turn: withdrawn. One being written gives way to the
                # player's reply in the scheduler.
                self._track(asyncio.get_running_loop().create_task(old.playing.stop()))
        if self._closed or place.dm or not active.config.initiative:
            return
        watch = _Watch(place, active.session.id, self.timers.monotonic())
        self._watches[place.channel_id] = watch
        self._arm(watch, active)

    def character_spoke(self, place: Place, active: ActiveRoleplay) -> None:
        """A reply was stored: the quiet time starts over (not while the characters speak on
        their own: their run arms it when it ends)."""
        watch = self._watches.get(place.channel_id)
        if watch is not None and watch.task is None and watch.session_id == active.session.id:
            self._arm(watch, active)

    def scene_ended(self, place: Place) -> None:
        """The scene in `place` ended or another took its place: its quiet time is dropped and
        the characters speaking up there stop (the turn being written is cut by the scene's
        change; one still waiting for its turn is withdrawn here)."""
        watch = self._watches.pop(place.channel_id, None)
        if watch is None:
            return
        if watch.timer is not None:
            watch.timer.cancel()
            watch.timer = None
        if watch.playing is not None and not watch.playing.begun:
            self._track(asyncio.get_running_loop().create_task(watch.playing.stop()))

    async def auto(
        self,
        place: Place,
        actor: Actor,
        count: int,
        *,
        on_refused: Callable[[UserFacingError], Awaitable[None]] | None = None,
    ) -> None:
        """`actor` lets the scene's characters take `count` turns among themselves now (each
        charged to them), stopped as the quiet time's turns are; refused (UserFacingError)
        before anything starts when they may not speak here or no scene plays. A later turn
        refused by their rate limit ends the run, and `on_refused` tells them."""
        require_voice(actor)
        if place.dm:
            raise UserFacingError("only in a server's channels", key="error.auto_in_dm")
        active = await self.turns.core.require_active(place)
        self.turns.admit(active, place, actor, active.lead)  # the first turn, paid now
        self.player_spoke(place, active)
        watch = self._watches.get(place.channel_id)
        if watch is None:  # quiet times are off here: this run is watched on its own
            watch = _Watch(place, active.session.id, self.timers.monotonic())
            self._watches[place.channel_id] = watch
        elif watch.timer is not None:
            watch.timer.cancel()
            watch.timer = None
        watch.task = self._track(
            asyncio.get_running_loop().create_task(
                self._auto(watch, active, actor, count, on_refused)
            )
        )

    async def _auto(
        self,
        watch: _Watch,
        active: ActiveRoleplay,
        actor: Actor,
        count: int,
        on_refused: Callable[[UserFacingError], Awaitable[None]] | None,
    ) -> None:
        place = watch.place
        try:
            await take_turns(
                self.turns,
                self.stage,
                place,
                count,
                wanted=lambda: self._watches.get(place.channel_id) is watch,
                on_reply=lambda reply: setattr(watch, "playing", reply),
                payer=actor,
                first_paid=True,
            )
        except RateLimited as error:
            log.info("the player who asked in %s has no turn left", place.channel_id)
            if on_refused is not None:
                await on_refused(error)
        finally:
            watch.task = watch.playing = None
        if self._watches.get(place.channel_id) is not watch:
            return
        if active.config.initiative and not self._closed:
            self._arm(watch, active)  # the quiet time starts from here
        else:
            self._forget(watch)

    # --- the quiet times --------------------------------------------------------------------

    @property
    def watched(self) -> int:
        """Scenes with a quiet time running or characters speaking up."""
        return len(self._watches)

    async def idle(self) -> None:
        """Return once no character is speaking up anywhere (what starts meanwhile included)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def close(self, *, grace_s: float = 10.0) -> None:
        """Stop every quiet time; let the characters speaking up now finish (the scheduler,
        shut down first, ends their turns: only showing the end is left), then cancel what
        is left after `grace_s`."""
        self._closed = True
        for watch in self._watches.values():
            if watch.timer is not None:
                watch.timer.cancel()
        self._watches.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_s)
        left = list(self._tasks)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    def _arm(self, watch: _Watch, active: ActiveRoleplay) -> None:
        if watch.timer is not None:
            watch.timer.cancel()
        delay = active.config.initiative_quiet_minutes * 60
        watch.timer = self.timers.call_later(delay, lambda: self._due(watch))

    def _due(self, watch: _Watch) -> None:
        watch.timer = None
        if self._closed or self._watches.get(watch.place.channel_id) is not watch:
            return
        watch.task = self._track(asyncio.get_running_loop().create_task(self._speak_up(watch)))

    def _track(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a character speaking up failed", exc_info=task.exception())

    def _forget(self, watch: _Watch) -> None:
        if self._watches.get(watch.place.channel_id) is watch:
            del self._watches[watch.place.channel_id]

    async def _speak_up(self, watch: _Watch) -> None:
        place = watch.place
        try:
            active = await self.turns.core.active(place)
            if (
                active is None
                or active.session.id != watch.session_id
                or not active.config.initiative
                or (active.is_group and active.config.turn_order == "manual")
                or self.timers.monotonic() - watch.player_at > self.idle_limit_s
            ):
                self._forget(watch)  # the scene ended, changed or was left: for good
                return
            config = active.config
            if self.turns.scheduler.is_busy(place.channel_id):
                self._arm(watch, active)  # something plays here now: later
                return
            if watch.in_a_row >= config.initiative_in_a_row:
                self._forget(watch)
                return
            watch.in_a_row += 1
            count = max(1, config.initiative_auto_turns) if active.is_group else 1
            complete = limited = False
            try:
                _, complete = await take_turns(
                    self.turns,
                    self.stage,
                    place,
                    count,
                    quiet_minutes=config.initiative_quiet_minutes,
                    wanted=lambda: self._watches.get(place.channel_id) is watch,
                    on_reply=lambda reply: setattr(watch, "playing", reply),
                    needs_initiative=True,
                )
            except RateLimited:
                log.info("the starter of the scene in %s has no turn left", place.channel_id)
                limited = True
            watch.task = watch.playing = None
            if self._watches.get(place.channel_id) is not watch:
                return  # a player spoke meanwhile: their line's quiet time runs
            if not (complete or limited) or watch.in_a_row >= config.initiative_in_a_row:
                # Stopped (⏹), failed or refused: quiet until a player speaks.
                self._forget(watch)
                return
            fresh = await self.turns.core.active(place)
            if fresh is None or fresh.session.id != watch.session_id:
                self._forget(watch)
                return
            self._arm(watch, fresh)
        finally:
            watch.task = None
