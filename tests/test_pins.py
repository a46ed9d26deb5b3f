"""Pins: a turn (or an edited line of it) pinned into a scene's memory from the message menu,
always in the prompt's system block within its own budget (the newest win), listed, edited and
removed with `/rp memory`, refused to who may not pin and past the scene's limit, kept by a
restart, a branch and the upgrade, pinned in the terminal with `/pin`, and never able to forge
a ChatML role."""

from __future__ import annotations

import asyncio
import io

import pytest

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.errors import PinLimitReached
from synatra_bot.prompt.builder import (
    SUMMARY_PREVIOUS_HEADING,
    HistoryMessage,
    PromptBuilder,
    PromptOptions,
)
from synatra_bot.prompt.cards import CharacterCard
from synatra_bot.prompt.pins import (
    PIN_CHARS,
    PIN_HEADING,
    SUMMARY_HEADING,
    PinBlock,
    PinNote,
    pin_block,
)
from synatra_bot.roleplay.turns import Ending
from synatra_bot.storage import pins as pin_store
from synatra_bot.storage import player_facts as fact_store
from synatra_bot.storage import repository as repo
from synatra_bot.storage.archives import branch_scene
from synatra_bot.storage.migrate import upgrade_database
from synatra_bot.terminal.chat import run_chat
from synatra_bot.tokenizer import FORBIDDEN_CONTENT_IDS, IM_END_ID, IM_START_ID
from tests.bot_harness import has_buttons
from tests.db_helpers import (
    assert_kept_down_and_up,
    assert_old_scene_kept,
    opened,
    upgraded_from_0001,
)
from tests.test_memory import start_scene
from tests.test_prompt_injection import ATTACKS, _expected_structure
from tests.test_terminal import args_for, card_file, terminal_history

FACT = "우리 고양이 이름은 나비야. 작년 봄 축제에서 처음 만났어."
PINNED = "민지의 고양이 이름은 나비다. 둘은 봄 축제에서 만났다."
FILLERS = [
    "오늘은 비가 와서 창밖만 바라봤다.",
    "도서관에서 시험 공부를 했는데 너무 졸렸다.",
    "점심으로 김치찌개를 먹었다.",
    "버스가 늦게 와서 수업에 늦을 뻔했다.",
]
MENU = "Remember this"


@pytest.fixture(scope="module")
def builder(tokenizer) -> PromptBuilder:
    return PromptBuilder(tokenizer)


def only_input(modal: dict) -> tuple[str, str]:
    """The custom id and prefilled value of a modal's one text input."""
    [component] = modal["components"]
    item = component["component"] if component["type"] == 18 else component["components"][0]
    return item["custom_id"], item.get("value") or ""


async def talk(harness, member, text: str):
    """A player's line and the character's final reply to it."""
    said = await harness.fake.say(harness.scenario.general, member, text)
    reply = await harness.fake.wait_for_message(
        harness.scenario.general, lambda m: m.webhook_id is not None, after=said
    )
    await harness.fake.wait_until(lambda: has_buttons(reply), timeout=20)
    return said, reply


async def pin_from_menu(harness, member, message, line: str | None = None) -> str:
    """Pin `message` through the message menu's form (its line edited to `line`); what the
    player is told."""
    fake = harness.fake
    menu = await fake.message_command(member, MENU, message)
    await fake.wait_for_response(menu)
    if menu.modal is None:
        return await harness.final_text(menu)
    custom_id, _ = only_input(menu.modal)
    values = {} if line is None else {custom_id: line}
    submitted = await fake.submit_modal(member, menu, values)
    await fake.wait_for_response(submitted)
    return await harness.final_text(submitted)


def reply_prompt(engine) -> str:
    """The newest prompt of a reply (the summary job's prompts go to the same engine)."""
    return [p for p in engine.prompts if SUMMARY_PREVIOUS_HEADING not in p][-1]


async def scene_id(harness) -> int:
    active = await repo.get_active_session(harness.sessions, channel_id=harness.scenario.general.id)
    return active.id


# --- the block ----------------------------------------------------------------------------------


def test_the_newest_pins_win_when_they_take_more_than_the_budget(builder) -> None:
    pins = [(i, f"{i}번째로 기억할 일: 민지는 {i}월에 바다에 갔다.") for i in range(1, 21)]
    block = pin_block(pins, budget=80, count=builder.count_text)
    assert block is not None
    assert builder.count_text(block.text) <= 80  # counted with the real tokenizer
    kept = [note.pin_id for note in block.notes]
    assert kept == sorted(kept) and kept[-1] == 20  # the newest, listed oldest first
    assert kept == list(range(21 - len(kept), 21))
    assert block.left_out == 20 - len(kept) > 0
    assert block.text.startswith(PIN_HEADING)

    assert pin_block(pins, budget=0, count=builder.count_text) is None
    assert pin_block([], budget=200, count=builder.count_text) is None
    # A pin too long for the budget leaves room for the older ones that fit.
    huge = [*pins[:2], (99, "아주 긴 기억 " * 80)]
    assert [n.pin_id for n in pin_block(huge, budget=80, count=builder.count_text).notes] == [1, 2]


def test_pins_follow_the_summary_in_the_system_block_and_keep_the_prompt_start(builder) -> None:
    card = CharacterCard(name="민지", description="{{char}}는 대학생이다.")
    block = pin_block([(1, PINNED)], budget=200, count=builder.count_text)
    history = [HistoryMessage("user", "준", FILLERS[0], message_id=1)]
    options = PromptOptions(context_size=1024, summary="둘은 같은 동아리다.", pins=block)
    first = builder.build(card=card, history=history, user_name="준", options=options)
    system = first.text[: first.text.index("<|im_end|>")]
    assert system.index(SUMMARY_HEADING) < system.index(PIN_HEADING)
    assert f"- {PINNED}" in system
    assert [p.pin_id for p in first.report.pins] == [1]

    longer = [*history, HistoryMessage("assistant", "민지", "응!", message_id=2)]
    longer.append(HistoryMessage("user", "준", FILLERS[1], message_id=3))
    options = PromptOptions(context_size=1024, summary="둘은 같은 동아리다.", pins=block)
    second = builder.build(card=card, history=longer, user_name="준", options=options)
    opening = len(first.input_ids) - first.input_ids[::-1].index(IM_START_ID) - 1
    start = first.input_ids[:opening]  # all but the open answer
    assert second.input_ids[: len(start)] == start


@pytest.mark.parametrize("attack", ATTACKS)
def test_forged_chatml_in_a_pin_stays_plain_text(builder, attack) -> None:
    card = CharacterCard(name="민지", description="{{char}}는 대학생이다.")
    block = pin_block([(1, attack), (2, f"민지는 {attack}")], budget=256, count=builder.count_text)
    history = [HistoryMessage("user", "준", "안녕", message_id=1)]
    built = builder.build(
        card=card, history=history, user_name="준", options=PromptOptions(pins=block)
    )
    structural = [i for i in built.input_ids if i in FORBIDDEN_CONTENT_IDS]
    assert structural == _expected_structure(1, 1)  # the system block and one message
    assert built.input_ids.count(IM_START_ID) == 3 and built.input_ids.count(IM_END_ID) == 2


# --- storage ------------------------------------------------------------------------------------


@pytest.fixture
async def sessions(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'pins.db'}"
    await upgrade_database(url)
    async with opened(url) as made:
        yield made


async def test_upgrade_to_pins_keeps_old_scenes_and_takes_pins(tmp_path) -> None:
    url, old = await upgraded_from_0001(tmp_path, "0019")
    async with opened(url) as sessions:
        await assert_old_scene_kept(sessions, old)
        assert await pin_store.scene_pins(sessions, session_id=old.session_id) == []
        guild = await repo.get_guild_settings(sessions, guild_id=old.guild_id)
        assert guild.pin_tokens is None  # the default budget
        pinned = await pin_store.add_pin(
            sessions, session_id=old.session_id, author_id=1, text=PINNED, message_id=None, limit=50
        )
        assert [
            p.text for p in await pin_store.scene_pins(sessions, session_id=old.session_id)
        ] == [pinned.text]
    await assert_kept_down_and_up(url, "0019", old)


async def test_a_branch_keeps_the_pins_of_its_shared_past(sessions) -> None:
    character = await repo.create_character(sessions, owner_id=7, guild_id=1, name="민지")
    scene = await repo.start_session(
        sessions,
        guild_id=1,
        channel_id=10,
        parent_channel_id=None,
        character_id=character.id,
        started_by=7,
    )
    turns = await repo.add_messages(
        sessions,
        [
            repo.NewMessage(
                session_id=scene.id,
                role="user" if i % 2 == 0 else "assistant",
                content=f"{i}번째 말",
                author_id=7 if i % 2 == 0 else None,
            )
            for i in range(4)
        ],
    )

    async def pin(text: str, message_id: int | None):
        await pin_store.add_pin(
            sessions, session_id=scene.id, author_id=7, text=text, message_id=message_id, limit=50
        )

    await pin("첫 말의 기억", turns[0].id)
    await pin("직접 적은 기억", None)
    await pin("마지막 말의 기억", turns[3].id)
    branch = await branch_scene(sessions, message_id=turns[1].id, started_by=7)
    kept = await pin_store.scene_pins(sessions, session_id=branch.id)
    assert [p.text for p in kept] == ["첫 말의 기억", "직접 적은 기억"]
    copied = await repo.recent_history(sessions, session_id=branch.id, limit=10)
    assert kept[0].message_id == copied[0].id and kept[1].message_id is None
    # The scene it came from keeps its own.
    assert len(await pin_store.scene_pins(sessions, session_id=scene.id)) == 3


async def check_pin_limit_holds(sessions) -> None:
    """Pins added to one scene at the same moment stop at its limit; authors are snowflakes."""
    character = await repo.create_character(sessions, owner_id=7, guild_id=1, name="민지")
    scene = await repo.start_session(
        sessions,
        guild_id=1575980247692607488,
        channel_id=1575980247692607777,
        parent_channel_id=None,
        character_id=character.id,
        started_by=1575980247692600001,
    )
    results = await asyncio.gather(
        *(
            pin_store.add_pin(
                sessions,
                session_id=scene.id,
                author_id=1575980247692600001 + i,
                text=f"{i}번째 기억",
                message_id=None,
                limit=5,
            )
            for i in range(10)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, PinLimitReached) for r in results) == 5
    stored = await pin_store.scene_pins(sessions, session_id=scene.id)
    assert len(stored) == 5 and all(p.author_id > 2**53 for p in stored)


async def test_pins_added_at_the_same_moment_stop_at_the_limit(sessions) -> None:
    await check_pin_limit_holds(sessions)


class HugePins:
    """Pins that could never fit beside the character sheet (a budget set past the context)."""

    def __init__(self) -> None:
        self.asked = 0

    async def block(self, session_id: int, *, budget: int, count) -> PinBlock:
        self.asked += 1
        return PinBlock(f"{PIN_HEADING}\n- " + FACT * 200, (PinNote(1, FACT),))


async def test_pins_the_prompt_cannot_hold_are_left_out_not_the_turn(sessions, tokenizer) -> None:
    scene = await start_scene(sessions, tokenizer)
    pins = scene.core.pins = HugePins()
    try:
        outcome = await scene.play()
        assert outcome.ending is Ending.STORED
        assert pins.asked > 0 and scene.reports[-1].pins == []
    finally:
        await scene.scheduler.shutdown(finish=False)


# --- end to end ---------------------------------------------------------------------------------


async def test_a_turn_pinned_with_an_edited_line_stays_in_the_prompt_after_it_is_trimmed(
    start_bot, tokenizer
):
    engine = ScriptedEngine("그래, 알겠어. 오늘도 재미있었어.", tokenizer=tokenizer)
    env = {"CONTEXT_SIZE": "1024", "MAX_NEW_TOKENS": "32"}
    async with start_bot(engine=engine, env=env) as harness:
        s = harness.scenario
        # Recall off: the pinned turn may come back only as its pin.
        await harness.final_text(await harness.slash(s.moderator, "config memory", recall_tokens=0))
        await repo.update_guild_settings(harness.sessions, guild_id=s.guild.id, user_rate_limit=120)
        character = await harness.character(s.moderator, "민지")
        await harness.start_roleplay(s.moderator, s.general, character)
        player = s.members[0]
        said, _ = await talk(harness, player, FACT)

        menu = await harness.fake.message_command(player, MENU, said)
        await harness.fake.wait_for_response(menu)
        _, prefilled = only_input(menu.modal)
        assert prefilled == FACT  # the form opens with the turn's text
        custom_id, _ = only_input(menu.modal)
        submitted = await harness.fake.submit_modal(player, menu, {custom_id: PINNED})
        await harness.fake.wait_for_response(submitted)
        assert "고정했어요 (1/50)" in await harness.final_text(submitted)
        # The pinned player line is also what the character knows about that player.
        known = await fact_store.facts_of(harness.sessions, guild_id=s.guild.id, user_id=player.id)
        assert [(f.text, f.source, f.character_id) for f in known] == [(PINNED, "pin", character)]

        for i in range(30):
            await talk(harness, player, FILLERS[i % len(FILLERS)])
        prompt = reply_prompt(engine)
        assert FACT not in prompt  # trimmed out of the window ...
        assert f"{PIN_HEADING}\n- {PINNED}" in prompt  # ... and pinned in the system block
        assert prompt.index(PIN_HEADING) < prompt.index("<|im_end|>")

        inspected = await harness.slash(s.moderator, "rp context", channel=s.general)
        text = await harness.final_text(inspected)
        assert "고정 기억: 프롬프트에 1개" in text and "민지의 고양이 이름은" in text

        # A moderator turns pins off in the prompt; they stay pinned.
        off = await harness.slash(s.moderator, "config memory", pin_tokens=0)
        await harness.final_text(off)
        await talk(harness, player, FILLERS[0])
        assert PIN_HEADING not in reply_prompt(engine)
        assert len(await pin_store.scene_pins(harness.sessions, session_id=await scene_id(harness)))

    # After a restart the pin is still there and back in the prompt.
    async with start_bot(engine=engine, env=env) as harness:
        s = harness.scenario
        on = await harness.slash(s.moderator, "config memory", pin_tokens=200)
        await harness.final_text(on)
        await talk(harness, s.members[0], FILLERS[1])
        assert f"- {PINNED}" in reply_prompt(engine)
        shown = await harness.slash(s.members[0], "rp memory", channel=s.general)
        await harness.fake.wait_for_response(shown)
        await harness.final_text(shown)
        [embed] = shown.callback_data["embeds"]
        assert embed["title"] == "📌 고정 기억 (1/50)" and PINNED in embed["description"]


async def test_pins_are_listed_edited_and_removed_with_rp_memory(harness):
    s, fake = harness.scenario, harness.fake
    character = await harness.character(s.moderator, "민지")
    await harness.start_roleplay(s.moderator, s.general, character)
    player, other = s.members[0], s.members[1]
    said, reply = await talk(harness, player, FACT)
    await talk(harness, other, "나도 고양이 좋아해.")
    assert "고정했어요" in await pin_from_menu(harness, player, said)
    assert "고정했어요" in await pin_from_menu(harness, other, reply, "민지는 고양이를 좋아한다.")
    first, second = await pin_store.scene_pins(harness.sessions, session_id=await scene_id(harness))
    assert first.text == FACT and second.text == "민지는 고양이를 좋아한다."

    shown = await harness.slash(player, "rp memory", channel=s.general)
    await harness.final_text(shown)
    [embed] = shown.callback_data["embeds"]
    assert f"`#{first.id}` {FACT}" in embed["description"]
    assert f"`#{second.id}` 민지는 고양이를 좋아한다." in embed["description"]

    # Another player's pin is not theirs to change.
    refused = await harness.slash(player, "rp memory", channel=s.general, edit_pin=second.id)
    assert "고정한 사람, 장면을 시작한 사람, 관리자만" in await harness.final_text(refused)
    assert refused.modal is None

    opened_form = await harness.slash(player, "rp memory", channel=s.general, edit_pin=first.id)
    custom_id, value = only_input(opened_form.modal)
    assert value == FACT
    edited = await fake.submit_modal(player, opened_form, {custom_id: "나비는 삼색 고양이다."})
    await fake.wait_for_response(edited)
    assert f"#{first.id}번 고정 기억을 고쳤어요" in await harness.final_text(edited)

    gone = await harness.slash(s.moderator, "rp memory", channel=s.general, remove_pin=second.id)
    assert f"#{second.id}번 고정 기억을 뺐어요" in await harness.final_text(gone)
    missing = await harness.slash(player, "rp memory", channel=s.general, remove_pin=second.id)
    assert f"#{second.id}번 고정 기억이 없어요" in await harness.final_text(missing)
    left = await pin_store.scene_pins(harness.sessions, session_id=await scene_id(harness))
    assert [p.text for p in left] == ["나비는 삼색 고양이다."]

    english = await fake.slash(player, "rp memory", channel=s.general, locale="en-US")
    await fake.wait_for_response(english)
    assert english.callback_data["embeds"][0]["title"] == "📌 Pinned (1/50)"


async def test_who_never_played_may_not_pin_and_only_turns_of_the_scene_can_be_pinned(harness):
    s = harness.scenario
    character = await harness.character(s.moderator, "민지")
    await harness.start_roleplay(s.moderator, s.general, character)
    player, stranger = s.members[0], s.members[1]
    said, reply = await talk(harness, player, FACT)

    assert "플레이어, 시작한 사람, 관리자만" in await pin_from_menu(harness, stranger, reply)
    note = await harness.fake.say(s.general, player, "// 잠깐 자리 비울게")
    assert "진행 중인 장면의 대화만" in await pin_from_menu(harness, player, note)
    assert "고정했어요" in await pin_from_menu(harness, s.moderator, reply)  # a moderator may
    assert await pin_store.scene_pins(harness.sessions, session_id=await scene_id(harness))

    # An empty line is not pinned.
    assert "비어 있어요" in await pin_from_menu(harness, player, said, "   ")
    assert (
        len(await pin_store.scene_pins(harness.sessions, session_id=await scene_id(harness))) == 1
    )


async def test_a_long_turn_opens_the_form_cut_to_what_a_pin_holds(harness):
    s = harness.scenario
    character = await harness.character(s.moderator, "민지")
    await harness.start_roleplay(s.moderator, s.general, character)
    long_line = "나비는 정말 귀엽다. " * 150  # 1,650 characters
    said, _ = await talk(harness, s.members[0], long_line)
    menu = await harness.fake.message_command(s.members[0], MENU, said)
    await harness.fake.wait_for_response(menu)
    custom_id, value = only_input(menu.modal)
    assert len(value) <= PIN_CHARS and value.endswith("…") and value.startswith("나비는 정말")
    # The form takes no more than a pin holds: a client cannot type more, nor leave it empty.
    with pytest.raises(ValueError, match="cannot type 501 characters"):
        await harness.fake.submit_modal(s.members[0], menu, {custom_id: "가" * (PIN_CHARS + 1)})
    with pytest.raises(ValueError, match="empty"):
        await harness.fake.submit_modal(s.members[0], menu, {custom_id: ""})
    kept = await harness.fake.submit_modal(s.members[0], menu, {custom_id: "가" * PIN_CHARS})
    await harness.fake.wait_for_response(kept)
    assert "고정했어요" in await harness.final_text(kept)


async def test_a_scene_holds_at_most_its_pin_limit(harness):
    s = harness.scenario
    character = await harness.character(s.moderator, "민지")
    await harness.start_roleplay(s.moderator, s.general, character)
    scene = await scene_id(harness)
    for i in range(49):
        await pin_store.add_pin(
            harness.sessions, session_id=scene, author_id=1, text=f"{i}", message_id=None, limit=50
        )
    said, _ = await talk(harness, s.members[0], FACT)
    assert "고정했어요 (50/50)" in await pin_from_menu(harness, s.members[0], said)
    refused = await pin_from_menu(harness, s.members[0], said)
    assert "50개까지 고정할 수 있어요" in refused
    assert len(await pin_store.scene_pins(harness.sessions, session_id=scene)) == 50


async def test_the_terminal_pins_the_last_turn_a_numbered_one_or_typed_text(
    tmp_path, tokenizer
) -> None:
    from synatra_bot.settings import settings_from_env
    from synatra_bot.storage.database import create_engine, create_sessionmaker

    settings = settings_from_env(
        {"DISCORD_TOKEN": "", "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"},
        require_token=False,
    )
    lines = f"{FACT}\n/pin 2\n/pin\n/pin 민지는 겨울을 좋아한다.\n/pin 99\n/pins\n/unpin 2\n/pins\n"
    out = io.StringIO()
    code = await run_chat(
        args_for(card_file(tmp_path)),
        settings=settings,
        language="ko",
        engine=ScriptedEngine("음, 그럼 바다를 보러 가자!", tokenizer=tokenizer),
        tokenizer=tokenizer,
        stdin=io.StringIO(lines),
        stdout=out,
    )
    text = out.getvalue()
    assert code == 0
    assert f"📌 #1번으로 고정했어요: {FACT}" in text
    assert "📌 #2번으로 고정했어요: 음, 그럼 바다를 보러 가자!" in text
    assert "📌 #3번으로 고정했어요: 민지는 겨울을 좋아한다." in text
    assert "고정할 대화가 없어요" in text
    assert "📌 고정 기억 (3/50):" in text and "📌 #2번 고정 기억을 뺐어요" in text
    assert "📌 고정 기억 (2/50):" in text
    database = create_engine(settings.database_url)
    try:
        sessions = create_sessionmaker(database)
        scene, _ = await terminal_history(sessions)
        pins = await pin_store.scene_pins(sessions, session_id=scene.id)
        assert [p.text for p in pins] == [FACT, "민지는 겨울을 좋아한다."]
    finally:
        await database.dispose()


async def test_a_pin_is_a_fact_only_about_the_player_who_pinned_their_own_line(harness):
    s, fake = harness.scenario, harness.fake
    character = await harness.character(s.moderator, "민지")
    await harness.start_roleplay(s.moderator, s.general, character)
    player, other = s.members[0], s.members[1]
    said, _ = await talk(harness, player, FACT)
    await talk(harness, other, "나도 고양이 좋아해.")

    async def facts() -> list[tuple[str, str]]:
        known = await fact_store.facts_of(harness.sessions, guild_id=s.guild.id, user_id=player.id)
        return [(f.text, f.source) for f in known]

    # Another player, or a moderator, pinning someone's line (rewritten or not) plants nothing.
    assert "고정했어요" in await pin_from_menu(harness, other, said, "김지수는 거짓말쟁이다.")
    assert "고정했어요" in await pin_from_menu(harness, s.moderator, said)
    assert await facts() == []

    # Pinning their own line is a fact about themselves; it follows the pin's edits ...
    assert "고정했어요" in await pin_from_menu(harness, player, said, PINNED)
    assert await facts() == [(PINNED, "pin")]
    own = (await pin_store.scene_pins(harness.sessions, session_id=await scene_id(harness)))[-1]
    form = await harness.slash(player, "rp memory", channel=s.general, edit_pin=own.id)
    custom_id, _ = only_input(form.modal)
    edited = await fake.submit_modal(player, form, {custom_id: "나비는 삼색 고양이다."})
    await fake.wait_for_response(edited)
    assert "고쳤어요" in await harness.final_text(edited)
    assert await facts() == [("나비는 삼색 고양이다.", "pin")]
    # ... is forgotten when a moderator rewrites it (no longer the player's words) ...
    form = await harness.slash(s.moderator, "rp memory", channel=s.general, edit_pin=own.id)
    custom_id, _ = only_input(form.modal)
    edited = await fake.submit_modal(s.moderator, form, {custom_id: "김지수는 고양이를 싫어한다."})
    await fake.wait_for_response(edited)
    await harness.final_text(edited)
    assert await facts() == []
    # ... and when it is unpinned.
    assert "고정했어요" in await pin_from_menu(harness, player, said)
    assert await facts() == [(FACT, "pin")]
    again = (await pin_store.scene_pins(harness.sessions, session_id=await scene_id(harness)))[-1]
    gone = await harness.slash(player, "rp memory", channel=s.general, remove_pin=again.id)
    assert "뺐어요" in await harness.final_text(gone)
    assert await facts() == []


async def test_a_pin_makes_no_fact_where_the_channel_keeps_none(harness):
    s = harness.scenario
    character = await harness.character(s.moderator, "민지")
    await harness.start_roleplay(s.moderator, s.general, character)
    player = s.members[0]
    await harness.final_text(await harness.slash(s.moderator, "config memory", player_facts=False))
    said, _ = await talk(harness, player, FACT)
    assert "고정했어요" in await pin_from_menu(harness, player, said)
    assert await fact_store.facts_of(harness.sessions, guild_id=s.guild.id, user_id=player.id) == []


async def test_pin_changes_count_against_the_players_rate_limit(harness):
    s = harness.scenario
    character = await harness.character(s.moderator, "민지")
    await harness.start_roleplay(s.moderator, s.general, character)
    player = s.members[0]
    await harness.final_text(await harness.slash(s.moderator, "config ratelimit", per_minute=3))
    said, _ = await talk(harness, player, FACT)  # one turn
    assert "고정했어요" in await pin_from_menu(harness, player, said)  # two
    [pin] = await pin_store.scene_pins(harness.sessions, session_id=await scene_id(harness))
    gone = await harness.slash(player, "rp memory", channel=s.general, remove_pin=pin.id)
    assert "뺐어요" in await harness.final_text(gone)  # three
    refused = await pin_from_menu(harness, player, said)
    assert "조금 천천히요" in refused
    assert await pin_store.scene_pins(harness.sessions, session_id=await scene_id(harness)) == []
    english = await harness.fake.message_command(player, MENU, said, locale="en-US")
    await harness.fake.wait_for_response(english)
    submitted = await harness.fake.submit_modal(player, english, {}, locale="en-US")
    await harness.fake.wait_for_response(submitted)
    assert "Slow down a little" in await harness.final_text(submitted)
