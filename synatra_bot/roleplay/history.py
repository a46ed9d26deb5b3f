"""Each session's recent history, kept in memory by the process that serves its channel.

Every reply needs the same newest turns of its session. This keeps what the last read returned
and appends the turns this process stores, so a reply needs no read at all. Anything else that
changes a session's turns (an edit, a delete, undo, a swipe, a continuation) drops the session's
entry. A read that raced an append gets the appended turn merged in (a busy channel always has
one in flight); a read that raced any other change is not kept. Entries also expire after
`ttl_s`, which bounds what a change made by another process can leave stale, and at most
`max_turns` turns are kept over all sessions (the sessions used least recently go first).
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from synatra_bot.storage.records import MessageRecord

#: Turns remembered per session to merge into a read that was in flight when they were stored.
APPEND_LOG = 64


@dataclass(slots=True)
class _Entry:
    limit: int
    since_id: int | None
    records: list[MessageRecord]
    stamp: float


def _narrowed(entry: _Entry, since_id: int | None) -> list[MessageRecord] | None:
    """The entry's records as a read from `since_id` would return them, when they tell.

    Prompt trimming moves its anchor forward: the turns from the anchor on, plus the one turn
    before it, are then already here.
    """
    if since_id is None:
        return None
    index = next((i for i, m in enumerate(entry.records) if m.id == since_id), None)
    if index is None:
        return None
    if index > 0:
        return entry.records[index - 1 :]
    # No turn before the anchor is cached: fine only when the entry holds the whole history.
    whole = entry.since_id is None and len(entry.records) < entry.limit
    return list(entry.records) if whole else None


class HistoryCache:
    """Recent-history reads per session: `get` or read and `put`; `appended` and `changed`."""

    def __init__(
        self,
        *,
        ttl_s: float,
        max_turns: int,
        max_sessions: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        #: Turns kept in all, over every session; the sessions used least recently go first.
        self.max_turns = max_turns
        #: Sessions whose recent changes are remembered (to judge reads in flight).
        self.max_sessions = max_sessions
        self.clock = clock
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._turns = 0
        # Every append and change takes the next tick. A read remembers the tick it started at:
        # turns appended after it are merged into it, any other change discards it.
        self._tick = 0
        self._epoch = 0  # the tick at which everything was last forgotten
        self._changed_at: dict[int, int] = {}
        self._appends: dict[int, deque[tuple[int, MessageRecord]]] = {}

    def version(self) -> int:
        """Take this before a read and hand it to `put`."""
        return self._tick

    def get(
        self, session_id: int, *, limit: int, since_id: int | None
    ) -> list[MessageRecord] | None:
        """What `recent_history(limit=limit, since_id=since_id)` would return now, if known."""
        entry = self._entries.get(session_id)
        if entry is None or entry.limit != limit:
            return None
        if self.clock() - entry.stamp >= self.ttl_s:
            self._drop(session_id)
            return None
        if entry.since_id != since_id:
            narrowed = _narrowed(entry, since_id)
            if narrowed is None:
                return None
            self._turns += len(narrowed) - len(entry.records)
            entry.since_id, entry.records = since_id, narrowed
        self._entries.move_to_end(session_id)
        return list(entry.records)

    def put(
        self,
        session_id: int,
        *,
        limit: int,
        since_id: int | None,
        records: list[MessageRecord],
        version: int,
    ) -> None:
        """Keep a read that started at `version`, with the turns appended since merged in."""
        if version < self._epoch or self._changed_at.get(session_id, 0) > version:
            return  # changed while it was read: the read may be stale
        log = self._appends.get(session_id, ())
        if log and len(log) == APPEND_LOG and log[0][0] > version:
            return  # more was appended meanwhile than the log remembers
        by_id = {m.id: m for m in records}
        for tick, record in log:
            if tick > version:
                by_id.setdefault(record.id, record)
        merged = [by_id[i] for i in sorted(by_id)][-limit:] if limit > 0 else []
        self._drop(session_id)
        self._entries[session_id] = _Entry(limit, since_id, merged, self.clock())
        self._turns += len(merged)
        while self._turns > self.max_turns and self._entries:
            self._drop(next(iter(self._entries)))

    def appended(self, record: MessageRecord) -> None:
        """A new visible turn was stored: it joins the newest turns."""
        session_id = record.session_id
        log = self._appends.get(session_id)
        if log is None:
            self._make_room()
            log = self._appends[session_id] = deque(maxlen=APPEND_LOG)
        log.append((self._next_tick(), record))
        entry = self._entries.get(session_id)
        if entry is None:
            return
        if any(m.id == record.id for m in entry.records):
            self.changed(session_id)  # not new after all: read again rather than guess
            return
        bisect.insort(entry.records, record, key=lambda m: m.id)
        self._turns += 1
        if len(entry.records) > entry.limit:
            del entry.records[0]
            self._turns -= 1

    def changed(self, session_id: int) -> None:
        """The session's turns changed in some other way: read them again next time."""
        if session_id not in self._changed_at:
            self._make_room()
        self._changed_at[session_id] = self._next_tick()
        self._drop(session_id)
        self._appends.pop(session_id, None)

    def counted(self, session_id: int, counts: Mapping[int, int]) -> None:
        """Token counts were stored for these turns: keep them with the cached turns."""
        entry = self._entries.get(session_id)
        if entry is not None:
            entry.records = [
                replace(m, token_count=counts[m.id]) if m.id in counts else m for m in entry.records
            ]

    @property
    def turns(self) -> int:
        """How many turns are kept, over all sessions."""
        return self._turns

    def _drop(self, session_id: int) -> None:
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self._turns -= len(entry.records)

    def _next_tick(self) -> int:
        self._tick += 1
        return self._tick

    def _make_room(self) -> None:
        if len(self._changed_at) + len(self._appends) >= 4 * self.max_sessions:
            self._forget_all()

    def _forget_all(self) -> None:
        # Every read in flight started before the new epoch, so none of them is kept.
        self._entries.clear()
        self._turns = 0
        self._changed_at.clear()
        self._appends.clear()
        self._epoch = self._next_tick()
