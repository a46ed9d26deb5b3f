"""The recall block: old turns, no longer in the prompt's window, that the newest message
brings back to mind.

The turns come ranked (`prompt.terms.TurnIndex`); the block holds, best first, the sentences
of each that hold a matched term (the whole turn when none does or it is short), within a
token budget, in story order so they read as the past they are. It is one system message
placed after the history (`PromptOptions.recall`): the block changes with every message, so
anywhere earlier it would change the prompt's start, which an engine's cached prefix needs
to stay the same from turn to turn.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from synatra_bot.prompt.terms import Hit, KoreanTerms, TurnIndex
from synatra_bot.prompt.vectors import (
    VECTOR_CANDIDATES,
    Fused,
    Similar,
    Vector,
    VectorIndex,
    fuse,
)

if TYPE_CHECKING:
    from synatra_bot.prompt.history import HistoryMessage

RECALL_HEADING = "### 떠오르는 지난 장면"
#: Tokens a prompt's recall takes by default (a few sentences) ...
DEFAULT_RECALL_TOKENS = 256
#: ... and at most this share of the context.
RECALL_CONTEXT_SHARE = 8
#: Turns the search ranks before the block takes what fits.
CANDIDATES = 12
#: What the block's system message adds to its text (its ChatML markers).
RECALL_PIECE_TOKENS = 6
#: A recalled turn's text is cut to its matching sentences past this many characters.
WHOLE_TURN_CHARS = 160
#: Where a turn's text is split into sentences.
_SENTENCE = re.compile(r"[^.!?。！？…~\n]+(?:[.!?。！？…~]+[\"'”’」』)\]]*)?")


@dataclass(frozen=True)
class RecalledTurn:
    """A stored turn the search found, with why: the query terms it holds and their BM25
    score, and the cosine similarity of its vector to the query's when meaning was searched
    too (`prompt.vectors`)."""

    message_id: int
    name: str
    content: str
    matched: tuple[str, ...]
    score: float
    similarity: float | None = None


@dataclass(frozen=True)
class RecallNote:
    """A turn in the block, for the inspector: which turn, what of it, and why."""

    message_id: int
    name: str
    text: str
    matched: tuple[str, ...]
    score: float
    similarity: float | None = None


@dataclass(frozen=True)
class RecallBlock:
    """The block's text (without ChatML markers) and the turns it holds, in story order."""

    text: str
    notes: tuple[RecallNote, ...]


def recall_budget(chosen: int | None, context_size: int) -> int:
    """The tokens recall may take: `chosen` (None: the default) within a `RECALL_CONTEXT_SHARE`th
    of the context (0: off)."""
    wanted = DEFAULT_RECALL_TOKENS if chosen is None else chosen
    return max(0, min(wanted, context_size // RECALL_CONTEXT_SHARE))


def recall_in(
    history: Sequence[HistoryMessage],
    *,
    before: int,
    budget: int,
    terms: KoreanTerms,
    count: Callable[[str], int],
    vectors: Sequence[Vector] | None = None,
) -> RecallBlock | None:
    """The block the newest message of `history` recalls from its first `before` messages
    (those the window left behind): for a whole history held in memory (`synatra-bot prompt`),
    as the bot recalls from a scene's stored turns. With `vectors` (one per message of
    `history`, from an embeddings server) meaning is searched too and both rankings fused."""
    if before <= 0 or not history or budget <= 0:
        return None
    index = TurnIndex()
    for position, message in enumerate(history[:before]):
        index.add(position, terms.terms(message.content))
    hits = index.search(terms.terms(history[-1].content), before_id=before, limit=CANDIDATES)
    similar = None
    if vectors is not None:
        nearness = VectorIndex()
        for position, vector in enumerate(vectors[:before]):
            nearness.add(position, vector)
        similar = nearness.search(vectors[-1], before_id=before, limit=VECTOR_CANDIDATES)
    turns = [
        RecalledTurn(
            history[h.message_id].message_id or h.message_id,
            history[h.message_id].name,
            history[h.message_id].content,
            h.matched,
            h.bm25,
            h.similarity,
        )
        for h in ranked_turns(hits, similar)
    ]
    return recall_block(turns, budget=budget, count=count)


def ranked_turns(hits: Sequence[Hit], similar: Sequence[Similar] | None) -> list[Fused]:
    """The words' ranking fused with the meaning's (when searched), best first."""
    if similar is None:
        return [Fused(h.message_id, h.score, h.score, h.matched, None) for h in hits]
    return fuse(hits, similar, limit=CANDIDATES)


def sentences_of(turn: RecalledTurn) -> str:
    """The part of a turn worth recalling: all of it when short, else the sentences holding a
    matched term (the surface of a noun is in the sentence; a stem is matched without its
    다)."""
    content = " ".join(turn.content.split())
    if len(content) <= WHOLE_TURN_CHARS:
        return content
    keys = [term[:-1] if term.endswith("다") and len(term) > 1 else term for term in turn.matched]
    chosen = [
        s.strip()
        for s in _SENTENCE.findall(content)
        if s.strip() and any(key in s.lower() for key in keys)
    ]
    return " ".join(chosen) if chosen else content[:WHOLE_TURN_CHARS].rstrip() + "…"


def recall_block(
    turns: Sequence[RecalledTurn], *, budget: int, count: Callable[[str], int]
) -> RecallBlock | None:
    """The block of as many of `turns` (best first) as fit in `budget` tokens (`count` is the
    real tokenizer's); None when none does. Each line is counted once; the block is counted
    whole at the end, and the least relevant lines leave while it is over."""
    chosen: list[RecallNote] = []
    used = count(RECALL_HEADING)
    for turn in turns:
        text = sentences_of(turn)
        if not text:
            continue
        note = RecallNote(
            turn.message_id, turn.name, text, turn.matched, turn.score, turn.similarity
        )
        cost = count(_line(note)) + 1  # and the line break before it
        if used + cost <= budget:
            chosen.append(note)
            used += cost
    while chosen and count(_render(chosen)) > budget:
        chosen.pop()
    if not chosen:
        return None
    ordered = sorted(chosen, key=lambda n: n.message_id)
    return RecallBlock(_render(ordered), tuple(ordered))


def _line(note: RecallNote) -> str:
    return f"{note.name}: {note.text}" if note.name else note.text


def _render(notes: Sequence[RecallNote]) -> str:
    lines = [RECALL_HEADING]
    lines += [_line(note) for note in sorted(notes, key=lambda n: n.message_id)]
    return "\n".join(lines)
