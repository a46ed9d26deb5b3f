"""Group turn order and muting: who answers a player's line in a scene of several characters,
through the real discord.py client and the fake Discord (three characters, two players), and
the seeded natural-order draw on its own."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from datetime import UTC, datetime

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.roleplay.turn_order import (
    DEFAULT_TALKATIVENESS,
    natural_order,
    seeded,
    talkativeness,
)
from synatra_bot.storage import repository as repo
from synatra_bot.storage.records import CharacterRecord
from tests.bot_harness import button_ids, eventually, has_buttons, stop_button
from tests.db_helpers import (
    assert_kept_down_and_up,
    assert_old_scene_kept,
    opened,
    upgraded_from_0001,
)
from tests.test_group_scenes import HEADER, speaker_replies

# --- the draw on its own ----------------------------------------------------------------------


def record(character_id: int, name: str, extensions: dict | None = None) -> CharacterRecord:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    fields = {f.name: None for f in dataclasses.fields(CharacterRecord)}
    fields.update(
        id=character_id,
        name=name,
        extensions=extensions or {},
        alternate_greetings=[],
        tags=[],
        nsfw=False,
        created_at=now,
        updated_at=now,
    )
    return CharacterRecord(**fields)


def test_talkativeness_is_read_as_sillytavern_writes_it():
    assert talkativeness(record(1, "민지", {"talkativeness": "0.8"})) == 0.8
    assert talkativeness(record(1, "민지", {"talkativeness": 1})) == 1.0
    assert talkativeness(record(1, "민지", {"talkativeness": 3})) == 1.0
    assert talkativeness(record(1, "민지", {"talkativeness": "-1"})) == 0.0
    for odd in ({}, {"talkativeness": "많이"}, {"talkativeness": True}, {"talkativeness": "nan"}):
        assert talkativeness(record(1, "민지", odd)) == DEFAULT_TALKATIVENESS == 0.5


def test_the_natural_order_is_the_same_for_the_same_scene_and_turn_whatever_global_random_does():
    cast = [record(n, f"c{n}", {"talkativeness": "0.5"}) for n in range(1, 6)]
    drawn = []
    for global_seed in (1, 2):
        random.seed(global_seed)
        picks = natural_order([], cast, seeded(7, 42))
        drawn.append([(p.character.id, p.why, p.draw) for p in picks])
    assert drawn[0] == drawn[1] and drawn[0]
    later = [
        [p.character.id for p in natural_order([], cast, seeded(7, turn))] for turn in range(20)
    ]
    assert len({tuple(order) for order in later}) > 1  # another turn draws anew


def test_the_natural_order_puts_the_named_first_and_rolls_the_rest_by_talkativeness():
    chatty = record(1, "민지", {"talkativeness": 1})
    silent = record(2, "준", {"talkativeness": 0})
    named = record(3, "하늘", {"talkativeness": 0})
    for turn in range(10):
        picks = natural_order([named], [chatty, silent, named], seeded(1, turn))
        assert [(p.character.id, p.why) for p in picks] == [(3, "named"), (1, "talkative")]
        assert picks[1].talkativeness == 1.0 and picks[1].draw is not None
    # Nobody named and nobody rolls in: one character that talks at all is drawn.
    quiet = [record(1, "민지", {"talkativeness": 0}), record(2, "준", {"talkativeness": 0.01})]
    drawn = {
        tuple((p.character.id, p.why) for p in natural_order([], quiet, seeded(1, t)))
        for t in range(30)
    }
    assert ((2, "drawn"),) in drawn and all(len(d) == 1 for d in drawn)
    assert ((1, "drawn"),) not in drawn and ((1, "talkative"),) not in drawn
    # Everybody silent: nobody answers.
    assert natural_order([], [quiet[0]], seeded(1, 0)) == []


async def test_a_full_cast_of_name_buttons_fits_under_a_reply_with_alternatives():
    from synatra_bot.discord.replies import reply_view
    from synatra_bot.discord.streaming import release_view
    from tests.discord_fake.limits import check_message

    cast = [record(n, f"{n}번째 아주 긴 이름의 등장인물" * 10) for n in range(1, 9)]
    view = reply_view(2**60, index=1, count=3, speakers=cast)
    rows = view.to_components()
    release_view(view)
    check_message({"content": "대답", "components": rows})  # Discord would take it
    speak = [c for row in rows for c in row["components"] if "speak" in c["custom_id"]]
    assert [c["custom_id"] for c in speak] == [f"rp:speak:{n}" for n in range(1, 9)]
    assert all(len(c["label"]) == 80 for c in speak)


# --- through the bot ----------------------------------------------------------------------------


class HeldEngine(ScriptedEngine):
    """`speaker_replies`, where the first reply stops after its first piece until `release`
    is set (or it is cancelled): a reply still being written while players go on."""

    def __init__(self, tokenizer) -> None:
        scripted = speaker_replies(tokenizer)
        super().__init__(scripted._replies, tokenizer=tokenizer)
        self.release = asyncio.Event()
        self._held = False

    async def stream(self, prompt, params, *, request_id):
        pieces = super().stream(prompt, params, request_id=request_id)
        try:
            async for piece in pieces:
                yield piece
                if not self._held:
                    self._held = True
                    cancel = self._cancel_events[request_id]
                    waits = [asyncio.ensure_future(e.wait()) for e in (self.release, cancel)]
                    try:
                        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for task in waits:
                            task.cancel()
        finally:
            await pieces.aclose()


def joining(talkativeness: str, greeting: str) -> dict:
    """A card's extensions, as SillyTavern writes talkativeness, with a group greeting."""
    return {
        "talkativeness": talkativeness,
        "unknown_fields": {"group_only_greetings": [greeting]},
    }


def held(engine: HeldEngine):
    async def writing() -> bool:
        return bool(engine.running)

    return writing


async def trio(harness, *, order: str | None = None):
    """#general with 민지 (talkativeness 1, who started it), 준 (0) and 하늘 ("0.5")."""
    s = harness.scenario
    enabled = await harness.slash(s.moderator, "config channel", channel=s.general, enabled=True)
    await harness.final_text(enabled)
    minji = await harness.character(s.moderator, "민지", extensions={"talkativeness": 1})
    jun = await harness.character(s.moderator, "준", extensions=joining("0", "준도 왔어."))
    haneul = await harness.character(s.moderator, "하늘", extensions=joining("0.5", "하늘이야."))
    await harness.start_roleplay(s.moderator, s.general, minji)
    for character, name in ((jun, "준"), (haneul, "하늘")):
        added = await harness.slash(
            s.moderator, "rp cast add", channel=s.general, character=str(character)
        )
        assert name in await harness.final_text(added)
        await harness.fake.wait_for_message(
            s.general, lambda m, n=name: m.webhook_id is not None and m.author_name == n, after=0
        )
    if order is not None:
        chosen = await harness.slash(
            s.moderator, "config scene", channel=s.general, turn_order=order
        )
        assert order in await harness.final_text(chosen)
    return minji, jun, haneul


async def answers(channel, after_id: int, count: int):
    """The first `count` finished character replies after message `after_id`."""

    async def found():
        replies = [
            m
            for m in channel.visible_messages
            if m.id > after_id and m.webhook_id is not None and has_buttons(m)
        ]
        return replies[:count] if len(replies) >= count else None

    got = await eventually(found, timeout=20)
    assert got, f"fewer than {count} replies came"
    return got


async def speakers(harness, channel) -> list[str]:
    """Who spoke each turn of the running scene, players as "user"."""
    active = await repo.get_active_session(harness.sessions, channel_id=channel.id)
    turns = await repo.recent_history(harness.sessions, session_id=active.id, limit=100)
    names = {}
    for message in turns:
        if message.character_id is not None and message.character_id not in names:
            character = await repo.get_character(
                harness.sessions, character_id=message.character_id
            )
            names[message.character_id] = character.name
    return ["user" if m.role == "user" else names[m.character_id] for m in turns]


async def test_list_order_answers_every_character_in_cast_order_for_one_turn_of_the_limit(
    start_bot, tokenizer
):
    async with start_bot(engine=speaker_replies(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        jisu, minho = s.members[0], s.members[1]
        minji, jun, haneul = await trio(harness, order="list")
        limit = await harness.slash(
            s.moderator, "config ratelimit", channel=s.general, per_minute=2
        )
        await harness.final_text(limit)

        first = await fake.say(s.general, jisu, "다들 오늘 뭐 했어?")
        replies = await answers(s.general, first.id, 3)
        assert [m.author_name for m in replies] == ["민지", "준", "하늘"]
        assert replies[1].content.startswith("준 대답")
        # Under a group reply, a button per character lets a player pick who speaks next.
        ids = button_ids(replies[-1])
        assert [i for i in ids if i.startswith("rp:speak:")] == [
            f"rp:speak:{minji}",
            f"rp:speak:{jun}",
            f"rp:speak:{haneul}",
        ]

        # Three answers cost the player one turn of two: a second line is answered...
        second = await fake.say(s.general, jisu, "그럼 내일은?")
        assert len(await answers(s.general, second.id, 3)) == 3
        # ...and the third is refused, while the other player still has their own turns.
        refused = await fake.say(s.general, jisu, "모레는?")
        notice = await fake.wait_for_message(
            s.general, lambda m: "천천히" in m.content, after=refused
        )
        assert notice.webhook_id is None
        other = await fake.say(s.general, minho, "나도 있어!")
        assert len(await answers(s.general, other.id, 3)) == 3
        assert await speakers(harness, s.general) == [
            "민지", "준", "하늘",
            "user", "민지", "준", "하늘",
            "user", "민지", "준", "하늘",
            "user", "민지", "준", "하늘",
        ]  # fmt: skip


async def test_a_muted_character_never_answers_on_its_own_but_comes_when_called(
    start_bot, tokenizer
):
    async with start_bot(engine=speaker_replies(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        jisu, minho = s.members[0], s.members[1]
        minji, jun, _ = await trio(harness, order="list")

        # Only the scene's starter or a moderator mutes.
        refused = await harness.slash(minho, "rp mute", channel=s.general, character=str(jun))
        assert "시작한 사람이나 관리자만" in await harness.final_text(refused)
        muted = await harness.slash(s.moderator, "rp mute", channel=s.general, character="준")
        assert "준은 이제 스스로 답하지 않아요" in await harness.final_text(muted)
        listed = await harness.slash(jisu, "rp cast list", channel=s.general)
        text = await harness.final_text(listed)
        assert "2. 준 🔇" in text and "출연 순서대로 모두" in text

        line = await fake.say(s.general, jisu, "준아, 너도 말해 봐.")
        replies = await answers(s.general, line.id, 2)
        assert [m.author_name for m in replies] == ["민지", "하늘"]
        assert f"rp:speak:{jun}" not in button_ids(replies[-1])

        # The addressed order skips a muted character even when named.
        order = await harness.slash(
            s.moderator, "config scene", channel=s.general, turn_order="addressed"
        )
        await harness.final_text(order)
        named = await harness.reply_to(s.general, minho, "준은 왜 조용해?")
        assert named.author_name != "준"

        # /rp next still calls it.
        called = await harness.slash(minho, "rp next", channel=s.general, character=str(jun))
        await harness.final_text(called)
        spoke = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and has_buttons(m), after=named
        )
        assert spoke.author_name == "준"

        unmuted = await harness.slash(s.moderator, "rp unmute", channel=s.general, character="준")
        assert "준이 다시 스스로 답해요" in await harness.final_text(unmuted)
        again = await harness.reply_to(s.general, jisu, "준아, 이제 말해도 돼.")
        assert again.author_name == "준"

        # A scene's only character cannot be muted.
        await harness.slash(s.moderator, "rp cast remove", channel=s.general, character="하늘")
        await harness.slash(s.moderator, "rp cast remove", channel=s.general, character="준")
        alone = await harness.slash(s.moderator, "rp mute", channel=s.general, character=str(minji))
        assert "한 명뿐인 장면" in await harness.final_text(alone)


async def test_manual_order_answers_only_when_a_player_picks_a_speaker(start_bot, tokenizer):
    async with start_bot(engine=speaker_replies(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        jisu, minho = s.members[0], s.members[1]
        _, jun, haneul = await trio(harness, order="manual")

        line = await fake.say(s.general, jisu, "민지야, 안녕?")

        async def stored():
            said = await speakers(harness, s.general)
            return said[-1] == "user" or None

        assert await eventually(stored)
        called = await harness.slash(minho, "rp next", channel=s.general, character=str(haneul))
        await harness.final_text(called)
        (spoke,) = await answers(s.general, line.id, 1)
        assert spoke.author_name == "하늘"  # nobody answered the line on their own

        # A name button under a group reply makes that character speak.
        pressed = await fake.press(jisu, spoke, f"rp:speak:{jun}")
        await fake.wait_for_response(pressed)
        spoke_next = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and has_buttons(m), after=spoke
        )
        assert spoke_next.author_name == "준" and spoke_next.content.startswith("준 대답")
        assert await speakers(harness, s.general) == ["민지", "준", "하늘", "user", "하늘", "준"]
        assert harness.engine.prompts[-1].endswith(HEADER + "준:")


async def test_natural_order_follows_names_then_a_seeded_draw_of_talkativeness(
    start_bot, tokenizer
):
    async with start_bot(engine=speaker_replies(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        jisu, minho = s.members[0], s.members[1]
        await trio(harness, order="natural")

        # 준 (talkativeness 0) answers when named, and first; 민지 (1) always speaks up; 하늘
        # ("0.5") as the scene's seeded draw for each turn says: the same on every run.
        first = await fake.say(s.general, jisu, "준아, 오늘 어땠어?")
        replies = await answers(s.general, first.id, 3)
        assert [m.author_name for m in replies] == ["준", "하늘", "민지"]
        # The inspector says who answered the newest line and why.
        inspected = await harness.slash(s.moderator, "rp context", channel=s.general)
        why = (await harness.final_text(inspected)).rpartition("```")[2]
        assert (
            "\n마지막 대사에 답한 캐릭터와 까닭: 준 (이름이 불림), 하늘 (수다스러움 0.50 ≥ 뽑은 수 0."
            in why
        )
        assert ", 민지 (수다스러움 1.00 ≥ 뽑은 수 0." in why
        second = await fake.say(s.general, minho, "다들 배고프지 않아?")
        replies = await answers(s.general, second.id, 2)
        assert [m.author_name for m in replies] == ["하늘", "민지"]
        third = await fake.say(s.general, jisu, "그럼 밥 먹으러 가자.")
        (only,) = await answers(s.general, third.id, 1)
        assert only.author_name == "민지"
        # One more line shows the third had no other answer waiting behind 민지's.
        fourth = await harness.reply_to(s.general, minho, "민지야, 가자!")
        assert fourth.author_name == "민지"
        assert (await speakers(harness, s.general))[:13] == [
            "민지", "준", "하늘",
            "user", "준", "하늘", "민지",
            "user", "하늘", "민지",
            "user", "민지",
            "user",
        ]  # fmt: skip

        inspected = await harness.slash(s.moderator, "rp context", channel=s.general)
        text = await harness.final_text(inspected)
        assert "마지막 대사에 답한 캐릭터와 까닭: 민지 (이름이 불림)" in text

        # Muted, 민지 neither answers to her name nor speaks up (talkativeness 1 or not).
        muted = await harness.slash(s.moderator, "rp mute", channel=s.general, character="민지")
        await harness.final_text(muted)
        before = len(await speakers(harness, s.general))
        for member, text in (
            (jisu, "민지야, 왜 조용해?"),
            (minho, "민지는 말이 없네."),
            (jisu, "준아?"),
        ):
            said = await fake.say(s.general, member, text)
            await answers(s.general, said.id, 1)
        last = await fake.say(s.general, minho, "하늘아, 준아, 둘 다 대답해 봐.")
        replies = await answers(s.general, last.id, 2)
        assert [m.author_name for m in replies] == ["하늘", "준"]  # in the order named
        assert "민지" not in (await speakers(harness, s.general))[before:]


async def test_a_new_player_line_or_stop_ends_the_round_of_answers(start_bot, tokenizer):
    engine = HeldEngine(tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        jisu, minho = s.members[0], s.members[1]
        await trio(harness, order="list")

        # 민지's answer is still being written when the other player speaks: 준 and 하늘 keep
        # quiet about the first line, and the new one gets its own round.
        first = await fake.say(s.general, jisu, "다들 어디 가?")
        writing = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and stop_button(m), after=first
        )
        await eventually(held(engine))
        second = await fake.say(s.general, minho, "잠깐, 나도 갈래!")

        async def stored():
            return (await speakers(harness, s.general))[-1] == "user" or None

        assert await eventually(stored)
        engine.release.set()
        replies = await answers(s.general, first.id, 4)
        assert replies[0].id == writing.id
        assert [m.author_name for m in replies] == ["민지", "민지", "준", "하늘"]
        assert await speakers(harness, s.general) == [
            "민지", "준", "하늘", "user", "user", "민지", "민지", "준", "하늘",
        ]  # fmt: skip
        del second

    # ⏹ on the first answer stops the whole round.
    engine = HeldEngine(tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        await trio(harness, order="list")
        line = await fake.say(s.general, s.members[0], "다들 뭐 해?")
        writing = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and stop_button(m), after=line
        )
        await eventually(held(engine))  # it is being written, not just waiting its turn
        stopped = await fake.press(s.members[0], writing, stop_button(writing))
        await fake.wait_for_response(stopped)
        await fake.wait_until(lambda: stop_button(writing) is None)
        after = await fake.say(s.general, s.members[1], "하늘아, 넌?")
        replies = await answers(s.general, line.id, 3)
        assert all(m.id > after.id for m in replies)  # nothing more answered the first line
        assert [m.author_name for m in replies] == ["민지", "준", "하늘"]
        assert (await speakers(harness, s.general))[3:] == ["user", "user", "민지", "준", "하늘"]


async def test_upgrade_to_turn_order_keeps_channels_addressed_and_every_character_unmuted(tmp_path):
    url, old = await upgraded_from_0001(tmp_path, "0017")
    async with opened(url) as sessions:
        await assert_old_scene_kept(sessions, old)
        channel = await repo.get_channel_settings(sessions, channel_id=old.channel_id)
        assert channel is not None and channel.turn_order is None  # the addressed order
        cast = await repo.session_cast(sessions, session_id=old.session_id)
        assert [m.muted for m in cast] == [False]
        assert await repo.set_cast_muted(
            sessions, session_id=old.session_id, character_id=old.character_id, muted=True
        )
        cast = await repo.session_cast(sessions, session_id=old.session_id)
        assert [m.muted for m in cast] == [True]
    await assert_kept_down_and_up(url, "0017", old)
