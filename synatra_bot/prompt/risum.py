"""RisuAI modules (`.risum`, also `module.risum` inside a RisuAI `.charx`): their scripts and
lorebook.

A module file is one byte 0x6F, a version byte 0, a little-endian u32 length and that many bytes
of JSON `{"type": "risuModule", "module": {...}}` with every byte passed through RisuAI's fixed
byte substitution ("RPack"); the module's images follow and are not read here. The module's
`regex` list holds RisuAI custom scripts, its `lorebook` list RisuAI lore entries, which become a
character book as a card carries it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from synatra_bot.errors import CardError

MAGIC = 0x6F
VERSION = 0
#: The module's JSON may be this large (a module of many scripts and lore entries is well
#: under a megabyte; its images follow it and are not read).
MAX_MODULE_JSON_BYTES = 4 * 1024 * 1024
MAX_JSON_DEPTH = 64
MAX_LORE_ENTRIES = 500
#: RPack's decoding: byte b of the file stands for `_DECODE[b]`.
_DECODE = bytes.fromhex(
    "2cf7848bc965fbb69faeb3032d0169741fe4a3ecee5c3421934a0f6ae262029e"
    "229cfd3cfc71c7c6ad596705706d8a4412fa24865fafd17a47cefe5063dd5106"
    "6f18e052a8099d56734cb8536cc3a00e19cf3e0d7e07326846ea48f9992eaba4"
    "49205e5535380cbcd3b1581679280a1ae1f2cdc439dba2ba6072767d95ef7fc8"
    "c0de3794bfb51481922545ace7f566a72b365ac113e34b3ae88d831b7c27b09a"
    "42eb87aadc548e7826d25729d4b7f82f8f8975f04177c21effd81511e5049717"
    "f331d09b00d7cab44f2a3bd9b26bda5da13f3061bd913d4ee6dfbe4d828c1d23"
    "109864f485337b9043bba988f1d6a51cf6cc6eb95b0b96edd5e9c5cb08a68040"
)
_ENCODE = bytes(_DECODE.index(b) for b in range(256))


@dataclass
class RisuModule:
    name: str
    #: RisuAI custom scripts as the module stores them.
    scripts: list[dict[str, Any]] = field(default_factory=list)
    #: RisuAI lore entries as the module stores them.
    lorebook: list[dict[str, Any]] = field(default_factory=list)


def _bad(reason: str) -> CardError:
    return CardError(f"RisuAI module: {reason}", key="error.risum", reason=reason)


def is_risum(data: bytes) -> bool:
    return len(data) >= 6 and data[0] == MAGIC and data[1] == VERSION


def read_module(data: bytes) -> RisuModule:
    """The scripts and lorebook of a `.risum` file; CardError says what could not be read."""
    if not is_risum(data):
        raise _bad("not a RisuAI module (.risum) file")
    (length,) = struct.unpack_from("<I", data, 2)
    if length > MAX_MODULE_JSON_BYTES:
        raise _bad(f"its data is {length} bytes, the limit is {MAX_MODULE_JSON_BYTES}")
    if 6 + length > len(data):
        raise _bad("the file is cut short")
    raw = data[6 : 6 + length].translate(_DECODE)
    try:
        main = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad("its data is not readable JSON") from None
    if not isinstance(main, dict) or main.get("type") != "risuModule":
        raise _bad("its data is not a module")
    module = main.get("module")
    if not isinstance(module, dict):
        raise _bad("its data holds no module")
    if _depth(module) > MAX_JSON_DEPTH:
        raise _bad(f"its data nests deeper than {MAX_JSON_DEPTH} levels")
    scripts, lore = module.get("regex"), module.get("lorebook")
    return RisuModule(
        name=str(module.get("name") or "")[:200],
        scripts=[s for s in scripts if isinstance(s, dict)] if isinstance(scripts, list) else [],
        lorebook=[e for e in lore if isinstance(e, dict)] if isinstance(lore, list) else [],
    )


def write_module(module: RisuModule) -> bytes:
    """A `.risum` file of `module` (no images), as RisuAI writes one."""
    body = {"name": module.name, "regex": module.scripts, "lorebook": module.lorebook}
    text = json.dumps({"module": body, "type": "risuModule"}, ensure_ascii=False, indent=2)
    encoded = text.encode("utf-8").translate(_ENCODE)
    return bytes([MAGIC, VERSION]) + struct.pack("<I", len(encoded)) + encoded + b"\x00"


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _keys(value: Any) -> list[str]:
    return [k.strip() for k in value.split(",") if k.strip()] if isinstance(value, str) else []


def character_book(module: RisuModule) -> dict[str, Any] | None:
    """The module's lore entries as a card's `character_book` (folders left out); None when
    it has none."""
    entries = []
    for raw in module.lorebook[:MAX_LORE_ENTRIES]:
        if raw.get("mode") == "folder":
            continue
        content = raw.get("content")
        order = raw.get("insertorder")
        entries.append(
            {
                "keys": _keys(raw.get("key")),
                "secondary_keys": _keys(raw.get("secondkey")),
                "content": content if isinstance(content, str) else "",
                "comment": str(raw.get("comment") or "")[:200],
                "insertion_order": order if isinstance(order, int) else 100,
                "enabled": True,
                "constant": raw.get("alwaysActive") is True,
                "selective": raw.get("selective") is True,
                "use_regex": raw.get("useRegex") is True,
                "extensions": {},
            }
        )
    if not entries:
        return None
    return {"name": module.name, "entries": entries, "extensions": {}}
