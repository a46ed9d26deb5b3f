"""`synatra-bot prompt`: print the prompt a card and a history would give the model.

It is the bot's prompt for a scene of this one character and one player (`--user-name`, with
`--persona`): the builder has one layout, so what is shown is what the bot would send. A
channel's lorebook (`--lorebook`, a SillyTavern World Info file), its budget and an author's
note can be added as a channel's settings would; `--seed` fixes the scene's chance macros and
lorebook rolls, so the same command prints the same prompt. Old turns the window leaves
behind are searched, the whole file of them, and the newest message recalls what it refers
to, as the bot recalls from a scene (`--recall-tokens`).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from synatra_bot.errors import SynatraError
from synatra_bot.prompt.builder import BuiltPrompt, HistoryMessage, PromptBuilder, PromptOptions
from synatra_bot.prompt.cards import MAX_JSON_BYTES, MAX_PNG_BYTES, parse_card
from synatra_bot.prompt.lorebook import Lorebook, lorebook_from_character_book
from synatra_bot.prompt.macros import MacroContext
from synatra_bot.prompt.recall import RECALL_PIECE_TOKENS, recall_budget, recall_in
from synatra_bot.prompt.terms import KoreanTerms
from synatra_bot.prompt.world_info import MAX_LOREBOOK_BYTES, parse_lorebook_file
from synatra_bot.settings import (
    AUTHOR_NOTE_DEPTH_RANGE,
    CONTEXT_SIZE_RANGE,
    MAX_NEW_TOKENS_RANGE,
    check_range,
)

MAX_HISTORY_BYTES = 64 * 1024 * 1024


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--card", required=True, type=Path, help="character card (PNG or JSON)")
    parser.add_argument(
        "--history",
        type=Path,
        help='JSON lines: {"role": "user"|"assistant", "name": ..., "content": ...}',
    )
    parser.add_argument("--user-name", default="User", help="the player's name")
    parser.add_argument(
        "--persona", default="", help="the player's persona (before their first message)"
    )
    parser.add_argument("--context", type=int, default=None, help="context window in tokens")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="tokens kept for the reply"
    )
    parser.add_argument(
        "--lorebook",
        type=Path,
        help="the channel's lorebook: SillyTavern World Info (.json) or a card with one",
    )
    parser.add_argument(
        "--lorebook-budget",
        type=int,
        default=None,
        help="tokens lore may take (default: a quarter of the prompt)",
    )
    parser.add_argument(
        "--recall-tokens",
        type=int,
        default=None,
        help="tokens of old turns the newest message recalls (0: off; default 256, at most "
        "an eighth of the context)",
    )
    parser.add_argument("--author-note", default="", help="the channel's author's note")
    parser.add_argument(
        "--author-note-depth", type=int, default=4, help="messages from the end it goes before"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the seed of chance macros ({{pick}}, {{random}}, {{roll}}) and lore rolls",
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead")


def _read_history(path: Path) -> list[HistoryMessage]:
    if path.stat().st_size > MAX_HISTORY_BYTES:
        raise ValueError(f"{path} is larger than {MAX_HISTORY_BYTES} bytes")
    messages = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{number}: not a JSON object")
            role, name, content = obj.get("role"), obj.get("name", ""), obj.get("content")
            if role not in ("user", "assistant"):
                raise ValueError(f"{path}:{number}: role must be 'user' or 'assistant'")
            if not isinstance(content, str) or not isinstance(name, str):
                raise ValueError(f"{path}:{number}: 'name' and 'content' must be text")
            messages.append(HistoryMessage(role, name, content, message_id=number))
    return messages


def _read_lorebook(path: Path) -> Lorebook:
    if path.stat().st_size > MAX_LOREBOOK_BYTES:
        raise ValueError(f"{path} is larger than {MAX_LOREBOOK_BYTES} bytes")
    return lorebook_from_character_book(parse_lorebook_file(path.read_bytes(), filename=path.name))


def run_preview(args: argparse.Namespace, *, default_model_id: str) -> int:
    """Print the assembled prompt (or JSON); on error print one line to stderr and return 2."""
    try:
        card_path: Path = args.card
        if card_path.stat().st_size > max(MAX_PNG_BYTES, MAX_JSON_BYTES):
            raise ValueError(f"{card_path} is larger than {MAX_PNG_BYTES} bytes")
        card = parse_card(card_path.read_bytes(), filename=card_path.name)
        history = _read_history(args.history) if args.history else []
        defaults = PromptOptions()
        context = args.context if args.context is not None else defaults.context_size
        max_new = (
            args.max_new_tokens if args.max_new_tokens is not None else defaults.max_new_tokens
        )
        check_range("--context", context, CONTEXT_SIZE_RANGE)
        check_range("--max-new-tokens", max_new, MAX_NEW_TOKENS_RANGE)
        if args.lorebook_budget is not None:
            check_range("--lorebook-budget", args.lorebook_budget, (0, context))
        if args.recall_tokens is not None:
            check_range("--recall-tokens", args.recall_tokens, (0, context))
        check_range("--author-note-depth", args.author_note_depth, AUTHOR_NOTE_DEPTH_RANGE)
        options = PromptOptions(
            context_size=context,
            max_new_tokens=max_new,
            lorebook_budget=args.lorebook_budget,
            author_note=args.author_note,
            author_note_depth=args.author_note_depth,
        )
        lorebook = _read_lorebook(args.lorebook) if args.lorebook else None

        from synatra_bot.tokenizer import load_tokenizer

        source = args.tokenizer or default_model_id
        try:
            tokenizer = load_tokenizer(source)
        except SynatraError:
            raise
        except Exception as exc:  # transformers raises many kinds for a bad folder or id
            raise ValueError(f"cannot load the tokenizer {source}: {exc}") from None
        builder = PromptBuilder(tokenizer)

        def build() -> BuiltPrompt:
            return builder.build(
                card=card,
                history=history,
                user_name=args.user_name,
                persona=args.persona,
                channel_lorebook=lorebook,
                options=options,
                macro_context=MacroContext(
                    seed=args.seed, rng=random.Random(args.seed), locale="ko"
                ),
            )

        built = build()
        # As the bot does: what the window left behind is searched, the whole file of it.
        options.recall = recall_in(
            history,
            before=built.report.dropped_messages,
            budget=recall_budget(args.recall_tokens, context) - RECALL_PIECE_TOKENS,
            terms=KoreanTerms(),
            count=builder.count_text,
        )
        if options.recall is not None:
            built = build()
    except (SynatraError, OSError, ValueError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"synatra-bot: {message}", file=sys.stderr)
        return 2
    if args.json:
        report = built.report.to_json()
        payload = {
            "prompt": built.text,
            "input_ids": built.input_ids,
            "token_count": built.token_count,
            "budget": built.budget,
            "blocks": report["blocks"],
            "dropped_messages": built.report.dropped_messages,
            "report": report,
        }
        print(json.dumps(payload, ensure_ascii=False))
    else:
        print(built.text)
        print(built.report.to_text(), file=sys.stderr)
    return 0
