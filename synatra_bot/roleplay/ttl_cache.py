"""Values read from the database, kept in memory for a while.

Every message needs its channel's roleplay and its author's persona; reading them for each one
would be most of the database's work. A `TtlCache` keeps each value for `ttl_s` (bounding what a
change made by another process can leave stale) and drops entries at once when this process
changes them. A load that was in flight when they were dropped may have read the old value: it
is returned to its caller, who asked before the change, but not kept.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """At most `limit` entries (all dropped when full), each kept `ttl_s` seconds."""

    def __init__(
        self, *, ttl_s: float, limit: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._limit = limit
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        self._generation = 0  # bumped by every drop: loads begun before it are not kept

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The kept value, or `await load()` (kept unless dropped meanwhile)."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self._ttl_s:
            return entry[1]
        generation = self._generation
        value = await load()
        if generation == self._generation:
            self.put(key, value, stamp=now)
        return value

    def put(self, key: K, value: V, *, stamp: float | None = None) -> None:
        """Keep `value` (known to be current), as if loaded at `stamp` (now by default)."""
        if len(self._entries) >= self._limit and key not in self._entries:
            self._entries.clear()
        self._entries[key] = (self._clock() if stamp is None else stamp, value)

    def drop(self, key: K) -> None:
        self._entries.pop(key, None)
        self._generation += 1

    def clear(self) -> None:
        self._entries.clear()
        self._generation += 1
