"""Names players go by: a persona may not pass for a character or another member, and a line
posted for a player always carries whose it is."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

#: Discord's limit on a webhook message's username.
USERNAME_LIMIT = 80


def name_key(name: str) -> str:
    """What a name looks like to a reader: compatibility forms folded (full-width letters,
    ligatures), case ignored, and invisible characters, spaces and punctuation dropped, so
    "관리자 민수", "관리자민수" and "관리자\u200b 민수." are one name."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(c for c in folded if unicodedata.category(c)[0] in "LN")


def taken_by(name: str, others: Iterable[str]) -> str | None:
    """The first of `others` that `name` would pass for, or None."""
    key = name_key(name)
    if not key:
        return None
    return next((other for other in others if name_key(other) == key), None)


def player_label(name: str, display_name: str, *, handle: str, cast: Iterable[str] = ()) -> str:
    """The username a player's posted line carries: their story name with their Discord name,
    "지수 (김지수)", or the Discord name alone when they are the same. Where that would still
    read as a cast member's name, the account's unique handle is added, "민지 (@jisu)". At most
    `USERNAME_LIMIT` characters: the story name is shortened, never whose it is."""
    owner = display_name.strip() or handle
    story = name.strip()
    label = owner if name_key(story) == name_key(owner) else _join(story, owner)
    if taken_by(label, cast) is not None:
        label = _join(label, f"@{handle}")
    return label


def _join(first: str, second: str) -> str:
    """`first (second)` in `USERNAME_LIMIT` characters, shortening `first` (Discord's display
    names and handles are at most 32 characters, so `second` always fits)."""
    suffix = f" ({second})"
    room = USERNAME_LIMIT - len(suffix)
    head = first if len(first) <= room else first[: max(room - 1, 0)].rstrip() + "…"
    return (head + suffix)[:USERNAME_LIMIT]
