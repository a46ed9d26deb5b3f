"""Which characters a player's message names: words, Korean particles, nicknames, `@name`."""

from __future__ import annotations

import unicodedata

import pytest

from synatra_bot.roleplay.addressing import Addressable, addressed, leading_address

JUN = Addressable(1, ("준", "준준"))
MINJI = Addressable(2, ("민지", "지지"))
ARI = Addressable(3, ("Ari",))
CAST = (JUN, MINJI, ARI)


def names(text: str, cast: tuple[Addressable, ...] = CAST) -> list[int]:
    return addressed(text, cast)


def one_of_jun_or_minji(text: str) -> list[int]:
    """The expected answer for an example that names just 민지 or just 준."""
    return [MINJI.key] if "민지" in text else [JUN.key]


# --- words ------------------------------------------------------------------------------------


def test_empty_cast_names_nobody() -> None:
    assert addressed("준아 안녕", []) == []


def test_empty_text_names_nobody() -> None:
    assert names("") == []


def test_bare_name_is_named() -> None:
    assert names("준 안녕, 민지") == [1, 2]


@pytest.mark.parametrize("text", ["준, 뭐 해?", "(준)", "준...", "「민지」", "준!!", "@준"])
def test_name_before_punctuation_is_named(text: str) -> None:
    assert names(text) == one_of_jun_or_minji(text)


@pytest.mark.parametrize("text", ["기준은 뭐야", "수민지가 왔다", "x준", "2준"])
def test_name_after_a_syllable_letter_or_digit_is_not_named(text: str) -> None:
    assert names(text) == []


@pytest.mark.parametrize("text", ["준비 됐어", "민지혜 왔어", "준수하다", "준2", "준x"])
def test_name_followed_by_more_hangul_or_a_letter_is_not_named(text: str) -> None:
    assert names(text) == []


@pytest.mark.parametrize("text", ["준아ㅋㅋ", "ㅋㅋ준아", "민지야ㅠㅠ", "준아😊"])
def test_jamo_and_emoji_may_touch_a_name(text: str) -> None:
    assert names(text) == one_of_jun_or_minji(text)


# --- particles --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["준아", "민지야", "준이시여", "민지시여", "준이여", "민지여"])
def test_vocative_names(text: str) -> None:
    assert names(text) == one_of_jun_or_minji(text)


@pytest.mark.parametrize("text", ["준은 어디 가?", "민지는 어디 가?"])
def test_topic_particle_names(text: str) -> None:
    assert names(text) == one_of_jun_or_minji(text)


@pytest.mark.parametrize("text", ["준이 웃었다", "민지가 웃었다", "민지께서 오셨다"])
def test_subject_particle_names(text: str) -> None:
    assert names(text) == one_of_jun_or_minji(text)


@pytest.mark.parametrize("text", ["준을 불렀다", "민지를 불렀다"])
def test_object_particle_names(text: str) -> None:
    assert names(text) == one_of_jun_or_minji(text)


@pytest.mark.parametrize(
    "text", ["준과 함께", "민지와 함께", "준이랑 놀자", "민지랑 놀자", "민지하고 놀자"]
)
def test_with_particles_name(text: str) -> None:
    assert names(text) == one_of_jun_or_minji(text)


@pytest.mark.parametrize("particle", ["한테", "에게", "께", "한테서", "에게서"])
def test_to_and_from_particles_name(particle: str) -> None:
    assert names(f"민지{particle} 물어봐") == [2]


@pytest.mark.parametrize(
    "particle", ["도", "만", "의", "로", "으로", "처럼", "보다", "까지", "부터"]
)
def test_other_particles_name(particle: str) -> None:
    assert names(f"준{particle} 그래") == [1]


@pytest.mark.parametrize(
    "text",
    ["준는", "민지은", "준가", "민지이", "준를", "민지을", "준와", "민지과", "준랑", "민지으로"],
)
def test_wrong_form_of_a_particle_still_names(text: str) -> None:
    assert names(text) == one_of_jun_or_minji(text)


@pytest.mark.parametrize(
    "text", ["준님", "민지씨", "준 씨", "민지 님", "준님께서", "민지씨가", "준 씨는"]
)
def test_honorific_names(text: str) -> None:
    assert names(text) == one_of_jun_or_minji(text)


@pytest.mark.parametrize("text", ["준이는", "준이가", "준이랑", "준이야", "준이한테", "준이도"])
def test_colloquial_i_suffix_names(text: str) -> None:
    assert names(text) == [1]


@pytest.mark.parametrize(
    "text", ["준아!", "민지야~", "준은요", "준한테도요", "준이랑은?", "민지까지도."]
)
def test_particle_followed_by_punctuation_or_endings_names(text: str) -> None:
    assert names(text) == one_of_jun_or_minji(text)


@pytest.mark.parametrize("text", ["준아기", "준의자", "준이상해", "민지도록"])
def test_particle_followed_by_more_hangul_is_not_named(text: str) -> None:
    assert names(text) == []


# --- several names ----------------------------------------------------------------------------


def test_nickname_names_its_character() -> None:
    assert names("지지야, 준준이랑 와") == [2, 1]


def test_longest_name_wins_at_a_position() -> None:
    cast = (Addressable(10, ("민",)), Addressable(20, ("민지",)))
    assert addressed("민지야", cast) == [20]
    assert addressed("민아", cast) == [10]


def test_name_inside_a_longer_name_is_not_named_twice() -> None:
    cast = (Addressable(10, ("민지",)), Addressable(20, ("민지혜",)), Addressable(30, ("Ann",)))
    assert addressed("민지혜야 안녕", cast) == [20]
    assert addressed("Mary Ann, hi", (*cast, Addressable(40, ("Mary Ann",)))) == [40]


def test_shorter_name_counts_where_the_longer_does_not_stand_as_a_word() -> None:
    cast = (Addressable(10, ("민",)), Addressable(20, ("민지",)))
    assert addressed("민지혜 말고 민, 너", cast) == [10]


def test_characters_in_the_order_first_named() -> None:
    assert names("민지야, 준아, Ari!") == [2, 1, 3]
    assert names("Ari, 준, 민지") == [3, 1, 2]


def test_character_named_twice_is_listed_once() -> None:
    assert names("준아, 민지야, 준준아, 준이랑") == [1, 2]


def test_own_name_beats_another_characters_nickname() -> None:
    cast = (Addressable(10, ("수지", "민지")), Addressable(20, ("민지",)))
    assert addressed("민지야", cast) == [20]


def test_shared_nickname_goes_to_the_first_in_the_cast() -> None:
    cast = (Addressable(10, ("수지", "언니")), Addressable(20, ("민지", "언니")))
    assert addressed("언니!", cast) == [10]


def test_blank_names_are_ignored() -> None:
    cast = (Addressable(10, ("", "  ")), Addressable(20, ()), MINJI)
    assert addressed("안녕  민지야", cast) == [2]


# --- Latin names, normalisation, literal names ------------------------------------------------


@pytest.mark.parametrize("text", ["Ari, hi", "ARI는 어때", "ari야", "hey ari."])
def test_latin_name_is_case_insensitive(text: str) -> None:
    assert names(text) == [3]


@pytest.mark.parametrize("text", ["Arial 폰트", "Mari", "Ari2"])
def test_latin_name_is_a_whole_word(text: str) -> None:
    assert names(text) == []


def test_decomposed_hangul_text_names() -> None:
    text = unicodedata.normalize("NFD", "민지야 안녕")
    assert text != "민지야 안녕"
    assert names(text) == [2]


def test_decomposed_hangul_name_is_compared_composed() -> None:
    cast = (Addressable(9, (unicodedata.normalize("NFD", "민지"),)),)
    assert addressed("민지야", cast) == [9]


def test_names_compare_casefolded() -> None:
    cast = (Addressable(9, ("Straße",)),)
    assert addressed("STRASSE, 안녕", cast) == [9]


@pytest.mark.parametrize(("text", "expected"), [("A.I.야 도와줘", [9]), ("AxIx 도와줘", [])])
def test_dotted_name_is_matched_literally(text: str, expected: list[int]) -> None:
    assert addressed(text, (Addressable(9, ("A.I.",)),)) == expected


@pytest.mark.parametrize(("text", "expected"), [("(준)아 안녕", [9]), ("준아 안녕", [])])
def test_bracketed_name_is_matched_literally(text: str, expected: list[int]) -> None:
    assert addressed(text, (Addressable(9, ("(준)",)),)) == expected


def test_name_with_a_space_matches_any_run_of_whitespace() -> None:
    cast = (Addressable(9, ("Mary  Jane",)),)
    assert addressed("hi mary\tjane!", cast) == [9]
    assert addressed("hi maryjane!", cast) == []


# --- @name ------------------------------------------------------------------------------------


def test_at_name_anywhere_is_named() -> None:
    assert names("그래서 @민지 어떻게 생각해?") == [2]
    assert names("그래서 @민지야 어떻게 생각해?") == [2]


def test_leading_at_name_is_stripped() -> None:
    assert leading_address("@민지 안녕", CAST) == (2, "안녕")


def test_leading_at_name_alone() -> None:
    assert leading_address("@민지", CAST) == (2, "")


def test_leading_at_nickname() -> None:
    assert leading_address("@지지   오늘 뭐 해?", CAST) == (2, "오늘 뭐 해?")


def test_leading_at_name_is_case_insensitive_and_keeps_the_rest_as_written() -> None:
    assert leading_address("@ARI Hello THERE", CAST) == (3, "Hello THERE")


def test_leading_at_name_may_follow_whitespace() -> None:
    assert leading_address("  @준 안녕", CAST) == (1, "안녕")


def test_leading_at_name_with_a_particle_is_not_a_leading_address() -> None:
    assert leading_address("@민지야 안녕", CAST) == (None, "@민지야 안녕")


def test_leading_at_unknown_name_is_not_a_leading_address() -> None:
    assert leading_address("@수지 안녕", CAST) == (None, "@수지 안녕")


def test_line_without_leading_at_is_not_a_leading_address() -> None:
    assert leading_address("민지 안녕", CAST) == (None, "민지 안녕")
    assert leading_address("안녕 @민지", CAST) == (None, "안녕 @민지")
    assert leading_address("@ 민지 안녕", CAST) == (None, "@ 민지 안녕")


def test_leading_at_with_empty_cast_or_text() -> None:
    assert leading_address("@민지 안녕", []) == (None, "@민지 안녕")
    assert leading_address("", CAST) == (None, "")


def test_leading_at_longest_name_wins() -> None:
    cast = (Addressable(10, ("Mary",)), Addressable(20, ("Mary Jane",)))
    assert leading_address("@mary jane hi", cast) == (20, "hi")
    assert leading_address("@mary hi", cast) == (10, "hi")


def test_leading_at_decomposed_name() -> None:
    text = unicodedata.normalize("NFD", "@민지 안녕")
    assert leading_address(text, CAST) == (2, unicodedata.normalize("NFD", "안녕"))


# --- big inputs -------------------------------------------------------------------------------


def _big_cast() -> list[Addressable]:
    syllables = [chr(0xAC00 + 97 * i) for i in range(100)]
    return [
        Addressable(k, tuple(syllables[k] + syllables[(k + j) % 100] * (j + 1) for j in range(12)))
        for k in range(50)
    ]


def test_long_text_and_big_cast() -> None:
    cast = _big_cast()
    filler = "기준은 준비가 됐고 ㅋㅋ Arial 이랑이랑 "
    text = (
        filler * (50_000 // len(filler))
        + cast[41].names[5]
        + "이한테 "
        + filler * (50_000 // len(filler) + 1)
    )
    assert len(text) >= 100_000
    assert addressed(text, cast) == [41]


def test_many_names_in_long_text() -> None:
    cast = _big_cast()
    text = " ".join(f"{m.names[len(m.names) - 1]}아!" for m in reversed(cast)) * 100
    assert addressed(text, cast) == [m.key for m in reversed(cast)]


def test_long_particle_run_does_not_backtrack() -> None:
    assert addressed("준" + "이랑" * 50_000 + "비", CAST) == []
    assert addressed("준" + "이랑" * 50_000, CAST) == [1]


def test_names_that_prefix_one_another_in_repetitive_text() -> None:
    cast = [Addressable(k, ("가 " * k + "나",)) for k in range(1, 51)]
    assert addressed(" " + "가 " * 50_000, cast) == []
    assert addressed("가 " * 50_000 + "나", cast) == [50]


def test_leading_at_in_long_text() -> None:
    cast = _big_cast()
    assert leading_address("@" + "가 " * 50_000, cast) == (None, "@" + "가 " * 50_000)
    assert leading_address("@" + cast[3].names[0] + " " + "가" * 100_000, cast)[0] == 3
