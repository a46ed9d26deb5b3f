"""Scenes with several characters and players, through the real discord.py client and the fake
Discord: a cast, who answers (named with Korean particles, else who last answered that player),
`/rp next`, regenerate and swipes on a character's reply, undo, and the moderators' settings."""

from __future__ import annotations

import itertools

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.storage import repository as repo
from tests.bot_harness import button_ids, eventually, has_buttons

#: The end of a decoded prompt's final header (decoding puts a space after special tokens).
HEADER = "assistant\n"


def speaker_replies(tokenizer) -> ScriptedEngine:
    """An engine whose n-th reply reads "<speaker> 대답 n.": the speaker is the name the
    prompt's final header asks for (a group scene ends in "<|im_start|>assistant\\n이름:")."""
    counter = itertools.count(1)

    def reply(prompt: str) -> str:
        tail = prompt.rpartition(HEADER)[2]
        speaker = tail.split(":")[0].strip() if ":" in tail else "?"
        return f" {speaker} 대답 {next(counter)}."

    return ScriptedEngine(reply, tokenizer=tokenizer)


def custom_id(message, prefix: str) -> str:
    return next(b for b in button_ids(message) if b.startswith(prefix))


async def history(harness, channel):
    active = await repo.get_active_session(harness.sessions, channel_id=channel.id)
    return await repo.recent_history(harness.sessions, session_id=active.id, limit=50)


async def group_scene(harness, *, enabled_by=None):
    """#general with 민지 (who started it) and 준 (joined with a group greeting)."""
    s = harness.scenario
    starter = enabled_by or s.moderator
    enabled = await harness.slash(s.moderator, "config channel", channel=s.general, enabled=True)
    await harness.final_text(enabled)
    minji = await harness.character(starter, "민지")
    jun = await harness.character(
        starter,
        "준",
        description="{{char}}는 민지의 소꿉친구다.",
        first_message="(혼자 있을 때의 인사)",
        extensions={"unknown_fields": {"group_only_greetings": ["나도 왔어, {{user}}!"]}},
    )
    await harness.start_roleplay(starter, s.general, minji)
    added = await harness.slash(starter, "rp cast add", channel=s.general, character=str(jun))
    assert "준" in await harness.final_text(added)
    greeting = await harness.fake.wait_for_message(
        s.general, lambda m: m.webhook_id is not None and m.author_name == "준", after=0
    )
    return minji, jun, greeting


async def test_a_group_scene_with_two_players_plays_end_to_end(start_bot, tokenizer):
    async with start_bot(engine=speaker_replies(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        jisu, minho = s.members[0], s.members[1]
        for member, name, about in ((jisu, "지수", "견습 마법사"), (minho, "민호", "떠돌이 기사")):
            done = await harness.slash(member, "persona set", name=name, description=about)
            await harness.final_text(done)
        minji, jun, greeting = await group_scene(harness)
        assert greeting.content.startswith("나도 왔어,") and "(혼자" not in greeting.content

        # Named with a particle attached: that character answers, through its own webhook.
        to_jun = await harness.reply_to(s.general, jisu, "준아, 오늘 뭐 해?")
        assert to_jun.author_name == "준" and to_jun.content.startswith("준 대답 1.")
        to_minji = await harness.reply_to(s.general, minho, "민지는 어떻게 생각해?")
        assert to_minji.author_name == "민지" and to_minji.content.startswith("민지 대답 2.")
        # Nobody named: the character that last answered this player answers again.
        again = await harness.reply_to(s.general, jisu, "그럼 같이 가자.")
        assert again.author_name == "준"

        # The prompt knows both players' personas and the other character's lines by name.
        prompt = harness.engine.prompts[-1]
        assert "견습 마법사" in prompt and "떠돌이 기사" in prompt
        assert "민지: 민지 대답 2." in prompt and prompt.endswith(HEADER + "준:")

        # /rp next makes one character speak now, without a player's message.
        asked = await harness.slash(minho, "rp next", channel=s.general, character=str(minji))
        await harness.final_text(asked)
        spoke = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=again
        )
        await fake.wait_until(lambda: has_buttons(spoke))
        assert spoke.author_name == "민지" and "민지 대답" in spoke.content

        # Regenerate and swipe on a character's reply: it stays that character's.
        before = spoke.content
        regen = await fake.press(jisu, spoke, custom_id(spoke, "rp:regen"))
        await fake.wait_for_response(regen)
        await fake.wait_until(lambda: spoke.content != before and has_buttons(spoke))
        assert spoke.author_name == "민지" and spoke.content.startswith("민지 대답")
        assert "2/2" in str(spoke.components)
        back = await fake.press(jisu, spoke, custom_id(spoke, "rp:prev"))
        await fake.wait_for_response(back)
        await fake.wait_until(lambda: spoke.content == before)

        turns = await history(harness, s.general)
        speakers = [(m.role, m.character_id) for m in turns if m.role == "assistant"]
        assert speakers[:2] == [("assistant", minji), ("assistant", jun)]
        assert [c for _, c in speakers[2:]] == [jun, minji, jun, minji]

        # Undo takes back the newest reply (here one no player asked for) and nothing else.
        undone = await harness.slash(s.moderator, "rp undo", channel=s.general)
        await harness.final_text(undone)
        await fake.wait_until(lambda: spoke.deleted)
        remaining = await history(harness, s.general)
        assert remaining[-1].content == again.content and not again.deleted


async def test_every_addressed_character_answers_in_turn_where_the_channel_says_so(
    start_bot, tokenizer
):
    async with start_bot(engine=speaker_replies(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        await group_scene(harness)
        first = await harness.reply_to(s.general, s.members[0], "민지야, 준아, 둘 다 어때?")
        assert first.author_name == "민지"
        await fake.wait_until(lambda: has_buttons(first))
        assert len([m for m in s.general.visible_messages if m.author_name == "준"]) == 1

        setting = await harness.slash(
            s.moderator, "config scene", channel=s.general, answer_every=True
        )
        await harness.final_text(setting)
        said = await fake.say(s.general, s.members[0], "준이랑 민지는 어디 가?")
        replies = await eventually(lambda: _replies_after(s.general, said.id, count=2), timeout=20)
        assert [m.author_name for m in replies] == ["준", "민지"]
        turns = await history(harness, s.general)
        assert [m.role for m in turns[-3:]] == ["user", "assistant", "assistant"]


async def _replies_after(channel, message_id: int, *, count: int):
    found = [
        m
        for m in channel.visible_messages
        if m.id > message_id and m.webhook_id is not None and has_buttons(m)
    ]
    return found if len(found) >= count else None


async def test_the_cast_is_listed_limited_by_moderators_and_keeps_one_character(
    start_bot, tokenizer
):
    async with start_bot(engine=speaker_replies(tokenizer)) as harness:
        s = harness.scenario
        minji, jun, _ = await group_scene(harness)
        listed = await harness.slash(s.moderator, "rp cast list", channel=s.general)
        text = await harness.final_text(listed)
        assert "1. 민지" in text and "2. 준" in text and "2/4" in text

        limit = await harness.slash(s.moderator, "config scene", channel=s.general, cast_limit=2)
        await harness.final_text(limit)
        third = await harness.character(s.moderator, "하늘")
        full = await harness.slash(
            s.moderator, "rp cast add", channel=s.general, character=str(third)
        )
        assert "2명" in await harness.final_text(full)
        again = await harness.slash(
            s.moderator, "rp cast add", channel=s.general, character=str(jun)
        )
        assert "이미" in await harness.final_text(again)

        # Only the scene's starter or a moderator changes the cast.
        member = await harness.slash(
            s.members[1], "rp cast remove", channel=s.general, character=str(jun)
        )
        assert "시작한 사람이나 관리자만" in await harness.final_text(member)
        left = await harness.slash(s.moderator, "rp cast remove", channel=s.general, character="준")
        assert "준" in await harness.final_text(left)
        last = await harness.slash(
            s.moderator, "rp cast remove", channel=s.general, character=str(minji)
        )
        assert "한 명은" in await harness.final_text(last)
        # 준 is gone: naming him is just a word, 민지 answers.
        reply = await harness.reply_to(s.general, s.members[0], "준은 어디 갔어?")
        assert reply.author_name == "민지"


async def test_a_character_the_starter_may_not_use_cannot_join(start_bot, tokenizer):
    async with start_bot(engine=speaker_replies(tokenizer)) as harness:
        s = harness.scenario
        await group_scene(harness)
        private = await harness.character(s.members[2], "비밀")
        refused = await harness.slash(
            s.moderator, "rp cast add", channel=s.general, character=str(private)
        )
        assert "없거나" in await harness.final_text(refused)
        active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        cast = await repo.session_cast(harness.sessions, session_id=active.id)
        assert len(cast) == 2


async def test_a_chat_server_that_cannot_continue_is_told_once_in_a_group_scene(
    start_bot, tokenizer
):
    from aiohttp import web

    from synatra_bot.engine.openai_compat import OpenAICompatEngine
    from tests.engine_helpers import loopback_app, sse_reply

    bodies: list[dict] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        bodies.append(body)
        if "continue_final_message" in body:  # as `transformers serve` answers it
            detail = [{"loc": ["body", "continue_final_message"], "msg": "Extra inputs"}]
            return web.json_response({"detail": detail}, status=422)
        choices = (
            {"delta": {"content": "좋아, 같이 가자!"}, "finish_reason": None},
            {"delta": {}, "finish_reason": "stop"},
        )
        return await sse_reply(request, choices)

    async with loopback_app("/v1/chat/completions", chat) as url:
        engine = OpenAICompatEngine(
            url, model="tiny", tokenizer=tokenizer, api="chat", max_retries=0
        )
        async with start_bot(engine=engine) as harness:
            s = harness.scenario
            await group_scene(harness)
            first = await harness.reply_to(s.general, s.members[0], "민지야, 바다 갈래?")
            assert "좋아, 같이 가자!" in first.content
            notice = await harness.fake.wait_for_message(
                s.general, lambda m: "ENGINE_API=completions" in m.content, after=first
            )
            assert notice.content.startswith("⚠️ 생성 서버가 답장을 정해진 시작에서 이어 쓰지")
            await harness.reply_to(s.general, s.members[0], "준도 같이 가자.")
            told = [m for m in harness.fake.messages_in(s.general) if "ENGINE_API" in m.content]
            assert len(told) == 1
    # Refused once, by name; the speaker's name was sent as the final message that one time.
    assert sum(1 for body in bodies if "continue_final_message" in body) == 1
