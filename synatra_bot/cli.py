"""Command line: `synatra-bot [run] | db upgrade|current | prompt | chat | bench | gguf`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from collections.abc import Sequence

from synatra_bot import eventloop
from synatra_bot.errors import ConfigError, EngineError, StorageError
from synatra_bot.language import CliParser, Language, choose, language_in


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("synatra-bot")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser(language: Language = "ko") -> CliParser:
    """The whole command line, its help in `language`."""
    parser = CliParser(
        prog="synatra-bot",
        description=choose(
            language,
            "Discord roleplay bot for Synatra-7B-v0.3-RP.",
            "Synatra-7B-v0.3-RP로 롤플레이하는 디스코드 봇.",
        ),
        language=language,
    )
    parser.add_argument(
        "--env-file",
        default=None,
        help=choose(
            language,
            "settings file (default: .env, when there is one)",
            "설정 파일 (기본: 있으면 .env)",
        ),
    )
    parser.add_language_option()
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {_version()}",
        help=choose(language, "show the version and exit", "버전을 보여 주고 끝내기"),
    )
    commands = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        help=choose(language, "what to do (default: run)", "할 일 (기본: run)"),
    )
    parser.add_command(
        commands,
        "run",
        english="run the Discord bot (the default)",
        korean="디스코드 봇 실행 (기본)",
    )

    db = parser.add_command(
        commands, "db", english="manage the database schema", korean="데이터베이스 스키마 관리"
    )
    db_commands = db.add_subparsers(
        dest="db_command",
        metavar="ACTION",
        required=True,
        help=choose(language, "upgrade or current", "upgrade 또는 current"),
    )
    db.add_command(
        db_commands, "upgrade", english="apply pending migrations", korean="남은 마이그레이션 적용"
    )
    db.add_command(
        db_commands, "current", english="show the schema revision", korean="스키마 리비전 보기"
    )

    from synatra_bot.engine import bench, gguf_convert
    from synatra_bot.prompt import preview
    from synatra_bot.terminal import chat as terminal

    terminal.configure_parser(
        parser.add_command(
            commands,
            "chat",
            english="roleplay with a character in the terminal",
            korean="터미널에서 캐릭터와 롤플레이",
        ),
        language=language,
    )
    preview.configure_parser(
        parser.add_command(
            commands,
            "prompt",
            english="print the prompt assembled for a card and history",
            korean="카드와 대화 기록으로 만든 프롬프트 출력",
        ),
        language=language,
    )
    bench.configure_parser(
        parser.add_command(
            commands,
            "bench",
            english="benchmark the embedded engine against generate()",
            korean="내장 엔진을 generate()와 비교해 벤치마크",
        ),
        language=language,
    )
    gguf_convert.configure_parser(
        parser.add_command(
            commands,
            "gguf",
            english="convert MODEL_ID to a GGUF for ENGINE=llamacpp",
            korean="ENGINE=llamacpp에 쓸 GGUF로 MODEL_ID 변환",
        ),
        language=language,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    language = language_in(arguments, os.environ)
    parser = build_parser(language)
    args = parser.parse_args(arguments)
    args.lang = language
    command = args.command or "run"
    try:
        if command == "run":
            from synatra_bot.app import run_bot

            return run_bot(env_file=args.env_file)
        if command == "db":
            return asyncio.run(_db(args))
        if command == "prompt":
            from synatra_bot.prompt.preview import run_preview
            from synatra_bot.settings import load_settings

            model_id = load_settings(env_file=args.env_file, require_token=False).model_id
            return run_preview(args, default_model_id=model_id)
        if command == "chat":
            from synatra_bot.settings import load_settings
            from synatra_bot.terminal.chat import run_chat

            settings = load_settings(env_file=args.env_file, require_token=False)
            code = eventloop.run(
                run_chat(args, settings=settings, language=language), kind=settings.event_loop
            )
            # The chat closed what it opened (the reply, the engine, the database, the log);
            # what is left is the interpreter freeing the model and its libraries, seconds
            # the player would wait at a dead prompt. Hand the terminal back now.
            sys.stdout.flush()
            sys.stderr.flush()
            logging.shutdown()
            os._exit(code)
        if command == "gguf":
            from synatra_bot.engine.gguf_convert import run_convert
            from synatra_bot.settings import load_settings

            model_id = load_settings(env_file=args.env_file, require_token=False).model_id
            return run_convert(args, default_model_id=model_id)
        if command == "bench":
            from synatra_bot.engine.bench import run_bench

            return run_bench(args)
    except ConfigError as exc:
        print(f"synatra-bot: {config_problem(exc, language)}", file=sys.stderr)
        return 2
    except StorageError as exc:
        problem = choose(language, "the database failed", "데이터베이스 문제")
        print(f"synatra-bot: {problem}: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        problem = choose(language, "the engine could not start", "엔진을 시작할 수 없어요")
        print(f"synatra-bot: {problem}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(choose(language, f"unknown command {command}", f"모르는 명령이에요: {command}"))


#: The settings' problems (`ConfigError.problem`, English) -> Korean; one not listed is shown
#: as it is, behind a Korean frame.
_SETTING_PROBLEMS_KO = tuple(
    (re.compile(pattern), korean)
    for pattern, korean in (
        (
            r"not set\. Create a bot at (\S+), copy its token, and put (\S+) in \.env"
            r" \(see \.env\.example\) or the environment\.",
            r"설정되지 않았어요. \1 에서 봇을 만들고 토큰을 복사해서 .env(.env.example 참고)나"
            r" 환경 변수에 \2 로 넣어 주세요.",
        ),
        (r"must be a whole number, got (.+)", r"정수여야 해요 (받은 값: \1)"),
        (r"must be a number, got (.+)", r"숫자여야 해요 (받은 값: \1)"),
        (r"must be between (\S+) and (\S+), got (.+)", r"\1에서 \2 사이여야 해요 (받은 값: \3)"),
        (r"must be one of (.+), got (.+)", r"다음 중 하나여야 해요: \1 (받은 값: \2)"),
        (r"must be a SQLAlchemy URL, got (.+)", r"SQLAlchemy URL이어야 해요 (받은 값: \1)"),
        (
            r"required when ENGINE=openai, e\.g\. (\S+)",
            r"ENGINE=openai 이면 꼭 필요해요 (예: \1)",
        ),
        (
            r"must start with http:// or https://, got (.+)",
            r"http:// 또는 https:// 로 시작해야 해요 (받은 값: \1)",
        ),
        (
            r"must be below half of CONTEXT_SIZE \((\d+)\)",
            r"CONTEXT_SIZE(\1)의 절반보다 작아야 해요",
        ),
        (r"no such file: (.+)", r"그런 파일이 없어요: \1"),
        (
            r"unsupported database (\S+) \(use (.+)\)",
            r"지원하지 않는 데이터베이스예요: \1 (\2 중에서)",
        ),
        (
            r"(\S+) is not an asynchronous driver: use (\S+)",
            r"\1 는 비동기 드라이버가 아니에요: \2 를 쓰세요",
        ),
    )
)


def config_problem(error: ConfigError, language: Language) -> str:
    """A settings error as the command line says it: the setting, then what is wrong."""
    if language == "en":
        return str(error)
    for pattern, korean in _SETTING_PROBLEMS_KO:
        if pattern.fullmatch(error.problem):
            return f"{error.setting}: {pattern.sub(korean, error.problem)}"
    return f"{error.setting}: 설정 값이 잘못됐어요 ({error.problem})"


async def _db(args: argparse.Namespace) -> int:
    from synatra_bot.settings import load_settings
    from synatra_bot.storage.migrate import current_revision, head_revision, upgrade_database

    language: Language = args.lang
    settings = load_settings(env_file=args.env_file, require_token=False)
    empty = choose(language, "empty", "비어 있음")
    if args.db_command == "upgrade":
        before, after = await upgrade_database(settings.database_url)
        if before == after:
            print(
                choose(
                    language,
                    f"database is up to date at revision {after}",
                    f"데이터베이스가 최신이에요 (리비전 {after})",
                )
            )
        else:
            print(
                choose(
                    language,
                    f"database upgraded from {before or empty} to {after}",
                    f"데이터베이스를 {before or empty}에서 {after}(으)로 올렸어요",
                )
            )
        return 0
    revision = await current_revision(settings.database_url)
    head = head_revision(settings.database_url)
    if revision == head:
        state = choose(language, "up to date", "최신")
    else:
        state = choose(language, f"latest is {head}", f"최신은 {head}")
    print(f"{revision or empty} ({state})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
