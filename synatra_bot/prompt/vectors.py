"""Recall by meaning: one scene's turn vectors kept in memory, searched by cosine similarity,
and the search's ranking fused with the words' BM25 ranking (`prompt.terms.TurnIndex`).

A long scene is searched in two steps. Each vector's signs are kept beside it as bits (96
bytes for 768 dimensions, a 32nd of its floats); the query's signs are compared with every
turn's (a Hamming distance, weighted: see `VectorIndex._nearest_by_bits`), and only the turns
nearest by bits (a `RERANK_SHARE` of the scene, at least `RERANK_CANDIDATES`) are ranked by
their exact cosine. Two vectors' signs differ in each dimension with probability angle / pi,
so the distance estimates the angle and the turns nearest by cosine are among the nearest by
bits; scanning the bits reads 32 times fewer bytes than scanning the floats, which is what a
search of a long scene costs (it is bound by memory, not arithmetic). A scene whose vectors
take at most `EXACT_SCAN_BYTES` is searched exactly.
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
#: Scenes whose vectors take at most this many bytes are searched by every vector's exact
#: cosine (10,922 turns of 768 dimensions: about 1-2 ms here, as long as the bits' search).
EXACT_SCAN_BYTES = 32 * 2**20
#: The least number of turns nearest by their signs' Hamming distance ranked again by exact
#: cosine (with every turn as near as the last of them), and the share of a longer scene's
#: turns: the nearest by cosine fall at the same place of the bits' ranking whatever the
#: scene's length, so a share keeps the same recall at every length.
RERANK_CANDIDATES = 256
RERANK_SHARE = 1 / 20

Vector = npt.NDArray[np.float32]


def to_blob(vector: Sequence[float]) -> bytes:
    """A vector as stored: float32, little-endian."""
    return np.asarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes) -> Vector:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def sign_bits(vector: Vector) -> npt.NDArray[np.uint64]:
    """A vector's signs (1 where positive), packed into 64-bit words (the last one padded with
    zeros, which two padded codes share)."""
    words = -(-len(vector) // 64)
    packed = np.zeros(words * 8, dtype=np.uint8)
    bits = np.packbits(vector > 0)
    packed[: len(bits)] = bits
    return packed.view(np.uint64)


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
    """One scene's turn vectors, unit length, rows of one matrix: a search is one product, or
    for a long scene a scan of the vectors' sign bits and a product with the nearest of them.

    The bits are kept word by word (one row per 64 dimensions, one column per turn), so the
    distance to every turn adds up whole rows. Not thread-safe: one thread at a time adds,
    removes and searches (`roleplay.embedded_recall` does all three on its own worker)."""

    def __init__(self, *, exact_scan_bytes: int = EXACT_SCAN_BYTES) -> None:
        self.exact_scan_bytes = exact_scan_bytes
        self._matrix: Vector = np.zeros((0, 0), dtype=np.float32)
        self._ids: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._bits: npt.NDArray[np.uint64] = np.zeros((0, 0), dtype=np.uint64)
        #: Where a search by bits counts the differing bits (kept: a new one each search
        #: would cost the pages' first writes).
        self._scratch: npt.NDArray[np.uint64] = np.zeros((0, 0), dtype=np.uint64)
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
            self._bits = np.zeros((len(sign_bits(vector)), _FIRST_CAPACITY), dtype=np.uint64)
        row = self._rows.get(message_id)
        if row is None:
            if self._size == len(self._ids):
                self._matrix = np.concatenate([self._matrix, np.zeros_like(self._matrix)])
                self._ids = np.concatenate([self._ids, np.zeros_like(self._ids)])
                self._bits = np.concatenate([self._bits, np.zeros_like(self._bits)], axis=1)
            row, self._size = self._size, self._size + 1
            self._rows[message_id] = row
            self._ids[row] = message_id
        self._matrix[row] = vector / norm
        self._bits[:, row] = sign_bits(vector)
        return True

    def remove_from(self, first_id: int) -> None:
        """Forget every turn from `first_id` on (they changed: they are embedded again)."""
        keep = self._ids[: self._size] < first_id
        if keep.all():
            return
        kept = int(keep.sum())
        self._matrix[:kept] = self._matrix[: self._size][keep]
        self._ids[:kept] = self._ids[: self._size][keep]
        self._bits[:, :kept] = self._bits[:, : self._size][:, keep]
        self._size = kept
        self._rows = {int(i): row for row, i in enumerate(self._ids[:kept])}

    def search(
        self, query: Vector, *, before_id: int, limit: int, exact: bool = False
    ) -> list[Similar]:
        """The `limit` turns older than `before_id` nearest to `query`, nearest first (the
        newer turn first among equals). `exact` compares every turn's floats, whatever the
        scene's length."""
        norm = float(np.linalg.norm(query))
        if not self._size or limit <= 0 or len(query) != self.dimensions or not norm > 0:
            return []
        unit = query.astype(np.float32) / norm
        if exact or self._size * self.dimensions * 4 <= self.exact_scan_bytes:
            older = np.flatnonzero(self._ids[: self._size] < before_id)
            scores = _cosines(self._matrix[: self._size], unit)[older]
        else:
            count = max(limit, RERANK_CANDIDATES, int(self._size * RERANK_SHARE))
            older = self._nearest_by_bits(unit, before_id, count)
            scores = _cosines(self._matrix[older], unit)
        if not len(older):
            return []
        if len(older) > limit:
            top = np.argpartition(-scores, limit - 1)[:limit]
        else:
            top = np.arange(len(older))
        ranked = sorted(top, key=lambda i: (-scores[i], -self._ids[older[i]]))
        return [Similar(int(self._ids[older[i]]), float(scores[i])) for i in ranked]

    def _nearest_by_bits(self, unit: Vector, before_id: int, count: int) -> npt.NDArray[np.intp]:
        """The rows older than `before_id` whose signs differ least from `unit`'s: the `count`
        nearest, and every row as near as the last of them (so which rows they are does not
        depend on their order).

        A differing sign counts twice in the half of the dimensions where the query is
        largest: there it moves the cosine most (a fact planted at cosine 0.2 among 50,000
        random turns falls outside the nearest 5% by plain Hamming distance 2.5% of the time,
        with this weighting 1.25%)."""
        words = len(self._bits)
        if self._scratch.shape != (2 * words, self._bits.shape[1]):
            self._scratch = np.empty((2 * words, self._bits.shape[1]), dtype=np.uint64)
        differ, strong = self._scratch[:words, : self._size], self._scratch[words:, : self._size]
        np.bitwise_xor(self._bits[:, : self._size], sign_bits(unit)[:, None], out=differ)
        magnitude = np.abs(unit)
        np.bitwise_and(differ, sign_bits(magnitude > np.median(magnitude))[:, None], out=strong)
        counts = self._scratch[:, : self._size]
        np.bitwise_count(counts, out=counts)
        distance = counts.sum(axis=0)
        older = self._ids[: self._size] < before_id
        distance[~older] = np.iinfo(np.uint64).max
        reachable = int(older.sum())
        if reachable <= count:
            return np.flatnonzero(older)
        bound = np.partition(distance, count - 1)[count - 1]
        return np.flatnonzero(distance <= bound)


def _cosines(rows: Vector, unit: Vector) -> Vector:
    """Each row's product with `unit`, row by row on this thread: the same number for a row
    whichever rows are beside it, and no BLAS threads to wake (on a busy machine, waiting for
    them cost more than the product)."""
    products: Vector = np.einsum("ij,j->i", rows, unit)
    return products


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
