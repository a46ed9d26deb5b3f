"""The pin block: lines players pinned into a scene's memory ("📌 Remember this"), always in
its prompts within a token budget of their own.

The block is one section of the system block, right after the summary (`memory_sections`):
pins change only when a player pins, edits or unpins, like the summary, so every turn in
between keeps the same prompt start and an engine's cached prefix stays valid. When the pins
take more than the budget, the newest win; the block lists them oldest first, as they were
pinned. Pinned text is a player's own text: like the rest of the history it reaches the model
only as content encoded with special tokens split (the builder's `encode_content`), so a
forged `<|im_start|>` in it stays plain text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

PIN_HEADING = "### 기억할 것"
SUMMARY_HEADING = "### 지난 이야기"
#: Tokens a prompt's pins take by default ...
DEFAULT_PIN_TOKENS = 200
#: ... and at most this share of the context.
PIN_CONTEXT_SHARE = 8
#: Pins one scene may hold.
PIN_LIMIT = 50
#: The longest pin, in characters (a turn's text is cut to it; the edit form allows no more).
PIN_CHARS = 500


@dataclass(frozen=True)
class PinNote:
    """A pin in the block, for the inspector: its id and text."""

    pin_id: int
    text: str


@dataclass(frozen=True)
class PinBlock:
    """The block's text and the pins it holds (oldest first); `left_out`: pins over budget."""

    text: str
    notes: tuple[PinNote, ...]
    left_out: int = 0


def pin_budget(chosen: int | None, context_size: int) -> int:
    """The tokens pins may take: `chosen` (None: the default) within a `PIN_CONTEXT_SHARE`th
    of the context (0: off)."""
    wanted = DEFAULT_PIN_TOKENS if chosen is None else chosen
    return max(0, min(wanted, context_size // PIN_CONTEXT_SHARE))


def pin_text(content: str) -> str:
    """A pin's text from a turn's (or a player's) text: one line, at most `PIN_CHARS`."""
    line = " ".join(content.split())
    return line if len(line) <= PIN_CHARS else line[: PIN_CHARS - 1].rstrip() + "…"


def pin_block(
    pins: Sequence[tuple[int, str]], *, budget: int, count: Callable[[str], int]
) -> PinBlock | None:
    """The block of the newest of `pins` ((id, text), oldest first) that fit in `budget`
    tokens together (`count` is the real tokenizer's); a pin too long to fit even alone is
    passed over. None when none fits or the budget is 0. Each line is counted once; the
    block is counted whole at the end, and the oldest lines leave while it is over."""
    if budget <= 0 or not pins:
        return None
    chosen: list[PinNote] = []
    used = count(PIN_HEADING)
    for pin_id, text in reversed(pins):
        note = PinNote(pin_id, pin_text(text))
        if not note.text:
            continue
        cost = count(_line(note)) + 1  # and the line break before it
        if used + cost <= budget:
            chosen.append(note)
            used += cost
        elif chosen or count(PIN_HEADING) + cost <= budget:
            break  # the newest that fit, and none older
    chosen.reverse()
    while chosen and count(_render(chosen)) > budget:
        chosen.pop(0)
    if not chosen:
        return None
    return PinBlock(_render(chosen), tuple(chosen), len(pins) - len(chosen))


def memory_sections(summary: str, pins: PinBlock | None) -> list[str]:
    """The system block's memory: the summary, then the pins."""
    sections = [f"{SUMMARY_HEADING}\n{summary.strip()}"] if summary.strip() else []
    return sections + ([pins.text] if pins is not None else [])


def _line(note: PinNote) -> str:
    return f"- {note.text}"


def _render(notes: Sequence[PinNote]) -> str:
    return "\n".join([PIN_HEADING, *(_line(note) for note in notes)])
