"""Display-only card scripts on what the bot posts besides a fresh reply, through the real
discord.py client and the fake Discord: the greeting of a character joining the cast, and the
reply a reopened scene shows again. What is stored (and what the model reads) stays as written."""

from __future__ import annotations

from synatra_bot.storage import repository as repo
from tests.bot_harness import has_buttons
from tests.hostile_corpus import RecordingEngine
from tests.test_card_scripts import st
from tests.test_card_scripts_e2e import REPLY, scripted_extensions, stored_contents

STATUS = st("상태창", "/<status>(.*?)</status>/gs", "\n> 📊 {{char}}: $1", [2], markdownOnly=True)


async def test_a_joining_characters_greeting_is_shown_through_its_display_scripts(
    start_bot, tokenizer
):
    engine = RecordingEngine("그래.", tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        minji = await harness.character(s.moderator, "민지")
        jun = await harness.character(
            s.moderator,
            "준",
            extensions={
                "regex_scripts": [STATUS],
                "unknown_fields": {"group_only_greetings": ["준도 왔어. <status>체력 50</status>"]},
            },
        )
        await harness.start_roleplay(s.moderator, s.general, minji)
        added = await harness.slash(s.moderator, "rp cast add", character=str(jun))
        assert "준" in await harness.final_text(added)
        greeting = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and m.author_name == "준", after=0
        )
        await fake.wait_until(lambda: greeting.content == "준도 왔어. \n> 📊 준: 체력 50")
        # Stored as written, and so the model reads it.
        assert "준도 왔어. <status>체력 50</status>" in await stored_contents(harness, "assistant")
        await harness.reply_to(s.general, s.members[0], "준아, 안녕!")
        assert "준도 왔어. <status>체력 50</status>" in engine.prompts[-1]
        assert "📊" not in engine.prompts[-1]


async def test_a_reopened_scene_shows_its_newest_reply_through_display_scripts(
    start_bot, tokenizer
):
    engine = RecordingEngine(REPLY, tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator, extensions=scripted_extensions())
        await harness.start_roleplay(s.moderator, s.general, character)
        reply = await harness.reply_to(s.general, s.members[0], "안녕")
        assert reply.content == "안녕! \n> 📊 민지: 체력 10"
        first = await repo.get_active_session(harness.sessions, channel_id=s.general.id)

        reset = await harness.slash(s.moderator, "rp reset", channel=s.general)
        await harness.final_text(reset)
        greeting = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=reply
        )
        resumed = await harness.slash(
            s.moderator, "rp resume", channel=s.general, scene=str(first.id)
        )
        assert f"#{first.id}" in await harness.final_text(resumed)
        shown = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=greeting
        )
        await fake.wait_until(lambda: has_buttons(shown))
        assert shown.content == "안녕! \n> 📊 민지: 체력 10"
        assert "안녕! <status>체력 10</status>" in await stored_contents(harness, "assistant")
