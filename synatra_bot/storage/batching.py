"""Group commit for the hot paths: calls made at the same moment share one database round.

Every message the bot answers stores two turns (the player's and the reply) and, the first time
a member speaks, reads their persona. Alone, each is a transaction of its own, and a
transaction's fixed cost (SQLAlchemy's work, the hand-offs to the database thread) is most of
what storing a turn costs. A `Batcher` queues the call; one flush at a time hands everything
queued so far to a function that does it in one transaction, and with `every` set, rounds start
at most that often. An idle bot runs each call at once (a batch of one); a busy bot's batches
grow with the load, so its cost per call falls as the load rises.

If a batch breaks a constraint, its items are run one by one, so one bad item (a turn whose
session is gone, say) fails alone. Any other failure (the database locked past its busy
timeout, a dropped connection, a disk error) fails the whole batch at once: retrying item by
item would only wait that long again for each. Callers that try again (`storage.retry`)
submit their item anew, and the retries of one failed batch meet in the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from sqlalchemy.exc import IntegrityError

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Items handed over per round at most (a bound on one round's time, not a tuning knob).
MAX_BATCH = 256


class Batcher(Generic[Item, Result]):
    """`await submit(item)`: items submitted together go to `run` together, in order.

    `run(items)` must return one result per item, in the same order.
    """

    def __init__(
        self,
        run: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        *,
        every: float = 0.0,
    ) -> None:
        self._run = run
        self._every = every
        self._next_round = 0.0
        self._queued: list[tuple[Item, asyncio.Future[Result]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queued.append((item, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        # The work goes on if this caller is cancelled: others share its round.
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queued:
            wait = self._next_round - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # busy: the round fills up meanwhile
            self._next_round = loop.time() + self._every
            batch, self._queued = self._queued[:MAX_BATCH], self._queued[MAX_BATCH:]
            try:
                await self._run_batch(batch)
            except BaseException:
                # Cancelled (the loop is closing): no caller may wait for ever.
                for _, future in batch + self._queued:
                    future.cancel()
                self._queued = []
                raise

    async def _run_batch(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except IntegrityError as error:
            if len(batch) == 1:
                _settle(batch[0][1], error=error)
                return
            log.warning("%d calls failed together (%s); trying them one by one", len(batch), error)
            for single in batch:
                await self._run_batch([single])
            return
        except Exception as error:
            for _, future in batch:
                _settle(future, error=error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result=result)


def _settle(
    future: asyncio.Future[Result],
    *,
    result: Result | None = None,
    error: BaseException | None = None,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
