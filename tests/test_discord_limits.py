"""What the bot sends stays within Discord's documented limits, with long or awkward cards:
the fake Discord refuses (400) whatever real Discord would."""

from __future__ import annotations

import json

from synatra_bot.discord.webhooks import webhook_username
from synatra_bot.storage import repository as repo
from tests.bot_harness import button_ids
from tests.hostile_corpus import RecordingEngine
from tests.prompt_helpers import v2_card
from tests.test_bot_commands import fill, modal_inputs

# Paragraphs with line breaks, as real cards have them; 5,500 and 9,000 characters.
LONG_DESCRIPTION = "\n".join(f"{n:03d} 민지는 바닷가 마을에서 자랐다." * 5 for n in range(60))[
    :5500
]
LONG_EXAMPLES = (
    "<START>\n" + "{{user}}: 안녕\n{{char}}: 반가워요, 오늘도 바다를 보러 왔어요.\n" * 240
)
LONG_PERSONALITY = "밝고 수다스럽다. " * 200


def embed_size(embeds: list[dict]) -> int:
    """Characters Discord counts against the 6,000 of one message's embeds."""
    total = 0
    for embed in embeds:
        total += len(embed.get("title") or "") + len(embed.get("description") or "")
        total += len((embed.get("footer") or {}).get("text") or "")
        total += len((embed.get("author") or {}).get("name") or "")
        total += sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields") or [])
    return total


def refused_calls(fake) -> list:
    return [call for call in fake.calls if call.status == 400]


async def long_character(harness, owner) -> int:
    return await harness.character(
        owner,
        "바다 민지",
        description=LONG_DESCRIPTION,
        personality=LONG_PERSONALITY,
        example_messages=LONG_EXAMPLES,
    )


async def test_editing_a_long_card_opens_forms_discord_accepts_and_keeps_untouched_text(harness):
    fake, s = harness.fake, harness.scenario
    owner = s.members[0]
    character = await long_character(harness, owner)

    edit = await harness.slash(owner, "character edit", character=str(character))
    assert edit.modal is None  # a list of forms instead of one Discord would refuse
    offer = edit.original
    assert "Description / 설명" in offer.content
    assert set(button_ids(offer)) == {"character:edit:form", "character:edit:description:0"}

    main = await fake.press(owner, offer, "character:edit:form")
    await fake.wait_for_response(main)
    assert main.modal is not None
    assert not any(label.startswith("Description") for label in modal_inputs(main.modal))
    submitted = await fake.submit_modal(
        owner, main, {**fill(main.modal, Name="바다 민지"), **fill(main.modal, Scenario="등대 앞")}
    )
    assert "수정했어요" in await harness.final_text(submitted)
    stored = await repo.get_character(harness.sessions, character_id=character)
    assert stored.description == LONG_DESCRIPTION and stored.scenario == "등대 앞"
    assert stored.personality == LONG_PERSONALITY  # untouched: not even stripped

    part = await fake.press(owner, offer, "character:edit:description:0")
    await fake.wait_for_response(part)
    inputs = list(modal_inputs(part.modal).values())
    assert len(inputs) == 2
    values = {c["custom_id"]: c["value"] for c in _text_inputs(part.modal)}
    assert "".join(values[i] for i in inputs) == LONG_DESCRIPTION
    changed = {inputs[0]: values[inputs[0]], inputs[1]: values[inputs[1]] + "\n끝."}
    sent = await fake.submit_modal(owner, part, changed)
    assert "수정했어요" in await harness.final_text(sent)
    stored = await repo.get_character(harness.sessions, character_id=character)
    assert stored.description == LONG_DESCRIPTION + "\n끝."
    assert refused_calls(fake) == []


async def test_long_examples_are_edited_page_by_page_without_losing_the_rest(harness):
    fake, s = harness.fake, harness.scenario
    owner = s.members[0]
    character = await long_character(harness, owner)
    edit = await harness.slash(owner, "character edit", character=str(character))
    main = await fake.press(owner, edit.original, "character:edit:form")
    await fake.wait_for_response(main)
    details = await fake.submit_modal(owner, main, {})
    await harness.final_text(details)
    examples = await fake.press(owner, details.original, "character:examples")
    await fake.wait_for_response(examples)
    assert examples.modal is not None and len(_text_inputs(examples.modal)) == 3

    first = {c["custom_id"]: c["value"] for c in _text_inputs(examples.modal)}
    first_id = next(iter(first))
    first[first_id] = first[first_id].replace("<START>", "<START>\n# 바다 편", 1)
    saved = await fake.submit_modal(owner, examples, first)
    assert "수정했어요" in await harness.final_text(saved)
    stored = await repo.get_character(harness.sessions, character_id=character)
    edited = LONG_EXAMPLES.replace("<START>", "<START>\n# 바다 편", 1)
    assert stored.example_messages == edited.strip()
    assert refused_calls(fake) == []


async def test_a_stale_part_form_saves_nothing(harness):
    fake, s = harness.fake, harness.scenario
    owner = s.members[0]
    character = await long_character(harness, owner)
    edit = await harness.slash(owner, "character edit", character=str(character))
    part = await fake.press(owner, edit.original, "character:edit:description:0")
    await fake.wait_for_response(part)
    await repo.update_character(harness.sessions, character_id=character, description="짧은 설명")
    values = {c["custom_id"]: c["value"] for c in _text_inputs(part.modal)}
    sent = await fake.submit_modal(owner, part, values)
    assert "바뀌어서 저장하지 않았어요" in await harness.final_text(sent)
    stored = await repo.get_character(harness.sessions, character_id=character)
    assert stored.description == "짧은 설명"


def _text_inputs(modal: dict) -> list[dict]:
    found = []
    for component in modal["components"]:
        found += [component["component"]] if component["type"] == 18 else component["components"]
    return found


async def test_showing_a_long_card_shortens_the_sheet_and_points_at_export(harness):
    s = harness.scenario
    owner = s.members[0]
    character = await long_character(harness, owner)
    shown = await harness.slash(owner, "character show", character=str(character))
    await harness.fake.wait_until(lambda: shown.callback_data or shown.followups)
    [sheet] = (shown.callback_data or {}).get("embeds") or shown.followups[-1].embeds
    assert embed_size([sheet]) <= 6000 and len(sheet["description"]) <= 4096
    assert sheet["description"].endswith("…")
    assert LONG_DESCRIPTION.startswith(sheet["description"][:-1])
    assert "`/캐릭터 내보내기`" in sheet["footer"]["text"]
    stored = await repo.get_character(harness.sessions, character_id=character)
    assert stored.description == LONG_DESCRIPTION
    assert refused_calls(harness.fake) == []


async def test_importing_a_long_card_answers_with_a_sheet_discord_accepts(harness):
    s = harness.scenario
    owner = s.members[0]
    card = v2_card(
        name="긴 민지",
        description=LONG_DESCRIPTION,
        personality=LONG_PERSONALITY,
        scenario="바닷가 " * 300,
        first_mes="안녕하세요! " * 300,
    )
    file = ("긴 민지.json", json.dumps(card).encode(), "application/json")
    imported = await harness.slash(owner, "character import", file=file)
    assert "가져왔어요" in await harness.final_text(imported)
    [sheet] = imported.followups[-1].embeds
    assert embed_size([sheet]) <= 6000
    assert all(len(f["value"]) <= 1024 for f in sheet["fields"])
    assert "`/캐릭터 내보내기`" in sheet["footer"]["text"]
    [record] = await repo.visible_characters(
        harness.sessions, guild_id=s.guild.id, user_id=owner.user.id
    )
    assert record.description == LONG_DESCRIPTION
    assert refused_calls(harness.fake) == []


async def test_a_character_named_discord_speaks_under_a_name_discord_accepts(start_bot, tokenizer):
    engine = RecordingEngine("안녕하세요, 무엇을 도와드릴까요?", tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator, "Discord 도우미")
        greeting = await harness.start_roleplay(s.moderator, s.general, character)
        reply = await harness.reply_to(s.general, s.members[0], "안녕?")
    for message in (greeting, reply):
        assert message.username == webhook_username("Discord 도우미")
        assert "discord" not in message.username.lower()
        assert message.username.endswith(" 도우미") and len(message.username) == 11
    assert reply.content == "안녕하세요, 무엇을 도와드릴까요?"
    assert "Discord 도우미" in engine.prompts[-1]  # the model still knows the real name
    assert refused_calls(fake) == []


def test_webhook_username_keeps_names_discord_accepts_and_fixes_the_rest():
    assert webhook_username("민지") == "민지"
    for name in ("CLYDE 봇", "discordiscord", "내 DiScOrD 친구", "가" * 100, "  ", "Clyde"):
        shown = webhook_username(name)
        assert 1 <= len(shown) <= 80
        assert "discord" not in shown.lower() and "clyde" not in shown.lower()
    assert webhook_username("가" * 100) == "가" * 80


async def test_a_zero_width_only_reply_shows_an_ellipsis(start_bot, tokenizer):
    engine = RecordingEngine("\u200b\u200d\ufeff \n", tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator, "민지")
        await harness.start_roleplay(s.moderator, s.general, character)
        reply = await harness.reply_to(s.general, s.members[0], "안녕?")
    assert reply.content == "…"
    assert all(version["content"].strip() for version in reply.versions)
    assert refused_calls(fake) == []


def _command(**fields):
    command = {"type": 1, "name": "rp", "description": "롤플레이", "options": []}
    command.update(fields)
    return command


def _refusal(commands) -> dict:
    import pytest

    from tests.discord_fake.limits import ApiError, check_commands

    with pytest.raises(ApiError) as refused:
        check_commands(commands)
    assert (refused.value.status, refused.value.code) == (400, 50035)
    return refused.value.errors


def test_the_fake_refuses_commands_discord_refuses():
    option = {"type": 3, "name": "text", "description": "글"}
    assert "name" in _refusal([_command(name="Rp")])["0"]  # not lowercase
    assert "name" in _refusal([_command(name="롤 플레이")])["0"]  # a space
    assert "name" in _refusal([_command(name="x" * 33)])["0"]
    assert "description" in _refusal([_command(description="")])["0"]
    assert (
        "description_localizations"
        in _refusal([_command(description_localizations={"ko": "가" * 101})])["0"]
    )
    assert (
        "options"
        in _refusal([_command(options=[dict(option, name=f"o{i}") for i in range(26)])])["0"]
    )
    many = [{"name": f"c{i}", "value": f"v{i}"} for i in range(26)]
    assert (
        "choices" in _refusal([_command(options=[dict(option, choices=many)])])["0"]["options"]["0"]
    )
    late = [dict(option, name="a"), dict(option, name="b", required=True)]
    assert "required" in _refusal([_command(options=late)])["0"]["options"]["1"]
    nested = {"type": 2, "name": "cast", "description": "출연", "options": [option]}
    assert "options" in _refusal([_command(options=[nested])])["0"]["options"]["0"]
    huge = [dict(option, name=f"o{i}", description="가" * 100) for i in range(25)]
    groups = [
        {"type": 1, "name": f"s{i}", "description": "나" * 100, "options": huge} for i in range(4)
    ]
    assert _refusal([_command(options=groups)])["0"]["_errors"][0]["code"] == (
        "APPLICATION_COMMAND_TOO_LARGE"
    )
    assert "name" in _refusal([_command(), _command()])["1"]
    # A message command's name may have capitals and spaces, and no description.
    from tests.discord_fake.limits import check_commands

    check_commands([{"type": 3, "name": "Branch from here", "description": ""}])


def _sized(total: int, korean: int | None = None) -> dict:
    """A command of `total` (7,903-8,001) characters as Discord counts them: three subcommands of
    2,600 (name 2, description 98, 25 options of 3 + 97) and one more subcommand whose
    description makes up the rest; `korean` localises that description with so many characters."""
    options = [{"type": 3, "name": f"o{i:02d}", "description": "d" * 97} for i in range(25)]
    full = [
        {"type": 1, "name": f"s{i}", "description": "s" * 98, "options": options} for i in range(3)
    ]
    last: dict = {"type": 1, "name": "s3", "description": "s" * (total - 7902)}
    if korean is not None:
        last["description_localizations"] = {"ko": "가" * korean}
    return _command(description="d" * 98, options=[*full, last])


def test_a_command_is_sized_as_discord_counts_it_with_its_longest_localisations():
    from tests.discord_fake.limits import COMMAND_TOTAL, check_commands, command_size

    assert COMMAND_TOTAL == 8000  # Discord's documented limit since 2024 (it was 4,000)
    exact = _sized(COMMAND_TOTAL)
    assert command_size(exact) == COMMAND_TOTAL
    check_commands([exact])
    # A Korean description no longer than the English one costs nothing...
    check_commands([_sized(COMMAND_TOTAL, korean=10)])
    # ...one longer than it counts in its place, and the command is refused.
    longer = _sized(COMMAND_TOTAL, korean=99)
    assert command_size(longer) > COMMAND_TOTAL
    assert _refusal([longer])["0"]["_errors"][0]["code"] == "APPLICATION_COMMAND_TOO_LARGE"
    over = _sized(COMMAND_TOTAL + 1)
    assert _refusal([over])["0"]["_errors"][0]["code"] == "APPLICATION_COMMAND_TOO_LARGE"


def test_the_fake_refuses_localisations_discord_refuses():
    option = {"type": 3, "name": "text", "description": "text"}
    ko = {"ko": "롤플레이"}
    # Localised names follow the name rules; keys are Discord's locales.
    assert "name_localizations" in _refusal([_command(name_localizations={"ko": "롤 플레이"})])["0"]
    assert "name_localizations" in _refusal([_command(name_localizations={"ko": "Rp"})])["0"]
    assert "name_localizations" in _refusal([_command(name_localizations={"kr": "롤플레이"})])["0"]
    # A localised option name may not be a sibling's name, default or in the same locale.
    twins = [
        dict(option, name="a", name_localizations={"ko": "글"}),
        dict(option, name="b", name_localizations={"ko": "글"}),
    ]
    assert "name_localizations" in _refusal([_command(options=twins)])["0"]["options"]["1"]
    taken = [option, dict(option, name="b", name_localizations={"ko": "text"})]
    assert "name_localizations" in _refusal([_command(options=taken)])["0"]["options"]["1"]
    # Choice names, localised ones too, are 1-100 characters of any text.
    choice = {"name": "channel", "value": "channel", "name_localizations": {"ko": "가" * 101}}
    refused = _refusal([_command(options=[dict(option, choices=[choice])])])
    assert "name_localizations" in refused["0"]["options"]["0"]["choices"]["0"]
    # Accepted: Hangul names, Thai and Devanagari with their combining marks, an apostrophe.
    from tests.discord_fake.limits import check_commands

    check_commands([_command(name_localizations=ko)])
    check_commands([_command(name_localizations={"th": "เริ่ม", "hi": "शुरू", "fr": "l'aide"})])


async def test_a_localisation_identical_to_the_default_is_ignored_as_on_discord(discord_fake):
    import discord

    command = _command(
        name_localizations={"ko": "롤플레이", "en-GB": "rp"},
        options=[
            {
                "type": 3,
                "name": "scope",
                "description": "where",
                "name_localizations": {"ko": "범위"},
                "choices": [
                    {"name": "channel", "value": "c", "name_localizations": {"ko": "channel"}}
                ],
            }
        ],
    )
    client = discord.Client(intents=discord.Intents.none())
    try:
        await client.login(discord_fake.token)
        await client.http.bulk_upsert_global_commands(discord_fake.application_id, [command])
    finally:
        await client.close()
    stored = discord_fake.global_commands["rp"]
    assert stored["name_localizations"] == {"ko": "롤플레이"}
    assert stored["options"][0]["name_localizations"] == {"ko": "범위"}
    assert stored["options"][0]["choices"][0]["name_localizations"] == {}


async def test_the_bots_commands_are_accepted_with_room_left(harness):
    from tests.discord_fake.limits import COMMAND_TOTAL, command_size

    fake = harness.fake
    synced = [*fake.global_commands.values()]
    synced += [c for scope in fake.guild_commands.values() for c in scope.values()]
    names = {c["name"] for c in synced}
    assert {"rp", "character", "persona", "config", "lorebook"} <= names
    # Each was accepted (the fake refuses what Discord refuses); /config is the largest.
    assert max(command_size(c) for c in synced) < COMMAND_TOTAL
