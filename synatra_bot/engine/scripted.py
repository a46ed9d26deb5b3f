"""A deterministic, instant engine for tests, load tests and the fake Discord end-to-end tests.

It streams a scripted reply in small chunks of whole characters (one chunk counts as one token),
honours `max_new_tokens` and stop strings, can fail mid-stream, and records what it was asked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

from synatra_bot.engine.base import EngineHealth, SamplingParams, ThroughputMeter
from synatra_bot.engine.detokenize import StopStringFilter
from synatra_bot.errors import EngineUnavailable, GenerationInterrupted

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_REPLY = "안녕하세요! 오늘은 어떤 이야기를 해 볼까요? *미소를 지으며 고개를 끄덕인다*"
CHUNK_PATTERN = (1, 2, 3)


def split_chunks(text: str) -> list[str]:
    """Cut text into chunks of 1, 2, 3, 1, 2, 3... characters (whole characters only)."""
    chunks: list[str] = []
    position = 0
    index = 0
    while position < len(text):
        size = CHUNK_PATTERN[index % len(CHUNK_PATTERN)]
        chunks.append(text[position : position + size])
        position += size
        index += 1
    return chunks


class ScriptedEngine:
    """Engine that replies from a script: a fixed string, or a function of the prompt text."""

    def __init__(
        self,
        replies: Callable[[str], str] | str | None = None,
        *,
        delay_s: float = 0.0,
        fail_after: int | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        self._replies = replies if replies is not None else DEFAULT_REPLY
        self._delay_s = delay_s
        self._fail_after = fail_after
        self._tokenizer = tokenizer
        self._started = False
        self._cancel_events: dict[str, asyncio.Event] = {}
        self._meter = ThroughputMeter()
        #: Prompt texts in the order they were received.
        self._prompts: list[Sequence[int] | str] = []
        #: Request ids that were cancelled while running.
        self.cancelled: list[str] = []
        #: Request ids that completed normally.
        self.finished: list[str] = []

    @property
    def prompts(self) -> list[str]:
        """Every prompt received, as text (decoded when read: the load test sends thousands)."""
        return [self._prompt_text(prompt) for prompt in self._prompts]

    @property
    def running(self) -> frozenset[str]:
        """Ids of the requests generating right now."""
        return frozenset(self._cancel_events)

    async def start(self) -> None:
        self._started = True

    async def close(self) -> None:
        self._started = False
        for event in self._cancel_events.values():
            event.set()

    def _prompt_text(self, prompt: Sequence[int] | str) -> str:
        if isinstance(prompt, str):
            return prompt
        if self._tokenizer is not None:
            return str(self._tokenizer.decode(list(prompt)))
        return " ".join(str(i) for i in prompt)

    async def stream(
        self, prompt: Sequence[int] | str, params: SamplingParams, *, request_id: str
    ) -> AsyncIterator[str]:
        if not self._started:
            raise EngineUnavailable("scripted engine is not started")
        if request_id in self._cancel_events:
            raise ValueError(f"request id {request_id!r} is already running")
        # A tuple of ints is one the garbage collector stops tracking: a list of them, kept for
        # every request, would be traversed by each of its passes until promoted (thousands of
        # ids per prompt, and the load test sends thousands of prompts).
        self._prompts.append(prompt if isinstance(prompt, str) else tuple(prompt))
        replies = self._replies
        reply = replies if isinstance(replies, str) else replies(self._prompt_text(prompt))
        chunks = split_chunks(reply)[: params.max_new_tokens]
        stops = StopStringFilter(params.stop_strings)
        cancel = asyncio.Event()
        self._cancel_events[request_id] = cancel
        sent = ""
        try:
            for index, chunk in enumerate(chunks):
                if self._fail_after is not None and index >= self._fail_after:
                    raise GenerationInterrupted("scripted failure", partial_text=sent)
                if self._delay_s > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(cancel.wait(), self._delay_s)
                else:
                    await asyncio.sleep(0)
                if cancel.is_set():
                    self.cancelled.append(request_id)
                    raise GenerationInterrupted("request cancelled", partial_text=sent)
                self._meter.add(1)
                text = stops.feed(chunk)
                if text:
                    sent += text
                    yield text
                if stops.stopped:
                    break
            tail = stops.flush()
            if tail:
                sent += tail
                yield tail
            self.finished.append(request_id)
        finally:
            self._cancel_events.pop(request_id, None)

    async def cancel(self, request_id: str) -> None:
        event = self._cancel_events.get(request_id)
        if event is not None:
            event.set()

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text, add_special_tokens=False))
        return len(split_chunks(text))

    def health(self) -> EngineHealth:
        return EngineHealth(
            ok=self._started,
            detail="scripted" if self._started else "not started",
            queued=0,
            running=len(self._cancel_events),
            tokens_per_second=self._meter.rate(),
        )
