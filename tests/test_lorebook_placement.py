"""Where lore goes and when: positions (before/after the sheets, at a depth with a role, the
author's note), insertion order against the budget, chance, inclusion groups, sticky, cooldown
and delay counted in messages, the character's note at depth, and the inspector's report."""

from __future__ import annotations

import pytest

from synatra_bot.prompt.builder import HistoryMessage, PromptBuilder, PromptOptions
from synatra_bot.prompt.cards import CharacterCard
from synatra_bot.prompt.lorebook import LorePosition, lorebook_from_character_book
from synatra_bot.prompt.macros import MacroContext

CARD = CharacterCard(name="민지", description="민지는 시계탑 아래 찻집의 주인이다.")


@pytest.fixture(scope="module")
def builder(tokenizer):
    return PromptBuilder(tokenizer)


def _history(*texts: str) -> list[HistoryMessage]:
    """Alternating player and character lines, the player first."""
    return [
        HistoryMessage(
            "user" if i % 2 == 0 else "assistant",
            "준" if i % 2 == 0 else "민지",
            t,
            message_id=i + 1,
        )
        for i, t in enumerate(texts)
    ]


def _book(*entries: dict) -> object:
    return lorebook_from_character_book({"entries": list(entries)})


def _build(builder, book, history, *, seed=7, **options):
    return builder.build(
        card=CARD,
        history=history,
        user_name="준",
        channel_lorebook=book,
        options=PromptOptions(**options),
        macro_context=MacroContext(seed=seed),
    )


def _entry(content: str, keys=(), **extensions) -> dict:
    raw: dict = {"keys": list(keys), "content": content, "constant": not keys}
    order = extensions.pop("order", None)
    if order is not None:
        raw["insertion_order"] = order
    raw["extensions"] = extensions
    return raw


def test_constant_lore_goes_before_or_after_the_sheet_as_its_position_says(builder):
    book = _book(_entry("앞에 오는 설정", position=0), _entry("뒤에 오는 설정", position=1))
    system = _build(builder, book, _history("안녕")).text.split("<|im_end|>")[0]
    assert system.index("앞에 오는 설정") < system.index("시계탑 아래 찻집")
    assert system.index("시계탑 아래 찻집") < system.index("뒤에 오는 설정")


def test_v2_position_strings_and_a_missing_position_read_as_sillytavern_reads_them():
    book = lorebook_from_character_book(
        {
            "entries": [
                {"keys": ["a"], "content": "x", "position": "before_char"},
                {"keys": ["a"], "content": "y", "position": "after_char"},
                {"keys": ["a"], "content": "z"},
            ]
        }
    )
    assert [e.position for e in book.entries] == [
        LorePosition.BEFORE_CHAR,
        LorePosition.AFTER_CHAR,
        LorePosition.AFTER_CHAR,
    ]


def test_an_entry_at_a_depth_is_a_message_of_its_role_that_many_messages_from_the_end(builder):
    book = _book(_entry("시계탑은 자정에 울린다.", ["시계탑"], position=4, depth=2, role=1))
    history = _history("시계탑에 가 보자", "좋아", "저기 보여?", "응, 보여")
    built = _build(builder, book, history)
    lore = "<|im_start|>user\n### 세계 정보\n시계탑은 자정에 울린다.<|im_end|>"
    assert lore in built.text
    # Two messages from the end: before "저기 보여?".
    assert built.text.index(lore) < built.text.index("저기 보여?")
    assert built.text.index("좋아") < built.text.index(lore)
    note = next(n for n in built.report.lorebook if n.status == "fired")
    assert note.where == "depth 2 (user)"


def test_lore_at_the_top_and_bottom_of_the_authors_note(builder):
    book = _book(
        _entry("위에 붙는 설정", position=2),
        _entry("아래에 붙는 설정", ["찻집"], position=3),
    )
    built = _build(builder, book, _history("찻집에 왔어"), author_note="민지는 밝게 말한다.")
    assert "위에 붙는 설정\n민지는 밝게 말한다.\n아래에 붙는 설정" in built.text
    where = {n.label: n.where for n in built.report.lorebook if n.status == "fired"}
    assert where == {"찻집": "author's note, bottom", "(constant)": "author's note, top"}


def test_higher_insertion_order_is_kept_first_and_inserted_closer_to_the_end(builder):
    book = _book(
        _entry("낮은 순서의 긴 설정 " * 3, ["찻집"], order=1),
        _entry("중간 설정", ["찻집"], order=50),
        _entry("높은 설정", ["찻집"], order=99),
    )
    roomy = _build(builder, book, _history("찻집에 왔어"), lorebook_budget=500)
    assert roomy.text.index("낮은 순서") < roomy.text.index("중간 설정")
    assert roomy.text.index("중간 설정") < roomy.text.index("높은 설정")
    tight = _build(builder, book, _history("찻집에 왔어"), lorebook_budget=12)
    assert "높은 설정" in tight.text and "낮은 순서" not in tight.text
    skipped = [n for n in tight.report.lorebook if n.status == "skipped"]
    assert skipped and all(n.reason == "budget" for n in skipped)
    assert "over budget" in tight.report.to_text()


def test_the_lore_budget_is_a_quarter_of_the_prompt_budget_unless_set(builder):
    constants = [_entry(f"상수 설정 {i}번: " + "가나다라마바사 " * 5, order=i) for i in range(12)]
    book = _book(*constants)
    default = _build(builder, book, _history("안녕"))
    assert len(default.report.lorebook_fired) == 12  # all fit in a quarter of 4096
    small = _build(builder, book, _history("안녕"), lorebook_budget=100)
    assert 0 < len(small.report.lorebook_fired) < 12


def test_chance_is_rolled_once_per_message_and_stays_for_a_regenerated_turn(builder):
    book = _book(_entry("가끔 나오는 설정", ["찻집"], probability=50))
    fired = []
    for seed in range(40):
        built = _build(builder, book, _history("찻집에 왔어"), seed=seed)
        again = _build(builder, book, _history("찻집에 왔어"), seed=seed)
        assert built.text == again.text
        fired.append("가끔 나오는 설정" in built.text)
        if not fired[-1]:
            assert built.report.lorebook[0].reason == "probability"
    assert 5 < sum(fired) < 35
    never = _book(_entry("안 나오는 설정", ["찻집"], probability=0))
    assert "안 나오는 설정" not in _build(builder, never, _history("찻집에 왔어")).text
    off = _book(_entry("늘 나오는 설정", ["찻집"], probability=0, useProbability=False))
    assert "늘 나오는 설정" in _build(builder, off, _history("찻집에 왔어")).text


def test_one_entry_of_an_inclusion_group_fires(builder):
    weighted = _book(
        _entry("날씨: 비", ["날씨"], group="날씨"),
        _entry("날씨: 눈", ["날씨"], group="날씨"),
        _entry("날씨: 맑음", ["날씨"], group="날씨"),
    )
    chosen = set()
    for seed in range(30):
        text = _build(builder, weighted, _history("오늘 날씨 어때?"), seed=seed).text
        present = [w for w in ("비", "눈", "맑음") if f"날씨: {w}" in text]
        assert len(present) == 1
        chosen.add(present[0])
    assert len(chosen) > 1
    overridden = _book(
        _entry("날씨: 비", ["날씨"], group="날씨", order=10),
        _entry("날씨: 눈", ["날씨"], group="날씨", group_override=True, order=20),
        _entry("날씨: 맑음", ["날씨"], group="날씨", group_override=True, order=30),
    )
    built = _build(builder, overridden, _history("오늘 날씨 어때?"))
    assert "날씨: 맑음" in built.text and "날씨: 눈" not in built.text
    assert {n.reason for n in built.report.lorebook if n.status == "skipped"} == {"group"}


def test_delay_counts_the_scenes_messages(builder):
    book = _book(_entry("늦게 나오는 설정", ["찻집"], delay=3))
    assert "늦게 나오는" not in _build(builder, book, _history("찻집에 왔어")).text
    later = _history("찻집에 왔어", "어서 와", "찻집 좋다")
    assert "늦게 나오는" in _build(builder, book, later).text
    counted = _build(builder, book, _history("찻집에 왔어"), earlier_messages=5)
    assert "늦게 나오는" in counted.text


def test_sticky_lore_at_a_depth_stays_after_its_key_leaves_the_scan(builder):
    sticky = _book(_entry("머무는 설정", ["시계탑"], position=4, depth=0, sticky=4, scan_depth=1))
    plain = _book(_entry("머무는 설정", ["시계탑"], position=4, depth=0, scan_depth=1))
    history = _history("시계탑에 가자", "그래", "다른 얘기 하자")
    assert "머무는 설정" in _build(builder, sticky, history).text
    assert "머무는 설정" not in _build(builder, plain, history).text
    gone = _history("시계탑에 가자", "그래", "다른 얘기", "응", "또 다른 얘기", "좋아", "그만")
    assert "머무는 설정" not in _build(builder, sticky, gone).text


def test_cooldown_keeps_lore_at_a_depth_out_after_it_fired(builder):
    book = _book(_entry("식히는 설정", ["시계탑"], position=4, depth=0, cooldown=3))
    history = _history("시계탑에 가자", "그래", "시계탑이 보여")
    built = _build(builder, book, history)
    assert "식히는 설정" not in built.text
    assert any(n.reason == "cooldown" for n in built.report.lorebook)
    rested = _history("시계탑에 가자", "그래", "음", "응", "시계탑이 보여")
    assert "식히는 설정" in _build(builder, book, rested).text


def test_the_cards_depth_prompt_is_the_characters_note_at_its_depth(builder):
    card = CharacterCard(
        name="민지",
        description="찻집 주인",
        extensions={
            "depth_prompt": {
                "prompt": "{{char}}는 {{user}}에게 인사한다.",
                "depth": 1,
                "role": "system",
            }
        },
    )
    built = builder.build(
        card=card,
        history=_history("안녕", "어서 와", "차 한 잔 줘"),
        user_name="준",
        options=PromptOptions(),
    )
    note = "<|im_start|>system\n민지는 준에게 인사한다.<|im_end|>"
    assert note in built.text
    assert built.text.index("어서 와") < built.text.index(note) < built.text.index("차 한 잔 줘")
    assert "character_note" in [b.name for b in built.report.blocks]


RECURSIVE_ENTRIES = (
    _entry("시계탑 아래에는 비밀 통로가 있다.", ["시계탑"]),
    _entry("비밀 통로는 왕궁으로 이어진다.", ["비밀 통로"]),
    _entry("왕궁에는 잠든 왕이 있다.", ["왕궁"]),
    _entry("왕궁의 정원은 넓다.", ["왕궁"], exclude_recursion=True),
    _entry("기다리는 설정", ["시계탑"], delay_until_recursion=True),
    _entry("멈추는 설정: 잠든 용", ["시계탑"], prevent_recursion=True),
    _entry("잠든 용은 깨어나지 않는다.", ["잠든 용"]),
)


def test_recursive_scanning_is_off_by_default_and_bounded_when_on(builder):
    book = lorebook_from_character_book(
        {"entries": list(RECURSIVE_ENTRIES), "recursive_scanning": True}
    )
    assert book.recursive
    history = _history("시계탑에 가 보자")
    off = _build(builder, book, history)
    assert "비밀 통로가 있다" in off.text and "왕궁으로" not in off.text
    assert "기다리는 설정" not in off.text
    one = _build(builder, book, history, lorebook_recursion=1)
    assert "왕궁으로 이어진다" in one.text and "잠든 왕" not in one.text
    assert "기다리는 설정" in one.text
    deep = _build(builder, book, history, lorebook_recursion=5)
    assert "잠든 왕이 있다" in deep.text
    assert "정원은 넓다" not in deep.text  # excluded from recursion
    assert "깨어나지 않는다" not in deep.text  # its trigger prevents recursion


def test_a_book_that_does_not_ask_for_recursion_is_not_scanned_on_lore(builder):
    book = _book(*RECURSIVE_ENTRIES)
    assert not book.recursive
    built = _build(builder, book, _history("시계탑에 가 보자"), lorebook_recursion=5)
    assert "비밀 통로가 있다" in built.text and "왕궁으로" not in built.text


def test_an_entry_delayed_to_a_later_recursion_step_waits_for_it(builder):
    entries = [
        _entry("시계탑 아래에는 비밀 통로가 있다.", ["시계탑"]),
        _entry("비밀 통로는 왕궁으로 이어진다.", ["비밀 통로"]),
        _entry("두 번째 단계의 설정: 시계탑의 종", ["시계탑"], delay_until_recursion=2),
    ]
    book = lorebook_from_character_book({"entries": entries, "recursive_scanning": True})
    history = _history("시계탑에 가 보자")
    assert [e.delay_until_recursion for e in book.entries] == [0, 0, 2]
    one = _build(builder, book, history, lorebook_recursion=1)
    assert "왕궁으로" in one.text and "시계탑의 종" not in one.text
    two = _build(builder, book, history, lorebook_recursion=2)
    assert "시계탑의 종" in two.text
