"""Fair admission of reply turns in front of an engine.

One reply is in flight per channel; a global cap bounds the replies generating at once; each
user may start `user_turns` turns per `rate_window_s` (a scheduler made with
`rate_limited=False`, the terminal's, counts nothing: one person at a keyboard). Waiting turns
are admitted first come, first served, skipping turns whose channel is busy. A turn that has
to wait is handed its `QueueTicket` once through `on_queued(ticket)`; `ticket.position` (1 =
next among all waiting turns, 0 once admitted or dropped) is computed when read, so a long
queue costs nothing until someone looks at it.

Usage from the roleplay core::

    async with scheduler.turn(channel_id=c, user_id=u, policy="queue", on_queued=show) as slot:
        prompt = await build_prompt()          # built after admission: uses the latest history
        async for delta in slot.stream(prompt, params):
            ...                                # post / edit
    if slot.outcome is TurnOutcome.FINISHED:   # store slot.text as complete
        ...

- `turn()` raises `RateLimited` (params: retry_after seconds) at once when the user is over the
  limit (unless the caller already paid with `charge()`, to refuse before it shows anything),
  `TurnCancelled` when the turn is dropped while waiting (cancel_channel, superseded by a
  "restart" turn, shutdown) and `EngineUnavailable` after shutdown began.
- Policy "restart" cancels the channel's running turn and drops its waiting ones, then waits.
- `slot.stream()` never raises for cancellation or timeout: it ends, and `slot.outcome` says
  CANCELLED or TIMED_OUT (the engine request is cancelled too, so GPU work stops). Engine
  failures end with outcome FAILED and the engine's error re-raised. Only FINISHED text is
  complete; `slot.text` always holds what was streamed.
- The per-turn timeout counts from admission, prompt building included.

A turn nobody is waiting for (a character speaking up on its own) is admitted with
`yielding=True`: it waits while any player's turn waits, a player's turn in its channel goes
ahead of it in the queue, and a player's turn that needs its channel or its slot cancels it
(`cancel_reason == PREEMPTED`): players' turns are never delayed behind one.

Background work (a scene's summary) runs in a lane of its own, at the lowest priority: jobs
are started with `spawn(key, work)`, at most one per key, and tracked until they end (shutdown
waits for them). A job's generation asks `background(key)` for a slot::

    async with scheduler.background(("memory", scene)) as slot:
        async for delta in slot.stream(prompt, params):
            ...
    if slot.outcome is TurnOutcome.FINISHED:   # else: preempted (retry later), or shut down

A background slot is lent only while no player's turn waits and a slot is free. A player's
turn that would have to wait for a slot takes one lent to background work instead: it is
admitted at once and the background request is cancelled (`cancel_reason == PREEMPTED`).
Background work is never charged against any rate limit.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Sequence,
)
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from synatra_bot.engine.base import Engine, SamplingParams
from synatra_bot.errors import (
    EngineError,
    EngineUnavailable,
    GenerationInterrupted,
    RateLimited,
    TurnCancelled,
)
from synatra_bot.observe import IGNORED, Observer

log = logging.getLogger(__name__)

BusyPolicy = Literal["queue", "restart"]
QueuedCallback = Callable[["QueueTicket"], object]
#: The cancel reason of background work whose slot a player's turn took.
PREEMPTED = "preempted by a player's turn"


class TurnOutcome(enum.Enum):
    PENDING = "pending"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    FAILED = "failed"


@dataclass(eq=False)
class QueueTicket:
    """A turn waiting for admission; read `position` to learn its place in the queue."""

    scheduler: Scheduler
    channel_id: Hashable
    user_id: Hashable
    future: asyncio.Future[TurnSlot]
    arrival: int
    #: Gives way to players' turns (see the module docstring).
    yielding: bool = False

    @property
    def position(self) -> int:
        """1 for the next turn to be admitted (among all channels), 0 once it has left the queue."""
        return self.scheduler._position_of(self)


@dataclass(eq=False)
class TurnSlot:
    """An admitted turn: stream one or more engine requests, then read `outcome` and `text`."""

    scheduler: Scheduler
    channel_id: Hashable
    user_id: Hashable
    turn_id: int
    deadline: float
    outcome: TurnOutcome = TurnOutcome.PENDING
    text: str = ""
    cancel_reason: str = ""
    #: Lent to background work: it gives way to players' turns.
    background: bool = False
    #: A turn nobody waits for: it gives way to players' turns too.
    yielding: bool = False
    _request_id: str | None = field(default=None, repr=False)
    _requests: itertools.count[int] = field(default_factory=itertools.count, repr=False)
    _streams: list[AsyncGenerator[str, None]] = field(default_factory=list, repr=False)

    def stream(self, prompt: Sequence[int] | str, params: SamplingParams) -> AsyncIterator[str]:
        """Yield the reply's deltas; see the module docstring for how it ends."""
        generator = self._stream(prompt, params)
        self._streams.append(generator)
        return generator

    async def _close_streams(self) -> None:
        for generator in self._streams:
            await generator.aclose()
        self._streams.clear()

    async def _stream(
        self, prompt: Sequence[int] | str, params: SamplingParams
    ) -> AsyncGenerator[str, None]:
        if self.cancel_reason:
            self.outcome = TurnOutcome.CANCELLED
            return
        engine = self.scheduler.engine
        kind = "background" if self.background else "turn"
        request_id = f"{kind}-{self.turn_id}-{next(self._requests)}"
        self._request_id = request_id
        self.outcome = TurnOutcome.PENDING
        clock = self.scheduler.clock
        observer = self.scheduler.observer
        watched = observer is not IGNORED
        # A player waits on these; background work's latency is nobody's.
        timed = watched and not self.background
        begun = len(self.text)
        last = clock()
        deltas = engine.stream(prompt, params, request_id=request_id)
        # One timer for the whole stream, not an asyncio.timeout() per delta (a reply has
        # hundreds): when the deadline passes while we wait for the engine, that wait is
        # cancelled; when it passes while the caller handles a delta, the next wait sees it.
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        waiting = expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            if waiting and task is not None:
                task.cancel()

        timer = asyncio.get_running_loop().call_later(max(0.0, self.deadline - clock()), expire)
        try:
            while True:
                if expired or self.deadline - clock() <= 0:
                    self.outcome = TurnOutcome.TIMED_OUT
                    await engine.cancel(request_id)
                    return
                waiting = True
                try:
                    delta = await anext(deltas)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if not expired or task is None or task.uncancel() > cancelling:
                        raise  # cancelled by someone else, not by the deadline
                    self.outcome = TurnOutcome.TIMED_OUT
                    await engine.cancel(request_id)
                    return
                finally:
                    waiting = False
                if timed:
                    now = clock()
                    first = len(self.text) == begun
                    (observer.first_token if first else observer.token_gap)(now - last)
                    last = now
                self.text += delta
                yield delta
        except GenerationInterrupted as error:
            if self.cancel_reason:
                self.outcome = TurnOutcome.CANCELLED
                return
            self.outcome = TurnOutcome.FAILED
            observer.engine_error(type(error).__name__)
            raise
        except EngineError as error:
            self.outcome = TurnOutcome.FAILED
            observer.engine_error(type(error).__name__)
            raise
        except (GeneratorExit, asyncio.CancelledError):
            # The caller stopped listening: the reply is not complete.
            self.outcome = TurnOutcome.CANCELLED
            raise
        finally:
            timer.cancel()
            self._request_id = None
            if watched and len(self.text) > begun:
                observer.tokens_generated(engine.count_tokens(self.text[begun:]))
            close = getattr(deltas, "aclose", None)
            if close is not None:
                await close()
        self.outcome = TurnOutcome.CANCELLED if self.cancel_reason else TurnOutcome.FINISHED

    async def _cancel(self, reason: str) -> None:
        if not self.cancel_reason:
            self.cancel_reason = reason
        if self._request_id is not None:
            await self.scheduler.engine.cancel(self._request_id)


class _SlotContext:
    """Holds a slot from admission to the end of the block, then hands it back."""

    _scheduler: Scheduler
    _slot: TurnSlot | None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._slot is not None:
            slot = self._slot
            try:
                # A stream left early is closed now, not whenever it is garbage collected,
                # so its engine request stops at once.
                await slot._close_streams()
            finally:
                if slot.outcome is TurnOutcome.PENDING:
                    slot.outcome = TurnOutcome.CANCELLED
                if not slot.background:
                    self._scheduler.observer.reply_ended(slot.outcome.value)
                self._scheduler._release(slot)


class _BackgroundContext(_SlotContext):
    def __init__(self, scheduler: Scheduler, key: Hashable) -> None:
        self._scheduler = scheduler
        self._key = key
        self._slot = None

    async def __aenter__(self) -> TurnSlot:
        self._slot = await self._scheduler._admit_background(self._key)
        return self._slot


class _TurnContext(_SlotContext):
    def __init__(
        self,
        scheduler: Scheduler,
        channel_id: Hashable,
        user_id: Hashable,
        policy: BusyPolicy,
        on_queued: QueuedCallback | None,
        user_turns: int | None = None,
        charged: bool = False,
        yielding: bool = False,
    ) -> None:
        self._scheduler = scheduler
        self._charged = charged
        self._yielding = yielding
        self._user_turns = user_turns
        self._channel_id = channel_id
        self._user_id = user_id
        self._policy = policy
        self._on_queued = on_queued
        self._slot: TurnSlot | None = None

    async def __aenter__(self) -> TurnSlot:
        self._slot = await self._scheduler._admit(
            self._channel_id,
            self._user_id,
            self._policy,
            self._on_queued,
            self._user_turns,
            self._charged,
            self._yielding,
        )
        return self._slot


class Scheduler:
    """Admits turns: one per channel, `max_concurrent` in all, per-user rate limits."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_concurrent: int,
        turn_timeout_s: float,
        user_turns: int = 6,
        rate_window_s: float = 60.0,
        rate_limited: bool = True,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer = IGNORED,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.engine = engine
        self.max_concurrent = max_concurrent
        self.turn_timeout_s = turn_timeout_s
        self.user_turns = user_turns
        self.rate_window_s = rate_window_s
        self.rate_limited = rate_limited
        self.clock = clock
        self.observer = observer
        # Waiting turns in arrival order, and the same turns per channel (admission looks only
        # at each free channel's first turn: O(channels), not O(waiting turns)).
        self._waiting: dict[QueueTicket, None] = {}
        self._queues: dict[Hashable, deque[QueueTicket]] = {}
        self._running: dict[Hashable, TurnSlot] = {}
        self._user_history: dict[Hashable, deque[float]] = {}
        self._turn_ids = itertools.count(1)
        self._arrivals = itertools.count()
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        # The background lane: jobs by key, their slots waiting (in arrival order) and lent,
        # and the engine cancellations of slots players took back.
        self._jobs: dict[Hashable, asyncio.Task[None]] = {}
        self._background_waiting: dict[Hashable, asyncio.Future[TurnSlot]] = {}
        self._background_running: dict[Hashable, TurnSlot] = {}
        self._job_ids = itertools.count(1)
        self._chores: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ public

    def turn(
        self,
        *,
        channel_id: Hashable,
        user_id: Hashable,
        policy: BusyPolicy = "queue",
        on_queued: QueuedCallback | None = None,
        user_turns: int | None = None,
        charged: bool = False,
        yielding: bool = False,
    ) -> _TurnContext:
        """An async context manager that waits for admission and yields a TurnSlot.

        `user_turns` overrides the per-user limit for this turn (a channel's own setting);
        `charged` says the caller already counted the turn with `charge()`; a `yielding` turn
        gives way to every player's turn (see the module docstring).
        """
        return _TurnContext(
            self, channel_id, user_id, policy, on_queued, user_turns, charged, yielding
        )

    def charge(self, user_id: Hashable, user_turns: int | None = None) -> None:
        """Count one action against `user_id`'s rate limit, or raise `RateLimited`.

        Turns are counted when they are admitted; actions that generate nothing but still
        cost a Discord edit (browsing alternatives) are counted here, as are turns whose
        caller wants to refuse before it posts or stores anything."""
        self._check_rate(user_id, user_turns)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def is_busy(self, channel_id: Hashable) -> bool:
        return channel_id in self._running or channel_id in self._queues

    # ------------------------------------------------------------------ background lane

    def spawn(self, key: Hashable, work: Callable[[], Awaitable[None]]) -> bool:
        """Run `work()` as background work for `key`, tracked until it ends. False (nothing
        started) when work for `key` is still running, or after shutdown began. The work
        handles its own errors; one that escapes is logged."""
        if self._closing or key in self._jobs:
            return False

        async def tracked() -> None:
            try:
                await work()
            finally:
                # Here, not in a done callback: the key is free again the moment work ends.
                if self._jobs.get(key) is task:
                    del self._jobs[key]

        task = asyncio.get_running_loop().create_task(tracked(), name=f"background {key!r}")
        self._jobs[key] = task
        task.add_done_callback(_log_failure)
        return True

    def background(self, key: Hashable) -> _BackgroundContext:
        """An async context manager that waits for a background slot and yields it.

        It raises `TurnCancelled` when shutdown drops it while it waits (or work of `key`
        already has a slot), `EngineUnavailable` after shutdown began. See the module
        docstring for how players take it back.
        """
        return _BackgroundContext(self, key)

    def has_job(self, key: Hashable) -> bool:
        return key in self._jobs

    @property
    def closing(self) -> bool:
        """Shutdown began: no turn and no background work starts any more."""
        return self._closing

    @property
    def background_running(self) -> int:
        """Background slots lent now."""
        return len(self._background_running)

    @property
    def background_waiting(self) -> int:
        """Background work waiting for a slot."""
        return len(self._background_waiting)

    @property
    def background_jobs(self) -> int:
        """Background jobs started and not yet ended (waiting for a slot included)."""
        return len(self._jobs)

    async def background_idle(self) -> None:
        """Return once no background work runs (the work that starts meanwhile included)."""
        while self._jobs or self._chores:
            # wait(), not gather(): a caller that gives up leaves the work running.
            await asyncio.wait([*self._jobs.values(), *self._chores])

    async def cancel_channel(self, channel_id: Hashable, *, reason: str = "stopped") -> int:
        """Cancel the channel's running turn and drop its waiting ones; return how many."""
        count = self._drop_waiting(lambda w: w.channel_id == channel_id, reason)
        slot = self._running.get(channel_id)
        if slot is not None and not slot.cancel_reason:
            await slot._cancel(reason)
            count += 1
        return count

    def withdraw(self, ticket: QueueTicket, *, reason: str) -> bool:
        """Take one waiting turn out of the queue; False when it has already left it."""
        return self._drop_waiting(lambda waiting: waiting is ticket, reason) > 0

    async def cancel(self, slot: TurnSlot, *, reason: str) -> None:
        """Stop one running turn (not whatever else runs in its channel later)."""
        if self._running.get(slot.channel_id) is slot and not slot.cancel_reason:
            await slot._cancel(reason)

    async def shutdown(self, *, finish: bool) -> None:
        """Refuse new turns, drop waiting ones; finish or cancel running ones, then return.

        Background work is cancelled either way (its generation stops, so it stores nothing)
        and waited for: nothing of it runs once this returns."""
        self._closing = True
        self._drop_waiting(lambda w: True, "shutting down")
        for future in self._background_waiting.values():
            if not future.done():
                future.set_exception(TurnCancelled("shutting down"))
        self._background_waiting.clear()
        for slot in list(self._background_running.values()):
            await slot._cancel("shutting down")
        if not finish:
            for slot in list(self._running.values()):
                await slot._cancel("shutting down")
        await self._idle.wait()
        await self.background_idle()

    # ------------------------------------------------------------------ internals

    def _check_rate(self, user_id: Hashable, limit: int | None = None) -> None:
        if not self.rate_limited:
            return
        now = self.clock()
        horizon = now - self.rate_window_s
        self._forget_idle_users(horizon)
        # Re-inserted on every turn: the users seen least recently come first.
        history = self._user_history.pop(user_id, None) or deque()
        self._user_history[user_id] = history
        while history and history[0] <= horizon:
            history.popleft()
        if len(history) >= (limit if limit is not None else self.user_turns):
            retry_after = max(0.0, history[0] + self.rate_window_s - now)
            raise RateLimited(
                f"too many turns: try again in {retry_after:.0f} s",
                retry_after=round(retry_after, 1),
            )
        history.append(now)

    def _forget_idle_users(self, horizon: float) -> None:
        """Drop the users with no turn in the window (from the front: amortised O(1))."""
        while self._user_history:
            user_id, history = next(iter(self._user_history.items()))
            if history and history[-1] > horizon:
                return
            del self._user_history[user_id]

    async def _admit(
        self,
        channel_id: Hashable,
        user_id: Hashable,
        policy: BusyPolicy,
        on_queued: QueuedCallback | None,
        user_turns: int | None = None,
        charged: bool = False,
        yielding: bool = False,
    ) -> TurnSlot:
        if self._closing:
            raise EngineUnavailable("the bot is shutting down")
        if not charged:
            self._check_rate(user_id, user_turns)
        if policy == "restart":
            await self.cancel_channel(channel_id, reason="superseded by a newer message")
        future = asyncio.get_running_loop().create_future()
        arrived = self.clock()
        ticket = QueueTicket(self, channel_id, user_id, future, next(self._arrivals), yielding)
        self._waiting[ticket] = None
        queue = self._queues.setdefault(channel_id, deque())
        if yielding:
            queue.append(ticket)
        else:
            # A player's turn goes ahead of the yielding turns waiting in its channel, and
            # takes the channel from one running there.
            ahead = sum(1 for waiting in queue if not waiting.yielding)
            queue.insert(ahead, ticket)
            running = self._running.get(channel_id)
            if running is not None and running.yielding:
                self._preempt_turn(running)
        self._idle.clear()
        self._pump()
        if on_queued is not None and not ticket.future.done():
            on_queued(ticket)
        try:
            slot = await ticket.future
        except asyncio.CancelledError:
            if ticket in self._waiting:
                self._forget(ticket)
                self._pump()
            elif ticket.future.done() and not ticket.future.cancelled():
                # Admitted in the same instant the caller gave up: hand the place back.
                self._release(ticket.future.result())
            raise
        self.observer.queue_waited(self.clock() - arrived)
        return slot

    def _release(self, slot: TurnSlot) -> None:
        lent = self._background_running if slot.background else self._running
        if lent.get(slot.channel_id) is slot:
            del lent[slot.channel_id]
        self._pump()

    async def _admit_background(self, key: Hashable) -> TurnSlot:
        if self._closing:
            raise EngineUnavailable("the bot is shutting down")
        if key in self._background_waiting or key in self._background_running:
            raise TurnCancelled(f"background work {key!r} already has a slot")
        future: asyncio.Future[TurnSlot] = asyncio.get_running_loop().create_future()
        self._background_waiting[key] = future
        self._pump()
        try:
            return await future
        except asyncio.CancelledError:
            if self._background_waiting.get(key) is future:
                del self._background_waiting[key]
            elif future.done() and not future.cancelled() and future.exception() is None:
                self._release(future.result())
            raise

    def _preempt(self, slot: TurnSlot) -> None:
        """Take a background slot back for a player's turn: its request is cancelled."""
        del self._background_running[slot.channel_id]
        if not slot.cancel_reason:
            slot.cancel_reason = PREEMPTED
        if slot._request_id is not None:
            chore = asyncio.get_running_loop().create_task(self.engine.cancel(slot._request_id))
            self._chores.add(chore)
            chore.add_done_callback(self._chores.discard)
            chore.add_done_callback(_log_failure)

    def _preempt_turn(self, slot: TurnSlot) -> None:
        """Cancel a yielding turn for a player's: it keeps its channel until it ends (soon:
        its engine request is cancelled now)."""
        if slot.cancel_reason:
            return
        slot.cancel_reason = PREEMPTED
        if slot._request_id is not None:
            chore = asyncio.get_running_loop().create_task(self.engine.cancel(slot._request_id))
            self._chores.add(chore)
            chore.add_done_callback(self._chores.discard)
            chore.add_done_callback(_log_failure)

    def _make_room(self, players: int) -> None:
        """Cancel yielding turns until `players` slots will be given back (by the yielding
        turns already cancelled, or these)."""
        yielding = [slot for slot in self._running.values() if slot.yielding]
        leaving = sum(1 for slot in yielding if slot.cancel_reason)
        for slot in yielding:
            if leaving >= players:
                return
            if not slot.cancel_reason:
                self._preempt_turn(slot)
                leaving += 1

    def _lent(self) -> int:
        return len(self._running) + len(self._background_running)

    def _drop_waiting(self, predicate: Callable[[QueueTicket], bool], reason: str) -> int:
        dropped = [t for t in self._waiting if predicate(t)]
        for ticket in dropped:
            self._forget(ticket)
            if not ticket.future.done():
                ticket.future.set_exception(TurnCancelled(reason))
        if dropped:
            self._pump()
        return len(dropped)

    def _forget(self, ticket: QueueTicket) -> None:
        del self._waiting[ticket]
        queue = self._queues[ticket.channel_id]
        queue.remove(ticket)
        if not queue:
            del self._queues[ticket.channel_id]

    def _position_of(self, ticket: QueueTicket) -> int:
        return next((n for n, waiting in enumerate(self._waiting, 1) if waiting is ticket), 0)

    def _pump(self) -> None:
        """Admit what can run now: the longest-waiting turn among channels with nothing running
        (players' turns before yielding ones; taking a slot back from background work, or
        cancelling a yielding turn, when none is free), then background work while no turn
        waits."""
        while True:
            heads = [q[0] for channel, q in self._queues.items() if channel not in self._running]
            players_wait = any(not ticket.yielding for ticket in self._waiting)
            if players_wait:
                heads = [ticket for ticket in heads if not ticket.yielding]
            if not heads:
                break
            if self._lent() >= self.max_concurrent:
                if self._background_running:
                    self._preempt(next(iter(self._background_running.values())))
                else:
                    if players_wait:  # yielding turns give their slots back as they end
                        self._make_room(len(heads))
                    break
            ticket = min(heads, key=lambda t: t.arrival)
            self._forget(ticket)
            slot = TurnSlot(
                scheduler=self,
                channel_id=ticket.channel_id,
                user_id=ticket.user_id,
                turn_id=next(self._turn_ids),
                deadline=self.clock() + self.turn_timeout_s,
                yielding=ticket.yielding,
            )
            self._running[ticket.channel_id] = slot
            ticket.future.set_result(slot)
        while (
            self._background_waiting
            and not self._waiting
            and not self._closing
            and self._lent() < self.max_concurrent
        ):
            key = next(iter(self._background_waiting))
            future = self._background_waiting.pop(key)
            if future.done():
                continue
            slot = TurnSlot(
                scheduler=self,
                channel_id=key,
                user_id=None,
                turn_id=next(self._job_ids),
                deadline=self.clock() + self.turn_timeout_s,
                background=True,
            )
            self._background_running[key] = slot
            future.set_result(slot)
        if not self._running and not self._waiting:
            self._idle.set()
        self.observer.queue_changed(len(self._waiting))


def _log_failure(task: asyncio.Task[None]) -> None:
    """Log what a background task raised (it had nobody to raise it to)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())
