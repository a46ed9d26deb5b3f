"""The pooled turn order (SillyTavern's): one character a line, drawn among those that have not
spoken since the last player line, on its own and through the real discord.py client and the
fake Discord (three characters, two players), with muting."""

from __future__ import annotations

from synatra_bot.roleplay.turn_order import pooled_order, seeded, spoken_since_player
from tests.bot_harness import has_buttons
from tests.test_turn_order import answers, record, speakers, trio

# --- the draw on its own ----------------------------------------------------------------------


def test_spoken_since_the_player_counts_back_to_the_newest_player_line():
    history = [("assistant", 1), ("user", None), ("assistant", 2), ("assistant", 3)]
    assert spoken_since_player(history) == [2, 3]
    assert spoken_since_player([*history, ("user", None)]) == []
    assert spoken_since_player([("assistant", 1), ("assistant", 2)]) == [1, 2]


def test_pooled_order_draws_one_among_those_yet_to_speak_whatever_their_talkativeness():
    cast = [
        record(1, "민지", {"talkativeness": 1}),
        record(2, "준", {"talkativeness": 0}),
        record(3, "하늘", {"talkativeness": "0.5"}),
    ]
    drawn = set()
    for turn in range(40):
        (pick,) = pooled_order(cast, [], seeded(5, turn))
        assert pick.why == "pooled"
        drawn.add(pick.character.id)
        # The same scene and turn draw the same character every time.
        assert pooled_order(cast, [], seeded(5, turn))[0].character.id == pick.character.id
        (next_pick,) = pooled_order(cast, [pick.character.id], seeded(5, turn))
        assert next_pick.character.id != pick.character.id
    assert drawn == {1, 2, 3}  # talkativeness 0 is drawn too
    # Only one has not spoken: it is the one.
    assert [p.character.id for p in pooled_order(cast, [3, 1], seeded(5, 0))] == [2]


def test_when_all_have_spoken_anyone_but_the_last_speaker_is_drawn():
    cast = [record(1, "민지"), record(2, "준"), record(3, "하늘")]
    drawn = set()
    for turn in range(40):
        (pick,) = pooled_order(cast, [1, 2, 3], seeded(9, turn))
        assert pick.why == "pooled_again"
        drawn.add(pick.character.id)
    assert drawn == {1, 2}
    # A lone speaker speaks again; nobody to speak: nobody.
    assert [p.character.id for p in pooled_order(cast[:1], [1], seeded(9, 0))] == [1]
    assert pooled_order([], [1], seeded(9, 0)) == []


# --- through the bot ----------------------------------------------------------------------------

#: The seeded draws for the four lines below: the scene's id and its messages' ids are the same
#: on every run. 준 is named and 민지 answers; 준 (talkativeness 0) answers twice.
EXPECTED_DRAWS = ["민지", "하늘", "준", "준"]


async def test_pooled_order_answers_each_line_with_one_seeded_draw_names_aside(
    start_bot, tokenizer
):
    from tests.test_group_scenes import speaker_replies

    async with start_bot(engine=speaker_replies(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        jisu, minho = s.members[0], s.members[1]
        await trio(harness, order="pooled")
        listed = await harness.slash(jisu, "rp cast list", channel=s.general)
        assert "돌아가며 한 명씩" in await harness.final_text(listed)

        # One answer a line, drawn from the whole cast (the line itself is the last player
        # line): the one named is not preferred, talkativeness 0 (준) is drawn all the same.
        drawn = []
        for member, text in (
            (jisu, "준아, 오늘 어땠어?"),
            (minho, "하늘아, 배고프지 않아?"),
            (jisu, "그럼 밥 먹으러 가자."),
            (minho, "민지야, 어디 갈까?"),
        ):
            line = await fake.say(s.general, member, text)
            (reply,) = await answers(s.general, line.id, 1)
            drawn.append(reply.author_name)
        assert drawn == EXPECTED_DRAWS  # the same on every run
        assert (await speakers(harness, s.general))[3:] == [
            "user", drawn[0], "user", drawn[1], "user", drawn[2], "user", drawn[3],
        ]  # fmt: skip
        inspected = await harness.slash(s.moderator, "rp context", channel=s.general)
        why = (await harness.final_text(inspected)).rpartition("```")[2]
        assert (
            f"마지막 대사에 답한 캐릭터와 까닭: {drawn[3]} "
            "(마지막 플레이어 대사 뒤로 아직 말하지 않은 캐릭터 중에서 뽑힘)"
        ) in why

        # Without a player line, /rp next draws among those that have not spoken since the
        # last one; once all have, anyone but the one that spoke last.
        after = [drawn[3]]
        for _ in range(3):
            called = await harness.slash(minho, "rp next", channel=s.general)
            await harness.final_text(called)
            after = await _settled(harness, s.general, len(after) + 1)
        assert sorted(after[:3]) == ["민지", "준", "하늘"]
        assert after[3] != after[2]
        inspected = await harness.slash(s.moderator, "rp context", channel=s.general)
        assert "모두 말해서 방금 말한 캐릭터만 빼고 뽑힘" in await harness.final_text(inspected)


async def _settled(harness, channel, count: int) -> list[str]:
    """The last `count` speakers once that many characters spoke after the last player line and
    the newest reply is finished."""
    from tests.bot_harness import eventually

    async def done():
        said = await speakers(harness, channel)
        tail = said[-count:]
        if len(said) < count + 1 or "user" in tail or said[-count - 1] != "user":
            return None
        newest = [m for m in channel.visible_messages if m.webhook_id is not None]
        return tail if newest and has_buttons(newest[-1]) else None

    got = await eventually(done, timeout=20)
    assert got, f"{count} characters did not speak"
    return got


async def test_pooled_order_never_draws_a_muted_character(start_bot, tokenizer):
    from tests.test_group_scenes import speaker_replies

    async with start_bot(engine=speaker_replies(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        jisu, minho = s.members[0], s.members[1]
        _, _, haneul = await trio(harness, order="pooled")
        muted = await harness.slash(s.moderator, "rp mute", channel=s.general, character="하늘")
        await harness.final_text(muted)

        drawn = []
        for n in range(6):
            line = await fake.say(s.general, (jisu, minho)[n % 2], f"하늘아, {n}번째 질문이야.")
            (reply,) = await answers(s.general, line.id, 1)
            drawn.append(reply.author_name)
        assert "하늘" not in drawn and set(drawn) == {"민지", "준"}

        # /rp next with no name: 하늘 stays out of the pool; named, it still speaks.
        called = await harness.slash(minho, "rp next", channel=s.general)
        await harness.final_text(called)
        answered, spoken = await _settled(harness, s.general, 2)
        assert answered == drawn[-1] and spoken in ("민지", "준") and spoken != answered
        called = await harness.slash(minho, "rp next", channel=s.general, character=str(haneul))
        await harness.final_text(called)
        assert (await _settled(harness, s.general, 3))[-1] == "하늘"

        # Everyone muted: /rp next with no name asks for one.
        for name in ("민지", "준"):
            await harness.final_text(
                await harness.slash(s.moderator, "rp mute", channel=s.general, character=name)
            )
        refused = await harness.slash(jisu, "rp next", channel=s.general)
        assert "모두 음소거" in await harness.final_text(refused)
