"""The Engine protocol every generation backend implements, its sampling parameters and health."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from synatra_bot.tokenizer import IM_END, IM_START, STOP_IDS

#: Text forms of the stop ids, for engines that only understand stop strings.
STOP_STRINGS = (IM_END, IM_START, "</s>")


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one reply. `stop_ids` end generation and never appear in the text."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    repetition_penalty: float = 1.0
    max_new_tokens: int = 300
    stop_ids: tuple[int, ...] = STOP_IDS
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class EngineHealth:
    """A snapshot of an engine's state and load."""

    ok: bool
    detail: str
    queued: int
    running: int
    tokens_per_second: float


@runtime_checkable
class Engine(Protocol):
    """A text generator shared by every channel.

    `stream` yields text deltas made of whole characters (never half a UTF-8 sequence, never a
    stop token). It ends normally when the model stops or reaches `max_new_tokens`; it raises
    `EngineUnavailable` when the engine cannot serve, and `GenerationInterrupted(partial_text=...)`
    when the reply is cut off (including by `cancel`). Leaving the iteration early (break,
    `aclose()`, task cancellation) stops the work for that request.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def stream(
        self, prompt: Sequence[int] | str, params: SamplingParams, *, request_id: str
    ) -> AsyncIterator[str]: ...

    async def cancel(self, request_id: str) -> None: ...

    def count_tokens(self, text: str) -> int: ...

    def health(self) -> EngineHealth: ...


class ThroughputMeter:
    """Tokens per second over a sliding window of recent generation."""

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0

    def add(self, tokens: int) -> None:
        now = self._clock()
        self._events.append((now, tokens))
        self._total += tokens
        self._trim(now)

    def rate(self) -> float:
        now = self._clock()
        self._trim(now)
        return self._total / self._window_s if self._events else 0.0

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self._window_s:
            _, tokens = self._events.popleft()
            self._total -= tokens
