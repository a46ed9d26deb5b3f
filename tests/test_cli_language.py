"""The command line speaks Korean or English: `--lang`, else the locale; help and errors too."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from synatra_bot.cli import build_parser, config_problem, main
from synatra_bot.errors import ConfigError
from synatra_bot.language import language_from_env, language_in
from synatra_bot.settings import TOKEN_HELP

ROOT = Path(__file__).resolve().parents[1]
HANGUL = re.compile(r"[\uac00-\ud7a3]")


def every_parser(parser: argparse.ArgumentParser):
    """`parser` and the parsers of all its subcommands, with their names."""
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from every_parser(sub)


def help_texts(parser: argparse.ArgumentParser):
    """Every help text the parser tree shows: descriptions, options, subcommands."""
    for prog, each in every_parser(parser):
        if each.description:
            yield prog, "description", each.description
        for action in each._actions:
            if action.help and action.help != argparse.SUPPRESS:
                yield prog, "/".join(action.option_strings) or action.dest, action.help
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    yield prog, choice.dest, choice.help


def test_every_help_text_is_in_korean() -> None:
    english_only = [
        (prog, name, text)
        for prog, name, text in help_texts(build_parser("ko"))
        if not HANGUL.search(text)
    ]
    assert not english_only


def test_every_option_has_help_in_both_languages() -> None:
    korean = {(prog, name) for prog, name, _ in help_texts(build_parser("ko"))}
    english = list(help_texts(build_parser("en")))
    assert korean == {(prog, name) for prog, name, _ in english}
    assert not [text for _, _, text in english if HANGUL.search(text)]
    for prog, each in every_parser(build_parser("en")):
        for action in each._actions:
            assert action.help, (prog, action.option_strings or action.dest)


def test_korean_help_has_korean_headings(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--lang", "ko", "chat", "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert out.startswith("사용법: synatra-bot chat") and "옵션:" in out
    assert "이 도움말을 보여 주고 끝내기" in out and "--user-name" in out
    assert "usage:" not in out and "show this help" not in out


def test_lang_is_accepted_after_the_command_too(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["chat", "--lang", "en", "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: synatra-bot chat")
    args = build_parser("en").parse_args(["chat", "--character", "세라", "--lang", "ko"])
    assert args.lang == "ko" and args.character == ["세라"]
    assert build_parser("en").parse_args(["--lang", "ko", "chat", "--character", "a"]).lang == "ko"


def test_a_missing_argument_is_said_in_korean(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--lang", "ko", "chat"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert "synatra-bot chat: 오류: 꼭 필요한 인자가 없어요: --character" in err


@pytest.mark.parametrize(
    ("environ", "language"),
    [
        ({"LANG": "ko_KR.UTF-8"}, "ko"),
        ({"LANG": "en_US.UTF-8"}, "en"),
        ({"LANG": "en_US.UTF-8", "LC_MESSAGES": "ko_KR.UTF-8"}, "ko"),
        ({"LANG": "ko_KR.UTF-8", "LC_ALL": "en_GB.UTF-8"}, "en"),
        ({"LANG": "ko_KR.UTF-8", "LC_ALL": ""}, "ko"),
        ({"LANG": "C.UTF-8"}, "en"),
        ({}, "en"),
    ],
)
def test_the_locale_picks_the_language(environ, language) -> None:
    assert language_from_env(environ) == language


def test_lang_beats_the_locale() -> None:
    assert language_in(["--lang", "ko", "db", "current"], {"LANG": "en_US.UTF-8"}) == "ko"
    assert language_in(["chat", "--lang=en"], {"LC_ALL": "ko_KR.UTF-8"}) == "en"
    assert language_in(["chat"], {"LC_ALL": "ko_KR.UTF-8"}) == "ko"


def test_a_korean_locale_gets_korean_help_from_the_command(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "synatra_bot.cli", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "PYTHONPATH": str(ROOT),
            "LANG": "ko_KR.UTF-8",
        },
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("사용법: synatra-bot")
    assert "터미널에서 캐릭터와 롤플레이" in result.stdout


def test_a_bad_setting_is_said_in_korean(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "synatra_bot.cli", "--lang", "ko", "db", "current"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": "oracle://bot@127.0.0.1/synatra",
        },
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("synatra-bot: DATABASE_URL: 지원하지 않는 데이터베이스예요: ")


@pytest.mark.parametrize(
    ("setting", "problem", "korean"),
    [
        (
            "DISCORD_TOKEN",
            TOKEN_HELP.removeprefix("DISCORD_TOKEN: "),
            "DISCORD_TOKEN: 설정되지 않았어요. https://discord.com/developers/applications 에서",
        ),
        ("CONTEXT_SIZE", "must be a whole number, got '많이'", "CONTEXT_SIZE: 정수여야 해요"),
        ("TEMPERATURE", "must be between 0 and 2, got 5.0", "TEMPERATURE: 0에서 2 사이여야 해요"),
        ("--env-file", "no such file: 없는.env", "--env-file: 그런 파일이 없어요: 없는.env"),
        ("SHARD_IDS", "needs SHARD_COUNT (the total over every process)", "SHARD_IDS: 설정 값이"),
    ],
)
def test_setting_problems_are_said_in_korean(setting, problem, korean) -> None:
    error = ConfigError(setting, problem)
    assert config_problem(error, "ko").startswith(korean)
    assert config_problem(error, "en") == str(error)
