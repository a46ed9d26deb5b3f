"""Macros in card and preset text: {{char}}/{{user}} with the Korean particles and copulas that
fit the name, and SillyTavern's common macros ({{random}}, {{pick}}, {{roll}}, {{time}}...).

Everything is one left-to-right pass over a single compiled pattern (possessive, so it never
backtracks): a macro may hold simple macros inside (`{{random::{{user}}::너}}`), deeper nesting
is left as written, and the work is linear in the text.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

_HANGUL_FIRST = 0xAC00
_HANGUL_LAST = 0xD7A3
_HANGUL = "\uac00-\ud7a3"

# Final consonants (jongseong indices of a Hangul syllable) that the readings below produce.
_NONE, _KIYEOK, _NIEUN, _RIEUL, _MIEUM, _PIEUP, _SIOT, _IEUNG = 0, 1, 4, 8, 16, 17, 19, 21

# -- how a name ends ------------------------------------------------------------------------

# Digits read as Sino-Korean numbers: 영 일 이 삼 사 오 육 칠 팔 구.
_DIGIT_FINALS = (_IEUNG, _RIEUL, _NONE, _MIEUM, _NONE, _NONE, _KIYEOK, _RIEUL, _RIEUL, _NONE)
# A number ending in zeros ends in its last place: 십 백 천, then 만 억 조 경 by fours.
_PLACE_FINALS = (_PIEUP, _KIYEOK, _NIEUN)
_MYRIAD_FINALS = (_NIEUN, _KIYEOK, _NONE, _IEUNG)
# A lone letter or an acronym (BTS, GPT) reads as letter names: only 엘, 엠, 엔, 알 have one.
_LETTER_NAME_FINALS = MappingProxyType({"l": _RIEUL, "m": _MIEUM, "n": _NIEUN, "r": _RIEUL})
_VOWELS = frozenset("aeiouy")
_STOP_FINALS = MappingProxyType({"p": _PIEUP, "b": _PIEUP, "k": _KIYEOK, "c": _KIYEOK, "t": _SIOT})
_SONORANT_FINALS = MappingProxyType({"m": _MIEUM, "n": _NIEUN, "l": _RIEUL})
# Only a name's last few characters matter.
_TAIL = 32


def _latin_final(letters: str, accented: bool) -> int:
    """Final consonant of a word of Latin letters (lowercase, accents stripped) as Korean
    speakers say it, after the usual way names are written in Hangul:

    - m, n, l, ng end in ㅁ ㄴ ㄹ ㅇ (Tom 톰, John 존, Paul 폴, Kang 강); so do they before a
      silent e (Anne 앤, Jane 제인, Michelle 미셸), and mb is ㅁ (Lamb 램);
    - p, b, k, c, ck, t right after one vowel letter end in ㅂ ㄱ ㅅ (Bob 밥, Philip 필립,
      Eric 에릭, Nick 닉, Matt 맷), as does ook (Brook 브룩); after a consonant or a long vowel
      they take 으 and end in a vowel (Mark 마크, Kurt 커트, Pete 피트);
    - every other ending is vowel-final: vowels and w/y (Amy, Andrew), r (Peter 피터), h
      (Sarah, Keith 키스, Mitch 미치), d and g (Ted 테드, Greg 그레그), s z x f v j q (James
      제임스, Max 맥스), and e after any other consonant or vowel (Alice 앨리스, Mike 마이크,
      Claire 클레어, Lee 리); an accented final vowel is pronounced (Chloé, José).
    """
    last = letters[-1]
    if len(letters) == 1:
        return _LETTER_NAME_FINALS.get(last, _NONE)
    if letters.endswith("ng"):
        return _IEUNG
    if letters.endswith("mb"):
        return _MIEUM
    if last in _SONORANT_FINALS:
        return _SONORANT_FINALS[last]
    if last == "e":
        return _NONE if accented else _SONORANT_FINALS.get(letters[-2], _NONE)
    if last in _STOP_FINALS:
        core = letters[:-2] if letters.endswith("ck") or letters[-2] == last else letters[:-1]
        if letters.endswith("ook"):
            return _KIYEOK
        single_vowel = core[-1:] in _VOWELS and core[-2:-1] not in _VOWELS
        return _STOP_FINALS[last] if single_vowel else _NONE
    return _NONE


def _number_final(digits: str) -> int | None:
    """Final consonant of a run of digits read as a Sino-Korean number."""
    significant = digits.rstrip("0")
    zeros = len(digits) - len(significant)
    if not significant:
        return _IEUNG  # 영
    if zeros == 0:
        return _DIGIT_FINALS[int(digits[-1])]
    if zeros < 4:
        return _PLACE_FINALS[zeros - 1]
    return _MYRIAD_FINALS[zeros // 4 - 1] if zeros // 4 <= len(_MYRIAD_FINALS) else None


def _final_consonant(name: str) -> int | None:
    """Index of the final consonant the name ends in when read aloud (0 = a vowel), or None
    where that is unknown. Trailing symbols are skipped (민지♡ ends in 지). Hangul is read
    from its last syllable, digits as a number, Latin letters by `_latin_final`, kana as
    Japanese (ん ends in ㄴ, every other kana in a vowel)."""
    tail = name[-_TAIL:]
    end = len(tail)
    while end and not tail[end - 1].isalnum():
        end -= 1
    if not end:
        return None
    last = tail[end - 1]
    code = ord(last)
    if _HANGUL_FIRST <= code <= _HANGUL_LAST:
        return (code - _HANGUL_FIRST) % 28
    if 0x3041 <= code <= 0x30FF:
        return _NIEUN if last in "んン" else _NONE
    if last in "0123456789":
        start = end
        while start and tail[start - 1] in "0123456789":
            start -= 1
        return _number_final(tail[start:end])
    letters: list[str] = []
    accented = False
    index = end
    while index:
        char = tail[index - 1]
        base = unicodedata.normalize("NFD", char)[0]
        if not (base.isascii() and base.isalpha()):
            break
        if index == end:
            accented = base != char
        letters.append(base)
        index -= 1
    if not letters:
        return None
    word = "".join(reversed(letters))
    if word.isupper() and not set("aeiou").intersection(word.lower()):
        return _LETTER_NAME_FINALS.get(word[-1].lower(), _NONE)
    return _latin_final(word.lower(), accented)


# -- particles and copulas ------------------------------------------------------------------

# What may follow a form for it to count: nothing Hangul (the word ends there); that, or one
# of the particles that combine after it (와는, 으로서, 랑도); or anything (a stem with its
# endings: 이라고, 이었다).
_END = f"(?![{_HANGUL}])"
_JOIN = f"(?:(?![{_HANGUL}])|(?=[는도의만서써은]))"
_STEM = ""

#: (form after a final consonant, form after a vowel, what may follow)
_ALTERNATIONS = (
    # particles
    ("이", "가", _END),
    ("을", "를", _END),
    ("은", "는", _END),
    ("아", "야", _END),  # vocative; 야 may also be the copula, see `_vocative_or_copula`
    ("과", "와", _JOIN),
    ("이나", "나", _JOIN),
    ("이랑", "랑", _JOIN),
    ("으로", "로", _JOIN),
    ("이란", "란", _END),
    ("이며", "며", _END),
    ("이든", "든", _END),
    ("이든지", "든지", _END),
    ("이야말로", "야말로", _END),
    ("이여", "여", _END),
    ("이시여", "시여", _END),
    # the copula 이다
    ("이야", "야", _END),
    ("이에요", "예요", _END),
    ("이다", "다", _END),
    ("이었", "였", _STEM),
    ("이라", "라", _STEM),
    ("이니", "니", _STEM),
    ("이지", "지", _END),
    ("이지만", "지만", _END),
    ("이지요", "지요", _END),
    ("이죠", "죠", _END),
    ("이고", "고", _END),
    ("이면", "면", _END),
    ("이래", "래", _END),
    ("이래요", "래요", _END),
    ("이세요", "세요", _END),
    ("이셨", "셨", _STEM),
)
# Common misspellings, read as the form they stand for.
_VARIANTS = MappingProxyType({"이예요": "이에요", "에요": "예요", "이였": "이었"})


def _pairs() -> MappingProxyType[str, tuple[str, str]]:
    pairs: dict[str, tuple[str, str]] = {}
    for consonant, vowel, _ in reversed(_ALTERNATIONS):  # the first listing of 야 wins
        pairs[consonant] = pairs[vowel] = (consonant, vowel)
    for variant, form in _VARIANTS.items():
        pairs[variant] = pairs[form]
    return MappingProxyType(pairs)


def _particle_pattern() -> re.Pattern[str]:
    follows: dict[str, str] = {}
    for consonant, vowel, follow in _ALTERNATIONS:
        follows.setdefault(consonant, follow)
        follows.setdefault(vowel, follow)
    for variant, form in _VARIANTS.items():
        follows[variant] = follows[form]
    # Longest first, so 이야 wins over 이 and 이라 is not read as 이 before 라.
    forms = sorted(follows, key=len, reverse=True)
    return re.compile("|".join(f"(?:{form}{follows[form]})" for form in forms))


#: form as written -> (form after a final consonant, form after a vowel)
_PAIRS = _pairs()
_PARTICLE = _particle_pattern()
# After these, a written 야 ends a sentence, so it is the copula (민지야. -> 준이야.); elsewhere
# it is the vocative (민지야, -> 준아,).
_SENTENCE_END = frozenset(".?…\"'”’」』)\r\n")


def _fit(name: str, particle: str, final: int | None) -> str:
    pair = _PAIRS.get(particle)
    if pair is None or final is None:
        return name + particle
    consonant_form, vowel_form = pair
    if consonant_form == "으로":
        return name + ("로" if final in (_NONE, _RIEUL) else "으로")
    return name + (vowel_form if final == _NONE else consonant_form)


def attach_particle(name: str, particle: str) -> str:
    """`name` followed by the form of `particle` (or copula) that fits how the name ends;
    as written where that is unknown. A written 야 is the vocative here (준아)."""
    return _fit(name, particle, _final_consonant(name))


_PARTICLE_SLOT = re.compile(r"\{(?P<name>\w+)\|(?P<particle>[^}]+)\}")


def fit_particle_slots(template: str, params: Mapping[str, Any]) -> str:
    """`template` with each `{name|가}` slot replaced by that parameter with the particle form
    that fits its last syllable (민지가, 준이), braces in the value escaped for `str.format`."""
    return _PARTICLE_SLOT.sub(
        lambda m: (
            attach_particle(str(params.get(m["name"], "")), m["particle"])
            .replace("{", "{{")
            .replace("}", "}}")
        ),
        template,
    )


def _vocative_or_copula(particle: str, following: str) -> str:
    """The copula 이야 for a 야 that ends a sentence (or the text); the particle otherwise."""
    if particle == "야" and (not following or following in _SENTENCE_END):
        return "이야"
    return particle


# -- the other macros -----------------------------------------------------------------------


@dataclass(frozen=True)
class MacroContext:
    """What the time, chance and chat macros read; without one they are left as written."""

    #: The scene's seed: `{{pick}}` makes the same choice for the same seed and text.
    seed: int = 0
    #: The time `{{time}}`, `{{date}}`, `{{weekday}}`, `{{isotime}}`, `{{isodate}}` show.
    now: datetime | None = None
    #: `{{lastMessage}}`.
    last_message: str = ""
    #: Time since the last message, for `{{idle_duration}}` (None: "just now").
    idle: timedelta | None = None
    #: What `{{original}}` stands for (None: left for the caller).
    original: str | None = None
    #: The source of `{{random}}` and `{{roll}}` (None: a fresh one per call).
    rng: random.Random | None = None
    #: The reader's language: Korean dates and durations for "ko...".
    locale: str = ""

    @property
    def korean(self) -> bool:
        return self.locale.lower().startswith("ko")


# A comment may hold single braces and simple macros; any other macro may hold simple ones.
_TOKEN = re.compile(
    r"(?P<comment>\{\{//(?:[^{}]++|\{(?!\{)|\}(?!\})|\{\{[^{}]*+\}\})*+\}\})"
    r"|\{\{(?P<body>(?:[^{}]++|\{\{[^{}]*+\}\})*+)\}\}"
    r"|<(?P<legacy>bot|char|user)>",
    re.IGNORECASE,
)
_CHOICE = re.compile(r"(?P<kind>random|pick)\s?::?(?P<items>.+)", re.IGNORECASE | re.DOTALL)
_ROLL = re.compile(r"roll[ :](?P<formula>.+)", re.IGNORECASE | re.DOTALL)
_DICE = re.compile(r"(?P<count>[1-9]\d{0,3})?d(?P<sides>[1-9]\d{0,4})(?P<mod>[+-]\d{1,6})?", re.I)
_COMMA = re.compile(r"(?<!\\),")
MAX_DICE = 100
MAX_SIDES = 1000

_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_WEEKDAYS_KO = ("월요일", "화요일", "수요일", "목요일", "금요일", "토요일", "일요일")
_DURATIONS = MappingProxyType(
    {
        "s": ("a few seconds", "몇 초"),
        "m": ("a minute", "1분"),
        "mm": ("{} minutes", "{}분"),
        "h": ("an hour", "한 시간"),
        "hh": ("{} hours", "{}시간"),
        "d": ("a day", "하루"),
        "dd": ("{} days", "{}일"),
        "M": ("a month", "한 달"),
        "MM": ("{} months", "{}달"),
        "y": ("a year", "일 년"),
        "yy": ("{} years", "{}년"),
        "now": ("just now", "방금"),
    }
)


def _round(value: float) -> int:
    return math.floor(value + 0.5)


def humanize(idle: timedelta | None, *, korean: bool = False) -> str:
    """A duration in words, with SillyTavern's thresholds ("a few seconds" under 45 s,
    "a minute" under 90 s, "N minutes" under 45 min, ... "N years"); None is "just now"."""
    if idle is None:
        key, count = "now", 0
    else:
        seconds = abs(idle.total_seconds())
        minutes, hours, days = _round(seconds / 60), _round(seconds / 3600), seconds / 86400
        months = days * 4800 / 146097
        whole_days, whole_months, years = _round(days), _round(months), _round(months / 12)
        key, count = (
            ("s", 0) if _round(seconds) < 45
            else ("m", 1) if minutes <= 1
            else ("mm", minutes) if minutes < 45
            else ("h", 1) if hours <= 1
            else ("hh", hours) if hours < 22
            else ("d", 1) if whole_days <= 1
            else ("dd", whole_days) if whole_days < 26
            else ("M", 1) if whole_months <= 1
            else ("MM", whole_months) if whole_months < 11
            else ("y", 1) if years <= 1
            else ("yy", years)
        )  # fmt: skip
    return _DURATIONS[key][1 if korean else 0].format(count)


def _clock(now: datetime, macro: str, korean: bool) -> str:
    hour12 = f"{now.hour % 12 or 12}:{now.minute:02d}"
    if macro == "time":
        if korean:
            return f"{'오전' if now.hour < 12 else '오후'} {hour12}"
        return f"{hour12} {'AM' if now.hour < 12 else 'PM'}"
    if macro == "date":
        if korean:
            return f"{now.year:04d}년 {now.month}월 {now.day}일"
        return f"{_MONTHS[now.month - 1]} {now.day}, {now.year:04d}"
    if macro == "weekday":
        return (_WEEKDAYS_KO if korean else _WEEKDAYS)[now.weekday()]
    if macro == "isotime":
        return f"{now.hour:02d}:{now.minute:02d}"
    return f"{now.year:04d}-{now.month:02d}-{now.day:02d}"


def _items(spec: str) -> list[str]:
    """A choice's options: split on `::`, or else on commas (trimmed; `\\,` is a comma)."""
    if "::" in spec:
        return spec.split("::")
    return [item.replace("\\,", ",").strip() for item in _COMMA.split(spec)]


def _pick_index(seed: int, offset: int, written: str, count: int) -> int:
    digest = hashlib.blake2b(f"{seed}\x1f{offset}\x1f{written}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") % count


def _strip_trailing_newlines(text: str) -> str:
    end = len(text)
    while end and text[end - 1] == "\n":
        end -= 2 if end > 1 and text[end - 2] == "\r" else 1
    return text[:end]


def _strip_leading_newlines(text: str) -> str:
    start = 0
    while True:
        if text.startswith("\n", start):
            start += 1
        elif text.startswith("\r\n", start):
            start += 2
        else:
            return text[start:]


class _Expander:
    """One substitution: the names, the context and the random source it draws from."""

    def __init__(self, char: str, user: str, context: MacroContext | None) -> None:
        self.names = {"char": char, "user": user}
        self.finals: dict[str, int | None] = {}
        self.context = context
        self._rng = context.rng if context is not None else None

    @property
    def rng(self) -> random.Random:
        if self._rng is None:
            self._rng = random.Random()
        return self._rng

    def name(self, key: str, text: str, end: int) -> tuple[str, int]:
        """The name for `key` with the particle that follows it at `end` fitted."""
        name = self.names[key]
        particle = _PARTICLE.match(text, end)
        if particle is None:
            return name, end
        written = particle.group()
        if key not in self.finals:
            self.finals[key] = _final_consonant(name)
        final = self.finals[key]
        if final not in (None, _NONE):
            written = _vocative_or_copula(written, text[particle.end() : particle.end() + 1])
        return _fit(name, written, final), particle.end()

    def expand(self, text: str, base: int = 0, depth: int = 0) -> str:
        """`text` with its macros replaced; `base` is its offset in the whole text."""
        out: list[str] = []
        fixed = 0  # out[:fixed] came before a macro {{trim}} does not reach past
        strip_next = False
        pos = 0
        while True:
            match = _TOKEN.search(text, pos)
            literal = text[pos : match.start() if match else len(text)]
            if strip_next and literal:
                literal = _strip_leading_newlines(literal)
                strip_next = not literal
            if literal:
                out.append(literal)
            if match is None:
                return "".join(out)
            pos = match.end()
            if match.group("comment") is not None:
                fixed, strip_next = len(out), False
                continue
            legacy = match.group("legacy")
            body = match.group("body")
            if legacy is not None:
                key = "user" if legacy.lower() == "user" else "char"
            else:
                key = body.strip().lower()
            if key in self.names:
                value, pos = self.name(key, text, pos)
            elif key == "newline":
                if not strip_next:
                    out.append("\n")
                continue
            elif key == "trim":
                while len(out) > fixed:
                    out[-1] = _strip_trailing_newlines(out[-1])
                    if out[-1]:
                        break
                    out.pop()
                strip_next = True
                continue
            else:
                value = self.macro(key, body, match.group(), base + match.start(), depth)
            out.append(value)
            fixed, strip_next = len(out), False

    def macro(self, key: str, body: str, written: str, offset: int, depth: int) -> str:
        """The value of the macro `{{body}}` (as written at `offset`), or it as written."""
        if "{{" in body and depth == 0:
            body = self.expand(body, offset + 2, depth + 1)
            key = body.strip().lower()
        context = self.context
        if key == "noop":
            return ""
        if context is None:
            return "{{" + body + "}}"
        if key == "original" and context.original is not None:
            return context.original
        if key == "lastmessage":
            return context.last_message
        if key == "idle_duration":
            return humanize(context.idle, korean=context.korean)
        if key in ("time", "date", "weekday", "isotime", "isodate") and context.now is not None:
            return _clock(context.now, key, context.korean)
        choice = _CHOICE.fullmatch(body)
        if choice is not None:
            items = _items(choice.group("items"))
            if choice.group("kind").lower() == "pick":
                return items[_pick_index(context.seed, offset, written, len(items))]
            return items[self.rng.randrange(len(items))]
        roll = _ROLL.fullmatch(body)
        if roll is not None:
            total = self.roll(roll.group("formula").strip())
            if total is not None:
                return str(total)
        return "{{" + body + "}}"

    def roll(self, formula: str) -> int | None:
        """A roll of `formula` (NdS+M, or S for 1dS); None if invalid or too many dice."""
        if formula.isdigit():
            formula = f"1d{formula}"
        dice = _DICE.fullmatch(formula)
        if dice is None:
            return None
        count, sides = int(dice.group("count") or 1), int(dice.group("sides"))
        if count > MAX_DICE or sides > MAX_SIDES:
            return None
        rolls = sum(self.rng.randint(1, sides) for _ in range(count))
        return rolls + int(dice.group("mod") or 0)


def substitute_macros(
    text: str, *, char: str, user: str, context: MacroContext | None = None
) -> str:
    """Replace {{char}}/<BOT>/<CHAR> and {{user}}/<USER> (any case), fitting the particles
    and copulas that follow, and SillyTavern's macros: {{newline}}, {{trim}}, {{noop}} and
    {{// comments}} always; with a `context`, also {{random}}, {{pick}}, {{roll}}, {{time}},
    {{date}}, {{weekday}}, {{isotime}}, {{isodate}}, {{idle_duration}}, {{lastMessage}} and
    {{original}}. Any other macro is left as written (its inner macros replaced)."""
    if "{" not in text and "<" not in text:
        return text
    return _Expander(char, user, context).expand(text)
