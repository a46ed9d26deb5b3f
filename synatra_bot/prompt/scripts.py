"""Card scripts: the find/replace scripts SillyTavern and RisuAI cards carry, run where those
programs run them.

SillyTavern keeps them in `extensions.regex_scripts` (placement 1 the player's input, 2 the
model's output; `markdownOnly` changes only what is shown, `promptOnly` only what the prompt
sees, `minDepth`/`maxDepth` bound how far back a message may be, 0 the newest). RisuAI keeps
them in `extensions.risuai.customScripts` (`editinput`, `editoutput`, `editdisplay` and
`editprocess`, the last changing what the prompt sees). Input and output scripts change the
text before it is stored, so the model later reads what the channel showed.

An edited message runs again only the input or output scripts SillyTavern marks `runOnEdit`
(its editor ticks it for a new script; a script without the field does not run on edit).
RisuAI stores an edited message as typed: none of its scripts run on edit. Display and prompt
scripts run on whatever is stored, edited or not.

Scripts come from card authors, so they run bounded like lorebook keys: a pattern and its
replacement have a size limit, each replacement runs on mrab-regex with a timeout, and all the
scripts for one text share a time budget. A script that fails or runs out of time leaves the
text as it was and is reported (`ScriptRun.failed`); the caller runs `apply_scripts` in a worker
thread (`apply_scripts_async`) so the event loop never waits on one. Failures are logged too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import regex

from synatra_bot.prompt.macros import substitute_macros

log = logging.getLogger(__name__)

#: Scripts read from one card (SillyTavern's and RisuAI's together).
MAX_SCRIPTS = 200
MAX_PATTERN_CHARS = 4_000
MAX_REPLACEMENT_CHARS = 16_000
#: What one script's output may grow to; a longer result is refused (the text stays).
MAX_RESULT_CHARS = 64_000
#: One replacement may take this long; one text's scripts together `TEXT_BUDGET_S`.
SCRIPT_TIMEOUT_S = 0.05
TEXT_BUDGET_S = 0.2
#: The prompt's view of a whole history (every message's scripts together).
HISTORY_BUDGET_S = 0.5
#: mrab-regex expands counted repeats when it compiles: a pattern costing more is refused.
MAX_PATTERN_COST = 50_000
_COUNTED_REPEAT = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
_JS_FLAGS = {"i": regex.IGNORECASE, "s": regex.DOTALL, "m": regex.MULTILINE}
#: SillyTavern's `/pattern/flags` form (greedy: the pattern runs to the last slash).
_SLASHED = re.compile(r"/(.+)/([a-z]*)", re.DOTALL | re.IGNORECASE)
_VALID_ST_FLAGS = re.compile(r"^(?!.*?(.).*?\1)[gmixXsuUAJ]+$")
#: JavaScript's replacement tokens: $$, $&, $`, $', $1..$99, $<name>.
_JS_TOKEN = re.compile(r"\$(\$|&|`|'|\d{1,2}|<[^>]*>)")
_ST_GROUP = re.compile(r"\$(\d+)|\$<([^>]+)>")
_RISU_ORDER = re.compile(r"<(.+?)>")
#: `order N` in a RisuAI flag: ASCII digits as JavaScript's parseInt reads them, bounded so
#: that no card's number is too long for `int` ("²" or thousands of digits are no order).
_RISU_ORDER_NUMBER = re.compile(r"order\s+(-?[0-9]{1,18})", re.ASCII)
#: SillyTavern's placement numbers that a chat message takes.
_USER_INPUT, _AI_OUTPUT = 1, 2
_RISU_TYPES = {
    "editinput": "input",
    "editoutput": "output",
    "editdisplay": "display",
    "editprocess": "prompt",
}


class Stage(StrEnum):
    """Where a script changes text."""

    INPUT = "input"  # the player's line before it is stored
    OUTPUT = "output"  # the model's reply before it is stored and shown
    DISPLAY = "display"  # what the channel shows (the stored text stays)
    PROMPT = "prompt"  # what the prompt sees (the stored text stays)


@dataclass(frozen=True)
class CardScript:
    """One find/replace script, in the terms of either program."""

    name: str
    pattern: str
    flags: int
    replace_all: bool
    replacement: str
    #: (stage, role) pairs the script runs on; role "user" or "assistant".
    runs_on: frozenset[tuple[Stage, str]]
    min_depth: int | None = None
    max_depth: int | None = None
    trim: tuple[str, ...] = ()
    #: SillyTavern: {{char}}/{{user}} replaced in the pattern first (2: escaped).
    substitute_pattern: int = 0
    risu: bool = False
    #: Why the script never runs (disabled, unsupported); "" when it may.
    inactive: str = ""
    #: SillyTavern's `runOnEdit`: runs again when a stored message is edited.
    run_on_edit: bool = False


@dataclass
class ScriptRun:
    """Which scripts changed a text and which failed (name: reason)."""

    changed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: Scripts that failed: not tried again on the other texts of the same run.
    broken: set[int] = field(default_factory=set, repr=False)
    #: Patterns compiled for this run (a prompt's history uses each on every message).
    patterns: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return int(value) if value >= 0 else None


def _st_script(raw: Mapping[str, Any]) -> CardScript | None:
    find = raw.get("findRegex")
    if not isinstance(find, str) or not find:
        return None
    placement = raw.get("placement")
    places = {p for p in placement if isinstance(p, int)} if isinstance(placement, list) else set()
    roles = [r for p, r in ((_USER_INPUT, "user"), (_AI_OUTPUT, "assistant")) if p in places]
    display, prompt = raw.get("markdownOnly") is True, raw.get("promptOnly") is True
    runs_on: set[tuple[Stage, str]] = set()
    for role in roles:
        if display:
            runs_on.add((Stage.DISPLAY, role))
        if prompt:
            runs_on.add((Stage.PROMPT, role))
        if not display and not prompt:
            runs_on.add((Stage.INPUT if role == "user" else Stage.OUTPUT, role))
    pattern, flags, replace_all = _st_pattern(find)
    substitute = raw.get("substituteRegex")
    trim = raw.get("trimStrings")
    replacement = raw.get("replaceString")
    return CardScript(
        name=str(raw.get("scriptName") or "")[:100],
        pattern=pattern,
        flags=flags,
        replace_all=replace_all,
        replacement=replacement if isinstance(replacement, str) else "",
        runs_on=frozenset(runs_on),
        min_depth=_int(raw.get("minDepth")),
        max_depth=_int(raw.get("maxDepth")),
        trim=tuple(t for t in trim if isinstance(t, str) and t) if isinstance(trim, list) else (),
        substitute_pattern=int(substitute) if isinstance(substitute, bool | int) else 0,
        inactive="disabled" if raw.get("disabled") is True else "",
        run_on_edit=raw.get("runOnEdit") is True,
    )


def _st_pattern(find: str) -> tuple[str, int, bool]:
    """SillyTavern's reading of `findRegex`: `/pattern/flags`, or the whole text as a pattern
    without flags (then only the first match is replaced)."""
    slashed = _SLASHED.fullmatch(find)
    if slashed is None or (slashed.group(2) and not _VALID_ST_FLAGS.match(slashed.group(2))):
        return find, 0, False
    letters = slashed.group(2)
    flags = 0
    for letter in letters:
        flags |= _JS_FLAGS.get(letter, 0)
    return slashed.group(1), flags, "g" in letters


def _risu_script(raw: Mapping[str, Any]) -> CardScript | None:
    find, out = raw.get("in"), raw.get("out")
    if not isinstance(find, str) or not isinstance(out, str):
        return None
    stage = _RISU_TYPES.get(str(raw.get("type")))
    flag = raw.get("flag") if isinstance(raw.get("flag"), str) else ""
    letters = (flag or "g") if raw.get("ableFlag") is True else "g"
    actions = [a.strip() for m in _RISU_ORDER.findall(letters) for a in m.split(",")]
    letters = "".join(dict.fromkeys(re.sub(r"[^dgimsuvy]", "", _RISU_ORDER.sub("", letters))))
    inactive = ""
    if raw.get("type") == "disabled" or raw.get("disabled") is True:
        inactive = "disabled"
    elif stage is None:
        inactive = f"type {raw.get('type')!s:.20} is not supported"
    elif not find:
        inactive = "empty pattern"
    elif out.startswith("@@") or any(not a.startswith("order ") for a in actions):
        inactive = "actions (@@) are not supported"
    flags = 0
    for letter in letters:
        flags |= _JS_FLAGS.get(letter, 0)
    replacement = out.replace("$n", "\n").replace("{{data}}", "$&")
    if replacement.endswith(">"):
        replacement += "\n"
    roles = ("user", "assistant")
    runs_on = frozenset((Stage(stage), r) for r in roles) if stage else frozenset()
    return CardScript(
        name=str(raw.get("comment") or "")[:100],
        pattern=find,
        flags=flags,
        replace_all="g" in letters,
        replacement=replacement,
        runs_on=runs_on,
        risu=True,
        inactive=inactive,
    )


def _risu_order(raw: Mapping[str, Any]) -> int:
    flag = raw.get("flag")
    if raw.get("ableFlag") is not True or not isinstance(flag, str):
        return 0
    for meta in _RISU_ORDER.findall(flag):
        for action in meta.split(","):
            action = action.strip()
            order = _RISU_ORDER_NUMBER.fullmatch(action)
            if order is not None:
                return int(order[1])
    return 0


def risu_scripts(raw_scripts: Any) -> list[CardScript]:
    """RisuAI scripts (a card's `customScripts` or a module's `regex`), in the order RisuAI
    runs them: as listed, or by `<order N>` (highest first) where a script sets one."""
    if not isinstance(raw_scripts, list):
        return []
    raws = [r for r in raw_scripts if isinstance(r, dict)]
    if any(_risu_order(r) for r in raws):
        raws.sort(key=_risu_order, reverse=True)
    return [s for s in map(_risu_script, raws) if s is not None]


def card_scripts(extensions: Mapping[str, Any]) -> list[CardScript]:
    """A card's scripts: SillyTavern's `regex_scripts`, then RisuAI's `customScripts` (RisuAI
    runs a card's scripts after its own and SillyTavern has none of RisuAI's)."""
    st = extensions.get("regex_scripts")
    scripts = [s for s in map(_st_script, st) if s] if isinstance(st, list) else []
    risu = extensions.get("risuai")
    if isinstance(risu, dict):
        scripts.extend(risu_scripts(risu.get("customScripts")))
    return scripts[:MAX_SCRIPTS]


def script_count(extensions: Mapping[str, Any]) -> int:
    """How many scripts a card carries (those that never run included)."""
    return len(card_scripts(extensions))


# -- running ---------------------------------------------------------------------------------


class _ScriptFailed(Exception):
    pass


def _cost(pattern: str) -> int:
    cost = len(pattern)
    for low, high in _COUNTED_REPEAT.findall(pattern):
        cost *= max(1, int(high or low or 1))
        if cost > MAX_PATTERN_COST:
            break
    return cost


def _compile(pattern: str, flags: int) -> Any:
    if len(pattern) > MAX_PATTERN_CHARS or _cost(pattern) > MAX_PATTERN_COST:
        raise _ScriptFailed("pattern too large")
    try:
        # Not in mrab-regex's module-wide cache: card patterns are many and untrusted.
        return regex.compile(pattern, flags | regex.V0, cache_pattern=False)
    except (regex.error, ValueError, OverflowError, RecursionError) as error:
        raise _ScriptFailed(f"invalid pattern: {error}"[:200]) from None


def _group(found: Any, key: int | str) -> str:
    try:
        value = found.group(key)
    except (IndexError, regex.error):
        return ""
    return value or ""


def _st_replace(script: CardScript, found: Any, char: str, user: str) -> str:
    """SillyTavern: {{match}} is the whole match; $N and $<name> take groups (trim strings
    taken out of them); macros are replaced last."""
    template = re.sub(r"\{\{match\}\}", "$0", script.replacement, flags=re.IGNORECASE)

    def group(token: re.Match[str]) -> str:
        value = _group(found, int(token[1]) if token[1] is not None else token[2])
        for trim in script.trim:
            value = value.replace(substitute_macros(trim, char=char, user=user), "")
        return value

    return substitute_macros(_ST_GROUP.sub(group, template), char=char, user=user)


def _js_replace(template: str, found: Any, text: str) -> str:
    """JavaScript's `String.replace` tokens, as RisuAI's scripts use them."""

    def token(m: re.Match[str]) -> str:
        t = m[1]
        if t == "$":
            return "$"
        if t == "&":
            return str(found.group(0))
        if t == "`":
            return text[: found.start()]
        if t == "'":
            return text[found.end() :]
        if t.startswith("<"):
            return _group(found, t[1:-1]) if found.re.groupindex else m[0]
        number = int(t)
        if 0 < number <= found.re.groups:
            return _group(found, number)
        if len(t) == 2 and 0 < int(t[0]) <= found.re.groups:
            return _group(found, int(t[0])) + t[1]
        return m[0]

    return _JS_TOKEN.sub(token, template)


def _run_one(
    script: CardScript, text: str, char: str, user: str, deadline: float, run: ScriptRun | None
) -> str:
    pattern_text = script.pattern
    if script.substitute_pattern:
        names = (char, user)
        if script.substitute_pattern == 2:
            names = (regex.escape(char), regex.escape(user))
        pattern_text = substitute_macros(pattern_text, char=names[0], user=names[1])
    key = (pattern_text, script.flags)
    pattern = run.patterns.get(key) if run is not None else None
    if pattern is None:
        pattern = _compile(*key)
        if run is not None:
            run.patterns[key] = pattern
    if len(script.replacement) > MAX_REPLACEMENT_CHARS:
        raise _ScriptFailed("replacement too large")
    left = deadline - time.monotonic()
    if left <= 0:
        raise _ScriptFailed("out of time")
    pieces: list[str] = []
    size, at = 0, 0
    try:
        matches = pattern.finditer(
            text, timeout=min(SCRIPT_TIMEOUT_S, left), concurrent=True, overlapped=False
        )
        for found in matches:
            if script.risu:
                piece = _js_replace(script.replacement, found, text)
            else:
                piece = _st_replace(script, found, char, user)
            pieces.append(text[at : found.start()])
            pieces.append(piece)
            size += found.start() - at + len(piece)
            at = found.end()
            if size > MAX_RESULT_CHARS:
                raise _ScriptFailed("result too large")
            if not script.replace_all:
                break
    except TimeoutError:
        raise _ScriptFailed("ran out of time") from None
    if not pieces:
        return text
    result = "".join(pieces) + text[at:]
    if len(result) > MAX_RESULT_CHARS:
        raise _ScriptFailed("result too large")
    if script.risu:
        result = substitute_macros(result, char=char, user=user)
    return result


def _applies(
    script: CardScript, stage: Stage, role: str, depth: int | None, edit: bool = False
) -> bool:
    if script.inactive or (stage, role) not in script.runs_on:
        return False
    if edit and not script.run_on_edit:
        return False
    if depth is not None and not script.risu:
        if script.min_depth is not None and depth < script.min_depth:
            return False
        if script.max_depth is not None and depth > script.max_depth:
            return False
    return True


def apply_scripts(
    scripts: Sequence[CardScript],
    text: str,
    stage: Stage,
    *,
    role: str,
    char: str,
    user: str,
    depth: int | None = None,
    run: ScriptRun | None = None,
    deadline: float | None = None,
    edit: bool = False,
) -> str:
    """`text` after the scripts that run at `stage` on a message of `role` (`depth` messages
    from the newest, None where the depth bounds do not apply; `edit`: a stored message
    edited, only the scripts that run on edit), within `TEXT_BUDGET_S` or by `deadline` (a
    `time.monotonic()` value). Safe to call from any thread; `run` hears which scripts changed
    the text and which failed (those are not tried again in the same run)."""
    if deadline is None:
        deadline = time.monotonic() + TEXT_BUDGET_S
    for script in scripts:
        if not text or not _applies(script, stage, role, depth, edit):
            continue
        if run is not None and id(script) in run.broken:
            continue
        try:
            changed = _run_one(script, text, char, user, deadline, run)
        except _ScriptFailed as error:
            log.warning(
                "card script %r (%s) left the text as it was: %s", script.name, stage, error
            )
            if run is not None:
                run.failed.append((script.name, str(error)))
                run.broken.add(id(script))
            continue
        if changed != text:
            text = changed
            if run is not None and script.name not in run.changed:
                run.changed.append(script.name)
    return text


def scripts_at(scripts: Iterable[CardScript], stage: Stage) -> bool:
    """Whether any of `scripts` may run at `stage` (nothing to do otherwise)."""
    return any(not s.inactive and any(st is stage for st, _ in s.runs_on) for s in scripts)


async def apply_scripts_async(
    scripts: Sequence[CardScript],
    text: str,
    stage: Stage,
    *,
    role: str,
    char: str,
    user: str,
    depth: int | None = None,
    run: ScriptRun | None = None,
    edit: bool = False,
) -> str:
    """`apply_scripts` in a worker thread (matching releases the GIL), so a hostile pattern
    never holds the event loop; no thread when no script runs at `stage`."""
    if not text or not scripts_at(scripts, stage):
        return text
    return await asyncio.to_thread(
        apply_scripts,
        scripts,
        text,
        stage,
        role=role,
        char=char,
        user=user,
        depth=depth,
        run=run,
        edit=edit,
    )


def apply_to_history(
    scripts: Sequence[CardScript],
    messages: Sequence[tuple[str, str]],
    *,
    char: str,
    user: str,
    run: ScriptRun | None = None,
) -> list[str]:
    """The prompt's view of `messages` ((role, text), oldest first): each after the scripts
    that change only what the prompt sees, its depth counted from the newest (0). All of
    them share `HISTORY_BUDGET_S`; a text past it stays as stored."""
    deadline = time.monotonic() + HISTORY_BUDGET_S
    run = run if run is not None else ScriptRun()
    last = len(messages) - 1
    return [
        apply_scripts(
            scripts,
            text,
            Stage.PROMPT,
            role=role,
            char=char,
            user=user,
            depth=last - index,
            run=run,
            deadline=min(deadline, time.monotonic() + TEXT_BUDGET_S),
        )
        for index, (role, text) in enumerate(messages)
    ]


async def apply_to_history_async(
    scripts: Sequence[CardScript],
    messages: Sequence[tuple[str, str]],
    *,
    char: str,
    user: str,
    run: ScriptRun | None = None,
) -> list[str]:
    """`apply_to_history` in a worker thread; no thread when no script changes the prompt."""
    if not scripts_at(scripts, Stage.PROMPT):
        return [text for _, text in messages]
    return await asyncio.to_thread(
        apply_to_history, scripts, messages, char=char, user=user, run=run
    )
