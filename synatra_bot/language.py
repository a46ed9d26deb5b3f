"""The language of the command line and the terminal chat: Korean or English.

`--lang ko|en` decides; without it the locale does, read the way POSIX programs read it
(`LC_ALL`, else `LC_MESSAGES`, else `LANG`): a Korean locale (`ko_KR.UTF-8`) gives Korean,
any other English. No locale, or the C/POSIX locale, gives English too, as it gives the
untranslated messages of every gettext program.

`CliParser` is argparse's parser with its own words (usage, section titles, `--help`, parse
errors) in that language too.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NoReturn

Language = Literal["ko", "en"]
LANGUAGES: tuple[Language, ...] = ("ko", "en")
_LOCALE_VARIABLES = ("LC_ALL", "LC_MESSAGES", "LANG")


def language_from_env(environ: Mapping[str, str]) -> Language:
    """The language the locale variables in `environ` name: Korean for a Korean locale."""
    value = next((environ[name] for name in _LOCALE_VARIABLES if environ.get(name)), "")
    return "ko" if value.lower().startswith("ko") else "en"


def language_in(argv: Sequence[str], environ: Mapping[str, str]) -> Language:
    """The language `--lang` in `argv` asks for, else the locale's (read before the parser
    exists, since its help is written in it)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--lang", choices=LANGUAGES, default=None)
    known, _ = early.parse_known_args(list(argv))
    chosen: Language | None = known.lang
    return chosen if chosen is not None else language_from_env(environ)


def choose(language: Language, english: str, korean: str) -> str:
    """`korean` or `english`, as `language` says."""
    return korean if language == "ko" else english


#: argparse's own parse errors (Python's wording) -> Korean.
_PARSE_ERRORS_KO = (
    (re.compile(r"the following arguments are required: (.+)"), r"꼭 필요한 인자가 없어요: \1"),
    (re.compile(r"unrecognized arguments: (.+)"), r"모르는 인자예요: \1"),
    (
        re.compile(r"argument (\S+): invalid choice: (.+) \(choose from (.+)\)"),
        r"\1 인자에 쓸 수 없는 값이에요: \2 (고를 수 있는 값: \3)",
    ),
    (re.compile(r"argument (\S+): expected one argument"), r"\1 인자에는 값이 하나 필요해요"),
    (
        re.compile(r"argument (\S+): invalid (\w+) value: (.+)"),
        r"\1 인자의 값이 \2 형식이 아니에요: \3",
    ),
    (
        re.compile(r"argument (\S+): not allowed with argument (\S+)"),
        r"\1 인자는 \2 인자와 함께 쓸 수 없어요",
    ),
)


class _KoreanHelpFormatter(argparse.HelpFormatter):
    def add_usage(
        self,
        usage: str | None,
        actions: Any,
        groups: Any,
        prefix: str | None = None,
    ) -> None:
        super().add_usage(usage, actions, groups, "사용법: " if prefix is None else prefix)


class CliParser(argparse.ArgumentParser):
    """An argument parser whose help and errors are all in `language`; the parsers of its
    subcommands (`add_command`) are too."""

    def __init__(self, *args: Any, language: Language, **kwargs: Any) -> None:
        if language == "ko":
            kwargs.setdefault("formatter_class", _KoreanHelpFormatter)
        kwargs["add_help"] = False  # its own -h, in `language`
        super().__init__(*args, **kwargs)
        self.language: Language = language
        self._positionals.title = choose(language, "positional arguments", "위치 인자")
        self._optionals.title = choose(language, "options", "옵션")
        self.add_argument(
            "-h",
            "--help",
            action="help",
            help=choose(language, "show this help and exit", "이 도움말을 보여 주고 끝내기"),
        )

    def add_command(
        self,
        commands: argparse._SubParsersAction[CliParser],
        name: str,
        *,
        english: str,
        korean: str,
    ) -> CliParser:
        """A subcommand with its help in this parser's language."""
        command = commands.add_parser(
            name, help=choose(self.language, english, korean), language=self.language
        )
        command.add_language_option(default=argparse.SUPPRESS)  # the top level's stands
        return command

    def add_language_option(self, *, default: Any = None) -> None:
        """`--lang`: it is read before any parser exists (`language_in`); here it is only
        accepted and explained, wherever it is written."""
        self.add_argument(
            "--lang",
            choices=LANGUAGES,
            default=default,
            help=choose(
                self.language,
                "language of messages and help (default: ko for a Korean locale in LC_ALL,"
                " LC_MESSAGES or LANG, else en)",
                "메시지와 도움말의 언어 (기본: LC_ALL, LC_MESSAGES, LANG이 한국어 로캘이면 ko,"
                " 아니면 en)",
            ),
        )

    def error(self, message: str) -> NoReturn:
        if self.language == "ko":
            for pattern, korean in _PARSE_ERRORS_KO:
                if pattern.fullmatch(message):
                    message = pattern.sub(korean, message)
                    break
        self.print_usage(sys.stderr)
        label = choose(self.language, "error", "오류")
        self.exit(2, f"{self.prog}: {label}: {message}\n")
