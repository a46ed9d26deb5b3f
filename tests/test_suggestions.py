"""`/rp suggest` through the real discord.py client and the fake Discord: the model writes the
player's next line, shown to them alone with Send / Regenerate / Edit; sent, it is posted
labelled as theirs and the character answers it."""

from __future__ import annotations

import itertools

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.storage import repository as repo
from tests.bot_harness import button_ids, has_buttons
from tests.test_bot_commands import fill


def engine(tokenizer) -> ScriptedEngine:
    """Suggestions (the prompt ends in the player's open line) and replies, numbered apart."""
    lines = itertools.count(1)
    replies = itertools.count(1)

    def answer(prompt: str) -> str:
        if prompt.rpartition("<|im_start|>")[2].lstrip().startswith("user"):
            return f" 제안 {next(lines)}: 같이 가자!"
        return f"답장 {next(replies)}."

    return ScriptedEngine(answer, tokenizer=tokenizer)


async def suggestion(harness, member, channel):
    record = await harness.slash(member, "rp suggest", channel=channel)
    await harness.fake.wait_until(
        lambda: record.original is not None and any(button_ids(record.original))
    )
    return record


async def test_a_suggested_line_is_sent_as_the_players_and_answered(start_bot, tokenizer):
    async with start_bot(engine=engine(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        player = s.members[0]
        done = await harness.slash(player, "persona set", name="지수", description="견습 마법사")
        await harness.final_text(done)
        character = await harness.character(s.moderator, "민지")
        await harness.start_roleplay(s.moderator, s.general, character)

        record = await suggestion(harness, player, s.general)
        shown = record.original
        assert shown.ephemeral and shown.content == "제안 1: 같이 가자!"
        prompt = harness.engine.prompts[-1]
        assert "지수의 차례" in prompt and prompt.rstrip().endswith("지수:")
        # Nothing entered the story yet.
        active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        turns = await repo.recent_history(harness.sessions, session_id=active.id, limit=10)
        assert [m.role for m in turns] == ["assistant"]

        again = await fake.press(player, shown, "rp:suggest:again")
        await fake.wait_for_response(again)
        await fake.wait_until(lambda: shown.content == "제안 2: 같이 가자!")

        sent = await fake.press(player, shown, "rp:suggest:send")
        await fake.wait_for_response(sent)
        posted = await fake.wait_for_message(
            s.general,
            lambda m: m.webhook_id is not None and m.author_name == "지수 (김지수)",
            after=0,
        )
        assert posted.content == "제안 2: 같이 가자!"
        reply = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and m.author_name == "민지", after=posted
        )
        await fake.wait_until(lambda: has_buttons(reply))
        assert reply.content == "답장 1."
        turns = await repo.recent_history(harness.sessions, session_id=active.id, limit=10)
        assert [(m.role, m.display_name, m.content) for m in turns[1:]] == [
            ("user", "지수", "제안 2: 같이 가자!"),
            ("assistant", "민지", "답장 1."),
        ]
        assert turns[1].author_id == player.user.id
        assert list(turns[1].discord_message_ids) == [posted.id]


async def test_an_edited_suggestion_is_sent_as_edited(start_bot, tokenizer):
    async with start_bot(engine=engine(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        player = s.members[1]
        character = await harness.character(s.moderator, "민지")
        greeting = await harness.start_roleplay(s.moderator, s.general, character)
        # The 💡 under a reply asks for a suggestion too.
        asked = await fake.press(player, greeting, "rp:suggest:new")
        await fake.wait_until(
            lambda: asked.original is not None and any(button_ids(asked.original))
        )
        opened = await fake.press(player, asked.original, "rp:suggest:edit")
        await fake.wait_for_response(opened)
        assert opened.modal is not None
        submitted = await fake.submit_modal(
            player, opened, fill(opened.modal, **{"✏️": "내 말로 쓸래."})
        )
        await fake.wait_for_response(submitted)
        posted = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and m.content == "내 말로 쓸래.", after=0
        )
        assert posted.author_name == player.display_name
        reply = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and m.author_name == "민지", after=posted
        )
        await fake.wait_until(lambda: has_buttons(reply))


async def test_a_suggestion_counts_against_the_rate_limit_and_needs_a_voice(start_bot, tokenizer):
    async with start_bot(engine=engine(tokenizer)) as harness:
        s = harness.scenario
        await harness.final_text(await harness.slash(s.moderator, "config ratelimit", per_minute=1))
        character = await harness.character(s.moderator, "민지")
        await harness.start_roleplay(s.moderator, s.general, character)
        await suggestion(harness, s.members[0], s.general)
        refused = await harness.slash(s.members[0], "rp suggest", channel=s.general)
        assert "천천히" in await harness.final_text(refused) and refused.ephemeral
