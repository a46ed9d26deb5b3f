"""SillyTavern World Info files: reading them (and lorebooks in cards) as a `character_book`,
and writing a `character_book` back as a standalone World Info file.

The field mapping follows SillyTavern's own (`originalWIDataKeyMap` in `world-info.js` and
`convertWorldInfoToCharacterBook` on its server), so a file survives the round trip.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable
from typing import Any

from synatra_bot.errors import CardError, LorebookError
from synatra_bot.prompt import charx, png
from synatra_bot.prompt.cards import (
    MAX_FIELD_CHARS,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    card_from_dict,
    json_depth,
    parse_card,
)
from synatra_bot.prompt.lorebook import lorebook_from_character_book

#: The largest lorebook file read (a World Info JSON, a card JSON or a card PNG).
MAX_LOREBOOK_BYTES = 8 * 1024 * 1024
MAX_NAME_CHARS = 200

# World Info entry field -> character_book extension key, for the fields kept as they are.
_EXTENSION_FIELDS = {
    "displayIndex": "display_index",
    "excludeRecursion": "exclude_recursion",
    "preventRecursion": "prevent_recursion",
    "delayUntilRecursion": "delay_until_recursion",
    "selectiveLogic": "selectiveLogic",
    "depth": "depth",
    "probability": "probability",
    "useProbability": "useProbability",
    "position": "position",
    "role": "role",
    "matchWholeWords": "match_whole_words",
    "useGroupScoring": "use_group_scoring",
    "caseSensitive": "case_sensitive",
    "scanDepth": "scan_depth",
    "group": "group",
    "groupOverride": "group_override",
    "groupWeight": "group_weight",
    "sticky": "sticky",
    "cooldown": "cooldown",
    "delay": "delay",
    "automationId": "automation_id",
    "vectorized": "vectorized",
}
_INT_FIELDS = frozenset(
    {
        "order",
        "displayIndex",
        "selectiveLogic",
        "depth",
        "probability",
        "position",
        "role",
        "scanDepth",
        "groupWeight",
        "sticky",
        "cooldown",
        "delay",
    }
)
_BOOL_FIELDS = frozenset(
    {
        "excludeRecursion",
        "preventRecursion",
        "useProbability",
        "matchWholeWords",
        "useGroupScoring",
        "caseSensitive",
        "groupOverride",
        "vectorized",
        "constant",
        "selective",
        "disable",
    }
)
_TEXT_FIELDS = frozenset({"comment", "content", "group", "automationId"})


def _bad(reason: str, filename: str | None = None) -> LorebookError:
    return LorebookError(reason, filename=filename)


def parse_lorebook_file(data: bytes, *, filename: str | None = None) -> dict[str, Any]:
    """A lorebook in `character_book` form from a SillyTavern World Info JSON, a
    `character_book` JSON, or a character card (JSON, PNG or CHARX) that carries one.

    Raises LorebookError naming what is wrong; never returns a half-read book.
    """
    try:
        book = _read(data, filename)
        over_limit = lorebook_from_character_book(book).over_limit
        if over_limit:
            raise _bad(over_limit)
    except LorebookError as exc:
        raise _bad(exc.reason, filename) from None
    return book


def _read(data: bytes, filename: str | None) -> dict[str, Any]:
    if len(data) > MAX_LOREBOOK_BYTES:
        raise _bad(f"the file is {len(data)} bytes, the limit is {MAX_LOREBOOK_BYTES}")
    if data.startswith(png.PNG_SIGNATURE[:4]) or charx.is_charx(data):
        return _from_card(data, filename)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _bad("the file is neither UTF-8 JSON nor a card image") from None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise _bad(f"the JSON is nested deeper than {MAX_JSON_DEPTH}") from None
    except json.JSONDecodeError as exc:
        raise _bad(f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(obj, dict):
        raise _bad("the JSON is not an object")
    if json_depth(obj) > MAX_JSON_DEPTH:
        raise _bad(f"the JSON is nested deeper than {MAX_JSON_DEPTH}")
    entries = obj.get("entries")
    if isinstance(entries, dict):
        return _from_world_info(obj, _stem(filename))
    if isinstance(entries, list):
        return _clean_book(obj, _stem(filename))
    if "entries" in obj:
        raise _bad("'entries' must be an object (World Info) or a list (character_book)")
    if any(k in obj for k in ("spec", "data", "first_mes", "char_name")):
        # A card's JSON, already decoded; one past a card's own size limit is refused as such.
        return _from_card(obj if len(data) <= MAX_JSON_BYTES else data, filename)
    raise _bad("the file has no lorebook entries")


def _stem(filename: str | None) -> str:
    if not filename:
        return ""
    return filename.rsplit("/", 1)[-1].rsplit(".", 1)[0][:MAX_NAME_CHARS]


def _from_card(data: bytes | dict[str, Any], filename: str | None) -> dict[str, Any]:
    """The lorebook of a card file, or of a card's JSON already decoded."""
    try:
        if isinstance(data, dict):
            card = card_from_dict(data)
        else:
            card = parse_card(data, filename=filename)
    except CardError as exc:
        raise _bad(f"the card cannot be read: {exc.params.get('reason', exc)}") from None
    if not card.character_book:
        raise _bad("the character card has no lorebook")
    return _clean_book(card.character_book, card.name)


# --- World Info -> character_book ---------------------------------------------------------------


#: The longest number written as text that is read (SillyTavern's editor writes some numbers
#: as text, e.g. "displayIndex": "3").
_MAX_NUMBER_TEXT = 20
#: An entry's key that is its uid (ASCII digits, short enough for `int`: "²" is not one).
_ENTRY_SLOT = re.compile(r"[0-9]{1,18}", re.ASCII)


def _number(value: Any, field: str) -> int:
    if isinstance(value, str) and 0 < len(value.strip()) <= _MAX_NUMBER_TEXT:
        with contextlib.suppress(ValueError):
            value = float(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"an entry's '{field}' must be a number")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise _bad(f"an entry's '{field}' must be a whole number")
        return int(value)
    return int(value)


def _checked(raw: dict[str, Any], field: str) -> Any:
    """The entry's `field` when it is there (None when missing or null), of the right type."""
    value = raw.get(field)
    if value is None:
        return None
    if field == "delayUntilRecursion":
        # SillyTavern stores true/false, or the recursion level to wait for.
        return value if isinstance(value, bool) else _number(value, field)
    if field in _INT_FIELDS:
        return _number(value, field)
    if field in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise _bad(f"an entry's '{field}' must be true or false")
        return value
    if field in _TEXT_FIELDS:
        if not isinstance(value, str):
            raise _bad(f"an entry's '{field}' must be text")
        if len(value) > MAX_FIELD_CHARS:
            raise _bad(f"an entry's '{field}' has {len(value)} characters, limit {MAX_FIELD_CHARS}")
        return value
    return value


def _keys(value: Any, field: str) -> list[str]:
    """A key list: text items kept, anything else in it dropped; a lone text is one key."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if not isinstance(value, list):
        raise _bad(f"an entry's '{field}' must be a list of text")
    return [k for k in value if isinstance(k, str)]


def _name(obj: dict[str, Any], fallback: str) -> str:
    name = obj.get("name")
    return name[:MAX_NAME_CHARS] if isinstance(name, str) and name.strip() else fallback


def _from_world_info(obj: dict[str, Any], fallback_name: str) -> dict[str, Any]:
    raws = obj["entries"]
    if not raws:
        raise _bad("the World Info file has no entries")
    if not all(isinstance(raw, dict) for raw in raws.values()):
        raise _bad("every World Info entry must be an object")
    numbered: list[tuple[int, dict[str, Any]]] = []
    for slot, raw in raws.items():
        uid = raw.get("uid")
        if uid is None:
            uid = int(slot) if _ENTRY_SLOT.fullmatch(slot) else len(numbered)
        numbered.append((_number(uid, "uid"), raw))
    display = {uid: _display_index(raw) for uid, raw in numbered}
    numbered.sort(key=lambda item: (_display_or(display[item[0]], item[0]), item[0]))
    book: dict[str, Any] = {
        "name": _name(obj, fallback_name),
        "entries": [_entry_from_world_info(uid, raw) for uid, raw in numbered],
    }
    if obj.get("recursive_scanning") is not None:
        book["recursive_scanning"] = _recursive(obj["recursive_scanning"])
    return book


def _recursive(value: Any) -> bool:
    """A book's `recursive_scanning`: true or false."""
    if not isinstance(value, bool):
        raise _bad("'recursive_scanning' must be true or false")
    return value


def _display_index(raw: dict[str, Any]) -> int | None:
    """The entry's place in SillyTavern's editor list; one that is not a number is left out
    (it orders the editor only, so it never costs the whole book)."""
    try:
        value: int | None = _checked(raw, "displayIndex")
    except LorebookError:
        return None
    return value


def _display_or(display_index: int | None, uid: int) -> int:
    return uid if display_index is None else display_index


def _entry_from_world_info(uid: int, raw: dict[str, Any]) -> dict[str, Any]:
    """One entry as SillyTavern reads it: its own fields only. A nested `extensions` object
    (left by a card's book) is kept, but its settings never stand in for the entry's. Without
    `position` an entry goes before the character (0, what SillyTavern's editor gives it), and
    without `useProbability` its `probability` is not rolled (SillyTavern rolls only when it
    is set)."""
    extensions: dict[str, Any] = {}
    own = raw.get("extensions")
    if isinstance(own, dict):
        extensions.update(own)
    for field, key in _EXTENSION_FIELDS.items():
        value = _display_index(raw) if field == "displayIndex" else _checked(raw, field)
        if value is None:
            extensions.pop(key, None)
        else:
            extensions[key] = value
    extensions.setdefault("position", 0)
    extensions.setdefault("useProbability", False)  # SillyTavern rolls only when it is set
    comment = _checked(raw, "comment") or ""
    content = _checked(raw, "content") or ""
    position = extensions["position"]
    order = _checked(raw, "order")
    return {
        "id": uid,
        "keys": _keys(raw.get("key"), "key"),
        "secondary_keys": _keys(raw.get("keysecondary"), "keysecondary"),
        "comment": comment,
        "name": comment,
        "content": content,
        "constant": _checked(raw, "constant") is True,
        "selective": _checked(raw, "selective") is True,
        "enabled": _checked(raw, "disable") is not True,
        "insertion_order": 100 if order is None else order,
        "position": "before_char" if position == 0 else "after_char",
        "case_sensitive": extensions.get("case_sensitive") is True,
        "extensions": extensions,
    }


# --- character_book (as stored or in a card) ----------------------------------------------------


def _clean_book(book: dict[str, Any], fallback_name: str) -> dict[str, Any]:
    """A copy of a `character_book` with the types the prompt builder expects."""
    raws = book.get("entries")
    if not isinstance(raws, list) or not all(isinstance(raw, dict) for raw in raws):
        raise _bad("'entries' must be a list of objects")
    if not raws:
        raise _bad("the lorebook has no entries")
    cleaned: dict[str, Any] = {"name": _name(book, fallback_name)}
    for field in ("scan_depth", "token_budget"):
        if book.get(field) is not None:
            cleaned[field] = _number(book[field], field)
    if book.get("recursive_scanning") is not None:
        cleaned["recursive_scanning"] = _recursive(book["recursive_scanning"])
    cleaned["entries"] = [_clean_entry(raw) for raw in raws]
    return cleaned


def _clean_entry(raw: dict[str, Any]) -> dict[str, Any]:
    entry = dict(raw)
    content = raw.get("content", "")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise _bad("an entry's 'content' must be text")
    if len(content) > MAX_FIELD_CHARS:
        raise _bad(f"an entry's 'content' has {len(content)} characters, limit {MAX_FIELD_CHARS}")
    entry["content"] = content
    entry["keys"] = _keys(raw.get("keys"), "keys")
    entry["secondary_keys"] = _keys(raw.get("secondary_keys"), "secondary_keys")
    for field in ("comment", "name"):
        if field in raw and not isinstance(raw[field], str | None):
            raise _bad(f"an entry's '{field}' must be text")
    extensions = raw.get("extensions")
    if extensions is None:
        entry["extensions"] = {}
    elif not isinstance(extensions, dict):
        raise _bad("an entry's 'extensions' must be an object")
    return entry


# --- character_book -> World Info -----------------------------------------------------------------


def _ext(extensions: dict[str, Any], key: str, default: Any, accept: Callable[[Any], bool]) -> Any:
    value = extensions.get(key)
    return value if value is not None and accept(value) else default


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def world_info_from_book(book: dict[str, Any], *, name: str = "") -> dict[str, Any]:
    """A standalone SillyTavern World Info object (entries keyed by their uid) from a
    `character_book`; what the book leaves out gets SillyTavern's defaults."""
    raws = [raw for raw in book.get("entries") or [] if isinstance(raw, dict)]
    used: set[int] = set()
    entries: dict[str, Any] = {}
    for index, raw in enumerate(raws):
        stored = raw.get("id")
        uid = stored if isinstance(stored, int) and _is_int(stored) else -1
        if uid < 0 or uid in used:
            uid = index
            while uid in used:
                uid += 1
        used.add(uid)
        entries[str(uid)] = _world_info_entry(uid, index, raw)
    result: dict[str, Any] = {"entries": entries}
    title = name or book.get("name")
    if isinstance(title, str) and title:
        result["name"] = title
    if book.get("recursive_scanning") is True:
        result["recursive_scanning"] = True
    return result


def _world_info_entry(uid: int, index: int, raw: dict[str, Any]) -> dict[str, Any]:
    ext = raw.get("extensions")
    ext = ext if isinstance(ext, dict) else {}
    comment = raw.get("comment") or raw.get("name") or ""
    comment = comment if isinstance(comment, str) else ""
    keys = raw.get("keys")
    secondary = raw.get("secondary_keys")
    order = raw.get("insertion_order")
    position = _ext(ext, "position", 0 if raw.get("position") == "before_char" else 1, _is_int)
    case_sensitive = _ext(ext, "case_sensitive", None, _is_bool)
    if case_sensitive is None and raw.get("case_sensitive") is True:
        case_sensitive = True
    delay_until = ext.get("delay_until_recursion")
    return {
        "uid": uid,
        "key": [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else [],
        "keysecondary": (
            [k for k in secondary if isinstance(k, str)] if isinstance(secondary, list) else []
        ),
        "comment": comment,
        "content": raw.get("content") if isinstance(raw.get("content"), str) else "",
        "constant": raw.get("constant") is True,
        "vectorized": _ext(ext, "vectorized", False, _is_bool),
        "selective": raw.get("selective") is True,
        "selectiveLogic": _ext(ext, "selectiveLogic", 0, _is_int),
        "addMemo": bool(comment),
        "order": order if _is_int(order) else 100,
        "position": position,
        "disable": raw.get("enabled", True) is False,
        "excludeRecursion": _ext(ext, "exclude_recursion", False, _is_bool),
        "preventRecursion": _ext(ext, "prevent_recursion", False, _is_bool),
        "delayUntilRecursion": delay_until if isinstance(delay_until, bool | int) else False,
        "probability": _ext(ext, "probability", 100, _is_int),
        "useProbability": _ext(ext, "useProbability", True, _is_bool),
        "depth": _ext(ext, "depth", 4, _is_int),
        "group": _ext(ext, "group", "", _is_text),
        "groupOverride": _ext(ext, "group_override", False, _is_bool),
        "groupWeight": _ext(ext, "group_weight", 100, _is_int),
        "scanDepth": _ext(ext, "scan_depth", None, _is_int),
        "caseSensitive": case_sensitive,
        "matchWholeWords": _ext(ext, "match_whole_words", None, _is_bool),
        "useGroupScoring": _ext(ext, "use_group_scoring", None, _is_bool),
        "automationId": _ext(ext, "automation_id", "", _is_text),
        "role": _ext(ext, "role", 0, _is_int),
        "sticky": _ext(ext, "sticky", None, _is_int),
        "cooldown": _ext(ext, "cooldown", None, _is_int),
        "delay": _ext(ext, "delay", None, _is_int),
        "displayIndex": _ext(ext, "display_index", index, _is_int),
    }
