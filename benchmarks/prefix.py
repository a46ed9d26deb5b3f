"""Prompt prefix reuse: how much of each turn's prompt starts with the previous turn's prompt.

Run: python -m benchmarks.prefix [--turns 50] [--tokenizer FOLDER]

The scene: two characters (민지 with a card lorebook, 서준), two players (준, 하늘) who take turns
and address the characters in turn, a channel lorebook with a constant entry, and replies of
3 to 7 Korean sentences (tests/prompt_helpers.py, seeded). Every turn is built as the core
builds it: the addressed character answers the player who just spoke, with the previous turn's
history_start_id passed back. Reuse = ids the new prompt shares at its start with the previous
prompt / the previous prompt's length (1.0: the engine can reuse all of the previous prompt).

Rows: the scene (cast, players, scene_user_name given) with a context where nothing trims and
with 4096; the same with an author's note at depth 4.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from synatra_bot.prompt.builder import BuiltPrompt, PromptBuilder
from synatra_bot.tokenizer import load_tokenizer
from tests.prompt_helpers import SceneTurn, play_scene, prefix_reuse, scene_turns

LARGE_CONTEXT = 32768


@dataclass(frozen=True)
class Case:
    label: str
    context: int
    author_note: str = ""


CASES = [
    Case("scene", LARGE_CONTEXT),
    Case("scene", 4096),
    Case("scene, author's note depth 4", LARGE_CONTEXT, "긴장감을 유지하라."),
    Case("scene, author's note depth 4", 4096, "긴장감을 유지하라."),
]


def play(builder: PromptBuilder, case: Case, turns: list[SceneTurn]) -> list[BuiltPrompt]:
    return play_scene(builder, turns, context_size=case.context, author_note=case.author_note)


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
        print(
            f"{case.label:<44} {case.context:>7} {built[-1].token_count:>7} | "
            f"{summary(kept)} | {summary(trimmed)}"
        )


if __name__ == "__main__":
    main()
