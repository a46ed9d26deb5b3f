"""What characters know about each player, through the real discord.py client and the fake
Discord: the memory job's facts in the prompt of that player's next line only, `/persona
memory` for a player's own facts, the moderators' switch, DMs, and the inspector."""

from __future__ import annotations

import re

import pytest

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.prompt.player_facts import FACTS_HEADING
from synatra_bot.prompt.summary import SUMMARY_DIALOGUE_HEADING
from synatra_bot.storage import player_facts as stored
from synatra_bot.storage import repository as repo
from tests.test_dm_roleplay import say_in_dm, start_in_dm
from tests.test_prompt_inspector import attachment_of

CAT = "고양이 이름은 나비다."
REPLY = "그래, 알겠어. 오늘도 재미있었어."
ENV = {"CONTEXT_SIZE": "1024", "MAX_NEW_TOKENS": "32"}


def fact_engine(tokenizer, fact_about: str, section: str | None = None) -> ScriptedEngine:
    """Replies REPLY; a summary request gets a summary and a fact about `fact_about` (or the
    facts section `section`, as written)."""

    def reply(prompt: str) -> str:
        if SUMMARY_DIALOGUE_HEADING not in prompt:
            return REPLY
        asked = re.search(r"줄 아래에 (.+?)에 대해", prompt)
        names = asked.group(1).split(", ") if asked else []
        lines = [f"- {name}: {CAT if name == fact_about else '없음'}" for name in names]
        body = "\n".join(lines) if section is None else section
        return "\n".join(["둘은 숲길을 함께 걸었다.", "", FACTS_HEADING, body])

    return ScriptedEngine(reply, tokenizer=tokenizer)


async def scene(harness):
    s = harness.scenario
    await repo.update_guild_settings(harness.sessions, guild_id=s.guild.id, user_rate_limit=120)
    character = await harness.character(s.moderator, "민지", visibility="guild")
    await harness.start_roleplay(s.moderator, s.general, character)
    return character


async def test_a_fact_from_the_memory_job_is_in_that_players_prompts_only(start_bot, tokenizer):
    engine = fact_engine(tokenizer, "김지수")
    async with start_bot(engine=engine, env=ENV) as harness:
        s = harness.scenario
        character = await scene(harness)
        jisu, haneul = s.members[0], s.members[1]
        await harness.reply_to(s.general, haneul, "나도 같이 가도 돼?")
        facts = harness.bot.core.facts
        for i in range(60):
            await harness.reply_to(s.general, jisu, f"{i}번째로 숲길을 걷는다. 나비가 기다린다.")
            if await facts.facts(s.guild.id, jisu.id):
                break
        known = await facts.facts(s.guild.id, jisu.id)
        assert [(f.text, f.source, f.character_id) for f in known] == [(CAT, "summary", character)]
        assert await facts.facts(s.guild.id, haneul.id) == []  # "없음" is no fact

        await harness.reply_to(s.general, jisu, "우리 집 고양이 기억나?")
        prompt = engine.prompts[-1]
        assert f"### 민지의 기억: 김지수\n- {CAT}" in prompt
        assert prompt.index("우리 집 고양이 기억나?") < prompt.index("### 민지의 기억")

        await harness.reply_to(s.general, haneul, "나는 강아지를 키워.")
        assert CAT not in engine.prompts[-1] and "민지의 기억" not in engine.prompts[-1]


async def test_a_malformed_facts_section_stores_nothing(start_bot, tokenizer):
    malformed = f"김지수 {CAT}\n-김지수\n- 민지: 캐릭터 이야기\n- 모르는 사람: {CAT}\n- 김지수:"
    engine = fact_engine(tokenizer, "김지수", section=malformed)
    async with start_bot(engine=engine, env=ENV) as harness:
        s = harness.scenario
        await scene(harness)
        jisu = s.members[0]
        for i in range(60):
            await harness.reply_to(s.general, jisu, f"{i}번째로 숲길을 걷는다. 나비가 기다린다.")
            active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
            if active is not None and active.summary:
                break
        assert active is not None and active.summary == "둘은 숲길을 함께 걸었다."
        assert await stored.facts_of(harness.sessions, guild_id=s.guild.id, user_id=jisu.id) == []


async def test_players_see_edit_and_delete_only_their_own_facts(start_bot, tokenizer):
    async with start_bot(engine=ScriptedEngine(REPLY, tokenizer=tokenizer)) as harness:
        s = harness.scenario
        character = await scene(harness)
        jisu, haneul, seoyeon = s.members
        facts = harness.bot.core.facts
        cat = await facts.remember_fact(s.guild.id, jisu.id, character, CAT, "summary", None)
        promise = await facts.remember_fact(
            s.guild.id, jisu.id, character, "축제에서 다시 만나기로 했다.", "pin"
        )
        assert cat is not None and promise is not None

        record = await harness.slash(jisu, "persona memory list", channel=s.general)
        listed = await harness.final_text(record)
        assert record.ephemeral  # nobody else sees them
        assert f"**민지** (#{character})" in listed
        assert f"`{cat.id}` {CAT} (이야기에서)" in listed and f"`{promise.id}`" in listed
        others = await harness.final_text(
            await harness.slash(haneul, "persona memory list", channel=s.general)
        )
        assert "아직 없어요" in others and CAT not in others

        refused = await harness.slash(
            haneul, "persona memory edit", channel=s.general, fact=cat.id, text="남이 고침"
        )
        assert f"{cat.id}번 기억이 없어요" in await harness.final_text(refused)
        refused = await harness.slash(
            haneul, "persona memory delete", channel=s.general, fact=cat.id
        )
        assert f"{cat.id}번 기억이 없어요" in await harness.final_text(refused)

        edited = await harness.slash(
            jisu,
            "persona memory edit",
            channel=s.general,
            fact=cat.id,
            text="고양이 이름은 까미다.",
        )
        assert f"{cat.id}번 기억을 고쳤어요" in await harness.final_text(edited)
        kept = await stored.facts_of(harness.sessions, guild_id=s.guild.id, user_id=jisu.id)
        assert (kept[0].text, kept[0].source) == ("고양이 이름은 까미다.", "player")

        deleted = await harness.slash(jisu, "persona memory delete", channel=s.general, fact=cat.id)
        assert f"{cat.id}번 기억을 지웠어요" in await harness.final_text(deleted)
        cleared = await harness.slash(
            jisu, "persona memory clear", channel=s.general, character=str(character)
        )
        assert "1개를 잊었어요" in await harness.final_text(cleared)
        assert await stored.facts_of(harness.sessions, guild_id=s.guild.id, user_id=jisu.id) == []

        # A fact number past what the database holds is refused by the client (Discord checks
        # the option's bounds), never sent to the database.
        for command in ("persona memory edit", "persona memory delete"):
            extra = {"text": "큰 수"} if command.endswith("edit") else {}
            with pytest.raises(ValueError, match="must be in"):
                await harness.slash(jisu, command, channel=s.general, fact=2**31, **extra)
        english = await harness.slash(seoyeon, "persona memory list", channel=s.general)
        assert "No character knows anything about you here" in await harness.final_text(english)


async def test_moderators_turn_facts_off_in_a_channel_and_the_inspector_lists_them(
    start_bot, tokenizer
):
    engine = ScriptedEngine(REPLY, tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character = await scene(harness)
        jisu = s.members[0]
        await harness.bot.core.facts.remember_fact(s.guild.id, jisu.id, character, CAT, "pin")
        await harness.reply_to(s.general, jisu, "안녕, 민지야.")
        assert CAT not in engine.prompts[-1]  # their first line in the scene
        await harness.reply_to(s.general, jisu, "나 기억나?")
        assert CAT in engine.prompts[-1]

        # The inspector shows the facts to the player they are about; a moderator (or the
        # starter) learns how many went in, and the attached prompt leaves their text out.
        inspected = await harness.slash(s.moderator, "rp context", channel=s.general)
        shown = await harness.final_text(inspected)
        assert "민지의 기억 (김지수): 사실 1개" in shown and CAT not in shown
        assert "그 플레이어만 볼 수 있어요" in shown
        prompt = (await attachment_of(harness, inspected)).data.decode()
        assert CAT not in prompt and "### 민지의 기억: 김지수\n(" in prompt
        assert "나 기억나?" in prompt  # the rest of the prompt is all there
        # The moderator's own facts are theirs to read.
        cape = "별빛 망토를 두르고 다닌다."
        await harness.bot.core.facts.remember_fact(
            s.guild.id, s.moderator.id, character, cape, "player"
        )
        await harness.reply_to(s.general, s.moderator, "나도 왔어.")
        await harness.reply_to(s.general, s.moderator, "내 망토 어때?")
        own = await harness.slash(s.moderator, "rp context", channel=s.general)
        mine = await harness.final_text(own)
        assert cape in mine and "그 플레이어만" not in mine
        assert cape in (await attachment_of(harness, own)).data.decode()

        refused = await harness.slash(jisu, "config memory", player_facts=False)
        assert "관리자" in await harness.final_text(refused)
        off = await harness.slash(s.moderator, "config memory", player_facts=False)
        await harness.final_text(off)
        channel = await repo.get_channel_settings(harness.sessions, channel_id=s.general.id)
        assert channel is not None and channel.player_facts is False
        await harness.reply_to(s.general, jisu, "정말 기억 안 나?")
        assert CAT not in engine.prompts[-1]


async def test_a_dm_sees_its_own_facts_and_never_the_servers(start_bot, tokenizer):
    engine = ScriptedEngine(REPLY, tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        jisu = s.members[0]
        character = await harness.character(jisu, "민지")
        facts = harness.bot.core.facts
        await facts.remember_fact(s.guild.id, jisu.id, character, "서버에서 한 약속.", "pin")
        await facts.remember_fact(None, jisu.id, character, "DM에서 한 약속.", "pin")
        dm, _ = await start_in_dm(harness, jisu, character)
        await say_in_dm(harness, dm, jisu, "안녕.")
        await say_in_dm(harness, dm, jisu, "우리 약속 기억나?")
        prompt = engine.prompts[-1]
        assert "DM에서 한 약속." in prompt and "서버에서 한 약속." not in prompt
        listed = await harness.final_text(
            await harness.slash(jisu, "persona memory list", channel=dm)
        )
        assert "DM에서 한 약속." in listed and "서버에서 한 약속." not in listed
        server = await facts.facts(s.guild.id, jisu.id)
        assert [f.text for f in server] == ["서버에서 한 약속."]  # the server's stays there
