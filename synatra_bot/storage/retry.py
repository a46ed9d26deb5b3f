"""Units of work tried again when the database failed them for a reason that passes.

Two failures pass. A connection the server dropped (PostgreSQL restarted; SQLAlchemy marks the
error `connection_invalidated` and its pool then opens fresh connections) is tried again once,
at once: a second drop means the server is still away. SQLite locked by another process past
its busy timeout is tried again with growing pauses for `Patience.locked_s`, and whoever waits
on the unit hears of it once (`on_wait`), after the first try. A unit of work is one
transaction, rolled back when it fails, so running it again stores its rows once. Anything
else fails at once; a unit that ran out of tries fails with StorageUnavailable.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from synatra_bot.errors import StorageUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: SQLite's answers for "another connection holds the lock" (the second within one process).
LOCKED_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


@dataclass(frozen=True, slots=True)
class Patience:
    """How long a unit of work keeps trying a locked database, and its pauses between tries
    (each try also waits the busy timeout inside SQLite)."""

    locked_s: float = 60.0
    first_pause_s: float = 0.05
    max_pause_s: float = 2.0


def dropped_connection(error: BaseException) -> bool:
    return isinstance(error, DBAPIError) and error.connection_invalidated


def locked(error: BaseException) -> bool:
    if not isinstance(error, DBAPIError):
        return False
    code = getattr(error.orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in LOCKED_CODES


async def retrying(
    work: Callable[[], Awaitable[T]],
    patience: Patience,
    *,
    on_wait: Callable[[], None] | None = None,
) -> T:
    """`await work()`, tried again as the module says."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    pause = patience.first_pause_s
    reconnected = told = False
    while True:
        try:
            return await work()
        except DBAPIError as error:
            if dropped_connection(error) and not reconnected:
                reconnected = True
                log.warning("the database connection was lost (%s): trying again", error.orig)
                continue
            if not locked(error):
                if dropped_connection(error):
                    raise StorageUnavailable(
                        "the database connection was lost twice in a row"
                    ) from error
                raise
            waited = loop.time() - started
            if waited + pause > patience.locked_s:
                log.warning("the database stayed locked for %.1f s: gave up", waited)
                raise StorageUnavailable(
                    f"the database stayed locked for {waited:.1f} s"
                ) from error
            if on_wait is not None and not told:
                told = True
                on_wait()
        await asyncio.sleep(pause)
        pause = min(pause * 2, patience.max_pause_s)
