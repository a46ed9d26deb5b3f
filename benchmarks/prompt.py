"""Prompt assembly speed: a session of 10,000 stored Korean messages, 4096-token context.

Run: python -m benchmarks.prompt [--messages N] [--turns N]

Rows:
- cached: stored per-message counts, one long-lived PromptBuilder (its bounded id cache is warm),
  the previous turn's history_start_id passed back: the bot's steady state.
- cached, cold builder: stored counts, but a new PromptBuilder each turn (kept window re-encoded).
- re-tokenise whole history: no stored counts and no cache: every stored message is counted
  with the tokenizer each turn (what a builder without a count cache must do), then assembled.
- players named: the warm row with the three players and their personas named (as the core
  builds a scene); the other rows name none, so their one player is 준 without a persona.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from synatra_bot.prompt.builder import HistoryMessage, PromptBuilder, PromptOptions, ScenePlayer
from synatra_bot.prompt.cards import CharacterCard, SpeechLevel
from synatra_bot.prompt.lorebook import Lorebook, LoreEntry
from synatra_bot.tokenizer import load_tokenizer

PLAYERS = [
    ScenePlayer(1, "준", "{{user}}는 호기심 많은 대학생이다."),
    ScenePlayer(2, "하늘", "{{user}}는 말수가 적은 사진가다."),
    ScenePlayer(3, "지우", "{{user}}는 도서관 단골이다."),
]
SENTENCES = [
    "오늘은 날씨가 정말 좋네요.",
    "민지는 창밖을 바라보며 조용히 한숨을 쉬었다.",
    "커피 한 잔 더 하실래요?",
    "그 책, 어디까지 읽었어?",
    "*준은 웃으며 고개를 끄덕였다.*",
    "비가 오기 전에 서둘러 돌아가자.",
    "도서관 뒤편의 작은 정원에서 기다릴게요.",
    "그건 비밀이야. 아직은 말해 줄 수 없어.",
]


def _history(count: int, seed: int = 0) -> list[HistoryMessage]:
    rng = random.Random(seed)
    messages = []
    for index in range(count):
        text = " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 6)))
        role = "user" if index % 2 == 0 else "assistant"
        player = rng.choice(PLAYERS) if role == "user" else None
        name = player.name if player else "민지"
        author = player.author_id if player else None
        messages.append(HistoryMessage(role, name, text, message_id=index + 1, author_id=author))
    return messages


def _card() -> CharacterCard:
    return CharacterCard(
        name="민지",
        description="{{char}}는 서울의 작은 도서관에서 일하는 사서다. " * 12,
        personality="조용하고 다정하지만 장난기가 있다.",
        scenario="{{user}}는 매일 저녁 도서관에 들른다.",
        example_messages="<START>\n{{user}}: 안녕하세요\n{{char}}: 어서 오세요!",
        post_history_instructions="{{char}}로서 2~4문장으로 답하라.",
        speech_level=SpeechLevel.FORMAL,
        character_book={
            "entries": [
                {"keys": ["도서관"], "content": "도서관은 1920년대에 지어졌다."},
                {"keys": ["정원"], "content": "정원에는 오래된 은행나무가 있다."},
            ]
        },
    )


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return p50 * 1000, p95 * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--slow-turns", type=int, default=10)
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: test one)")
    args = parser.parse_args()

    if args.tokenizer is None:
        from tests.model_fixtures import write_tokenizer

        folder = Path(tempfile.mkdtemp(prefix="synatra-tokenizer-"))
        tokenizer = load_tokenizer(write_tokenizer(folder))
    else:
        tokenizer = load_tokenizer(args.tokenizer)

    card = _card()
    book = Lorebook([LoreEntry(keys=["비"], content="이 도시는 비가 자주 온다.")])
    total = args.messages + args.turns
    history = _history(total)
    counter = PromptBuilder(tokenizer)
    stored = [
        HistoryMessage(
            m.role, m.name, m.content, counter.count_message(m), m.message_id, m.author_id
        )
        for m in history
    ]
    raw = [HistoryMessage(m.role, m.name, m.content, None, m.message_id) for m in history]

    def run(
        label: str,
        turns: int,
        make_builder,
        messages,
        warm: bool,
        recount: bool = False,
        named: bool = False,
    ) -> tuple[str, list[float]]:
        players = {"players": PLAYERS, "scene_user_name": "준"} if named else {}
        builder = make_builder()
        start_id = None
        samples = []
        first = args.messages - (turns if not warm else 0)
        # Warm-up turn so the steady state starts with a cache and a start id.
        warm_built = builder.build(
            card=card,
            history=messages[:first],
            user_name="준",
            channel_lorebook=book,
            options=PromptOptions(),
            **players,
        )
        start_id = warm_built.history_start_id
        trims = 0
        for turn in range(turns):
            end = first + turn + 1
            if not warm:
                builder = make_builder()
            began = time.perf_counter()
            if recount:
                counts = [builder.count_message(m) for m in messages[:end]]
                assert len(counts) == end
            built = builder.build(
                card=card,
                history=messages[:end],
                user_name="준",
                channel_lorebook=book,
                options=PromptOptions(history_start_id=start_id),
                **players,
            )
            samples.append(time.perf_counter() - began)
            trims += built.report.trimmed_this_turn
            start_id = built.history_start_id
            assert built.token_count <= built.budget
        return f"{label} ({turns} turns, {trims} trims)", samples

    def make() -> PromptBuilder:
        return PromptBuilder(tokenizer)

    rows = [
        run("cached counts, warm builder", args.turns, make, stored, True),
        run("cached counts, cold builder", args.turns // 4, make, stored, False),
        run("re-tokenise whole history each turn", args.slow_turns, make, raw, False, True),
        run(
            "cached counts, warm builder, players named", args.turns, make, stored, True, named=True
        ),
    ]
    print(f"history: {args.messages} stored messages, context 4096, max new 300")
    print(f"{'mode':<66} {'p50 ms':>9} {'p95 ms':>9}")
    results = []
    for label, samples in rows:
        p50, p95 = _percentiles(samples)
        results.append((p50, p95))
        print(f"{label:<66} {p50:>9.2f} {p95:>9.2f}")
    base = results[0]
    slow = results[2]
    print(f"re-tokenise / cached: p50 x{slow[0] / base[0]:.0f}, p95 x{slow[1] / base[1]:.0f}")


if __name__ == "__main__":
    main()
