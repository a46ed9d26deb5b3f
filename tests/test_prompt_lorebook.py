"""Lorebook: keys, regex, secondary AND/NOT logic, constants, scan depth, order and budget."""

from __future__ import annotations

import pytest

from synatra_bot.prompt.lorebook import (
    Lorebook,
    LoreEntry,
    SecondaryLogic,
    lorebook_from_character_book,
    select_entries,
)


def _count(text: str) -> int:
    return len(text)


def _fired(books, texts, budget=10_000):
    kept, _ = select_entries(books, texts, token_budget=budget, count_tokens=_count)
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


def test_token_budget_keeps_constant_and_high_priority_first():
    book = Lorebook(
        [
            LoreEntry(keys=["a"], content="낮음낮음", priority=1, insertion_order=1),
            LoreEntry(keys=["a"], content="높음높음", priority=50, insertion_order=2),
            LoreEntry(keys=[], content="상수상수", constant=True, insertion_order=3),
        ]
    )
    kept, skipped = select_entries([book], ["a"], token_budget=8, count_tokens=_count)
    assert [f.content for f in kept] == ["높음높음", "상수상수"]
    assert [e.content for e in skipped] == ["낮음낮음"]


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
    assert book.token_budget == 200
    assert len(book.entries) == 3
    first = book.entries[0]
    assert first.logic is SecondaryLogic.NOT_ANY
    assert first.name == "기사 설정"
    assert _fired([book], ["검을 들었다"]) == ["기사", "세계"]
    assert _fired([book], ["검과 방패"]) == ["세계"]


def test_missing_character_book_gives_empty_lorebook():
    assert lorebook_from_character_book(None).entries == []
