"""Personal lorebooks: a player imports World Info books of their own and links them to their
characters by name (a card's `extensions.world`, as SillyTavern links them), through the fake
Discord; the 0006 migration that adds them; a lorebook's `delay` counted from the scene's start."""

from __future__ import annotations

import json

import pytest

from synatra_bot.errors import LorebookLimitReached
from synatra_bot.roleplay.characters import MAX_PERSONAL_LOREBOOKS
from synatra_bot.roleplay.types import Actor, Place
from synatra_bot.storage import repository as repo
from tests.db_helpers import (
    assert_kept_down_and_up,
    assert_old_scene_kept,
    opened,
    upgraded_from_0001,
)

VILLAGE = {
    "name": "마을",
    "entries": {
        "0": {
            "uid": 0,
            "key": ["시계탑"],
            "content": "광장의 시계탑은 자정마다 열세 번 울린다.",
            "order": 100,
            "position": 1,
        },
        "1": {
            "uid": 1,
            "key": ["빵집"],
            "content": "빵집 주인은 민지의 이모다.",
            "order": 90,
            "position": 1,
        },
    },
}
CARD_BOOK = {
    "name": "카드 속 로어북",
    "entries": [
        {"keys": ["시계탑"], "content": "카드 속 시계탑은 오래전에 멈췄다.", "insertion_order": 1}
    ],
}


def _file(name: str, book: dict) -> tuple[str, bytes, str]:
    return (name, json.dumps(book, ensure_ascii=False).encode(), "application/json")


async def _import(harness, member, book=VILLAGE, **options):
    record = await harness.slash(
        member, "lorebook import", file=_file("마을.json", book), **options
    )
    return await harness.final_text(record)


async def test_a_member_imports_a_lorebook_of_their_own_not_the_channels(harness):
    s = harness.scenario
    text = await _import(harness, s.members[0])
    assert "내 로어북으로 저장했어요" in text and "마을" in text and "2개" in text
    [book] = await repo.lorebooks_of(harness.sessions, owner_id=s.members[0].user.id)
    assert book.name == "마을" and len(book.book["entries"]) == 2
    channel = await repo.get_channel_settings(harness.sessions, channel_id=s.general.id)
    assert channel is None or channel.lorebook is None

    listed = await harness.final_text(await harness.slash(s.members[0], "lorebook list"))
    assert "마을" in listed and "항목 2개" in listed
    other = await harness.final_text(await harness.slash(s.members[1], "lorebook list"))
    assert "아직 내 로어북이 없어요" in other


async def test_a_card_naming_a_world_uses_the_owners_lorebook_of_that_name(harness):
    s = harness.scenario
    player = s.moderator
    character = await harness.character(
        player, extensions={"world": "마을"}, character_book=CARD_BOOK
    )
    await harness.start_roleplay(player, s.general, character)
    await harness.reply_to(s.general, player, "시계탑 얘기 들었어?")
    assert "카드 속 시계탑은 오래전에 멈췄다." in harness.engine.prompts[-1]

    # Once the owner imports the book the card names, it replaces the card's own.
    await _import(harness, player)
    await harness.reply_to(s.general, player, "시계탑이 또 울렸어.")
    prompt = harness.engine.prompts[-1]
    assert "열세 번 울린다" in prompt and "오래전에 멈췄다" not in prompt

    # Deleting it brings the card's own back; the link stays for a later import.
    deleted = await harness.slash(player, "lorebook delete", name="마을")
    assert "마을을 지웠어요" in await harness.final_text(deleted)
    await harness.reply_to(s.general, player, "시계탑 아래에서 만나자.")
    assert "오래전에 멈췄다" in harness.engine.prompts[-1]


async def test_attach_and_detach_link_a_character_to_a_lorebook(harness):
    s = harness.scenario
    player = s.moderator
    character = await harness.character(player, name="준", character_book=CARD_BOOK)
    await _import(harness, player)
    attached = await harness.slash(player, "lorebook attach", character=str(character), name="마을")
    assert "이제 준은 카드에 든 로어북 대신 내 로어북 마을을 써요" in (
        await harness.final_text(attached)
    )
    record = await repo.get_character(harness.sessions, character_id=character)
    assert record.extensions["world"] == "마을"
    listed = await harness.final_text(await harness.slash(player, "lorebook list"))
    assert "쓰는 캐릭터: 준" in listed

    await harness.start_roleplay(player, s.general, character)
    await harness.reply_to(s.general, player, "빵집에 가 보자.")
    assert "빵집 주인은 민지의 이모다." in harness.engine.prompts[-1]

    detached = await harness.slash(player, "lorebook detach", character=str(character))
    assert "다시 카드에 든 로어북을 써요" in await harness.final_text(detached)
    await harness.reply_to(s.general, player, "시계탑도 보고.")
    prompt = harness.engine.prompts[-1]
    assert "오래전에 멈췄다" in prompt and "이모다" not in prompt


async def test_only_the_owner_links_and_only_to_a_book_that_exists(harness):
    s = harness.scenario
    owner, stranger = s.members[0], s.members[1]
    character = await harness.character(owner, visibility="guild", approval="approved")
    missing = await harness.slash(owner, "lorebook attach", character=str(character), name="숲")
    assert "숲이라는 로어북이 없어요" in await harness.final_text(missing)

    await _import(harness, stranger)
    refused = await harness.slash(
        stranger, "lorebook attach", character=str(character), name="마을"
    )
    assert "주인" in await harness.final_text(refused)
    record = await repo.get_character(harness.sessions, character_id=character)
    assert "world" not in record.extensions


async def test_export_by_name_gives_back_the_book_and_english_users_read_english(harness):
    s = harness.scenario
    player = s.members[0]
    await _import(harness, player)
    exported = await harness.slash(player, "lorebook export", name="마을")
    assert "내 로어북 **마을**" in await harness.final_text(exported)
    message = await harness.fake.wait_until(
        lambda: next((m for m in [*exported.followups, exported.original] if m), None)
    )
    [attachment] = message.attachments
    written = json.loads(attachment.data)
    assert written["name"] == "마을"
    assert [e["content"] for e in written["entries"].values()] == [
        e["content"] for e in VILLAGE["entries"].values()
    ]
    english = await harness.fake.slash(player, "lorebook delete", name="숲", locale="en-US")
    await harness.fake.wait_for_response(english)
    assert "There is no lorebook called **숲**" in await harness.final_text(english)


async def test_the_channels_lorebook_stays_for_moderators(harness):
    s = harness.scenario
    refused = await harness.slash(s.members[0], "lorebook clear")
    assert "관리자만" in await harness.final_text(refused)
    text = await _import(harness, s.moderator, owner="channel", name="광장")
    assert "이 채널의 로어북으로 저장했어요: **광장**" in text
    channel = await repo.get_channel_settings(harness.sessions, channel_id=s.general.id)
    assert channel.lorebook["name"] == "광장"
    assert await repo.lorebooks_of(harness.sessions, owner_id=s.moderator.user.id) == []


async def test_a_member_keeps_a_bounded_number_of_lorebooks(harness):
    characters = harness.bot.core.characters
    actor = Actor(user_id=42, display_name="민지")
    book = {"entries": [{"keys": ["민지"], "content": "민지는 학생이다."}]}
    for number in range(MAX_PERSONAL_LOREBOOKS):
        await characters.save_lorebook(actor, book, name=f"책 {number}")
    # Replacing one of the same name is not a new one.
    await characters.save_lorebook(actor, book, name="책 0")
    with pytest.raises(LorebookLimitReached):
        await characters.save_lorebook(actor, book, name="하나 더")
    assert len(await characters.lorebooks(actor)) == MAX_PERSONAL_LOREBOOKS


async def test_delay_counts_the_scenes_turns_before_the_prompts_window(harness):
    s = harness.scenario
    player = s.moderator
    book = {
        "entries": {
            "0": {
                "uid": 0,
                "key": ["시계탑"],
                "content": "늦게 풀리는 시계탑의 비밀.",
                "delay": 12,
                "position": 1,
            }
        }
    }
    character = await harness.character(player)
    await harness.slash(player, "config context", size=1024)
    await harness.slash(player, "config sampling", max_new_tokens=64)
    await harness.slash(player, "config ratelimit", per_minute=60)
    await harness.slash(player, "lorebook import", file=_file("늦은.json", book), owner="channel")
    await harness.start_roleplay(player, s.general, character)
    # The small window drops turns: without this, the memory's summary prompts would land
    # among the replies' prompts (in whatever order the background job runs).
    await harness.final_text(
        await harness.slash(player, "rp memory", channel=s.general, auto=False)
    )
    await harness.reply_to(s.general, player, "시계탑 " + "이야기를 길게 한다. " * 20)
    assert "늦게 풀리는" not in harness.engine.prompts[-1]
    for turn in range(6):
        await harness.reply_to(s.general, player, f"{turn}번째 시계탑 " + "말을 잇는다. " * 20)
    # The scene has more than twelve turns now, though the small window holds fewer.
    prompt = harness.engine.prompts[-1]
    assert "늦게 풀리는 시계탑의 비밀." in prompt
    place = Place(channel_id=s.general.id, guild_id=s.guild.id)
    active = await harness.bot.core.active(place)
    assert len(await harness.bot.core.recent(active)) < 12


async def test_upgrade_to_0006_keeps_data_and_starts_with_no_personal_lorebooks(tmp_path):
    url, old = await upgraded_from_0001(tmp_path, "0005")
    async with opened(url) as sessions:
        await assert_old_scene_kept(sessions, old)
        assert await repo.lorebooks_of(sessions, owner_id=old.player_id) == []
        await repo.save_lorebook(
            sessions,
            owner_id=old.player_id,
            name="마을",
            book={"entries": []},
            max_owned=5,
            max_bytes=1 << 20,
        )
    await assert_kept_down_and_up(url, "0005", old)
