"""Roleplay in a DM with the bot, through the real discord.py client and the fake Discord: plain
bot messages with the character's name (no webhooks in DMs), the same buttons and limits, and
NSFW characters only for users who turned them on for themselves."""

from __future__ import annotations

import itertools

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.storage import repository as repo
from tests.bot_harness import button_ids, has_buttons


def numbered_replies() -> ScriptedEngine:
    counter = itertools.count(1)
    return ScriptedEngine(lambda prompt: f"답장 {next(counter)}.")


def from_bot(harness):
    bot_id = harness.fake.bot_user.id
    return lambda m: m.author is not None and m.author.id == bot_id and m.interaction_id is None


async def start_in_dm(harness, user, character_id: int):
    dm = harness.fake.open_dm(user)
    record = await harness.slash(user, "rp start", channel=dm, character=str(character_id))
    await harness.final_text(record)
    greeting = await harness.fake.wait_for_message(dm, from_bot(harness), after=0)
    return dm, greeting


async def say_in_dm(harness, dm, user, text: str):
    said = await harness.fake.say(dm, user, text)
    reply = await harness.fake.wait_for_message(dm, from_bot(harness), after=said)
    await harness.fake.wait_until(lambda: has_buttons(reply) or "⚠️" in reply.content, timeout=20)
    return reply


async def test_a_player_roleplays_with_their_own_private_character_in_a_dm(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        user = s.members[0]
        mine = await harness.character(user, "민지")  # private, made in the server
        dm, greeting = await start_in_dm(harness, user, mine)
        assert greeting.webhook_id is None and greeting.content.startswith("**민지**\n안녕,")

        reply = await say_in_dm(harness, dm, user, "오늘은 DM에서 얘기하자.")
        assert reply.content == "**민지**\n답장 1." and reply.webhook_id is None
        before = reply.content
        regen = await fake.press(user, reply, next(b for b in button_ids(reply) if "regen" in b))
        await fake.wait_for_response(regen)
        await fake.wait_until(lambda: reply.content != before and has_buttons(reply))
        assert reply.content == "**민지**\n답장 2."

        session = await repo.get_active_session(harness.sessions, channel_id=dm.id)
        assert session.guild_id is None and session.started_by == user.user.id
        turns = await repo.recent_history(harness.sessions, session_id=session.id, limit=10)
        assert [(m.role, m.content) for m in turns] == [
            ("assistant", greeting.content.removeprefix("**민지**\n")),
            ("user", "오늘은 DM에서 얘기하자."),
            ("assistant", "답장 2."),
        ]
        # The same DM is one scene: nothing plays in the server meanwhile.
        assert await repo.get_active_session(harness.sessions, channel_id=s.general.id) is None


async def test_a_server_shared_character_plays_in_a_members_dm(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        s = harness.scenario
        shared = await harness.character(s.moderator, "하늘", visibility="guild")
        dm, greeting = await start_in_dm(harness, s.members[1], shared)
        assert greeting.content.startswith("**하늘**\n")
        reply = await say_in_dm(harness, dm, s.members[1], "안녕, 하늘!")
        assert reply.content == "**하늘**\n답장 1."


async def test_nsfw_characters_play_in_a_dm_only_for_users_who_turned_them_on(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        user = s.members[0]
        spicy = await harness.character(user, "밤의 손님", nsfw=True)
        dm = fake.open_dm(user)
        refused = await harness.slash(user, "rp start", channel=dm, character=str(spicy))
        assert "`/롤플레이 dm-성인 켜기:True`" in await harness.final_text(refused)
        assert await repo.get_active_session(harness.sessions, channel_id=dm.id) is None

        turned_on = await harness.slash(user, "rp dm-nsfw", channel=dm, enabled=True)
        assert "DM" in await harness.final_text(turned_on)
        dm, _ = await start_in_dm(harness, user, spicy)
        reply = await say_in_dm(harness, dm, user, "안녕하세요.")
        assert reply.content.endswith("답장 1.")

        # Turned off again: the running DM scene refuses the next turn, and says why.
        off = await harness.slash(user, "rp dm-nsfw", channel=dm, enabled=False)
        await harness.final_text(off)
        asked = len(harness.engine.prompts)
        await fake.say(dm, user, "계속하자.")
        notice = await fake.wait_for_message(dm, lambda m: "dm-성인" in m.content)
        assert notice.author.id == fake.bot_user.id and len(harness.engine.prompts) == asked

        # A server keeps its own rule: the user's choice does not open its channels.
        enabled = await harness.slash(
            s.moderator, "config channel", channel=s.general, enabled=True
        )
        await harness.final_text(enabled)
        in_server = await harness.slash(user, "rp start", channel=s.general, character=str(spicy))
        assert "연령 제한" in await harness.final_text(in_server)


async def test_a_dm_reply_is_held_to_the_users_rate_limit(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        user = s.members[0]
        mine = await harness.character(user, "민지")
        dm, _ = await start_in_dm(harness, user, mine)  # the greeting is the first of six
        for n in range(5):
            await say_in_dm(harness, dm, user, f"{n}번째 말")
        asked = len(harness.engine.prompts)
        await fake.say(dm, user, "하나 더")
        slow = await fake.wait_for_message(dm, lambda m: "천천히" in m.content, timeout=20)
        assert slow.author.id == fake.bot_user.id and len(harness.engine.prompts) == asked


async def test_an_edit_in_a_dm_offers_a_new_reply_as_in_a_server(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        user = s.members[0]
        mine = await harness.character(user, "민지")
        dm, _ = await start_in_dm(harness, user, mine)
        said = await fake.say(dm, user, "바다 보러 갈래?")
        reply = await fake.wait_for_message(dm, from_bot(harness), after=said)
        await fake.wait_until(lambda: has_buttons(reply), timeout=20)
        # discord.py keeps no DM channel it only got messages in.
        assert harness.bot.get_channel(dm.id) is None

        await fake.edit(said, "산에 갈래?")
        offer = await fake.wait_for_message(dm, lambda m: m.id > reply.id and from_bot(harness)(m))
        assert offer.content == "메시지가 수정됐어요. 🔄 를 누르면 답장을 다시 생성해요."
        before = reply.content
        pressed = await fake.press(user, offer, button_ids(offer)[0])
        await fake.wait_for_response(pressed)
        await fake.wait_until(lambda: reply.content != before and has_buttons(reply))
        assert reply.content == "**민지**\n답장 2."
        session = await repo.get_active_session(harness.sessions, channel_id=dm.id)
        turns = await repo.recent_history(harness.sessions, session_id=session.id, limit=10)
        assert [(m.role, m.content) for m in turns[-2:]] == [
            ("user", "산에 갈래?"),
            ("assistant", "답장 2."),
        ]
