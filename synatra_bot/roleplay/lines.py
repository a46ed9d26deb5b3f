"""The players' lines this process has taken, by the front end's message id.

A gateway delivers an event twice now and then, and reading a channel back after a lost session
overlaps what came live: each line is taken once. An edit or a delete that comes while its line
is still being stored waits for that store, so it applies to the stored line; a deleted line
stops the replies still being written for it.

Only ids are remembered, a bounded number of them. A line this process cannot vouch for (sent
before it started, or so long ago that it forgot the ids of that time) is looked up among the
stored lines instead (`Lines.unsure`), so a restart that reads a channel back takes no line twice.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

#: Lines remembered (the newest): a gateway's two deliveries of one event come seconds apart,
#: and a line forgotten is looked up in the database instead (`Lines.unsure`).
RECENT_LINES = 5_000
#: How far the front end's clock (a line's `sent_at`) may be from this host's (hosts keep time
#: by NTP). Lines that come live within it of the start are looked up (one query per round for
#: all of them), so a long skew costs every line of a busy bot's first moments a database round
#: before its reply begins; lines read back from a channel's history are always looked up.
CLOCK_SKEW = timedelta(seconds=1)


class LineReply(Protocol):
    """A reply written for a line (`turns.Reply`)."""

    async def line_deleted(self) -> None: ...


@dataclass(eq=False)
class Line:
    """One taken line: whether it is still being stored, and the replies written for it."""

    message_id: int
    sent_at: datetime | None
    #: Deleted (or edited out of the story) by its player.
    gone: bool = False
    _store: asyncio.Future[Any] | None = field(default=None, repr=False)
    _settled: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    #: Held weakly: a reply that ended and was let go of is not kept alive by its line.
    _replies: weakref.WeakSet[LineReply] = field(default_factory=weakref.WeakSet, repr=False)

    @property
    def replies(self) -> list[LineReply]:
        """The replies written for it that still exist."""
        return list(self._replies)

    def storing(self, store: asyncio.Future[Any], replies: Sequence[LineReply]) -> None:
        """Its store began, and these replies answer it: it is settled once the store ends."""
        self._store = store
        self._replies.update(replies)
        store.add_done_callback(lambda _: self._settled.set())

    def settle_unstored(self) -> None:
        """Its handling ended without a store (no scene here, refused, a line already stored)."""
        if self._store is None:
            self._settled.set()

    async def settled(self) -> None:
        """Return once its store has ended, or once it is known none comes."""
        await self._settled.wait()


class Lines:
    """The newest `limit` lines taken, by message id."""

    def __init__(
        self, *, limit: int = RECENT_LINES, clock: Callable[[], datetime] | None = None
    ) -> None:
        self._limit = limit
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lines: OrderedDict[int, Line] = OrderedDict()
        #: Lines sent before this may have been taken where this process cannot tell: by the
        #: process before it, or long enough ago that their ids were forgotten.
        self._unsure_before = self._clock() + CLOCK_SKEW

    def take(self, message_id: int, sent_at: datetime | None) -> Line | None:
        """The line, taken now; None when this process took it already."""
        if message_id in self._lines:
            return None
        if len(self._lines) >= self._limit:
            _, forgotten = self._lines.popitem(last=False)
            horizon = (forgotten.sent_at or self._clock()) + CLOCK_SKEW
            self._unsure_before = max(self._unsure_before, horizon)
        line = Line(message_id, sent_at)
        self._lines[message_id] = line
        return line

    def get(self, message_id: int) -> Line | None:
        return self._lines.get(message_id)

    def unsure(self, line: Line) -> bool:
        """Whether `line` may have been taken without this process remembering it: the
        stored lines decide (a line without `sent_at` is always looked up)."""
        return line.sent_at is None or line.sent_at < self._unsure_before
