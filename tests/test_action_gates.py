"""Every action that posts or generates passes one gate, and a scene is read only by who may
read it: through the real discord.py client and the fake Discord. Each test is a member trying
to make the bot post (or show) what the channel's rules forbid."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.prompt.st_chat import ChatFile, ChatLine, render_chat
from synatra_bot.roleplay.types import Place
from synatra_bot.storage import repository as repo
from tests.bot_harness import button_ids, eventually, has_buttons
from tests.discord_fake import SEND_MESSAGES
from tests.discord_fake.state import READ_MESSAGE_HISTORY
from tests.test_bot_commands import fill
from tests.test_dm_roleplay import from_bot, say_in_dm, start_in_dm
from tests.test_scene_rules import (
    CANNOT_SPEAK,
    DISABLED,
    NOT_AVAILABLE,
    SLOW_DOWN,
    UNAVAILABLE,
    member_scene,
    webhook_messages,
)

CANNOT_READ = "메시지 기록을 볼 권한이 없어서"


def numbered_replies() -> ScriptedEngine:
    counter = itertools.count(1)
    return ScriptedEngine(lambda prompt: f"답장 {next(counter)}.")


def chat_file(character: str, last_line: str) -> tuple[str, bytes, str]:
    """A SillyTavern chat of two lines, the character's last one being `last_line`."""
    when = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    chat = ChatFile(
        user_name="지수",
        character_name=character,
        created_at=when,
        lines=(
            ChatLine(name="지수", is_user=True, text="안녕?", sent_at=when),
            ChatLine(name=character, is_user=False, text=last_line, sent_at=when),
        ),
    )
    return ("chat.jsonl", render_chat(chat), "application/jsonl")


def in_server(harness, channel) -> Place:
    return Place(channel_id=channel.id, guild_id=harness.scenario.guild.id)


# --- one gate for every scene-changing command ---------------------------------------------------


async def test_a_disabled_channel_refuses_every_scene_changing_command(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        starter = s.members[0]
        first = await member_scene(harness, starter)
        reply = await harness.reply_to(s.general, starter, "안녕")
        earlier = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        await harness.final_text(await harness.slash(starter, "rp reset", channel=s.general))
        running = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        other = await harness.character(starter, "서윤")
        off = await harness.slash(s.moderator, "config channel", channel=s.general, enabled=False)
        await harness.final_text(off)
        posted = len(webhook_messages(s.general))
        calls = len(harness.engine.prompts)

        for record in (
            await harness.slash(starter, "rp cast add", channel=s.general, character=str(other)),
            await harness.slash(starter, "rp reset", channel=s.general),
            await harness.slash(starter, "rp resume", channel=s.general, scene=str(earlier.id)),
            await harness.slash(starter, "rp branch", channel=s.general),
            await fake.message_command(starter, "Branch from here", reply),
            await harness.slash(
                starter,
                "rp import",
                channel=s.general,
                file=chat_file("민지", "가져온 말."),
                character=str(first),
            ),
        ):
            assert DISABLED in await harness.final_text(record)
        assert len(webhook_messages(s.general)) == posted
        assert len(harness.engine.prompts) == calls
        now = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        assert now.id == running.id
        cast = await repo.session_cast(harness.sessions, session_id=running.id)
        assert [m.character_id for m in cast] == [first]


async def test_branching_or_resuming_while_rate_limited_is_refused(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        await harness.final_text(await harness.slash(s.moderator, "config ratelimit", per_minute=1))
        starter = s.members[0]
        await member_scene(harness, starter)
        greeting = webhook_messages(s.general)[-1]
        running = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        posted = len(webhook_messages(s.general))

        for _ in range(3):
            refused = await harness.slash(starter, "rp branch", channel=s.general)
            assert SLOW_DOWN in await harness.final_text(refused)
        menu = await fake.message_command(starter, "Branch from here", greeting)
        assert SLOW_DOWN in await harness.final_text(menu)
        again = await harness.slash(starter, "rp resume", channel=s.general, scene=str(running.id))
        assert SLOW_DOWN in await harness.final_text(again)
        scenes = await harness.bot.archive.scenes(in_server(harness, s.general))
        assert [scene.session.id for scene in scenes] == [running.id]
        assert len(webhook_messages(s.general)) == posted


# --- a reopened scene posts a bounded tail ---------------------------------------------------------


async def test_a_huge_imported_line_is_posted_again_as_one_bounded_message(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator, "민지")
        line = "가" * 63_990 + "마지막 열 글자다"
        before = len(webhook_messages(s.general))
        imported = await harness.slash(
            s.moderator,
            "rp import",
            channel=s.general,
            file=chat_file("민지", line),
            character=str(character),
        )
        await harness.final_text(imported)
        shown = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and m.content.endswith("마지막 열 글자다")
        )
        await fake.wait_until(lambda: has_buttons(shown))
        assert len(webhook_messages(s.general)) == before + 1
        assert shown.content.startswith("…") and len(shown.content) <= 2000
        scene = await repo.get_active_session(harness.sessions, channel_id=s.general.id)

        # Reopened after another scene, it is posted once more, bounded the same way.
        await harness.start_roleplay(s.moderator, s.general, character)
        greeting = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=shown
        )
        resumed = await harness.slash(
            s.moderator, "rp resume", channel=s.general, scene=str(scene.id)
        )
        await harness.final_text(resumed)
        again = await fake.wait_for_message(
            s.general,
            lambda m: m.webhook_id is not None and m.content.endswith("마지막 열 글자다"),
            after=shown,
        )
        await fake.wait_until(lambda: has_buttons(again))
        assert [m for m in webhook_messages(s.general) if m.id > greeting.id] == [again]
        assert len(again.content) <= 2000
        # The story keeps the whole line.
        turns = await repo.recent_history(harness.sessions, session_id=scene.id, limit=10)
        assert turns[-1].content == line


# --- edits and suggestions ------------------------------------------------------------------------


async def test_editing_a_line_over_and_over_offers_to_regenerate_only_within_the_rate_limit(
    start_bot,
):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        await harness.final_text(await harness.slash(s.moderator, "config ratelimit", per_minute=2))
        editor = s.members[1]
        said = await fake.say(s.general, editor, "첫 말")
        reply = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=said
        )
        await fake.wait_until(lambda: has_buttons(reply))

        def offers() -> list:
            return [m for m in s.general.visible_messages if "rp:regen" in "".join(button_ids(m))]

        shown = len(offers())
        await fake.edit(said, "첫 말 (고침 1)")
        await fake.wait_until(lambda: len(offers()) == shown + 1)  # the second turn of two
        for n in range(2, 7):
            await fake.edit(said, f"첫 말 (고침 {n})")

        async def last_edit_handled():
            stored = await repo.find_by_discord_id(harness.sessions, discord_message_id=said.id)
            return stored.content == "첫 말 (고침 6)" and not harness.bot.replies._tasks

        assert await eventually(last_edit_handled)
        assert len(offers()) == shown + 1
        assert reply.content == "답장 1."


async def test_an_edit_by_a_member_who_lost_send_messages_posts_nothing(start_bot):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        editor = s.members[1]
        said = await fake.say(s.general, editor, "첫 말")
        reply = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=said
        )
        await fake.wait_until(lambda: has_buttons(reply))
        fake.set_overwrite(s.general, editor, deny=SEND_MESSAGES)

        async def denied() -> bool:
            channel = harness.bot.get_channel(s.general.id)
            member = channel.guild.get_member(editor.id)
            return not channel.permissions_for(member).send_messages

        assert await eventually(denied)
        posted = len(s.general.visible_messages)
        await fake.edit(said, "권한 없이 고친 말")

        async def edit_handled() -> bool:
            stored = await repo.find_by_discord_id(harness.sessions, discord_message_id=said.id)
            return stored.content == "권한 없이 고친 말" and not harness.bot.replies._tasks

        assert await eventually(edit_handled)
        assert len(s.general.visible_messages) == posted
        assert reply.content == "답장 1."


async def test_a_member_without_send_messages_cannot_send_an_edited_suggestion(
    start_bot, tokenizer
):
    from tests.test_suggestions import engine, suggestion

    async with start_bot(engine=engine(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        player = s.members[0]
        character = await harness.character(s.moderator, "민지")
        await harness.start_roleplay(s.moderator, s.general, character)
        asked = await suggestion(harness, player, s.general)
        fake.set_overwrite(s.general, player, deny=SEND_MESSAGES)
        posted = len(webhook_messages(s.general))
        calls = len(harness.engine.prompts)

        opened = await fake.press(player, asked.original, "rp:suggest:edit")
        await fake.wait_for_response(opened)
        submitted = await fake.submit_modal(
            player, opened, fill(opened.modal, **{"✏️": "권한 없이 보내는 말."})
        )
        assert CANNOT_SPEAK in await harness.final_text(submitted)
        sent = await fake.press(player, asked.original, "rp:suggest:send")
        assert CANNOT_SPEAK in await harness.final_text(sent)
        assert len(webhook_messages(s.general)) == posted
        assert len(harness.engine.prompts) == calls
        active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        turns = await repo.recent_history(harness.sessions, session_id=active.id, limit=10)
        assert [m.role for m in turns] == ["assistant"]


# --- access where data is read --------------------------------------------------------------------


async def test_a_moderator_cannot_cast_a_members_private_character(harness):
    s = harness.scenario
    owner = s.members[0]
    await member_scene(harness, owner)
    secret = await harness.character(owner, "비밀 요원")  # private: its owner's alone
    posted = len(webhook_messages(s.general))
    cast = await harness.slash(s.moderator, "rp cast add", channel=s.general, character=str(secret))
    assert NOT_AVAILABLE in await harness.final_text(cast)
    assert len(webhook_messages(s.general)) == posted
    active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
    members = await repo.session_cast(harness.sessions, session_id=active.id)
    assert secret not in [m.character_id for m in members]
    # Its owner may bring it in.
    mine = await harness.slash(owner, "rp cast add", channel=s.general, character=str(secret))
    assert "비밀 요원" in await harness.final_text(mine)


async def test_export_and_memory_need_read_message_history(harness):
    fake, s = harness.fake, harness.scenario
    starter, reader = s.members[0], s.members[1]
    await member_scene(harness, starter)
    await harness.reply_to(s.general, starter, "비밀 이야기")
    fake.set_overwrite(s.general, reader, deny=READ_MESSAGE_HISTORY)
    for command in ("rp export", "rp memory"):
        refused = await harness.slash(reader, command, channel=s.general)
        text = await harness.final_text(refused)
        assert CANNOT_READ in text, command
        assert not refused.original.attachments and "비밀" not in text
    allowed = await harness.slash(starter, "rp export", channel=s.general)
    message = await fake.wait_until(
        lambda: next((m for m in [*allowed.followups, allowed.original] if m), None)
    )
    assert message.attachments


async def test_a_dm_scene_of_a_servers_character_stops_when_its_user_leaves_the_server(
    start_bot,
):
    async with start_bot(engine=numbered_replies()) as harness:
        fake, s = harness.fake, harness.scenario
        user = s.members[1]
        shared = await harness.character(s.moderator, "하늘", visibility="guild")
        dm, _ = await start_in_dm(harness, user, shared)
        reply = await say_in_dm(harness, dm, user, "안녕, 하늘!")
        assert reply.content == "**하늘**\n답장 1."
        scene = await repo.get_active_session(harness.sessions, channel_id=dm.id)
        regen = next(b for b in button_ids(reply) if "regen" in b)

        fake.remove_member(s.guild, user)

        async def gone() -> bool:
            return harness.bot.get_guild(s.guild.id).get_member(user.id) is None

        assert await eventually(gone)
        calls = len(harness.engine.prompts)
        said = await fake.say(dm, user, "아직 있어?")
        notice = await fake.wait_for_message(dm, from_bot(harness), after=said)
        assert UNAVAILABLE in notice.content
        pressed = await fake.press(user, reply, regen)
        assert UNAVAILABLE in await harness.final_text(pressed)
        assert len(harness.engine.prompts) == calls

        # Ended and reopened, it is refused too.
        await harness.final_text(await harness.slash(user, "rp stop", channel=dm))
        resumed = await harness.slash(user, "rp resume", channel=dm, scene=str(scene.id))
        assert UNAVAILABLE in await harness.final_text(resumed)
        assert await repo.get_active_session(harness.sessions, channel_id=dm.id) is None
