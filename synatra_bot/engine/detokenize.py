"""Streaming text out of token ids without splitting characters, and cutting at stop strings.

Mistral's SentencePiece falls back to raw bytes for many Hangul syllables ('안녕하세요' ->
'▁','안','<0xEB>','<0x85>','<0x95>','하','세','요'), so a token on its own may be a third of a
character. The detokenizer decodes a small window of recent ids twice (with and without the
newest) and only emits the difference once it no longer ends in U+FFFD, the way vLLM and TGI do;
decoding the window rather than a single id also keeps SentencePiece's leading spaces right.

SentencePiece drops the space of the first piece it decodes ('▁è' alone is 'è'), so a reply that
goes on from text already in the prompt (a message being continued, a speaker's 'name:') is
decoded after the last few ids of that text (`reply_so_far`): 'message' + '▁è' -> 'message è'.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from synatra_bot.tokenizer import IM_END_ID, IM_START_ID, STOP_IDS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

REPLACEMENT_CHAR = "\ufffd"
#: A UTF-8 character is at most 4 bytes; past this many held ids the bytes are really invalid.
MAX_HELD_IDS = 6
#: How many ids of the text before a reply seed its decoding (enough for a whole character).
CONTEXT_IDS = 6


def reply_so_far(tokenizer: PreTrainedTokenizerBase, prompt_ids: Sequence[int]) -> list[int]:
    """The ids of the text the reply goes on from: the content of the prompt's open ChatML
    block after its role line (empty for a fresh reply; a message being continued; a group
    speaker's `name:`). Empty when the prompt does not end in an open block."""
    ids = list(prompt_ids)
    if IM_START_ID not in ids:
        return []
    start = len(ids) - ids[::-1].index(IM_START_ID)
    block = ids[start:]
    if IM_END_ID in block:
        return []
    pieces = tokenizer.convert_ids_to_tokens(block)
    for position, piece in enumerate(pieces):
        if piece == "<0x0A>" or "\n" in piece:
            return block[position + 1 :]
    return []


class IncrementalDetokenizer:
    """Turns ids, one or a few at a time, into text deltas made of whole characters."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        skip_ids: Iterable[int] = STOP_IDS,
        context: Sequence[int] = (),
    ) -> None:
        """`context` is the text the reply goes on from, as ids (see `reply_so_far`): its last
        few are decoded with the first new ids, so their leading space survives; its own text
        is never emitted."""
        self._tokenizer = tokenizer
        self._skip_ids = frozenset(skip_ids)
        self._ids: list[int] = list(context[-CONTEXT_IDS:])
        self._context = len(self._ids)
        self._prefix_offset = 0
        self._read_offset = self._context
        self.text = ""

    @property
    def token_count(self) -> int:
        return len(self._ids) - self._context

    def add(self, token_ids: Iterable[int]) -> str:
        """Add generated ids; return the text that is now certain (possibly empty)."""
        for token_id in token_ids:
            if token_id not in self._skip_ids:
                self._ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        """Return whatever is still held back (at the end of generation)."""
        return self._emit(final=True)

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    def _emit(self, *, final: bool) -> str:
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        held = len(self._ids) - self._read_offset
        incomplete = new_text.endswith(REPLACEMENT_CHAR) and held < MAX_HELD_IDS
        if len(new_text) <= len(prefix_text) or (incomplete and not final):
            if final:
                self._read_offset = len(self._ids)
            return ""
        delta = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self.text += delta
        return delta


class StopStringFilter:
    """Holds back text that might be the start of a stop string; cuts the text at one."""

    def __init__(self, stop_strings: Iterable[str]) -> None:
        self._stops = tuple(s for s in stop_strings if s)
        self._held = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Return the part of the text so far that is safe to show."""
        if self.stopped:
            return ""
        if not self._stops:
            return delta
        self._held += delta
        cut = min((i for i in (self._held.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._held = self._held[:cut], ""
            return out
        keep = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(self._held)), keep, -1):
                if self._held.endswith(stop[:length]):
                    keep = length
                    break
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep :]
        return out

    def flush(self) -> str:
        out, self._held = ("" if self.stopped else self._held), ""
        return out
