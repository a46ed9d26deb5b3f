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


#: DRY's default sequence breakers (text-generation-webui's and llama.cpp's): a repeat that
#: crosses a line break, a speaker colon, a quote or an action asterisk is not penalised.
DRY_SEQUENCE_BREAKERS = ("\n", ":", '"', "*")


#: In EngineHealth.refused: the server cannot write on from the open end of a prompt (a group
#: speaker's name, a reply being continued), so replies start afresh there.
CONTINUATION = "continuation"


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one reply. `stop_ids` end generation and never appear in the text.

    The roleplay samplers are off by default: `min_p` keeps tokens at least that fraction as
    likely as the top one (0 = off); DRY lowers the score of a token that would extend a repeat
    of earlier text longer than `dry_allowed_length` tokens by
    `dry_multiplier * dry_base ** (length - dry_allowed_length)` (`dry_multiplier` 0 = off;
    `dry_penalty_last_n` 0 = look at the whole context); XTC, with probability
    `xtc_probability` per token (0 = off), removes every choice at least `xtc_threshold` likely
    except the least likely of them. Out-of-range values raise ValueError naming the field.
    """

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    repetition_penalty: float = 1.0
    max_new_tokens: int = 300
    stop_ids: tuple[int, ...] = STOP_IDS
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None
    min_p: float = 0.0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_sequence_breakers: tuple[str, ...] = DRY_SEQUENCE_BREAKERS
    dry_penalty_last_n: int = 0
    xtc_threshold: float = 0.1
    xtc_probability: float = 0.0

    def __post_init__(self) -> None:
        # A list is accepted for convenience; the stored value stays a hashable tuple.
        object.__setattr__(self, "dry_sequence_breakers", tuple(self.dry_sequence_breakers))
        checks = (
            ("min_p", 0.0 <= self.min_p <= 1.0, "between 0 and 1"),
            ("dry_multiplier", self.dry_multiplier >= 0.0, "0 (off) or more"),
            ("dry_base", self.dry_base >= 1.0, "1 or more"),
            ("dry_allowed_length", self.dry_allowed_length >= 1, "1 or more"),
            ("dry_penalty_last_n", self.dry_penalty_last_n >= 0, "0 (whole context) or more"),
            (
                "dry_sequence_breakers",
                all(isinstance(b, str) and b for b in self.dry_sequence_breakers),
                "non-empty strings",
            ),
            ("xtc_threshold", 0.0 < self.xtc_threshold <= 1.0, "above 0 and at most 1"),
            ("xtc_probability", 0.0 <= self.xtc_probability <= 1.0, "between 0 and 1"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

    def settings_in_use(self) -> frozenset[str]:
        """The sampling settings this reply asks for beyond plain temperature and top-p, by
        the name of the setting that turns each on."""
        used = {
            "top_k": self.top_k > 0,
            "repetition_penalty": self.repetition_penalty != 1.0,
            "min_p": self.min_p > 0.0,
            "dry_multiplier": self.dry_on,
            "xtc_probability": self.xtc_on,
        }
        return frozenset(name for name, on in used.items() if on)

    @property
    def batchable(self) -> bool:
        """Whether continuous batching can sample this reply inside the batch: it applies only
        temperature, top-p and top-k per request (the embedded engine serves the rest one
        reply at a time)."""
        return (
            self.repetition_penalty == 1.0
            and self.seed is None
            and self.min_p == 0.0
            and not self.dry_on
            and not self.xtc_on
        )

    @property
    def dry_on(self) -> bool:
        return self.dry_multiplier > 0.0

    @property
    def xtc_on(self) -> bool:
        return self.xtc_probability > 0.0


@dataclass
class EngineHealth:
    """A snapshot of an engine's state and load."""

    ok: bool
    detail: str
    queued: int
    running: int
    tokens_per_second: float
    #: Sampling settings (SamplingParams names) the engine no longer sends because its server
    #: refused them, and CONTINUATION when it refused to write on from a prompt's open end;
    #: replies go on without them.
    refused: frozenset[str] = frozenset()
    #: Replies that failed in a row on the engine's side (a failed generation step, a server
    #: that broke off or answered in another shape); 0 again once one goes through.
    failures: int = 0
    #: The engine is rebuilding itself after a failure; it refuses replies until it is back.
    recovering: bool = False
    #: Why it is not ok, in words players may read (`detail` can hold the server's address).
    reason: str = ""

    @property
    def state(self) -> str:
        """One word for people: "recovering", "degraded" (serving, but its last replies
        failed), "ok", or "down" (not serving)."""
        if self.recovering:
            return "recovering"
        if self.failures:
            return "degraded"
        return "ok" if self.ok else "down"

    def to_text(self, *, korean: bool = False) -> str:
        """One line for the prompt inspector (its readers include players: no `detail`)."""
        if korean:
            state = _STATE_KO[self.state]
            failed = f", 연속 {self.failures}번 실패" if self.failures else ""
            line = f"엔진: {state}{failed}, 생성 중 {self.running}, 대기 {self.queued}"
        else:
            failed = f", {self.failures} failed in a row" if self.failures else ""
            line = f"engine: {self.state}{failed}, {self.running} generating, {self.queued} waiting"
        return f"{line} ({self.reason})" if self.reason else line


#: EngineHealth.state in Korean.
_STATE_KO = {"recovering": "복구 중", "degraded": "불안정", "ok": "정상", "down": "멈춤"}


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
