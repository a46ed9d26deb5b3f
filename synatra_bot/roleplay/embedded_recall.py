"""Recall by meaning: the scenes' turns embedded by the host's `/v1/embeddings` server, and the
old turns nearest to the newest message found for `roleplay.recall.TurnRecall` to fuse with the
words' ranking.

A turn is embedded after it is stored, in the background, in batches: no reply waits for the
server. Vectors are stored (`storage.recall_vectors`) under the model's name, so a restart keeps
them and another model embeds every turn again. As with the words' index, a scene is embedded
once its prompts first leave turns behind, running scenes with many turns and none embedded
(after the host configures a server) are embedded at start with their progress in the log, and
a change to stored turns drops their vectors from that turn on and embeds them again.

A prompt waits for its query's vector at most `query_timeout_s`: a server that is down, slow
or answers nonsense leaves that prompt to the words alone, with a log line. So does a scene
whose stored vectors are still being read (in the background, after a start).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from synatra_bot.engine.embeddings import EmbeddingsRefused, EmbeddingsUnavailable
from synatra_bot.prompt.lru import Lru
from synatra_bot.prompt.vectors import Similar, VectorIndex, from_blob, to_blob
from synatra_bot.roleplay.scene_batches import drain_batches
from synatra_bot.storage import recall_vectors as store
from synatra_bot.storage.repository import Sessions

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Turns embedded in one request.
EMBED_BATCH = 16
#: How long a batch of the background job may take before the server counts as down.
BATCH_TIMEOUT_S = 60.0
#: Stored vectors read at a time when a scene's index is built.
LOAD_PAGE = 1000
#: Scenes whose vectors are kept in memory.
SCENES_KEPT = 32
#: Running scenes at least this long are embedded in the background at start.
CATCH_UP_MIN_TURNS = 64


class Embedder(Protocol):
    """What embeds texts (`engine.embeddings.EmbeddingsClient`)."""

    model: str

    @property
    def shown_url(self) -> str: ...

    async def embed(self, texts: Sequence[str], *, timeout_s: float) -> list[list[float]]: ...

    async def close(self) -> None: ...


class TurnEmbeddings:
    """Embeds the scenes' turns and finds the old ones nearest to a message."""

    def __init__(self, sessions: Sessions, client: Embedder, *, query_timeout_s: float) -> None:
        self.sessions = sessions
        self.client = client
        self.query_timeout_s = query_timeout_s
        #: Every index is read and changed on this one thread, searches included.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="vectors")
        self._indexes: Lru[int, VectorIndex] = Lru(SCENES_KEPT)
        self._jobs: dict[int, asyncio.Task[None]] = {}
        #: Scene -> the reading of its stored vectors while one runs.
        self._loads: dict[int, asyncio.Task[None]] = {}
        self._again: set[int] = set()
        self._changes: dict[int, int] = {}
        self._writing = asyncio.Lock()
        self._catch_up: asyncio.Task[None] | None = None
        #: Whether the background job last found the server down (logged once until it is up).
        self._down = False
        self._closed = False

    async def _off_loop(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, work)

    # --- what the core tells it ---------------------------------------------------------------

    def turn_stored(self, session_id: int) -> None:
        """A turn of the scene was stored: embed it, if the scene is embedded at all."""
        if self._indexes.get(session_id) is not None or session_id in self._jobs:
            self._wake(session_id)

    async def turns_changed(self, session_id: int, oldest_id: int) -> None:
        """Turns of the scene from `oldest_id` on changed: embed them again."""
        async with self._writing:
            self._changes[session_id] = self._changes.get(session_id, 0) + 1
            await store.forget_vectors(self.sessions, session_id=session_id, from_id=oldest_id)
            index = self._indexes.get(session_id)
            if index is not None:
                await self._off_loop(functools.partial(index.remove_from, oldest_id))
        self.turn_stored(session_id)

    # --- searching ----------------------------------------------------------------------------

    async def similar(
        self, *, session_id: int, query: str, before_id: int, limit: int
    ) -> list[Similar] | None:
        """The scene's turns older than `before_id` nearest to `query`, nearest first; None
        when the server gave no vector in time (the prompt recalls by words only)."""
        if self._closed:
            return None
        index = self._indexes.get(session_id)
        if index is None:
            # A long scene's vectors take a while to read: no prompt waits for them. From now
            # on each stored turn of the scene is embedded.
            if session_id not in self._loads:
                task = asyncio.get_running_loop().create_task(self._load_and_wake(session_id))
                self._loads[session_id] = task
            log.info("recall: scene %s's vectors are being read: words only for now", session_id)
            return None
        try:
            async with asyncio.timeout(self.query_timeout_s):  # whatever the client does
                vectors = await self.client.embed([query], timeout_s=self.query_timeout_s)
        except (TimeoutError, EmbeddingsUnavailable) as error:
            why = error if str(error) else f"no answer within {self.query_timeout_s:g} s"
            log.warning(
                "recall: the embeddings server %s gave no vector (%s): "
                "this prompt recalls by words only",
                self.client.shown_url,
                why,
            )
            return None
        query_vector = from_blob(to_blob(vectors[0]))
        return await self._off_loop(
            lambda: index.search(query_vector, before_id=before_id, limit=limit)
        )

    async def _load_and_wake(self, session_id: int) -> None:
        try:
            await self._load(session_id)
            self._wake(session_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("recall: the vectors of scene %s could not be read", session_id)
        finally:
            self._loads.pop(session_id, None)

    async def _load(self, session_id: int) -> VectorIndex:
        """The scene's index from its stored vectors, a page at a time, built on the worker."""
        index, after = VectorIndex(), 0
        while True:
            rows = await store.scene_vectors(
                self.sessions,
                session_id=session_id,
                model=self.client.model,
                after_id=after,
                limit=LOAD_PAGE,
            )
            if not rows:
                break
            await self._off_loop(functools.partial(_add_rows, index, rows))
            after = rows[-1][0]
        self._indexes.put(session_id, index)
        late = await store.scene_vectors(
            self.sessions, session_id=session_id, model=self.client.model, after_id=after
        )
        await self._off_loop(functools.partial(_add_rows, index, late))
        return index

    # --- embedding ----------------------------------------------------------------------------

    def _wake(self, session_id: int) -> None:
        if self._closed:
            return
        if session_id in self._jobs:
            self._again.add(session_id)
            return
        task = asyncio.get_running_loop().create_task(self._embed_scene(session_id))
        self._jobs[session_id] = task

    async def _embed_scene(self, session_id: int, *, progress: bool = False) -> None:
        try:
            await drain_batches(
                session_id, self._embed_batch, self._again, progress=progress, done_verb="embedded"
            )
            if self._down:
                self._down = False
                log.info("recall: the embeddings server %s answers again", self.client.shown_url)
        except EmbeddingsUnavailable as error:
            if not self._down:
                self._down = True
                log.warning(
                    "recall: the embeddings server %s gave no vectors (%s): the turns are "
                    "embedded once it answers again",
                    self.client.shown_url,
                    error,
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the turns of scene %s were not embedded", session_id)
        finally:
            self._jobs.pop(session_id, None)

    async def _embed_batch(self, session_id: int) -> int:
        """Embed the scene's oldest turns without a vector; how many were embedded."""
        changes = self._changes.get(session_id, 0)
        rows = await store.unembedded_turns(
            self.sessions, session_id=session_id, model=self.client.model, limit=EMBED_BATCH
        )
        if not rows:
            return 0
        blobs = await self._embedded(rows)
        async with self._writing:
            if self._changes.get(session_id, 0) != changes:
                return len(rows)  # a turn changed meanwhile: read them again
            stored = [(i, blob) for (i, _), blob in zip(rows, blobs, strict=True)]
            await store.store_vectors(self.sessions, model=self.client.model, rows=stored)
            index = self._indexes.get(session_id)
            if index is not None:
                await self._off_loop(functools.partial(_add_rows, index, stored))
        return len(rows)

    async def _embedded(self, rows: Sequence[tuple[int, str]]) -> list[bytes]:
        """Each turn's vector as stored. A batch the server refuses is sent a turn at a time;
        a turn it refuses alone gets an empty vector (never recalled, never sent again)."""
        texts = [text for _, text in rows]
        try:
            vectors = await self.client.embed(texts, timeout_s=BATCH_TIMEOUT_S)
            return await self._off_loop(lambda: [to_blob(vector) for vector in vectors])
        except EmbeddingsRefused:
            if len(rows) == 1:
                log.warning("recall: the embeddings server refused turn %s", rows[0][0])
                return [b""]
        blobs: list[bytes] = []
        for row in rows:
            blobs += await self._embedded([row])
        return blobs

    def start_catch_up(self) -> None:
        """Embed the running scenes that have many turns without vectors, in the background."""
        self._catch_up = asyncio.get_running_loop().create_task(self._run_catch_up())

    async def _run_catch_up(self) -> None:
        try:
            scenes = await store.scenes_to_embed(
                self.sessions, model=self.client.model, min_turns=CATCH_UP_MIN_TURNS
            )
        except Exception:
            log.exception("recall: the scenes to embed could not be read")
            return
        if not scenes:
            return
        log.info("recall: embedding the turns of %d scenes in the background", len(scenes))
        for number, session_id in enumerate(scenes, 1):
            while session_id in self._jobs:
                await asyncio.shield(self._jobs[session_id])
            task = asyncio.get_running_loop().create_task(
                self._embed_scene(session_id, progress=True)
            )
            self._jobs[session_id] = task
            await task
            if self._down:  # logged: each scene is embedded once its prompts recall again
                return
            log.info("recall: %d of %d scenes embedded", number, len(scenes))

    async def settled(self) -> None:
        """Wait until every embedding job has finished (for tests and shutdown)."""
        while (
            self._jobs or self._loads or (self._catch_up is not None and not self._catch_up.done())
        ):
            waiting: list[asyncio.Task[None]] = [*self._jobs.values(), *self._loads.values()]
            if self._catch_up is not None and not self._catch_up.done():
                waiting.append(self._catch_up)
            await asyncio.gather(*waiting, return_exceptions=True)

    async def close(self) -> None:
        """Stop embedding (what is stored stays) and close the server's connections."""
        self._closed = True
        tasks = [
            *self._jobs.values(),
            *self._loads.values(),
            *([self._catch_up] if self._catch_up else []),
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.close()
        self._worker.shutdown(wait=True, cancel_futures=True)


def _add_rows(index: VectorIndex, rows: Sequence[tuple[int, bytes]]) -> None:
    for message_id, blob in rows:
        index.add(message_id, from_blob(blob))
