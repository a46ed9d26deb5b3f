"""Character cards: V1/V2/V3 import from JSON and PNG, export round trips, malformed input."""

from __future__ import annotations

import base64
import dataclasses
import json
import struct
import zlib
from datetime import UTC, datetime
from typing import Any

import pytest

from synatra_bot.errors import CardError
from synatra_bot.prompt import png
from synatra_bot.prompt.cards import (
    MAX_FIELD_CHARS,
    MAX_JSON_BYTES,
    MAX_PNG_BYTES,
    UNKNOWN_FIELDS_KEY,
    V3_FIELDS,
    CharacterCard,
    SpeechLevel,
    card_to_png,
    card_to_v2_json,
    card_to_v3_json,
    creator_note,
    parse_card,
)
from synatra_bot.roleplay.characters import (
    card_from_record,
    columns_from_card,
    creator_notes_of,
    group_greetings_of,
    names_of,
)
from synatra_bot.storage.records import CharacterRecord
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


def _v3(**data: Any) -> dict[str, Any]:
    obj = v2_card(**data)
    obj["spec"], obj["spec_version"] = "chara_card_v3", "3.0"
    return obj


def _full_v3_data() -> dict[str, Any]:
    """A V3 card's `data` with every V3 field, Korean text, a lorebook and all greetings."""
    book = {
        "name": "서울 설정",
        "scan_depth": 10,
        "token_budget": 500,
        "recursive_scanning": False,
        "extensions": {},
        "entries": [
            {
                "keys": ["카페", "커피"],
                "secondary_keys": ["밤"],
                "selective": True,
                "content": "{{char}}는 카페 '달빛'에서 밤에 일한다.",
                "extensions": {},
                "enabled": True,
                "insertion_order": 10,
                "use_regex": False,
                "constant": False,
                "id": 1,
                "comment": "일터",
                "priority": 5,
                "position": "after_char",
            },
            {
                "keys": [],
                "content": "서울에는 비가 자주 온다.",
                "extensions": {},
                "enabled": True,
                "insertion_order": 1,
                "use_regex": False,
                "constant": True,
            },
        ],
    }
    return _v3(
        alternate_greetings=["비 오는 날엔 라떼죠.", "어, 또 왔네요, {{user}}님?"],
        creator_notes="A cheerful student who works at a café.",
        character_book=book,
        extensions={"depth_prompt": {"prompt": "존댓말을 쓴다.", "depth": 4, "role": "system"}},
        nickname="밍밍",
        group_only_greetings=["다들 모였네? 나도 끼워 줘!", "{{user}}, 여기야!"],
        creator_notes_multilingual={"en": "A cheerful student.", "ko": "밝은 대학생 민지예요."},
        source=["https://example.com/cards/minji", "chub:minji-1234"],
        creation_date=1700000000,
        modification_date=1710000000.5,
        assets=[
            {"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"},
            {
                "type": "background",
                "uri": "https://example.com/비.webp",
                "name": "비",
                "ext": "webp",
            },
            {
                "type": "emotion",
                "uri": "data:image/png;base64,iVBORw0KGgo=",
                "name": "happy",
                "ext": "png",
            },
        ],
        x_future_field={"kept": "그대로"},
    )["data"]


def _record(card: CharacterCard) -> CharacterRecord:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    columns = columns_from_card(card)
    return CharacterRecord(
        id=1,
        owner_id=1,
        guild_id=None,
        visibility="private",
        approval="none",
        created_at=now,
        updated_at=now,
        **columns,
    )


def test_v3_json_card_reads_every_v3_field_into_attributes():
    data = _full_v3_data()
    card = parse_card(_json({"spec": "chara_card_v3", "spec_version": "3.0", "data": data}))
    for name in V3_FIELDS:
        assert getattr(card, name) == data[name], name
    # Only fields this importer does not know stay among the unknown fields.
    assert card.extensions[UNKNOWN_FIELDS_KEY] == {"x_future_field": {"kept": "그대로"}}


def test_v3_fields_of_a_v2_chunk_written_by_sillytavern_are_read_too():
    card = parse_card(_json(v2_card(group_only_greetings=["다들 안녕"], nickname="밍")))
    assert card.group_only_greetings == ["다들 안녕"] and card.nickname == "밍"
    assert UNKNOWN_FIELDS_KEY not in card.extensions


def test_v3_card_with_a_v3_field_of_the_wrong_type_is_refused():
    with pytest.raises(CardError, match="group_only_greetings"):
        parse_card(_json(_v3(group_only_greetings="안녕")))
    with pytest.raises(CardError, match="creation_date"):
        parse_card(_json(_v3(creation_date="2024-01-01")))


def test_v1_card_field_named_like_a_v3_field_but_not_fitting_stays_unknown():
    card = parse_card(_json({"name": "준", "source": "https://example.com"}))
    assert card.source == []
    assert card.extensions[UNKNOWN_FIELDS_KEY] == {"source": "https://example.com"}


def test_v3_fields_are_stored_in_extensions_and_read_back_from_the_record():
    card = parse_card(_json({"spec": "chara_card_v3", "data": _full_v3_data()}))
    record = _record(card)
    assert record.extensions[UNKNOWN_FIELDS_KEY]["nickname"] == "밍밍"
    assert card_from_record(record) == card


def test_names_and_group_greetings_are_read_from_stored_v3_fields():
    card = parse_card(_json(_v3(nickname=" 밍 ", group_only_greetings=["다들 안녕", "  "])))
    record = _record(card)
    assert names_of(record) == ("민지", "밍")
    assert group_greetings_of(record) == ["다들 안녕"]
    # What an older import stored (any value, unchecked) reads the same, or as absent.
    older = dataclasses.replace(
        record, extensions={UNKNOWN_FIELDS_KEY: {"nickname": 3, "group_only_greetings": ["하이"]}}
    )
    assert names_of(older) == ("민지",)
    assert group_greetings_of(older) == ["하이"]


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("ko", "밝은 대학생 민지예요."),
        ("en-US", "A cheerful student."),
        ("ja", "A cheerful student."),
    ],
)
def test_creator_notes_are_chosen_by_the_users_language(locale, expected):
    card = parse_card(_json({"spec": "chara_card_v3", "data": _full_v3_data()}))
    assert creator_notes_of(_record(card), locale=locale) == expected


def test_creator_notes_fall_back_to_creator_notes_then_to_any_language():
    assert creator_note("English notes", {"ko": "한국어 노트"}, "en-GB") == "English notes"
    assert creator_note("English notes", {"ko-KR": "한국어 노트"}, "ko") == "한국어 노트"
    assert creator_note("", {"ko": "한국어 노트"}, "en-US") == "한국어 노트"
    assert creator_note("Notes", {}, "ko") == "Notes"


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


def test_png_card_prefers_ccv3_when_it_comes_before_chara():
    data = png_with_text({"ccv3": b64_json(_v3(name="세 번째")), "chara": b64_json(v2_card())})
    assert parse_card(data).name == "세 번째"


def test_png_card_with_two_different_chara_chunks_reads_the_first():
    image = png_with_text({"chara": b64_json(v2_card(name="첫 번째"))})
    data = png_with_text({"chara": b64_json(v2_card(name="두 번째"))}, image=image)
    assert parse_card(data).name == "첫 번째"


def test_png_card_chunk_keyword_is_matched_in_any_case():
    assert parse_card(png_with_text({"Chara": b64_json(v2_card(name="대문자"))})).name == "대문자"


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


def test_png_export_writes_a_v2_chara_chunk_then_a_v3_ccv3_chunk_with_the_same_data():
    card = parse_card(_json({"spec": "chara_card_v3", "data": _full_v3_data()}))
    chunks = png.iter_chunks(card_to_png(card))
    keywords = [c.data.partition(b"\0")[0] for c in chunks if c.type == b"tEXt"]
    assert keywords == [b"chara", b"ccv3"]
    texts = png.text_chunks(chunks, max_text_bytes=MAX_JSON_BYTES * 2)
    v2, v3 = (json.loads(base64.b64decode(texts[k])) for k in ("chara", "ccv3"))
    assert (v2["spec"], v2["spec_version"]) == ("chara_card_v2", "2.0")
    assert (v3["spec"], v3["spec_version"]) == ("chara_card_v3", "3.0")
    assert v2["data"] == v3["data"]
    assert v3["data"]["nickname"] == "밍밍"


def test_json_export_is_v3_with_every_v3_field_at_the_top_level():
    data = _full_v3_data()
    card = parse_card(_json({"spec": "chara_card_v3", "spec_version": "3.0", "data": data}))
    exported = json.loads(card_to_v3_json(card))
    assert (exported["spec"], exported["spec_version"]) == ("chara_card_v3", "3.0")
    for name in V3_FIELDS:
        assert exported["data"][name] == data[name], name
    assert exported["data"]["character_book"] == data["character_book"]


def test_v3_card_round_trips_through_json_export():
    card = parse_card(_json({"spec": "chara_card_v3", "data": _full_v3_data()}))
    assert parse_card(card_to_v3_json(card)) == card


def test_v3_card_round_trips_through_png_export_with_its_avatar():
    card = parse_card(png_with_text({"ccv3": b64_json(_v3(**_full_v3_data()))}))
    assert card.avatar is not None and card.nickname == "밍밍"
    again = parse_card(card_to_png(card))
    assert again == card


def test_v3_card_round_trips_through_storage_and_both_exports():
    card = parse_card(png_with_text({"ccv3": b64_json(_v3(**_full_v3_data()))}))
    stored = card_from_record(_record(card))
    assert parse_card(card_to_png(stored)) == card
    assert parse_card(card_to_v3_json(stored)) == dataclasses.replace(card, avatar=None)


def test_v3_card_without_group_only_greetings_exports_an_empty_list():
    card = CharacterCard(name="하늘")
    assert json.loads(card_to_v3_json(card))["data"]["group_only_greetings"] == []


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
    "kept fields not an object": (
        _json(v2_card(extensions={UNKNOWN_FIELDS_KEY: 3}, x=1)),
        "extensions.unknown_fields",
    ),
    "v3 assets not objects": (_json(_v3(assets=["icon.png"])), "assets"),
    "v3 date not finite": (
        b'{"spec": "chara_card_v3", "data": {"name": "a", "creation_date": Infinity}}',
        "finite",
    ),
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
