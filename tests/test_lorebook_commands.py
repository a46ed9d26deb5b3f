"""/lorebook import|export|clear and /config lorebook-budget through the fake Discord, and the
0005 migration that adds the budget."""

from __future__ import annotations

import json

from synatra_bot.storage import repository as repo
from tests.db_helpers import (
    assert_kept_down_and_up,
    assert_old_scene_kept,
    opened,
    upgraded_from_0001,
)

WORLD_INFO = {
    "entries": {
        "0": {
            "uid": 0,
            "key": ["시계탑"],
            "keysecondary": ["자정"],
            "comment": "시계탑",
            "content": "광장의 시계탑은 자정마다 열세 번 울린다.",
            "constant": False,
            "selective": True,
            "selectiveLogic": 0,
            "order": 120,
            "position": 4,
            "disable": False,
            "depth": 2,
            "role": 1,
            "probability": 80,
            "useProbability": True,
            "group": "장소",
            "sticky": 2,
            "displayIndex": 0,
        },
        "5": {
            "uid": 5,
            "key": ["민지"],
            "keysecondary": [],
            "comment": "민지",
            "content": "민지는 시계탑 옆 빵집에서 일한다.",
            "constant": True,
            "selective": False,
            "order": 90,
            "position": 0,
            "disable": False,
            "displayIndex": 1,
        },
    }
}


def _file(name: str, data: bytes) -> tuple[str, bytes, str]:
    return (name, data, "application/json")


async def _stored_book(harness):
    channel = await repo.get_channel_settings(
        harness.sessions, channel_id=harness.scenario.general.id
    )
    return channel.lorebook if channel is not None else None


async def _attachment(harness, record):
    message = await harness.fake.wait_until(
        lambda: next((m for m in [*record.followups, record.original] if m), None)
    )
    [attachment] = message.attachments
    return attachment


async def test_import_then_export_gives_back_the_same_entries(harness):
    s = harness.scenario
    data = json.dumps(WORLD_INFO, ensure_ascii=False).encode()
    imported = await harness.slash(
        s.moderator, "lorebook import", file=_file("마을.json", data), owner="channel"
    )
    text = await harness.final_text(imported)
    assert "마을" in text and "2" in text and "저장했어요" in text
    book = await _stored_book(harness)
    assert [e["keys"] for e in book["entries"]] == [["시계탑"], ["민지"]]

    exported = await harness.slash(s.moderator, "lorebook export")
    assert "마을" in await harness.final_text(exported)
    attachment = await _attachment(harness, exported)
    assert attachment.filename == "마을.json"
    written = json.loads(attachment.data)
    assert set(written["entries"]) == {"0", "5"}
    for uid, entry in WORLD_INFO["entries"].items():
        for field, value in entry.items():
            assert written["entries"][uid][field] == value, (uid, field)


async def test_the_imported_lorebook_reaches_the_next_turn(harness):
    s = harness.scenario
    character = await harness.character(s.moderator)
    await harness.start_roleplay(s.moderator, s.general, character)
    data = json.dumps(WORLD_INFO, ensure_ascii=False).encode()
    imported = await harness.slash(
        s.moderator, "lorebook import", file=_file("마을.json", data), owner="channel"
    )
    assert "저장했어요" in await harness.final_text(imported)
    # The channel's cached roleplay was dropped: the new book is in the next prompt.
    await harness.reply_to(s.general, s.members[0], "시계탑 얘기 들었어?")
    assert any("빵집에서 일한다" in p for p in harness.engine.prompts)


async def test_members_without_manage_server_are_refused(harness):
    s = harness.scenario
    data = json.dumps(WORLD_INFO).encode()
    refused = await harness.slash(
        s.members[0], "lorebook import", file=_file("마을.json", data), owner="channel"
    )
    assert "관리자만" in await harness.final_text(refused)
    assert await _stored_book(harness) is None
    export = await harness.slash(s.members[0], "lorebook export")
    assert "관리자만" in await harness.final_text(export)


async def test_a_bad_file_gets_the_localised_reason_and_stores_nothing(harness):
    s = harness.scenario
    bad = await harness.slash(
        s.moderator, "lorebook import", file=_file("깨짐.json", b'{"entries": {"0": 3}}')
    )
    text = await harness.final_text(bad)
    assert "로어북 파일을 읽을 수 없어요" in text and "must be an object" in text
    english = await harness.fake.slash(
        s.moderator, "lorebook import", file=_file("x.json", b"{"), locale="en-US"
    )
    await harness.fake.wait_for_response(english)
    assert "lorebook file can't be read" in await harness.final_text(english)
    wrong_type = await harness.slash(
        s.moderator, "lorebook import", file=("a.txt", b"{}", "text/plain")
    )
    assert "첨부해 주세요" in await harness.final_text(wrong_type)
    assert await _stored_book(harness) is None


async def test_clear_removes_the_lorebook_and_export_says_there_is_none(harness):
    s = harness.scenario
    data = json.dumps(WORLD_INFO).encode()
    imported = await harness.slash(
        s.moderator, "lorebook import", file=_file("마을.json", data), owner="channel"
    )
    await harness.final_text(imported)
    cleared = await harness.slash(s.moderator, "lorebook clear")
    assert "지웠어요" in await harness.final_text(cleared)
    assert await _stored_book(harness) is None
    none = await harness.slash(s.moderator, "lorebook export")
    assert "로어북이 없어요" in await harness.final_text(none)
    again = await harness.slash(s.moderator, "lorebook clear")
    assert "로어북이 없어요" in await harness.final_text(again)


async def test_lorebook_budget_is_stored_inherited_and_shown(harness):
    s = harness.scenario
    server = await harness.slash(s.moderator, "config lorebook-budget", tokens=200, scope="server")
    assert "저장했어요" in await harness.final_text(server)
    shown = await harness.final_text(await harness.slash(s.moderator, "config show"))
    assert "`lorebook_budget` 200" in shown  # the channel inherits the server's

    await harness.slash(s.moderator, "config lorebook-budget", tokens=0)
    shown = await harness.final_text(await harness.slash(s.moderator, "config show"))
    assert "`lorebook_budget` 0" in shown
    channel = await repo.get_channel_settings(harness.sessions, channel_id=s.general.id)
    guild = await repo.get_guild_settings(harness.sessions, guild_id=s.guild.id)
    assert (channel.lorebook_budget, guild.lorebook_budget) == (0, 200)

    too_big = await harness.slash(s.moderator, "config lorebook-budget", tokens=20000)
    assert "0에서 4096토큰" in await harness.final_text(too_big)
    await harness.slash(s.moderator, "config lorebook-budget")  # back to the server's
    await harness.slash(s.moderator, "config lorebook-budget", scope="server")
    shown = await harness.final_text(await harness.slash(s.moderator, "config show"))
    assert "`lorebook_budget` auto" in shown


async def test_upgrade_to_0005_keeps_data_and_budgets_start_unset(tmp_path):
    url, old = await upgraded_from_0001(tmp_path, "0004")
    async with opened(url) as sessions:
        await assert_old_scene_kept(sessions, old)
        guild = await repo.get_guild_settings(sessions, guild_id=old.guild_id)
        channel = await repo.get_channel_settings(sessions, channel_id=old.channel_id)
        assert channel is not None and channel.active_session_id == old.session_id
        assert (guild.lorebook_budget, channel.lorebook_budget) == (None, None)
        assert guild.approval_required and guild.nsfw_policy == "allowed"
        await repo.update_channel_settings(
            sessions, channel_id=old.channel_id, guild_id=old.guild_id, lorebook_budget=300
        )
    # The budget went with the downgrade; the scene did not.
    await assert_kept_down_and_up(url, "0004", old)
    async with opened(url) as sessions:
        channel = await repo.get_channel_settings(sessions, channel_id=old.channel_id)
        assert channel is not None and channel.lorebook_budget is None
