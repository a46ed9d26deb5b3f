"""Lorebook (world info): entries fire on keys found in recent messages, within a token budget.

Books come from card authors and moderators, so a scan is bounded: a book keeps at most
`MAX_ENTRIES` entries, `MAX_BOOK_KEYS` keys (`MAX_ENTRY_KEYS` an entry, `MAX_KEY_CHARS` each);
regex keys run on mrab-regex with a timeout (a key that runs out is disabled for the loaded book)
and one scan stops trying keys after `SCAN_BUDGET_S` (the scans of one prompt build share that
budget through `deadline`). Regex matching releases the GIL, so a scan in a worker thread leaves
an event loop free (`scans_need_worker` says when to use one).
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import regex

DEFAULT_SCAN_DEPTH = 4
#: Recursive scanning: the steps a server allows by default, and at most (each step scans the
#: lore the step before it fired, within the same time budget as the first scan).
DEFAULT_RECURSION_STEPS = 3
MAX_RECURSION_STEPS = 5
MAX_SCAN_DEPTH = 100
MAX_ENTRIES = 500
MAX_ENTRY_KEYS = 50
MAX_BOOK_KEYS = 5_000
MAX_KEY_CHARS = 500
#: One match of a regex key may take this long; a key that takes longer is disabled.
KEY_TIMEOUT_S = 0.02
#: One scan (one prompt build) stops trying keys after this long; the rest count as not firing.
SCAN_BUDGET_S = 0.1
#: mrab-regex expands counted repeats when it compiles (`a{4294967294}` asks for gigabytes), so
#: a regex key costing more than this (its length times its repeat counts) is not compiled.
MAX_REGEX_COST = 50_000
#: Memory one book's compiled regex keys may take (an ordinary key takes 1-3 KiB); keys past it
#: are matched as plain text.
MAX_BOOK_REGEX_BYTES = 4 * 1024 * 1024
#: The most characters one token of Synatra's vocabulary stands for (its longest piece is 16
#: spaces): text longer than this many times a budget is over it, uncounted.
MAX_TOKEN_CHARS = 16
#: Plain keys times scanned characters that a scan may cost on the caller's thread (about a
#: millisecond); a bigger scan belongs in a worker thread.
INLINE_SCAN_WORK = 2_000_000
#: SillyTavern's extensions.selectiveLogic numbers.
_ST_LOGIC = {0: "and_any", 1: "not_all", 2: "not_any", 3: "and_all"}
#: SillyTavern's `/pattern/flags` keys (a pattern with an unescaped slash is plain text).
_SLASH_KEY = re.compile(r"/(.+)/([gimsuy]*)", re.DOTALL)
_UNESCAPED_SLASH = re.compile(r"(?:^|[^\\])/")
_JS_FLAGS = {"i": regex.IGNORECASE, "s": regex.DOTALL, "m": regex.MULTILINE}
_COUNTED_REPEAT = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


class LorePosition(StrEnum):
    """Where an entry goes (SillyTavern's `extensions.position` numbers in `_ST_POSITIONS`)."""

    BEFORE_CHAR = "before_char"  # before the character's description
    AFTER_CHAR = "after_char"  # after the character's description
    AN_TOP = "an_top"  # at the top of the author's note
    AN_BOTTOM = "an_bottom"  # at the bottom of the author's note
    AT_DEPTH = "at_depth"  # `depth` messages from the end of the history, as `role`
    EXAMPLES_TOP = "examples_top"  # before the example dialogues
    EXAMPLES_BOTTOM = "examples_bottom"  # after the example dialogues


#: SillyTavern's world_info_position numbers.
_ST_POSITIONS = {
    0: LorePosition.BEFORE_CHAR,
    1: LorePosition.AFTER_CHAR,
    2: LorePosition.AN_TOP,
    3: LorePosition.AN_BOTTOM,
    4: LorePosition.AT_DEPTH,
    5: LorePosition.EXAMPLES_TOP,
    6: LorePosition.EXAMPLES_BOTTOM,
}
#: SillyTavern's extension_prompt_roles numbers.
_ST_ROLES = {0: "system", 1: "user", 2: "assistant"}
DEFAULT_ENTRY_DEPTH = 4
MAX_ENTRY_DEPTH = 1000
DEFAULT_GROUP_WEIGHT = 100


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
    #: SillyTavern's extensions (see `_entry_from`); None where the book's setting applies.
    position: LorePosition = LorePosition.AFTER_CHAR
    depth: int = DEFAULT_ENTRY_DEPTH
    role: str = "system"
    match_whole_words: bool = False
    scan_depth: int | None = None
    #: Percent chance to fire when its keys match (100: always).
    probability: int = 100
    #: Inclusion groups: of the entries of one group that fire together, one is kept.
    groups: tuple[str, ...] = ()
    group_override: bool = False
    group_weight: int = DEFAULT_GROUP_WEIGHT
    use_group_scoring: bool = False
    #: Timed effects counted in messages: stays active `sticky` messages after firing, then
    #: cannot fire for `cooldown` messages; cannot fire before the scene has `delay` messages.
    sticky: int = 0
    cooldown: int = 0
    delay: int = 0
    #: Recursive scanning (SillyTavern's): the entry never fires on lore; its text never
    #: fires other entries; it fires only on lore, and not before that recursion step (0: no).
    exclude_recursion: bool = False
    prevent_recursion: bool = False
    delay_until_recursion: int = 0


@dataclass(frozen=True, slots=True)
class _Key:
    text: str
    folded: str
    #: (source, flags) of a regex key; None for a plain key.
    regex: tuple[str, int] | None
    #: A plain single-word key of a `match_whole_words` entry: it must be a whole word (a key
    #: with whitespace in it is matched as a substring, as SillyTavern does).
    whole_word: bool = False


@dataclass(frozen=True, slots=True)
class _EntryKeys:
    primary: tuple[_Key, ...]
    secondary: tuple[_Key, ...]
    regexes: tuple[tuple[str, int], ...]


def _regex_of(entry: LoreEntry, key: str) -> tuple[str, int] | None:
    """The regex `key` stands for: SillyTavern's `/pattern/flags` (case-sensitive unless flagged
    `i`), or any key of a `use_regex` entry. None for a plain key."""
    slash = _SLASH_KEY.fullmatch(key)
    if slash is not None and not _UNESCAPED_SLASH.search(slash.group(1)):
        flags = 0
        for letter in slash.group(2):
            flags |= _JS_FLAGS.get(letter, 0)
        return slash.group(1), flags
    if entry.use_regex:
        return key, 0 if entry.case_sensitive else regex.IGNORECASE
    return None


def _keys_of(entry: LoreEntry) -> _EntryKeys:
    def prepare(keys: list[str]) -> tuple[_Key, ...]:
        return tuple(
            _Key(
                k,
                k.casefold(),
                _regex_of(entry, k),
                entry.match_whole_words and not any(c.isspace() for c in k),
            )
            for k in keys
            if k.strip()
        )

    primary, secondary = prepare(entry.keys), prepare(entry.secondary_keys)
    regexes = tuple(k.regex for k in (*primary, *secondary) if k.regex is not None)
    return _EntryKeys(primary, secondary, regexes)


def deepest_scan(book: Lorebook) -> int:
    """How many of the newest texts a scan of `book` reads: the book's `scan_depth` or an
    entry's own, whichever is deeper (`scan_books` wants at least that many)."""
    depths = (e.scan_depth for e in book.entries if e.scan_depth is not None)
    return max(0, book.scan_depth, *depths)


#: Korean particles and copula endings that may follow a whole-word key ending in a Hangul
#: syllable ("민지는", "민지에게도", "민지예요"); they stack up to `MAX_STACKED_PARTICLES`.
KOREAN_PARTICLES = (
    # case particles
    "은", "는", "이", "가", "을", "를", "의", "에", "에게", "에게서", "에게로", "에서", "께",
    "께서", "한테", "한테서", "와", "과", "랑", "이랑", "하고", "로", "으로", "로서", "으로서",
    "로써", "으로써",
    # auxiliary particles
    "도", "만", "까지", "부터", "보다", "처럼", "같이", "이나", "나", "이든", "든", "든지",
    "이든지", "조차", "마저", "밖에", "뿐", "이란", "란", "이며", "며", "요",
    # vocatives
    "야", "아", "여", "이여",
    # copula endings
    "이야", "이에요", "에요", "예요", "이다", "다", "였다", "이었다", "라고", "이라고",
    # honorific suffixes
    "님", "씨",
)  # fmt: skip
MAX_STACKED_PARTICLES = 4
#: Memory the compiled whole-word keys of all books may take together (a key takes 1-6 KiB);
#: the least recently used are dropped past it.
MAX_WHOLE_WORD_BYTES = 4 * 1024 * 1024
_PARTICLE_RUN = regex.compile(
    rf"(?:\L<particles>){{1,{MAX_STACKED_PARTICLES}}}", particles=KOREAN_PARTICLES
)
_LONGEST_PARTICLES = MAX_STACKED_PARTICLES * max(len(p) for p in KOREAN_PARTICLES)


def _ends_in_hangul(text: str) -> bool:
    return "\uac00" <= text[-1] <= "\ud7a3"


def _particles_only(suffix: str) -> bool:
    return len(suffix) <= _LONGEST_PARTICLES and _PARTICLE_RUN.fullmatch(suffix) is not None


class _WholeWordPatterns:
    """Compiled whole-word keys, shared by all books (a pattern depends only on its key's text,
    and escaped text matches in linear time), compiled when first needed and bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._lock = threading.Lock()
        self._max_bytes = max_bytes
        self._patterns: OrderedDict[str, tuple[Any | None, int]] = OrderedDict()
        self._bytes = 0

    def get(self, needle: str) -> Any | None:
        """The pattern for `needle` (already case-folded where the entry ignores case): a match
        starts at a word boundary, and its group 1 is the rest of the word for a key ending in
        Hangul (particles may follow); None if it cannot compile."""
        with self._lock:
            cached = self._patterns.get(needle)
            if cached is not None:
                self._patterns.move_to_end(needle)
                return cached[0]
        tail = r"(\w*)" if _ends_in_hangul(needle) else r"(?!\w)"
        try:
            # Not in mrab-regex's module-wide cache: this one is bounded.
            pattern = regex.compile(rf"(?<!\w){regex.escape(needle)}{tail}", cache_pattern=False)
        except (regex.error, ValueError, OverflowError, RecursionError):
            pattern = None
        size = sys.getsizeof(pattern) + sys.getsizeof(needle)
        with self._lock:
            if needle not in self._patterns:
                self._patterns[needle] = (pattern, size)
                self._bytes += size
                while self._bytes > self._max_bytes and len(self._patterns) > 1:
                    _, (_, dropped) = self._patterns.popitem(last=False)
                    self._bytes -= dropped
        return pattern


_WHOLE_WORDS = _WholeWordPatterns(MAX_WHOLE_WORD_BYTES)


def _regex_cost(source: str) -> int:
    """An upper bound on what `source` compiles to: its length times its repeat counts."""
    cost = len(source)
    for low, high in _COUNTED_REPEAT.findall(source):
        cost *= max(1, int(high or low or 1))
        if cost > MAX_REGEX_COST:
            break
    return cost


def _compile(source: str, flags: int) -> Any | None:
    """A compiled regex key, or None when it is invalid or too costly to compile."""
    if _regex_cost(source) > MAX_REGEX_COST:
        return None
    try:
        # Not in mrab-regex's module-wide cache: a book keeps its own, bounded.
        return regex.compile(source, flags, cache_pattern=False)
    except (regex.error, ValueError, OverflowError, RecursionError):
        return None


class _CompiledKeys:
    """A book's compiled regex keys and those disabled after a timeout (scans of the book in
    several threads share it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._disabled: set[tuple[str, int]] = set()
        self._patterns: dict[tuple[str, int], Any | None] = {}
        self._bytes = 0

    def get(self, spec: tuple[str, int]) -> Any | None:
        """The compiled key; None when invalid, too costly or past the book's memory."""
        # Compiling under the lock takes milliseconds at most (MAX_REGEX_COST), and only scans
        # in worker threads ever compile (a book with a regex key is never scanned inline).
        with self._lock:
            if spec not in self._patterns:
                pattern = _compile(*spec) if self._bytes < MAX_BOOK_REGEX_BYTES else None
                if pattern is not None:
                    self._bytes += sys.getsizeof(pattern)
                self._patterns[spec] = pattern
            return self._patterns[spec]

    def disable(self, spec: tuple[str, int]) -> None:
        with self._lock:
            self._disabled.add(spec)

    def any_disabled(self, specs: Iterable[tuple[str, int]]) -> bool:
        with self._lock:
            return any(spec in self._disabled for spec in specs)


@dataclass
class Lorebook:
    """Entries and scan settings; read-only once scanned (a scan keeps what it compiled)."""

    entries: list[LoreEntry] = field(default_factory=list)
    name: str = ""
    scan_depth: int = DEFAULT_SCAN_DEPTH
    #: The book asks for recursive scanning (`recursive_scanning`): lore that fired is scanned
    #: for this book's keys too, as many steps as the server allows.
    recursive: bool = False
    #: What loading left out to stay within the limits, and the first limit it went over.
    left_out_entries: int = 0
    left_out_keys: int = 0
    over_limit: str = ""
    _compiled: _CompiledKeys = field(
        default_factory=_CompiledKeys, init=False, repr=False, compare=False
    )

    @functools.cached_property
    def _keys(self) -> list[_EntryKeys]:
        return [_keys_of(entry) for entry in self.entries]

    @functools.cached_property
    def key_count(self) -> int:
        return sum(len(e.keys) + len(e.secondary_keys) for e in self.entries)

    @functools.cached_property
    def may_have_regex(self) -> bool:
        """Whether a key may be a regex (cheap: any key starting with "/" counts)."""
        return any(
            e.use_regex or any(k.startswith("/") for k in (*e.keys, *e.secondary_keys))
            for e in self.entries
        )


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str)]


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def lorebook_from_character_book(obj: dict[str, Any] | None) -> Lorebook:
    """A Lorebook from a V2/V3 `character_book` object (SillyTavern extensions understood).

    Loads at most the limits above: the first `MAX_ENTRIES` entries, keys up to `MAX_KEY_CHARS`
    long and `MAX_ENTRY_KEYS` an entry, entries until the book holds `MAX_BOOK_KEYS` keys. What
    it leaves out is counted on the book, and `over_limit` names the first limit crossed.
    """
    if not isinstance(obj, dict):
        return Lorebook()
    raws = [raw for raw in obj.get("entries") or [] if isinstance(raw, dict)]
    problems: list[str] = []
    if len(raws) > MAX_ENTRIES:
        problems.append(f"character_book has {len(raws)} entries, the limit is {MAX_ENTRIES}")
    key_lists = [_key_lists(raw) for raw in raws[:MAX_ENTRIES]]
    entries: list[LoreEntry] = []
    left_out_keys = 0
    book_keys = 0
    for index, (raw, lists) in enumerate(zip(raws[:MAX_ENTRIES], key_lists, strict=True)):
        kept = []
        for keys in lists:
            short = [k for k in keys if len(k) <= MAX_KEY_CHARS]
            if len(short) < len(keys):
                longest = max(len(k) for k in keys)
                problems.append(
                    f"a character_book key has {longest} characters, the limit is {MAX_KEY_CHARS}"
                )
            if len(short) > MAX_ENTRY_KEYS:
                problems.append(
                    f"a character_book entry has {len(short)} keys, the limit is {MAX_ENTRY_KEYS}"
                )
            kept.append(short[:MAX_ENTRY_KEYS])
        size = sum(len(keys) for keys in kept)
        if book_keys + size > MAX_BOOK_KEYS:
            total = book_keys + sum(len(k) for lists in key_lists[index:] for k in lists)
            problems.append(f"character_book has {total} keys, the limit is {MAX_BOOK_KEYS}")
            break
        book_keys += size
        left_out_keys += sum(len(keys) for keys in lists) - size
        entries.append(_entry_from(raw, *kept))
    return Lorebook(
        entries=entries,
        name=str(obj.get("name") or ""),
        scan_depth=min(MAX_SCAN_DEPTH, max(0, _int(obj.get("scan_depth"), DEFAULT_SCAN_DEPTH))),
        recursive=obj.get("recursive_scanning") is True,
        left_out_entries=len(raws) - len(entries),
        left_out_keys=left_out_keys,
        over_limit=problems[0] if problems else "",
    )


def _key_lists(raw: dict[str, Any]) -> list[list[str]]:
    """An entry's primary keys, and its secondary keys when it is selective (as SillyTavern
    reads a book, an entry without `selective` is not)."""
    lists = [_str_list(raw.get("keys"))]
    if raw.get("selective") is True:
        lists.append(_str_list(raw.get("secondary_keys")))
    return lists


def _entry_from(
    raw: dict[str, Any], keys: list[str], secondary: list[str] | None = None
) -> LoreEntry:
    ext = raw.get("extensions")
    ext = ext if isinstance(ext, dict) else {}
    logic_value = ext.get("selectiveLogic", 0)
    position = _ST_POSITIONS.get(_int(ext.get("position"), -1))
    if position is None:
        # SillyTavern reads anything but "before_char" (a missing position too) as after.
        before = raw.get("position") == "before_char"
        position = LorePosition.BEFORE_CHAR if before else LorePosition.AFTER_CHAR
    case_sensitive = ext.get("case_sensitive")
    if not isinstance(case_sensitive, bool):
        case_sensitive = raw.get("case_sensitive") is True
    scan_depth = _int(ext.get("scan_depth"), -1)
    groups = str(ext.get("group") or "")
    use_probability = ext.get("useProbability", True) is not False
    probability = _int(ext.get("probability"), 100) if use_probability else 100
    return LoreEntry(
        keys=keys,
        content=str(raw.get("content") or ""),
        secondary_keys=secondary or [],
        logic=SecondaryLogic(_ST_LOGIC.get(logic_value, "and_any")),
        constant=raw.get("constant") is True,
        enabled=raw.get("enabled", True) is not False,
        use_regex=raw.get("use_regex") is True,
        case_sensitive=case_sensitive,
        insertion_order=_int(raw.get("insertion_order"), 100),
        priority=_int(raw.get("priority"), 10),
        name=str(raw.get("name") or raw.get("comment") or ""),
        position=position,
        depth=min(MAX_ENTRY_DEPTH, max(0, _int(ext.get("depth"), DEFAULT_ENTRY_DEPTH))),
        role=_ST_ROLES.get(_int(ext.get("role"), 0), "system"),
        match_whole_words=ext.get("match_whole_words") is True,
        scan_depth=min(MAX_SCAN_DEPTH, scan_depth) if scan_depth >= 0 else None,
        probability=min(100, max(0, probability)),
        groups=tuple(g.strip() for g in groups.split(",") if g.strip()),
        group_override=ext.get("group_override") is True,
        group_weight=max(0, _int(ext.get("group_weight"), DEFAULT_GROUP_WEIGHT)),
        use_group_scoring=ext.get("use_group_scoring") is True,
        sticky=max(0, _int(ext.get("sticky"), 0)),
        cooldown=max(0, _int(ext.get("cooldown"), 0)),
        delay=max(0, _int(ext.get("delay"), 0)),
        exclude_recursion=ext.get("exclude_recursion") is True,
        prevent_recursion=ext.get("prevent_recursion") is True,
        delay_until_recursion=_recursion_level(ext.get("delay_until_recursion")),
    )


def _recursion_level(value: Any) -> int:
    """SillyTavern's `delay_until_recursion`: true (the first step), a step number, or off."""
    if value is True:
        return 1
    return min(MAX_RECURSION_STEPS, max(0, _int(value, 0)))


# --- scanning ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoreHit:
    """An entry and the name of the book it came from (e.g. "card" or "channel")."""

    entry: LoreEntry
    book: str


@dataclass
class LoreScan:
    """What one scan found."""

    matched: list[LoreHit] = field(default_factory=list)
    #: Entries with a regex key disabled because a match of it ran out of time.
    timed_out: list[LoreHit] = field(default_factory=list)
    #: Entries not judged because the scan's time budget ran out: they do not fire.
    unscanned: list[LoreHit] = field(default_factory=list)
    #: For matched entries with `use_group_scoring` that fired on keys: id(entry) to how many of
    #: its primary and secondary keys matched (inclusion groups keep the best scored).
    scores: dict[int, int] = field(default_factory=dict)


class _OutOfTime(Exception):
    """The scan's time budget is spent."""


class _Scanner:
    """Matches one book's keys against one text before a shared deadline."""

    def __init__(self, text: str, folded: str, compiled: _CompiledKeys, deadline: float) -> None:
        self._text = text
        self._folded = folded
        self._compiled = compiled
        self._deadline = deadline

    def judge(self, entry: LoreEntry, keys: _EntryKeys, *, score: bool = False) -> int | None:
        """None when `entry` does not fire; else how many of its keys matched when `score` (all
        of them are tried then), 0 otherwise."""
        case = entry.case_sensitive
        if score:
            primary = sum(self._matches(key, case) for key in keys.primary)
        else:
            primary = int(any(self._matches(key, case) for key in keys.primary))
        if not primary:
            return None
        if not keys.secondary:
            return primary if score else 0
        hits = [self._matches(key, case) for key in keys.secondary]
        if entry.logic is SecondaryLogic.AND_ANY:
            fires = any(hits)
        elif entry.logic is SecondaryLogic.AND_ALL:
            fires = all(hits)
        elif entry.logic is SecondaryLogic.NOT_ANY:
            fires = not any(hits)
        else:
            fires = not all(hits)
        if not fires:
            return None
        return primary + sum(hits) if score else 0

    def _matches(self, key: _Key, case_sensitive: bool) -> bool:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _OutOfTime
        spec = key.regex
        if spec is not None:
            if self._compiled.any_disabled([spec]):
                return False
            pattern = self._compiled.get(spec)
            if pattern is not None:
                return self._search(pattern, spec, left)
        # A plain key, or not a usable regex: text, as SillyTavern matches it.
        text, needle = (self._text, key.text) if case_sensitive else (self._folded, key.folded)
        if needle not in text:
            return False  # no occurrence at all: nothing to compile or search
        return not key.whole_word or self._whole_word(text, needle)

    def _whole_word(self, text: str, needle: str) -> bool:
        """Whether `needle` occurs in `text` as a whole word: no word character just before it,
        none just after it, or (a key ending in Hangul) only Korean particles up to the end of
        the word. Linear in `text` (an escaped key; the particle check is bounded)."""
        pattern = _WHOLE_WORDS.get(needle)
        if pattern is None:
            return True  # cannot happen for escaped text; a substring match then
        if not _ends_in_hangul(needle):
            return pattern.search(text) is not None
        for found in pattern.finditer(text):
            suffix = found.group(1)
            if not suffix or _particles_only(suffix):
                return True
            if time.monotonic() >= self._deadline:
                raise _OutOfTime
        return False

    def _search(self, pattern: Any, spec: tuple[str, int], left: float) -> bool:
        try:
            # concurrent=True: the match runs outside the GIL, so other threads go on.
            found = pattern.search(self._text, timeout=min(KEY_TIMEOUT_S, left), concurrent=True)
        except TimeoutError:
            if left < KEY_TIMEOUT_S:
                raise _OutOfTime from None  # the scan's budget ran out, not necessarily the key's
            self._compiled.disable(spec)
            return False
        return found is not None


def scans_need_worker(scans: Iterable[tuple[Lorebook, Sequence[str]]]) -> bool:
    """Whether scans run one after another (each a book and its texts) may hold a thread long
    enough to stall an event loop: any regex key, or many plain keys over long text (their
    work adds up; whole-word keys are plain work, linear in the text)."""
    work = 0
    for book, texts in scans:
        if book.may_have_regex:
            return True
        work += book.key_count * sum(len(text) for text in texts)
    return work > INLINE_SCAN_WORK


def scan_books(
    books: Mapping[str, Lorebook],
    recent_texts: Sequence[str],
    *,
    budget_s: float = SCAN_BUDGET_S,
    deadline: float | None = None,
) -> LoreScan:
    """The entries that fire on the newest texts of `recent_texts` (oldest first): the newest
    `scan_depth` of them, the entry's own where it has one, else its book's (0: none, so only
    constant entries fire). Pass at least `deepest_scan(book)` texts for each book.

    `books` maps a name to each book; they are scanned in that order under one time budget, so
    put the most trusted first (a book that spends the budget leaves later ones unscanned).
    `deadline` (a `time.monotonic()` value) replaces `budget_s`, so that several scans can share
    one budget. Safe to call from any thread.
    """
    if deadline is None:
        deadline = time.monotonic() + budget_s
    scan = LoreScan()
    texts: dict[int, tuple[str, str]] = {}

    def joined(depth: int) -> tuple[str, str]:
        if depth not in texts:
            text = "\n".join(recent_texts[-depth:]) if depth > 0 else ""
            texts[depth] = (text, text.casefold())
        return texts[depth]

    for name, book in books.items():
        scanners: dict[int, _Scanner] = {}
        for entry, keys in zip(book.entries, book._keys, strict=True):
            if not entry.enabled or not entry.content.strip():
                continue
            hit = LoreHit(entry, name)
            if entry.constant:
                scan.matched.append(hit)
                continue
            depth = book.scan_depth if entry.scan_depth is None else entry.scan_depth
            if depth <= 0 or not keys.primary:
                continue
            scanner = scanners.get(depth)
            if scanner is None:
                scanner = scanners[depth] = _Scanner(*joined(depth), book._compiled, deadline)
            try:
                score = scanner.judge(entry, keys, score=entry.use_group_scoring)
            except _OutOfTime:
                scan.unscanned.append(hit)
            else:
                if score is not None:
                    scan.matched.append(hit)
                    if entry.use_group_scoring:
                        scan.scores[id(entry)] = score
            if keys.regexes and book._compiled.any_disabled(keys.regexes):
                scan.timed_out.append(hit)
    return scan


def fires_at_step(entry: LoreEntry, step: int) -> bool:
    """Whether `entry` may fire when its keys are found at recursion `step` (0: the scan of
    the history; 1 and up: the scans of lore that fired before). An entry that waits for
    recursion fires on lore only, from its own step on (SillyTavern instead moves to the next
    of the levels its entries name only once a step finds nothing new); one that excludes
    recursion never fires on lore."""
    if step == 0:
        return not entry.delay_until_recursion
    return not entry.exclude_recursion and entry.delay_until_recursion <= step


def recursion_steps(allowed: int) -> int:
    """The recursion steps a scan makes where a server allows `allowed` (0: none)."""
    return min(MAX_RECURSION_STEPS, max(0, allowed))


@dataclass(frozen=True)
class FiredEntry:
    entry: LoreEntry
    content: str
    tokens: int
    book: str


def select_entries(
    hits: Sequence[LoreHit],
    *,
    token_budget: int,
    count_tokens: Callable[[str], int],
    render: Callable[[LoreHit], str] = lambda hit: hit.entry.content,
) -> tuple[list[FiredEntry], list[LoreHit]]:
    """The matched entries that fit in `token_budget`, in insertion order, and those that did not.

    As in SillyTavern, a higher insertion order is kept first when the budget runs out (then a
    higher priority) and is inserted closer to the end. At most `token_budget` times
    `MAX_TOKEN_CHARS` characters of entries are counted. `render` gives an entry's text as the
    prompt shows it (its macros depend on the book it came from).
    """
    ranked = sorted(hits, key=lambda h: (-h.entry.insertion_order, -h.entry.priority))
    kept: list[FiredEntry] = []
    skipped: list[LoreHit] = []
    used = 0
    # Counting runs on the caller's thread: a book whose every entry fires (hundreds of long
    # entries naming each other's keys) would have megabytes counted. Text longer than the
    # room left times MAX_TOKEN_CHARS cannot fit and is not counted, and no more than the
    # budget times MAX_TOKEN_CHARS characters are counted in all: entries past that are
    # left out as over budget.
    counted = 0
    for hit in ranked:
        content = render(hit).strip()
        room = token_budget - used
        if (
            len(content) > room * MAX_TOKEN_CHARS
            or counted + len(content) > token_budget * MAX_TOKEN_CHARS
        ):
            skipped.append(hit)
            continue
        counted += len(content)
        tokens = count_tokens(content)
        if used + tokens > token_budget:
            skipped.append(hit)
            continue
        used += tokens
        kept.append(FiredEntry(hit.entry, content, tokens, hit.book))
    kept.sort(key=lambda fired: fired.entry.insertion_order)
    return kept, skipped
