"""Lorebook key matching: whole words (Korean particles too), case per entry, regex keys,
per-entry scan depth, `deepest_scan` and group scores."""

from __future__ import annotations

import itertools

import pytest

from synatra_bot.prompt import lorebook as lorebook_module
from synatra_bot.prompt.lorebook import (
    KOREAN_PARTICLES,
    Lorebook,
    LoreEntry,
    SecondaryLogic,
    deepest_scan,
    lorebook_from_character_book,
    scan_books,
)

#: A budget no scan here comes near: a pause of the interpreter (a garbage collection) must not
#: leave entries unscanned and make a result depend on timing.
_BUDGET_S = 60.0


def _scan(books: dict[str, Lorebook], texts: list[str]):
    scan = scan_books(books, texts, budget_s=_BUDGET_S)
    assert not scan.unscanned and not scan.timed_out
    return scan


def _names(book: Lorebook, texts: list[str]) -> list[str]:
    return [hit.entry.name for hit in _scan({"card": book}, texts).matched]


def _fires(entry: LoreEntry, text: str) -> bool:
    entry.name = entry.name or "entry"
    entry.content = entry.content or "설정"
    return _names(Lorebook([entry]), [text]) == [entry.name]


def _whole(*keys: str, **options) -> LoreEntry:
    return LoreEntry(keys=list(keys), content="설정", match_whole_words=True, **options)


# --- whole words: Korean ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "민지",
        "민지는 웃었다",
        "민지가 왔다",
        "민지에게 편지를 썼다",
        "민지한테도 말해 줘",
        "민지야, 일어나",
        "민지씨, 안녕하세요",
        "저는 민지예요.",
        "그건 민지였다",
        "민지에게는 비밀이야",
        "민지의 가방",
        "민지랑 같이 갔다",
        "민지처럼 웃었다",
        "민지까지 왔다!",
        "“민지”라고 불렀다",
        "친구: 민지님",
        "(민지)",
    ],
)
def test_korean_whole_word_key_matches_with_particles(text):
    assert _fires(_whole("민지"), text)


@pytest.mark.parametrize(
    "text",
    [
        "민지원이 왔다",  # a different name
        "이민지가 왔다",  # preceded by a Hangul syllable
        "김민지",
        "민지원",
        "민지영은 웃었다",
        "민지2호",  # digits are word characters
        "민지_봇",
        "",
    ],
)
def test_korean_whole_word_key_does_not_match_inside_another_word(text):
    assert not _fires(_whole("민지"), text)


@pytest.mark.parametrize("particle", KOREAN_PARTICLES)
def test_every_listed_particle_follows_a_whole_word(particle):
    assert _fires(_whole("민지"), f"오늘 민지{particle} 봤다")
    assert _fires(_whole("학교"), f"학교{particle}.")


def test_particles_stack():
    for first, second in itertools.product(("에게", "한테", "에서", "까지"), ("는", "도", "만")):
        assert _fires(_whole("민지"), f"민지{first}{second} 말했다"), first + second
    assert _fires(_whole("민지"), "민지에게서부터도요")


def test_a_later_occurrence_matches_after_a_non_matching_one():
    assert _fires(_whole("민지"), "민지원과 이민지, 그리고 민지도 왔다")
    assert not _fires(_whole("민지"), "민지원과 이민지와 민지영")


def test_particles_only_follow_a_key_ending_in_hangul():
    assert not _fires(_whole("Minji"), "Minji는 웃었다")
    assert _fires(_whole("Minji"), "Minji, 웃었다")
    assert _fires(_whole("민지"), "민지는")


def test_korean_key_without_whole_words_is_a_substring():
    assert _fires(LoreEntry(keys=["민지"], content="설정"), "이민지원")


def test_long_word_after_a_korean_key_is_judged_quickly_and_does_not_match():
    # Many ways to split "이다이다..." into particles: bounded, no catastrophic backtracking.
    text = " ".join(["민지" + "이다" * 500 + "원"] * 20)
    assert not _fires(_whole("민지"), text)


# --- whole words: English ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fires"),
    [
        ("the cat sat", True),
        ("cat", True),
        ("a cat.", True),
        ("cat, dog", True),
        ("(cat)", True),
        ("CAT!", True),
        ("category", False),
        ("concatenate", False),
        ("bobcat", False),
        ("cats", False),
        ("cat1", False),
        ("cat_food", False),
        ("catégorie", False),
    ],
)
def test_english_whole_word(text, fires):
    assert _fires(_whole("cat"), text) is fires


def test_whole_word_off_matches_inside_words():
    assert _fires(LoreEntry(keys=["cat"], content="설정"), "category")


@pytest.mark.parametrize(
    ("key", "text", "fires"),
    [
        ("black cat", "a black cat.", True),
        ("black cat", "a black category", True),  # several words: a substring, as SillyTavern
        ("black cat", "blackcat", False),
        ("민지 씨", "김민지 씨가", True),
        ("민지 씨", "민지씨", False),
    ],
)
def test_key_of_several_words_is_a_substring(key, text, fires):
    assert _fires(_whole(key), text) is fires


def test_whole_word_key_with_punctuation_at_its_edges():
    assert _fires(_whole("C++"), "I write C++ daily")
    assert _fires(_whole("Dr."), "ask Dr. Kim")
    assert not _fires(_whole("Dr."), "ask Dr.Kim")


def test_whole_words_apply_to_secondary_keys():
    entry = _whole("검", secondary_keys=["방패"], logic=SecondaryLogic.AND_ANY)
    assert _fires(entry, "검과 방패를 들었다")
    assert not _fires(entry, "검과 방패막이")


def test_whole_words_from_a_character_book():
    book = lorebook_from_character_book(
        {
            "entries": [
                {
                    "keys": ["민지"],
                    "content": "민지 설정",
                    "name": "민지",
                    "extensions": {"match_whole_words": True},
                }
            ]
        }
    )
    assert _names(book, ["민지에게 말했다"]) == ["민지"]
    assert _names(book, ["민지원에게 말했다"]) == []


# --- case sensitivity -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case_sensitive", "whole", "text", "fires"),
    [
        (False, False, "we met ALICE", True),
        (False, False, "alicewonder", True),
        (True, False, "we met ALICE", False),
        (True, False, "we met Alice", True),
        (False, True, "we met ALICE.", True),
        (False, True, "ALICEWONDER", False),
        (True, True, "we met ALICE.", False),
        (True, True, "we met Alice.", True),
        (True, True, "Aliceland", False),
    ],
)
def test_case_sensitivity_per_entry(case_sensitive, whole, text, fires):
    entry = LoreEntry(
        keys=["Alice"], content="설정", case_sensitive=case_sensitive, match_whole_words=whole
    )
    assert _fires(entry, text) is fires


def test_case_folding_beyond_lowercase():
    assert _fires(_whole("Straße"), "die STRASSE ist lang")
    assert not _fires(_whole("Straße", case_sensitive=True), "die STRASSE ist lang")


def test_two_entries_with_the_same_key_but_different_case_rules():
    book = Lorebook(
        [
            LoreEntry(keys=["Bob"], content="a", name="loose"),
            LoreEntry(keys=["Bob"], content="b", name="strict", case_sensitive=True),
        ]
    )
    assert _names(book, ["bob"]) == ["loose"]
    assert _names(book, ["Bob"]) == ["loose", "strict"]


# --- regex keys ignore whole-word and case settings -------------------------------------------


@pytest.mark.parametrize(
    ("key", "options", "text", "fires"),
    [
        ("/cat/", {"match_whole_words": True}, "category", True),
        ("/cat/", {"case_sensitive": False}, "CAT", False),
        ("/cat/i", {"case_sensitive": True}, "CAT", True),
        ("/cat/i", {"match_whole_words": True, "case_sensitive": True}, "CATEGORY", True),
        ("/민지/", {"match_whole_words": True}, "민지원", True),
        ("/\\bcat\\b/", {}, "category", False),
    ],
)
def test_slash_regex_keys_ignore_whole_words_and_case(key, options, text, fires):
    assert _fires(LoreEntry(keys=[key], content="설정", **options), text) is fires


def test_use_regex_entry_keeps_its_case_setting_and_ignores_whole_words():
    loose = LoreEntry(keys=["dra?gon"], content="설정", use_regex=True, match_whole_words=True)
    strict = LoreEntry(keys=["dra?gon"], content="설정", use_regex=True, case_sensitive=True)
    assert _fires(loose, "DRAGONFLY")
    assert not _fires(strict, "DRAGON")
    assert _fires(strict, "dragon")


# --- scan depth per entry ---------------------------------------------------------------------


def _depth_book() -> Lorebook:
    return Lorebook(
        [
            LoreEntry(keys=["용"], content="a", name="book depth"),
            LoreEntry(keys=["용"], content="b", name="depth 1", scan_depth=1),
            LoreEntry(keys=["용"], content="c", name="depth 4", scan_depth=4),
            LoreEntry(keys=["용"], content="d", name="depth 0", scan_depth=0),
            LoreEntry(keys=["용"], content="e", name="constant 0", scan_depth=0, constant=True),
        ],
        scan_depth=2,
    )


@pytest.mark.parametrize(
    ("texts", "names"),
    [
        (["용이 나타났다", "조용", "평화", "고요"], ["depth 4", "constant 0"]),
        (["평화", "용이 나타났다", "평화", "고요"], ["depth 4", "constant 0"]),
        (["평화", "평화", "용이 나타났다", "고요"], ["book depth", "depth 4", "constant 0"]),
        (["평화", "평화", "평화", "용"], ["book depth", "depth 1", "depth 4", "constant 0"]),
        (["용", "용", "용", "용", "용"], ["book depth", "depth 1", "depth 4", "constant 0"]),
        (["평화"], ["constant 0"]),
        ([], ["constant 0"]),
    ],
)
def test_entry_scans_its_own_depth(texts, names):
    assert _names(_depth_book(), texts) == names


def test_depth_zero_never_fires_on_keys_even_for_a_regex_that_matches_nothing():
    book = Lorebook(
        [
            LoreEntry(keys=["/x*/"], content="a", name="zero", scan_depth=0),
            LoreEntry(keys=["/x*/"], content="b", name="one", scan_depth=1),
        ]
    )
    assert _names(book, ["abc"]) == ["one"]


def test_book_depth_zero_lets_entries_with_their_own_depth_scan():
    book = Lorebook(
        [
            LoreEntry(keys=["용"], content="a", name="book"),
            LoreEntry(keys=["용"], content="b", name="own", scan_depth=3),
        ],
        scan_depth=0,
    )
    assert _names(book, ["용", "평화"]) == ["own"]


def test_several_books_share_the_texts_per_depth():
    first = Lorebook([LoreEntry(keys=["용"], content="a", name="first")], scan_depth=1)
    second = Lorebook(
        [LoreEntry(keys=["용"], content="b", name="second", scan_depth=3)], scan_depth=1
    )
    scan = _scan({"card": first, "channel": second}, ["용", "평화"])
    assert [(hit.book, hit.entry.name) for hit in scan.matched] == [("channel", "second")]


@pytest.mark.parametrize(
    ("book_depth", "entry_depths", "deepest"),
    [
        (4, [], 4),
        (4, [None, None], 4),
        (2, [None, 7, 3], 7),
        (10, [1, 0], 10),
        (0, [0], 0),
        (0, [None, 5], 5),
    ],
)
def test_deepest_scan(book_depth, entry_depths, deepest):
    entries = [LoreEntry(keys=["k"], content="c", scan_depth=d) for d in entry_depths]
    assert deepest_scan(Lorebook(entries, scan_depth=book_depth)) == deepest


def test_deepest_scan_of_a_character_book():
    book = lorebook_from_character_book(
        {
            "scan_depth": 3,
            "entries": [
                {"keys": ["a"], "content": "a", "extensions": {"scan_depth": 12}},
                {"keys": ["b"], "content": "b"},
            ],
        }
    )
    assert deepest_scan(book) == 12


# --- group scores -----------------------------------------------------------------------------


def test_scores_count_matched_primary_and_secondary_keys():
    scored = LoreEntry(
        keys=["용", "불", "날개"],
        secondary_keys=["동굴", "보물"],
        content="a",
        name="scored",
        use_group_scoring=True,
    )
    primary_only = LoreEntry(keys=["용", "불"], content="b", name="primary", use_group_scoring=True)
    unscored = LoreEntry(keys=["용", "불"], content="c", name="unscored")
    constant = LoreEntry(keys=["용"], content="d", constant=True, use_group_scoring=True)
    missed = LoreEntry(keys=["얼음"], content="e", name="missed", use_group_scoring=True)
    book = Lorebook([scored, primary_only, unscored, constant, missed])
    scan = _scan({"card": book}, ["용이 불을 뿜었다", "동굴 안에서"])
    assert scan.scores == {id(scored): 3, id(primary_only): 2}
    assert {hit.entry.name for hit in scan.matched} == {"scored", "primary", "unscored", ""}


@pytest.mark.parametrize(
    ("logic", "text", "score"),
    [
        (SecondaryLogic.AND_ANY, "검 방패", 2),
        (SecondaryLogic.AND_ANY, "검 방패 투구", 3),
        (SecondaryLogic.AND_ALL, "검 방패 투구", 3),
        (SecondaryLogic.NOT_ANY, "검", 1),
        (SecondaryLogic.NOT_ALL, "검 방패", 2),
        (SecondaryLogic.AND_ANY, "검", None),
        (SecondaryLogic.NOT_ANY, "검 투구", None),
    ],
)
def test_scores_follow_secondary_logic(logic, text, score):
    entry = LoreEntry(
        keys=["검"],
        secondary_keys=["방패", "투구"],
        logic=logic,
        content="무기",
        use_group_scoring=True,
    )
    scan = _scan({"card": Lorebook([entry])}, [text])
    assert scan.scores.get(id(entry)) == score
    assert bool(scan.matched) is (score is not None)


def test_scores_honour_whole_words_and_case():
    entry = LoreEntry(
        keys=["Cat", "dog", "민지"],
        content="a",
        match_whole_words=True,
        case_sensitive=True,
        use_group_scoring=True,
    )
    scan = _scan({"card": Lorebook([entry])}, ["Cat and Dog and 민지에게"])
    assert scan.scores == {id(entry): 2}


# --- compiling whole-word keys ----------------------------------------------------------------


def test_whole_word_key_is_compiled_only_when_its_text_occurs(monkeypatch):
    cache = lorebook_module._WholeWordPatterns(lorebook_module.MAX_WHOLE_WORD_BYTES)
    monkeypatch.setattr(lorebook_module, "_WHOLE_WORDS", cache)
    book = Lorebook(
        [_whole(f"이름{i}", name=f"e{i}") for i in range(300)] + [_whole("민지", name="민지")]
    )
    assert _names(book, ["민지가 왔다"]) == ["민지"]
    assert list(cache._patterns) == ["민지"]
    assert _names(book, ["민지도 왔다"]) == ["민지"]
    assert list(cache._patterns) == ["민지"]


def test_whole_word_cache_stays_within_its_bytes(monkeypatch):
    cache = lorebook_module._WholeWordPatterns(20_000)
    monkeypatch.setattr(lorebook_module, "_WHOLE_WORDS", cache)
    keys = [f"word{i}" for i in range(200)]
    book = Lorebook([_whole(k, name=k) for k in keys])
    assert _names(book, [" ".join(keys)]) == keys
    assert 0 < cache._bytes <= 20_000
    assert len(cache._patterns) < len(keys)
    assert _names(book, [" ".join(keys)]) == keys  # dropped patterns compile again


def test_whole_word_books_stay_plain_work():
    book = Lorebook([_whole("민지"), _whole("cat")])
    assert not book.may_have_regex
    assert not lorebook_module.scans_need_worker([(book, ["민지가 cat을 봤다"])])
