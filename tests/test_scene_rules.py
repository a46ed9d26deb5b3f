"""Who may act on a scene, through the real discord.py client and the fake Discord: every path
that makes the character speak obeys the same channel rules, rate limits and ownership."""

from __future__ import annotations

import datetime
import itertools
import json

from sqlalchemy import update

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.storage import repository as repo
from synatra_bot.storage.models import Message
from tests.bot_harness import button_ids, eventually, has_buttons, stop_button
from tests.discord_fake import SEND_MESSAGES
from tests.test_bot_commands import fill

DISABLED = "꺼져 있어요"
CANNOT_SPEAK = "메시지를 보낼 권한이 없어서"
STARTER_ONLY = "롤플레이를 시작한 사람이나 관리자만"
SLOW_DOWN = "천천히"
UNAVAILABLE = "이제 여기서 쓸 수 없어요"
NOT_AVAILABLE = "그 캐릭터가 없거나 여기서 쓸 수 없어요"


def numbered_replies(prefix: str = "답장") -> ScriptedEngine:
    """An engine whose n-th reply reads "<prefix> n." (so each regeneration is told apart)."""
    counter = itertools.count(1)
    return ScriptedEngine(lambda prompt: f"{prefix} {next(counter)}.")


def custom_id(message, prefix: str) -> str:
    return next(b for b in button_ids(message) if b.startswith(prefix))


async def history(harness, channel):
    active = await repo.get_active_session(harness.sessions, channel_id=channel.id)
    return await repo.recent_history(harness.sessions, session_id=active.id, limit=50)


def webhook_messages(channel) -> list:
    return [m for m in channel.visible_messages if m.webhook_id is not None]


async def member_scene(harness, starter, name: str = "민지"):
    """A scene `starter` (not a moderator) started in #general, enabled by a moderator."""
    s = harness.scenario
    enabled = await harness.slash(s.moderator, "config channel", channel=s.general, enabled=True)
    await harness.final_text(enabled)
    character = await harness.character(starter, name)
    await harness.start_roleplay(starter, s.general, character)
    return character


# --- one set of channel rules for every path ---------------------------------------------------


async def test_a_disabled_channel_refuses_regenerate_and_continue(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        reply = await harness.reply_to(s.general, s.members[0], "안녕")
        asked = len(harness.engine.prompts)
        off = await harness.slash(s.moderator, "config channel", channel=s.general, enabled=False)
        await harness.final_text(off)

        regen = await fake.press(s.members[0], reply, custom_id(reply, "rp:regen"))
        assert DISABLED in await harness.final_text(regen) and regen.ephemeral
        more = await harness.slash(s.moderator, "rp continue", channel=s.general)
        assert DISABLED in await harness.final_text(more)
        assert len(harness.engine.prompts) == asked
        assert reply.content == "답장 1." and has_buttons(reply)


async def test_a_member_who_may_not_send_messages_cannot_act_on_their_scene(harness):
    fake, s = harness.fake, harness.scenario
    starter = s.members[0]
    await member_scene(harness, starter)
    reply = await harness.reply_to(s.general, starter, "안녕")
    muted = fake.add_role(s.guild, "채팅 금지")
    fake.set_overwrite(s.general, muted, deny=SEND_MESSAGES)
    silenced = fake.add_member(s.guild, "mute", roles=[muted])
    fake.set_overwrite(s.general, starter, deny=SEND_MESSAGES)
    asked = len(harness.engine.prompts)

    for record in (
        await fake.press(starter, reply, custom_id(reply, "rp:regen")),
        await fake.press(starter, reply, custom_id(reply, "rp:cont")),
        await harness.slash(starter, "rp continue", channel=s.general),
        await harness.slash(starter, "rp undo", channel=s.general),
        await harness.slash(starter, "rp reset", channel=s.general),
    ):
        assert CANNOT_SPEAK in await harness.final_text(record)
    character = await harness.character(silenced, "서윤")
    start = await harness.slash(silenced, "rp start", channel=s.general, character=str(character))
    assert CANNOT_SPEAK in await harness.final_text(start)
    assert len(harness.engine.prompts) == asked
    assert [m.role for m in await history(harness, s.general)] == ["assistant", "user", "assistant"]
    active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
    assert active.started_by == starter.user.id


# --- scenes belong to their starter --------------------------------------------------------------


async def test_undo_continue_and_memory_belong_to_the_starter_or_a_moderator(harness):
    s = harness.scenario
    await member_scene(harness, s.members[0])
    await harness.reply_to(s.general, s.members[1], "나도 끼워 줘")
    for command, options in (("rp undo", {}), ("rp continue", {}), ("rp memory", {"text": "왕"})):
        refused = await harness.slash(s.members[1], command, channel=s.general, **options)
        assert STARTER_ONLY in await harness.final_text(refused), command
    assert len(await history(harness, s.general)) == 3
    undone = await harness.slash(s.moderator, "rp undo", channel=s.general)
    assert "2개" in await harness.final_text(undone)


async def test_undoing_the_newest_turns_does_not_make_a_busy_scene_look_abandoned(harness):
    s = harness.scenario
    owner, other = s.members[0], s.members[1]
    await member_scene(harness, owner)
    await harness.reply_to(s.general, owner, "옛날 이야기")
    # Everything so far happened two hours ago; one more exchange happens now.
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
    async with harness.sessions.begin() as session:
        await session.execute(update(Message).values(created_at=long_ago))
    await harness.reply_to(s.general, owner, "방금 한 말")
    undone = await harness.slash(owner, "rp undo", channel=s.general)
    assert "2개" in await harness.final_text(undone)

    theirs = await harness.character(other, "서윤")
    refused = await harness.slash(other, "rp start", channel=s.general, character=str(theirs))
    assert "진행 중" in await harness.final_text(refused)
    active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
    assert active.started_by == owner.user.id


async def test_only_the_player_whose_turn_it_is_the_starter_or_a_moderator_can_stop(start_bot):
    engine = ScriptedEngine("천천히 " * 60, delay_s=0.02)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        said = await fake.say(s.general, s.members[0], "이야기해 줘")
        reply = await fake.wait_for_message(
            s.general,
            lambda m: m.webhook_id is not None and stop_button(m),
            after=said,
        )
        bystander = await fake.press(s.members[1], reply, stop_button(reply))
        assert "차례인 플레이어" in await harness.final_text(bystander)
        await fake.wait_until(lambda: has_buttons(reply), timeout=20)
        assert reply.content.strip() == ("천천히 " * 60).strip()
        assert not engine.cancelled

        said = await fake.say(s.general, s.members[0], "하나 더")
        reply = await fake.wait_for_message(
            s.general,
            lambda m: m.webhook_id is not None and stop_button(m),
            after=said,
        )
        await fake.wait_until(lambda: "천천히" in reply.content)
        mine = await fake.press(s.members[0], reply, stop_button(reply))
        await fake.wait_for_response(mine)
        await fake.wait_until(lambda: has_buttons(reply))
        assert len(engine.cancelled) == 1


# --- rate limits count every action, charged to whoever acts -----------------------------------


async def test_browsing_alternatives_counts_against_the_pressers_rate_limit(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        limit = await harness.slash(s.moderator, "config ratelimit", per_minute=3)
        await harness.final_text(limit)
        reply = await harness.reply_to(s.general, s.members[0], "안녕")
        regen = await fake.press(s.members[0], reply, custom_id(reply, "rp:regen"))
        await fake.wait_for_response(regen)
        await fake.wait_until(lambda: reply.content == "답장 2." and has_buttons(reply))

        bystander = s.members[1]
        for step, shown in (("rp:prev", "답장 1."), ("rp:next", "답장 2."), ("rp:prev", "답장 1.")):
            press = await fake.press(bystander, reply, custom_id(reply, step))
            await fake.wait_for_response(press)
            await fake.wait_until(lambda shown=shown: reply.content == shown)
        edits = reply.edit_count
        refused = await fake.press(bystander, reply, custom_id(reply, "rp:next"))
        assert SLOW_DOWN in await harness.final_text(refused) and refused.ephemeral
        assert reply.edit_count == edits


async def test_an_edit_that_regenerates_is_charged_to_the_editor(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        for command, options in (
            ("config channel", {"channel": s.general, "edits": "regenerate"}),
            ("config ratelimit", {"per_minute": 2}),
        ):
            await harness.final_text(await harness.slash(s.moderator, command, **options))
        attacker, victim = s.members[1], s.members[0]
        said = await fake.say(s.general, attacker, "첫 말")
        reply = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=said
        )
        await fake.wait_until(lambda: has_buttons(reply))
        await fake.edit(said, "첫 말 (고침)")
        await fake.wait_until(lambda: reply.content == "답장 2." and has_buttons(reply))
        await fake.edit(said, "첫 말 (또 고침)")
        await fake.wait_until(
            lambda: any(SLOW_DOWN in m.content for m in s.general.visible_messages)
        )
        assert reply.content == "답장 2."

        said = await fake.say(s.general, victim, "내 차례")
        mine = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=said
        )
        await fake.wait_until(lambda: mine.content == "답장 3." and has_buttons(mine))
        await fake.edit(said, "내 차례 (고침)")
        await fake.wait_until(lambda: mine.content == "답장 4." and has_buttons(mine))


async def test_a_rate_limited_message_posts_nothing_as_the_character_and_is_not_stored(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        await harness.final_text(await harness.slash(s.moderator, "config ratelimit", per_minute=1))
        await harness.reply_to(s.general, s.members[0], "하나")
        before = len(webhook_messages(s.general))
        calls = len(fake.calls)
        said = await fake.say(s.general, s.members[0], "둘")
        notice = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is None and not m.from_test, after=said
        )
        assert SLOW_DOWN in notice.content
        assert len(webhook_messages(s.general)) == before
        sent = [c for c in fake.calls[calls:] if c.method != "GET"]
        assert len(sent) == 1  # the notice, nothing else
        assert [m.content for m in await history(harness, s.general) if m.role == "user"] == [
            "하나"
        ]


# --- private means private ---------------------------------------------------------------------


async def test_a_character_made_in_a_dm_and_shared_is_bound_to_that_server(harness):
    fake, s = harness.fake, harness.scenario
    owner, stranger = s.members[0], s.members[1]
    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "비밀 요원"}}
    card["data"].update(description="{{char}}의 정체는 아무도 모른다.", first_mes="쉿.")
    imported = await harness.slash(
        owner,
        "character import",
        channel=fake.open_dm(owner),
        file=("agent.json", json.dumps(card).encode(), "application/json"),
    )
    assert "비밀 요원" in await harness.final_text(imported)
    [record] = await repo.visible_characters(harness.sessions, guild_id=None, user_id=owner.id)
    assert record.guild_id is None

    shared = await harness.slash(
        owner, "character edit", channel=s.general, character=str(record.id), visibility="guild"
    )
    await harness.final_text(shared)
    stored = await repo.get_character(harness.sessions, character_id=record.id)
    assert stored.visibility == "guild" and stored.guild_id == s.guild.id

    # In a DM a member of that server finds it (shared there); someone outside it does not.
    dm = fake.open_dm(stranger)
    choices = await fake.autocomplete(stranger, "character show", focused="character", channel=dm)
    await fake.wait_for_response(choices)
    assert [c["value"] for c in choices.choices] == [str(record.id)]
    outsider = fake.add_member(fake.add_guild("다른 서버"), "outsider", global_name="외부인")
    dm = fake.open_dm(outsider)
    choices = await fake.autocomplete(outsider, "character show", focused="character", channel=dm)
    await fake.wait_for_response(choices)
    assert choices.choices == []
    shown = await harness.slash(outsider, "character show", channel=dm, character=str(record.id))
    text = await harness.final_text(shown)
    assert NOT_AVAILABLE in text and "정체" not in str(shown.callback_data)


async def test_a_moderator_cannot_review_a_members_private_character(harness):
    s = harness.scenario
    secret = await harness.character(s.members[0], "비밀 캐릭터")
    for command in ("character approve", "character reject"):
        record = await harness.slash(s.moderator, command, character=str(secret))
        text = await harness.final_text(record)
        assert NOT_AVAILABLE in text and "비밀 캐릭터" not in text
    stored = await repo.get_character(harness.sessions, character_id=secret)
    assert stored.approval == "none"


async def test_a_scene_stops_playing_a_character_its_owner_made_private(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        owner, player = s.members[0], s.members[1]
        enabled = await harness.slash(
            s.moderator, "config channel", channel=s.general, enabled=True
        )
        await harness.final_text(enabled)
        character = await harness.character(owner, "공유 민지", visibility="guild")
        await harness.start_roleplay(player, s.general, character)
        await harness.reply_to(s.general, player, "안녕")
        private = await harness.slash(
            owner, "character edit", character=str(character), visibility="private"
        )
        await harness.final_text(private)
        before = len(webhook_messages(s.general))

        said = await fake.say(s.general, player, "아직 있어?")
        notice = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is None and not m.from_test, after=said
        )
        assert UNAVAILABLE in notice.content
        assert len(webhook_messages(s.general)) == before
        assert "아직 있어?" not in [m.content for m in await history(harness, s.general)]


async def test_an_edited_character_awaiting_approval_does_not_reach_running_scenes(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        owner, player = s.members[0], s.members[1]
        await harness.final_text(await harness.slash(s.moderator, "config approval", required=True))
        enabled = await harness.slash(
            s.moderator, "config channel", channel=s.general, enabled=True
        )
        await harness.final_text(enabled)
        character = await harness.character(
            owner, "공유 민지", visibility="guild", approval="approved"
        )
        await harness.start_roleplay(player, s.general, character)
        await harness.reply_to(s.general, player, "안녕")

        opened = await harness.slash(owner, "character edit", character=str(character))
        values = fill(opened.modal, Description="{{char}}는 사실 악당이다.")
        submitted = await fake.submit_modal(owner, opened, values)
        assert "승인" in await harness.final_text(submitted)

        said = await fake.say(s.general, player, "계속하자")
        notice = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is None and not m.from_test, after=said
        )
        assert UNAVAILABLE in notice.content
        assert not any("악당" in prompt for prompt in harness.engine.prompts)


# --- a failed regeneration puts the reply back ---------------------------------------------------


async def test_a_regenerate_that_cannot_be_built_puts_the_reply_back(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        sheet = "{{char}}는 아주 긴 설정을 가진 캐릭터다. " * 120
        character = await harness.character(s.moderator, description=sheet)
        await harness.start_roleplay(s.moderator, s.general, character)
        reply = await harness.reply_to(s.general, s.members[0], "안녕")
        # The context shrinks below what the character's sheet alone needs.
        await harness.final_text(await harness.slash(s.moderator, "config context", size=1024))

        press = await fake.press(s.members[1], reply, custom_id(reply, "rp:regen"))
        await fake.wait_for_response(press)
        await fake.wait_until(
            lambda: any("토큰" in m.content for m in s.general.visible_messages if not m.webhook_id)
        )
        await fake.wait_until(lambda: reply.content == "답장 1." and has_buttons(reply))

        async def kept():
            return (await history(harness, s.general))[-1].content == "답장 1."

        assert await eventually(kept)


async def test_a_griefers_huge_persona_is_left_out_instead_of_stopping_the_scene(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        await harness.final_text(await harness.slash(s.moderator, "config context", size=1024))
        reply = await harness.reply_to(s.general, s.members[0], "안녕")
        griefer = s.members[1]
        persona = await harness.slash(
            griefer, "persona set", name="방해꾼", description="뷁똠햏쀍" * 500
        )
        await harness.final_text(persona)

        press = await fake.press(griefer, reply, custom_id(reply, "rp:regen"))
        await fake.wait_for_response(press)
        await fake.wait_until(lambda: reply.content == "답장 2." and has_buttons(reply))
        assert "뷁똠햏쀍" not in harness.engine.prompts[-1]


async def test_starting_over_and_over_counts_against_the_rate_limit(harness):
    s = harness.scenario
    await harness.final_text(await harness.slash(s.moderator, "config ratelimit", per_minute=2))
    character = await member_scene(harness, s.members[0])  # the first start
    again = await harness.slash(
        s.members[0], "rp start", channel=s.general, character=str(character)
    )
    await harness.final_text(again)
    await harness.fake.wait_until(
        lambda: len([m for m in s.general.visible_messages if m.webhook_id]) == 2
    )
    greetings = len(webhook_messages(s.general))
    refused = await harness.slash(
        s.members[0], "rp start", channel=s.general, character=str(character)
    )
    assert SLOW_DOWN in await harness.final_text(refused) and refused.ephemeral
    assert len(webhook_messages(s.general)) == greetings
