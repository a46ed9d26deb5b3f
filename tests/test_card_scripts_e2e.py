"""Card scripts through the real discord.py client and the fake Discord: what the channel shows,
what is stored and what the model is shown."""

from __future__ import annotations

from typing import Any

from synatra_bot.prompt.builder import HistoryMessage
from synatra_bot.roleplay.types import Place
from synatra_bot.storage import repository as repo
from tests.bot_harness import button_ids, eventually, has_buttons
from tests.hostile_corpus import RecordingEngine
from tests.test_card_scripts import risu, st

REPLY = "음... 안녕! <status>체력 10</status>"


def scripted_extensions() -> dict[str, Any]:
    return {
        "regex_scripts": [
            # The model's habit, cleaned before the reply is stored and shown.
            st("망설임 지우기", r"/음\.\.\. /g", "", [2]),
            # A status window: shown in the channel only.
            st(
                "상태창",
                "/<status>(.*?)</status>/gs",
                "\n> 📊 {{char}}: $1",
                [2],
                markdownOnly=True,
            ),
            # What the prompt sees only: the player's secret word hidden from the model.
            st("비밀", "/비밀번호 (\\d+)/g", "비밀번호 ****", [1], promptOnly=True),
        ],
        "risuai": {"customScripts": [risu("웃음", "ㅋㅋ+", "(웃음)", "editinput")]},
    }


async def stored_contents(harness, role: str) -> list[str]:
    active = await harness.bot.core.active(_place(harness))
    assert active is not None
    return [m.content for m in await harness.bot.core.recent(active) if m.role == role]


def _place(harness) -> Place:
    s = harness.scenario
    return Place(guild_id=s.guild.id, channel_id=s.general.id)


async def test_output_display_prompt_and_input_scripts_apply_where_they_belong(
    start_bot, tokenizer
):
    engine = RecordingEngine(REPLY, tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character = await harness.character(s.moderator, extensions=scripted_extensions())
        await harness.start_roleplay(s.moderator, s.general, character)
        reply = await harness.reply_to(s.general, s.members[0], "ㅋㅋㅋ 비밀번호 1234 알려줄게")

        # Shown: cleaned by the output script, the status window drawn by the display one.
        assert reply.content == "안녕! \n> 📊 민지: 체력 10"
        # Stored: what the output script left; the display-only script changed nothing.
        assert await eventually(
            lambda: _has(stored_contents(harness, "assistant"), "안녕! <status>체력 10</status>")
        )
        # The player's line is stored after the input script, with the secret as typed...
        assert "(웃음) 비밀번호 1234 알려줄게" in await stored_contents(harness, "user")
        # ...and the model never saw it (prompt-only), nor the hesitation of its first reply.
        await harness.reply_to(s.general, s.members[0], "또 보자")
        prompt = engine.prompts[-1]
        assert "비밀번호 ****" in prompt and "1234" not in prompt
        assert "<status>체력 10</status>" in prompt and "음..." not in prompt
        # The line's stored token count stays that of the stored text.
        core = harness.bot.core
        active = await core.active(_place(harness))
        [line] = [m for m in await core.recent(active) if "1234" in m.content]
        stored = await repo.get_message(harness.sessions, message_id=line.id)
        assert stored is not None
        assert stored.token_count == core.builder.count_message(
            HistoryMessage("user", stored.display_name, stored.content)
        )

        context = await harness.slash(s.moderator, "rp context")
        assert "카드 스크립트: 비밀" in await harness.final_text(context)


async def _has(contents, expected: str) -> bool:
    return expected in await contents


async def test_moderators_turn_card_scripts_off_in_a_channel(start_bot, tokenizer):
    engine = RecordingEngine(REPLY, tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character = await harness.character(s.moderator, extensions=scripted_extensions())
        await harness.start_roleplay(s.moderator, s.general, character)
        off = await harness.slash(s.moderator, "config scripts", enabled=False)
        assert "card_scripts=False" in await harness.final_text(off)
        reply = await harness.reply_to(s.general, s.members[0], "ㅋㅋ 안녕")
        assert reply.content == REPLY
        assert "ㅋㅋ 안녕" in await stored_contents(harness, "user")
        shown = await harness.slash(s.moderator, "config show")
        assert "card_scripts" in await harness.final_text(shown)


async def test_regenerated_and_browsed_replies_are_shown_through_display_scripts(
    start_bot, tokenizer
):
    replies = iter(["하나 <status>체력 10</status>", "둘 <status>체력 9</status>"])
    engine = RecordingEngine(lambda prompt: next(replies), tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character = await harness.character(s.moderator, extensions=scripted_extensions())
        await harness.start_roleplay(s.moderator, s.general, character)
        reply = await harness.reply_to(s.general, s.members[0], "안녕")
        assert reply.content == "하나 \n> 📊 민지: 체력 10"
        regen = next(b for b in button_ids(reply) if b.startswith("rp:regen"))
        await harness.fake.wait_for_response(await harness.fake.press(s.members[0], reply, regen))
        await harness.fake.wait_until(
            lambda: reply.content == "둘 \n> 📊 민지: 체력 9" and has_buttons(reply)
        )
        prev = next(b for b in button_ids(reply) if b.startswith("rp:prev"))
        await harness.fake.wait_for_response(await harness.fake.press(s.members[0], reply, prev))
        await harness.fake.wait_until(lambda: reply.content == "하나 \n> 📊 민지: 체력 10")
        assert "하나 <status>체력 10</status>" in await stored_contents(harness, "assistant")


async def test_scripts_that_would_leave_nothing_are_passed_over(start_bot, tokenizer):
    erase = {
        "regex_scripts": [
            st("다 지우기", "/[\\s\\S]+/g", "", [1, 2]),
            st("화면도 지우기", "/[\\s\\S]+/g", "", [2], markdownOnly=True),
        ]
    }
    engine = RecordingEngine("사라지지 않는 답장", tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character = await harness.character(s.moderator, extensions=erase)
        await harness.start_roleplay(s.moderator, s.general, character)
        reply = await harness.reply_to(s.general, s.members[0], "안녕")
        assert reply.content == "사라지지 않는 답장"
        assert "안녕" in await stored_contents(harness, "user")


async def test_a_message_the_prompt_only_scripts_empty_leaves_the_prompt(start_bot, tokenizer):
    # As a card that sends only the newest messages: older ones are emptied for the prompt.
    keep_two = {
        "regex_scripts": [st("최근만", "/[\\s\\S]+/", "", [1, 2], promptOnly=True, minDepth=2)]
    }
    engine = RecordingEngine("응답", tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character = await harness.character(s.moderator, extensions=keep_two)
        await harness.start_roleplay(s.moderator, s.general, character)
        await harness.reply_to(s.general, s.members[0], "첫째 줄 사과")
        await harness.reply_to(s.general, s.members[0], "둘째 줄 배")
        prompt = engine.prompts[-1]
        assert "둘째 줄 배" in prompt and "첫째 줄 사과" not in prompt
        assert "첫째 줄 사과" in await stored_contents(harness, "user")


async def test_a_new_scenes_greeting_is_shown_through_display_scripts(start_bot, tokenizer):
    async with start_bot(engine=RecordingEngine(REPLY, tokenizer=tokenizer)) as harness:
        s = harness.scenario
        character = await harness.character(
            s.moderator,
            first_message="어서 와, {{user}}. <status>체력 100</status>",
            extensions=scripted_extensions(),
        )
        greeting = await harness.start_roleplay(s.moderator, s.general, character)
        assert greeting.content.endswith(". \n> 📊 민지: 체력 100")
        assert any(
            "<status>체력 100</status>" in c for c in await stored_contents(harness, "assistant")
        )
