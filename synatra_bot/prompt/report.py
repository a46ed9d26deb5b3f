"""The prompt inspector's report: what each block costs and what was left out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

LoreStatus = Literal["fired", "skipped", "timed_out", "unscanned"]
#: How `to_text` words each status.
_STATUS_TEXT: dict[LoreStatus, str] = {
    "fired": "fired",
    "skipped": "left out",
    "timed_out": "timed out (key disabled)",
    "unscanned": "not scanned (time budget spent)",
}
_REASON_TEXT = {
    "budget": "over budget",
    "probability": "chance not met",
    "group": "another entry of its group",
    "delay": "delayed",
    "cooldown": "cooling down",
}
_NAMES_SHOWN = {"fired": 15, "skipped": 10, "timed_out": 10, "unscanned": 10}


@dataclass(frozen=True)
class BlockReport:
    name: str
    tokens: int


@dataclass(frozen=True)
class LoreNote:
    """A lorebook entry the build considered: its label, book ("channel", "card", or in a
    scene with several characters "card:<name>"), insertion order and what became of it."""

    label: str
    book: str
    order: int
    status: LoreStatus
    #: Where a fired entry went ("system block", "before message 3", "depth 2 (user)"...).
    where: str = ""
    #: Why a skipped entry is not in the prompt: "budget", "probability", "group", "delay",
    #: "cooldown".
    reason: str = ""


@dataclass(frozen=True)
class LoreLeftOut:
    """What loading a book left out to stay within the lorebook limits."""

    book: str
    entries: int
    keys: int


@dataclass
class PromptReport:
    budget: int
    context_size: int
    max_new_tokens: int
    total_tokens: int = 0
    blocks: list[BlockReport] = field(default_factory=list)
    kept_examples: int = 0
    dropped_examples: int = 0
    kept_messages: int = 0
    dropped_messages: int = 0
    trimmed_this_turn: bool = False
    history_start_id: int | None = None
    lorebook: list[LoreNote] = field(default_factory=list)
    lorebook_left_out: list[LoreLeftOut] = field(default_factory=list)
    #: Players whose persona did not fit beside the character sheet and the newest message.
    personas_left_out: list[str] = field(default_factory=list)
    #: The summary's own tokens in the system block ("### 지난 이야기"; 0: no summary).
    summary_tokens: int = 0
    #: The newest message the summary covers (it covers the scene from its start up to it;
    #: None: none yet, or a summary written by hand over nothing dropped).
    summary_until_id: int | None = None
    #: Dropped history is folded into the summary automatically.
    summary_auto: bool = True
    #: A message the summary covers changed since it was written (it is being rewritten).
    summary_stale: bool = False
    #: Card scripts that changed the history as this prompt sees it, and those that failed
    #: ("name: why"; a failed one left the text as it was).
    scripts_ran: list[str] = field(default_factory=list)
    scripts_failed: list[str] = field(default_factory=list)

    def _labels(self, status: LoreStatus) -> list[str]:
        return [note.label for note in self.lorebook if note.status == status]

    @property
    def lorebook_fired(self) -> list[str]:
        return self._labels("fired")

    @property
    def lorebook_skipped(self) -> list[str]:
        return self._labels("skipped")

    @property
    def lorebook_timed_out(self) -> list[str]:
        return self._labels("timed_out")

    @property
    def lorebook_unscanned(self) -> list[str]:
        return self._labels("unscanned")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self, *, hide_card_entry_names: bool = False) -> str:
        """A short summary (well under Discord's 2000 characters).

        With `hide_card_entry_names` the card's lorebook entries are counted, with their
        insertion order, but not named (their names and keys can give a private card away).
        """
        lines = [
            f"tokens {self.total_tokens}/{self.budget} "
            f"(context {self.context_size}, max new {self.max_new_tokens})",
            _blocks_line(self.blocks),
            f"examples: {self.kept_examples} kept, {self.dropped_examples} dropped",
            f"messages: {self.kept_messages} kept, {self.dropped_messages} dropped"
            + (" (trimmed now)" if self.trimmed_this_turn else ""),
        ]
        for status, words in _STATUS_TEXT.items():
            notes = [note for note in self.lorebook if note.status == status]
            hidden = [n for n in notes if hide_card_entry_names and is_card_book(n.book)]
            named = [n for n in notes if not (hide_card_entry_names and is_card_book(n.book))]
            if named:
                heading = "lorebook" if status == "fired" else f"lorebook {words}"
                lines.append(f"{heading}: {_names(named, _NAMES_SHOWN[status])}")
            if hidden:
                count = f"{len(hidden)} {'entry' if len(hidden) == 1 else 'entries'}"
                lines.append(f"card lorebook: {count} {words} (order {_orders(hidden)})")
        if self.summary_tokens or self.summary_until_id is not None:
            lines.append(_memory_line(self))
        if self.personas_left_out:
            lines.append(f"personas left out: {_short(', '.join(self.personas_left_out), 200)}")
        for left in self.lorebook_left_out:
            lines.append(
                f"{left.book} lorebook over the limits: {left.entries} entries and "
                f"{left.keys} keys left out"
            )
        if self.scripts_ran or self.scripts_failed:
            lines.append(_scripts_line(self))
        return "\n".join(lines)


def _scripts_line(report: PromptReport) -> str:
    """Which card scripts changed the prompt's history, and which failed."""
    line = f"card scripts: {_short(', '.join(report.scripts_ran) or 'none', 200)}"
    if report.scripts_failed:
        line += f"; failed: {_short(', '.join(report.scripts_failed), 200)}"
    return line


def _memory_line(report: PromptReport) -> str:
    """What the summary takes and covers: "memory: 120 tokens, up to message #345"."""
    line = f"memory: {report.summary_tokens} tokens"
    if report.summary_until_id is not None:
        line += f", up to message #{report.summary_until_id}"
    notes = []
    if report.summary_stale:
        notes.append("stale")
    if not report.summary_auto:
        notes.append("automatic memory off")
    return line + (f" ({', '.join(notes)})" if notes else "")


def is_card_book(book: str) -> bool:
    """Whether entries of `book` come from a character card (their names can be private)."""
    return book == "card" or book.startswith("card:")


def _blocks_line(blocks: list[BlockReport]) -> str:
    """Each kind of block once, in order of first appearance, with its total and, when a scene
    has several (lore or personas along the history), how many."""
    totals: dict[str, list[int]] = {}
    for block in blocks:
        total = totals.setdefault(block.name, [0, 0])
        total[0] += block.tokens
        total[1] += 1
    return " | ".join(
        f"{name} {tokens}" + (f" (x{count})" if count > 1 else "")
        for name, (tokens, count) in totals.items()
    )


def _names(notes: list[LoreNote], limit: int) -> str:
    """Labels with where each went ("시계탑 @ depth 2 (user)") or why it was left out."""
    shown = ", ".join(
        _short(note.label)
        + (f" @ {note.where}" if note.where else "")
        + (f" ({_REASON_TEXT.get(note.reason, note.reason)})" if note.reason else "")
        for note in notes[:limit]
    )
    return shown + (f" (+{len(notes) - limit})" if len(notes) > limit else "")


def _orders(notes: list[LoreNote], limit: int = 15) -> str:
    shown = ", ".join(str(note.order) for note in notes[:limit])
    return shown + (", …" if len(notes) > limit else "")


def _short(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
