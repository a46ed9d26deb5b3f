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
from synatra_bot.language import Language, choose
from synatra_bot.prompt.builder import BuiltPrompt, PromptBuilder, PromptOptions
from synatra_bot.prompt.cards import MAX_JSON_BYTES, MAX_PNG_BYTES, parse_card
from synatra_bot.prompt.history import HistoryMessage
from synatra_bot.prompt.lorebook import (
    DEFAULT_RECURSION_STEPS,
    Lorebook,
    lorebook_from_character_book,
)
from synatra_bot.prompt.macros import MacroContext
from synatra_bot.prompt.recall import RECALL_PIECE_TOKENS, recall_budget, recall_in
from synatra_bot.prompt.terms import KoreanTerms
from synatra_bot.prompt.vectors import Vector, from_blob, to_blob
from synatra_bot.prompt.world_info import MAX_LOREBOOK_BYTES, parse_lorebook_file
from synatra_bot.settings import (
    AUTHOR_NOTE_DEPTH_RANGE,
    CONTEXT_SIZE_RANGE,
    MAX_NEW_TOKENS_RANGE,
    check_range,
)

MAX_HISTORY_BYTES = 64 * 1024 * 1024
#: Messages embedded in one request, and how long one may take, with `--embeddings-url`.
PREVIEW_EMBED_BATCH = 32
PREVIEW_EMBED_TIMEOUT_S = 120.0


def configure_parser(parser: argparse.ArgumentParser, *, language: Language = "en") -> None:
    """Add the preview's options to `parser`, their help in `language`."""

    def say(english: str, korean: str) -> str:
        return choose(language, english, korean)

    parser.add_argument(
        "--card",
        required=True,
        type=Path,
        help=say("character card (PNG or JSON)", "캐릭터 카드 (PNG 또는 JSON)"),
    )
    parser.add_argument(
        "--history",
        type=Path,
        help=say(
            'JSON lines: {"role": "user"|"assistant", "name": ..., "content": ...}',
            "대화 기록, 한 줄에 JSON 하나:"
            ' {"role": "user"|"assistant", "name": ..., "content": ...}',
        ),
    )
    parser.add_argument(
        "--user-name", default="User", help=say("the player's name", "플레이어 이름")
    )
    parser.add_argument(
        "--persona",
        default="",
        help=say(
            "the player's persona (before their first message)",
            "플레이어 페르소나 (첫 메시지 앞에 들어가요)",
        ),
    )
    parser.add_argument(
        "--context",
        type=int,
        default=None,
        help=say("context window in tokens", "컨텍스트 크기 (토큰)"),
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=say("tokens kept for the reply", "답장을 위해 남겨 두는 토큰"),
    )
    parser.add_argument(
        "--lorebook",
        type=Path,
        help=say(
            "the channel's lorebook: SillyTavern World Info (.json) or a card with one",
            "채널 로어북: SillyTavern 월드 인포(.json) 또는 로어북이 든 카드",
        ),
    )
    parser.add_argument(
        "--lorebook-budget",
        type=int,
        default=None,
        help=say(
            "tokens lore may take (default: a quarter of the prompt)",
            "로어가 쓸 수 있는 토큰 (기본: 프롬프트의 4분의 1)",
        ),
    )
    parser.add_argument(
        "--recall-tokens",
        type=int,
        default=None,
        help=say(
            "tokens of old turns the newest message recalls (0: off; default 256, at most "
            "an eighth of the context)",
            "최근 메시지가 떠올리는 옛 턴의 토큰 수 (0: 끔, 기본 256, 컨텍스트의 8분의 1까지)",
        ),
    )
    parser.add_argument(
        "--embeddings-url",
        default="",
        help=say(
            "an OpenAI-compatible /v1/embeddings server: recall by meaning too, as the bot "
            "does with EMBEDDINGS_URL",
            "OpenAI 호환 /v1/embeddings 서버: 봇의 EMBEDDINGS_URL처럼 의미로도 떠올림",
        ),
    )
    parser.add_argument(
        "--embeddings-model",
        default="",
        help=say(
            "the model's name on that server (EMBEDDINGS_MODEL)",
            "그 서버의 모델 이름 (EMBEDDINGS_MODEL)",
        ),
    )
    parser.add_argument(
        "--author-note",
        default="",
        help=say("the channel's author's note", "채널의 작가 노트"),
    )
    parser.add_argument(
        "--author-note-depth",
        type=int,
        default=4,
        help=say(
            "messages from the end it goes before",
            "작가 노트가 들어갈 위치 (끝에서 몇 번째 메시지 앞)",
        ),
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help=say(
            "the seed of chance macros ({{pick}}, {{random}}, {{roll}}) and lore rolls",
            "우연 매크로({{pick}}, {{random}}, {{roll}})와 로어 확률의 시드",
        ),
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help=say("tokenizer folder (default: the model's)", "토크나이저 폴더 (기본: 모델의 것)"),
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help=say("print a JSON object instead", "대신 JSON 객체로 출력"),
    )


class _Refused(ValueError):
    """A file or option the preview cannot use, said in English and in Korean."""

    def __init__(self, english: str, korean: str) -> None:
        super().__init__(english)
        self.korean = korean


def _read_history(path: Path) -> list[HistoryMessage]:
    if path.stat().st_size > MAX_HISTORY_BYTES:
        raise _Refused(
            f"{path} is larger than {MAX_HISTORY_BYTES} bytes",
            f"{path} 파일이 {MAX_HISTORY_BYTES}바이트보다 커요",
        )
    messages = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _Refused(
                    f"{path}:{number}: invalid JSON ({exc.msg})",
                    f"{path}:{number}: 올바른 JSON이 아니에요 ({exc.msg})",
                ) from None
            if not isinstance(obj, dict):
                raise _Refused(
                    f"{path}:{number}: not a JSON object",
                    f"{path}:{number}: JSON 객체가 아니에요",
                )
            role, name, content = obj.get("role"), obj.get("name", ""), obj.get("content")
            if role not in ("user", "assistant"):
                raise _Refused(
                    f"{path}:{number}: role must be 'user' or 'assistant'",
                    f"{path}:{number}: role은 'user'나 'assistant'여야 해요",
                )
            if not isinstance(content, str) or not isinstance(name, str):
                raise _Refused(
                    f"{path}:{number}: 'name' and 'content' must be text",
                    f"{path}:{number}: 'name'과 'content'는 글이어야 해요",
                )
            messages.append(HistoryMessage(role, name, content, message_id=number))
    return messages


def _read_lorebook(path: Path) -> Lorebook:
    if path.stat().st_size > MAX_LOREBOOK_BYTES:
        raise _Refused(
            f"{path} is larger than {MAX_LOREBOOK_BYTES} bytes",
            f"{path} 파일이 {MAX_LOREBOOK_BYTES}바이트보다 커요",
        )
    return lorebook_from_character_book(parse_lorebook_file(path.read_bytes(), filename=path.name))


def run_preview(args: argparse.Namespace, *, default_model_id: str) -> int:
    """Print the assembled prompt (or JSON); on error print one line to stderr and return 2.
    Errors and the report are in the command line's language (`args.lang`)."""
    language: Language = getattr(args, "lang", "en")
    try:
        card_path: Path = args.card
        if card_path.stat().st_size > max(MAX_PNG_BYTES, MAX_JSON_BYTES):
            raise _Refused(
                f"{card_path} is larger than {MAX_PNG_BYTES} bytes",
                f"{card_path} 파일이 {MAX_PNG_BYTES}바이트보다 커요",
            )
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
        if args.embeddings_url and not args.embeddings_model:
            raise _Refused(
                "--embeddings-url needs --embeddings-model",
                "--embeddings-url에는 --embeddings-model도 필요해요",
            )
        check_range("--author-note-depth", args.author_note_depth, AUTHOR_NOTE_DEPTH_RANGE)
        options = PromptOptions(
            context_size=context,
            max_new_tokens=max_new,
            lorebook_budget=args.lorebook_budget,
            author_note=args.author_note,
            author_note_depth=args.author_note_depth,
            # As a server that left recursive scanning at its default.
            lorebook_recursion=DEFAULT_RECURSION_STEPS,
        )
        lorebook = _read_lorebook(args.lorebook) if args.lorebook else None

        from synatra_bot.tokenizer import load_tokenizer

        source = args.tokenizer or default_model_id
        try:
            tokenizer = load_tokenizer(source)
        except SynatraError:
            raise
        except Exception as exc:  # transformers raises many kinds for a bad folder or id
            raise _Refused(
                f"cannot load the tokenizer {source}: {exc}",
                f"토크나이저 {source}를 불러올 수 없어요: {exc}",
            ) from None
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
        budget = recall_budget(args.recall_tokens, context) - RECALL_PIECE_TOKENS
        dropped = built.report.dropped_messages
        vectors = None
        if args.embeddings_url and dropped > 0 and budget > 0:
            vectors = _embedded(args, [*history[:dropped], history[-1]], language)
            if vectors is not None:  # the dropped turns', then the newest message's
                vectors = [*vectors[:-1], *([vectors[-1]] * (len(history) - dropped))]
        options.recall = recall_in(
            history,
            before=dropped,
            budget=budget,
            terms=KoreanTerms(),
            count=builder.count_text,
            vectors=vectors,
        )
        if options.recall is not None:
            built = build()
    except (SynatraError, OSError, ValueError) as exc:
        detail = exc.korean if isinstance(exc, _Refused) and language == "ko" else str(exc)
        message = " ".join(detail.split()) or type(exc).__name__
        if language == "ko":
            message = f"프롬프트를 만들 수 없어요: {message}"
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
        print(built.report.to_text(korean=language == "ko"), file=sys.stderr)
    return 0


def _embedded(
    args: argparse.Namespace, messages: list[HistoryMessage], language: Language
) -> list[Vector] | None:
    """Each message's vector from `--embeddings-url`; None (said on stderr: recall by words
    only, as the bot falls back) when the server gives none."""
    import asyncio

    from synatra_bot.engine.embeddings import EmbeddingsClient, EmbeddingsUnavailable

    async def embed_all() -> list[list[float]]:
        client = EmbeddingsClient(args.embeddings_url, model=args.embeddings_model)
        try:
            vectors: list[list[float]] = []
            for start in range(0, len(messages), PREVIEW_EMBED_BATCH):
                batch = [m.content for m in messages[start : start + PREVIEW_EMBED_BATCH]]
                vectors += await client.embed(batch, timeout_s=PREVIEW_EMBED_TIMEOUT_S)
            return vectors
        finally:
            await client.close()

    try:
        return [from_blob(to_blob(vector)) for vector in asyncio.run(embed_all())]
    except EmbeddingsUnavailable as error:
        print(
            choose(
                language,
                f"synatra-bot: the embeddings server gave no vectors ({error}): "
                "recalling by words only",
                f"synatra-bot: 임베딩 서버가 벡터를 주지 않았어요 ({error}): 단어로만 떠올려요",
            ),
            file=sys.stderr,
        )
        return None
