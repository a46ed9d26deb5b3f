"""CHARX cards (a zip with card.json and assets): import with the icon as the avatar, hostile
archives refused with a clear error and nothing stored, and the `/character` commands."""

from __future__ import annotations

import io
import json
import stat
import warnings
import zipfile
from typing import Any

import pytest

from synatra_bot.errors import CardError
from synatra_bot.prompt import charx
from synatra_bot.prompt.avatars import normalise_avatar
from synatra_bot.prompt.cards import MAX_JSON_BYTES, parse_card
from synatra_bot.storage import repository as repo
from tests.prompt_helpers import tiny_png

ICON = "assets/icon/images/main.png"


def _card(**data: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "서연",
        "description": "{{char}}는 등대지기다.",
        "first_mes": "바람이 세네요, {{user}}.",
        "alternate_greetings": ["어서 와요."],
        "group_only_greetings": ["다들 왔네요."],
        "nickname": "연",
        "creator_notes": "A lighthouse keeper.",
        "creator_notes_multilingual": {"en": "A lighthouse keeper.", "ko": "등대지기 서연이에요."},
        "tags": ["판타지"],
        "extensions": {},
        "assets": [{"type": "icon", "uri": f"embeded://{ICON}", "name": "main", "ext": "png"}],
    }
    base.update(data)
    return {"spec": "chara_card_v3", "spec_version": "3.0", "data": base}


def _zip(
    files: dict[str, bytes] | None = None,
    *,
    card: dict[str, Any] | None = None,
    infos: tuple[tuple[zipfile.ZipInfo, bytes], ...] = (),
) -> bytes:
    """A CHARX in memory: card.json (unless `card` is {}), then `files`, then raw entries."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        if card != {}:
            body = json.dumps(card or _card(), ensure_ascii=False).encode()
            archive.writestr("card.json", body)
        for name, data in (files or {}).items():
            archive.writestr(name, data)
        for info, data in infos:
            archive.writestr(info, data)
    return out.getvalue()


def _unix(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    return info


def test_charx_imports_with_its_main_icon_as_the_avatar():
    icon = tiny_png(8, 8)
    card = parse_card(_zip({ICON: icon}), filename="seoyeon.charx")
    assert card.name == "서연" and card.nickname == "연"
    assert card.group_only_greetings == ["다들 왔네요."]
    assert card.avatar == normalise_avatar(icon)
    # The icon is now the card's own image, as the spec names it.
    assert card.assets == [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}]


def test_charx_prefers_the_icon_named_main_over_an_earlier_icon():
    assets = [
        {"type": "icon", "uri": "embeded://assets/icon/images/side.png", "name": "side"},
        {"type": "icon", "uri": f"embeded://{ICON}", "name": "main", "ext": "png"},
    ]
    side, main = tiny_png(6, 6), tiny_png(10, 10)
    data = _zip({"assets/icon/images/side.png": side, ICON: main}, card=_card(assets=assets))
    assert parse_card(data).avatar == normalise_avatar(main)


def test_charx_without_a_main_icon_uses_the_first_icon():
    assets = [
        {"type": "background", "uri": "embeded://assets/background/images/bg.png", "name": "bg"},
        {"type": "icon", "uri": "embeded://assets/icon/images/a.png", "name": "a", "ext": "png"},
        {"type": "icon", "uri": "embeded://assets/icon/images/b.png", "name": "b", "ext": "png"},
    ]
    first = tiny_png(6, 6)
    files = {
        "assets/background/images/bg.png": tiny_png(12, 12),
        "assets/icon/images/a.png": first,
        "assets/icon/images/b.png": tiny_png(9, 9),
    }
    card = parse_card(_zip(files, card=_card(assets=assets)))
    assert card.avatar == normalise_avatar(first)
    assert card.assets is not None and card.assets[1]["uri"] == "ccdefault:"


def test_charx_whose_icon_is_missing_or_unreadable_imports_without_an_avatar():
    assert parse_card(_zip()).avatar is None
    card = parse_card(_zip({ICON: b"not an image"}))
    assert card.avatar is None
    assert card.assets is not None and card.assets[0]["uri"] == f"embeded://{ICON}"


def test_charx_with_directory_entries_and_other_files_imports():
    data = _zip({"assets/": b"", "module.risum": b"\x00" * 64, ICON: tiny_png()})
    assert parse_card(data).avatar is not None


def _ratio_bomb() -> bytes:
    return _zip({"assets/other/zeros.bin": b"\0" * (4 * 1024 * 1024)})


def _too_many_files() -> bytes:
    return _zip({f"assets/other/{n}.txt": b"x" for n in range(charx.MAX_ENTRIES)})


def _oversized_card_json() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("card.json", b" " * (MAX_JSON_BYTES + 1))
    return out.getvalue()


def _encrypted() -> bytes:
    """An archive whose icon is marked encrypted (zipfile cannot write one)."""
    data = bytearray(_zip({ICON: tiny_png()}))
    central = data.rindex(b"PK\x01\x02")  # the icon's entry comes last
    local = data.rindex(b"PK\x03\x04", 0, central)
    data[central + 8] |= 0x1
    data[local + 6] |= 0x1
    return bytes(data)


def _duplicate_card_json() -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns of the duplicate name
        return _zip({"card.json": json.dumps(_card(name="가짜")).encode()})


HOSTILE = {
    "bomb by ratio": (_ratio_bomb, "zip bomb"),
    "too many files": (_too_many_files, "entries, the limit is"),
    "traversal": (lambda: _zip({"../x": b"x"}), "outside the archive"),
    "traversal with backslashes": (lambda: _zip({"assets\\..\\..\\x": b"x"}), "outside"),
    "absolute path": (lambda: _zip({"/x": b"x"}), "absolute path"),
    "drive letter": (lambda: _zip({"C:/x": b"x"}), "absolute path"),
    "symlink entry": (
        lambda: _zip(infos=((_unix(ICON, stat.S_IFLNK | 0o777), b"/etc/passwd"),)),
        "symbolic link",
    ),
    "device entry": (lambda: _zip(infos=((_unix("dev", stat.S_IFCHR | 0o666), b""),)), "regular"),
    "oversized card.json": (_oversized_card_json, "card.json is"),
    "missing card.json": (lambda: _zip({ICON: tiny_png()}, card={}), "no card.json"),
    "card.json in a folder only": (
        lambda: _zip({"seoyeon/card.json": json.dumps(_card()).encode()}, card={}),
        "no card.json",
    ),
    "duplicate card.json": (_duplicate_card_json, "two entries"),
    "encrypted entry": (_encrypted, "encrypted"),
    "not a zip": (lambda: b"PK\x03\x04" + b"\0" * 64, "not a readable zip"),
    "card.json not a card": (lambda: _zip(card={"spec": "chara_card_v3"}), "no 'data'"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_charx_is_refused_with_a_clear_error(case):
    make, expected = HOSTILE[case]
    with pytest.raises(CardError) as caught:
        parse_card(make(), filename="bad.charx")
    error = caught.value
    assert error.key == "error.card"
    assert expected in error.params["reason"]
    assert "bad.charx" in str(error)


def test_charx_entry_over_the_per_file_limit_is_refused(monkeypatch):
    monkeypatch.setattr(charx, "MAX_ENTRY_BYTES", 4096)
    with pytest.raises(CardError, match="the limit is 4096"):
        parse_card(_zip({"assets/other/big.bin": bytes(range(256)) * 20}))


def test_charx_over_the_total_inflated_size_is_refused(monkeypatch):
    monkeypatch.setattr(charx, "MAX_TOTAL_BYTES", 4096)
    files = {f"assets/other/{n}.bin": bytes(range(256)) * 4 for n in range(5)}
    with pytest.raises(CardError, match="in all"):
        parse_card(_zip(files))


def test_charx_declaring_too_many_entries_is_refused_before_its_directory_is_read():
    data = bytearray(_zip())
    end = data.rindex(b"PK\x05\x06")
    data[end + 10 : end + 12] = (charx.MAX_ENTRIES + 1).to_bytes(2, "little")
    with pytest.raises(CardError, match="entries, the limit is"):
        parse_card(bytes(data))


# --- through the bot --------------------------------------------------------------------------


async def _stored(harness, member):
    s = harness.scenario
    return await repo.visible_characters(
        harness.sessions, guild_id=s.guild.id, user_id=member.user.id
    )


async def _exported(harness, member, character: int, fmt: str) -> bytes:
    exported = await harness.slash(member, "character export", character=str(character), format=fmt)
    message = await harness.fake.wait_until(
        lambda: next((m for m in [*exported.followups, exported.original] if m), None)
    )
    [attachment] = message.attachments
    return attachment.data


async def test_character_import_accepts_a_charx_attachment(harness):
    member = harness.scenario.members[0]
    data = _zip({ICON: tiny_png(8, 8)})
    record = await harness.slash(
        member, "character import", file=("서연.charx", data, "application/zip")
    )
    assert "서연" in await harness.final_text(record)
    [stored] = await _stored(harness, member)
    assert stored.avatar == normalise_avatar(tiny_png(8, 8))


async def test_imported_charx_round_trips_through_png_and_json_export(harness):
    member = harness.scenario.members[0]
    data = _zip({ICON: tiny_png(8, 8)})
    await harness.final_text(
        await harness.slash(member, "character import", file=("서연.charx", data, "x"))
    )
    [stored] = await _stored(harness, member)
    card = parse_card(data)
    assert parse_card(await _exported(harness, member, stored.id, "png")) == card
    from_json = parse_card(await _exported(harness, member, stored.id, "json"))
    assert from_json.avatar is None
    from_json.avatar = card.avatar
    assert from_json == card


async def test_hostile_charx_attachment_is_refused_and_nothing_is_stored(harness):
    member = harness.scenario.members[0]
    record = await harness.slash(
        member, "character import", file=("bad.charx", _zip({"../x": b"x"}), "application/zip")
    )
    text = await harness.final_text(record)
    assert "캐릭터 카드를 읽을 수 없어요" in text and "outside the archive" in text
    assert await _stored(harness, member) == []


async def test_character_show_gives_the_creator_note_in_the_users_language(harness):
    member = harness.scenario.members[0]
    imported = await harness.slash(
        member, "character import", file=("서연.charx", _zip(), "application/zip")
    )
    await harness.final_text(imported)
    [stored] = await _stored(harness, member)

    async def notes(locale: str) -> str:
        shown = await harness.slash(
            member, "character show", character=str(stored.id), locale=locale
        )
        await harness.fake.wait_until(lambda: shown.callback_data or shown.followups)
        embeds = (shown.callback_data or {}).get("embeds") or shown.followups[-1].embeds
        return " ".join(f["value"] for f in embeds[0].get("fields", []))

    assert "등대지기 서연이에요." in await notes("ko")
    english = await notes("en-US")
    assert "A lighthouse keeper." in english and "등대지기" not in english
