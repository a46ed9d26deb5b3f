"""Lorebook (world info): entries fire on keys found in recent messages, within a token budget."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

DEFAULT_SCAN_DEPTH = 4
_REGEX_KEY = re.compile(r"^/(.+)/([a-z]*)$", re.DOTALL)
#: SillyTavern's extensions.selectiveLogic numbers.
_ST_LOGIC = {0: "and_any", 1: "not_all", 2: "not_any", 3: "and_all"}


class SecondaryLogic(StrEnum):
    """How secondary keys combine with a primary match."""

    AND_ANY = "and_any"  # at least one secondary key also matches
    AND_ALL = "and_all"  # every secondary key matches
    NOT_ANY = "not_any"  # no secondary key matches
    NOT_ALL = "not_all"  # not every secondary key matches


@dataclass
class LoreEntry:
    keys: list[str]
    content: str
    secondary_keys: list[str] = field(default_factory=list)
    logic: SecondaryLogic = SecondaryLogic.AND_ANY
    constant: bool = False
    enabled: bool = True
    use_regex: bool = False
    case_sensitive: bool = False
    insertion_order: int = 100
    priority: int = 10
    name: str = ""
    _patterns: dict[str, re.Pattern[str] | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def _pattern(self, key: str) -> re.Pattern[str] | None:
        """The compiled regex for `key` (None for a plain key or an invalid regex)."""
        if key not in self._patterns:
            self._patterns[key] = self._compile(key)
        return self._patterns[key]

    def _compile(self, key: str) -> re.Pattern[str] | None:
        flags = 0 if self.case_sensitive else re.IGNORECASE
        slash = _REGEX_KEY.match(key)
        if slash is not None:
            source = slash.group(1)
            if "i" in slash.group(2):
                flags |= re.IGNORECASE
        elif self.use_regex:
            source = key
        else:
            return None
        try:
            return re.compile(source, flags)
        except re.error:
            return None

    def _matches(self, key: str, text: str, folded: str) -> bool:
        if not key.strip():
            return False
        pattern = self._pattern(key)
        if pattern is not None:
            return pattern.search(text) is not None
        if self.case_sensitive:
            return key in text
        return key.casefold() in folded

    def fires(self, text: str, folded: str | None = None) -> bool:
        """Whether this entry triggers on `text` (the scanned messages)."""
        if not self.enabled:
            return False
        if self.constant:
            return True
        folded = text.casefold() if folded is None else folded
        if not any(self._matches(key, text, folded) for key in self.keys):
            return False
        secondary = [k for k in self.secondary_keys if k.strip()]
        if not secondary:
            return True
        hits = [self._matches(key, text, folded) for key in secondary]
        if self.logic is SecondaryLogic.AND_ANY:
            return any(hits)
        if self.logic is SecondaryLogic.AND_ALL:
            return all(hits)
        if self.logic is SecondaryLogic.NOT_ANY:
            return not any(hits)
        return not all(hits)


@dataclass
class Lorebook:
    entries: list[LoreEntry] = field(default_factory=list)
    name: str = ""
    scan_depth: int = DEFAULT_SCAN_DEPTH
    token_budget: int | None = None


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str)]


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def lorebook_from_character_book(obj: dict[str, Any] | None) -> Lorebook:
    """A Lorebook from a V2/V3 `character_book` object (SillyTavern extensions understood)."""
    if not isinstance(obj, dict):
        return Lorebook()
    entries = []
    for raw in obj.get("entries") or []:
        if not isinstance(raw, dict):
            continue
        ext = raw.get("extensions")
        logic_value = ext.get("selectiveLogic", 0) if isinstance(ext, dict) else 0
        logic = SecondaryLogic(_ST_LOGIC.get(logic_value, "and_any"))
        selective = raw.get("selective", True)
        entries.append(
            LoreEntry(
                keys=_str_list(raw.get("keys")),
                content=str(raw.get("content") or ""),
                secondary_keys=_str_list(raw.get("secondary_keys")) if selective else [],
                logic=logic,
                constant=raw.get("constant") is True,
                enabled=raw.get("enabled", True) is not False,
                use_regex=raw.get("use_regex") is True,
                case_sensitive=raw.get("case_sensitive") is True,
                insertion_order=_int(raw.get("insertion_order"), 100),
                priority=_int(raw.get("priority"), 10),
                name=str(raw.get("name") or raw.get("comment") or ""),
            )
        )
    return Lorebook(
        entries=entries,
        name=str(obj.get("name") or ""),
        scan_depth=max(0, _int(obj.get("scan_depth"), DEFAULT_SCAN_DEPTH)),
        token_budget=_int(obj.get("token_budget"), 0) or None,
    )


@dataclass(frozen=True)
class FiredEntry:
    entry: LoreEntry
    content: str
    tokens: int


def select_entries(
    books: Iterable[Lorebook],
    recent_texts: Sequence[str],
    *,
    token_budget: int,
    count_tokens: Callable[[str], int],
    render: Callable[[str], str] = lambda text: text,
) -> tuple[list[FiredEntry], list[LoreEntry]]:
    """Entries that fire on the newest `scan_depth` texts of each book, within `token_budget`.

    `recent_texts` runs oldest to newest. Constant entries come first, then higher priority, then
    lower insertion order; the kept entries are returned in insertion order, together with the
    entries that fired but did not fit.
    """
    candidates: list[LoreEntry] = []
    scanned: dict[int, tuple[str, str]] = {}
    for book in books:
        depth = book.scan_depth
        if depth not in scanned:
            text = "\n".join(recent_texts[-depth:]) if depth > 0 else ""
            scanned[depth] = (text, text.casefold())
        text, folded = scanned[depth]
        candidates.extend(e for e in book.entries if e.content.strip() and e.fires(text, folded))
    ranked = sorted(candidates, key=lambda e: (not e.constant, -e.priority, e.insertion_order))
    kept: list[FiredEntry] = []
    skipped: list[LoreEntry] = []
    used = 0
    for entry in ranked:
        content = render(entry.content).strip()
        tokens = count_tokens(content)
        if used + tokens > token_budget:
            skipped.append(entry)
            continue
        used += tokens
        kept.append(FiredEntry(entry, content, tokens))
    kept.sort(key=lambda fired: fired.entry.insertion_order)
    return kept, skipped
