"""Which of a scene's characters a player's message names, Korean particles included."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

# What a name may not touch: a Hangul syllable, a digit or a Latin letter (text is casefolded
# first). Jamo (ㅋㅋ, ㅠㅠ), punctuation, emoji and spaces may touch it.
_WORD = r"[\d\uac00-\ud7a3a-z\u00b5\u00df-\u00f6\u00f8-\u024f\u1e00-\u1eff\uff41-\uff5a]"

# Korean particles and endings a name may carry, both forms of each pair since players are
# sloppy. They chain ("준이랑은", "준한테도요"): the colloquial 이 of "준이는" is 이 followed by
# another particle. Longest first, so 이시여 wins over 이.
_PARTICLES = (
    # vocative
    "이시여", "시여", "이여", "여", "아", "야",
    # topic, subject, object
    "은", "는", "께서", "이", "가", "을", "를",
    # with, and
    "이랑", "랑", "와", "과", "하고",
    # to, from
    "한테서", "에게서", "한테", "에게", "께",
    # others
    "이야말로", "야말로", "으로", "로", "처럼", "보다", "까지", "부터", "조차", "마저",
    "밖에", "이나", "나", "도", "만", "의", "요",
)  # fmt: skip
_HONORIFICS = ("님", "씨")


def _alternation(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


# A whole Hangul run after a name must be particles, so the tail is atomic: giving back a
# syllable would leave Hangul after the name, which fails anyway (and this cannot backtrack).
_TAIL = rf"(?>(?:{_alternation(_HONORIFICS)})?(?:{_alternation(_PARTICLES)})*+)"
# Where a name starts or ends: not between two word characters. So a name that starts (ends)
# with punctuation, like "(준)", needs no boundary on that side.
_EDGE = rf"(?:(?<!{_WORD})|(?!{_WORD}))"


@dataclass(frozen=True, slots=True)
class Addressable:
    """A character a message can name: its id, then its name first and its nicknames."""

    key: int
    names: tuple[str, ...]


def _casefold(text: str) -> str:
    """NFC and casefolded: the form text is searched in."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold())


def _fold(name: str) -> str:
    """The form names are compared in: casefolded, runs of whitespace as one space."""
    return " ".join(_casefold(name).split())


def _names(cast: Sequence[Addressable]) -> dict[str, int]:
    """Folded name -> key. A name shared by several: a character's own name beats another's
    nickname, then the first in the cast wins."""
    found: dict[str, int] = {}
    for member in cast:
        if member.names:
            found.setdefault(_fold(member.names[0]), member.key)
    for member in cast:
        for nickname in member.names[1:]:
            found.setdefault(_fold(nickname), member.key)
    found.pop("", None)
    return found


def _literal(text: str) -> str:
    """`text` matched literally, a space standing for any run of whitespace."""
    return r"\s++".join(re.escape(part) for part in text.split(" "))


def _shared_prefix(a: str, b: str) -> str:
    size = 0
    while size < min(len(a), len(b)) and a[size] == b[size]:
        size += 1
    return a[:size]


def _trie(names: list[str]) -> str:
    """A pattern matching any of `names` (sorted, distinct), the longest possible first.

    A trie, so a position is tried along one path, not once per name; a shared run of
    characters is one step, so nesting grows with the branching, not with a name's length."""
    branches = []
    for _, group in groupby((n for n in names if n), key=lambda n: n[0]):
        members = list(group)
        # sorted, so what the first and the last share, all share
        shared = _shared_prefix(members[0], members[-1])
        branches.append(_literal(shared) + _trie([n[len(shared) :] for n in members]))
    if not branches:
        return ""
    ends_here = names[0] == ""
    if len(branches) == 1 and not ends_here:
        return branches[0]
    return f"(?:{'|'.join(branches)})" + ("?" if ends_here else "")


def addressed(text: str, cast: Sequence[Addressable]) -> list[int]:
    """The keys of the characters `text` names, in the order they are first named."""
    names = _names(cast)
    if not names or not text:
        return []
    # At a position the longest name that stands as a word wins, and a name inside it is not
    # found again (the search resumes after the match).
    pattern = re.compile(rf"{_EDGE}(?P<name>{_trie(sorted(names))}){_TAIL}{_EDGE}")
    found = (names[" ".join(m.group("name").split())] for m in pattern.finditer(_casefold(text)))
    return list(dict.fromkeys(found))


def leading_address(text: str, cast: Sequence[Addressable]) -> tuple[int | None, str]:
    """A line starting with `@name` (the terminal's way to talk to one character): that
    character's key and the rest of the line; (None, text) when the line does not start so
    or the name is not in the cast."""
    names = _names(cast)
    start = len(text) - len(text.lstrip()) + 1
    if not names or text[start - 1 : start] != "@" or text[start : start + 1].isspace():
        return None, text
    longest = max(len(n) for n in names)
    best: tuple[int, int] | None = None
    # The name ends where a space or the end of the line follows it; the longest in the cast wins.
    for end in re.finditer(r"(?=\s)|\Z", text[start:]):
        head = _fold(text[start : start + end.start()])
        if len(head) > longest:
            break
        if head in names:
            best = (names[head], start + end.start())
    if best is None:
        return None, text
    key, end_at = best
    return key, text[end_at:].lstrip()
