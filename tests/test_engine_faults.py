"""What players see when the engine fails, through the real bot against the fake Discord: a
reply that comes back empty ends with a localised note, stores nothing for it, and the next
line in the channel gets a reply."""

from __future__ import annotations

import pytest

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.storage import repository as repo
from tests.bot_harness import BotHarness, eventually, has_buttons


async def history_of(harness: BotHarness, channel) -> list:
    active = await repo.get_active_session(harness.sessions, channel_id=channel.id)
    return await repo.recent_history(harness.sessions, session_id=active.id, limit=100)


async def stored_reply(harness: BotHarness, channel, message) -> object:
    """The stored reply that `message` shows, once its ids are attached."""

    async def check():
        history = await history_of(harness, channel)
        last = history[-1]
        return last if last.role == "assistant" and message.id in last.discord_message_ids else None

    return await eventually(check)


@pytest.mark.parametrize("empty", ["", "  \n  "])
async def test_an_empty_reply_is_never_stored_as_the_characters_line(start_bot, tokenizer, empty):
    replies = iter([empty, "응, 이번엔 제대로 말할게."])
    engine = ScriptedEngine(lambda prompt: next(replies), tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)

        silent = await harness.reply_to(s.general, s.members[0], "왜 말이 없어?")
        assert "⚠️" in silent.content and "모델이 아무 말도 쓰지 않았어요" in silent.content
        assert "▌" not in silent.content and not has_buttons(silent)
        history = await history_of(harness, s.general)
        assert [m.role for m in history] == ["assistant", "user"]

        fine = await harness.reply_to(s.general, s.members[0], "다시 말해 줘")
        assert fine.content == "응, 이번엔 제대로 말할게." and has_buttons(fine)
        stored = await stored_reply(harness, s.general, fine)
        assert stored is not None and stored.content == "응, 이번엔 제대로 말할게."
