"""The prompt inspector's report: what each block costs and what was left out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class BlockReport:
    name: str
    tokens: int


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
    lorebook_fired: list[str] = field(default_factory=list)
    lorebook_skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        """A short summary (well under Discord's 2000 characters)."""
        lines = [
            f"tokens {self.total_tokens}/{self.budget} "
            f"(context {self.context_size}, max new {self.max_new_tokens})",
            " | ".join(f"{block.name} {block.tokens}" for block in self.blocks),
            f"examples: {self.kept_examples} kept, {self.dropped_examples} dropped",
            f"messages: {self.kept_messages} kept, {self.dropped_messages} dropped"
            + (" (trimmed now)" if self.trimmed_this_turn else ""),
        ]
        if self.lorebook_fired or self.lorebook_skipped:
            fired = ", ".join(_short(n) for n in self.lorebook_fired[:15]) or "-"
            lines.append(f"lorebook: {fired}")
            if self.lorebook_skipped:
                skipped = ", ".join(_short(n) for n in self.lorebook_skipped[:10])
                lines.append(f"lorebook over budget: {skipped}")
        return "\n".join(lines)


def _short(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
