"""Character cards: V1/V2/V3 import from JSON and PNG, export round trips, malformed input."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest

from synatra_bot.errors import CardError
from synatra_bot.prompt import png
from synatra_bot.prompt.cards import (
    MAX_FIELD_CHARS,
    MAX_JSON_BYTES,
    MAX_PNG_BYTES,
    UNKNOWN_FIELDS_KEY,
    CharacterCard,
    SpeechLevel,
    card_to_png,
    card_to_v2_json,
    parse_card,
)
from tests.prompt_helpers import b64_json, png_chunk, png_with_text, tiny_png, v2_card


def _json(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def test_v1_flat_json_card_imports_with_unknown_fields_kept():
    card = parse_card(
        _json(
            {
                "name": "준",
                "description": "검사",
                "first_mes": "무슨 일이지?",
                "mes_example": "<START>",
                "create_date": "2023-01-01",
            }
        )
    )
    assert card.name == "준"
    assert card.description == "검사"
    assert card.first_message == "무슨 일이지?"
    assert card.extensions[UNKNOWN_FIELDS_KEY] == {"create_date": "2023-01-01"}


def test_v2_json_card_imports_every_field():
    book = {"entries": [{"keys": ["서울"], "content": "수도", "enabled": True}]}
    card = parse_card(_json(v2_card(character_book=book, extensions={"depth_prompt": {"x": 1}})))
    assert card.name == "민지"
    assert card.personality == "밝고 수다스럽다"
    assert card.alternate_greetings == ["어서 와요!"]
    assert card.tags == ["로맨스"]
    assert card.character_book == book
    assert card.extensions["depth_prompt"] == {"x": 1}
    assert card.avatar is None


def test_v3_json_card_keeps_v3_only_fields_in_extensions():
    obj = v2_card(nickname="밍", group_only_greetings=["다들 안녕"])
    obj["spec"], obj["spec_version"] = "chara_card_v3", "3.0"
    card = parse_card(_json(obj))
    assert card.name == "민지"
    assert card.extensions[UNKNOWN_FIELDS_KEY]["nickname"] == "밍"


def test_png_card_with_chara_chunk_imports_and_keeps_avatar_without_card_text():
    data = png_with_text({"chara": b64_json(v2_card())})
    card = parse_card(data, filename="minji.png")
    assert card.name == "민지"
    assert card.avatar is not None
    assert b"chara" not in card.avatar
    assert png.iter_chunks(card.avatar)[0].type == b"IHDR"


def test_png_card_prefers_ccv3_over_chara():
    v3 = v2_card(name="세 번째")
    v3["spec"] = "chara_card_v3"
    data = png_with_text({"chara": b64_json(v2_card(name="두 번째")), "ccv3": b64_json(v3)})
    assert parse_card(data).name == "세 번째"


def test_png_card_in_compressed_ztxt_chunk_imports():
    body = b"chara\0\0" + zlib.compress(b64_json(v2_card()))
    image = tiny_png()
    iend = image.rindex(b"IEND") - 4
    data = image[:iend] + png_chunk(b"zTXt", body) + image[iend:]
    assert parse_card(data).name == "민지"


def test_v2_json_export_round_trips():
    card = parse_card(_json(v2_card()))
    card.speech_level = SpeechLevel.INFORMAL
    card.nsfw = True
    again = parse_card(card_to_v2_json(card))
    assert again == card
    exported = json.loads(card_to_v2_json(card))
    assert exported["spec"] == "chara_card_v2"
    assert exported["data"]["first_mes"] == "안녕하세요, {{user}}님!"


def test_png_export_round_trips_with_avatar():
    card = parse_card(png_with_text({"chara": b64_json(v2_card())}))
    exported = card_to_png(card)
    again = parse_card(exported)
    assert again == card
    assert again.avatar == card.avatar


def test_png_export_without_avatar_generates_an_image_sillytavern_can_read():
    card = CharacterCard(name="하늘", description="{{char}}은 하늘을 난다.", tags=["판타지"])
    exported = card_to_png(card)
    texts = png.text_chunks(png.iter_chunks(exported), max_text_bytes=MAX_JSON_BYTES)
    # SillyTavern reads the tEXt chunk "chara" holding base64 V2 JSON.
    data = json.loads(base64.b64decode(texts["chara"]))
    assert data["spec"] == "chara_card_v2"
    assert data["data"]["name"] == "하늘"
    again = parse_card(exported)
    assert again.name == "하늘"
    assert again.description == card.description
    assert again.avatar is not None


@pytest.mark.parametrize(
    ("tags", "extensions", "nsfw"),
    [
        (["NSFW"], {}, True),
        (["19금"], {}, True),
        (["로맨스"], {"chub": {"nsfw": True}}, True),
        (["로맨스"], {}, False),
    ],
)
def test_nsfw_is_detected_on_import(tags, extensions, nsfw):
    assert parse_card(_json(v2_card(tags=tags, extensions=extensions))).nsfw is nsfw


def _truncated_png() -> bytes:
    data = png_with_text({"chara": b64_json(v2_card())})
    return data[: len(data) // 2]


def _bad_crc_png() -> bytes:
    data = bytearray(png_with_text({"chara": b64_json(v2_card())}))
    index = data.index(b"chara") + 10
    data[index] ^= 0x01
    return bytes(data)


def _huge_chunk_png() -> bytes:
    image = tiny_png()
    iend = image.rindex(b"IEND") - 4
    header = struct.pack(">I4s", 0xFFFFFFF0, b"tEXt")
    return image[:iend] + header + b"chara\0AAAA"


def _deep_json() -> bytes:
    inner = "[" * 100_000 + "]" * 100_000
    return ('{"name": "민지", "extensions": {"x": ' + inner + "}}").encode()


def _moderately_deep_json() -> bytes:
    inner = "[" * 40 + "]" * 40
    return ('{"name": "민지", "extensions": {"x": ' + inner + "}}").encode()


def _pixel_bomb_png() -> bytes:
    image = bytearray(png_with_text({"chara": b64_json(v2_card())}))
    ihdr = image.index(b"IHDR")
    image[ihdr + 4 : ihdr + 12] = struct.pack(">II", 100_000, 100_000)
    crc = zlib.crc32(bytes(image[ihdr : ihdr + 17]))
    image[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(image)


def _ztxt_bomb_png() -> bytes:
    body = b"chara\0\0" + zlib.compress(b"A" * (40 * 1024 * 1024), 9)
    image = tiny_png()
    iend = image.rindex(b"IEND") - 4
    return image[:iend] + png_chunk(b"zTXt", body) + image[iend:]


MALFORMED = {
    "not a card": (b"GIF89a\x00\x00", "neither a PNG"),
    "empty": (b"", "neither a PNG"),
    "png signature only": (png.PNG_SIGNATURE, "truncated"),
    "truncated png": (_truncated_png(), "truncated"),
    "png without card chunk": (tiny_png(), "no character card"),
    "corrupt chunk": (_bad_crc_png(), "CRC"),
    "huge chunk length": (_huge_chunk_png(), "truncated"),
    "invalid base64": (png_with_text({"chara": b"!!!not base64!!!"}), "base64"),
    "base64 of garbage": (png_with_text({"chara": base64.b64encode(b"\xff\xfe")}), "UTF-8"),
    "invalid json": ('{"name": "민지",'.encode(), "invalid"),
    "json array": (b"[1, 2]", "JSON object"),
    "json nested too deep": (_deep_json(), "nested deeper"),
    "json nested 40 levels": (_moderately_deep_json(), "nested deeper"),
    "missing name": (_json(v2_card(name="")), "no name"),
    "name not text": (_json(v2_card(name=3)), "'name' must be text"),
    "v2 without data": (_json({"spec": "chara_card_v2"}), "no 'data'"),
    "unknown spec": (_json({"spec": "chara_card_v9", "data": {}}), "unknown card spec"),
    "oversized json": (_json(v2_card(description="가" * (MAX_JSON_BYTES // 2))), "limit"),
    "oversized field": (_json(v2_card(personality="a" * (MAX_FIELD_CHARS + 1))), "personality"),
    "oversized png": (png.PNG_SIGNATURE + b"\0" * MAX_PNG_BYTES, "limit"),
    "greetings not list": (_json(v2_card(alternate_greetings="hi")), "alternate_greetings"),
    "bad lorebook": (_json(v2_card(character_book={"entries": "x"})), "character_book"),
    "pixel bomb": (_pixel_bomb_png(), "too large"),
    "ztxt bomb": (_ztxt_bomb_png(), "size limit"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_card_raises_a_clear_card_error(case):
    data, expected = MALFORMED[case]
    with pytest.raises(CardError) as caught:
        parse_card(data, filename="bad.card")
    error = caught.value
    assert error.key == "error.card"
    assert expected in error.params["reason"]
    assert "bad.card" in str(error)
    assert expected in str(error)


def test_a_risuai_card_with_a_large_private_chunk_imports():
    """RisuAI keeps its own data (several MiB) in a text chunk beside a small `chara` chunk:
    chunks the parser never reads are carried, not refused; the card chunk is still bounded."""
    private = b"x" * (3 * 1024 * 1024 + 512 * 1024)
    data = png_with_text({"chara": b64_json(v2_card(name="리스")), "risuai": private})
    assert parse_card(data, filename="risu.png").name == "리스"
    oversized = png_with_text({"chara": b"A" * (png.MAX_TEXT_CHUNK_BYTES + 1)})
    with pytest.raises(CardError, match="too large"):
        parse_card(oversized, filename="big.png")


def test_the_sample_card_in_the_repository_imports():
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "examples" / "haeun.json"
    card = parse_card(sample.read_bytes(), filename=sample.name)
    assert card.name == "하은" and "{{char}}" in card.first_message and card.alternate_greetings
