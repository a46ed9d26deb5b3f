"""Ids and counts as people type them: parsed without ever raising, bounded by what the
database's integer id columns hold."""

from __future__ import annotations

#: The largest id an integer id column holds (32 bits on PostgreSQL).
ID_MAX = 2**31 - 1


def typed_number(text: str, *, most: int = ID_MAX) -> int | None:
    """`text` as a whole number from 0 to `most`, or None.

    Digits of any script count (a Korean keyboard's full-width ones); superscripts such as "²",
    which `str.isdigit` accepts but `int` refuses, do not, nor do signs or spaces."""
    digits = text.lstrip("0") or "0"
    if not text.isdecimal() or len(digits) > len(str(most)):
        return None
    number = int(digits)
    return number if number <= most else None
