"""Macros, the Korean particles and copulas that fit the substituted name, and
SillyTavern's common macros."""

from __future__ import annotations

import asyncio
import random
import re
import time
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synatra_bot.prompt.builder import HistoryMessage, PromptBuilder, PromptOptions
from synatra_bot.prompt.cards import CharacterCard
from synatra_bot.prompt.lorebook import Lorebook, LoreEntry
from synatra_bot.prompt.macros import (
    MAX_DICE,
    MAX_SIDES,
    MacroContext,
    attach_particle,
    humanize,
    substitute_macros,
)

# name, particle as written in the card, expected
PARTICLES = [
    ("민지", "는", "민지는"),
    ("민지", "은", "민지는"),
    ("준", "는", "준은"),
    ("준", "은", "준은"),
    ("민지", "이", "민지가"),
    ("준", "가", "준이"),
    ("민지", "을", "민지를"),
    ("준", "를", "준을"),
    ("민지", "과", "민지와"),
    ("준", "와", "준과"),
    ("민지", "아", "민지야"),
    ("준", "야", "준아"),
    ("민지", "이나", "민지나"),
    ("준", "나", "준이나"),
    ("민지", "이랑", "민지랑"),
    ("준", "랑", "준이랑"),
    ("하늘", "으로", "하늘로"),
    ("민지", "으로", "민지로"),
    ("준", "로", "준으로"),
    ("달", "으로", "달로"),
    ("하늘", "는", "하늘은"),
    ("Alice", "는", "Alice는"),
    ("Alice", "으로", "Alice로"),
    ("Paul", "으로", "Paul로"),
    ("R2", "이", "R2가"),
    ("7", "으로", "7로"),
    ("東京", "는", "東京는"),  # unknown reading: as written
]


@pytest.mark.parametrize(("name", "particle", "expected"), PARTICLES)
def test_particle_fits_the_names_last_syllable(name, particle, expected):
    assert substitute_macros("{{char}}" + particle + " 웃었다.", char=name, user="x") == (
        expected + " 웃었다."
    )
    assert attach_particle(name, particle) == expected


# The copula and the particles after names that end in a vowel and in a final consonant, as
# Korean speakers read them: Hangul, Latin letters, digits and mixes.
VOWEL_FINAL = [
    "민지", "하나", "세라", "Alice", "Amy", "Lee", "Mike", "Kate", "Claire", "Peter", "Sarah",
    "Andrew", "Ted", "Greg", "Max", "James", "Mark", "Kurt", "Pete", "Chloé", "José", "BTS",
    "GPT", "JYP", "R2", "2", "4", "5", "9", "2024", "민지2", "さくら", "Mitch", "Keith",
    "민지♡",
]  # fmt: skip
CONSONANT_FINAL = [
    "준", "하늘", "달", "서연", "Bob", "Nick", "Eric", "Jack", "Matt", "Philip", "Jacob", "Tom",
    "John", "Paul", "Bill", "Kang", "Anne", "Jane", "Michelle", "Brook", "Scott", "CNN",
    "HTML", "iPhone", "3", "0", "1", "6", "7", "8", "10", "100", "1000", "10000", "100000",
    "민지3", "Alice7", "けん", "준 (Jun)", "준♡",
]  # fmt: skip

# written after the name -> (after a final consonant, after a vowel)
COPULAS = [
    ("이야", "이야", "야"),
    ("이에요", "이에요", "예요"),
    ("예요", "이에요", "예요"),
    ("이예요", "이에요", "예요"),
    ("에요", "이에요", "예요"),
    ("이다", "이다", "다"),
    ("다", "이다", "다"),
    ("이었다", "이었다", "였다"),
    ("였다", "이었다", "였다"),
    ("이였다", "이었다", "였다"),
    ("였어요", "이었어요", "였어요"),
    ("이라고", "이라고", "라고"),
    ("라고", "이라고", "라고"),
    ("라는", "이라는", "라는"),
    ("이라서", "이라서", "라서"),
    ("이나", "이나", "나"),
    ("이여", "이여", "여"),
    ("여", "이여", "여"),
    ("이랑", "이랑", "랑"),
    ("랑은", "이랑은", "랑은"),
    ("지", "이지", "지"),
    ("이지만", "이지만", "지만"),
    ("죠", "이죠", "죠"),
    ("이니까", "이니까", "니까"),
    ("면", "이면", "면"),
    ("이고", "이고", "고"),
    ("세요", "이세요", "세요"),
    ("셨다", "이셨다", "셨다"),
    ("란", "이란", "란"),
    ("이야말로", "이야말로", "야말로"),
    ("가", "이", "가"),
    ("을", "을", "를"),
    ("와", "과", "와"),
]


@pytest.mark.parametrize(("written", "after_consonant", "after_vowel"), COPULAS)
@pytest.mark.parametrize("macro", ["{{char}}", "{{user}}"])
def test_copulas_and_particles_fit_every_kind_of_name(macro, written, after_consonant, after_vowel):
    for name in VOWEL_FINAL:
        out = substitute_macros(f"{macro}{written} 봐", char=name, user=name)
        assert out == f"{name}{after_vowel} 봐", name
    for name in CONSONANT_FINAL:
        out = substitute_macros(f"{macro}{written} 봐", char=name, user=name)
        assert out == f"{name}{after_consonant} 봐", name


@pytest.mark.parametrize(
    ("text", "name", "expected"),
    [
        ("나는 {{char}}야.", "준", "나는 준이야."),
        ("{{char}}야?", "Bob", "Bob이야?"),
        ('"{{char}}야"', "준", '"준이야"'),
        ("{{char}}야", "준", "준이야"),
        ("{{char}}야, 일어나", "준", "준아, 일어나"),
        ("{{char}}야! 일어나", "준", "준아! 일어나"),
        ("{{char}}야 뭐 해?", "준", "준아 뭐 해?"),
        ("{{char}}야.", "민지", "민지야."),
        ("{{char}}아, 일어나", "민지", "민지야, 일어나"),
    ],
)
def test_written_ya_is_the_copula_at_a_sentence_end_and_the_vocative_elsewhere(
    text, name, expected
):
    assert substitute_macros(text, char=name, user="x") == expected


def test_copula_written_after_a_consonant_fits_a_vowel_final_name():
    assert substitute_macros("나는 {{char}}이야.", char="민지", user="x") == "나는 민지야."
    assert substitute_macros("{{user}}이었다.", char="x", user="Alice") == "Alice였다."


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("{{char}}가방", "준"),
        ("{{char}}이야기", "민지"),
        ("{{char}}여자친구", "준"),
        ("{{char}}다운 선택", "준"),
        ("{{char}}고양이", "준"),
        ("{{char}}지갑", "준"),
        ("{{char}}님", "준"),
        ("{{char}}네 집", "준"),
        ("{{char}}이다음", "민지"),
    ],
)
def test_syllable_that_starts_a_longer_word_is_left_as_written(text, name):
    assert substitute_macros(text, char=name, user="x") == text.replace("{{char}}", name)


@pytest.mark.parametrize(
    "macro", ["{{char}}", "{{CHAR}}", "{{ Char }}", "<BOT>", "<bot>", "<CHAR>"]
)
def test_char_macros_in_any_case(macro):
    assert substitute_macros(f"{macro}는 웃었다", char="준", user="민지") == "준은 웃었다"


@pytest.mark.parametrize("macro", ["{{user}}", "{{User}}", "<USER>", "<user>"])
def test_user_macros_in_any_case(macro):
    assert substitute_macros(f"{macro}를 본다", char="준", user="하늘") == "하늘을 본다"


def test_bot_is_only_a_legacy_tag():
    assert substitute_macros("{{bot}}", char="준", user="x") == "{{bot}}"


def test_particle_followed_by_another_particle_still_fits():
    text = "{{char}}와는 {{char}}으로서 {{user}}랑은"
    assert substitute_macros(text, char="준", user="민지") == "준과는 준으로서 민지랑은"


def test_text_without_macros_is_unchanged():
    text = "{char} <b>굵게</b> {{unknown}} 그대로"
    assert substitute_macros(text, char="준", user="민지") == text


hangul_names = st.text(
    alphabet=st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3), min_size=1
)


@settings(max_examples=60, deadline=None)
@given(hangul_names, st.sampled_from(["은", "는"]))
def test_topic_particle_follows_the_final_consonant(name, written):
    has_final = (ord(name[-1]) - 0xAC00) % 28 != 0
    out = substitute_macros(f"<BOT>{written} 간다", char=name, user="x")
    assert out == name + ("은" if has_final else "는") + " 간다"


@settings(max_examples=60, deadline=None)
@given(hangul_names, st.sampled_from(["이야", "야", "이었다", "였다"]))
def test_copula_follows_the_final_consonant(name, written):
    has_final = (ord(name[-1]) - 0xAC00) % 28 != 0
    forms = {"이야": ("이야", "야"), "야": ("이야", "야"), "이었다": ("이었다", "였다")}
    forms["였다"] = forms["이었다"]
    out = substitute_macros("{{char}}" + written + ".", char=name, user="x")
    assert out == name + forms[written][0 if has_final else 1] + "."


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40), st.text(alphabet="abc준", min_size=1, max_size=5))
def test_no_macro_survives_substitution(text, name):
    out = substitute_macros(
        text.replace("{", "").replace("<", "") + "{{char}} {{user}}", char=name, user=name
    )
    assert "{{" not in out


# -- SillyTavern's macros -------------------------------------------------------------------

NOW = datetime(2024, 9, 28, 15, 7, 42)


def sub(text: str, context: MacroContext | None = None, **names: str) -> str:
    return substitute_macros(
        text, char=names.get("char", "민지"), user=names.get("user", "준"), context=context
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{time}}", "3:07 PM"),
        ("{{date}}", "September 28, 2024"),
        ("{{weekday}}", "Saturday"),
        ("{{isotime}}", "15:07"),
        ("{{isodate}}", "2024-09-28"),
        ("{{TIME}} {{IsoDate}}", "3:07 PM 2024-09-28"),
    ],
)
def test_time_macros_read_the_callers_now(text, expected):
    assert sub(text, MacroContext(now=NOW)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{time}}", "오후 3:07"),
        ("{{date}}", "2024년 9월 28일"),
        ("{{weekday}}", "토요일"),
        ("{{isotime}}", "15:07"),
    ],
)
def test_time_macros_in_korean(text, expected):
    assert sub(text, MacroContext(now=NOW, locale="ko")) == expected


def test_morning_and_midnight_clock():
    assert sub("{{time}}", MacroContext(now=datetime(2024, 1, 1, 0, 5))) == "12:05 AM"
    assert sub("{{time}}", MacroContext(now=datetime(2024, 1, 1, 9, 0), locale="ko")) == (
        "오전 9:00"
    )


@pytest.mark.parametrize(
    ("idle", "english", "korean"),
    [
        (None, "just now", "방금"),
        (timedelta(seconds=10), "a few seconds", "몇 초"),
        (timedelta(seconds=50), "a minute", "1분"),
        (timedelta(minutes=5), "5 minutes", "5분"),
        (timedelta(minutes=50), "an hour", "한 시간"),
        (timedelta(hours=3), "3 hours", "3시간"),
        (timedelta(hours=23), "a day", "하루"),
        (timedelta(days=3), "3 days", "3일"),
        (timedelta(days=30), "a month", "한 달"),
        (timedelta(days=100), "3 months", "3달"),
        (timedelta(days=400), "a year", "일 년"),
        (timedelta(days=1000), "3 years", "3년"),
        (-timedelta(minutes=5), "5 minutes", "5분"),
    ],
)
def test_idle_duration_in_words(idle, english, korean):
    assert humanize(idle) == english
    assert sub("{{idle_duration}}", MacroContext(idle=idle)) == english
    assert sub("{{idle_duration}}", MacroContext(idle=idle, locale="ko-KR")) == korean


def test_last_message_and_original():
    context = MacroContext(last_message="안녕!", original="기본 지시문")
    assert sub("[{{lastMessage}}] {{original}}", context) == "[안녕!] 기본 지시문"
    assert sub("{{original}}", MacroContext()) == "{{original}}"
    assert sub("[{{lastmessage}}]", MacroContext()) == "[]"


def test_newline_noop_and_comments_need_no_context():
    text = "a{{newline}}b{{noop}}c{{// 작가 메모 {{char}} }}d{{//\n여러 줄\n}}e"
    assert sub(text) == "a\nbcde"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("위\n\n{{trim}}\n\n아래", "위아래"),
        ("위\r\n{{trim}}\r\n아래", "위아래"),
        ("위{{newline}}{{trim}}{{newline}}아래", "위아래"),
        ("{{trim}}\n\n{{trim}}\n아래", "아래"),
        ("위 \n{{trim}} 아래", "위  아래"),
        ("{{char}}\n{{trim}}\n{{user}}", "민지준"),
        ("{{lastMessage}}{{trim}}끝", "줄\n\n끝"),
        ("{{trim}}{{noop}}\n끝", "\n끝"),
    ],
)
def test_trim_removes_the_newlines_around_it(text, expected):
    assert sub(text, MacroContext(last_message="줄\n\n")) == expected


def test_random_draws_from_the_callers_rng():
    context = MacroContext(rng=random.Random(7))
    seen = {sub("{{random::사과::배::감}}", context) for _ in range(60)}
    assert seen == {"사과", "배", "감"}
    assert sub("{{random:a, b\\,c}}", MacroContext(rng=random.Random(1))) in {"a", "b,c"}
    assert sub("{{RANDOM:하나}}", MacroContext()) == "하나"


def test_random_items_hold_names_with_fitted_particles():
    context = MacroContext(rng=random.Random(3))
    outs = {sub("{{random::{{user}}야.::{{user}}는 웃었다}}", context) for _ in range(40)}
    assert outs == {"준이야.", "준은 웃었다"}


def test_random_is_a_new_draw_every_build():
    text = "{{random::" + "::".join(map(str, range(1000))) + "}}"
    assert len({sub(text, MacroContext(seed=1)) for _ in range(10)}) > 1


def test_pick_is_stable_for_a_seed_and_changes_with_it():
    text = "{{pick::" + "::".join(f"보기{i}" for i in range(20)) + "}} {{pick:a,b,c,d,e,f,g,h}}"
    first = sub(text, MacroContext(seed=42))
    for _ in range(5):
        assert sub(text, MacroContext(seed=42, rng=random.Random())) == first
    assert len({sub(text, MacroContext(seed=seed)) for seed in range(20)}) > 1


def test_pick_depends_on_position_not_on_other_text():
    many = " ".join(["{{pick::" + "::".join(map(str, range(100))) + "}}"] * 20)
    picks = sub(many, MacroContext(seed=5)).split()
    assert len(set(picks)) > 1  # each place picks for itself
    again = sub(many, MacroContext(seed=5, last_message="다른 메시지")).split()
    assert picks == again


@pytest.mark.parametrize(
    ("formula", "low", "high"),
    [("d20", 1, 20), ("20", 1, 20), ("2d6+1", 3, 13), ("3D4-2", 1, 10), ("100d1000", 100, 100000)],
)
def test_roll_stays_in_its_bounds(formula, low, high):
    context = MacroContext(rng=random.Random(11))
    results = {int(sub(f"{{{{roll:{formula}}}}}", context)) for _ in range(200)}
    assert low <= min(results) and max(results) <= high
    assert int(sub(f"{{{{roll {formula}}}}}", context)) in range(low, high + 1)


@pytest.mark.parametrize(
    "macro",
    [
        f"{{{{roll:{MAX_DICE + 1}d6}}}}",
        f"{{{{roll:d{MAX_SIDES + 1}}}}}",
        "{{roll:99999999999999d6}}",
        "{{roll:1d6+" + "9" * 5000 + "}}",
        "{{roll:0d6}}",
        "{{roll:2d0}}",
        "{{roll:d}}",
        "{{roll:2d6 + 1}}",
        "{{roll:주사위}}",
    ],
)
def test_absurd_or_invalid_rolls_are_left_as_written(macro):
    assert sub(macro, MacroContext(rng=random.Random(0))) == macro


@pytest.mark.parametrize(
    "text",
    [
        "{{time}} {{date}} {{weekday}} {{isotime}} {{isodate}}",
        "{{random::a::b}} {{pick::a::b}} {{roll:d20}}",
        "{{idle_duration}} {{lastMessage}} {{original}}",
    ],
)
def test_without_a_context_the_new_macros_are_left_as_written(text):
    assert sub(text) == text


def test_time_macros_without_a_now_are_left_as_written():
    assert sub("{{time}}", MacroContext()) == "{{time}}"


@pytest.mark.parametrize(
    "text",
    ["{{unknown}}", "{{setvar::x::1}}", "{{ random }}", "{{pick}}", "{{}}", "{{datetimeformat X}}"],
)
def test_unknown_macros_stay_as_written(text):
    assert sub(text, MacroContext(now=NOW)) == text


def test_unknown_macros_keep_their_inner_names_replaced():
    assert sub("{{getvar::{{char}}}}", MacroContext()) == "{{getvar::민지}}"


# -- hostile input --------------------------------------------------------------------------


def _quick(text: str, context: MacroContext | None = None) -> str:
    start = time.perf_counter()
    out = sub(text, context)
    assert time.perf_counter() - start < 2.0
    return out


def test_ten_thousand_macros():
    context = MacroContext(seed=3, now=NOW, rng=random.Random(0))
    text = "{{char}}는 {{pick::가::나}} {{roll:d6}} {{time}}\n" * 10_000
    out = _quick(text, context)
    lines = out.splitlines()
    assert len(lines) == 10_000
    assert all(re.fullmatch(r"민지는 [가나] [1-6] 3:07 PM", line) for line in lines)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{" * 20_000, "{{" * 20_000),
        ("{{char" * 5_000, "{{char" * 5_000),
        ("{{" * 10_000 + "char" + "}}" * 10_000, "{{" * 9_999 + "민지" + "}}" * 9_999),
        ("{" * 50_000 + "}" * 50_000, "{" * 50_000 + "}" * 50_000),
        ("{{a " + "{{char}} " * 10_000, "{{a " + "민지 " * 10_000),
        ("{{// " + "{{b}} " * 10_000, "{{// " + "{{b}} " * 10_000),
        ("{{//{{a}}" * 5_000, "{{//{{a}}" * 5_000),
        ("{{x" + " " * 100_000, "{{x" + " " * 100_000),
        ("\n" * 50_000 + "{{trim}}" + "\n" * 50_000 + "끝", "끝"),
        ("{{{{{{char}}}}}}", "{{{{민지}}}}"),
        ("{{a{{b{{char}}}}}}", "{{a{{b민지}}}}"),
    ],
)
def test_hostile_input_is_linear_and_left_alone(text, expected):
    assert _quick(text, MacroContext(rng=random.Random(0))) == expected


# -- in the prompt builder ------------------------------------------------------------------


def _macro_card(**fields):
    base = {
        "name": "준",
        "description": "{{char}}이야. 지금은 {{time}}, {{weekday}}. {{pick::비::눈}}이 온다.",
        "personality": "{{user}}랑 친하다",
        "scenario": "{{user}}이에요.{{newline}}{{// 메모}}끝",
        "example_messages": "<START>\n{{user}}: 안녕\n{{char}}: {{roll:d6}}번째 인사야.",
        "post_history_instructions": "{{char}}으로서 답하라. {{lastMessage}}",
    }
    base.update(fields)
    return CharacterCard(**base)


def _macro_build(builder, **kwargs):
    book = Lorebook([LoreEntry(keys=["날씨"], content="{{char}}였다. {{isodate}}", name="날씨")])
    history = [HistoryMessage(role="user", name="민지", content="날씨 좋다", message_id=1)]
    return builder.build(
        card=_macro_card(),
        history=history,
        user_name="민지",
        persona="{{user}}는 {{date}}에 왔다.",
        channel_lorebook=book,
        options=PromptOptions(author_note="{{idle_duration}} 지남"),
        **kwargs,
    )


def test_builder_without_a_macro_context_is_unchanged(tokenizer):
    plain = _macro_build(PromptBuilder(tokenizer))
    none = _macro_build(PromptBuilder(tokenizer), macro_context=None)
    assert none.text == plain.text and none.input_ids == plain.input_ids
    assert "준이야. 지금은 {{time}}, {{weekday}}. {{pick::비::눈}}이 온다." in plain.text
    assert "{{roll:d6}}번째" in plain.text and "{{lastMessage}}" in plain.text


def test_builder_threads_the_macro_context_everywhere(tokenizer):
    builder = PromptBuilder(tokenizer)
    context = MacroContext(
        seed=9,
        now=NOW,
        idle=timedelta(minutes=5),
        last_message="날씨 좋다",
        rng=random.Random(2),
        locale="ko",
    )
    text = _macro_build(builder, macro_context=context).text
    assert re.search(r"준이야\. 지금은 오후 3:07, 토요일\. (비|눈)이 온다\.", text)
    assert "민지랑 친하다" in text and "민지예요.\n끝" in text
    assert re.search(r"[1-6]번째 인사야\.", text)
    assert "준으로서 답하라. 날씨 좋다" in text
    assert "준이었다. 2024-09-28" in text
    assert "민지는 2024년 9월 28일에 왔다." in text
    assert "5분 지남" in text
    assert "{{" not in text
    # The pick is the same on a rebuild; a later time is not served from the cached system block.
    again = _macro_build(builder, macro_context=context).text
    assert re.search(r"(비|눈)이 온다", again)[0] == re.search(r"(비|눈)이 온다", text)[0]
    later = MacroContext(seed=9, now=NOW + timedelta(hours=2), locale="ko")
    assert "오후 5:07" in _macro_build(builder, macro_context=later).text


def test_build_async_takes_the_macro_context(tokenizer):
    builder = PromptBuilder(tokenizer)
    built = asyncio.run(
        builder.build_async(
            card=_macro_card(),
            history=[HistoryMessage(role="user", name="민지", content="안녕", message_id=1)],
            user_name="민지",
            options=PromptOptions(),
            macro_context=MacroContext(now=NOW),
        )
    )
    assert "3:07 PM, Saturday" in built.text
