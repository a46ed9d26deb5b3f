"""Group commit for new turns: turns stored at the same moment share one transaction.

Every message the bot answers stores two turns (the player's and the reply). Alone, each is a
transaction of its own, and with SQLite through aiosqlite a transaction costs about a dozen
hand-offs to the database thread, which is most of the bot's CPU per message. `TurnWriter.add`
queues the turn; one flush at a time writes everything queued so far with `add_messages`. An
idle bot writes each turn at once (a batch of one); a busy bot's batches grow with the load,
so its cost per turn falls as the load rises.

If a batch fails, its turns are written one by one, so one bad turn (its session deleted, say)
fails alone and every caller hears about its own turn only.
"""

from __future__ import annotations

import asyncio
import logging

from synatra_bot.storage.records import MessageRecord
from synatra_bot.storage.repository import NewMessage, Sessions, add_messages

log = logging.getLogger(__name__)

#: Turns written per transaction at most (a bound on one flush's time, not a tuning knob).
MAX_BATCH = 256


class TurnWriter:
    """Queue turns with `add`; they are written in order, a batch per transaction."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self._queued: list[tuple[NewMessage, asyncio.Future[MessageRecord]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def add(self, turn: NewMessage) -> MessageRecord:
        """Store `turn` and return its record once it is committed."""
        future: asyncio.Future[MessageRecord] = asyncio.get_running_loop().create_future()
        self._queued.append((turn, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        # The write goes on if this caller is cancelled: others share its transaction.
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._queued:
            batch, self._queued = self._queued[:MAX_BATCH], self._queued[MAX_BATCH:]
            try:
                await self._write(batch)
            except BaseException:
                # Cancelled (the loop is closing): no caller may wait for ever.
                for _, future in batch + self._queued:
                    future.cancel()
                self._queued = []
                raise

    async def _write(self, batch: list[tuple[NewMessage, asyncio.Future[MessageRecord]]]) -> None:
        try:
            records = await add_messages(self.sessions, [turn for turn, _ in batch])
        except Exception as error:
            if len(batch) == 1:
                _settle(batch[0][1], error=error)
                return
            log.warning("%d turns failed together (%s); writing them one by one", len(batch), error)
            for item in batch:
                await self._write([item])
            return
        for (_, future), record in zip(batch, records, strict=True):
            _settle(future, record=record)


def _settle(
    future: asyncio.Future[MessageRecord],
    *,
    record: MessageRecord | None = None,
    error: BaseException | None = None,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert record is not None
        future.set_result(record)
