"""The bot end to end: the real discord.py client against the fake Discord server."""

import gc

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.storage import repository as repo
from tests.bot_harness import button_ids, eventually, has_buttons, stop_button


async def test_start_roleplay_posts_greeting_from_character_webhook(harness):
    s = harness.scenario
    character_id = await harness.character(s.moderator, "민지")
    greeting = await harness.start_roleplay(s.moderator, s.general, character_id)
    assert greeting.username == "민지"
    assert greeting.content == "안녕, 관리자 민수! 오늘 뭐 할래?"
    assert greeting.allowed_mentions == {"parse": []}
    active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
    assert active is not None and active.character_id == character_id


async def test_a_stored_avatar_discord_cannot_take_leaves_the_character_speaking(harness, caplog):
    """An avatar stored before avatars were re-encoded as PNG (here a BMP, which discord.py
    refuses to send): the webhook is made without it and the scene plays."""
    s = harness.scenario
    character_id = await harness.character(s.moderator, "민지")
    bitmap = b"BM" + bytes(64)
    await repo.update_character(harness.sessions, character_id=character_id, avatar=bitmap)
    greeting = await harness.start_roleplay(s.moderator, s.general, character_id)
    assert greeting.username == "민지" and greeting.content.startswith("안녕,")
    (webhook,) = [w for w in harness.fake.webhooks.values() if w.channel_id == s.general.id]
    assert webhook.avatar_data is None
    assert f"the avatar of character {character_id} cannot be a webhook's" in caplog.text
    reply = await harness.reply_to(s.general, s.members[0], "안녕? 오늘 날씨 좋다")
    assert reply.webhook_id == webhook.id and has_buttons(reply)


async def test_talk_streams_reply_and_stores_one_turn(harness):
    s = harness.scenario
    character_id = await harness.character(s.moderator)
    await harness.start_roleplay(s.moderator, s.general, character_id)
    reply = await harness.reply_to(s.general, s.members[0], "안녕? 오늘 날씨 좋다")
    assert reply.username == "민지"
    assert "안녕하세요" in reply.content
    assert has_buttons(reply)
    active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
    history = await repo.recent_history(harness.sessions, session_id=active.id, limit=10)
    assert [m.role for m in history] == ["assistant", "user", "assistant"]
    assert history[1].content == "안녕? 오늘 날씨 좋다" and history[1].display_name == "김지수"
    assert history[2].content in reply.content
    assert history[2].discord_message_ids == (reply.id,)
    assert "김지수" in harness.engine.prompts[-1]
    assert any(b.startswith("rp:regen") for b in button_ids(reply))


async def test_webhook_messages_are_dropped_before_they_are_parsed(harness):
    """A reply comes back as a MESSAGE_CREATE and a MESSAGE_UPDATE per edit: none becomes a
    Message in the bot, while players' messages and edits still arrive."""
    s = harness.scenario
    seen: list[tuple[str, int | None, str]] = []

    async def on_message(message):
        seen.append(("message", message.webhook_id, message.content))

    async def on_raw_message_edit(payload):
        seen.append(("edit", payload.data.get("webhook_id"), payload.data.get("content", "")))

    harness.bot.add_listener(on_message)
    harness.bot.add_listener(on_raw_message_edit)
    assert harness.fake.echo_bot_messages
    character_id = await harness.character(s.moderator)
    await harness.start_roleplay(s.moderator, s.general, character_id)
    said = await harness.fake.say(s.general, s.members[0], "오늘 뭐 할까?")
    reply = await harness.reply_to(s.general, s.members[0], "같이 산책하자")
    await harness.fake.edit(said, "오늘은 뭐 할까?")
    await harness.fake.wait_until(lambda: ("edit", None, "오늘은 뭐 할까?") in seen)
    assert reply.webhook_id is not None and has_buttons(reply)
    assert ("message", None, "오늘 뭐 할까?") in seen and ("message", None, "같이 산책하자") in seen
    assert all(webhook_id is None for _, webhook_id, _ in seen)


async def test_member_cannot_start_in_a_channel_moderators_did_not_enable(harness):
    s = harness.scenario
    character_id = await harness.character(s.members[0])
    record = await harness.slash(
        s.members[0], "rp start", channel=s.general, character=str(character_id)
    )
    assert record.ephemeral
    assert "꺼져 있어요" in await harness.final_text(record)
    assert await repo.get_active_session(harness.sessions, channel_id=s.general.id) is None


async def _active_history(harness, channel):
    active = await repo.get_active_session(harness.sessions, channel_id=channel.id)
    return await repo.recent_history(harness.sessions, session_id=active.id, limit=50)


def _custom_id(message, prefix):
    return next(b for b in button_ids(message) if b.startswith(prefix))


async def test_regenerate_adds_an_alternative_and_browsing_chooses_what_enters_history(start_bot):
    replies = iter(["첫 번째 답장이야.", "두 번째 답장이야.", "세 번째."])
    engine = ScriptedEngine(lambda prompt: next(replies))
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)
        reply = await harness.reply_to(s.general, s.members[0], "뭐 하고 있었어?")
        assert reply.content == "첫 번째 답장이야."

        press = await harness.fake.press(s.members[0], reply, _custom_id(reply, "rp:regen"))
        await harness.fake.wait_for_response(press)
        await harness.fake.wait_until(
            lambda: reply.content == "두 번째 답장이야." and has_buttons(reply)
        )
        assert "2/2" in str(reply.components)
        history = await _active_history(harness, s.general)
        assert history[-1].content == "두 번째 답장이야."
        # The regenerated prompt did not include the alternative it replaces.
        assert "첫 번째 답장이야." not in harness.engine.prompts[-1]

        prev = await harness.fake.press(s.members[1], reply, _custom_id(reply, "rp:prev"))
        await harness.fake.wait_for_response(prev)
        await harness.fake.wait_until(lambda: reply.content == "첫 번째 답장이야.")
        history = await _active_history(harness, s.general)
        assert history[-1].content == "첫 번째 답장이야."
        assert len([m for m in s.general.messages if m.webhook_id]) == 2  # greeting + one reply
        # Every item under a reply is dynamic: discord.py keeps no view per message.
        assert harness.bot.persistent_views == []


async def _stop_while_streaming(harness, member, text: str):
    """Say `text`, press ⏹ once the reply shows some words, and wait for its final state."""
    s = harness.scenario
    said = await harness.fake.say(s.general, member, text)
    reply = await harness.fake.wait_for_message(
        s.general,
        lambda m: m.webhook_id is not None and stop_button(m),
        after=said,
    )
    await harness.fake.wait_until(lambda: "천천히" in reply.content)
    press = await harness.fake.press(member, reply, stop_button(reply))
    await harness.fake.wait_for_response(press)
    await harness.fake.wait_until(lambda: has_buttons(reply))
    return reply


async def test_stop_mid_reply_keeps_what_was_shown(start_bot):
    engine = ScriptedEngine("천천히 " * 200, delay_s=0.02)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)
        reply = await _stop_while_streaming(harness, s.members[0], "이야기해 줘")
        assert "중지됨" in reply.content or "stopped" in reply.content
        history = await _active_history(harness, s.general)
        assert history[-1].role == "assistant"
        assert 0 < len(history[-1].content) < len("천천히 " * 200)
        assert history[-1].content.startswith("천천히")
        assert harness.engine.cancelled

        # Every reply shares one stop button: the finished reply did not use it up.
        await _stop_while_streaming(harness, s.members[1], "하나 더 이야기해 줘")
        assert len(harness.engine.cancelled) == 2


async def test_reply_longer_than_2000_characters_is_split_at_a_boundary(start_bot):
    paragraph = "민지는 창밖을 바라보며 천천히 이야기를 이어 갔다. " * 20
    long_reply = "\n".join([paragraph.strip()] * 5)
    env = {"MAX_NEW_TOKENS": "2000", "CONTEXT_SIZE": "8192"}
    async with start_bot(engine=ScriptedEngine(long_reply), env=env) as harness:
        s = harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)
        said = await harness.fake.say(s.general, s.members[0], "길게 말해 줘")
        await harness.fake.wait_until(
            lambda: any(has_buttons(m) for m in s.general.messages if m.id > said.id), timeout=20
        )
        parts = [m for m in s.general.messages if m.id > said.id and m.webhook_id]
        assert len(parts) >= 2
        assert all(len(m.content) <= 2000 for m in parts)
        assert all(m.username == "민지" for m in parts)
        assert "".join(m.content for m in parts).replace("\n", "") == long_reply.replace("\n", "")
        ids = [m.id for m in parts]

        async def stored_with_all_ids():
            history = await _active_history(harness, s.general)
            return history[-1] if history[-1].discord_message_ids == tuple(ids) else None

        stored = await eventually(stored_with_all_ids)
        assert stored is not None and stored.content == long_reply


async def test_import_v2_png_card_from_attachment(harness):
    from synatra_bot.prompt.cards import CharacterCard, card_to_png

    s = harness.scenario
    png = card_to_png(
        CharacterCard(
            name="서윤",
            description="{{char}}은 도서관 사서다.",
            first_message="조용히 해 주세요, {{user}}님.",
        )
    )
    record = await harness.slash(
        s.members[0], "character import", file=("서윤.png", png, "image/png")
    )
    text = await harness.final_text(record)
    assert "서윤" in text and record.ephemeral
    found = await repo.visible_characters(
        harness.sessions, guild_id=s.guild.id, user_id=s.members[0].user.id, name_prefix="서윤"
    )
    assert [c.description for c in found] == ["{{char}}은 도서관 사서다."]


async def test_broken_card_attachment_gives_a_clear_error_and_stores_nothing(harness):
    s = harness.scenario
    record = await harness.slash(
        s.members[0], "character import", file=("broken.png", b"\x89PNG\r\n\x1a\nnope", "image/png")
    )
    text = await harness.final_text(record)
    assert "캐릭터 카드를 읽을 수 없어요" in text
    assert (
        await repo.visible_characters(
            harness.sessions, guild_id=s.guild.id, user_id=s.members[0].user.id
        )
        == []
    )


async def test_non_moderator_is_refused_config_at_runtime(harness):
    s = harness.scenario
    record = await harness.slash(s.members[0], "config channel", channel=s.general, enabled=True)
    assert record.ephemeral
    assert "관리자" in await harness.final_text(record)
    assert await repo.get_channel_settings(harness.sessions, channel_id=s.general.id) is None
    ok = await harness.slash(s.moderator, "config channel", channel=s.general, enabled=True)
    assert "저장했어요" in await harness.final_text(ok)
    settings = await repo.get_channel_settings(harness.sessions, channel_id=s.general.id)
    assert settings is not None and settings.enabled


async def test_someone_else_cannot_edit_or_delete_your_character(harness):
    s = harness.scenario
    character_id = await harness.character(
        s.members[0], "민지", visibility="guild", approval="approved"
    )
    edit = await harness.slash(
        s.members[1], "character edit", character=str(character_id), visibility="private"
    )
    assert "주인이나 관리자만" in await harness.final_text(edit)
    delete = await harness.slash(s.members[1], "character delete", character=str(character_id))
    assert "주인이나 관리자만" in await harness.final_text(delete)
    assert await repo.get_character(harness.sessions, character_id=character_id) is not None


async def test_nsfw_character_is_refused_in_an_ordinary_channel(harness):
    s = harness.scenario
    character_id = await harness.character(s.moderator, "밤의 여왕", nsfw=True)
    refused = await harness.slash(
        s.moderator, "rp start", channel=s.general, character=str(character_id)
    )
    assert "연령 제한 채널" in await harness.final_text(refused)
    assert await repo.get_active_session(harness.sessions, channel_id=s.general.id) is None
    greeting = await harness.start_roleplay(s.moderator, s.nsfw_channel, character_id)
    assert greeting.username == "밤의 여왕"


async def test_edits_and_deletes_flow_into_history(harness):
    s = harness.scenario
    character_id = await harness.character(s.moderator)
    await harness.start_roleplay(s.moderator, s.general, character_id)
    said = await harness.fake.say(s.general, s.members[0], "오타가 잇는 말")
    reply = await harness.fake.wait_for_message(
        s.general, lambda m: m.webhook_id is not None, after=said
    )
    await harness.fake.wait_until(lambda: has_buttons(reply))
    await harness.fake.edit(said, "오타가 있는 말")
    offer = await harness.fake.wait_for_message(
        s.general, lambda m: "다시 생성" in m.content, after=reply
    )
    assert any(b.startswith("rp:regen") for b in button_ids(offer))
    history = await _active_history(harness, s.general)
    assert history[1].content == "오타가 있는 말" and history[1].edited_at is not None
    await harness.fake.delete(said)

    async def user_turn_gone():
        history = await _active_history(harness, s.general)
        return [m.role for m in history] == ["assistant", "assistant"]

    assert await eventually(user_turn_gone)


async def test_two_players_are_told_apart_by_name_and_persona(harness):
    s = harness.scenario
    character_id = await harness.character(s.moderator)
    await harness.start_roleplay(s.moderator, s.general, character_id)
    persona = await harness.slash(
        s.members[1], "persona set", name="용사 하늘", description="검을 든 떠돌이 용사"
    )
    assert "용사 하늘" in await harness.final_text(persona)
    await harness.reply_to(s.general, s.members[0], "나는 지수야")
    await harness.reply_to(s.general, s.members[1], "나는 용사다!")
    history = await _active_history(harness, s.general)
    assert [m.display_name for m in history if m.role == "user"] == ["김지수", "용사 하늘"]
    prompt = harness.engine.prompts[-1]
    assert "김지수: 나는 지수야" in prompt and "용사 하늘: 나는 용사다!" in prompt
    assert "검을 든 떠돌이 용사" in prompt


async def test_restart_continues_the_session_from_stored_history(start_bot, tmp_path):
    database = f"sqlite+aiosqlite:///{tmp_path / 'persist.db'}"
    async with start_bot(database=database) as harness:
        s = harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)
        await harness.reply_to(s.general, s.members[0], "기억해 줘: 내 고양이 이름은 나비야")
    async with start_bot(database=database) as harness:
        s = harness.scenario
        await harness.reply_to(s.general, s.members[0], "내 고양이 이름 기억나?")
        prompt = harness.engine.prompts[-1]
        assert "내 고양이 이름은 나비야" in prompt
        history = await _active_history(harness, s.general)
        assert [m.role for m in history] == ["assistant", "user", "assistant", "user", "assistant"]


async def test_roleplay_in_a_thread_uses_the_parent_channel_webhook(harness):
    s = harness.scenario
    character_id = await harness.character(s.members[0])
    await harness.slash(s.moderator, "config channel", channel=s.general, enabled=True)
    greeting = await harness.start_roleplay(s.members[0], s.thread, character_id)
    assert greeting.channel_id == s.thread.id and greeting.username == "민지"
    reply = await harness.reply_to(s.thread, s.members[0], "스레드에서도 돼?")
    assert reply.channel_id == s.thread.id
    webhooks = [w for w in harness.fake.webhooks.values()]
    assert webhooks and all(w.channel_id == s.general.id for w in webhooks)


async def test_engine_failure_mid_reply_shows_an_error_and_stores_nothing(start_bot):
    engine = ScriptedEngine("이 답장은 중간에 끊어질 거야", fail_after=4)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)
        reply = await harness.reply_to(s.general, s.members[0], "말해 봐")
        assert "⚠️" in reply.content and "끊겼어요" in reply.content
        history = await _active_history(harness, s.general)
        assert [m.role for m in history] == ["assistant", "user"]


async def test_mentions_in_model_output_never_ping(start_bot):
    engine = ScriptedEngine("@everyone @here <@&123> 모두 모여!")
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)
        reply = await harness.reply_to(s.general, s.members[0], "사람들 불러 줘")
        assert "@everyone" in reply.content
        assert reply.allowed_mentions == {"parse": []}


async def test_regenerating_an_older_reply_is_refused_with_a_clear_message(harness):
    s = harness.scenario
    character_id = await harness.character(s.moderator)
    await harness.start_roleplay(s.moderator, s.general, character_id)
    first = await harness.reply_to(s.general, s.members[0], "첫 번째 말")
    await harness.reply_to(s.general, s.members[0], "두 번째 말")
    press = await harness.fake.press(s.members[0], first, _custom_id(first, "rp:regen"))
    text = await harness.final_text(press)
    assert press.ephemeral and "가장 최근 답장만" in text


async def test_a_webhook_deleted_between_turns_is_made_again_and_the_turn_answered(harness):
    s = harness.scenario
    character_id = await harness.character(s.moderator)
    await harness.start_roleplay(s.moderator, s.general, character_id)
    [old] = harness.fake.delete_channel_webhooks(s.general)  # a moderator removed it
    reply = await harness.reply_to(s.general, s.members[0], "아직 거기 있어?")
    assert reply.username == "민지" and has_buttons(reply)
    assert reply.webhook_id != old.id and reply.webhook_id in harness.fake.webhooks
    # Nobody was asked to send the line again, and it is in the story once.
    assert not [m for m in s.general.messages if "웹후크" in m.content]
    history = await _active_history(harness, s.general)
    assert [m.content for m in history if m.role == "user"] == ["아직 거기 있어?"]
    assert history[-1].role == "assistant" and history[-1].content in reply.content


async def test_a_new_avatar_updates_the_characters_webhook(harness):
    from synatra_bot.prompt.cards import default_avatar

    s = harness.scenario
    character_id = await harness.character(s.moderator)
    await harness.start_roleplay(s.moderator, s.general, character_id)
    [webhook] = harness.fake.webhooks.values()
    assert webhook.avatar_data is None
    record = await harness.slash(
        s.moderator,
        "character avatar",
        character=str(character_id),
        image=("민지.png", default_avatar(), "image/png"),
    )
    await harness.final_text(record)
    await harness.reply_to(s.general, s.members[0], "새 사진 예쁘다")
    assert webhook.avatar_data and webhook.avatar_data.startswith("data:image/png;base64,")


async def test_memory_is_shown_to_the_model_until_cleared(harness):
    s = harness.scenario
    character_id = await harness.character(s.moderator)
    await harness.start_roleplay(s.moderator, s.general, character_id)
    empty = await harness.slash(s.moderator, "rp memory", channel=s.general)
    assert "장기 기억이 없어요" in await harness.final_text(empty)
    refused = await harness.slash(s.members[0], "rp memory", channel=s.general, text="나는 왕이다")
    assert "시작한 사람이나 관리자만" in await harness.final_text(refused)
    saved = await harness.slash(
        s.moderator, "rp memory", channel=s.general, text="지수와 민지는 어제 바닷가에서 싸웠다."
    )
    assert "저장했어요" in await harness.final_text(saved)
    await harness.reply_to(s.general, s.members[0], "어제 일은 미안해")
    assert "### 지난 이야기\n지수와 민지는 어제 바닷가에서 싸웠다." in harness.engine.prompts[-1]
    cleared = await harness.slash(s.moderator, "rp memory", channel=s.general, text="-")
    assert "지웠어요" in await harness.final_text(cleared)
    await harness.reply_to(s.general, s.members[0], "이제 괜찮아?")
    assert "지난 이야기" not in harness.engine.prompts[-1]


async def test_a_running_scene_is_not_replaced_by_someone_else(harness):
    s = harness.scenario
    mine = await harness.character(s.members[0], "민지")
    theirs = await harness.character(s.members[1], "서윤")
    await harness.slash(s.moderator, "config channel", channel=s.general, enabled=True)
    await harness.start_roleplay(s.members[0], s.general, mine)
    await harness.reply_to(s.general, s.members[0], "안녕!")
    refused = await harness.slash(
        s.members[1], "rp start", channel=s.general, character=str(theirs)
    )
    text = await harness.final_text(refused)
    assert "민지와의 롤플레이가 진행 중" in text and refused.ephemeral
    active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
    assert active.character_id == mine
    shared = await harness.character(s.moderator, "하늘")
    moderator = await harness.slash(
        s.moderator, "rp start", channel=s.general, character=str(shared)
    )
    assert "하늘이 채널에 들어왔어요" in await harness.final_text(moderator)


async def test_a_stopped_bot_gives_what_it_froze_back_to_the_garbage_collector(start_bot):
    """The start-up freeze lasts as long as the bot: a process that starts another bot later
    does not keep the first one's reference cycles for ever."""
    async with start_bot():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
