"""Numbers as people type them: any script's decimal digits, never an exception, never past
what an id column holds."""

from __future__ import annotations

import pytest

from synatra_bot.storage.ids import ID_MAX, typed_number


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("7", 7),
        ("007", 7),
        ("0", 0),
        ("１２", 12),  # a Korean keyboard's full-width digits
        (str(ID_MAX), ID_MAX),
        (str(ID_MAX + 1), None),
        ("²", None),  # str.isdigit says yes, int says no
        ("1²", None),
        ("", None),
        ("-1", None),
        (" 1", None),
        ("1.0", None),
        ("9" * 5000, None),  # past int's digit limit: no ValueError either
        ("0" * 5000 + "5", 5),
    ],
)
def test_a_typed_number_is_a_whole_number_in_range_or_none(text, number):
    assert typed_number(text) == number


def test_the_most_a_typed_number_may_be_is_given():
    assert typed_number("20", most=20) == 20
    assert typed_number("21", most=20) is None
