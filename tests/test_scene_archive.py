"""A channel's scenes over time, through the real discord.py client and the fake Discord:
earlier scenes listed and resumed, branches from a message, and SillyTavern chat files exported
and imported back."""

from __future__ import annotations

import itertools
import json

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.prompt.st_chat import parse_chat
from synatra_bot.roleplay.archive import SPEAKERS_LOOKED_UP
from synatra_bot.storage import archives
from synatra_bot.storage import repository as repo
from synatra_bot.storage.migrate import upgrade_database
from tests.bot_harness import button_ids, eventually, has_buttons
from tests.db_helpers import (
    assert_kept_down_and_up,
    assert_old_scene_kept,
    opened,
    upgraded_from_0001,
)


def numbered_replies(tokenizer) -> ScriptedEngine:
    counter = itertools.count(1)
    return ScriptedEngine(lambda prompt: f"답장 {next(counter)}.", tokenizer=tokenizer)


def custom_id(message, prefix: str) -> str:
    return next(b for b in button_ids(message) if b.startswith(prefix))


async def active_history(harness, channel):
    active = await repo.get_active_session(harness.sessions, channel_id=channel.id)
    turns = await repo.recent_history(harness.sessions, session_id=active.id, limit=50)
    return active, turns


async def scene(harness, *lines: str):
    """#general enabled by a moderator, 민지 started there, the players' `lines` answered."""
    s = harness.scenario
    character = await harness.character(s.moderator, "민지")
    await harness.start_roleplay(s.moderator, s.general, character)
    replies = [await harness.reply_to(s.general, s.members[0], line) for line in lines]
    return character, replies


async def test_an_earlier_scene_is_listed_and_resumed_where_it_stopped(start_bot, tokenizer):
    async with start_bot(engine=numbered_replies(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        await scene(harness, "첫 장면이야.")
        first, _ = await active_history(harness, s.general)
        await harness.final_text(await harness.slash(s.moderator, "rp reset", channel=s.general))
        second, _ = await active_history(harness, s.general)

        listed = await harness.slash(s.members[1], "rp sessions", channel=s.general)
        text = await harness.final_text(listed)
        assert f"#{second.id}" in text and f"#{first.id}" in text and "진행 중" in text
        assert text.index(f"#{second.id}") < text.index(f"#{first.id}")

        # Only its starter or a moderator reopens a scene.
        refused = await harness.slash(
            s.members[1], "rp resume", channel=s.general, scene=str(first.id)
        )
        assert "시작한 사람이나 관리자만" in await harness.final_text(refused)
        resumed = await harness.slash(
            s.moderator, "rp resume", channel=s.general, scene=str(first.id)
        )
        assert f"#{first.id}" in await harness.final_text(resumed)
        shown = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and m.content == "답장 1."
        )
        await fake.wait_until(lambda: has_buttons(shown))
        reply = await harness.reply_to(s.general, s.members[0], "다시 왔어.")
        assert reply.content == "답장 2."
        active, turns = await active_history(harness, s.general)
        assert active.id == first.id and active.ended_at is None
        assert [m.content for m in turns if m.role == "user"] == ["첫 장면이야.", "다시 왔어."]
        archived = await repo.get_session(harness.sessions, session_id=second.id)
        assert archived.ended_at is not None


async def test_typed_numbers_no_scene_or_character_could_have_are_answered_as_not_found(
    start_bot, tokenizer
):
    """ "²" passes `str.isdigit` but `int` refuses it, and a number past any id would reach the
    database: a typed scene, character or cast member like that is simply not found."""
    async with start_bot(engine=numbered_replies(tokenizer)) as harness:
        s = harness.scenario
        await scene(harness, "첫 장면이야.")
        for typed in ("²", "9" * 30):
            resumed = await harness.slash(s.moderator, "rp resume", channel=s.general, scene=typed)
            assert "이 채널에 그런 장면이 없어요" in await harness.final_text(resumed)
            started = await harness.slash(
                s.moderator, "rp start", channel=s.general, character=typed
            )
            assert "그 캐릭터가 없거나 여기서 쓸 수 없어요" in await harness.final_text(started)
            muted = await harness.slash(s.moderator, "rp mute", channel=s.general, character=typed)
            assert "그 캐릭터는 이 장면에 없어요" in await harness.final_text(muted)
        # A full-width number is the scene of that number.
        first, _ = await active_history(harness, s.general)
        wide = str(first.id).translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})
        again = await harness.slash(s.moderator, "rp resume", channel=s.general, scene=wide)
        assert f"장면 #{first.id} (민지)" in await harness.final_text(again)


async def test_a_branch_from_a_message_goes_on_from_there_and_the_old_scene_stays(
    start_bot, tokenizer
):
    async with start_bot(engine=numbered_replies(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        _, replies = await scene(harness, "하나.", "둘.", "셋.")
        original, original_turns = await active_history(harness, s.general)
        # A second alternative on the first reply: the branch keeps both, the chosen one chosen.
        first = replies[0]
        regen = await fake.press(s.members[0], replies[-1], custom_id(replies[-1], "rp:regen"))
        await fake.wait_for_response(regen)
        await fake.wait_until(lambda: replies[-1].content == "답장 4." and has_buttons(replies[-1]))

        # Branching replaces the running scene: a player may not, over someone else's scene.
        refused = await fake.message_command(s.members[0], "Branch from here", first)
        assert "진행 중" in await harness.final_text(refused)
        menu = await fake.message_command(s.moderator, "Branch from here", first)
        assert "새 갈래" in await harness.final_text(menu)
        branch, turns = await active_history(harness, s.general)
        assert branch.id != original.id and branch.started_by == s.moderator.user.id
        assert [(m.role, m.content) for m in turns[1:]] == [
            ("user", "하나."),
            ("assistant", "답장 1."),
        ]
        # The branch shows where it stands, and goes on from there.
        shown = await fake.wait_for_message(
            s.general,
            lambda m: m.webhook_id is not None and m.content == "답장 1." and m.id > first.id,
            after=0,
        )
        await fake.wait_until(lambda: has_buttons(shown))
        reply = await harness.reply_to(s.general, s.members[0], "다른 길로 가 보자.")
        assert reply.content == "답장 5."
        prompt = harness.engine.prompts[-1]
        assert "둘." not in prompt and "하나." in prompt

        # The scene it came from is kept whole, and an edit of its messages stays there.
        kept = await repo.recent_history(harness.sessions, session_id=original.id, limit=50)
        assert [m.id for m in kept] == [m.id for m in original_turns[:-1]] + [kept[-1].id]
        assert kept[-1].content == "답장 4."
        said_one = next(m for m in s.general.messages if m.content == "하나." and m.from_test)
        await fake.edit(said_one, "하나, 고쳐 씀.")
        _, branch_turns = await active_history(harness, s.general)
        assert "하나." in [m.content for m in branch_turns]

        # /rp branch makes a checkpoint of the whole scene.
        checkpoint = await harness.slash(s.moderator, "rp branch", channel=s.general)
        await harness.final_text(checkpoint)
        await fake.wait_until(
            lambda: any(m.content == "답장 5." and m.id > reply.id for m in s.general.messages)
        )
        newest, copied = await active_history(harness, s.general)
        assert newest.id not in (branch.id, original.id)
        assert [m.content for m in copied] == [m.content for m in branch_turns]


async def test_an_exported_scene_imports_back_with_its_swipes(start_bot, tokenizer):
    async with start_bot(engine=numbered_replies(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        character, replies = await scene(harness, "바다 보러 갈래?", "좋아, 가자!")
        regen = await fake.press(s.members[0], replies[-1], custom_id(replies[-1], "rp:regen"))
        await fake.wait_for_response(regen)
        await fake.wait_until(lambda: replies[-1].content == "답장 3." and has_buttons(replies[-1]))
        _, before = await active_history(harness, s.general)

        exported = await harness.slash(s.members[0], "rp export", channel=s.general)
        message = await fake.wait_until(
            lambda: next((m for m in [*exported.followups, exported.original] if m), None)
        )
        [attachment] = message.attachments
        assert attachment.filename.endswith(".jsonl") and "민지" in attachment.filename
        chat = parse_chat(attachment.data)
        assert chat.character_name == "민지"
        assert [line.text for line in chat.lines] == [m.content for m in before]
        assert chat.lines[-1].swipes == ("답장 2.", "답장 3.") and chat.lines[-1].swipe_id == 1
        first_line = json.loads(attachment.data.decode().splitlines()[1])
        assert {"name", "is_user", "is_system", "send_date", "mes"} <= set(first_line)

        # Imported in the thread, it continues from the chat's last line.
        imported = await harness.slash(
            s.moderator,
            "rp import",
            channel=s.thread,
            file=(attachment.filename, attachment.data, "application/jsonl"),
            character=str(character),
        )
        assert "5개" in await harness.final_text(imported)
        _, after = await active_history(harness, s.thread)
        assert [(m.role, m.content) for m in after] == [(m.role, m.content) for m in before]
        active = await repo.get_active_session(harness.sessions, channel_id=s.thread.id)
        last = after[-1]
        options = await repo.alternatives(harness.sessions, message_id=last.id)
        assert [m.content for m in options] == ["답장 2.", "답장 3."] and last.chosen
        assert active.started_by == s.moderator.user.id
        # The scene shows where it stands (its newest reply, with buttons), then goes on.
        shown = await fake.wait_for_message(
            s.thread, lambda m: m.webhook_id is not None and m.content == "답장 3.", after=0
        )
        await fake.wait_until(lambda: has_buttons(shown))
        reply = await harness.reply_to(s.thread, s.members[0], "도착했다!")
        assert reply.content == "답장 4."


async def test_a_malformed_chat_file_is_refused_and_nothing_is_stored(start_bot, tokenizer):
    async with start_bot(engine=numbered_replies(tokenizer)) as harness:
        s = harness.scenario
        character, _ = await scene(harness)
        before, _ = await active_history(harness, s.general)
        bad = (
            b'{"user_name": "a", "character_name": "b"}\n{"name": "a", "is_user": true, "mes": 3}\n'
        )
        refused = await harness.slash(
            s.moderator,
            "rp import",
            channel=s.general,
            file=("broken.jsonl", bad, "application/jsonl"),
            character=str(character),
        )
        text = await harness.final_text(refused)
        assert "2" in text
        after, _ = await active_history(harness, s.general)
        assert after.id == before.id

        wrong = await harness.slash(
            s.moderator,
            "rp import",
            channel=s.general,
            file=("card.json", b"{}", "application/json"),
            character=str(character),
        )
        assert ".jsonl" in await harness.final_text(wrong)

        async def unchanged():
            return (await active_history(harness, s.general))[0].id == before.id

        assert await eventually(unchanged)


async def test_archived_scenes_older_than_the_server_keeps_them_are_deleted(start_bot, tokenizer):
    import datetime

    from sqlalchemy import update

    from synatra_bot.storage.models import RoleplaySession

    async with start_bot(engine=numbered_replies(tokenizer)) as harness:
        s = harness.scenario
        await scene(harness, "오래된 이야기.")
        old, _ = await active_history(harness, s.general)
        await harness.final_text(await harness.slash(s.moderator, "rp reset", channel=s.general))
        running, _ = await active_history(harness, s.general)
        long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
        async with harness.sessions.begin() as session:
            await session.execute(
                update(RoleplaySession)
                .where(RoleplaySession.id == old.id)
                .values(ended_at=long_ago)
            )

        kept = await harness.slash(s.moderator, "config archive", channel=s.general, keep_days=7)
        await harness.final_text(kept)
        assert await repo.get_session(harness.sessions, session_id=old.id) is not None
        short = await harness.slash(s.moderator, "config archive", channel=s.general, keep_days=1)
        await harness.final_text(short)

        async def forgotten():
            return await repo.get_session(harness.sessions, session_id=old.id) is None

        assert await eventually(forgotten)
        assert await repo.recent_history(harness.sessions, session_id=old.id, limit=10) == []
        assert (await active_history(harness, s.general))[0].id == running.id
        refused = await harness.slash(s.members[0], "config archive", keep_days=1)
        assert "관리자" in await harness.final_text(refused)


def group_chat_file() -> bytes:
    """A group chat as SillyTavern writes one: a metadata line with only `chat_metadata` (its
    author's note) and names that read "unused", then every speaker's lines under their
    names, with the model's reasoning in `extra` and `swipe_info`."""
    rows = [
        {
            "chat_metadata": {
                "integrity": "5f1c2c1e-2b0d-4a57-9a43-0d6b7f1f0a11",
                "note_prompt": "창밖에는 비가 내리고 있다.",
                "note_depth": "2",
                "note_interval": 1,
                "note_position": 1,
            },
            "user_name": "unused",
            "character_name": "unused",
        },
        {
            "name": "민지",
            "is_user": False,
            "is_system": False,
            "send_date": "2025-11-23T14:57:01.120Z",
            "mes": "다들 왔구나!",
            "original_avatar": "민지.png",
            "force_avatar": "/thumbnail?type=avatar&file=%EB%AF%BC%EC%A7%80.png",
            "extra": {"gen_id": 1234.5},
        },
        {
            "name": "준",
            "is_user": False,
            "is_system": False,
            "send_date": "2025-11-23T14:57:05.000Z",
            "mes": "나도 방금 왔어.",
            "original_avatar": "준.png",
            "extra": {"reasoning": "준은 먼저 인사한다."},
        },
        {
            "name": "지훈",
            "is_user": True,
            "is_system": False,
            "send_date": "2025-11-23T14:58:00.000Z",
            "mes": "우산 가져왔어?",
            "extra": {},
        },
        {
            "name": "나그네",
            "is_user": False,
            "is_system": False,
            "send_date": "2025-11-23T14:58:30.000Z",
            "mes": "길을 잃었소.",
            "swipes": ["누구시오?", "길을 잃었소."],
            "swipe_id": 1,
            "swipe_info": [
                {"send_date": "2025-11-23T14:58:20.000Z", "extra": {"reasoning": "경계한다."}},
                {"send_date": "2025-11-23T14:58:30.000Z", "extra": {"reasoning": "도움을 청한다."}},
            ],
            "extra": {"reasoning": "도움을 청한다."},
        },
    ]
    return "\n".join(json.dumps(row, ensure_ascii=False) for row in rows).encode()


async def test_a_group_chat_imports_every_speaker_its_note_and_reasoning_and_exports_back(
    start_bot, tokenizer
):
    engine = numbered_replies(tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        minji, _ = await scene(harness)
        jun = await harness.character(s.moderator, "준")

        imported = await harness.slash(
            s.moderator,
            "rp import",
            channel=s.thread,
            file=("모임 - 2025-11-23.jsonl", group_chat_file(), "application/jsonl"),
            character=str(minji),
        )
        notice = await harness.final_text(imported)
        assert "4개" in notice and "민지, 준이" in notice and "손님으로" in notice
        assert "나그네" in notice.splitlines()[-1]
        active, turns = await active_history(harness, s.thread)
        cast = await repo.session_cast(harness.sessions, session_id=active.id)
        # The characters it names join the cast; an unknown speaker stays a named guest.
        assert [m.character_id for m in cast] == [minji, jun]
        assert [(m.role, m.display_name, m.character_id) for m in turns] == [
            ("assistant", "민지", minji),
            ("assistant", "준", jun),
            ("user", "지훈", None),
            ("assistant", "나그네", None),
        ]
        assert turns[2].author_id == s.moderator.user.id
        assert turns[1].reasoning == "준은 먼저 인사한다." and turns[0].reasoning is None
        options = await repo.alternatives(harness.sessions, message_id=turns[3].id)
        assert [(m.content, m.reasoning) for m in options] == [
            ("누구시오?", "경계한다."),
            ("길을 잃었소.", "도움을 청한다."),
        ]
        assert (active.author_note, active.author_note_depth, active.author_note_interval) == (
            "창밖에는 비가 내리고 있다.",
            2,
            1,
        )
        # The guest's line is shown where the scene stands, under the guest's name.
        shown = await fake.wait_for_message(
            s.thread, lambda m: m.webhook_id is not None and m.content == "길을 잃었소.", after=0
        )
        assert shown.username == "나그네"

        # The model sees every speaker by name, and the chat's own author's note.
        await harness.reply_to(s.thread, s.members[0], "다들 여기 있었네.")
        prompt = engine.prompts[-1]
        assert "나그네: 길을 잃었소." in prompt and "준: 나도 방금 왔어." in prompt
        assert "창밖에는 비가 내리고 있다." in prompt
        assert "도움을 청한다" not in prompt  # reasoning is kept, never shown to the model

        exported = await harness.slash(s.moderator, "rp export", channel=s.thread)
        message = await fake.wait_until(
            lambda: next((m for m in [*exported.followups, exported.original] if m), None)
        )
        [attachment] = message.attachments
        header, *rows = (json.loads(row) for row in attachment.data.decode().splitlines())
        assert header["user_name"] == header["character_name"] == "unused"
        assert header["chat_metadata"]["note_prompt"] == "창밖에는 비가 내리고 있다."
        assert header["chat_metadata"]["note_depth"] == 2
        chat = parse_chat(attachment.data)
        assert chat.group
        assert [line.name for line in chat.lines][:4] == ["민지", "준", "지훈", "나그네"]
        assert chat.lines[1].reasoning == "준은 먼저 인사한다."
        assert chat.lines[3].swipe_reasoning == ("경계한다.", "도움을 청한다.")
        assert rows[3]["swipe_info"][0]["extra"] == {"reasoning": "경계한다."}


async def test_upgrade_to_0014_keeps_scenes_on_their_channels_note_and_messages_without_reasoning(
    tmp_path,
):
    url, old = await upgraded_from_0001(tmp_path, "0013")
    async with opened(url) as sessions:
        await assert_old_scene_kept(sessions, old)
        scene = await repo.get_session(sessions, session_id=old.session_id)
        assert (scene.author_note, scene.author_note_depth, scene.author_note_interval) == (
            None,
            None,
            None,
        )
        history = await repo.recent_history(sessions, session_id=old.session_id, limit=10)
        assert all(m.reasoning is None for m in history)
    await assert_kept_down_and_up(url, "0013", old)


async def test_a_chat_into_a_one_character_scene_keeps_guests_named_and_its_note_interval(
    start_bot, tokenizer
):
    counter = itertools.count(1)
    # The model goes on writing a guest's line: the reply ends where that line starts.
    engine = ScriptedEngine(
        lambda prompt: f"답장 {next(counter)}.\n나그네: 나도 따라가겠소.", tokenizer=tokenizer
    )
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        minji, _ = await scene(harness)
        # Another member's private character is not the importer's to bring in.
        await harness.character(s.members[1], "세아")
        header = {
            "user_name": "지훈",
            "character_name": "하루",
            "create_date": "2025-11-23@14h56m50s682ms",
            "chat_metadata": {"note_prompt": "밤이 깊었다.", "note_interval": 2},
        }
        lines = [
            {"name": "하루", "is_user": False, "mes": "어서 와.", "extra": {}},
            {"name": "지훈", "is_user": True, "mes": "누가 또 있어?", "extra": {}},
            {"name": "세아", "is_user": False, "mes": "나야.", "extra": {}},
            {"name": "나그네", "is_user": False, "mes": "길을 잃었소.", "extra": {}},
        ]
        data = "\n".join(json.dumps(r, ensure_ascii=False) for r in [header, *lines]).encode()
        imported = await harness.slash(
            s.moderator,
            "rp import",
            channel=s.thread,
            file=("하루.jsonl", data, "application/jsonl"),
            character=str(minji),
        )
        await harness.final_text(imported)
        shown = await harness.fake.wait_for_message(
            s.thread, lambda m: m.webhook_id is not None and m.content == "길을 잃었소.", after=0
        )
        await harness.fake.wait_until(lambda: has_buttons(shown))
        active, turns = await active_history(harness, s.thread)
        cast = await repo.session_cast(harness.sessions, session_id=active.id)
        assert [m.character_id for m in cast] == [minji]
        # The chat's own character speaks as the chosen one; the others are guests.
        assert [(m.display_name, m.character_id) for m in turns if m.role == "assistant"] == [
            ("민지", minji),
            ("세아", None),
            ("나그네", None),
        ]

        # The second player message is the note's: it is in that prompt, not the next one.
        reply = await harness.reply_to(s.thread, s.members[0], "여기 어디야?")
        assert reply.content == "답장 1."
        noted = engine.prompts[-1]
        assert "밤이 깊었다." in noted
        assert "나그네: 길을 잃었소." in noted and "세아: 나야." in noted
        assert "어서 와." in noted and "민지: 어서 와." not in noted  # one character: no name
        await harness.reply_to(s.thread, s.members[0], "돌아가자.")
        assert "밤이 깊었다." not in engine.prompts[-1]

        # A moderator's author's note takes over from the chat's.
        noted = await harness.slash(
            s.moderator, "config authornote", channel=s.thread, text="새벽이 밝았다.", depth=1
        )
        await harness.final_text(noted)
        scene_now = await repo.get_session(harness.sessions, session_id=active.id)
        assert scene_now.author_note is None
        await harness.reply_to(s.thread, s.members[0], "아침이네.")
        assert "새벽이 밝았다." in engine.prompts[-1] and "밤이 깊었다." not in engine.prompts[-1]


async def test_a_branch_keeps_the_imported_cast_guests_note_and_reasoning(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'synatra.db'}"
    await upgrade_database(url)
    async with opened(url) as sessions:
        await _branch_of_an_import(sessions)


async def _branch_of_an_import(sessions):
    minji = await repo.create_character(sessions, owner_id=1, guild_id=10, name="민지")
    jun = await repo.create_character(sessions, owner_id=1, guild_id=10, name="준")
    turns = [
        archives.ImportedTurn(
            role="assistant",
            options=("안녕?", "왔어?"),
            chosen=1,
            display_name="준",
            character_id=jun.id,
            reasonings=("", "반갑게"),
        ),
        archives.ImportedTurn(role="assistant", options=("길을 잃었소.",), display_name="나그네"),
    ]
    scene = await archives.import_scene(
        sessions,
        guild_id=10,
        channel_id=20,
        parent_channel_id=None,
        character_id=minji.id,
        started_by=1,
        turns=turns,
        cast=[jun.id],
        note=archives.SceneNote("밤이 깊었다.", 2, 3),
    )
    [_, guest] = await repo.recent_history(sessions, session_id=scene.id, limit=10)
    async with sessions() as session:
        usage = await archives._copied_usage(session, started_by=1, guild_id=10)
    assert usage == (3, len("안녕?왔어?반갑게길을 잃었소.".encode()))  # reasoning counts
    branch = await archives.branch_scene(sessions, message_id=guest.id, started_by=1)
    assert (branch.author_note, branch.author_note_depth, branch.author_note_interval) == (
        "밤이 깊었다.",
        2,
        3,
    )
    cast = await repo.session_cast(sessions, session_id=branch.id)
    assert [m.character_id for m in cast] == [minji.id, jun.id]
    copied = [turn for _, turn in await archives.scene_turns(sessions, session_id=branch.id)]
    assert [[(m.content, m.reasoning, m.character_id) for m in turn] for turn in copied] == [
        [("안녕?", None, jun.id), ("왔어?", "반갑게", jun.id)],
        [("길을 잃었소.", None, None)],
    ]
    assert copied[1][0].display_name == "나그네"


async def test_an_import_brings_in_characters_up_to_the_cast_limit_and_looks_up_names_bounded(
    start_bot, tokenizer
):
    async with start_bot(engine=numbered_replies(tokenizer)) as harness:
        s = harness.scenario
        minji, _ = await scene(harness)
        friends = {name: await harness.character(s.moderator, name) for name in "가나다라"}

        async def import_speakers(*names: str):
            rows = [{"chat_metadata": {}, "user_name": "unused", "character_name": "unused"}]
            rows += [
                {"name": n, "is_user": False, "mes": f"{n}의 대사", "extra": {}} for n in names
            ]
            data = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode()
            imported = await harness.slash(
                s.moderator,
                "rp import",
                channel=s.thread,
                file=("모두.jsonl", data, "application/jsonl"),
                character=str(minji),
            )
            notice = await harness.final_text(imported)
            active, turns = await active_history(harness, s.thread)
            cast = await repo.session_cast(harness.sessions, session_id=active.id)
            assert len(turns) == len(names)
            speakers = {m.display_name: m.character_id for m in turns}
            return notice, [m.character_id for m in cast], speakers

        # The cast holds 4: the lead and the first three it names; the fourth is a guest.
        _, cast, speakers = await import_speakers("민지", *friends)
        assert cast == [minji, friends["가"], friends["나"], friends["다"]]
        assert speakers["라"] is None

        # A chat naming more speakers than are ever looked up: those after them are guests.
        strangers = [f"낯선 이 {n}" for n in range(SPEAKERS_LOOKED_UP)]
        notice, cast, speakers = await import_speakers("민지", "가", *strangers, "나")
        assert cast == [minji, friends["가"]] and speakers["나"] is None
        assert f"(+{SPEAKERS_LOOKED_UP + 1 - 10})" in notice  # 10 guests named, the rest counted


def test_an_imports_size_counts_its_reasoning_as_stored_text():
    turn = archives.ImportedTurn(
        role="assistant", options=("안녕", "그래"), reasonings=("생각", "")
    )
    assert archives.import_size([turn]) == (2, len("안녕그래생각".encode()))
