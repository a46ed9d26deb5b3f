"""The background loop shared by the scenes' search indexes: a scene's turns are worked through
in batches until none are left, with progress in the log for long catch-ups."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

#: Seconds between two progress lines of a long catch-up.
PROGRESS_EVERY_S = 10.0


async def drain_batches(
    session_id: int,
    batch: Callable[[int], Awaitable[int]],
    again: set[int],
    *,
    progress: bool,
    done_verb: str,
) -> int:
    """Run `batch(session_id)` until it finds nothing to do and nobody asked again (`again`
    holds the scenes whose turns changed meanwhile); how many turns it did in all. With
    `progress`, the log says how far it got ("recall: scene 3: 120 turns indexed so far")."""
    done, last_log = 0, time.monotonic()
    while True:
        again.discard(session_id)
        worked = await batch(session_id)
        done += worked
        if progress and time.monotonic() - last_log >= PROGRESS_EVERY_S:
            log.info("recall: scene %s: %d turns %s so far", session_id, done, done_verb)
            last_log = time.monotonic()
        if worked == 0 and session_id not in again:
            break
    if progress:
        log.info("recall: scene %s %s (%d turns)", session_id, done_verb, done)
    return done
