"""A reply on screen never stays half-finished: a storage failure injected at each step of a
turn ends the reply with a short note (no cursor, no stop button), keeps the player's message
where it was stored, and the next message gets a normal reply. Also: edited messages enter the
story cleaned the same way as new ones."""

from __future__ import annotations

import pytest

from synatra_bot.storage import repository as repo
from tests.bot_harness import button_ids, eventually, has_buttons

FAILED_NOTE = "봇 쪽에서 문제가 생겼어요"


class StorageFails:
    """Wraps a repository function so that, once armed, it raises the first time
    `when(args, kwargs)` holds. Installed before the bot starts (the group-commit batcher
    keeps the function it was built with)."""

    def __init__(self, monkeypatch, name: str, when) -> None:
        self.real = getattr(repo, name)
        self.when = when
        self.armed = False
        self.fired = False
        monkeypatch.setattr(repo, name, self)

    async def __call__(self, *args, **kwargs):
        if self.armed and not self.fired and self.when(args, kwargs):
            self.fired = True
            raise RuntimeError("disk I/O error (injected)")
        return await self.real(*args, **kwargs)


def _assistant_turns(args, kwargs) -> bool:
    turns = args[1] if len(args) > 1 else kwargs.get("turns", [])
    return any(turn.role == "assistant" for turn in turns)


STEPS = {
    # storing the player's message (group commit)
    "player message": ("add_messages", lambda a, k: not _assistant_turns(a, k)),
    # storing the finished reply
    "reply": ("add_messages", _assistant_turns),
}


async def _history(harness, channel):
    active = await repo.get_active_session(harness.sessions, channel_id=channel.id)
    return await repo.recent_history(harness.sessions, session_id=active.id, limit=50)


@pytest.mark.parametrize("step", list(STEPS))
async def test_a_storage_failure_at_any_step_ends_the_reply_with_a_note(
    start_bot, monkeypatch, step
):
    failure = StorageFails(monkeypatch, *STEPS[step])
    async with start_bot() as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        failure.armed = True
        said = await fake.say(s.general, s.members[0], "이번엔 실패할 거야")
        reply = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=said
        )
        await fake.wait_until(lambda: FAILED_NOTE in reply.content, timeout=20)
        assert failure.fired
        assert "▌" not in reply.content and not any("stop" in b for b in button_ids(reply))
        if step != "player message":
            users = [m.content for m in await _history(harness, s.general) if m.role == "user"]
            assert "이번엔 실패할 거야" in users

        after = await harness.reply_to(s.general, s.members[0], "다시 해 보자")
        assert has_buttons(after) and FAILED_NOTE not in after.content


async def test_a_storage_failure_while_regenerating_puts_the_reply_back(start_bot, monkeypatch):
    failure = StorageFails(monkeypatch, "add_alternative", lambda a, k: True)
    async with start_bot() as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        reply = await harness.reply_to(s.general, s.members[0], "안녕")
        shown = reply.content
        failure.armed = True
        regen = next(b for b in button_ids(reply) if b.startswith("rp:regen"))
        await fake.wait_for_response(await fake.press(s.members[0], reply, regen))
        await fake.wait_until(
            lambda: any(
                FAILED_NOTE in m.content for m in s.general.visible_messages if not m.webhook_id
            )
        )
        await fake.wait_until(lambda: reply.content == shown and has_buttons(reply))
        assert failure.fired and "1/" not in str(reply.components)


async def test_an_edited_message_is_cleaned_like_a_new_one(harness):
    fake, s = harness.fake, harness.scenario
    character = await harness.character(s.moderator)
    await harness.start_roleplay(s.moderator, s.general, character)
    said = await fake.say(s.general, s.members[0], "안녕")
    reply = await fake.wait_for_message(s.general, lambda m: m.webhook_id is not None, after=said)
    await fake.wait_until(lambda: has_buttons(reply))
    friend = s.members[1]

    async def players_lines_are(expected) -> bool:
        history = await _history(harness, s.general)
        return [m.content for m in history if m.role == "user"] == expected

    await fake.edit(said, f"<@{friend.id}> 같이 놀자")
    assert await eventually(lambda: players_lines_are([f"@{friend.display_name} 같이 놀자"]))

    await fake.edit(said, "// 잠깐 딴 얘기")  # now out of character: it leaves the story
    assert await eventually(lambda: players_lines_are([]))
