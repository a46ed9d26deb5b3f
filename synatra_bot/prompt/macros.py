"""Macros ({{char}}, {{user}}, <BOT>, <USER>) with Korean particles that fit the name."""

from __future__ import annotations

import re

_HANGUL_FIRST = 0xAC00
_HANGUL_LAST = 0xD7A3
_RIEUL = 8  # index of ㄹ among final consonants

_PARTICLE_PAIRS = (
    ("이", "가"),
    ("을", "를"),
    ("은", "는"),
    ("과", "와"),
    ("아", "야"),
    ("이나", "나"),
    ("이랑", "랑"),
    ("으로", "로"),
)
#: particle as written -> (form after a final consonant, form after a vowel)
_PAIRS: dict[str, tuple[str, str]] = {form: pair for pair in _PARTICLE_PAIRS for form in pair}

# Longest particles first so 이나/이랑 win over 이. A particle counts only where the word ends
# there (no Hangul syllable follows) or, for the ones that combine, before 는/도/의/만/서/써/은.
_MACRO = re.compile(
    r"(?P<macro>\{\{\s*(?:char|user)\s*\}\}|<(?:bot|user)>)"
    r"(?:(?P<particle>이나|이랑|으로|이|가|을|를|은|는|과|와|아|야|나|랑|로)"
    r"(?=[^\uac00-\ud7a3]|$|(?<=[과와로랑나])[는도의만서써은]))?",
    re.IGNORECASE,
)


def _final_consonant(name: str) -> int | None:
    """Index of the last syllable's final consonant (0 = none), or None if not Hangul."""
    if not name:
        return None
    code = ord(name[-1])
    if not _HANGUL_FIRST <= code <= _HANGUL_LAST:
        return None
    return (code - _HANGUL_FIRST) % 28


def attach_particle(name: str, particle: str) -> str:
    """`name` followed by the form of `particle` that fits its last syllable."""
    pair = _PAIRS.get(particle)
    final = _final_consonant(name)
    if pair is None or final is None:
        return name + particle
    consonant_form, vowel_form = pair
    if pair[0] == "으로":
        return name + ("로" if final in (0, _RIEUL) else "으로")
    return name + (vowel_form if final == 0 else consonant_form)


def substitute_macros(text: str, *, char: str, user: str) -> str:
    """Replace {{char}}/<BOT> and {{user}}/<USER> (any case); fit particles that follow."""
    if "{" not in text and "<" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        macro = match.group("macro").lower()
        name = char if ("char" in macro or "bot" in macro) else user
        particle = match.group("particle")
        return attach_particle(name, particle) if particle else name

    return _MACRO.sub(replace, text)
