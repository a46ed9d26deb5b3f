"""Command line: `synatra-bot [run] | db upgrade|current | prompt | chat | bench | gguf`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from synatra_bot import eventloop
from synatra_bot.errors import ConfigError, EngineError, StorageError


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("synatra-bot")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synatra-bot", description="Discord roleplay bot for Synatra-7B-v0.3-RP."
    )
    parser.add_argument(
        "--env-file", default=None, help="settings file (default: .env, when there is one)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="run the Discord bot (the default)")

    db = commands.add_parser("db", help="manage the database schema")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    db_commands.add_parser("upgrade", help="apply pending migrations")
    db_commands.add_parser("current", help="show the schema revision")

    from synatra_bot.engine import bench, gguf_convert
    from synatra_bot.prompt import preview
    from synatra_bot.terminal import chat as terminal

    terminal.configure_parser(
        commands.add_parser("chat", help="roleplay with a character in the terminal")
    )
    preview.configure_parser(
        commands.add_parser("prompt", help="print the prompt assembled for a card and history")
    )
    bench.configure_parser(
        commands.add_parser("bench", help="benchmark the embedded engine against generate()")
    )
    gguf_convert.configure_parser(
        commands.add_parser("gguf", help="convert MODEL_ID to a GGUF for ENGINE=llamacpp")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
            return eventloop.run(run_chat(args, settings=settings), kind=settings.event_loop)
        if command == "gguf":
            from synatra_bot.engine.gguf_convert import run_convert
            from synatra_bot.settings import load_settings

            model_id = load_settings(env_file=args.env_file, require_token=False).model_id
            return run_convert(args, default_model_id=model_id)
        if command == "bench":
            from synatra_bot.engine.bench import run_bench

            return run_bench(args)
    except (ConfigError, StorageError) as exc:
        print(f"synatra-bot: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"synatra-bot: the engine could not start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {command}")
    return 2


async def _db(args: argparse.Namespace) -> int:
    from synatra_bot.settings import load_settings
    from synatra_bot.storage.migrate import current_revision, head_revision, upgrade_database

    settings = load_settings(env_file=args.env_file, require_token=False)
    if args.db_command == "upgrade":
        before, after = await upgrade_database(settings.database_url)
        if before == after:
            print(f"database is up to date at revision {after}")
        else:
            print(f"database upgraded from {before or 'empty'} to {after}")
        return 0
    revision = await current_revision(settings.database_url)
    head = head_revision(settings.database_url)
    state = "up to date" if revision == head else f"latest is {head}"
    print(f"{revision or 'empty'} ({state})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
