"""Character cards: import V1/V2/V3 from JSON or PNG, export V2 JSON or PNG."""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from synatra_bot.errors import CardError
from synatra_bot.prompt import png
from synatra_bot.prompt.avatars import card_avatar
from synatra_bot.prompt.lorebook import lorebook_from_character_book

MAX_PNG_BYTES = 8 * 1024 * 1024
MAX_JSON_BYTES = 1024 * 1024
MAX_FIELD_CHARS = 64_000
MAX_NAME_CHARS = 100
MAX_LIST_ITEMS = 500
MAX_TAG_CHARS = 100
MAX_JSON_DEPTH = 32
#: Where this bot keeps its own fields inside `extensions` on export.
EXTENSION_KEY = "synatra_bot"
#: Card fields this importer did not recognise, kept for a lossless export.
UNKNOWN_FIELDS_KEY = "unknown_fields"

_TEXT_FIELDS = {
    # card attribute: V2 data key
    "description": "description",
    "personality": "personality",
    "scenario": "scenario",
    "first_message": "first_mes",
    "example_messages": "mes_example",
    "system_prompt": "system_prompt",
    "post_history_instructions": "post_history_instructions",
    "creator_notes": "creator_notes",
    "creator": "creator",
    "character_version": "character_version",
}
_KNOWN_KEYS = {
    "name",
    "alternate_greetings",
    "tags",
    "extensions",
    "character_book",
    *_TEXT_FIELDS.values(),
}
_V1_IGNORED = {"spec", "spec_version", "data"}
_NSFW_TAGS = {"nsfw", "18+", "r18", "r-18", "adult", "성인", "19금", "후방주의"}


class SpeechLevel(StrEnum):
    """How the character addresses the user in Korean."""

    FORMAL = "formal"  # 존댓말
    INFORMAL = "informal"  # 반말


@dataclass
class CharacterCard:
    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_message: str = ""
    alternate_greetings: list[str] = field(default_factory=list)
    example_messages: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    creator_notes: str = ""
    tags: list[str] = field(default_factory=list)
    creator: str = ""
    character_version: str = ""
    extensions: dict[str, Any] = field(default_factory=dict)
    character_book: dict[str, Any] | None = None
    avatar: bytes | None = None
    nsfw: bool = False
    speech_level: SpeechLevel | None = None


#: The PNG text chunks that hold a card (V3 first); other text chunks are not read.
CARD_CHUNKS = frozenset({"ccv3", "chara"})


def _bad(reason: str) -> CardError:
    return CardError(f"invalid character card: {reason}", reason=reason)


def _fail(reason: str, filename: str | None) -> CardError:
    where = f" {filename}" if filename else ""
    return CardError(
        f"invalid character card{where}: {reason}", reason=reason, filename=filename or ""
    )


def parse_card(data: bytes, *, filename: str | None = None) -> CharacterCard:
    """Parse a character card from PNG or JSON bytes (detected by content).

    Raises CardError naming what is wrong; never returns a half-filled card.
    """
    try:
        if data.startswith(png.PNG_SIGNATURE[:4]):
            return _parse_png(data)
        return _parse_json_bytes(data, avatar=None)
    except CardError as exc:
        reason = exc.params.get("reason", str(exc))
        raise _fail(reason, filename) from None


def _parse_png(data: bytes) -> CharacterCard:
    if len(data) > MAX_PNG_BYTES:
        raise _bad(f"PNG is {len(data)} bytes, the limit is {MAX_PNG_BYTES}")
    chunks = png.iter_chunks(data, read=CARD_CHUNKS)
    texts = png.text_chunks(chunks, max_text_bytes=MAX_JSON_BYTES * 2, read=CARD_CHUNKS)
    keyword = "ccv3" if "ccv3" in texts else "chara" if "chara" in texts else None
    if keyword is None:
        raise _bad("PNG has no character card (no 'chara' or 'ccv3' text chunk)")
    try:
        raw = base64.b64decode(texts[keyword].strip(), validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"'{keyword}' chunk is not valid base64") from None
    card = _parse_json_bytes(raw, avatar=None)
    # The image becomes the avatar shrunk and re-encoded (see avatars.py); one that cannot be
    # used is dropped, and the card imports without it.
    card.avatar = card_avatar(png.without_text(chunks, CARD_CHUNKS))
    return card


def _depth(value: Any) -> int:
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
    return deepest


def _parse_json_bytes(raw: bytes, *, avatar: bytes | None) -> CharacterCard:
    if len(raw) > MAX_JSON_BYTES:
        raise _bad(f"card JSON is {len(raw)} bytes, the limit is {MAX_JSON_BYTES}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _bad("card is neither a PNG nor UTF-8 JSON") from None
    if not text.lstrip().startswith("{"):
        raise _bad("card is neither a PNG nor a JSON object")
    try:
        obj = json.loads(text)
    except RecursionError:
        raise _bad(f"card JSON is nested deeper than {MAX_JSON_DEPTH}") from None
    except json.JSONDecodeError as exc:
        raise _bad(f"card JSON is invalid ({exc.msg} at line {exc.lineno})") from None
    if _depth(obj) > MAX_JSON_DEPTH:
        raise _bad(f"card JSON is nested deeper than {MAX_JSON_DEPTH}")
    return card_from_dict(obj, avatar=avatar)


def card_from_dict(obj: Any, *, avatar: bytes | None = None) -> CharacterCard:
    """Build a card from a decoded V1 (flat), V2 or V3 JSON object."""
    if not isinstance(obj, dict):
        raise _bad("card JSON is not an object")
    spec = obj.get("spec")
    if spec in ("chara_card_v2", "chara_card_v3"):
        data = obj.get("data")
        if not isinstance(data, dict):
            raise _bad(f"{spec} card has no 'data' object")
    elif spec is None:
        data = {k: v for k, v in obj.items() if k not in _V1_IGNORED}
    else:
        raise _bad(f"unknown card spec {str(spec)[:40]!r}")

    name = _text(data, "name", MAX_NAME_CHARS).strip()
    if not name:
        raise _bad("card has no name")
    values = {attr: _text(data, key, MAX_FIELD_CHARS) for attr, key in _TEXT_FIELDS.items()}
    greetings = _text_list(data, "alternate_greetings", MAX_FIELD_CHARS)
    tags = [t.strip() for t in _text_list(data, "tags", MAX_TAG_CHARS) if t.strip()]
    extensions = data.get("extensions") or {}
    if not isinstance(extensions, dict):
        raise _bad("field 'extensions' must be an object")
    extensions = dict(extensions)
    book = data.get("character_book")
    if book is not None:
        _check_book(book)
    unknown = {k: v for k, v in data.items() if k not in _KNOWN_KEYS}
    if unknown:
        extensions[UNKNOWN_FIELDS_KEY] = {**extensions.get(UNKNOWN_FIELDS_KEY, {}), **unknown}
    own = extensions.get(EXTENSION_KEY)
    own = dict(own) if isinstance(own, dict) else {}
    if EXTENSION_KEY in extensions:
        # Our own fields become attributes; anything else of ours stays in extensions.
        rest = {k: v for k, v in own.items() if k not in ("speech_level", "nsfw")}
        if rest:
            extensions[EXTENSION_KEY] = rest
        else:
            del extensions[EXTENSION_KEY]
    speech = own.get("speech_level")
    speech_level = SpeechLevel(speech) if speech in ("formal", "informal") else None
    nsfw = bool(own.get("nsfw")) or _looks_nsfw(tags, extensions)
    return CharacterCard(
        name=name,
        alternate_greetings=greetings,
        tags=tags,
        extensions=extensions,
        character_book=book,
        avatar=avatar,
        nsfw=nsfw,
        speech_level=speech_level,
        **values,
    )


def _text(data: dict[str, Any], key: str, limit: int) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad(f"field '{key}' must be text, not {type(value).__name__}")
    if len(value) > limit:
        raise _bad(f"field '{key}' has {len(value)} characters, limit {limit}")
    return value


def _text_list(data: dict[str, Any], key: str, limit: int) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"field '{key}' must be a list of text")
    if len(value) > MAX_LIST_ITEMS:
        raise _bad(f"field '{key}' has {len(value)} items, limit {MAX_LIST_ITEMS}")
    for item in value:
        if len(item) > limit:
            raise _bad(f"an item of '{key}' has {len(item)} characters")
    return list(value)


def _check_book(book: Any) -> None:
    if not isinstance(book, dict):
        raise _bad("field 'character_book' must be an object")
    entries = book.get("entries", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise _bad("'character_book.entries' must be a list of objects")
    for entry in entries:
        content = entry.get("content", "")
        if not isinstance(content, str) or len(content) > MAX_FIELD_CHARS:
            raise _bad("a character_book entry has invalid or oversized content")
        keys = entry.get("keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _bad("a character_book entry has invalid 'keys'")
    # The loader applies the lorebook limits (entries, keys, key length); a card is refused
    # where stored data that predates them is cut.
    over_limit = lorebook_from_character_book(book).over_limit
    if over_limit:
        raise _bad(over_limit)


def _looks_nsfw(tags: list[str], extensions: dict[str, Any]) -> bool:
    if any(tag.casefold() in _NSFW_TAGS for tag in tags):
        return True
    if extensions.get("nsfw") is True:
        return True
    chub = extensions.get("chub")
    return isinstance(chub, dict) and chub.get("nsfw") is True


def card_to_v2_dict(card: CharacterCard) -> dict[str, Any]:
    """The card as a `chara_card_v2` object (our own fields under extensions.synatra_bot)."""
    extensions = dict(card.extensions)
    own = dict(extensions.get(EXTENSION_KEY) or {})
    own["nsfw"] = card.nsfw
    if card.speech_level is not None:
        own["speech_level"] = card.speech_level.value
    else:
        own.pop("speech_level", None)
    extensions[EXTENSION_KEY] = own
    data: dict[str, Any] = {"name": card.name}
    data.update({key: getattr(card, attr) for attr, key in _TEXT_FIELDS.items()})
    data["alternate_greetings"] = list(card.alternate_greetings)
    data["tags"] = list(card.tags)
    data["extensions"] = extensions
    if card.character_book is not None:
        data["character_book"] = card.character_book
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}


def card_to_v2_json(card: CharacterCard) -> bytes:
    return json.dumps(card_to_v2_dict(card), ensure_ascii=False, indent=2).encode("utf-8")


def card_to_png(card: CharacterCard) -> bytes:
    """The card embedded (tEXt 'chara', base64 V2 JSON) in its avatar or a plain image."""
    image = card.avatar if card.avatar is not None else default_avatar()
    chunks = png.iter_chunks(image)
    clean = png.without_text(chunks, CARD_CHUNKS)
    payload = base64.b64encode(json.dumps(card_to_v2_dict(card), ensure_ascii=False).encode())
    return png.with_text(clean, {"chara": payload})


def default_avatar(size: int = 256) -> bytes:
    """A plain generated PNG for cards without an avatar."""
    from PIL import Image

    image = Image.new("RGB", (size, size), (94, 106, 210))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
