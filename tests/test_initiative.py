"""Characters who speak up on their own, through the real discord.py client and the fake Discord,
on timers the tests move themselves: the quiet time, how many times in a row, a group's turns
among themselves, what stops them (a player, ⏹, the scene's end, a disabled channel, a
restart), and the inspector's why. Then the setting's migration."""

from __future__ import annotations

import asyncio
import itertools

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.roleplay.core import UNPROMPTED_NOTE
from synatra_bot.roleplay.types import Place
from synatra_bot.storage import repository as repo
from tests.bot_harness import eventually, has_buttons, stop_button
from tests.db_helpers import (
    assert_kept_down_and_up,
    assert_old_scene_kept,
    opened,
    upgraded_from_0001,
)
from tests.discord_fake import SEND_MESSAGES
from tests.fakes import ManualTimers
from tests.test_group_scenes import HEADER
from tests.test_turn_order import answers, speakers, trio

MINUTE = 60.0
NOTE_START = UNPROMPTED_NOTE.split("{{char}}")[0]


class SpeakerEngine(ScriptedEngine):
    """Replies "<speaker> 대답 n." (the speaker a group prompt's header names, "민지" in a
    scene of one); while `hold` is clear, each reply stops after its first piece until it is
    set (or the reply is cancelled)."""

    def __init__(self, tokenizer) -> None:
        counter = itertools.count(1)

        def reply(prompt: str) -> str:
            tail = prompt.rpartition(HEADER)[2]
            speaker = tail.split(":")[0].strip() if ":" in tail else "민지"
            return f" {speaker} 대답 {next(counter)}."

        super().__init__(reply, tokenizer=tokenizer)
        self.hold = asyncio.Event()
        self.hold.set()

    async def stream(self, prompt, params, *, request_id):
        pieces = super().stream(prompt, params, request_id=request_id)
        try:
            async for piece in pieces:
                yield piece
                if not self.hold.is_set():
                    cancel = self._cancel_events[request_id]
                    waits = [asyncio.ensure_future(e.wait()) for e in (self.hold, cancel)]
                    try:
                        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for task in waits:
                            task.cancel()
        finally:
            await pieces.aclose()


async def quiet_scene(harness, starter, **initiative) -> int:
    """#general enabled, 민지's scene started by `starter`, initiative set as given."""
    s = harness.scenario
    enabled = await harness.slash(s.moderator, "config channel", channel=s.general, enabled=True)
    await harness.final_text(enabled)
    if initiative:
        saved = await harness.slash(
            s.moderator, "config initiative", channel=s.general, **initiative
        )
        assert "initiative" in await harness.final_text(saved)
    minji = await harness.character(starter, "민지")
    await harness.start_roleplay(starter, s.general, minji)
    return minji


async def quiet_for(harness, timers: ManualTimers, minutes: float) -> None:
    """Let `minutes` pass, and whatever speaks up meanwhile finish."""
    timers.advance(minutes * MINUTE)
    await harness.bot.initiative.idle()


async def character_lines(channel) -> list[str]:
    return [m.content for m in channel.visible_messages if m.webhook_id is not None]


async def test_a_quiet_scene_gets_exactly_its_turns_in_a_row_then_waits_for_a_player(
    start_bot, tokenizer
):
    timers = ManualTimers()
    engine = SpeakerEngine(tokenizer)
    async with start_bot(engine=engine, timers=timers) as harness:
        s = harness.scenario
        jisu = s.members[0]
        await quiet_scene(harness, jisu, enabled=True, quiet_minutes=10, max_in_a_row=2)
        # Nobody spoke since the scene started: nothing is watched yet.
        await quiet_for(harness, timers, 60)
        assert await speakers(harness, s.general) == ["민지"]

        await harness.reply_to(s.general, jisu, "민지야, 오늘 날씨 좋다.")
        await quiet_for(harness, timers, 9)
        assert await speakers(harness, s.general) == ["민지", "user", "민지"]
        await quiet_for(harness, timers, 1)
        await quiet_for(harness, timers, 10)
        await quiet_for(harness, timers, 10)
        await quiet_for(harness, timers, 120)
        # Two turns of her own, no player line made up for them, then quiet.
        assert await speakers(harness, s.general) == ["민지", "user", "민지", "민지", "민지"]
        assert harness.bot.initiative.watched == 0 and timers.pending == 0
        shown = [m for m in s.general.visible_messages if m.webhook_id is not None]
        assert [m.content for m in shown[-2:]] == ["민지 대답 2.", "민지 대답 3."]
        assert all(has_buttons(m) for m in shown[-2:])
        prompts = engine.prompts
        assert NOTE_START in prompts[-1] and NOTE_START not in prompts[0]
        assert prompts[-1].count("user\n") == prompts[0].count("user\n")  # no line made up

        # The inspector says why she spoke.
        context = await harness.slash(jisu, "rp context", channel=s.general)
        assert "민지가 10분 동안 조용해서 먼저 말했어요" in await harness.final_text(context)

        # A player's answer starts it over; the scene's end stops it for good.
        await harness.reply_to(s.general, jisu, "응, 나 여기 있어.")
        assert harness.bot.initiative.watched == 1
        stopped = await harness.slash(jisu, "rp stop", channel=s.general)
        await harness.final_text(stopped)
        before = await character_lines(s.general)
        await quiet_for(harness, timers, 30)
        assert await character_lines(s.general) == before
        assert harness.bot.initiative.watched == 0


async def test_each_turn_of_her_own_costs_the_starter_a_turn_of_their_rate_limit(
    start_bot, tokenizer
):
    timers = ManualTimers()
    async with start_bot(engine=SpeakerEngine(tokenizer), timers=timers) as harness:
        s = harness.scenario
        jisu, minho = s.members[0], s.members[1]
        await quiet_scene(harness, jisu, enabled=True, quiet_minutes=10, max_in_a_row=3)
        limit = await harness.slash(
            s.moderator, "config ratelimit", channel=s.general, per_minute=3
        )
        await harness.final_text(limit)
        # The start and this line are two of 지수's three turns; her own turn is the third.
        await harness.reply_to(s.general, jisu, "민지야, 심심해.")
        await quiet_for(harness, timers, 10)
        assert await speakers(harness, s.general) == ["민지", "user", "민지", "민지"]
        refused = await harness.fake.say(s.general, jisu, "또 말해 줘.")
        notice = await harness.fake.wait_for_message(
            s.general, lambda m: "천천히" in m.content, after=refused
        )
        assert notice.webhook_id is None
        # Nothing more is charged to 지수 while she has no turn left: the quiet time passes
        # without a word, and the other player still talks.
        await quiet_for(harness, timers, 10)
        assert await speakers(harness, s.general) == ["민지", "user", "민지", "민지"]
        await harness.reply_to(s.general, minho, "나랑 얘기하자.")
        assert (await speakers(harness, s.general))[-2:] == ["user", "민지"]


async def test_a_day_without_players_leaves_the_scene_quiet(start_bot, tokenizer):
    timers = ManualTimers()
    async with start_bot(engine=SpeakerEngine(tokenizer), timers=timers) as harness:
        s = harness.scenario
        jisu = s.members[0]
        await quiet_scene(harness, jisu, enabled=True, quiet_minutes=120, max_in_a_row=5)
        harness.bot.initiative.idle_limit_s = 5 * 60 * MINUTE  # a short day, for the test
        await harness.reply_to(s.general, jisu, "잘 자.")
        for _ in range(5):
            await quiet_for(harness, timers, 120)
        # Two turns of her own within the limit (at 2 and 4 hours), then nothing.
        assert await speakers(harness, s.general) == ["민지", "user", "민지", "민지", "민지"]
        assert harness.bot.initiative.watched == 0


async def test_nothing_speaks_up_where_it_is_off_or_the_channel_is_disabled(start_bot, tokenizer):
    timers = ManualTimers()
    async with start_bot(engine=SpeakerEngine(tokenizer), timers=timers) as harness:
        s = harness.scenario
        jisu = s.members[0]
        await quiet_scene(harness, jisu)  # off by default
        await harness.reply_to(s.general, jisu, "안녕?")
        await quiet_for(harness, timers, 200)
        assert await speakers(harness, s.general) == ["민지", "user", "민지"]
        assert harness.bot.initiative.watched == 0

        on = await harness.slash(
            s.moderator, "config initiative", channel=s.general, enabled=True, quiet_minutes=10
        )
        await harness.final_text(on)
        await harness.reply_to(s.general, jisu, "이제 켜졌어.")
        off = await harness.slash(s.moderator, "config channel", channel=s.general, enabled=False)
        await harness.final_text(off)
        await quiet_for(harness, timers, 15)
        assert await speakers(harness, s.general) == ["민지", "user", "민지", "user", "민지"]
        assert harness.bot.initiative.watched == 0


async def test_nothing_speaks_up_for_a_starter_who_may_no_longer_speak_or_left(
    start_bot, tokenizer
):
    timers = ManualTimers()
    async with start_bot(engine=SpeakerEngine(tokenizer), timers=timers) as harness:
        fake, s = harness.fake, harness.scenario
        jisu, minho = s.members[0], s.members[1]
        await quiet_scene(harness, jisu, enabled=True, quiet_minutes=10)
        await harness.reply_to(s.general, minho, "지수는 어디 갔어?")
        fake.set_overwrite(s.general, jisu, deny=SEND_MESSAGES)

        async def muted() -> bool:
            channel = harness.bot.get_channel(s.general.id)
            member = channel.guild.get_member(jisu.id)
            return not channel.permissions_for(member).send_messages

        assert await eventually(muted)
        await quiet_for(harness, timers, 30)
        assert await speakers(harness, s.general) == ["민지", "user", "민지"]
        assert harness.bot.initiative.watched == 0

        fake.remove_overwrite(s.general, jisu)
        await harness.reply_to(s.general, minho, "다시 얘기하자.")
        fake.remove_member(s.guild, jisu)

        async def gone() -> bool:
            return harness.bot.get_guild(s.guild.id).get_member(jisu.id) is None

        assert await eventually(gone)
        await quiet_for(harness, timers, 30)
        assert await speakers(harness, s.general) == ["민지", "user", "민지", "user", "민지"]


async def test_only_moderators_set_it(start_bot, tokenizer):
    async with start_bot(engine=SpeakerEngine(tokenizer)) as harness:
        s = harness.scenario
        member = await harness.slash(
            s.members[0], "config initiative", channel=s.general, enabled=True
        )
        assert "관리자" in await harness.final_text(member)
        shown = await harness.slash(s.moderator, "config initiative", channel=s.general)
        assert "initiative" in await harness.final_text(shown)


async def test_a_players_line_goes_before_a_turn_of_a_characters_own(start_bot, tokenizer):
    timers = ManualTimers()
    engine = SpeakerEngine(tokenizer)
    env = {"MAX_CONCURRENT_REPLIES": "1"}
    async with start_bot(engine=engine, timers=timers, env=env) as harness:
        s = harness.scenario
        jisu, minho = s.members[0], s.members[1]
        await quiet_scene(harness, jisu, enabled=True, quiet_minutes=10)
        await harness.reply_to(s.general, jisu, "잠깐 쉬자.")
        # Another channel's reply takes the only slot; then the quiet time passes here.
        room = s.nsfw_channel
        enabled = await harness.slash(s.moderator, "config channel", channel=room, enabled=True)
        await harness.final_text(enabled)
        other = await harness.character(minho, "준")
        await harness.start_roleplay(minho, room, other)
        engine.hold.clear()
        await harness.fake.say(room, minho, "준아, 안녕.")
        await eventually(lambda: _running(engine))
        timers.advance(10 * MINUTE)
        await eventually(_waiting(harness))  # her own turn waits for a slot
        line = await harness.fake.say(s.general, jisu, "민지야, 나 왔어!")

        async def line_stored():
            return (await speakers(harness, s.general))[-1] == "user" or None

        assert await eventually(line_stored)
        engine.hold.set()
        await harness.bot.initiative.idle()
        (reply,) = await answers(s.general, line.id, 1)
        assert reply.content.startswith("민지 대답")
        # The player's line was answered; the turn of her own gave way and left nothing.
        assert await speakers(harness, s.general) == ["민지", "user", "민지", "user", "민지"]
        assert NOTE_START not in engine.prompts[-1]

        # Her own turn already being written gives way too: cut, nothing of it kept.
        engine.hold.clear()
        timers.advance(10 * MINUTE)
        writing = await harness.fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and stop_button(m), after=reply
        )
        line = await harness.fake.say(s.general, minho, "나도 왔어!")
        await harness.fake.wait_until(
            lambda: writing.id not in {m.id for m in s.general.visible_messages}
        )
        engine.hold.set()
        await harness.bot.initiative.idle()
        (answer,) = await answers(s.general, line.id, 1)
        assert answer.content.startswith("민지 대답")
        said = ["민지", "user", "민지", "user", "민지", "user", "민지"]
        assert await speakers(harness, s.general) == said


async def group_of_three(harness, *, auto_turns: int, order: str = "list"):
    """`trio`'s scene of 민지, 준 and 하늘, whose characters speak up after 10 quiet minutes
    once, then take `auto_turns` turns among themselves (charged to the moderator who started
    it: 30 turns a minute here)."""
    s = harness.scenario
    cast = await trio(harness, order=order)
    limit = await harness.slash(s.moderator, "config ratelimit", channel=s.general, per_minute=30)
    await harness.final_text(limit)
    saved = await harness.slash(
        s.moderator,
        "config initiative",
        channel=s.general,
        enabled=True,
        quiet_minutes=10,
        max_in_a_row=1,
        auto_turns=auto_turns,
    )
    await harness.final_text(saved)
    return cast


async def test_a_groups_characters_take_k_turns_among_themselves_then_stop(start_bot, tokenizer):
    timers = ManualTimers()
    engine = SpeakerEngine(tokenizer)
    async with start_bot(engine=engine, timers=timers) as harness:
        s = harness.scenario
        jisu, minho = s.members[0], s.members[1]
        await group_of_three(harness, auto_turns=4)
        first = await harness.fake.say(s.general, jisu, "다들 뭐 해?")
        await answers(s.general, first.id, 3)
        second = await harness.fake.say(s.general, minho, "하늘아, 넌?")
        await answers(s.general, second.id, 3)
        before = len(await speakers(harness, s.general))

        await quiet_for(harness, timers, 10)
        # 민지 answered the players' line first: she speaks up, then the cast order goes on,
        # four turns in all, with nobody's line in between.
        said = (await speakers(harness, s.general))[before:]
        assert said == ["민지", "준", "하늘", "민지"]
        assert engine.prompts[-3].endswith(HEADER + "준:")
        assert all(NOTE_START in prompt for prompt in engine.prompts[-4:])
        context = await harness.slash(s.moderator, "rp context", channel=s.general)
        assert "캐릭터끼리 주고받는 4차례 중 4번째" in await harness.final_text(context)

        # Once in a row (max_in_a_row 1): no more until a player speaks.
        await quiet_for(harness, timers, 60)
        assert len(await speakers(harness, s.general)) == before + 4
        assert harness.bot.initiative.watched == 0


async def test_in_the_natural_order_the_talkative_answer_each_other_and_the_silent_never(
    start_bot, tokenizer
):
    timers = ManualTimers()
    engine = SpeakerEngine(tokenizer)
    async with start_bot(engine=engine, timers=timers) as harness:
        s = harness.scenario
        # 민지 talks always (1), 하늘 half the time (0.5), 준 never on his own (0).
        await group_of_three(harness, auto_turns=6, order="natural")
        line = await harness.fake.say(s.general, s.members[0], "준아, 오늘 어땠어?")
        await answers(s.general, line.id, 1)
        picks = harness.bot.turns.last_picks(Place(s.general.id, s.guild.id))
        await answers(s.general, line.id, len(picks))
        before = await speakers(harness, s.general)
        assert before[before.index("user") + 1] == "준"  # named: he answers first

        await quiet_for(harness, timers, 10)
        said = (await speakers(harness, s.general))[len(before) :]
        # 준, whom the player talked with, speaks up; then the draws: never 준 again, and
        # nobody answers themselves.
        assert len(said) == 6 and said[0] == "준"
        assert "준" not in said[1:]
        assert all(a != b for a, b in itertools.pairwise(said))


async def test_in_the_pooled_order_each_character_speaks_before_anyone_speaks_again(
    start_bot, tokenizer
):
    timers = ManualTimers()
    engine = SpeakerEngine(tokenizer)
    async with start_bot(engine=engine, timers=timers) as harness:
        s = harness.scenario
        await group_of_three(harness, auto_turns=6, order="pooled")
        line = await harness.fake.say(s.general, s.members[0], "하늘아, 오늘 어땠어?")
        await answers(s.general, line.id, 1)
        before = await speakers(harness, s.general)

        await quiet_for(harness, timers, 10)
        said = (await speakers(harness, s.general))[len(before) :]
        # Whoever answered the player speaks up; then the pool: those who have not spoken
        # since the player's line, and once all have, anyone but the last to speak.
        assert len(said) == 6 and said[0] == before[-1]
        assert sorted(said[:3]) == ["민지", "준", "하늘"]
        assert all(a != b for a, b in itertools.pairwise(said))


async def test_a_player_or_stop_ends_the_characters_turns_among_themselves(start_bot, tokenizer):
    timers = ManualTimers()
    engine = SpeakerEngine(tokenizer)
    async with start_bot(engine=engine, timers=timers) as harness:
        s = harness.scenario
        jisu, minho = s.members[0], s.members[1]
        await group_of_three(harness, auto_turns=5)
        first = await harness.fake.say(s.general, jisu, "다들 조용하네.")
        last = (await answers(s.general, first.id, 3))[-1]
        before = len(await speakers(harness, s.general))

        # A player's line in the middle: the turn being written gives way, the rest never come.
        timers.advance(10 * MINUTE)
        spoken = await harness.fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and has_buttons(m), after=last
        )
        assert spoken.author_name == "민지"
        engine.hold.clear()
        writing = await harness.fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and stop_button(m), after=spoken
        )
        assert writing.author_name == "준"
        line = await harness.fake.say(s.general, minho, "준아, 잠깐!")
        await harness.fake.wait_until(
            lambda: writing.id not in {m.id for m in s.general.visible_messages}
        )
        engine.hold.set()
        await harness.bot.initiative.idle()
        answered = await answers(s.general, line.id, 3)
        said = await speakers(harness, s.general)
        assert said[before:] == ["민지", "user", "민지", "준", "하늘"]
        assert [m.author_name for m in answered] == ["민지", "준", "하늘"]

        # ⏹ on a turn of their own ends them.
        engine.hold.clear()
        timers.advance(10 * MINUTE)
        writing = await harness.fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and stop_button(m), after=answered[-1]
        )
        pressed = await harness.fake.press(jisu, writing, stop_button(writing))
        await harness.fake.wait_for_response(pressed)
        await harness.bot.initiative.idle()
        engine.hold.set()
        await quiet_for(harness, timers, 60)
        # Stopped by a player who did not start the scene, before it said a word: nothing of
        # it is kept, and nothing more comes.
        assert writing.content.endswith("답장이 취소됐어요.")
        assert (await speakers(harness, s.general))[before + 5 :] == []
        assert harness.bot.initiative.watched == 0


async def test_rp_auto_lets_a_player_ask_for_k_turns_among_the_characters(start_bot, tokenizer):
    timers = ManualTimers()
    engine = SpeakerEngine(tokenizer)
    async with start_bot(engine=engine, timers=timers) as harness:
        s = harness.scenario
        jisu, minho = s.members[0], s.members[1]
        await trio(harness, order="list")  # quiet times are off here
        line = await harness.fake.say(s.general, jisu, "하늘아, 안녕?")
        await answers(s.general, line.id, 3)
        before = len(await speakers(harness, s.general))

        asked = await harness.slash(minho, "rp auto", channel=s.general, turns=3)
        assert "캐릭터끼리 3차례 주고받아요" in await harness.final_text(asked)
        await harness.bot.initiative.idle()
        assert (await speakers(harness, s.general))[before:] == ["민지", "준", "하늘"]
        context = await harness.slash(s.moderator, "rp context", channel=s.general)
        assert "3차례 중 3번째" in await harness.final_text(context)
        # Nothing more: this channel has no quiet times.
        await quiet_for(harness, timers, 200)
        assert len(await speakers(harness, s.general)) == before + 3
        assert harness.bot.initiative.watched == 0


async def test_disabling_the_channel_while_they_speak_ends_the_characters_turns(
    start_bot, tokenizer
):
    timers = ManualTimers()
    engine = SpeakerEngine(tokenizer)
    async with start_bot(engine=engine, timers=timers) as harness:
        s = harness.scenario
        jisu, minho = s.members[0], s.members[1]
        await trio(harness, order="list")
        line = await harness.fake.say(s.general, jisu, "다들 뭐 해?")
        last = (await answers(s.general, line.id, 3))[-1]
        before = len(await speakers(harness, s.general))

        # The first of three turns is being written when a moderator turns the channel off:
        # it ends as it stands, and the two others never come.
        engine.hold.clear()
        asked = await harness.slash(minho, "rp auto", channel=s.general, turns=3)
        await harness.final_text(asked)
        await harness.fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and stop_button(m), after=last
        )
        off = await harness.slash(s.moderator, "config channel", channel=s.general, enabled=False)
        await harness.final_text(off)
        engine.hold.set()
        await harness.bot.initiative.idle()
        assert (await speakers(harness, s.general))[before:] == ["민지"]
        assert harness.bot.initiative.watched == 0


async def test_turning_initiative_off_while_they_speak_ends_the_quiet_times_turns(
    start_bot, tokenizer
):
    timers = ManualTimers()
    engine = SpeakerEngine(tokenizer)
    async with start_bot(engine=engine, timers=timers) as harness:
        s = harness.scenario
        await group_of_three(harness, auto_turns=3)
        line = await harness.fake.say(s.general, s.members[0], "다들 조용하네.")
        last = (await answers(s.general, line.id, 3))[-1]
        before = len(await speakers(harness, s.general))

        engine.hold.clear()
        timers.advance(10 * MINUTE)
        await harness.fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and stop_button(m), after=last
        )
        off = await harness.slash(
            s.moderator, "config initiative", channel=s.general, enabled=False
        )
        await harness.final_text(off)
        engine.hold.set()
        await quiet_for(harness, timers, 60)
        assert (await speakers(harness, s.general))[before:] == ["민지"]
        assert harness.bot.initiative.watched == 0


async def test_stopping_the_scene_between_two_turns_ends_the_characters_turns(start_bot, tokenizer):
    timers = ManualTimers()
    async with start_bot(engine=SpeakerEngine(tokenizer), timers=timers) as harness:
        s = harness.scenario
        minho = s.members[1]
        await trio(harness, order="list")
        scene = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
        # The first turn is stored and its reply freed the channel, but its last edit is still
        # on its way to Discord when `/rp stop` lands.
        stage = harness.bot.initiative.stage
        played, edit_sent = asyncio.Event(), asyncio.Event()
        perform = stage.perform

        async def slow_last_edit(reply):
            await perform(reply)
            played.set()
            await edit_sent.wait()

        stage.perform = slow_last_edit
        shown = len(await character_lines(s.general))
        asked = await harness.slash(minho, "rp auto", channel=s.general, turns=3)
        await harness.final_text(asked)
        await asyncio.wait_for(played.wait(), 10)
        stopped = await harness.slash(s.moderator, "rp stop", channel=s.general)
        await harness.final_text(stopped)
        edit_sent.set()
        await harness.bot.initiative.idle()

        kept = await repo.recent_history(harness.sessions, session_id=scene.id, limit=100)
        # The three greetings, then 하늘's turn (she spoke last): nothing after the scene's end.
        assert [m.role for m in kept] == ["assistant"] * 4
        assert kept[-1].content.startswith("하늘 대답")
        lines = (await character_lines(s.general))[shown:]
        assert len(lines) == 1 and lines[0].startswith("하늘 대답")
        assert harness.bot.initiative.watched == 0


async def test_a_refused_line_does_not_start_the_characters_turns_over(start_bot, tokenizer):
    timers = ManualTimers()
    async with start_bot(engine=SpeakerEngine(tokenizer), timers=timers) as harness:
        s = harness.scenario
        jisu, minho = s.members[0], s.members[1]
        await quiet_scene(harness, jisu, enabled=True, quiet_minutes=10, max_in_a_row=1)
        limit = await harness.slash(
            s.moderator, "config ratelimit", channel=s.general, per_minute=3
        )
        await harness.final_text(limit)
        for text in ("하나.", "둘.", "셋."):  # 민호's three turns
            await harness.reply_to(s.general, minho, text)
        await quiet_for(harness, timers, 10)  # her one turn in a row, charged to 지수
        said = await speakers(harness, s.general)
        assert said[-2:] == ["민지", "민지"] and harness.bot.initiative.watched == 0

        # 민호 has no turn left: his line is refused, not stored, and starts nothing over.
        refused = await harness.fake.say(s.general, minho, "또 얘기하자.")
        await harness.fake.wait_for_message(
            s.general, lambda m: "천천히" in m.content, after=refused
        )
        assert harness.bot.initiative.watched == 0
        await quiet_for(harness, timers, 30)
        assert await speakers(harness, s.general) == said


async def test_rp_auto_is_paid_and_checked_for_who_asks_and_tells_them_when_it_runs_out(
    start_bot, tokenizer
):
    timers = ManualTimers()
    async with start_bot(engine=SpeakerEngine(tokenizer), timers=timers) as harness:
        fake, s = harness.fake, harness.scenario
        minho = s.members[1]
        await trio(harness, order="list")  # started by the moderator
        limit = await harness.slash(
            s.moderator, "config ratelimit", channel=s.general, per_minute=2
        )
        await harness.final_text(limit)
        before = len(await speakers(harness, s.general))
        fake.remove_member(s.guild, s.moderator)

        async def gone() -> bool:
            return harness.bot.get_guild(s.guild.id).get_member(s.moderator.id) is None

        assert await eventually(gone)
        # The starter left, but 민호 asks and pays: his two turns play (하늘 spoke last, then
        # the cast order), the third is refused by his rate limit, and he is told.
        asked = await harness.slash(minho, "rp auto", channel=s.general, turns=3)
        assert "캐릭터끼리 3차례 주고받아요" in await harness.final_text(asked)
        await harness.bot.initiative.idle()
        assert (await speakers(harness, s.general))[before:] == ["하늘", "민지"]
        told = await fake.wait_for_followup(asked)
        assert "남은 차례가 없어요" in told.content and told.ephemeral


async def test_after_a_restart_nothing_speaks_up_until_a_player_speaks(
    start_bot, tokenizer, tmp_path
):
    database = f"sqlite+aiosqlite:///{tmp_path / 'kept.db'}"
    timers = ManualTimers()
    engine = SpeakerEngine(tokenizer)
    async with start_bot(engine=engine, timers=timers, database=database) as harness:
        s = harness.scenario
        jisu = s.members[0]
        await quiet_scene(harness, jisu, enabled=True, quiet_minutes=10)
        reply = await harness.reply_to(s.general, jisu, "나 잠깐 나갔다 올게.")
        assert harness.bot.initiative.watched == 1
        # The bot stops while she is speaking up: nothing half-written is kept.
        engine.hold.clear()
        timers.advance(10 * MINUTE)
        await harness.fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and stop_button(m), after=reply
        )

    timers = ManualTimers()
    async with start_bot(
        engine=SpeakerEngine(tokenizer), timers=timers, database=database
    ) as harness:
        s = harness.scenario
        await quiet_for(harness, timers, 24 * 60)
        assert await speakers(harness, s.general) == ["민지", "user", "민지"]
        assert harness.bot.initiative.watched == 0 and timers.pending == 0

        await harness.reply_to(s.general, s.members[0], "다녀왔어!")
        await quiet_for(harness, timers, 10)
        assert await speakers(harness, s.general) == [
            "민지",
            "user",
            "민지",
            "user",
            "민지",
            "민지",
        ]


async def test_upgrade_to_initiative_keeps_every_channel_quiet(tmp_path):
    url, old = await upgraded_from_0001(tmp_path, "0020")
    async with opened(url) as sessions:
        await assert_old_scene_kept(sessions, old)
        channel = await repo.get_channel_settings(sessions, channel_id=old.channel_id)
        assert channel is not None and channel.initiative is False
        assert channel.initiative_quiet_minutes is None and channel.initiative_auto_turns is None
        await repo.update_channel_settings(
            sessions,
            channel_id=old.channel_id,
            guild_id=old.guild_id,
            initiative=True,
            initiative_quiet_minutes=45,
        )
        channel = await repo.get_channel_settings(sessions, channel_id=old.channel_id)
        assert (channel.initiative, channel.initiative_quiet_minutes) == (True, 45)
    await assert_kept_down_and_up(url, "0020", old)


async def _running(engine) -> bool:
    return bool(engine.running)


def _waiting(harness, count: int = 1):
    async def check() -> bool:
        return harness.bot.scheduler.waiting >= count

    return check
