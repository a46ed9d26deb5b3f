"""Card scripts when a stored message is edited: SillyTavern's `runOnEdit` scripts run again,
the others and RisuAI's do not (RisuAI stores an edit as typed). A player's edit goes through
the real discord.py client and the fake Discord; a reply's edit through the turn rules that
the front ends share."""

from __future__ import annotations

from typing import Any

from synatra_bot.prompt.scripts import Stage, apply_scripts, card_scripts
from synatra_bot.roleplay.types import Actor, Place
from tests.bot_harness import eventually
from tests.hostile_corpus import RecordingEngine
from tests.test_card_scripts import risu, st
from tests.test_card_scripts_e2e import stored_contents

STATUS = st("상태창", "/<status>(.*?)</status>/gs", "[$1]", [2], markdownOnly=True)


def edit_extensions() -> dict[str, Any]:
    return {
        "regex_scripts": [
            st("욕 가리기", "/바보/g", "**", [1], runOnEdit=True),
            st("웃음", "/ㅋㅋ+/g", "(웃음)", [1], runOnEdit=False),
            st("망설임 지우기", r"/음\.\.\. /g", "", [2], runOnEdit=True),
            # Exported before `runOnEdit` existed: SillyTavern reads it as off.
            {k: v for k, v in st("줄임", "/그래서/g", "그래서요", [2]).items() if k != "runOnEdit"},
            STATUS,
        ],
        "risuai": {"customScripts": [risu("미소", "ㅎㅎ+", "(미소)", "editinput")]},
    }


def test_only_run_on_edit_scripts_run_on_an_edit():
    scripts = card_scripts(edit_extensions())
    assert [s.run_on_edit for s in scripts] == [True, False, True, False, True, False]

    def line(text: str, **kw: Any) -> str:
        return apply_scripts(
            scripts, text, Stage.INPUT, role="user", char="민지", user="철수", **kw
        )

    assert line("바보 ㅋㅋ ㅎㅎ") == "** (웃음) (미소)"
    assert line("바보 ㅋㅋ ㅎㅎ", edit=True) == "** ㅋㅋ ㅎㅎ"
    out = "음... 그래서 <status>10</status>"
    reply = apply_scripts(scripts, out, Stage.OUTPUT, role="assistant", char="민지", user="철수")
    assert reply == "그래서요 <status>10</status>"
    edited = apply_scripts(
        scripts, out, Stage.OUTPUT, role="assistant", char="민지", user="철수", edit=True
    )
    assert edited == "그래서 <status>10</status>"
    # Display scripts are no edit's business: they run on whatever is stored.
    shown = apply_scripts(
        scripts, edited, Stage.DISPLAY, role="assistant", char="민지", user="철수", depth=0
    )
    assert shown == "그래서 [10]"


async def test_a_players_edit_runs_only_the_scripts_that_run_on_edit(start_bot, tokenizer):
    engine = RecordingEngine("음... 그래서 <status>체력 10</status>", tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        jisu = s.members[0]
        character = await harness.character(s.moderator, extensions=edit_extensions())
        await harness.start_roleplay(s.moderator, s.general, character)
        said = await fake.say(s.general, jisu, "바보야 ㅋㅋ ㅎㅎ")
        reply = await harness.reply_to(s.general, jisu, "안녕?")
        assert reply.content == "그래서요 [체력 10]"
        assert "**야 (웃음) (미소)" in await stored_contents(harness, "user")

        # Discord sends a message's text again when it only adds a link preview: the text, as
        # a new line would be stored, is what is stored, so nothing changes.
        place = Place(guild_id=s.guild.id, channel_id=s.general.id)
        editor = Actor(jisu.user.id, jisu.user.username, guild_id=s.guild.id)
        unchanged = await harness.bot.turns.edited(place, editor, said.id, "바보야 ㅋㅋ ㅎㅎ")
        assert unchanged.offer is None and unchanged.regenerate is None
        assert "**야 (웃음) (미소)" in await stored_contents(harness, "user")

        # A real edit (the newest line, so the bot offers to regenerate the reply to it).
        line = await fake.say(s.general, jisu, "바보 같은 날이야")
        answered = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=line
        )
        await fake.wait_until(lambda: "[체력 10]" in answered.content)
        await fake.edit(line, "바보 같은 날이야 ㅋㅋㅋ ㅎㅎ")
        await fake.wait_for_message(s.general, lambda m: "다시 생성" in m.content, after=answered)

        async def stored_edit():
            users = await stored_contents(harness, "user")
            return "** 같은 날이야 ㅋㅋㅋ ㅎㅎ" in users or None

        assert await eventually(stored_edit)


async def test_an_edited_reply_runs_its_speakers_run_on_edit_output_scripts(start_bot, tokenizer):
    engine = RecordingEngine("그래.", tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character = await harness.character(s.moderator, extensions=edit_extensions())
        await harness.start_roleplay(s.moderator, s.general, character)
        reply = await harness.reply_to(s.general, s.members[0], "안녕?")
        place = Place(guild_id=s.guild.id, channel_id=s.general.id)
        editor = Actor(s.moderator.user.id, "관리자", guild_id=s.guild.id, is_moderator=True)
        await harness.bot.turns.edited(place, editor, reply.id, "음... 그래서 <status>1</status>")
        assert "그래서 <status>1</status>" in await stored_contents(harness, "assistant")

        # With card scripts off in the channel, an edit is stored as typed.
        off = await harness.slash(s.moderator, "config scripts", enabled=False)
        await harness.final_text(off)
        await harness.bot.turns.edited(place, editor, reply.id, "음... 다시 <status>2</status>")
        assert "음... 다시 <status>2</status>" in await stored_contents(harness, "assistant")
