"""Recall by meaning: one scene's turn vectors kept in memory, searched by cosine similarity,
and the search's ranking fused with the words' BM25 ranking (`prompt.terms.TurnIndex`).

Fusion is by reciprocal rank (each list gives a turn 1 / (`RRF_K` + its rank)): the two
scores are on scales that cannot be compared, their ranks can. A turn both lists found comes
first; one that only shares words, or only meaning, still has its place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from synatra_bot.prompt.terms import Hit

#: The constant of reciprocal rank fusion (60, as its authors chose: a first place is worth
#: little more than a fifth).
RRF_K = 60
#: Turns the search by meaning ranks: fewer than by words, as the nearest turns are always
#: some turns, whether or not the message refers to any.
VECTOR_CANDIDATES = 4
#: Rows the matrix grows by when full (it doubles past this).
_FIRST_CAPACITY = 64

Vector = npt.NDArray[np.float32]


def to_blob(vector: Sequence[float]) -> bytes:
    """A vector as stored: float32, little-endian."""
    return np.asarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes) -> Vector:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


@dataclass(frozen=True)
class Similar:
    """A turn near the query: its id and the cosine similarity of their vectors."""

    message_id: int
    similarity: float


@dataclass(frozen=True)
class Fused:
    """A turn of the fused ranking: its id, fused score, and what each ranking said (no BM25
    score and no matched terms when only meaning found it; no similarity when only words)."""

    message_id: int
    score: float
    bm25: float
    matched: tuple[str, ...]
    similarity: float | None


class VectorIndex:
    """One scene's turn vectors, unit length, rows of one matrix: a search is one product.

    Not thread-safe: one thread at a time adds, removes and searches (`roleplay.embedded_recall`
    does all three on its own worker)."""

    def __init__(self) -> None:
        self._matrix: Vector = np.zeros((0, 0), dtype=np.float32)
        self._ids: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._rows: dict[int, int] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._rows

    @property
    def dimensions(self) -> int:
        return int(self._matrix.shape[1])

    def add(self, message_id: int, vector: Vector) -> bool:
        """Index a turn's vector (again, when it had one); False (left out) when it is not of
        the index's length or has no direction."""
        norm = float(np.linalg.norm(vector))
        if (self.dimensions and len(vector) != self.dimensions) or not norm > 0:
            return False
        if not self.dimensions:
            self._matrix = np.zeros((_FIRST_CAPACITY, len(vector)), dtype=np.float32)
            self._ids = np.zeros(_FIRST_CAPACITY, dtype=np.int64)
        row = self._rows.get(message_id)
        if row is None:
            if self._size == len(self._ids):
                self._matrix = np.concatenate([self._matrix, np.zeros_like(self._matrix)])
                self._ids = np.concatenate([self._ids, np.zeros_like(self._ids)])
            row, self._size = self._size, self._size + 1
            self._rows[message_id] = row
            self._ids[row] = message_id
        self._matrix[row] = vector / norm
        return True

    def remove_from(self, first_id: int) -> None:
        """Forget every turn from `first_id` on (they changed: they are embedded again)."""
        keep = self._ids[: self._size] < first_id
        if keep.all():
            return
        kept = int(keep.sum())
        self._matrix[:kept] = self._matrix[: self._size][keep]
        self._ids[:kept] = self._ids[: self._size][keep]
        self._size = kept
        self._rows = {int(i): row for row, i in enumerate(self._ids[:kept])}

    def search(self, query: Vector, *, before_id: int, limit: int) -> list[Similar]:
        """The `limit` turns older than `before_id` nearest to `query`, nearest first."""
        norm = float(np.linalg.norm(query))
        if not self._size or limit <= 0 or len(query) != self.dimensions or not norm > 0:
            return []
        similarity = self._matrix[: self._size] @ (query.astype(np.float32) / norm)
        older = np.flatnonzero(self._ids[: self._size] < before_id)
        if not len(older):
            return []
        scores = similarity[older]
        if len(older) > limit:
            top = np.argpartition(-scores, limit - 1)[:limit]
        else:
            top = np.arange(len(older))
        ranked = sorted(top, key=lambda i: (-scores[i], -self._ids[older[i]]))
        return [Similar(int(self._ids[older[i]]), float(scores[i])) for i in ranked]


def fuse(lexical: Sequence[Hit], similar: Sequence[Similar], *, limit: int) -> list[Fused]:
    """The `limit` best turns of both rankings by reciprocal rank, best first (ties: the turn
    whose words matched, whose why can be shown, then the newer turn)."""
    scores: dict[int, float] = {}
    for rank, hit in enumerate(lexical, 1):
        scores[hit.message_id] = scores.get(hit.message_id, 0.0) + 1 / (RRF_K + rank)
    for rank, near in enumerate(similar, 1):
        scores[near.message_id] = scores.get(near.message_id, 0.0) + 1 / (RRF_K + rank)
    hits = {hit.message_id: hit for hit in lexical}
    nearness = {near.message_id: near.similarity for near in similar}
    best = sorted(scores, key=lambda i: (-scores[i], i not in hits, -i))[:limit]
    return [
        Fused(
            i,
            scores[i],
            hits[i].score if i in hits else 0.0,
            hits[i].matched if i in hits else (),
            nearness.get(i),
        )
        for i in best
    ]
