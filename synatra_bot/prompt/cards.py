"""Character cards: import V1/V2/V3 from JSON, PNG or CHARX; export V3 JSON, or a PNG that
carries the card twice, as SillyTavern writes it (`ccv3` V3 and `chara` V2 text chunks)."""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from synatra_bot.errors import CardError
from synatra_bot.prompt import charx, png
from synatra_bot.prompt.avatars import card_avatar
from synatra_bot.prompt.lorebook import lorebook_from_character_book
from synatra_bot.prompt.risum import MAX_MODULE_JSON_BYTES, character_book, read_module

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
#: V3 fields with attributes of their own. Storage has no columns for them: they are stored
#: among the unknown fields (`stored_extensions`) and read back from there (`v3_fields`).
V3_FIELDS = (
    "nickname",
    "group_only_greetings",
    "creator_notes_multilingual",
    "source",
    "creation_date",
    "modification_date",
    "assets",
)
MAX_LANGUAGE_CHARS = 35

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
    # V3 fields (see V3_FIELDS); `assets` is None where the card has none (the spec then
    # means the card's own image as the main icon).
    nickname: str = ""
    group_only_greetings: list[str] = field(default_factory=list)
    creator_notes_multilingual: dict[str, str] = field(default_factory=dict)
    source: list[str] = field(default_factory=list)
    creation_date: int | float | None = None
    modification_date: int | float | None = None
    assets: list[dict[str, Any]] | None = None
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
    """Parse a character card from PNG, CHARX (zip) or JSON bytes (detected by content).

    Raises CardError naming what is wrong; never returns a half-filled card.
    """
    try:
        if data.startswith(png.PNG_SIGNATURE[:4]):
            return _parse_png(data)
        if charx.is_charx(data):
            return _parse_charx(data)
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


def _parse_charx(data: bytes) -> CharacterCard:
    archive = charx.open_charx(data, max_card_bytes=MAX_JSON_BYTES)
    card = _parse_json_bytes(archive.card_json, avatar=None)
    _add_module(card, archive.head(charx.MODULE_FILE, limit=MAX_MODULE_JSON_BYTES + 6))
    # The main icon (else the first icon) inside the archive becomes the avatar; an icon that
    # cannot be used is skipped, as the image of a PNG card is.
    tried: set[str] = set()
    for asset in charx.icon_assets(card.assets):
        uri = asset["uri"]
        if len(tried) >= charx.MAX_ICON_TRIES:
            break
        if uri in tried:
            continue
        image = archive.embedded(uri, limit=MAX_PNG_BYTES)
        if image is None:
            continue
        tried.add(uri)
        avatar = card_avatar(image)
        if avatar is not None:
            card.avatar = avatar
            # The icon is now the card's own image, which the spec names `ccdefault:`.
            assets = card.assets or []
            card.assets = [{**a, "uri": "ccdefault:"} if a is asset else a for a in assets]
            break
    return card


def _add_module(card: CharacterCard, module_file: bytes | None) -> None:
    """RisuAI moves a card's scripts (and may move its lorebook) into the CHARX's
    `module.risum`: they go back into the card where the card has none of its own. A module
    that cannot be read leaves the card as it is."""
    if module_file is None:
        return
    try:
        module = read_module(module_file)
    except CardError:
        return
    risu = card.extensions.get("risuai")
    risu = dict(risu) if isinstance(risu, dict) else {}
    if module.scripts and not risu.get("customScripts"):
        risu["customScripts"] = module.scripts
        card.extensions["risuai"] = risu
    if card.character_book is None:
        card.character_book = character_book(module)


def json_depth(value: Any) -> int:
    """How deeply a parsed JSON value nests (a scalar is 1), without recursing."""
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
    if json_depth(obj) > MAX_JSON_DEPTH:
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
    values: dict[str, Any] = {
        attr: _text(data, key, MAX_FIELD_CHARS) for attr, key in _TEXT_FIELDS.items()
    }
    greetings = _text_list(data, "alternate_greetings", MAX_FIELD_CHARS)
    tags = [t.strip() for t in _text_list(data, "tags", MAX_TAG_CHARS) if t.strip()]
    extensions = data.get("extensions") or {}
    if not isinstance(extensions, dict):
        raise _bad("field 'extensions' must be an object")
    extensions = dict(extensions)
    book = data.get("character_book")
    if book is not None:
        _check_book(book)
    kept = extensions.get(UNKNOWN_FIELDS_KEY) or {}
    if not isinstance(kept, dict):
        raise _bad(f"field 'extensions.{UNKNOWN_FIELDS_KEY}' must be an object")
    # Fields kept by an earlier export of ours, then the card's own (which win).
    unknown = {**kept, **{k: v for k, v in data.items() if k not in _KNOWN_KEYS}}
    # A V3 card must give its V3 fields the spec's types; in older cards a field of the same
    # name that does not fit stays an unknown field.
    v3, unknown = _split_v3(unknown, strict=spec == "chara_card_v3")
    if unknown:
        extensions[UNKNOWN_FIELDS_KEY] = unknown
    else:
        extensions.pop(UNKNOWN_FIELDS_KEY, None)
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
        **v3,
    )


def _v3_value(name: str, value: Any) -> Any:
    """A V3 field's value checked against the spec's type and the import limits (None reads
    as absent), or CardError."""
    holder = {name: value}
    if name == "nickname":
        return _text(holder, name, MAX_NAME_CHARS)
    if name in ("group_only_greetings", "source"):
        return _text_list(holder, name, MAX_FIELD_CHARS)
    if name == "creator_notes_multilingual":
        return _notes(value)
    if name in ("creation_date", "modification_date"):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(f"field '{name}' must be a number, not {type(value).__name__}")
        if not math.isfinite(value):
            raise _bad(f"field '{name}' must be a finite number")
        return value
    return _assets(value)


def _notes(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    name = "creator_notes_multilingual"
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _bad(f"field '{name}' must be an object of text")
    if len(value) > MAX_LIST_ITEMS:
        raise _bad(f"field '{name}' has {len(value)} languages, limit {MAX_LIST_ITEMS}")
    for language, note in value.items():
        if not language.strip() or len(language) > MAX_LANGUAGE_CHARS:
            raise _bad(f"field '{name}' has an invalid language code {language[:40]!r}")
        if len(note) > MAX_FIELD_CHARS:
            raise _bad(f"the '{language}' note of '{name}' has {len(note)} characters")
    return dict(value)


def _assets(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(a, dict) for a in value):
        raise _bad("field 'assets' must be a list of objects")
    if len(value) > MAX_LIST_ITEMS:
        raise _bad(f"field 'assets' has {len(value)} items, limit {MAX_LIST_ITEMS}")
    for asset in value:
        if not isinstance(asset.get("type"), str) or not isinstance(asset.get("uri"), str):
            raise _bad("an item of 'assets' needs a text 'type' and 'uri'")
        if any(not isinstance(asset.get(k, ""), str) for k in ("name", "ext")):
            raise _bad("an item of 'assets' has a 'name' or 'ext' that is not text")
    return [dict(asset) for asset in value]


def _split_v3(unknown: Mapping[str, Any], *, strict: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The V3 attributes among a card's unknown fields, and the fields left. Strict, a value
    that does not fit is a CardError; otherwise it stays among the fields left."""
    values: dict[str, Any] = {}
    rest = dict(unknown)
    for name in V3_FIELDS:
        if name not in rest:
            continue
        try:
            values[name] = _v3_value(name, rest[name])
        except CardError:
            if strict:
                raise
            continue
        del rest[name]
    return values, rest


def _v3_defaults() -> dict[str, Any]:
    return {
        "nickname": "",
        "group_only_greetings": [],
        "creator_notes_multilingual": {},
        "source": [],
        "creation_date": None,
        "modification_date": None,
        "assets": None,
    }


def split_stored_extensions(extensions: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stored `extensions` as (every V3 attribute, defaults where absent; the extensions left).

    A stored value that does not fit its V3 type reads as absent and is left where it was."""
    kept = extensions.get(UNKNOWN_FIELDS_KEY)
    rest = dict(extensions)
    if not isinstance(kept, dict):
        return _v3_defaults(), rest
    v3, unknown = _split_v3(kept, strict=False)
    if unknown:
        rest[UNKNOWN_FIELDS_KEY] = unknown
    else:
        del rest[UNKNOWN_FIELDS_KEY]
    return {**_v3_defaults(), **v3}, rest


def v3_fields(extensions: Mapping[str, Any]) -> dict[str, Any]:
    """The V3 attributes (see V3_FIELDS) of stored `extensions`, with defaults where absent."""
    return split_stored_extensions(extensions)[0]


def _v3_data(card: CharacterCard) -> dict[str, Any]:
    """The card's V3 fields that are set, as card JSON holds them."""
    data: dict[str, Any] = {}
    if card.nickname:
        data["nickname"] = card.nickname
    if card.group_only_greetings:
        data["group_only_greetings"] = list(card.group_only_greetings)
    if card.creator_notes_multilingual:
        data["creator_notes_multilingual"] = dict(card.creator_notes_multilingual)
    if card.source:
        data["source"] = list(card.source)
    for name in ("creation_date", "modification_date"):
        if getattr(card, name) is not None:
            data[name] = getattr(card, name)
    if card.assets is not None:
        data["assets"] = [dict(asset) for asset in card.assets]
    return data


def stored_extensions(card: CharacterCard) -> dict[str, Any]:
    """`card.extensions` with the card's V3 fields among the unknown fields, as stored."""
    extensions = dict(card.extensions)
    v3 = _v3_data(card)
    if v3:
        kept = extensions.get(UNKNOWN_FIELDS_KEY)
        extensions[UNKNOWN_FIELDS_KEY] = {**(kept if isinstance(kept, dict) else {}), **v3}
    return extensions


def creator_note(creator_notes: str, multilingual: Mapping[str, str], locale: str) -> str:
    """The creator's notes for a user whose client speaks `locale` ("ko", "en-US"): the
    multilingual note of that language, else the English one (`creator_notes` where the
    multilingual notes have no "en"), else any note there is."""
    notes = {
        key.replace("_", "-").split("-")[0].lower(): text
        for key, text in multilingual.items()
        if text.strip()
    }
    language = locale.replace("_", "-").split("-")[0].lower()
    english = notes.get("en") or creator_notes
    return notes.get(language) or english or next(iter(notes.values()), "")


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


def _card_data(card: CharacterCard) -> dict[str, Any]:
    """The card's `data` object: V2 fields, then V3 ones (our own under extensions.synatra_bot)."""
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
    data.update(_v3_data(card))
    data.setdefault("group_only_greetings", [])  # the one V3 field the spec requires
    return data


def card_to_v2_dict(card: CharacterCard) -> dict[str, Any]:
    """The card as a `chara_card_v2` object. Like SillyTavern's, it also holds the V3 fields,
    which V2 readers ignore."""
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": _card_data(card)}


def card_to_v3_dict(card: CharacterCard) -> dict[str, Any]:
    """The card as a `chara_card_v3` object."""
    return {"spec": "chara_card_v3", "spec_version": "3.0", "data": _card_data(card)}


def card_to_v2_json(card: CharacterCard) -> bytes:
    return json.dumps(card_to_v2_dict(card), ensure_ascii=False, indent=2).encode("utf-8")


def card_to_v3_json(card: CharacterCard) -> bytes:
    return json.dumps(card_to_v3_dict(card), ensure_ascii=False, indent=2).encode("utf-8")


def card_to_png(card: CharacterCard) -> bytes:
    """The card in its avatar (or a plain image) as SillyTavern writes one: tEXt `chara` with
    base64 V2 JSON, then tEXt `ccv3` with base64 V3 JSON (which V3 readers prefer)."""
    image = card.avatar if card.avatar is not None else default_avatar()
    chunks = png.iter_chunks(image)
    clean = png.without_text(chunks, CARD_CHUNKS)
    v2 = base64.b64encode(json.dumps(card_to_v2_dict(card), ensure_ascii=False).encode())
    v3 = base64.b64encode(json.dumps(card_to_v3_dict(card), ensure_ascii=False).encode())
    return png.with_text(clean, {"chara": v2, "ccv3": v3})


def default_avatar(size: int = 256) -> bytes:
    """A plain generated PNG for cards without an avatar."""
    from PIL import Image

    image = Image.new("RGB", (size, size), (94, 106, 210))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def macro_name(card: CharacterCard) -> str:
    """What `{{char}}` becomes for `card`: its V3 nickname when it has one, else its name."""
    return card.nickname.strip() or card.name
