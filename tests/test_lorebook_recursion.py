"""Recursive lorebook scanning through the real client and the fake Discord: a book that asks
for it (`recursive_scanning`) has its keys found in lore that fired, as many steps as the
server allows (`/config lorebook-budget recursion:`), and a hostile recursive book leaves the
event loop free."""

from __future__ import annotations

from synatra_bot.prompt.lorebook import MAX_TOKEN_CHARS, LoreEntry, LoreHit, select_entries
from tests.hostile_corpus import RecordingEngine
from tests.test_lorebook_safety import LoopLag

CLOCK_TOWER = "시계탑 아래에는 비밀 통로가 있다."
PASSAGE = "비밀 통로는 왕궁으로 이어진다."
PALACE = "왕궁에는 잠든 왕이 있다."


def recursive_book(**top) -> dict:
    return {
        "entries": [
            {"keys": ["시계탑"], "content": CLOCK_TOWER, "name": "시계탑"},
            {"keys": ["비밀 통로"], "content": PASSAGE, "name": "비밀 통로"},
            {"keys": ["왕궁"], "content": PALACE, "name": "왕궁"},
        ],
        **top,
    }


async def scene(harness, book: dict) -> None:
    s = harness.scenario
    owner = s.members[0]
    character = await harness.character(owner, "민지", character_book=book)
    await harness.slash(s.moderator, "config channel", channel=s.general, enabled=True)
    await harness.start_roleplay(owner, s.general, character)


async def test_a_recursive_card_book_fires_entries_named_by_lore_until_a_moderator_stops_it(
    start_bot, tokenizer
):
    engine = RecordingEngine(tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        owner = s.members[0]
        await scene(harness, recursive_book(recursive_scanning=True))
        await harness.reply_to(s.general, owner, "시계탑에 가 보자")
        recursed = tokenizer.decode(engine.prompt_ids[-1])

        saved = await harness.slash(s.moderator, "config lorebook-budget", recursion=0)
        assert "lorebook_recursion=0" in await harness.final_text(saved)
        shown = await harness.final_text(await harness.slash(s.moderator, "config show"))
        await harness.reply_to(s.general, owner, "시계탑에 다시 가 보자")
        stopped = tokenizer.decode(engine.prompt_ids[-1])

        await harness.slash(s.moderator, "config lorebook-budget", recursion=1)
        await harness.reply_to(s.general, owner, "시계탑에 또 가 보자")
        one_step = tokenizer.decode(engine.prompt_ids[-1])

    assert CLOCK_TOWER in recursed and PASSAGE in recursed and PALACE in recursed
    assert "lorebook_recursion" in shown
    assert CLOCK_TOWER in stopped and PASSAGE not in stopped
    assert PASSAGE in one_step and PALACE not in one_step


async def test_a_book_without_recursive_scanning_fires_only_on_the_chat(start_bot, tokenizer):
    engine = RecordingEngine(tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        await scene(harness, recursive_book())
        await harness.reply_to(s.general, s.members[0], "시계탑에 가 보자")
        prompt = tokenizer.decode(engine.prompt_ids[-1])
    assert CLOCK_TOWER in prompt and PASSAGE not in prompt


async def test_a_hostile_recursive_book_does_not_stall_the_event_loop(harness):
    """Every entry names every key, with long text: the first recursion step fires them all,
    and the next scans all that lore (200 kB), under the same time budget as the first
    scan."""
    keys = [f"고리{i}" for i in range(120)]
    filler = " ".join(keys) + " " + "가나다라마바사 " * 150
    entries = [{"keys": [key], "content": f"{key}: {filler}", "name": key} for key in keys]
    s = harness.scenario
    owner = s.members[0]
    book = {"entries": entries, "recursive_scanning": True}
    character = await harness.character(owner, "고리 카드", character_book=book)
    await harness.slash(s.moderator, "config channel", channel=s.general, enabled=True)
    await harness.slash(s.moderator, "config lorebook-budget", recursion=5)
    await harness.start_roleplay(owner, s.general, character)
    with LoopLag() as lag:
        reply = await harness.reply_to(s.general, owner, "고리0에 가 보자")
    assert reply.content and "⚠️" not in reply.content
    assert lag.worst < 0.05, f"the event loop stalled {lag.worst * 1000:.0f} ms"


def test_no_piece_of_the_vocabulary_is_longer_than_max_token_chars(tokenizer):
    pieces = tokenizer.convert_ids_to_tokens(list(range(tokenizer.vocab_size)))
    longest = max(1 if p.startswith("<0x") else len(p) for p in pieces)
    assert longest == MAX_TOKEN_CHARS


def test_choosing_lore_counts_no_more_text_than_the_budget_could_hold():
    counted: list[str] = []

    def count(text: str) -> int:
        counted.append(text)
        return len(text)  # one token a character: every entry here is over the budget

    hits = [
        LoreHit(LoreEntry(keys=[f"고리{i}"], content=f"고리{i} " + "가" * 500), "card")
        for i in range(200)
    ]
    kept, skipped = select_entries(hits, token_budget=100, count_tokens=count)
    assert not kept and len(skipped) == 200
    assert sum(map(len, counted)) <= 100 * MAX_TOKEN_CHARS
    small = [LoreHit(LoreEntry(keys=["a"], content="짧은 설정"), "card")]
    assert [f.content for f in select_entries(small, token_budget=100, count_tokens=count)[0]] == [
        "짧은 설정"
    ]
