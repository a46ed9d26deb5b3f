"""SillyTavern chat files: reading ST's .jsonl, malformed input, writing and the round trip."""

from __future__ import annotations

import codecs
import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synatra_bot.errors import ChatFileError, UserFacingError
from synatra_bot.prompt.st_chat import (
    DEFAULT_CHARACTER_NAME,
    DEFAULT_USER_NAME,
    MAX_CHAT_BYTES,
    MAX_CHAT_LINES,
    MAX_MESSAGE_CHARS,
    MAX_NAME_CHARS,
    MAX_NOTE_NUMBER,
    AuthorNote,
    ChatFile,
    ChatLine,
    note_due,
    parse_chat,
    render_chat,
)

KST = timezone(timedelta(hours=9))


def _jsonl(*rows: object) -> bytes:
    return "\n".join(json.dumps(row, ensure_ascii=False) for row in rows).encode()


HEADER = {
    "user_name": "민지",
    "character_name": "하루",
    "create_date": "2025-11-23@14h56m50s682ms",
    "chat_metadata": {"integrity": "0b7c7f3e-8a52-4c1e-9f0e-1d2a3b4c5d6e", "note_prompt": ""},
}


def _message(**fields: object) -> dict[str, object]:
    return {
        "name": "하루",
        "is_user": False,
        "is_system": False,
        "send_date": "2025-11-23T14:57:01.120Z",
        "mes": "안녕",
        "extra": {},
        **fields,
    }


def test_a_sillytavern_chat_with_swipes_korean_a_system_line_and_dates_parses():
    data = _jsonl(
        HEADER,
        {
            "name": "하루",
            "is_user": False,
            "is_system": False,
            "send_date": "June 19, 2023 2:20pm",
            "mes": "어서 와! 오늘은 뭐 할까?",
            "swipes": ["어서 와! 오늘은 뭐 할까?", "왔구나. 기다렸어."],
            "swipe_id": 0,
            "swipe_info": [],
            "extra": {},
        },
        {
            "name": "민지",
            "is_user": True,
            "is_system": False,
            "send_date": "2025-11-23T14:57:01.120Z",
            "mes": "산책 가자 🌸",
            "extra": {"isSmallSys": False, "token_count": 9},
            "force_avatar": "User Avatars/minji.png",
        },
        {
            "name": "하루",
            "is_user": False,
            "is_system": False,
            "send_date": 1732373822000,
            "mes": "좋아, 공원으로 가자.",
            "swipes": ["그래, 가자.", "좋아, 공원으로 가자.", "비 오는데?"],
            "swipe_id": 1,
            "swipe_info": [
                {"send_date": "2025-11-23T14:57:02.000Z", "extra": {}},
                {"send_date": "2025-11-23T14:57:03.000Z", "gen_started": "x", "extra": {}},
                {"send_date": "2025-11-23T14:57:04.000Z", "extra": {}},
            ],
            "gen_started": "2025-11-23T14:57:02.500Z",
            "extra": {"api": "koboldcpp", "model": "synatra"},
        },
        {
            "name": "SillyTavern System",
            "is_user": False,
            "is_system": True,
            "send_date": "2024-6-5 @14h 56m 50s 682ms",
            "mes": "두 사람은 공원에 도착했다.",
            "extra": {"type": "narrator"},
        },
    )
    chat = parse_chat(data, filename="하루 - 2025-11-23@14h56m50s682ms.jsonl")
    assert chat == ChatFile(
        user_name="민지",
        character_name="하루",
        created_at=datetime(2025, 11, 23, 14, 56, 50, 682000, tzinfo=UTC),
        lines=(
            ChatLine(
                name="하루",
                is_user=False,
                text="어서 와! 오늘은 뭐 할까?",
                swipes=("어서 와! 오늘은 뭐 할까?", "왔구나. 기다렸어."),
                swipe_id=0,
                sent_at=datetime(2023, 6, 19, 14, 20, tzinfo=UTC),
            ),
            ChatLine(
                name="민지",
                is_user=True,
                text="산책 가자 🌸",
                sent_at=datetime(2025, 11, 23, 14, 57, 1, 120000, tzinfo=UTC),
            ),
            ChatLine(
                name="하루",
                is_user=False,
                text="좋아, 공원으로 가자.",
                swipes=("그래, 가자.", "좋아, 공원으로 가자.", "비 오는데?"),
                swipe_id=1,
                sent_at=datetime(2024, 11, 23, 14, 57, 2, tzinfo=UTC),
            ),
            ChatLine(
                name="SillyTavern System",
                is_user=False,
                text="두 사람은 공원에 도착했다.",
                sent_at=datetime(2024, 6, 5, 14, 56, 50, 682000, tzinfo=UTC),
                is_system=True,
            ),
        ),
    )


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2025-11-23T14:56:50.682Z", datetime(2025, 11, 23, 14, 56, 50, 682000, tzinfo=UTC)),
        ("2025-11-23T23:56:50+09:00", datetime(2025, 11, 23, 14, 56, 50, tzinfo=UTC)),
        ("2025-11-23@14h56m50s682ms", datetime(2025, 11, 23, 14, 56, 50, 682000, tzinfo=UTC)),
        ("2024-7-12@01h31m37s", datetime(2024, 7, 12, 1, 31, 37, tzinfo=UTC)),
        ("2024-6-5 @14h 56m 50s 682ms", datetime(2024, 6, 5, 14, 56, 50, 682000, tzinfo=UTC)),
        ("June 19, 2023 2:20pm", datetime(2023, 6, 19, 14, 20, tzinfo=UTC)),
        ("Dec 1, 2023 12:05am", datetime(2023, 12, 1, 0, 5, tzinfo=UTC)),
        (1732373822000, datetime(2024, 11, 23, 14, 57, 2, tzinfo=UTC)),
        ("1732373822000", datetime(2024, 11, 23, 14, 57, 2, tzinfo=UTC)),
    ],
)
def test_each_date_form_sillytavern_reads_is_understood(written, expected):
    chat = parse_chat(_jsonl(HEADER, _message(send_date=written)))
    assert chat.lines[0].sent_at == expected


@pytest.mark.parametrize("written", ["someday", "", 0, -5, "2023-02-30T00:00:00Z", None])
def test_a_date_that_cannot_be_read_is_left_out(written):
    chat = parse_chat(_jsonl(HEADER, _message(send_date=written)))
    assert chat.lines[0].sent_at is None


MALFORMED: dict[str, tuple[bytes, int, str]] = {
    # case: (file, line at fault, part of the reason)
    "bad json": (
        _jsonl(HEADER, _message()) + '\n{"name": "하루", "mes": '.encode(),
        3,
        "not valid JSON",
    ),
    "list line": (_jsonl(HEADER, _message(), ["하루", "안녕"]), 3, "expected a JSON object"),
    "text line": (_jsonl(HEADER, "안녕"), 2, "expected a JSON object, found text"),
    "mes not text": (_jsonl(HEADER, _message(mes=3)), 2, "'mes' must be text"),
    "no mes": (_jsonl(HEADER, _message(), {"name": "하루"}), 3, "needs 'mes'"),
    "is_user not bool": (_jsonl(HEADER, _message(is_user="true")), 2, "'is_user' must be true"),
    "is_system not bool": (_jsonl(HEADER, _message(is_system=1)), 2, "'is_system' must be"),
    "name not text": (_jsonl(HEADER, _message(name=["하루"])), 2, "'name' must be text"),
    "swipes not list": (_jsonl(HEADER, _message(swipes="안녕")), 2, "'swipes' must be a list"),
    "swipe not text": (
        _jsonl(HEADER, _message(swipes=["안녕", {"message": "hi"}], swipe_id=0)),
        2,
        "swipe 1 must be text",
    ),
    "swipe_id not int": (
        _jsonl(HEADER, _message(swipes=["안녕"], swipe_id="0")),
        2,
        "'swipe_id' must be a whole number",
    ),
    "send_date object": (_jsonl(HEADER, _message(send_date={})), 2, "'send_date' must be a date"),
    "user_name not text": (_jsonl({**HEADER, "user_name": 7}), 1, "'user_name' must be text"),
    "swipe_id out of range": (
        _jsonl(HEADER, _message(), _message(swipes=["안녕", "잘 가"], swipe_id=2)),
        3,
        "'swipe_id' is 2, but the message has 2 alternative(s)",
    ),
    "negative swipe_id": (
        _jsonl(HEADER, _message(swipes=["안녕"], swipe_id=-1)),
        2,
        "'swipe_id' is -1",
    ),
    "swipe_id without swipes": (_jsonl(HEADER, _message(swipe_id=1)), 2, "1 alternative(s)"),
    "message too long": (
        _jsonl(HEADER, _message(mes="가" * (MAX_MESSAGE_CHARS + 1))),
        2,
        f"'mes' is {MAX_MESSAGE_CHARS + 1} characters, the limit is {MAX_MESSAGE_CHARS}",
    ),
    "swipe too long": (
        _jsonl(HEADER, _message(swipes=["안녕", "가" * (MAX_MESSAGE_CHARS + 1)], swipe_id=0)),
        2,
        "swipe 1 is",
    ),
    "name too long": (
        _jsonl(HEADER, _message(name="하" * (MAX_NAME_CHARS + 1))),
        2,
        f"the limit is {MAX_NAME_CHARS}",
    ),
    "not utf-8": (_jsonl(HEADER) + b'\n{"mes": "\xb0\xa1"}', 2, "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_line_raises_a_clear_error_naming_it(case):
    data, line, reason = MALFORMED[case]
    with pytest.raises(ChatFileError) as caught:
        parse_chat(data, filename="bad.jsonl")
    error = caught.value
    assert isinstance(error, UserFacingError)
    assert error.key == "error.chat_file"
    assert error.params["line"] == line
    assert reason in error.params["reason"]
    assert f"bad.jsonl, line {line}: " in str(error)


def test_an_oversized_file_is_refused_before_it_is_read():
    data = _jsonl(HEADER, _message(mes="a" * 100)) + b" " * MAX_CHAT_BYTES
    with pytest.raises(ChatFileError) as caught:
        parse_chat(data)
    assert caught.value.params["line"] == 0
    assert f"the limit is {MAX_CHAT_BYTES}" in caught.value.params["reason"]


def test_a_file_with_too_many_lines_is_refused_at_the_first_line_over():
    data = _jsonl(HEADER, *[_message(mes="응")] * MAX_CHAT_LINES)
    with pytest.raises(ChatFileError) as caught:
        parse_chat(data)
    assert caught.value.params["line"] == MAX_CHAT_LINES + 1
    assert f"more than {MAX_CHAT_LINES} lines" in caught.value.params["reason"]


def test_the_most_lines_allowed_parse():
    data = _jsonl(HEADER, *[_message(mes="응")] * (MAX_CHAT_LINES - 1))
    assert len(parse_chat(data).lines) == MAX_CHAT_LINES - 1


def test_a_bom_blank_lines_and_crlf_are_fine():
    plain = _jsonl(HEADER, _message(), _message(mes="또 봐"))
    rows = plain.split(b"\n")
    messy = codecs.BOM_UTF8 + b"\r\n".join([rows[0], b"", b"  ", rows[1], b"\t", rows[2], b""])
    assert parse_chat(messy) == parse_chat(plain)


def test_line_numbers_count_blank_lines():
    data = _jsonl(HEADER) + b"\n\n\n" + json.dumps(_message(is_user="yes")).encode()
    with pytest.raises(ChatFileError) as caught:
        parse_chat(data)
    assert caught.value.params["line"] == 4


def test_a_file_that_starts_with_a_message_gets_default_metadata():
    chat = parse_chat(_jsonl(_message(), {"name": None, "is_user": True, "mes": "응"}))
    assert chat.user_name == DEFAULT_USER_NAME
    assert chat.character_name == DEFAULT_CHARACTER_NAME
    assert chat.created_at is None
    assert [line.text for line in chat.lines] == ["안녕", "응"]
    assert chat.lines[1].name == DEFAULT_USER_NAME


def test_a_message_without_a_name_takes_the_speaker_from_the_metadata():
    chat = parse_chat(_jsonl(HEADER, {"mes": "…"}, {"mes": "응", "is_user": True}))
    assert [(line.name, line.is_user) for line in chat.lines] == [("하루", False), ("민지", True)]


def test_a_message_without_swipes_has_one_alternative():
    (line,) = parse_chat(_jsonl(HEADER, _message(swipe_id=0))).lines
    assert (line.text, line.swipes, line.swipe_id) == ("안녕", (), 0)


def test_when_mes_and_the_chosen_swipe_differ_mes_wins():
    data = _jsonl(HEADER, _message(mes="고친 답", swipes=["첫 답", "둘째 답"], swipe_id=1))
    (line,) = parse_chat(data).lines
    assert line.text == "고친 답"
    assert line.swipes == ("첫 답", "고친 답")
    assert line.swipe_id == 1


def test_swipes_without_a_swipe_id_choose_the_one_that_is_mes():
    (line,) = parse_chat(_jsonl(HEADER, _message(mes="둘", swipes=["하나", "둘"]))).lines
    assert (line.swipe_id, line.swipes) == (1, ("하나", "둘"))


def test_an_empty_file_is_an_empty_chat():
    assert parse_chat(b"") == ChatFile(DEFAULT_USER_NAME, DEFAULT_CHARACTER_NAME, None, ())


def test_the_written_file_has_the_fields_sillytavern_expects():
    chat = ChatFile(
        user_name="민지",
        character_name="하루",
        created_at=datetime(2025, 11, 23, 23, 56, 50, 682000, tzinfo=KST),
        lines=(
            ChatLine(
                "하루", False, "안녕?", ("안녕?", "왔어?"), 0, datetime(2025, 1, 2, tzinfo=UTC)
            ),
            ChatLine("민지", True, "응, 왔어", sent_at=datetime(2025, 1, 2, 0, 1, tzinfo=UTC)),
            ChatLine("SillyTavern System", False, "장면 전환", is_system=True),
        ),
    )
    data = render_chat(chat)
    text = data.decode("utf-8")
    assert "안녕?" in text  # Korean is written as is, not as \u escapes
    assert not text.endswith("\n")
    header, greeting, reply, system = (json.loads(row) for row in text.split("\n"))
    assert header == {
        "user_name": "민지",
        "character_name": "하루",
        "create_date": "2025-11-23@14h56m50s682ms",
        "chat_metadata": {},
    }
    assert greeting == {
        "name": "하루",
        "is_user": False,
        "is_system": False,
        "send_date": "2025-01-02T00:00:00.000Z",
        "mes": "안녕?",
        "swipes": ["안녕?", "왔어?"],
        "swipe_id": 0,
        "swipe_info": [
            {"send_date": "2025-01-02T00:00:00.000Z", "extra": {}},
            {"send_date": "2025-01-02T00:00:00.000Z", "extra": {}},
        ],
        "extra": {},
    }
    assert reply == {
        "name": "민지",
        "is_user": True,
        "is_system": False,
        "send_date": "2025-01-02T00:01:00.000Z",
        "mes": "응, 왔어",
        "extra": {},
    }
    assert system["is_system"] is True
    assert "send_date" not in system
    assert "swipes" not in system
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", greeting["send_date"])


def test_a_chat_line_refuses_a_text_that_is_not_its_chosen_swipe():
    with pytest.raises(ValueError, match="chosen swipe"):
        ChatLine("하루", False, "셋", ("하나", "둘"), 1)
    with pytest.raises(ValueError, match="swipe_id"):
        ChatLine("하루", False, "하나", ("하나",), 1)
    with pytest.raises(ValueError, match="time zone"):
        ChatLine("하루", False, "하나", sent_at=datetime(2025, 1, 1))


GROUP_HEADER = {
    "chat_metadata": {"integrity": "5f1c2c1e", "note_prompt": "비가 온다.", "note_depth": 2},
    "user_name": "unused",
    "character_name": "unused",
}


def test_a_group_chat_as_sillytavern_writes_it_keeps_every_speaker():
    chat = parse_chat(
        _jsonl(
            GROUP_HEADER,
            _message(name="하루", original_avatar="하루.png"),
            _message(name="준", mes="나도 왔어"),
            _message(name="민지", is_user=True, mes="다들 안녕"),
        )
    )
    assert chat.group
    assert [(line.name, line.is_user) for line in chat.lines] == [
        ("하루", False),
        ("준", False),
        ("민지", True),
    ]
    # "unused" is not anybody's name.
    assert (chat.user_name, chat.character_name) == (DEFAULT_USER_NAME, DEFAULT_CHARACTER_NAME)
    assert chat.author_note == AuthorNote("비가 온다.", depth=2, interval=1)


def test_an_older_group_chat_without_a_metadata_line_is_a_group_chat():
    assert parse_chat(_jsonl(_message(name="하루"), _message(name="준"))).group
    assert not parse_chat(_jsonl(HEADER, _message())).group


@pytest.mark.parametrize(
    ("metadata", "note"),
    [
        ({"note_prompt": "비", "note_depth": 6, "note_interval": 3}, AuthorNote("비", 6, 3)),
        ({"note_prompt": "비", "note_depth": "6", "note_interval": "0"}, AuthorNote("비", 6, 0)),
        ({"note_prompt": "비", "note_depth": 6.0}, AuthorNote("비", 6, 1)),
        ({"note_prompt": "비", "note_depth": 99999999999}, AuthorNote("비", MAX_NOTE_NUMBER, 1)),
        ({"note_prompt": "비", "note_depth": "9" * 5000}, AuthorNote("비", MAX_NOTE_NUMBER, 1)),
        ({"note_prompt": "비", "note_depth": -3}, AuthorNote("비", 0, 1)),
        ({"note_prompt": "  ", "note_depth": 6}, None),
        ({"integrity": "x"}, None),
        ({}, None),
    ],
)
def test_the_chats_author_note_is_read_from_chat_metadata(metadata, note):
    assert parse_chat(_jsonl({**HEADER, "chat_metadata": metadata})).author_note == note


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ("비", "'chat_metadata' must be an object"),
        ({"note_prompt": 3}, "'note_prompt' must be text"),
        ({"note_prompt": "비" * (MAX_MESSAGE_CHARS + 1)}, "'note_prompt' is"),
        ({"note_prompt": "비", "note_depth": "깊게"}, "'note_depth' must be a whole number"),
        ({"note_prompt": "비", "note_interval": True}, "'note_interval' must be a whole number"),
        ({"note_prompt": "비", "note_depth": 2.5}, "'note_depth' must be a whole number"),
    ],
)
def test_a_malformed_author_note_is_refused_naming_the_metadata_line(metadata, reason):
    with pytest.raises(ChatFileError) as caught:
        parse_chat(_jsonl({**HEADER, "chat_metadata": metadata}, _message()))
    assert caught.value.line == 1 and reason in caught.value.reason


@pytest.mark.parametrize(
    ("interval", "due"),
    [
        (1, [True, True, True, True]),
        (0, [False, False, False, False]),
        (2, [False, True, False, True]),
        (3, [False, False, True, False]),
    ],
)
def test_the_author_note_comes_on_the_player_messages_its_interval_says(interval, due):
    assert [note_due(interval, count) for count in (1, 2, 3, 4)] == due


def test_reasoning_is_read_for_the_message_and_each_swipe():
    line = _message(
        mes="둘",
        swipes=["하나", "둘", "셋"],
        swipe_id=1,
        swipe_info=[{"extra": {"reasoning": "첫 생각"}}, {"extra": {}}, "편집기 값"],
        extra={"reasoning": "두 번째 생각", "api": "openai"},
    )
    (read,) = parse_chat(_jsonl(HEADER, line, _message(extra={"reasoning": "혼자"}))).lines[:1]
    assert read.reasoning == "두 번째 생각"
    # `extra` is the chosen swipe's, whatever its swipe_info says.
    assert read.swipe_reasoning == ("첫 생각", "두 번째 생각", "")
    assert read.alternatives == (("하나", "첫 생각"), ("둘", "두 번째 생각"), ("셋", ""))
    plain = parse_chat(_jsonl(HEADER, _message(extra={"reasoning": "혼자"}))).lines[0]
    assert (plain.reasoning, plain.alternatives) == ("혼자", (("안녕", "혼자"),))


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"extra": "x"}, "'extra' must be an object"),
        ({"extra": {"reasoning": ["생각"]}}, "'reasoning' must be text"),
        ({"extra": {"reasoning": "생" * (MAX_MESSAGE_CHARS + 1)}}, "'reasoning' is"),
        ({"swipes": ["안녕"], "swipe_info": {"extra": {}}}, "'swipe_info' must be a list"),
        ({"swipes": ["안녕"], "swipe_info": [{"extra": {"reasoning": 3}}]}, "must be text"),
    ],
)
def test_malformed_reasoning_is_refused_naming_the_line(fields, reason):
    with pytest.raises(ChatFileError) as caught:
        parse_chat(_jsonl(HEADER, _message(**fields)))
    assert caught.value.line == 2 and reason in caught.value.reason


def test_a_group_chat_is_written_as_sillytavern_writes_group_chats():
    chat = ChatFile(
        user_name="민지",
        character_name="하루",
        created_at=datetime(2025, 11, 23, tzinfo=UTC),
        lines=(
            ChatLine("하루", False, "안녕?", reasoning="먼저 인사"),
            ChatLine("준", False, "왔어?", ("뭐야", "왔어?"), 1, swipe_reasoning=("", "")),
            ChatLine("민지", True, "응"),
        ),
        group=True,
        author_note=AuthorNote("비가 온다.", depth=2, interval=3),
    )
    header, first, second, _ = (json.loads(row) for row in render_chat(chat).split(b"\n"))
    assert header == {
        "chat_metadata": {"note_prompt": "비가 온다.", "note_depth": 2, "note_interval": 3},
        "user_name": "unused",
        "character_name": "unused",
    }
    assert first["extra"] == {"reasoning": "먼저 인사"}
    assert [info["extra"] for info in second["swipe_info"]] == [{}, {}]
    read = parse_chat(render_chat(chat))
    assert read.group and read.lines == chat.lines and read.author_note == chat.author_note


hangul = st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3)
texts = st.text(alphabet=hangul | st.characters(), max_size=40)
names = st.text(alphabet=hangul | st.characters(), max_size=MAX_NAME_CHARS)
dates = st.none() | st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(9998, 12, 31),
    timezones=st.sampled_from([UTC, KST]),
).map(lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000))


@st.composite
def chat_lines(draw: st.DrawFn) -> ChatLine:
    swipes = draw(st.lists(texts, max_size=4))
    swipe_id = draw(st.integers(0, len(swipes) - 1)) if swipes else 0
    reasoning = draw(st.lists(texts, min_size=len(swipes), max_size=len(swipes)))
    return ChatLine(
        reasoning=reasoning[swipe_id] if swipes else draw(texts),
        swipe_reasoning=tuple(reasoning),
        name=draw(names),
        is_user=draw(st.booleans()),
        text=swipes[swipe_id] if swipes else draw(texts),
        swipes=tuple(swipes),
        swipe_id=swipe_id,
        sent_at=draw(dates),
        is_system=draw(st.booleans()),
    )


chats = st.builds(
    ChatFile,
    user_name=names,
    character_name=names,
    created_at=dates,
    lines=st.lists(chat_lines(), max_size=6).map(tuple),
    author_note=st.none()
    | st.builds(
        AuthorNote,
        text=texts.filter(str.strip),
        depth=st.integers(0, MAX_NOTE_NUMBER),
        interval=st.integers(0, MAX_NOTE_NUMBER),
    ),
)


@given(chats)
def test_a_written_chat_reads_back_equal(chat):
    assert parse_chat(render_chat(chat)) == chat
