"""Recall of old turns: Korean terms by Kiwi's morphemes, BM25 over a scene's turns, the block
placed after the history, an index kept true through edits, deletes and undo, existing scenes
indexed after the upgrade, and a fact recalled end to end through the real client and the fake
Discord."""

from __future__ import annotations

import argparse
import json
import logging

import pytest

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.prompt.builder import HistoryMessage, PromptBuilder, PromptOptions
from synatra_bot.prompt.cards import CharacterCard
from synatra_bot.prompt.preview import configure_parser, run_preview
from synatra_bot.prompt.recall import (
    RECALL_HEADING,
    RecallBlock,
    RecalledTurn,
    RecallNote,
    recall_block,
)
from synatra_bot.prompt.terms import KoreanTerms, TurnIndex
from synatra_bot.roleplay import recall as recall_module
from synatra_bot.roleplay.recall import TurnRecall
from synatra_bot.roleplay.turns import Ending
from synatra_bot.storage import repository as repo
from synatra_bot.storage.archives import branch_scene
from synatra_bot.storage.database import create_engine, create_sessionmaker
from synatra_bot.storage.migrate import upgrade_database
from synatra_bot.storage.recall_terms import scene_terms
from tests.db_helpers import opened, upgraded_from_0001
from tests.prompt_helpers import v2_card
from tests.test_memory import start_scene

FACT = "우리 고양이 이름은 나비야. 작년 봄 축제에서 처음 만났어."
FILLERS = [
    "오늘은 비가 와서 창밖만 바라봤다.",
    "도서관에서 시험 공부를 했는데 너무 졸렸다.",
    "점심으로 김치찌개를 먹었다.",
    "버스가 늦게 와서 수업에 늦을 뻔했다.",
]


@pytest.fixture(scope="module")
def korean() -> KoreanTerms:
    """Kiwi loads in seconds: once for the module."""
    terms = KoreanTerms()
    terms.load()
    return terms


def test_particles_and_endings_do_not_hide_a_word(korean) -> None:
    for text in ("나비는 고양이다.", "나비를 봤어?", "나비한테서 편지가 왔다.", "나비였잖아"):
        assert "나비" in korean.terms(text), text
    assert "약속" in korean.terms("우리가 축제에서 약속했잖아")
    assert "는" not in korean.terms("나비는") and "를" not in korean.terms("나비를")


def test_bm25_finds_the_fact_asked_with_other_particles_and_word_order(korean) -> None:
    index = TurnIndex()
    turns = {i: FILLERS[i % len(FILLERS)] for i in range(1, 200)}
    turns[37] = FACT
    for message_id, text in turns.items():
        index.add(message_id, korean.terms(text))
    hits = index.search(
        korean.terms("축제에서 만난 나비한테 요즘 밥은 줬어?"), before_id=150, limit=3
    )
    assert hits[0].message_id == 37
    assert set(hits[0].matched) >= {"나비", "축제"}
    # A turn still in the window is never recalled.
    assert index.search(korean.terms("나비"), before_id=30, limit=3) == []


def test_a_forgotten_turn_is_no_longer_found(korean) -> None:
    index = TurnIndex()
    index.add(1, korean.terms(FACT))
    index.add(2, korean.terms(FILLERS[0]))
    index.remove_from(1)
    assert len(index) == 0 and index.search(["나비"], before_id=10, limit=3) == []


def test_the_block_fits_its_budget_in_story_order_and_cuts_a_long_turn(tokenizer) -> None:
    builder = PromptBuilder(tokenizer)
    long_turn = " ".join([*FILLERS, "나비는 창가에서 잠들었다.", *FILLERS])
    turns = [
        RecalledTurn(12, "준", FACT, ("나비", "축제"), 5.0),
        RecalledTurn(90, "민지", long_turn, ("나비",), 3.0),
    ]
    block = recall_block(turns, budget=200, count=builder.count_text)
    assert block is not None
    assert [n.message_id for n in block.notes] == [12, 90]
    assert block.text.startswith(RECALL_HEADING)
    assert "나비는 창가에서 잠들었다." in block.text and "김치찌개" not in block.text
    assert builder.count_text(block.text) <= 200
    only_fact = builder.count_text(f"{RECALL_HEADING}\n준: {FACT}")
    small = recall_block(turns, budget=only_fact, count=builder.count_text)
    assert small is not None and [n.message_id for n in small.notes] == [12]
    assert recall_block(turns, budget=5, count=builder.count_text) is None


def test_the_block_comes_after_the_history_so_the_prompt_start_stays(tokenizer) -> None:
    builder = PromptBuilder(tokenizer)
    card = CharacterCard(name="민지", description="{{char}}는 대학생이다.")
    history = [
        HistoryMessage("user", "준", "안녕", message_id=50),
        HistoryMessage("assistant", "민지", "안녕, 준!", message_id=51),
        HistoryMessage("user", "준", "나비한테 밥 줬어?", message_id=52),
    ]
    turns = [RecalledTurn(7, "준", FACT, ("나비",), 2.0)]
    block = recall_block(turns, budget=100, count=builder.count_text)
    plain = builder.build(card=card, history=history, user_name="준", options=PromptOptions())
    recalled = builder.build(
        card=card, history=history, user_name="준", options=PromptOptions(recall=block)
    )
    newest = "<|im_start|>user\n준: 나비한테 밥 줬어?<|im_end|>\n"
    assert recalled.text.index(newest) < recalled.text.index(RECALL_HEADING)
    # Everything up to the newest message is what the prompt without recall had.
    end = plain.text.index(newest) + len(newest)
    assert recalled.input_ids[: len(tokenizer(plain.text[:end]).input_ids)] == tuple(
        tokenizer(plain.text[:end]).input_ids
    )
    report = recalled.report
    assert [(n.message_id, n.matched) for n in report.recall] == [(7, ("나비",))]
    assert "recall" in [b.name for b in report.blocks]
    assert "#7 준 (matched 나비" in report.to_text()


# --- the index in the database ------------------------------------------------------------------


@pytest.fixture
async def sessions(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'recall.db'}"
    await upgrade_database(url)
    database = create_engine(url)
    yield create_sessionmaker(database)
    await database.dispose()


async def _scene(sessions, texts: list[str]) -> tuple[int, list[int]]:
    character = await repo.create_character(sessions, owner_id=42, guild_id=1, name="민지")
    session = await repo.start_session(
        sessions,
        guild_id=1,
        channel_id=500,
        parent_channel_id=None,
        character_id=character.id,
        started_by=42,
    )
    stored = await repo.add_messages(
        sessions,
        [
            repo.NewMessage(session_id=session.id, role="user", content=text, author_id=42)
            for text in texts
        ],
    )
    return session.id, [m.id for m in stored]


async def _recalled(recall: TurnRecall, session_id: int, query: str, before_id: int) -> list[int]:
    block = await recall.recall(
        session_id=session_id, query=query, before_id=before_id, budget=500, count=len
    )
    return [] if block is None else [n.message_id for n in block.notes]


async def test_edits_deletes_and_undo_keep_the_index_true(sessions, korean) -> None:
    session_id, ids = await _scene(sessions, [FACT, *FILLERS, "나비가 아프다.", *FILLERS])
    recall = TurnRecall(sessions, terms=korean)
    try:
        assert await _recalled(recall, session_id, "나비", ids[-1]) == []  # not indexed yet
        await recall.settled()
        assert await _recalled(recall, session_id, "나비를 기억해?", ids[-1]) == [ids[0], ids[5]]

        await repo.update_message(sessions, message_id=ids[0], content="우리 강아지는 초코야.")
        await recall.turns_changed(session_id, ids[0])
        await recall.settled()
        assert await _recalled(recall, session_id, "초코한테 가자", ids[-1]) == [ids[0]]
        assert await _recalled(recall, session_id, "나비를 기억해?", ids[-1]) == [ids[5]]

        await repo.delete_messages(sessions, message_ids=[ids[5]])
        await recall.turns_changed(session_id, ids[5])
        await recall.settled()
        assert await _recalled(recall, session_id, "나비를 기억해?", ids[-1]) == []
        assert len(await scene_terms(sessions, session_id=session_id)) == len(ids)
    finally:
        await recall.close()


async def test_after_a_restart_the_index_is_read_back_from_the_stored_terms(
    sessions, korean, monkeypatch
) -> None:
    session_id, ids = await _scene(sessions, [*FILLERS, FACT, *FILLERS, *FILLERS])
    first = TurnRecall(sessions, terms=korean)
    await _recalled(first, session_id, "나비", ids[-1])
    await first.settled()
    await first.close()
    monkeypatch.setattr(recall_module, "LOAD_PAGE", 3)  # read back in several pages
    again = TurnRecall(sessions, terms=korean)
    try:
        assert await _recalled(again, session_id, "나비한테 가 볼까?", ids[-1]) == [ids[4]]
    finally:
        await again.close()


async def test_a_branch_recalls_its_copied_past(sessions, korean) -> None:
    session_id, ids = await _scene(sessions, [FACT, *FILLERS, *FILLERS])
    recall = TurnRecall(sessions, terms=korean)
    try:
        await _recalled(recall, session_id, "나비", ids[-1])
        await recall.settled()
        branch = await branch_scene(sessions, message_id=ids[-1], started_by=42)
        copies = [m.id for m in await repo.recent_history(sessions, session_id=branch.id, limit=50)]
        assert await _recalled(recall, branch.id, "나비를 기억해?", copies[-1]) == []
        await recall.settled()  # the copies are indexed in the background, as stored turns are
        assert await _recalled(recall, branch.id, "나비를 기억해?", copies[-1]) == [copies[0]]
    finally:
        await recall.close()


async def test_a_scene_stored_before_the_upgrade_is_indexed_in_the_background(
    tmp_path, korean, monkeypatch, caplog
) -> None:
    url, old = await upgraded_from_0001(tmp_path, "0013")
    monkeypatch.setattr(recall_module, "CATCH_UP_MIN_TURNS", 1)
    async with opened(url) as sessions:
        recall = TurnRecall(sessions, terms=korean)
        with caplog.at_level(logging.INFO, logger="synatra_bot.roleplay.recall"):
            recall.start_catch_up()
            await recall.settled()
        await recall.close()
        indexed = dict(await scene_terms(sessions, session_id=old.session_id))
    assert old.player_turn_id in indexed and old.reply_id in indexed
    assert "1 of 1 scenes indexed" in caplog.text


class HugeRecall:
    """A recall that always brings back far more than any prompt holds."""

    def __init__(self) -> None:
        self.asked = 0

    def turn_stored(self, session_id: int) -> None:
        pass

    async def turns_changed(self, session_id: int, oldest_id: int) -> None:
        pass

    async def recall(self, **_options) -> RecallBlock:
        self.asked += 1
        note = RecallNote(1, "준", FACT, ("나비",), 1.0)
        return RecallBlock(f"{RECALL_HEADING}\n" + FACT * 200, (note,))

    def start_catch_up(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_a_recall_block_the_prompt_cannot_hold_is_left_out_not_the_turn(
    sessions, tokenizer
) -> None:
    scene = await start_scene(sessions, tokenizer)
    recall = scene.core.recall = HugeRecall()
    try:
        await scene.play_until_dropped()
        outcome = await scene.play()
        assert outcome.ending is Ending.STORED
        assert recall.asked > 0 and scene.reports[-1].recall == []
    finally:
        await scene.scheduler.shutdown(finish=False)


# --- the preview -------------------------------------------------------------------------------


def test_the_preview_recalls_from_the_whole_history_file(tmp_path, tokenizer_dir, capsys) -> None:
    card = tmp_path / "minji.json"
    card.write_text(json.dumps(v2_card(), ensure_ascii=False), encoding="utf-8")
    lines = [{"role": "user", "name": "준", "content": FACT}]
    for i in range(60):
        role = "user" if i % 2 else "assistant"
        lines.append({"role": role, "name": "준" if i % 2 else "민지", "content": FILLERS[i % 4]})
    lines.append({"role": "user", "name": "준", "content": "축제에서 만난 나비한테 밥 줬어?"})
    history = tmp_path / "chat.jsonl"
    history.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), "utf-8")
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    argv = ["--card", str(card), "--history", str(history), "--tokenizer", str(tokenizer_dir)]
    args = parser.parse_args([*argv, "--context", "1024", "--max-new-tokens", "64"])
    assert run_preview(args, default_model_id="unused") == 0
    printed = capsys.readouterr()
    assert FACT not in printed.out.split(RECALL_HEADING)[0]  # trimmed out of the window ...
    assert f"준: {FACT}" in printed.out.split(RECALL_HEADING)[1]  # ... and recalled
    assert "recalled: 1 old turn" in printed.err and "#1 준 (matched" in printed.err
    off = parser.parse_args(
        [*argv, "--context", "1024", "--max-new-tokens", "64", "--recall-tokens", "0"]
    )
    assert run_preview(off, default_model_id="unused") == 0
    assert RECALL_HEADING not in capsys.readouterr().out


# --- end to end ---------------------------------------------------------------------------------


#: The fact a scene's player plants early, and the later message that refers to it with
#: another particle (나비는 -> 나비한테서).
PLANTED = "나비는 우리 집 고양이야. 작년 봄 축제에서 처음 만났어."
ASKED = "요즘 나비한테서 소식 들었어?"


async def play_until_trimmed(harness, engine, *, recall_tokens: int = 128):
    """A Korean scene whose first message plants `PLANTED`, played on until the prompt's window
    no longer holds it; the scene's indexing settled. The player and the planted turn's id."""
    s = harness.scenario
    budget = await harness.slash(s.moderator, "config memory", recall_tokens=recall_tokens)
    await harness.final_text(budget)
    # Many turns in a minute from one player: lift the per-player limit.
    await repo.update_guild_settings(harness.sessions, guild_id=s.guild.id, user_rate_limit=120)
    character = await harness.character(s.moderator, "민지")
    await harness.start_roleplay(s.moderator, s.general, character)
    player = s.members[0]
    await harness.reply_to(s.general, player, PLANTED)
    session = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
    history = await repo.recent_history(harness.sessions, session_id=session.id, limit=10)
    planted_id = next(m.id for m in history if m.content == PLANTED)
    for i in range(30):
        await harness.reply_to(s.general, player, FILLERS[i % len(FILLERS)])
    assert PLANTED not in engine.prompts[-1]  # trimmed out of the window
    await harness.bot.core.recall.settled()  # indexed once its prompts left turns behind
    return player, planted_id


async def context_shown(harness, locale: str) -> tuple[str, str]:
    """What `/rp context` says to the moderator in `locale`, and its attached prompt.txt."""
    record = await harness.slash(harness.scenario.moderator, "rp context", locale=locale)
    text = await harness.final_text(record)
    message = await harness.fake.wait_until(
        lambda: next((m for m in [*record.followups, record.original] if m), None)
    )
    assert message.attachments and message.attachments[0].filename == "prompt.txt"
    return text, message.attachments[0].data.decode()


async def test_a_fact_trimmed_out_is_recalled_when_a_later_message_names_it(start_bot, tokenizer):
    engine = ScriptedEngine("그래, 알겠어. 오늘도 재미있었어.", tokenizer=tokenizer)
    env = {"CONTEXT_SIZE": "1024", "MAX_NEW_TOKENS": "32"}
    async with start_bot(engine=engine, env=env) as harness:
        s = harness.scenario
        player, planted_id = await play_until_trimmed(harness, engine)

        await harness.reply_to(s.general, player, ASKED)
        prompt = engine.prompts[-1]
        assert RECALL_HEADING in prompt
        block = prompt[prompt.index(RECALL_HEADING) :]
        assert PLANTED in block
        # It sits after the newest message, so the prompt's start stays as it was.
        assert prompt.index(ASKED) < prompt.index(RECALL_HEADING)

        # The inspector shows what was recalled, from which turn, and why.
        text, attached = await context_shown(harness, "ko")
        assert "떠올린 옛 턴:" in text and f"#{planted_id} " in text
        assert "일치: 나비" in text
        assert PLANTED in attached.split(RECALL_HEADING)[1]
        english, _ = await context_shown(harness, "en-US")
        assert "recalled:" in english and f"#{planted_id} " in english
        assert "matched 나비" in english

        # A moderator turns recall off: the next message naming the cat recalls nothing.
        off = await harness.slash(s.moderator, "config memory", recall_tokens=0)
        await harness.final_text(off)
        guild = await repo.get_guild_settings(harness.sessions, guild_id=s.guild.id)
        assert guild.recall_tokens == 0
        await harness.reply_to(s.general, player, "나비를 다시 보고 싶다.")
        assert RECALL_HEADING not in engine.prompts[-1]
