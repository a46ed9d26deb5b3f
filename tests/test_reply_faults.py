"""What the channel shows when Discord or the process fails mid-reply: the real bot against the
fake Discord (5xx, deleted webhooks) and a real bot process killed with SIGKILL. The rule: what
the model remembers is what the channel shows, and nothing on screen stays unfinished."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.storage import open_replies
from synatra_bot.storage import repository as repo
from tests.bot_harness import BotHarness, eventually, has_buttons, stop_button
from tests.bot_process import bot_env, bot_process, start_scene
from tests.fault_helpers import LONG_REPLY, SHORT_REPLY

WEBHOOK_EDIT = "/webhooks/{webhook_id}/{token}/messages/{message_id}"
CURSOR = "▌"
STORY = "옛날 옛적에 작은 마을에 이야기꾼이 살았어. " * 8


def story_when(word: str):
    """A scripted reply: the long story when the newest player line holds `word`."""

    def reply(prompt: str) -> str:
        newest = prompt.rsplit("<|im_start|>user", 1)[-1]
        return STORY if word in newest else SHORT_REPLY

    return reply


async def _history(harness: BotHarness, channel) -> list:
    active = await repo.get_active_session(harness.sessions, channel_id=channel.id)
    return await repo.recent_history(harness.sessions, session_id=active.id, limit=100)


def _finished(message) -> bool:
    """Nothing unfinished: no cursor, no stop button."""
    return not message.content.endswith(CURSOR) and stop_button(message) is None


async def test_five_503s_on_a_streaming_edit_never_stall_the_reply_and_it_ends_as_stored(
    start_bot,
):
    engine = ScriptedEngine(STORY, delay_s=0.03)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        said = await fake.say(s.general, s.members[0], "이야기해 줘")
        reply = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and stop_button(m), after=said
        )
        await fake.wait_until(lambda: "옛날" in reply.content)
        fake.fail_requests("PATCH", WEBHOOK_EDIT, times=5)
        # The stream goes on while that edit waits out Discord's failures in the background.
        await fake.wait_until(lambda: has_buttons(reply), timeout=60)
        assert len(fake.failed) == 5
        assert not engine.cancelled
        history = await _history(harness, s.general)
        assert history[-1].role == "assistant"
        assert reply.content == history[-1].content.strip() == STORY.strip()
        assert _finished(reply)


async def test_five_503s_on_the_final_edit_are_waited_out_and_the_reply_shown_as_stored(
    start_bot,
):
    async with start_bot(engine=ScriptedEngine(SHORT_REPLY)) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        # A short reply has no streaming edit: the one edit is the final one.
        fake.fail_requests("PATCH", WEBHOOK_EDIT, times=5)
        said = await fake.say(s.general, s.members[0], "안녕")
        reply = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=said
        )
        await fake.wait_until(lambda: has_buttons(reply), timeout=60)
        assert len(fake.failed) == 5
        history = await _history(harness, s.general)
        assert [m.role for m in history][-2:] == ["user", "assistant"]
        assert reply.content == history[-1].content == SHORT_REPLY


async def test_a_final_edit_discord_never_takes_leaves_no_stored_line_and_is_finished_later(
    start_bot, tokenizer
):
    engine = ScriptedEngine(story_when("내 차례"), delay_s=0.02, tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        harness.bot.replies.final_deadline_s = 1.0
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        fake.fail_requests("PATCH", WEBHOOK_EDIT, times=None)  # Discord down for edits
        said = await fake.say(s.general, s.members[0], "대답해 줘")
        stuck = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=said
        )
        notice = await fake.wait_for_message(
            s.general, lambda m: "디스코드가 응답하지 않아" in m.content, after=said, timeout=60
        )
        assert notice.webhook_id is None
        # The model does not remember a line nobody saw.
        history = await _history(harness, s.general)
        assert [m.content for m in history][-1] == "대답해 줘"
        assert stop_button(stuck) is not None  # still on screen until Discord answers again

        # Another player's reply streams now; the old ⏹ answers privately and stops nothing.
        fake.clear_failures()
        other = await fake.say(s.general, s.members[1], "내 차례야")
        live = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and stop_button(m), after=other
        )
        press = await fake.press(s.members[0], stuck, stop_button(stuck))
        assert "이미 끝난 답장" in await harness.final_text(press)
        assert press.ephemeral
        await fake.wait_until(lambda: has_buttons(live), timeout=30)
        assert live.content == STORY.strip() and not engine.cancelled

        # Once Discord answers, the unfinished reply is finished: nothing was said in it, so
        # its placeholder goes.
        assert await harness.bot.unfinished.finish_unfinished() == 1
        assert stuck.deleted
        assert await open_replies.open_replies(harness.sessions) == []


async def test_a_webhook_deleted_mid_reply_is_made_again_and_the_reply_finishes_through_it(
    start_bot,
):
    engine = ScriptedEngine(STORY, delay_s=0.03)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        said = await fake.say(s.general, s.members[0], "이야기해 줘")
        first = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and stop_button(m), after=said
        )
        await fake.wait_until(lambda: "옛날" in first.content)
        [old] = fake.delete_channel_webhooks(s.general)
        reply = await fake.wait_for_message(
            s.general,
            lambda m: m.webhook_id not in (None, old.id) and has_buttons(m),
            after=first,
            timeout=30,
        )
        assert reply.username == "민지" and reply.content == STORY.strip()
        # The half reply of the deleted webhook is gone (the bot may manage messages here).
        assert first.deleted
        history = await _history(harness, s.general)
        assert [m.content for m in history if m.role == "user"] == ["이야기해 줘"]
        assert history[-1].content.strip() == reply.content
        assert list(history[-1].discord_message_ids) == [reply.id]
        assert not [m for m in s.general.visible_messages if "웹후크" in m.content]


def _turns(database: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return connection.execute(
            "SELECT role, content FROM messages WHERE NOT deleted AND chosen ORDER BY id"
        ).fetchall()


async def test_sigkill_mid_reply_leaves_nothing_unfinished_and_the_line_is_answered_on_restart(
    discord_fake, tokenizer_dir, tmp_path
):
    fake, s = discord_fake, discord_fake.scenario
    database, prompts = tmp_path / "kill.db", tmp_path / "prompts.log"
    env = bot_env(fake, database, tokenizer_dir, prompts)
    async with bot_process(fake, env, tmp_path / "bot1.log") as process:
        await start_scene(fake, database, [s.general], description="{{char}}는 활발한 대학생이다.")
        asked = await fake.say(s.general, s.members[0], "길게 이야기해 줘")
        partial = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=asked
        )
        await fake.wait_until(lambda: "옛날" in partial.content, timeout=20)
        process.kill()
        await process.wait()
    # What a crash leaves: a half reply with its cursor and a live stop button.
    assert partial.content.endswith(CURSOR) and stop_button(partial)
    cut_at = partial.content

    async with bot_process(fake, env, tmp_path / "bot2.log"):
        await fake.wait_until(lambda: _finished(partial), timeout=30)
        assert "봇이 다시 시작되어 끊겼어요" in partial.content
        assert partial.content.startswith(cut_at.removesuffix(CURSOR).rstrip())
        assert not has_buttons(partial)
        # The line left waiting is answered afresh; the cut words never enter the story.
        answer = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and m.id > partial.id, after=asked
        )
        await fake.wait_until(lambda: has_buttons(answer), timeout=30)
        assert answer.content == LONG_REPLY.strip()
        assert [role for role, _ in _turns(database)] == ["assistant", "user", "assistant"]
        again = await fake.say(s.general, s.members[0], "계속해 줘")
        reply = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=again
        )
        await fake.wait_until(lambda: has_buttons(reply), timeout=20)
        assert reply.content == SHORT_REPLY
    turns = [content.strip() for _, content in _turns(database)]
    assert turns[1:] == ["길게 이야기해 줘", LONG_REPLY.strip(), "계속해 줘", SHORT_REPLY]
    assert cut_at.removesuffix(CURSOR).strip() not in turns  # the cut words are not a turn


def _frame(message, text: str, open_id: int) -> None:
    """Make `message` look as a crash left it: a streaming frame with its stop button."""
    message.content = text + " " + CURSOR
    message.components = [
        {
            "type": 1,
            "components": [
                {"type": 2, "style": 4, "custom_id": f"rp:stop:{open_id}", "emoji": {"name": "⏹"}}
            ],
        }
    ]


async def test_a_stored_reply_left_as_a_frame_is_found_by_its_button_and_shown_as_stored(harness):
    s = harness.scenario
    character = await harness.character(s.moderator)
    await harness.start_roleplay(s.moderator, s.general, character)
    reply = await harness.reply_to(s.general, s.members[0], "안녕")
    stored = (await _history(harness, s.general))[-1]
    active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
    # Killed after the reply was stored, before its final edit and before its id was written.
    left = await open_replies.open_reply(
        harness.sessions,
        guild_id=s.guild.id,
        channel_id=s.general.id,
        parent_channel_id=None,
        webhook_id=reply.webhook_id,
        session_id=active.id,
        kind="reply",
    )
    _frame(reply, stored.content[:5], left.id)
    unfinished = harness.bot.unfinished
    assert await unfinished.adopt_left_over() == 1
    assert await unfinished.finish_unfinished() == 1
    assert reply.content == stored.content.strip() and has_buttons(reply)
    assert _finished(reply)
    assert await open_replies.open_replies(harness.sessions) == []


async def test_a_cut_reply_in_a_dm_keeps_its_words_marked_as_cut_and_not_in_the_story(start_bot):
    from tests.test_dm_roleplay import from_bot, start_in_dm

    async with start_bot() as harness:
        fake, s = harness.fake, harness.scenario
        user = s.members[0]
        character = await harness.character(user)
        dm, greeting = await start_in_dm(harness, user, character)
        active = await repo.get_active_session(harness.sessions, channel_id=dm.id)
        # What a crash left in the DM: the bot's own message, the name, some words, a cursor.
        said = await fake.say(dm, user, "이야기해 줘")
        reply = await fake.wait_for_message(dm, from_bot(harness), after=said)
        await fake.wait_until(lambda: has_buttons(reply))
        history = await _history(harness, dm)
        await harness.bot.core.drop_reply(history[-1])
        left = await open_replies.open_reply(
            harness.sessions,
            guild_id=None,
            channel_id=dm.id,
            parent_channel_id=None,
            webhook_id=None,
            session_id=active.id,
            kind="reply",
            discord_message_ids=[reply.id],
        )
        _frame(reply, "**민지**\n옛날 옛적에", left.id)
        assert await harness.bot.unfinished.adopt_left_over() == 1
        assert await harness.bot.unfinished.finish_unfinished() == 1
        assert reply.content.startswith("**민지**\n옛날 옛적에\n-# ")
        assert "봇이 다시 시작되어 끊겼어요" in reply.content
        assert _finished(reply) and not reply.components
        assert [m.content for m in await _history(harness, dm)][-1] == "이야기해 줘"
        assert greeting.content


async def test_a_queued_reply_is_withdrawn_by_its_own_player_and_the_streaming_one_goes_on(
    start_bot, tokenizer
):
    engine = ScriptedEngine(story_when("이야기"), delay_s=0.03, tokenizer=tokenizer)
    async with start_bot(engine=engine, env={"MAX_CONCURRENT_REPLIES": "1"}) as harness:
        fake, s = harness.fake, harness.scenario
        other = fake.add_channel(s.guild, "다른-방")
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        await harness.start_roleplay(s.moderator, other, character)
        busy = await fake.say(s.general, s.members[1], "긴 이야기해 줘")
        streaming = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and stop_button(m), after=busy
        )
        await fake.wait_until(lambda: "옛날" in streaming.content)
        waiting_line = await fake.say(other, s.members[0], "나도 할 말 있어")
        waiting = await fake.wait_for_message(
            other, lambda m: m.webhook_id is not None and stop_button(m), after=waiting_line
        )
        assert stop_button(waiting) != stop_button(streaming)
        press = await fake.press(s.members[0], waiting, stop_button(waiting))
        await fake.wait_for_response(press)
        await fake.wait_until(lambda: waiting.deleted)
        await fake.wait_until(lambda: has_buttons(streaming), timeout=30)
        assert streaming.content == STORY.strip() and not engine.cancelled
        # Withdrawn before it began: never generated, nothing of it stored; the line stays.
        assert not any("나도 할 말" in p.rsplit("<|im_start|>user", 1)[-1] for p in engine.prompts)
        assert [m.content for m in await _history(harness, other)][-1] == "나도 할 말 있어"


async def test_a_reply_cut_before_its_record_was_written_is_found_by_the_read_back(harness):
    from synatra_bot.discord.interactions import place_of
    from synatra_bot.discord.replies import streaming_view

    s, bot = harness.scenario, harness.bot
    character = await harness.character(s.moderator)
    await harness.start_roleplay(s.moderator, s.general, character)
    channel = bot.get_channel(s.general.id)
    place = place_of(channel, s.guild.id)
    await bot.core.update_channel_settings(place, reply_mode="mention")  # lines wait unanswered
    said = await harness.fake.say(s.general, s.members[0], "이야기해 줘")

    async def line_stored() -> bool:
        return [m.content for m in await _history(harness, s.general)][-1] == "이야기해 줘"

    assert await eventually(line_stored)
    # Killed after the reply's first post, before the record of it was written: the message
    # carries its stop button, and nothing in the database knows it.
    active = await bot.core.require_active(place)
    writer = await bot.replies.writer_for(channel, active.lead)
    await writer.open("옛날 옛적에 ▌", view=streaming_view(open_replies.new_open_id()))
    [frame] = webhook_after(s.general, said)
    assert stop_button(frame) and await open_replies.open_replies(harness.sessions) == []

    await bot.get_cog("Roleplay").catch_up.read_back(0)
    assert frame.content.startswith("옛날 옛적에\n-# ") and _finished(frame)
    assert [m.content for m in await _history(harness, s.general)][-1] == "이야기해 줘"


def webhook_after(channel, said) -> list:
    return [m for m in channel.visible_messages if m.webhook_id is not None and m.id > said.id]
