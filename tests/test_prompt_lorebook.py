"""Lorebook: keys, regex, secondary AND/NOT logic, constants, scan depth, order, budget, limits."""

from __future__ import annotations

import pytest

from synatra_bot.prompt.lorebook import (
    MAX_ENTRIES,
    MAX_ENTRY_KEYS,
    MAX_KEY_CHARS,
    MAX_SCAN_DEPTH,
    Lorebook,
    LoreEntry,
    SecondaryLogic,
    lorebook_from_character_book,
    scan_books,
    select_entries,
)


def _count(text: str) -> int:
    return len(text)


def _fired(books, texts, budget=10_000):
    scan = scan_books({f"book {i}": book for i, book in enumerate(books)}, texts)
    kept, _ = select_entries(scan.matched, token_budget=budget, count_tokens=_count)
    return [f.content for f in kept]


def test_plain_key_fires_case_insensitively():
    book = Lorebook([LoreEntry(keys=["Seoul"], content="수도")])
    assert _fired([book], ["we went to SEOUL"]) == ["수도"]
    assert _fired([book], ["부산에 갔다"]) == []


def test_case_sensitive_entry_needs_exact_case():
    book = Lorebook([LoreEntry(keys=["Seoul"], content="수도", case_sensitive=True)])
    assert _fired([book], ["seoul"]) == []
    assert _fired([book], ["Seoul"]) == ["수도"]


def test_regex_keys_in_slash_form_and_with_use_regex():
    book = Lorebook(
        [
            LoreEntry(keys=["/마법(사|진)/"], content="마법"),
            LoreEntry(keys=[r"용+"], content="용", use_regex=True),
            LoreEntry(keys=["/[/"], content="깨진 정규식은 무시"),
        ]
    )
    assert _fired([book], ["마법진이 빛났다"]) == ["마법"]
    assert _fired([book], ["용용 죽겠지"]) == ["용"]


def test_slash_regex_key_is_case_sensitive_unless_flagged_i():
    sensitive = Lorebook([LoreEntry(keys=["/Dragon(s)?/"], content="용")])
    insensitive = Lorebook([LoreEntry(keys=["/dragon(s)?/i"], content="용")])
    assert _fired([sensitive], ["a DRAGON appears"]) == []
    assert _fired([sensitive], ["Dragons appear"]) == ["용"]
    assert _fired([insensitive], ["a DRAGON appears"]) == ["용"]


def test_slash_key_with_an_unescaped_slash_inside_is_plain_text():
    book = Lorebook([LoreEntry(keys=["/a/b/"], content="경로")])
    assert _fired([book], ["ab"]) == []
    assert _fired([book], ["see /a/b/ here"]) == ["경로"]


@pytest.mark.parametrize(
    ("logic", "text", "fires"),
    [
        (SecondaryLogic.AND_ANY, "검과 방패", True),
        (SecondaryLogic.AND_ANY, "검만", False),
        (SecondaryLogic.AND_ALL, "검과 방패와 투구", True),
        (SecondaryLogic.AND_ALL, "검과 방패", False),
        (SecondaryLogic.NOT_ANY, "검만", True),
        (SecondaryLogic.NOT_ANY, "검과 투구", False),
        (SecondaryLogic.NOT_ALL, "검과 방패", True),
        (SecondaryLogic.NOT_ALL, "검과 방패와 투구", False),
    ],
)
def test_secondary_key_logic(logic, text, fires):
    entry = LoreEntry(keys=["검"], secondary_keys=["방패", "투구"], logic=logic, content="무기")
    assert _fired([Lorebook([entry])], [text]) == (["무기"] if fires else [])


def test_constant_entry_always_fires_and_disabled_never():
    book = Lorebook(
        [
            LoreEntry(keys=[], content="항상", constant=True),
            LoreEntry(keys=["비"], content="꺼짐", enabled=False),
        ]
    )
    assert _fired([book], ["비가 온다"]) == ["항상"]


def test_scan_depth_limits_which_messages_are_scanned():
    book = Lorebook([LoreEntry(keys=["용"], content="용 설정")], scan_depth=2)
    assert _fired([book], ["용이 나타났다", "도망쳐", "어디로?"]) == []
    assert _fired([book], ["도망쳐", "용이 나타났다", "어디로?"]) == ["용 설정"]


def test_insertion_order_decides_output_order():
    book = Lorebook(
        [
            LoreEntry(keys=["a"], content="둘째", insertion_order=20),
            LoreEntry(keys=["a"], content="첫째", insertion_order=10),
        ]
    )
    assert _fired([book], ["a"]) == ["첫째", "둘째"]


def test_token_budget_keeps_the_higher_insertion_order_first():
    book = Lorebook(
        [
            LoreEntry(keys=["a"], content="낮음낮음", priority=1, insertion_order=1),
            LoreEntry(keys=["a"], content="높음높음", priority=50, insertion_order=2),
            LoreEntry(keys=[], content="상수상수", constant=True, insertion_order=3),
        ]
    )
    scan = scan_books({"card": book}, ["a"])
    kept, skipped = select_entries(scan.matched, token_budget=8, count_tokens=_count)
    assert [f.content for f in kept] == ["높음높음", "상수상수"]
    assert [h.entry.content for h in skipped] == ["낮음낮음"]


def test_card_book_and_channel_book_combine():
    card_book = Lorebook([LoreEntry(keys=["숲"], content="엘프의 숲")])
    channel_book = Lorebook([LoreEntry(keys=["성"], content="왕의 성")])
    assert _fired([card_book, channel_book], ["숲을 지나 성으로"]) == ["엘프의 숲", "왕의 성"]


def test_character_book_with_sillytavern_extensions_is_read():
    book = lorebook_from_character_book(
        {
            "scan_depth": 3,
            "token_budget": 200,
            "entries": [
                {
                    "keys": ["검"],
                    "secondary_keys": ["방패"],
                    "selective": True,
                    "content": "기사",
                    "insertion_order": 5,
                    "extensions": {"selectiveLogic": 2},
                    "comment": "기사 설정",
                },
                {"keys": [], "content": "세계", "constant": True, "enabled": True},
                {"keys": ["x"], "content": "꺼짐", "enabled": False},
                "not an entry",
            ],
        }
    )
    assert book.scan_depth == 3
    assert len(book.entries) == 3
    first = book.entries[0]
    assert first.logic is SecondaryLogic.NOT_ANY
    assert first.name == "기사 설정"
    assert _fired([book], ["검을 들었다"]) == ["기사", "세계"]
    assert _fired([book], ["검과 방패"]) == ["세계"]


def test_missing_character_book_gives_empty_lorebook():
    assert lorebook_from_character_book(None).entries == []


def test_character_book_over_the_entry_limit_loads_the_first_entries_and_counts_the_rest():
    raw = {"entries": [{"keys": [f"k{i}"], "content": f"c{i}"} for i in range(MAX_ENTRIES + 7)]}
    book = lorebook_from_character_book(raw)
    assert len(book.entries) == MAX_ENTRIES
    assert book.entries[-1].content == f"c{MAX_ENTRIES - 1}"
    assert book.left_out_entries == 7
    assert f"the limit is {MAX_ENTRIES}" in book.over_limit


def test_overlong_keys_and_keys_past_the_entry_limit_are_left_out():
    keys = ["x" * (MAX_KEY_CHARS + 1), *(f"k{i}" for i in range(MAX_ENTRY_KEYS + 3))]
    book = lorebook_from_character_book({"entries": [{"keys": keys, "content": "c"}]})
    [entry] = book.entries
    assert entry.keys == [f"k{i}" for i in range(MAX_ENTRY_KEYS)]
    assert book.left_out_keys == 4
    assert f"the limit is {MAX_KEY_CHARS}" in book.over_limit


def test_scan_depth_from_a_character_book_is_capped():
    book = lorebook_from_character_book({"scan_depth": 10**9, "entries": []})
    assert book.scan_depth == MAX_SCAN_DEPTH
