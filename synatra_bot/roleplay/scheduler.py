"""Fair admission of reply turns in front of an engine.

One reply is in flight per channel; a global cap bounds the replies generating at once; each
user may start `user_turns` turns per `rate_window_s`. Waiting turns are admitted first come,
first served, skipping turns whose channel is busy. A turn that has to wait is handed its
`QueueTicket` once through `on_queued(ticket)`; `ticket.position` (1 = next among all waiting
turns, 0 once admitted or dropped) is computed when read, so a long queue costs nothing until
someone looks at it.

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
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Hashable, Sequence
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

BusyPolicy = Literal["queue", "restart"]
QueuedCallback = Callable[["QueueTicket"], object]


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
        request_id = f"turn-{self.turn_id}-{next(self._requests)}"
        self._request_id = request_id
        self.outcome = TurnOutcome.PENDING
        clock = self.scheduler.clock
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
                self.text += delta
                yield delta
        except GenerationInterrupted:
            if self.cancel_reason:
                self.outcome = TurnOutcome.CANCELLED
                return
            self.outcome = TurnOutcome.FAILED
            raise
        except EngineError:
            self.outcome = TurnOutcome.FAILED
            raise
        except (GeneratorExit, asyncio.CancelledError):
            # The caller stopped listening: the reply is not complete.
            self.outcome = TurnOutcome.CANCELLED
            raise
        finally:
            timer.cancel()
            self._request_id = None
            close = getattr(deltas, "aclose", None)
            if close is not None:
                await close()
        self.outcome = TurnOutcome.CANCELLED if self.cancel_reason else TurnOutcome.FINISHED

    async def _cancel(self, reason: str) -> None:
        if not self.cancel_reason:
            self.cancel_reason = reason
        if self._request_id is not None:
            await self.scheduler.engine.cancel(self._request_id)


class _TurnContext:
    def __init__(
        self,
        scheduler: Scheduler,
        channel_id: Hashable,
        user_id: Hashable,
        policy: BusyPolicy,
        on_queued: QueuedCallback | None,
        user_turns: int | None = None,
        charged: bool = False,
    ) -> None:
        self._scheduler = scheduler
        self._charged = charged
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
        )
        return self._slot

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
                self._scheduler._release(slot)


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.engine = engine
        self.max_concurrent = max_concurrent
        self.turn_timeout_s = turn_timeout_s
        self.user_turns = user_turns
        self.rate_window_s = rate_window_s
        self.clock = clock
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
    ) -> _TurnContext:
        """An async context manager that waits for admission and yields a TurnSlot.

        `user_turns` overrides the per-user limit for this turn (a channel's own setting);
        `charged` says the caller already counted the turn with `charge()`.
        """
        return _TurnContext(self, channel_id, user_id, policy, on_queued, user_turns, charged)

    def charge(self, user_id: Hashable, user_turns: int | None = None) -> None:
        """Count one action against `user_id`'s rate limit, or raise `RateLimited`.

        Turns are counted when they are admitted; actions that generate nothing but still
        cost a Discord edit (browsing alternatives) are counted here, as are turns whose
        caller wants to refuse before it posts or stores anything."""
        self._check_rate(user_id, user_turns)

    def turn_user(self, channel_id: Hashable) -> Hashable | None:
        """Whose turn the channel's running reply answers (None when nothing runs)."""
        slot = self._running.get(channel_id)
        return slot.user_id if slot is not None else None

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def is_busy(self, channel_id: Hashable) -> bool:
        return channel_id in self._running or channel_id in self._queues

    async def cancel_channel(self, channel_id: Hashable, *, reason: str = "stopped") -> int:
        """Cancel the channel's running turn and drop its waiting ones; return how many."""
        count = self._drop_waiting(lambda w: w.channel_id == channel_id, reason)
        slot = self._running.get(channel_id)
        if slot is not None and not slot.cancel_reason:
            await slot._cancel(reason)
            count += 1
        return count

    async def shutdown(self, *, finish: bool) -> None:
        """Refuse new turns, drop waiting ones; finish or cancel running ones, then return."""
        self._closing = True
        self._drop_waiting(lambda w: True, "shutting down")
        if not finish:
            for slot in list(self._running.values()):
                await slot._cancel("shutting down")
        await self._idle.wait()

    # ------------------------------------------------------------------ internals

    def _check_rate(self, user_id: Hashable, limit: int | None = None) -> None:
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
    ) -> TurnSlot:
        if self._closing:
            raise EngineUnavailable("the bot is shutting down")
        if not charged:
            self._check_rate(user_id, user_turns)
        if policy == "restart":
            await self.cancel_channel(channel_id, reason="superseded by a newer message")
        future = asyncio.get_running_loop().create_future()
        ticket = QueueTicket(self, channel_id, user_id, future, next(self._arrivals))
        self._waiting[ticket] = None
        self._queues.setdefault(channel_id, deque()).append(ticket)
        self._idle.clear()
        self._pump()
        if on_queued is not None and not ticket.future.done():
            on_queued(ticket)
        try:
            return await ticket.future
        except asyncio.CancelledError:
            if ticket in self._waiting:
                self._forget(ticket)
                self._pump()
            elif ticket.future.done() and not ticket.future.cancelled():
                # Admitted in the same instant the caller gave up: hand the place back.
                self._release(ticket.future.result())
            raise

    def _release(self, slot: TurnSlot) -> None:
        if self._running.get(slot.channel_id) is slot:
            del self._running[slot.channel_id]
        self._pump()

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
        """Admit what can run now: the longest-waiting turn among channels with nothing running."""
        while len(self._running) < self.max_concurrent:
            heads = [q[0] for channel, q in self._queues.items() if channel not in self._running]
            if not heads:
                break
            ticket = min(heads, key=lambda t: t.arrival)
            self._forget(ticket)
            slot = TurnSlot(
                scheduler=self,
                channel_id=ticket.channel_id,
                user_id=ticket.user_id,
                turn_id=next(self._turn_ids),
                deadline=self.clock() + self.turn_timeout_s,
            )
            self._running[ticket.channel_id] = slot
            ticket.future.set_result(slot)
        if not self._running and not self._waiting:
            self._idle.set()
