"""Small stand-ins shared by the tests: clocks and timers moved by hand, and a stored turn."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from synatra_bot.storage.records import MessageRecord


class FakeClock:
    """A monotonic clock the test moves itself: `clock.now += 10`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ManualTimer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualTimers:
    """Monotonic time and timers the test moves itself: `advance(seconds)` runs every timer
    that falls due meanwhile, in order, at its own time (`roleplay.initiative.Timers`)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._timers: list[ManualTimer] = []

    def monotonic(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> ManualTimer:
        timer = ManualTimer(self.now + delay, callback)
        self._timers.append(timer)
        return timer

    @property
    def pending(self) -> int:
        return sum(1 for timer in self._timers if not timer.cancelled)

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while True:
            due = [t for t in self._timers if not t.cancelled and t.when <= target]
            if not due:
                break
            timer = min(due, key=lambda t: t.when)
            self._timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback()
        self._timers = [t for t in self._timers if not t.cancelled]
        self.now = target


def stored_turn(
    message_id: int,
    *,
    session_id: int,
    content: str,
    role: str = "user",
    author_id: int | None = 1,
    display_name: str = "민수",
    token_count: int | None = None,
    discord_message_ids: Sequence[int] = (),
) -> MessageRecord:
    """A turn as the database hands it back: visible, chosen, no swipe group."""
    return MessageRecord(
        id=message_id,
        session_id=session_id,
        role=role,
        author_id=author_id,
        display_name=display_name,
        content=content,
        token_count=token_count,
        discord_message_id=discord_message_ids[0] if discord_message_ids else None,
        swipe_group=None,
        swipe_index=0,
        chosen=True,
        deleted=False,
        created_at=datetime.now(UTC),
        edited_at=None,
        discord_message_ids=tuple(discord_message_ids),
    )
