"""Hostile lorebooks: regex keys run bounded and off the event loop, books are capped, and
/rp context does not give away a private card's entries. End-to-end parts run the real
discord.py client against the fake Discord."""

from __future__ import annotations

import asyncio
import json
import threading
import tracemalloc

import pytest

from synatra_bot.errors import CardError
from synatra_bot.prompt import builder as builder_module
from synatra_bot.prompt.builder import HistoryMessage, PromptBuilder, PromptOptions
from synatra_bot.prompt.cards import CharacterCard, parse_card
from synatra_bot.prompt.lorebook import (
    KEY_TIMEOUT_S,
    MAX_BOOK_KEYS,
    MAX_BOOK_REGEX_BYTES,
    MAX_ENTRIES,
    MAX_ENTRY_KEYS,
    MAX_KEY_CHARS,
    Lorebook,
    LoreEntry,
    scan_books,
)
from synatra_bot.prompt.report import LoreLeftOut, LoreNote, PromptReport
from synatra_bot.storage import repository as repo
from tests.prompt_helpers import v2_card

#: Exponential for mrab-regex too (it defuses the classic `(a+)+$`): runs into the timeout.
CATASTROPHIC = "/(a|a)+$/"
ATTACK = "a" * 40 + "!"
CARD_REFUSED = "캐릭터 카드를 읽을 수 없어요"


def _names(hits) -> list[str]:
    return [hit.entry.name for hit in hits]


def _entry(name: str, *keys: str) -> LoreEntry:
    return LoreEntry(keys=list(keys), content=f"{name} 설정", name=name)


def _book_entry(name: str, *keys: str) -> dict:
    return {"keys": list(keys), "content": f"{name} 설정", "name": name}


def _bombs(count: int) -> list[LoreEntry]:
    """Entries whose keys are each a different catastrophic regex (no cache shares them)."""
    return [_entry(f"폭탄 {i}", f"/(a|a)+(?#{i})$/") for i in range(count)]


@pytest.fixture(scope="module")
def builder(tokenizer):
    return PromptBuilder(tokenizer)


def _build(builder, *, card_book=None, channel_book=None, text=ATTACK):
    card = CharacterCard(name="민지", description="{{char}}는 탐정이다.", character_book=card_book)
    history = [HistoryMessage("user", "준", text, message_id=1)]
    return builder.build(
        card=card,
        history=history,
        user_name="준",
        channel_lorebook=channel_book,
        options=PromptOptions(),
    )


# --- bounded regex ----------------------------------------------------------------------------


def test_catastrophic_regex_key_times_out_and_is_disabled_for_the_loaded_book():
    book = Lorebook([_entry("폭탄", CATASTROPHIC), _entry("평범", "평범")])
    first = scan_books({"card": book}, [ATTACK + " 평범"])
    assert _names(first.timed_out) == ["폭탄"]
    assert _names(first.matched) == ["평범"]
    # With less time than one match may take, a key still tried would leave the scan short.
    again = scan_books({"card": book}, [ATTACK + " 평범"], budget_s=KEY_TIMEOUT_S / 4)
    assert again.unscanned == []
    assert _names(again.timed_out) == ["폭탄"]
    assert _names(again.matched) == ["평범"]


def test_keys_left_when_the_time_budget_is_spent_do_not_fire_and_are_reported():
    book = Lorebook([*_bombs(6), _entry("평범", "평범")])
    scan = scan_books({"card": book}, [ATTACK + " 평범"], budget_s=2.5 * KEY_TIMEOUT_S)
    assert "평범" in _names(scan.unscanned)
    assert scan.matched == []
    assert 1 <= len(scan.timed_out) <= 3


def test_normal_regex_key_fires_beside_a_catastrophic_one():
    book = Lorebook(
        [
            _entry("폭탄", CATASTROPHIC),
            _entry("탐정", "/명?탐정/i"),
            _entry("집사", "/Butler/"),
        ]
    )
    scan = scan_books({"card": book}, [ATTACK + " 명탐정과 butler"])
    assert _names(scan.matched) == ["탐정"]


def test_report_names_the_timed_out_entry_to_the_owner(builder):
    built = _build(builder, card_book={"entries": [_book_entry("폭탄", CATASTROPHIC)]})
    assert built.report.lorebook_timed_out == ["폭탄"]
    assert "lorebook timed out (key disabled): 폭탄" in built.report.to_text()


def test_channel_book_fires_although_the_card_book_spends_the_time_budget(builder):
    bombs = [_book_entry(f"폭탄 {i}", f"/(a|a)+(?#{i})$/") for i in range(20)]
    channel = Lorebook([_entry("왕국", "a")])
    built = _build(builder, card_book={"entries": bombs}, channel_book=channel)
    assert built.report.lorebook_fired == ["왕국"]
    assert "왕국 설정" in built.text
    assert built.report.lorebook_unscanned


@pytest.mark.parametrize(
    "key", ["/a{4294967294}/", "/(a{1000}){1000}/", "/(?:" + "a?" * 245 + "){1000}/"]
)
def test_regex_key_that_would_compile_huge_is_never_compiled(key):
    book = Lorebook([_entry("거대", key)])
    tracemalloc.start()
    try:
        scan = scan_books({"card": book}, ["a" * 3000])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scan.matched == []
    assert peak < 4 * 1024 * 1024


def test_a_books_compiled_regex_keys_stay_within_its_memory_share():
    book = Lorebook([_entry(f"긴 키 {i}", f"/a{{2000}}(?#{i})/") for i in range(100)])
    tracemalloc.start()
    try:
        scan = scan_books({"card": book}, ["a" * 2000], budget_s=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 0 < len(scan.matched) < 100  # the keys past the share are plain text
    assert peak < MAX_BOOK_REGEX_BYTES + 4 * 1024 * 1024


# --- off the event loop -----------------------------------------------------------------------


def _record_scan_threads(monkeypatch) -> list[int]:
    threads: list[int] = []
    real = builder_module.scan_books

    def recording(*args, **kwargs):
        threads.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(builder_module, "scan_books", recording)
    return threads


async def test_regex_lorebook_is_scanned_off_the_event_loop_thread(tokenizer, monkeypatch):
    threads = _record_scan_threads(monkeypatch)
    card = CharacterCard(name="민지", character_book={"entries": [_book_entry("탐정", "/탐정/")]})
    built = await PromptBuilder(tokenizer).build_async(
        card=card,
        history=[HistoryMessage("user", "준", "탐정이 왔다", message_id=1)],
        user_name="준",
        options=PromptOptions(),
    )
    assert built.report.lorebook_fired == ["탐정"]
    assert threads and threading.get_ident() not in threads


async def test_small_plain_lorebook_is_scanned_on_the_callers_thread(tokenizer, monkeypatch):
    threads = _record_scan_threads(monkeypatch)
    card = CharacterCard(name="민지", character_book={"entries": [_book_entry("탐정", "탐정")]})
    built = await PromptBuilder(tokenizer).build_async(
        card=card,
        history=[HistoryMessage("user", "준", "탐정이 왔다", message_id=1)],
        user_name="준",
        options=PromptOptions(),
    )
    assert built.report.lorebook_fired == ["탐정"]
    assert threads == [threading.get_ident()]


# --- size limits ------------------------------------------------------------------------------


def _card_with_book(entries: list[dict]) -> bytes:
    return json.dumps(v2_card(character_book={"entries": entries})).encode()


OVERSIZED_BOOKS = {
    "entries": (
        [_book_entry(f"e{i}", f"k{i}") for i in range(MAX_ENTRIES + 1)],
        f"{MAX_ENTRIES + 1} entries, the limit is {MAX_ENTRIES}",
    ),
    "keys per entry": (
        [_book_entry("e", *(f"k{i}" for i in range(MAX_ENTRY_KEYS + 1)))],
        f"{MAX_ENTRY_KEYS + 1} keys, the limit is {MAX_ENTRY_KEYS}",
    ),
    "keys per book": (
        [_book_entry(f"e{i}", *(f"k{i}-{j}" for j in range(MAX_ENTRY_KEYS))) for i in range(101)],
        f"{101 * MAX_ENTRY_KEYS} keys, the limit is {MAX_BOOK_KEYS}",
    ),
    "key length": (
        [_book_entry("e", "x" * (MAX_KEY_CHARS + 1))],
        f"{MAX_KEY_CHARS + 1} characters, the limit is {MAX_KEY_CHARS}",
    ),
}


@pytest.mark.parametrize("case", sorted(OVERSIZED_BOOKS))
def test_card_over_a_lorebook_limit_is_refused_naming_the_limit(case):
    entries, reason = OVERSIZED_BOOKS[case]
    with pytest.raises(CardError) as refused:
        parse_card(_card_with_book(entries))
    assert reason in refused.value.params["reason"]


def test_stored_book_over_the_limits_is_cut_and_the_report_says_so(builder):
    entries = [_book_entry(f"e{i}", f"k{i}") for i in range(MAX_ENTRIES + 100)]
    built = _build(builder, card_book={"entries": entries}, text="k3")
    assert built.report.lorebook_fired == ["e3"]
    assert built.report.lorebook_left_out == [LoreLeftOut("card", 100, 0)]
    assert "card lorebook over the limits: 100 entries" in built.report.to_text()


# --- what /rp context shows -------------------------------------------------------------------


def test_report_text_counts_card_entries_without_names_when_asked():
    report = PromptReport(budget=100, context_size=4096, max_new_tokens=300)
    report.lorebook = [
        LoreNote("스포일러: 범인은 집사", "card", 100, "fired"),
        LoreNote("집사의 과거", "card", 200, "fired"),
        LoreNote("저택", "card", 300, "fired"),
        LoreNote("왕국 역사", "channel", 50, "fired"),
        LoreNote("비밀 통로", "card", 400, "skipped"),
    ]
    hidden = report.to_text(hide_card_entry_names=True)
    assert "card lorebook: 3 entries fired (order 100, 200, 300)" in hidden
    assert "card lorebook: 1 entry left out (order 400)" in hidden
    assert "lorebook: 왕국 역사" in hidden
    assert not any(word in hidden for word in ("스포일러", "집사", "저택", "비밀"))
    assert "스포일러: 범인은 집사" in report.to_text()


async def test_rp_context_hides_a_private_cards_entry_names_from_a_moderator(harness):
    s = harness.scenario
    owner = s.members[0]
    book = {"entries": [_book_entry("스포일러: 범인은 집사", "집사")]}
    character = await harness.character(owner, "탐정 민지", character_book=book)
    await repo.update_channel_settings(
        harness.sessions,
        channel_id=s.general.id,
        guild_id=s.guild.id,
        enabled=True,
        lorebook={"entries": [_book_entry("왕국 역사", "왕국")]},
    )
    await harness.start_roleplay(owner, s.general, character)
    await harness.reply_to(s.general, owner, "왕국의 집사가 수상해")

    seen_by_moderator = await harness.final_text(await harness.slash(s.moderator, "rp context"))
    assert "카드 로어북: 1개 항목 발동 (순서 100)" in seen_by_moderator
    assert "왕국 역사" in seen_by_moderator
    assert "스포일러" not in seen_by_moderator and "집사" not in seen_by_moderator
    assert "이름은 카드 주인만 볼 수 있어요" in seen_by_moderator
    seen_by_owner = await harness.final_text(await harness.slash(owner, "rp context"))
    assert "스포일러: 범인은 집사" in seen_by_owner
    assert "카드 주인만" not in seen_by_owner


async def test_oversized_lorebook_card_import_is_refused_with_the_limit(harness):
    s = harness.scenario
    data = _card_with_book([_book_entry(f"e{i}", f"k{i}") for i in range(MAX_ENTRIES + 1)])
    record = await harness.slash(
        s.members[0], "character import", file=("big.json", data, "application/json")
    )
    text = await harness.final_text(record)
    assert CARD_REFUSED in text and f"the limit is {MAX_ENTRIES}" in text
    assert not await repo.visible_characters(
        harness.sessions, guild_id=s.guild.id, user_id=s.members[0].user.id
    )


# --- the event loop under a hostile lorebook -----------------------------------------------------


class LoopLag:
    """Samples how late a task that sleeps 5 ms wakes up, while it runs."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, loop.time() - before - 0.005)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def test_hostile_lorebook_does_not_stall_the_event_loop(harness):
    s = harness.scenario
    owner = s.members[0]
    entries = [
        _book_entry("고전 폭탄", "/(a+)+$/"),
        *(_book_entry(f"폭탄 {i}", f"/(a|a)+(?#{i})$/") for i in range(30)),
        *(
            _book_entry(f"단어 {i}", *(f"/단어{i}-{j}(이|가)?/i" for j in range(MAX_ENTRY_KEYS)))
            for i in range(60)
        ),
    ]
    character = await harness.character(owner, "폭탄 카드", character_book={"entries": entries})
    await harness.slash(s.moderator, "config channel", channel=s.general, enabled=True)
    await harness.start_roleplay(owner, s.general, character)
    with LoopLag() as lag:
        reply = await harness.reply_to(s.general, owner, ATTACK)
    assert reply.content and "⚠️" not in reply.content
    assert lag.worst < 0.05, f"the event loop stalled {lag.worst * 1000:.0f} ms"
