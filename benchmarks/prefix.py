"""Prompt prefix reuse: how much of each turn's prompt starts with the previous turn's prompt.

Run: python -m benchmarks.prefix [--turns 50] [--tokenizer FOLDER]

The scene: two characters (민지 with a card lorebook, 서준), two players (준, 하늘) who take turns
and address the characters in turn, a channel lorebook with a constant entry, and replies of
3 to 7 Korean sentences (tests/prompt_helpers.py, seeded). Every turn is built as the core
builds it: the addressed character answers the player who just spoke, with the previous turn's
history_start_id passed back. Reuse = ids the new prompt shares at its start with the previous
prompt / the previous prompt's length (1.0: the engine can reuse all of the previous prompt).

Rows: the scene (cast, players, scene_user_name given) with a context where nothing trims and
with 4096; the same with an author's note at depth 4; and with 4096 and old turns recalled
into each prompt (the newest message's search over the turns before the window).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from synatra_bot.prompt.builder import BuiltPrompt, HistoryMessage, PromptBuilder
from synatra_bot.prompt.recall import RecallBlock, recall_in
from synatra_bot.prompt.terms import KoreanTerms
from synatra_bot.tokenizer import load_tokenizer
from tests.prompt_helpers import SceneTurn, play_scene, prefix_reuse, scene_turns

LARGE_CONTEXT = 32768


@dataclass(frozen=True)
class Case:
    label: str
    context: int
    author_note: str = ""
    #: Tokens of old turns recalled into each prompt (0: none).
    recall_tokens: int = 0


CASES = [
    Case("scene", LARGE_CONTEXT),
    Case("scene", 4096),
    Case("scene, author's note depth 4", LARGE_CONTEXT, "긴장감을 유지하라."),
    Case("scene, author's note depth 4", 4096, "긴장감을 유지하라."),
    Case("scene, recall 256 tokens", 4096, recall_tokens=256),
]


def play(builder: PromptBuilder, case: Case, turns: list[SceneTurn]) -> list[BuiltPrompt]:
    terms = KoreanTerms()

    def recall(history: list[HistoryMessage], start_id: int | None) -> RecallBlock | None:
        # As the core asks: the turns before the previous prompt's start are searched.
        before = next((i for i, m in enumerate(history) if m.message_id == start_id), 0)
        return recall_in(
            history, before=before, budget=case.recall_tokens, terms=terms, count=builder.count_text
        )

    return play_scene(
        builder,
        turns,
        context_size=case.context,
        author_note=case.author_note,
        recall=recall if case.recall_tokens else None,
    )


def summary(values: list[float]) -> str:
    if not values:
        return f"{'-':>6} {'-':>7} {'-':>7} {'-':>7}"
    return (
        f"{len(values):>6} {min(values):>7.3f} {statistics.median(values):>7.3f} "
        f"{statistics.fmean(values):>7.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: test one)")
    args = parser.parse_args()

    if args.tokenizer is None:
        from tests.model_fixtures import write_tokenizer

        folder = Path(tempfile.mkdtemp(prefix="synatra-tokenizer-"))
        tokenizer = load_tokenizer(write_tokenizer(folder))
    else:
        tokenizer = load_tokenizer(args.tokenizer)
    turns = scene_turns(args.turns)

    print(
        f"{args.turns} turns, 2 players, 2 characters, lorebooks; reuse = shared start / "
        "previous prompt"
    )
    print(
        f"{'case':<44} {'context':>7} {'tokens':>7} | {'kept':>6} {'min':>7} {'median':>7} "
        f"{'mean':>7} | {'trims':>6} {'min':>7} {'median':>7} {'mean':>7}"
    )
    for case in CASES:
        built = play(PromptBuilder(tokenizer), case, turns)
        kept = [prefix_reuse(a, b) for a, b in pairwise(built) if not b.report.trimmed_this_turn]
        trimmed = [prefix_reuse(a, b) for a, b in pairwise(built) if b.report.trimmed_this_turn]
        if case.recall_tokens:
            with_block = sum(1 for b in built if b.report.recall)
            print(f"  (recall: a block in {with_block} of {len(built)} prompts)")
        print(
            f"{case.label:<44} {case.context:>7} {built[-1].token_count:>7} | "
            f"{summary(kept)} | {summary(trimmed)}"
        )


if __name__ == "__main__":
    main()
