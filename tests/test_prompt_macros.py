"""Macros and Korean particles that fit the substituted name."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synatra_bot.prompt.macros import attach_particle, substitute_macros

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
    ("Alice", "으로", "Alice으로"),
    ("R2", "이", "R2이"),
]


@pytest.mark.parametrize(("name", "particle", "expected"), PARTICLES)
def test_particle_fits_the_names_last_syllable(name, particle, expected):
    assert substitute_macros("{{char}}" + particle + " 웃었다.", char=name, user="x") == (
        expected + " 웃었다."
    )
    assert attach_particle(name, particle) == expected


@pytest.mark.parametrize("macro", ["{{char}}", "{{CHAR}}", "{{ Char }}", "<BOT>", "<bot>"])
def test_char_macros_in_any_case(macro):
    assert substitute_macros(f"{macro}는 웃었다", char="준", user="민지") == "준은 웃었다"


@pytest.mark.parametrize("macro", ["{{user}}", "{{User}}", "<USER>", "<user>"])
def test_user_macros_in_any_case(macro):
    assert substitute_macros(f"{macro}를 본다", char="준", user="하늘") == "하늘을 본다"


def test_particle_followed_by_another_particle_still_fits():
    text = "{{char}}와는 {{char}}으로서 {{user}}랑은"
    assert substitute_macros(text, char="준", user="민지") == "준과는 준으로서 민지랑은"


def test_syllable_that_starts_a_longer_word_is_left_as_written():
    # 이야 (copula) is not the subject particle 이: nothing is rewritten.
    assert substitute_macros("나는 {{char}}이야.", char="민지", user="x") == "나는 민지이야."
    assert substitute_macros("{{char}}가방", char="준", user="x") == "준가방"


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
@given(st.text(max_size=40), st.text(alphabet="abc준", min_size=1, max_size=5))
def test_no_macro_survives_substitution(text, name):
    out = substitute_macros(
        text.replace("{", "").replace("<", "") + "{{char}} {{user}}", char=name, user=name
    )
    assert "{{" not in out
