"""Recall of old turns: every turn of a scene is searchable, and each prompt brings back the
few that the newest message refers to and the window no longer holds.

A turn is indexed after it is stored, in the background: its text is split into Korean
morphemes (`prompt.terms.KoreanTerms`) on this object's own worker thread and the terms are
stored (`storage.recall_terms`), so a restart keeps them. A scene is indexed once its prompts
first leave turns behind (until then nothing could be recalled); from then each stored turn
wakes its scene's indexing job. A change to stored turns (an edit, a delete, an undo, a
continued reply) drops the terms from that turn on and indexes them again; a turn that is no
longer shown (deleted, another swipe chosen) is never recalled, whatever its terms.

Searching ranks the scene's turns with BM25 in memory (`prompt.terms.TurnIndex`, read from the
stored terms once, for the scenes used most recently); the query is the newest messages'
terms. When the host configured an embeddings server (`roleplay.embedded_recall`), the turns
nearest in meaning are searched at the same time and both rankings fused by reciprocal rank
(`prompt.vectors.fuse`); without an answer in time the words' ranking is used alone.
Running scenes with many turns and none indexed yet (after an upgrade, or a branch's
copied past) are indexed in the background at start, their progress in the log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from synatra_bot.prompt.lru import Lru
from synatra_bot.prompt.recall import (
    CANDIDATES,
    RecallBlock,
    RecalledTurn,
    ranked_turns,
    recall_block,
)
from synatra_bot.prompt.terms import KoreanTerms, TurnIndex
from synatra_bot.prompt.vectors import VECTOR_CANDIDATES
from synatra_bot.roleplay.embedded_recall import TurnEmbeddings
from synatra_bot.roleplay.scene_batches import drain_batches
from synatra_bot.storage import recall_terms as store
from synatra_bot.storage.repository import Sessions

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Turns analysed and stored together: a search waits for at most one batch of the worker.
INDEX_BATCH = 32
#: Stored terms read at a time when a scene's index is built.
LOAD_PAGE = 2000
#: Scenes whose index is kept in memory.
SCENES_KEPT = 32
#: Running scenes at least this long are indexed in the background at start.
CATCH_UP_MIN_TURNS = 64


class TurnRecall:
    """Indexes the scenes' turns and finds the old ones a message recalls."""

    def __init__(
        self,
        sessions: Sessions,
        *,
        terms: KoreanTerms | None = None,
        embeddings: TurnEmbeddings | None = None,
    ) -> None:
        self.sessions = sessions
        self.terms = terms or KoreanTerms()
        #: Recall by meaning too, when the host configured an embeddings server.
        self.embeddings = embeddings
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="recall")
        self._indexes: Lru[int, TurnIndex] = Lru(SCENES_KEPT)
        #: Scene -> its indexing job while one runs.
        self._jobs: dict[int, asyncio.Task[None]] = {}
        #: Scenes a stored turn woke while their job ran: it goes round once more.
        self._again: set[int] = set()
        #: Scene -> how many times its stored turns changed (an analysis of older text is
        #: not stored).
        self._changes: dict[int, int] = {}
        self._writing = asyncio.Lock()
        self._catch_up: asyncio.Task[None] | None = None
        self._closed = False

    async def _off_loop(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, work)

    # --- what the core tells it ---------------------------------------------------------------

    def turn_stored(self, session_id: int) -> None:
        """A turn of the scene was stored: index it, if the scene is indexed at all."""
        if self._indexes.get(session_id) is not None or session_id in self._jobs:
            self._wake(session_id)
        if self.embeddings is not None:
            self.embeddings.turn_stored(session_id)

    async def turns_changed(self, session_id: int, oldest_id: int) -> None:
        """Turns of the scene from `oldest_id` on changed: index them again."""
        async with self._writing:
            self._changes[session_id] = self._changes.get(session_id, 0) + 1
            await store.forget_terms(self.sessions, session_id=session_id, from_id=oldest_id)
            index = self._indexes.get(session_id)
            if index is not None:
                index.remove_from(oldest_id)
        if self.embeddings is not None:
            await self.embeddings.turns_changed(session_id, oldest_id)
        self.turn_stored(session_id)

    # --- recalling ----------------------------------------------------------------------------

    async def recall(
        self,
        *,
        session_id: int,
        query: str,
        before_id: int,
        budget: int,
        count: Callable[[str], int],
    ) -> RecallBlock | None:
        """The block of the scene's turns older than `before_id` that `query` recalls, within
        `budget` tokens; None when none matches, or while the analyser is still loading (the
        scene's indexing loads it: no reply waits for that)."""
        if self._closed:
            return None
        index = self._indexes.get(session_id)
        if index is None:  # from now on each stored turn of the scene is indexed
            index = await self._load(session_id)
            self._wake(session_id)
        if not self.terms.loaded or budget <= 0:
            return None
        # The query's vector is asked for while its words are analysed.
        nearest = (
            None
            if self.embeddings is None
            else asyncio.ensure_future(
                self.embeddings.similar(
                    session_id=session_id,
                    query=query,
                    before_id=before_id,
                    limit=VECTOR_CANDIDATES,
                )
            )
        )
        try:
            query_terms = await self._off_loop(lambda: self.terms.terms(query))
            hits = index.search(query_terms, before_id=before_id, limit=CANDIDATES)
            similar = None if nearest is None else await nearest
        finally:
            if nearest is not None and not nearest.done():
                nearest.cancel()
        ranked = ranked_turns(hits, similar)
        if not ranked:
            return None
        shown = {
            turn.id: turn
            for turn in await store.shown_turns(
                self.sessions, message_ids=[hit.message_id for hit in ranked]
            )
        }
        turns = [
            RecalledTurn(
                hit.message_id,
                shown[hit.message_id].display_name,
                shown[hit.message_id].content,
                hit.matched,
                hit.bm25,
                hit.similarity,
            )
            for hit in ranked
            if hit.message_id in shown
        ]
        return recall_block(turns, budget=budget, count=count)

    async def _load(self, session_id: int) -> TurnIndex:
        """The scene's index from its stored terms, read a page at a time (the rows of a page
        are made on the event loop) and built on the worker thread."""
        index, after = TurnIndex(), 0
        while True:
            rows = await store.scene_terms(
                self.sessions, session_id=session_id, after_id=after, limit=LOAD_PAGE
            )
            if not rows:
                break
            await self._off_loop(functools.partial(_add_rows, index, rows))
            after = rows[-1][0]
        self._indexes.put(session_id, index)
        # Turns indexed since the last page went to no index: read them now it is in place.
        late = await store.scene_terms(self.sessions, session_id=session_id, after_id=after)
        _add_rows(index, late)
        return index

    # --- indexing -----------------------------------------------------------------------------

    def _wake(self, session_id: int) -> None:
        if self._closed:
            return
        if session_id in self._jobs:
            self._again.add(session_id)
            return
        task = asyncio.get_running_loop().create_task(self._index_scene(session_id))
        self._jobs[session_id] = task

    async def _index_scene(self, session_id: int, *, progress: bool = False) -> None:
        try:
            await drain_batches(
                session_id, self._index_batch, self._again, progress=progress, done_verb="indexed"
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the turns of scene %s were not indexed", session_id)
        finally:
            self._jobs.pop(session_id, None)

    async def _index_batch(self, session_id: int) -> int:
        """Index the scene's oldest turns without terms; how many were analysed."""
        changes = self._changes.get(session_id, 0)
        rows = await store.unindexed_turns(self.sessions, session_id=session_id, limit=INDEX_BATCH)
        if not rows:
            return 0
        analysed = await self._off_loop(lambda: [self.terms.terms(text) for _, text in rows])
        async with self._writing:
            if self._changes.get(session_id, 0) != changes:
                return len(rows)  # a turn changed meanwhile: read them again
            await store.store_terms(
                self.sessions,
                rows=[(i, " ".join(terms)) for (i, _), terms in zip(rows, analysed, strict=True)],
            )
            index = self._indexes.get(session_id)
            if index is not None:
                for (message_id, _), terms in zip(rows, analysed, strict=True):
                    index.add(message_id, terms)
        return len(rows)

    def start_catch_up(self) -> None:
        """Index the running scenes that have many turns without terms, in the background
        (and embed those without vectors)."""
        self._catch_up = asyncio.get_running_loop().create_task(self._run_catch_up())
        if self.embeddings is not None:
            self.embeddings.start_catch_up()

    async def _run_catch_up(self) -> None:
        try:
            scenes = await store.scenes_to_index(self.sessions, min_turns=CATCH_UP_MIN_TURNS)
        except Exception:
            log.exception("recall: the scenes to index could not be read")
            return
        if not scenes:
            return
        log.info("recall: indexing the turns of %d scenes in the background", len(scenes))
        for number, session_id in enumerate(scenes, 1):
            while session_id in self._jobs:
                await asyncio.shield(self._jobs[session_id])
            task = asyncio.get_running_loop().create_task(
                self._index_scene(session_id, progress=True)
            )
            self._jobs[session_id] = task
            await task
            log.info("recall: %d of %d scenes indexed", number, len(scenes))

    async def settled(self) -> None:
        """Wait until every indexing job has finished (for tests and shutdown)."""
        while self._jobs or (self._catch_up is not None and not self._catch_up.done()):
            waiting: list[asyncio.Task[None]] = list(self._jobs.values())
            if self._catch_up is not None and not self._catch_up.done():
                waiting.append(self._catch_up)
            await asyncio.gather(*waiting, return_exceptions=True)
        if self.embeddings is not None:
            await self.embeddings.settled()

    async def close(self) -> None:
        """Stop indexing (what is stored stays; the rest is indexed after the next start)."""
        self._closed = True
        tasks = [*self._jobs.values(), *([self._catch_up] if self._catch_up else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._worker.shutdown(wait=True, cancel_futures=True)
        if self.embeddings is not None:
            await self.embeddings.close()


def _add_rows(index: TurnIndex, rows: Sequence[tuple[int, str]]) -> None:
    for message_id, terms in rows:
        index.add(message_id, terms.split())
