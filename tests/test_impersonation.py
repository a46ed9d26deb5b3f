"""Names cannot impersonate, through the real discord.py client and the fake Discord: a persona
may not take the name of a character in the scene or of another member, and a line the bot
posts for a player carries their Discord name, so it never reads as the cast's or a
moderator's."""

from __future__ import annotations

from synatra_bot.roleplay.names import USERNAME_LIMIT, name_key, player_label
from synatra_bot.storage import repository as repo
from tests.test_suggestions import engine, suggestion


async def test_a_persona_named_like_the_scenes_character_is_refused(start_bot, tokenizer):
    async with start_bot(engine=engine(tokenizer)) as harness:
        s = harness.scenario
        player = s.members[0]
        character = await harness.character(s.moderator, "민지")
        await harness.start_roleplay(s.moderator, s.general, character)
        refused = await harness.slash(player, "persona set", name="민 지", channel=s.general)
        text = await harness.final_text(refused)
        assert refused.ephemeral and "민지는 이 장면의 캐릭터 이름이에요" in text
        assert await harness.bot.core.persona(player.user.id, s.guild.id) is None


async def test_a_persona_named_like_a_moderator_or_member_is_refused(start_bot, tokenizer):
    async with start_bot(engine=engine(tokenizer)) as harness:
        s = harness.scenario
        player = s.members[1]
        # The moderator shows as "관리자 민수"; spacing, width and zero-width tricks do not help.
        for name in ("관리자민수", "관리자\u200b 민수", "ｍｉｎｓｕ", "김지수"):
            refused = await harness.slash(player, "persona set", name=name, channel=s.general)
            assert "다른 멤버(또는 봇)의 이름과 비슷해서" in await harness.final_text(refused)
        assert await harness.bot.core.persona(player.user.id, s.guild.id) is None
        # A name of one's own is taken.
        done = await harness.slash(player, "persona set", name="여행자 하늘", channel=s.general)
        assert "여행자 하늘로 롤플레이해요" in await harness.final_text(done)


async def test_a_suggested_line_carries_the_players_discord_name(start_bot, tokenizer):
    async with start_bot(engine=engine(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        player = s.members[0]
        # Set before the character joined, the persona is the character's name.
        done = await harness.slash(player, "persona set", name="민지", channel=s.thread)
        await harness.final_text(done)
        character = await harness.character(s.moderator, "민지")
        await harness.start_roleplay(s.moderator, s.general, character)
        record = await suggestion(harness, player, s.general)
        sent = await fake.press(player, record.original, "rp:suggest:send")
        await fake.wait_for_response(sent)
        posted = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and m.content.startswith("제안"), after=0
        )
        assert posted.author_name == "민지 (김지수)"


async def test_a_member_whose_discord_name_is_the_characters_is_posted_with_their_handle(
    start_bot, tokenizer
):
    async with start_bot(engine=engine(tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        lookalike = fake.add_member(s.guild, "minji_fan", global_name="민지")
        character = await harness.character(s.moderator, "민지")
        await harness.start_roleplay(s.moderator, s.general, character)
        record = await suggestion(harness, lookalike, s.general)
        sent = await fake.press(lookalike, record.original, "rp:suggest:send")
        await fake.wait_for_response(sent)
        posted = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and m.content.startswith("제안"), after=0
        )
        assert posted.author_name == "민지 (@minji_fan)"
        assert name_key(posted.author_name) != name_key("민지")


def test_a_long_persona_is_shortened_but_keeps_whose_it_is():
    label = player_label("가" * 64, "나" * 32, handle="someone")
    assert len(label) <= USERNAME_LIMIT and label.endswith(" (" + "나" * 32 + ")")
    assert label.startswith("가" * 40) and "…" in label


async def test_a_character_named_like_a_players_persona_cannot_join_their_scene(
    start_bot, tokenizer
):
    """A persona taken before the character came would make the player's lines read as the
    character's: the character joins once the player has another persona."""
    async with start_bot(engine=engine(tokenizer)) as harness:
        s = harness.scenario
        player = s.members[0]
        minji = await harness.character(s.moderator, "민지")
        await harness.start_roleplay(s.moderator, s.general, minji)
        done = await harness.slash(player, "persona set", name="하 늘", channel=s.general)
        await harness.final_text(done)
        await harness.reply_to(s.general, player, "안녕, 민지야.")
        haneul = await harness.character(s.moderator, "하늘")
        refused = await harness.slash(
            s.moderator, "rp cast add", channel=s.general, character=str(haneul)
        )
        text = await harness.final_text(refused)
        assert refused.ephemeral and "하늘이라는 페르소나로 플레이하고 있어서" in text
        assert await cast_ids(harness, s.general) == [minji]

        done = await harness.slash(player, "persona set", name="여행자", channel=s.general)
        await harness.final_text(done)
        added = await harness.slash(
            s.moderator, "rp cast add", channel=s.general, character=str(haneul)
        )
        assert "하늘" in await harness.final_text(added)
        assert await cast_ids(harness, s.general) == [minji, haneul]


async def cast_ids(harness, channel) -> list[int]:
    scene = await repo.get_active_session(harness.sessions, channel_id=channel.id)
    cast = await repo.session_cast(harness.sessions, session_id=scene.id)
    return [member.character_id for member in cast]
