"""Card scripts kept through import and export: SillyTavern cards, RisuAI `.charx` files whose
scripts sit in `module.risum`, and RisuAI modules (`.risum`) added to a character."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest

from synatra_bot.errors import CardError
from synatra_bot.prompt.cards import card_to_png, card_to_v2_json, parse_card
from synatra_bot.prompt.risum import RisuModule, character_book, read_module, write_module
from synatra_bot.prompt.scripts import Stage, apply_scripts, card_scripts, script_count
from synatra_bot.storage import repository as repo
from tests.test_card_scripts import risu, st

MODULE_SCRIPTS = [
    risu("상태창", "<hp>(\\d+)</hp>", "[체력 $1]", "editdisplay"),
    risu("꺼둠", "a", "b", "disabled"),
]
MODULE_LORE = [
    {
        "key": "등대, 바다",
        "secondkey": "",
        "content": "등대는 북쪽 곶에 있다.",
        "comment": "등대",
        "insertorder": 50,
        "alwaysActive": False,
        "mode": "normal",
    },
    {"key": "", "content": "", "comment": "폴더", "mode": "folder"},
]


def module_file(**kw: Any) -> bytes:
    fields = {"name": "테스트 모듈", "scripts": MODULE_SCRIPTS, "lorebook": MODULE_LORE, **kw}
    return write_module(RisuModule(**fields))


def v3_card(**data: Any) -> dict[str, Any]:
    base = {
        "name": "서연",
        "description": "{{char}}는 등대지기다.",
        "first_mes": "안녕.",
        "extensions": {},
    }
    return {"spec": "chara_card_v3", "spec_version": "3.0", "data": {**base, **data}}


def charx_with_module(card: dict[str, Any], module: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("card.json", json.dumps(card, ensure_ascii=False))
        archive.writestr("module.risum", module)
    return out.getvalue()


def test_a_risum_module_is_read_with_its_scripts_and_lorebook() -> None:
    module = read_module(module_file())
    assert module.name == "테스트 모듈"
    assert module.scripts == MODULE_SCRIPTS
    book = character_book(module)
    assert book is not None
    [entry] = book["entries"]  # the folder is left out
    assert entry["keys"] == ["등대", "바다"] and entry["insertion_order"] == 50


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"PK\x03\x04 not a module", "not a RisuAI module"),
        (bytes([0x6F, 0, 0xFF, 0, 0, 0]) + b"{}", "cut short"),
        (bytes([0x6F, 0, 0xFF, 0xFF, 0xFF, 0x7F]), "the limit is"),
        (bytes([0x6F, 0, 2, 0, 0, 0]) + b"\xff\xfe", "not readable JSON"),
    ],
)
def test_an_unreadable_module_says_what_is_wrong(data: bytes, reason: str) -> None:
    with pytest.raises(CardError, match=reason):
        read_module(data)


def test_charx_scripts_in_module_risum_come_back_into_the_card() -> None:
    card = parse_card(charx_with_module(v3_card(), module_file()))
    assert card.extensions["risuai"]["customScripts"] == MODULE_SCRIPTS
    assert card.character_book is not None
    scripts = card_scripts(card.extensions)
    shown = apply_scripts(
        scripts, "<hp>7</hp>", Stage.DISPLAY, role="assistant", char="연", user="나", depth=0
    )
    assert shown == "[체력 7]"


def test_charx_whose_card_has_its_own_scripts_and_book_keeps_them() -> None:
    own = [risu("카드", "x", "y", "editoutput")]
    book = {"entries": [{"keys": ["k"], "content": "c", "insertion_order": 1, "enabled": True}]}
    data = v3_card(extensions={"risuai": {"customScripts": own}}, character_book=book)
    card = parse_card(charx_with_module(data, module_file()))
    assert card.extensions["risuai"]["customScripts"] == own
    assert card.character_book is not None and card.character_book["entries"][0]["keys"] == ["k"]


def test_export_keeps_sillytavern_and_risuai_scripts() -> None:
    scripts = [st("상태창", "/<s>(.*?)</s>/g", "[$1]", [2], markdownOnly=True)]
    data = v3_card(
        extensions={"regex_scripts": scripts, "risuai": {"customScripts": MODULE_SCRIPTS}}
    )
    card = parse_card(json.dumps(data, ensure_ascii=False).encode())
    for exported in (card_to_png(card), card_to_v2_json(card)):
        again = parse_card(exported)
        assert again.extensions["regex_scripts"] == scripts
        assert again.extensions["risuai"]["customScripts"] == MODULE_SCRIPTS
        assert script_count(again.extensions) == 3


# --- through the bot --------------------------------------------------------------------------


async def _import(harness, member, name: str, data: bytes, **options: Any) -> str:
    record = await harness.slash(member, "character import", file=(name, data, "x"), **options)
    return await harness.final_text(record)


async def test_character_import_adds_a_module_to_a_character_the_member_owns(harness):
    s = harness.scenario
    owner = s.members[0]
    character = await harness.character(owner, "서연")
    text = await _import(harness, owner, "모듈.risum", module_file(), character=str(character))
    assert "스크립트 2개" in text and "로어북 항목 1개" in text
    stored = await repo.get_character(harness.sessions, character_id=character)
    assert stored is not None
    assert stored.extensions["risuai"]["customScripts"] == MODULE_SCRIPTS
    assert stored.character_book is not None
    # Adding it again adds nothing twice.
    again = await _import(harness, owner, "모듈.risum", module_file(), character=str(character))
    assert "스크립트 0개" in again
    shown = await harness.slash(owner, "character show", character=str(character))
    await harness.fake.wait_until(lambda: shown.callback_data or shown.followups)
    embeds = (shown.callback_data or {}).get("embeds") or shown.followups[-1].embeds
    assert "카드 스크립트 2개" in embeds[0]["footer"]["text"]


async def test_a_module_without_a_character_or_for_another_members_character_is_refused(harness):
    s = harness.scenario
    owner, other = s.members[0], s.members[1]
    character = await harness.character(owner, "서연")
    text = await _import(harness, owner, "모듈.risum", module_file())
    assert "받을 캐릭터를 골라" in text
    refused = await _import(harness, other, "모듈.risum", module_file(), character=str(character))
    assert "그 캐릭터가 없거나" in refused
    stored = await repo.get_character(harness.sessions, character_id=character)
    assert stored is not None and "risuai" not in stored.extensions


async def test_an_unreadable_module_is_refused_clearly_and_changes_nothing(harness):
    owner = harness.scenario.members[0]
    character = await harness.character(owner, "서연")
    text = await _import(harness, owner, "깨짐.risum", b"not a module", character=str(character))
    assert "RisuAI 모듈(.risum)을 쓸 수 없어요" in text and "not a RisuAI module" in text
    empty = write_module(RisuModule(name="빈 모듈"))
    text = await _import(harness, owner, "빈.risum", empty, character=str(character))
    assert "no scripts and no lorebook" in text
    stored = await repo.get_character(harness.sessions, character_id=character)
    assert stored is not None and "risuai" not in stored.extensions
