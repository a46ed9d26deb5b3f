"""The bot's commands end to end, beyond tests/test_bot_e2e.py: characters, personas,
/rp undo|continue|reset|stop|context, moderator settings applied to the next turn, policies."""

from __future__ import annotations

import asyncio

from synatra_bot.prompt.cards import SpeechLevel, parse_card
from synatra_bot.storage import repository as repo
from tests.bot_harness import button_ids, eventually, has_buttons
from tests.hostile_corpus import RecordingEngine
from tests.prompt_helpers import tiny_png


def modal_inputs(modal: dict) -> dict[str, str]:
    """Label -> custom_id of a modal's text inputs (rows or labelled components)."""
    found: dict[str, str] = {}
    for component in modal.get("components", []):
        if component["type"] == 18:
            found[component["label"]] = component["component"]["custom_id"]
        for child in component.get("components", []):
            found[child.get("label", "")] = child["custom_id"]
    return found


def fill(modal: dict, **by_label_start: str) -> dict[str, str]:
    inputs = modal_inputs(modal)
    return {
        next(cid for label, cid in inputs.items() if label.startswith(start)): value
        for start, value in by_label_start.items()
    }


async def _history(harness, channel):
    active = await repo.get_active_session(harness.sessions, channel_id=channel.id)
    return await repo.recent_history(harness.sessions, session_id=active.id, limit=50)


async def _roleplay(harness, **fields):
    s = harness.scenario
    character = await harness.character(s.moderator, **fields)
    await harness.start_roleplay(s.moderator, s.general, character)
    return character


# --- characters -----------------------------------------------------------------------------


async def test_create_character_with_the_form_then_examples_and_speech_level(harness):
    fake, s = harness.fake, harness.scenario
    opened = await harness.slash(s.members[0], "character create")
    assert opened.modal is not None
    values = fill(
        opened.modal,
        Name="하린",
        Description="{{char}}는 바닷가 마을의 등대지기다.",
        Personality="과묵하지만 다정하다",
        Scenario="폭풍우 치는 밤",
        Greeting="들어와요, {{user}}. 비가 많이 오네요.",
    )
    submitted = await fake.submit_modal(s.members[0], opened, values)
    await fake.wait_for_response(submitted)
    assert "하린" in await harness.final_text(submitted)
    details = submitted.original or submitted
    message = details if hasattr(details, "components") else None
    assert message is not None
    assert {"character:examples", "character:formal", "character:informal"} <= set(
        button_ids(message)
    )
    examples = await fake.press(s.members[0], message, "character:examples")
    await fake.wait_for_response(examples)
    assert examples.modal is not None
    [examples_input] = modal_inputs(examples.modal).values()
    sent = await fake.submit_modal(
        s.members[0], examples, {examples_input: "<START>\n{{user}}: 안녕\n{{char}}: ...어서 와."}
    )
    await fake.wait_for_response(sent)
    informal = await fake.press(s.members[0], message, "character:informal")
    assert "반말" in await harness.final_text(informal)
    [record] = await repo.visible_characters(
        harness.sessions, guild_id=s.guild.id, user_id=s.members[0].user.id
    )
    assert record.name == "하린" and record.scenario == "폭풍우 치는 밤"
    assert record.example_messages.startswith("<START>")
    assert record.speech_level == SpeechLevel.INFORMAL.value
    other = await fake.press(s.members[1], message, "character:formal")
    assert "쓸 수 없어요" in await harness.final_text(other)  # private: not even shown


async def test_examples_for_a_character_deleted_meanwhile_get_a_clear_answer(harness):
    fake, s = harness.fake, harness.scenario
    owner = s.members[0]
    opened = await harness.slash(owner, "character create")
    values = fill(opened.modal, Name="하린", Description="등대지기", Greeting="들어와요.")
    submitted = await fake.submit_modal(owner, opened, values)
    await fake.wait_for_response(submitted)
    message = submitted.original or submitted
    [record] = await repo.visible_characters(
        harness.sessions, guild_id=s.guild.id, user_id=owner.user.id
    )
    character = record.id
    examples = await fake.press(owner, message, "character:examples")
    await fake.wait_for_response(examples)
    assert examples.modal is not None
    deleted = await harness.slash(owner, "character delete", character=str(character))
    assert "지웠어요" in await harness.final_text(deleted)
    [examples_input] = modal_inputs(examples.modal).values()
    sent = await fake.submit_modal(owner, examples, {examples_input: "<START>\n{{user}}: 안녕"})
    assert "캐릭터가 없거나" in await harness.final_text(sent)  # not a silent failure


async def test_show_list_export_avatar_and_delete(harness):
    s = harness.scenario
    owner = s.members[0]
    character = await harness.character(owner, "서윤", personality="차분함")
    shown = await harness.slash(owner, "character show", character=str(character))
    await harness.fake.wait_until(lambda: shown.callback_data or shown.followups)
    embeds = (shown.callback_data or {}).get("embeds") or shown.followups[-1].embeds
    assert embeds[0]["title"].startswith("서윤")
    listed = await harness.slash(owner, "character list")
    assert f"#{character}" in await harness.final_text(listed)

    for fmt in ("png", "json"):
        exported = await harness.slash(owner, "character export", character="서윤", format=fmt)
        message = await harness.fake.wait_until(
            lambda exported=exported: next(
                (m for m in [*exported.followups, exported.original] if m), None
            )
        )
        [attachment] = message.attachments
        assert attachment.filename == f"서윤.{fmt}"
        card = parse_card(attachment.data, filename=attachment.filename)
        assert card.name == "서윤" and card.personality == "차분함"

    avatar = await harness.slash(
        owner,
        "character avatar",
        character=str(character),
        image=("a.png", tiny_png(), "image/png"),
    )
    assert "아바타" in await harness.final_text(avatar)
    stored = await repo.get_character(harness.sessions, character_id=character)
    assert stored.avatar == tiny_png()

    deleted = await harness.slash(owner, "character delete", character=str(character))
    assert "지웠어요" in await harness.final_text(deleted)
    assert await repo.get_character(harness.sessions, character_id=character) is None


async def test_character_autocomplete_matches_a_korean_prefix(harness):
    s = harness.scenario
    await harness.character(s.members[0], "민지")
    await harness.character(s.members[0], "민호")
    await harness.character(s.members[0], "서윤")
    record = await harness.fake.autocomplete(
        s.members[0], "rp start", focused="character", value="민"
    )
    await harness.fake.wait_for_response(record)
    assert sorted(c["name"].split(" #")[0] for c in record.choices) == ["민지", "민호"]


async def test_shared_character_waits_for_approval_before_others_can_use_it(harness):
    s = harness.scenario
    await harness.slash(s.moderator, "config approval", required=True)
    await harness.slash(s.moderator, "config channel", channel=s.general, enabled=True)
    character = await harness.character(s.members[0], "공유 민지")
    shared = await harness.slash(
        s.members[0], "character edit", character=str(character), visibility="guild"
    )
    assert "승인" in await harness.final_text(shared)
    refused = await harness.slash(s.members[1], "rp start", character=str(character))
    assert "쓸 수 없어요" in await harness.final_text(refused)
    listed = await harness.slash(s.moderator, "character list")
    assert "공유 민지" in await harness.final_text(listed)
    approved = await harness.slash(s.moderator, "character approve", character=str(character))
    assert "승인했어요" in await harness.final_text(approved)
    greeting = await harness.start_roleplay(s.members[1], s.general, character)
    assert greeting.username == "공유 민지"


async def test_persona_set_show_and_clear(harness):
    s = harness.scenario
    member = s.members[0]
    await harness.slash(member, "persona set", name="견습 마법사 지수", description="불꽃 마법")
    shown = await harness.slash(member, "persona show")
    assert "견습 마법사 지수" in await harness.final_text(shown)
    cleared = await harness.slash(member, "persona clear")
    assert "지웠어요" in await harness.final_text(cleared)
    again = await harness.slash(member, "persona show")
    assert "페르소나가 없어요" in await harness.final_text(again)


# --- /rp ------------------------------------------------------------------------------------


async def test_undo_removes_the_last_exchange_and_its_discord_message(harness):
    s = harness.scenario
    await _roleplay(harness)
    reply = await harness.reply_to(s.general, s.members[0], "첫 번째 말")
    undo = await harness.slash(s.moderator, "rp undo")  # the scene's starter
    assert "2개" in await harness.final_text(undo)
    assert [m.role for m in await _history(harness, s.general)] == ["assistant"]
    await harness.fake.wait_until(lambda: reply.deleted)


async def test_continue_appends_to_the_newest_reply(start_bot):
    replies = iter(["그래서 나는", " 바다로 갔어."])
    async with start_bot(engine=RecordingEngine(lambda prompt: next(replies))) as harness:
        s = harness.scenario
        await _roleplay(harness)
        reply = await harness.reply_to(s.general, s.members[0], "어디 갔었어?")
        assert reply.content == "그래서 나는"
        record = await harness.slash(s.moderator, "rp continue")  # the scene's starter
        await harness.final_text(record)
        await harness.fake.wait_until(
            lambda: reply.content == "그래서 나는 바다로 갔어." and has_buttons(reply)
        )

        async def continued():
            history = await _history(harness, s.general)
            return history[-1].content == "그래서 나는 바다로 갔어."

        assert await eventually(continued)


async def test_reset_archives_the_story_and_greets_again(harness):
    s = harness.scenario
    await _roleplay(harness)
    await harness.reply_to(s.general, s.members[0], "오래된 이야기")
    old = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
    reset = await harness.slash(s.moderator, "rp reset")
    await harness.final_text(reset)

    async def new_session():
        active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        return active if active and active.id != old.id else None

    active = await eventually(new_session)
    assert active is not None

    async def greeting_posted():
        history = await repo.recent_history(harness.sessions, session_id=active.id, limit=10)
        return history if history and history[-1].discord_message_ids else None

    # The greeting's Discord ids are stored last: wait for them so shutdown interrupts nothing.
    history = await eventually(greeting_posted)
    assert [m.role for m in history] == ["assistant"]
    old_history = await repo.recent_history(harness.sessions, session_id=old.id, limit=10)
    assert "오래된 이야기" in [m.content for m in old_history]
    await harness.fake.wait_until(
        lambda: (
            sum(1 for m in s.general.messages if m.webhook_id and "오늘 뭐 할래" in m.content) == 2
        )
    )


async def test_stop_ends_the_roleplay_and_the_bot_stops_answering(harness):
    s = harness.scenario
    await _roleplay(harness)
    member_stop = await harness.slash(s.members[0], "rp stop")
    assert "시작한 사람" in await harness.final_text(member_stop) or "관리자" in (
        await harness.final_text(member_stop)
    )
    stopped = await harness.slash(s.moderator, "rp stop")
    assert "끝냈어요" in await harness.final_text(stopped)
    assert await repo.get_active_session(harness.sessions, channel_id=s.general.id) is None
    said = await harness.fake.say(s.general, s.members[0], "아무도 없어?")
    await harness.fake.say(s.general, s.members[0], "// 확인용")
    await asyncio.sleep(0.3)
    assert not [m for m in s.general.messages if m.id > said.id and m.webhook_id]


async def test_context_inspector_is_ephemeral_with_token_counts(harness):
    s = harness.scenario
    await _roleplay(harness)
    await harness.reply_to(s.general, s.members[0], "안녕")
    record = await harness.slash(s.moderator, "rp context")
    text = await harness.final_text(record)
    assert record.ephemeral
    assert "token" in text.lower() or "토큰" in text
    refused = await harness.slash(s.members[1], "rp context")
    assert "관리자" in await harness.final_text(refused)


# --- moderator settings ---------------------------------------------------------------------


async def test_config_changes_persist_and_apply_to_the_next_turn(start_bot, tokenizer):
    async with start_bot(engine=RecordingEngine(tokenizer=tokenizer)) as harness:
        s = harness.scenario
        await _roleplay(harness)
        for command, options in {
            "config sampling": {"temperature": 1.3, "top_p": 0.8, "top_k": 7},
            "config context": {"size": 2048},
            "config ratelimit": {"per_minute": 30},
            "config nsfw": {"policy": "allowed"},
            "config authornote": {"text": "분위기는 으스스하게", "depth": 1},
        }.items():
            saved = await harness.slash(s.moderator, command, **options)
            assert "저장했어요" in await harness.final_text(saved), command
        shown = await harness.slash(s.moderator, "config show")
        text = await harness.final_text(shown)
        assert "`temperature` 1.3" in text and "`context_size` 2048" in text
        assert "`nsfw_policy` allowed" in text and "30/min" in text
        await harness.reply_to(s.general, s.members[0], "무서운 이야기 해 줘")
        params = harness.engine.params[-1]
        assert (params.temperature, params.top_p, params.top_k) == (1.3, 0.8, 7)
        assert "분위기는 으스스하게" in harness.engine.prompts[-1]
        assert len(harness.engine.prompt_ids[-1]) <= 2048


async def test_per_user_rate_limit_refuses_with_a_message(harness):
    s = harness.scenario
    await _roleplay(harness)
    await harness.slash(s.moderator, "config ratelimit", per_minute=1)
    await harness.reply_to(s.general, s.members[0], "첫 번째")
    said = await harness.fake.say(s.general, s.members[0], "두 번째")
    notice = await harness.fake.wait_for_message(
        s.general, lambda m: "천천히" in m.content, after=said
    )
    assert notice.webhook_id is None
    other = await harness.reply_to(s.general, s.members[1], "나는 처음이야")
    assert has_buttons(other)


async def test_reply_mode_mention_answers_only_when_mentioned(harness):
    s = harness.scenario
    await _roleplay(harness)
    await harness.slash(s.moderator, "config channel", reply_mode="mention")
    quiet = await harness.fake.say(s.general, s.members[0], "혼잣말")
    reply = await harness.reply_to(s.general, s.members[0], "민지야?", mentions_bot=True)
    assert reply.id > quiet.id
    assert not [m for m in s.general.messages if quiet.id < m.id < reply.id and m.webhook_id]
    history = await _history(harness, s.general)
    assert "혼잣말" in [m.content for m in history]


async def test_busy_restart_cancels_the_running_reply_and_answers_both(start_bot, tokenizer):
    engine = RecordingEngine("천천히 " * 100, delay_s=0.03, tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        await _roleplay(harness)
        await harness.slash(s.moderator, "config channel", busy="restart")
        first = await harness.fake.say(s.general, s.members[0], "첫 번째 질문")
        await harness.fake.wait_until(lambda: engine.running)
        await harness.fake.say(s.general, s.members[0], "아니 두 번째 질문")
        await harness.fake.wait_until(lambda: engine.cancelled and len(engine.prompts) >= 2)
        prompt = engine.prompts[-1]
        assert "첫 번째 질문" in prompt and "아니 두 번째 질문" in prompt
        await harness.fake.wait_until(
            lambda: any(has_buttons(m) for m in s.general.messages if m.id > first.id), timeout=20
        )
        replies = [m for m in s.general.messages if m.id > first.id and m.webhook_id]
        assert [m for m in replies if not m.deleted] == [m for m in replies if has_buttons(m)]
        assert len([m for m in replies if has_buttons(m)]) == 1


async def test_edit_policy_regenerate_regenerates_on_edit(start_bot, tokenizer):
    replies = iter(["처음 답장", "고친 말에 대한 답장"])
    engine = RecordingEngine(lambda prompt: next(replies), tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        await _roleplay(harness)
        await harness.slash(s.moderator, "config channel", edits="regenerate")
        said = await harness.fake.say(s.general, s.members[0], "오타 잇음")
        reply = await harness.fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=said
        )
        await harness.fake.wait_until(lambda: has_buttons(reply))
        await harness.fake.edit(said, "오타 있음")
        await harness.fake.wait_until(
            lambda: reply.content == "고친 말에 대한 답장" and has_buttons(reply)
        )
        assert "오타 있음" in harness.engine.prompts[-1]
        assert not [m for m in s.general.messages if "다시 생성" in m.content]


async def test_queue_position_is_shown_while_a_turn_waits(start_bot, discord_fake):
    second = discord_fake.add_channel(discord_fake.scenario.guild, "두번째-방")
    engine = RecordingEngine("느릿느릿 " * 40, delay_s=0.03)
    async with start_bot(engine=engine, env={"MAX_CONCURRENT_REPLIES": "1"}) as harness:
        s = harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        await harness.start_roleplay(s.moderator, second, character)
        await harness.fake.say(s.general, s.members[0], "먼저")
        await harness.fake.wait_until(lambda: engine.running)
        said = await harness.fake.say(second, s.members[1], "나중에")
        waiting = await harness.fake.wait_for_message(
            second, lambda m: m.webhook_id is not None, after=said
        )
        await harness.fake.wait_until(lambda: has_buttons(waiting), timeout=30)
        shown = [v.get("content") or "" for v in waiting.versions]
        assert any("대기 중: 1번째" in text for text in shown), shown


async def test_replies_follow_the_interaction_locale(harness):
    s = harness.scenario
    korean = await harness.slash(s.members[0], "persona show")
    assert "페르소나가 없어요" in await harness.final_text(korean)
    english = await harness.slash(s.members[0], "persona show", locale="en-US")
    assert "No persona" in await harness.final_text(english)
    member_en = await harness.slash(s.members[2], "config show")
    assert "Only moderators" in await harness.final_text(member_en)
