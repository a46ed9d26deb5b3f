"""Each session's recent history, kept in memory by the process that serves its channel.

Every reply needs the same newest turns of its session. This keeps what the last read returned
and appends the turns this process stores, so a reply needs no read at all. Anything else that
changes a session's turns (an edit, a delete, undo, a swipe, a continuation) drops the session's
entry, and a read that raced a change is not kept (each session has a version). Entries also
expire after `ttl_s`, which bounds what a change made by another process can leave stale.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from synatra_bot.storage.records import MessageRecord


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
        max_sessions: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._entries: dict[int, _Entry] = {}
        # session -> the tick of its last change; sessions not listed changed at `_epoch`.
        self._versions: dict[int, int] = {}
        self._ticks = itertools.count(1)
        self._epoch = 0

    def version(self, session_id: int) -> int:
        """Take this before a read; `put` keeps the read only if nothing changed since."""
        return self._versions.get(session_id, self._epoch)

    def get(
        self, session_id: int, *, limit: int, since_id: int | None
    ) -> list[MessageRecord] | None:
        """What `recent_history(limit=limit, since_id=since_id)` would return now, if known."""
        entry = self._entries.get(session_id)
        if entry is None or entry.limit != limit:
            return None
        if self.clock() - entry.stamp >= self.ttl_s:
            del self._entries[session_id]
            return None
        if entry.since_id != since_id:
            narrowed = _narrowed(entry, since_id)
            if narrowed is None:
                return None
            entry.since_id, entry.records = since_id, narrowed
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
        if self.version(session_id) != version:
            return  # the session changed while this was read: the read may be stale
        if session_id not in self._entries and len(self._entries) >= self.max_sessions:
            self._forget_all()
            return
        self._entries[session_id] = _Entry(limit, since_id, list(records), self.clock())

    def appended(self, record: MessageRecord) -> None:
        """A new visible turn was stored: it joins the newest turns."""
        self._bump(record.session_id)
        entry = self._entries.get(record.session_id)
        if entry is None:
            return
        if any(m.id == record.id for m in entry.records):
            self.changed(record.session_id)  # not new after all: read again rather than guess
            return
        bisect.insort(entry.records, record, key=lambda m: m.id)
        if len(entry.records) > entry.limit:
            del entry.records[0]

    def changed(self, session_id: int) -> None:
        """The session's turns changed in some other way: read them again next time."""
        self._bump(session_id)
        self._entries.pop(session_id, None)

    def counted(self, session_id: int, counts: Mapping[int, int]) -> None:
        """Token counts were stored for these turns: keep them with the cached turns."""
        entry = self._entries.get(session_id)
        if entry is not None:
            entry.records = [
                replace(m, token_count=counts[m.id]) if m.id in counts else m for m in entry.records
            ]

    def _bump(self, session_id: int) -> None:
        if len(self._versions) >= 4 * self.max_sessions:
            self._forget_all()
        self._versions[session_id] = next(self._ticks)

    def _forget_all(self) -> None:
        # Every version handed out so far is older than the new epoch: no read in flight
        # can be kept by mistake.
        self._entries.clear()
        self._versions.clear()
        self._epoch = next(self._ticks)
