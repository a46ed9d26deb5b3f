"""The batched static-cache lane: a handful of replies decoded together, one forward per step.

Why it exists: with sdpa attention, transformers' continuous batching packs the whole batch into
one masked sequence every step, so a step costs (batch x context) on the host (it copies the
gathered KV cache into the packed sequence, builds index lists and a dense mask) and eight
streams decode no faster in total than one. This lane keeps each reply's keys and values in its
own row of a preallocated cache and never moves them while the reply decodes:

- a reply that joins is prefilled on its own (the same batch-1 forward `generate()` runs), and
  its keys and values are copied into a free row once;
- each step decodes every row in one forward: the new token of row `r` is written at that row's
  own position, and a boolean mask per row (`[rows, 1, 1, length]`) hides the positions past
  it, so rows of different lengths share the step; sdpa attends on the key/value heads without
  repeating them (one query token per row);
- rows stay packed at the front (`0..n-1`): when a reply ends, the last row's cache moves into
  its place (its own cache moves to the last row's, to be kept: see below), so a step reads
  views of the cache, never a gather;
- replies join and leave between steps; only each step's new token is handed to its reply;
- a row whose reply ended keeps its keys and values (and the tokens they stand for) while no
  reply needs the row: a joining reply whose prompt starts with at least `min_reuse` of those
  tokens (a channel's next prompt is its last one plus the new turn) is prefilled on top of
  them, only past the common prefix, straight into that row. A joining reply takes a free row
  first, then the least recently kept one. A kept row never sits among the decoding rows (a
  departing row swaps places with the last decoding one), so a step never reads it. With
  `reuse_prefixes` off, nothing is kept and every prompt is prefilled whole.

Sampling is per row with `pick_token` (top-k through `torch.topk`, top-p within it). The lane
serves only what continuous batching would (temperature, top-k, top-p; no penalty or seed) and
needs an attention that takes a 4D mask (sdpa). A step or prefill that raises fails the replies
the lane holds (and those joining) and empties it, kept rows included (a prefill that raised may
have written part of one); the next reply starts afresh.

The cache grows with use (its length doubles, up to the context) on the CPU, and is sized for
the whole context at once on a GPU, so a cache sized from free memory afterwards fits beside it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from synatra_bot.engine.samplers import pick_token

log = logging.getLogger(__name__)

#: The cache's length grows in multiples of this many positions.
CACHE_GRANULE = 256
#: The shortest common prefix a joining reply reuses from a kept row: a short shared start (a
#: chat template's opening) saves too little prefill to be worth moving a kept row for.
MIN_REUSED_PREFIX = 64


@dataclass
class LaneJob:
    """One reply for the lane: its prompt, budget and sampling, and how to hand tokens back."""

    request_id: str
    prompt: list[int]
    max_new_tokens: int
    stop_ids: frozenset[int]
    temperature: float
    top_k: int
    top_p: float
    #: Called on the lane's thread with (new ids, finished).
    deliver: Callable[[list[int], bool], None]
    #: Called on the lane's thread when the lane failed while holding the job.
    fail: Callable[[], None]
    cancelled: threading.Event


@dataclass
class _Row:
    job: LaneJob
    #: Tokens in the cache so far; the next token is written at this position.
    length: int
    last_token: int
    #: The prompt and the tokens generated so far: the first `length` are in the cache.
    tokens: list[int]
    generated: int = 0
    done: bool = False


@dataclass
class _Kept:
    """A row whose reply ended: the tokens its cache holds, and when it was last kept."""

    tokens: list[int]
    stamp: int


def common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    """How many tokens `first` and `second` share from their start."""
    count = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        count += 1
    return count


@dataclass
class _State:
    rows: list[_Row] = field(default_factory=list)
    joining: collections.deque[LaneJob] = field(default_factory=collections.deque)
    #: Rows taken, the joining included: at most `slots`.
    taken: int = 0
    closing: bool = False


class _RowCache:
    """What a decode step's forward sees as its cache: each row's new key and value go to that
    row's own position, and the rows' whole cache (up to `length`) is read back as a view."""

    def __init__(
        self,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        positions: torch.Tensor,
        length: int,
    ) -> None:
        self.keys, self.values = keys, values
        self.rows = torch.arange(positions.shape[0], device=positions.device)
        self.positions = positions
        self.length = length

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[self.rows, :, self.positions] = key_states[:, :, 0]
        values[self.rows, :, self.positions] = value_states[:, :, 0]
        n = self.rows.shape[0]
        return keys[:n, :, : self.length], values[:n, :, : self.length]


class _PrefillCache:
    """What a prefill on top of a kept prefix sees as its cache: the new keys and values go to
    positions `start..end` of row `row`, and that row's cache up to `end` is read back."""

    def __init__(
        self, keys: list[torch.Tensor], values: list[torch.Tensor], row: int, start: int, end: int
    ) -> None:
        self.keys, self.values = keys, values
        self.row, self.start, self.end = row, start, end

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        row = self.row
        keys[row, :, self.start : self.end] = key_states[0]
        values[row, :, self.start : self.end] = value_states[0]
        return keys[row : row + 1, :, : self.end], values[row : row + 1, :, : self.end]


class BatchedLane:
    """Up to `slots` replies decoded together on one worker thread (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        *,
        slots: int,
        context: int,
        on_failure: Callable[[], None] = lambda: None,
        reuse_prefixes: bool = True,
        min_reuse: int = MIN_REUSED_PREFIX,
    ) -> None:
        self.model = model
        self.slots = slots
        self.context = context
        self.reuse_prefixes = reuse_prefixes
        self.min_reuse = max(min_reuse, 1)
        self._on_failure = on_failure
        config = model.config
        self._layers = int(config.num_hidden_layers)
        self._kv_heads = int(
            getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        )
        self._head_dim = int(
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        self._window: int | None = getattr(config, "sliding_window", None)
        self._device = model.device
        self._dtype = model.dtype
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._capacity = 0
        self._state = _State()
        #: Rows kept after their reply ended, by row (the worker's alone).
        self._kept: dict[int, _Kept] = {}
        self._clock = 0
        #: Prompt tokens prefilled and taken from kept rows, since the lane started.
        self.prefilled_tokens = 0
        self.reused_tokens = 0
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="synatra-batched-lane", daemon=True)
        if self._device.type == "cuda":
            self._grow(context)
        self._thread.start()

    # ------------------------------------------------------------------ the event loop's side

    def try_submit(self, job: LaneJob) -> bool:
        """Give the lane `job` if a row is free (False: it is full, serve the job elsewhere)."""
        with self._wake:
            state = self._state
            if state.closing or state.taken >= self.slots:
                return False
            state.taken += 1
            state.joining.append(job)
            self._wake.notify()
            return True

    def busy_request_ids(self) -> set[str]:
        """The replies the lane holds, decoding or about to join."""
        with self._wake:
            state = self._state
            return {row.job.request_id for row in state.rows} | {
                job.request_id for job in state.joining
            }

    def close(self) -> None:
        """Stop the worker (the replies it held are the engine's to end) and free the cache."""
        with self._wake:
            self._state.closing = True
            self._wake.notify()
        self._thread.join()
        self._kept.clear()
        self._keys, self._values, self._capacity = [], [], 0

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        # A new thread's OpenMP pool starts at its default size, not at what the process set
        # with torch.set_num_threads: apply that here, or a step oversubscribes the cores
        # (3x slower matmuls measured with one torch thread on 2 shared cores).
        torch.set_num_threads(torch.get_num_threads())
        with torch.inference_mode():
            while True:
                joining = self._next_work()
                if joining is None:
                    return
                try:
                    for job in joining:
                        self._join(job)
                    self._drop_finished()
                    if self._state.rows:
                        self._step()
                        self._drop_finished()
                except Exception:
                    log.exception("the batched lane's generation step failed")
                    self._fail_all(joining)

    def _next_work(self) -> list[LaneJob] | None:
        """The jobs that join before the next step; None when the lane closes. Waits while
        there is nothing to do."""
        with self._wake:
            state = self._state
            while not state.closing and not state.rows and not state.joining:
                self._wake.wait()
            if state.closing:
                return None
            joining = list(state.joining)
            state.joining.clear()
            return joining

    def _join(self, job: LaneJob) -> None:
        """Prefill `job` (on top of a kept row's prefix where one matches, else on its own),
        hand back its first token, and give it a row."""
        if job.cancelled.is_set():
            self._release(1)
            return
        index = len(self._state.rows)
        reused = self._claim(index, job.prompt)
        length = len(job.prompt)
        logits = (
            self._prefill_rest(index, job.prompt, reused)
            if reused
            else self._prefill_whole(index, job.prompt)
        )
        self.prefilled_tokens += length - reused
        self.reused_tokens += reused
        token = self._pick(logits, job)
        row = _Row(job, length=length, last_token=token, tokens=[*job.prompt, token], generated=1)
        self._finish_if_done(row, token)
        job.deliver([token], row.done)
        if row.done:
            self._keep(index, row)
            self._release(1)
            return
        with self._wake:  # busy_request_ids reads the rows from another thread
            self._state.rows.append(row)

    def _prefill_whole(self, index: int, prompt: list[int]) -> torch.Tensor:
        """The same batch-1 forward `generate()` runs; its keys and values go to row `index`.
        Returns the last position's logits."""
        from transformers import DynamicCache

        ids = torch.tensor([prompt], device=self._device)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        length = len(prompt)
        self._grow(length + 1)
        for layer in range(self._layers):
            layer_cache: Any = cache.layers[layer]
            self._keys[layer][index, :, :length] = layer_cache.keys[0]
            self._values[layer][index, :, :length] = layer_cache.values[0]
        logits: torch.Tensor = out.logits[0, -1]
        return logits

    def _prefill_rest(self, index: int, prompt: list[int], reused: int) -> torch.Tensor:
        """Prefill `prompt` past its first `reused` tokens, whose keys and values row `index`
        already holds, writing into that row. Returns the last position's logits."""
        length = len(prompt)
        self._grow(length + 1)
        span = torch.arange(length, device=self._device)
        positions = span[reused:]
        visible = span[None, :] <= positions[:, None]
        if self._window is not None:
            visible &= span[None, :] > positions[:, None] - self._window
        out = self.model(
            input_ids=torch.tensor([prompt[reused:]], device=self._device),
            position_ids=positions[None, :],
            attention_mask=visible[None, None],
            cache=_PrefillCache(self._keys, self._values, index, reused, length),
            use_cache=True,
            logits_to_keep=1,
        )
        logits: torch.Tensor = out.logits[0, -1]
        return logits

    def _claim(self, index: int, prompt: list[int]) -> int:
        """Make row `index` (the first after the decoding rows) the joining reply's: holding
        the longest kept prefix of `prompt` (moved there from its row) when one of at least
        `min_reuse` tokens is kept, else free (a row kept there moves to a free row, or over
        the least recently kept one). Returns how many of the prompt's tokens it holds."""
        best, reused = -1, 0
        if self.reuse_prefixes:
            for slot, kept in self._kept.items():
                shared = common_prefix(kept.tokens, prompt)
                if shared > reused:
                    best, reused = slot, shared
        # At least the last prompt token is prefilled: its logits give the first token.
        reused = min(reused, len(prompt) - 1)
        if reused < self.min_reuse:
            self._vacate(index)
            return 0
        del self._kept[best]
        if best != index:
            displaced = self._kept.pop(index, None)
            if displaced is None:
                self._move(best, index, reused)
            else:
                self._swap(best, reused, index, len(displaced.tokens))
                self._kept[best] = displaced
        return reused

    def _vacate(self, index: int) -> None:
        """Free row `index`: a row kept there moves to a free row, or over the least recently
        kept one (or is dropped when it is that one)."""
        displaced = self._kept.pop(index, None)
        if displaced is None:
            return
        taken = set(self._kept) | set(range(index + 1))
        free = [slot for slot in range(self.slots) if slot not in taken]
        if free:
            target = free[0]
        else:
            target = min(self._kept, key=lambda slot: self._kept[slot].stamp)
            if self._kept[target].stamp > displaced.stamp:
                return  # the displaced row is the least recently kept: it goes
        self._move(index, target, len(displaced.tokens))
        self._kept[target] = displaced

    def _keep(self, index: int, row: _Row) -> None:
        """Row `index` (no longer decoding) keeps its reply's cache for a later prompt."""
        if not self.reuse_prefixes:
            return
        self._clock += 1
        self._kept[index] = _Kept(row.tokens[: row.length], self._clock)

    def _move(self, source: int, target: int, length: int) -> None:
        for cache in (*self._keys, *self._values):
            cache[target, :, :length] = cache[source, :, :length]

    def _swap(self, first: int, first_length: int, second: int, second_length: int) -> None:
        """Exchange the first `first_length` positions of row `first` with the first
        `second_length` of row `second`."""
        for cache in (*self._keys, *self._values):
            held = cache[first, :, :first_length].clone()
            cache[first, :, :second_length] = cache[second, :, :second_length]
            cache[second, :, :first_length] = held

    def _step(self) -> None:
        """Decode one token for every row in one forward."""
        rows = self._state.rows
        n = len(rows)
        positions = torch.tensor([row.length for row in rows], device=self._device)
        longest = max(row.length for row in rows) + 1
        self._grow(longest)
        span = torch.arange(longest, device=self._device)
        visible = span[None, :] <= positions[:, None]
        if self._window is not None:
            visible &= span[None, :] > positions[:, None] - self._window
        out = self.model(
            input_ids=torch.tensor([[row.last_token] for row in rows], device=self._device),
            position_ids=positions[:, None],
            attention_mask=visible[:, None, None, :],
            cache=_RowCache(self._keys, self._values, positions, longest),
            use_cache=True,
        )
        logits = out.logits[:, -1]
        for index in range(n):
            row = rows[index]
            token = self._pick(logits[index], row.job)
            row.length += 1
            row.last_token = token
            row.tokens.append(token)
            row.generated += 1
            self._finish_if_done(row, token)
            row.job.deliver([token], row.done)

    @staticmethod
    def _pick(logits: torch.Tensor, job: LaneJob) -> int:
        return pick_token(logits, temperature=job.temperature, top_k=job.top_k, top_p=job.top_p)

    def _finish_if_done(self, row: _Row, token: int) -> None:
        job = row.job
        ended = token in job.stop_ids or row.generated >= job.max_new_tokens
        # The next token would be written past the cache (the budget normally ends it first).
        row.done = ended or row.length + 1 > self.context

    def _drop_finished(self) -> None:
        """Take out the rows that ended or were cancelled, moving the last rows into their
        places so the rows stay packed."""
        with self._wake:  # busy_request_ids reads the rows from another thread
            self._drop_finished_locked()

    def _drop_finished_locked(self) -> None:
        rows = self._state.rows
        index = 0
        dropped = 0
        while index < len(rows):
            row = rows[index]
            if not (row.done or row.job.cancelled.is_set()):
                index += 1
                continue
            last = rows.pop()
            dropped += 1
            end = len(rows)
            if last is not row:
                if self.reuse_prefixes:  # the ended row's cache moves to the last one's row
                    self._swap(index, row.length, end, last.length)
                else:
                    self._move(end, index, last.length)
                rows[index] = last
            self._keep(end, row)
        self._state.taken -= dropped

    def _release(self, count: int) -> None:
        with self._wake:
            self._state.taken -= count

    def _fail_all(self, joining: Sequence[LaneJob]) -> None:
        """A forward raised: end every reply the lane holds with a failure and empty it."""
        state = self._state
        with self._wake:
            jobs = [row.job for row in state.rows] + list(joining) + list(state.joining)
            state.rows.clear()
            state.joining.clear()
            state.taken = 0
        self._kept.clear()
        # Counted before the replies hear of it, so that a reply's failure is never seen
        # ahead of the count.
        self._on_failure()
        seen: set[int] = set()
        for job in jobs:
            if id(job) in seen:
                continue
            seen.add(id(job))
            with contextlib.suppress(Exception):
                job.fail()

    def _grow(self, needed: int) -> None:
        """Make the cache hold at least `needed` positions per row."""
        if needed <= self._capacity:
            return
        capacity = max(needed, 2 * self._capacity, CACHE_GRANULE)
        capacity = min(self.context, -(-capacity // CACHE_GRANULE) * CACHE_GRANULE)
        shape = (self.slots, self._kv_heads, capacity, self._head_dim)
        old = self._capacity
        keys = [
            torch.zeros(shape, device=self._device, dtype=self._dtype) for _ in range(self._layers)
        ]
        values = [
            torch.zeros(shape, device=self._device, dtype=self._dtype) for _ in range(self._layers)
        ]
        for layer in range(len(self._keys)):
            keys[layer][:, :, :old] = self._keys[layer]
            values[layer][:, :, :old] = self._values[layer]
        self._keys, self._values, self._capacity = keys, values, capacity
