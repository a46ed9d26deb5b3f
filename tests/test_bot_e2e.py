"""The bot end to end: the real discord.py client against the fake Discord server."""

from synatra_bot.storage import repository as repo
from tests.bot_harness import button_ids, has_buttons


async def test_start_roleplay_posts_greeting_from_character_webhook(harness):
    s = harness.scenario
    character_id = await harness.character(s.moderator, "민지")
    greeting = await harness.start_roleplay(s.moderator, s.general, character_id)
    assert greeting.username == "민지"
    assert greeting.content == "안녕, 관리자 민수! 오늘 뭐 할래?"
    assert greeting.allowed_mentions == {"parse": []}
    active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
    assert active is not None and active.character_id == character_id


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
    assert history[2].discord_message_ids == [reply.id]
    assert "김지수" in harness.engine.prompts[-1]
    assert any(b.startswith("rp:regen") for b in button_ids(reply))


async def test_member_cannot_start_in_a_channel_moderators_did_not_enable(harness):
    s = harness.scenario
    character_id = await harness.character(s.members[0])
    record = await harness.slash(
        s.members[0], "rp start", channel=s.general, character=str(character_id)
    )
    assert record.ephemeral
    assert "꺼져 있어요" in await harness.final_text(record)
    assert await repo.get_active_session(harness.sessions, channel_id=s.general.id) is None
