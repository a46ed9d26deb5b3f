"""Prefix reuse in the batched static-cache lane: the first-token time of a channel's second
turn when the lane prefills it on top of the first turn's kept row, against prefilling it whole.

`python -m benchmarks.lane_prefix [--shape mistral-60m|tiny] [--prompt-tokens 1000]
[--added-tokens 60] [--rounds 7] [--threads 1]`

Each round: a fresh prompt of random ids (turn 1, a reply of `--reply-tokens`), then turn 2 =
the same prompt and `--added-tokens` new ids, on two lanes over the same random Mistral-shaped
model on the CPU, one with prefix reuse and one without, back to back in alternating order so
both see the same load. First-token time = from handing the job to the lane until its first
token arrives (the prefill and one sampling). Reported: the medians over the rounds, their ratio,
the tokens each turn 2 prefilled, and whether both lanes wrote the same greedy tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from synatra_bot.engine.batched_lane import BatchedLane, LaneJob
from synatra_bot.engine.bench import MISTRAL_60M, TINY, _random_model

SHAPES = {"mistral-60m": MISTRAL_60M, "tiny": TINY}


@dataclass
class _Reply:
    """One job's tokens, the time of its first token, and its end."""

    began: float
    first_at: float | None = None
    tokens: list[int] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)


def _run(lane: BatchedLane, prompt: list[int], budget: int) -> _Reply:
    """Give `prompt` to `lane` (greedy, `budget` new tokens) and wait for its end."""
    reply = _Reply(began=time.perf_counter())

    def deliver(new_ids: list[int], finished: bool) -> None:
        if reply.first_at is None:
            reply.first_at = time.perf_counter()
        reply.tokens.extend(new_ids)
        if finished:
            reply.ended.set()

    job = LaneJob(
        request_id=f"turn-{id(reply)}",
        prompt=prompt,
        max_new_tokens=budget,
        stop_ids=frozenset(),
        temperature=0.0,
        top_k=0,
        top_p=1.0,
        deliver=deliver,
        fail=reply.ended.set,
        cancelled=threading.Event(),
    )
    reply.began = time.perf_counter()
    if not lane.try_submit(job):
        raise RuntimeError("the lane refused the job")
    if not reply.ended.wait(600) or reply.first_at is None:
        raise RuntimeError("the lane failed the job")
    return reply


def _ids(rng: random.Random, count: int) -> list[int]:
    return [rng.randrange(100, 31000) for _ in range(count)]


def _cpu() -> str:
    """The CPU's model name (Linux) and the cores this process sees."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=tuple(SHAPES), default="mistral-60m")
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--added-tokens", type=int, default=60)
    parser.add_argument("--reply-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--context", type=int, default=2048)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = _random_model(SHAPES[args.shape], "cpu", torch.float32, args.context, "sdpa")
    lanes = {
        "reuse": BatchedLane(model, slots=8, context=args.context),
        "whole": BatchedLane(model, slots=8, context=args.context, reuse_prefixes=False),
    }
    rng = random.Random(0)
    first: dict[str, list[float]] = {name: [] for name in lanes}
    second: dict[str, list[float]] = {name: [] for name in lanes}
    prefilled: dict[str, list[int]] = {name: [] for name in lanes}
    same = 0
    try:
        with torch.inference_mode():  # the warm-up forward, outside the rounds
            model(input_ids=torch.tensor([[1, *_ids(rng, 63)]]))
        for round_ in range(args.rounds):
            prompt = [1, *_ids(rng, args.prompt_tokens - 1)]
            follow = prompt + _ids(rng, args.added_tokens)
            order = list(lanes) if round_ % 2 == 0 else list(reversed(lanes))
            answers: dict[str, list[int]] = {}
            for name in order:
                lane = lanes[name]
                opening = _run(lane, prompt, args.reply_tokens)
                before = lane.prefilled_tokens
                turn = _run(lane, follow, args.reply_tokens)
                assert opening.first_at is not None and turn.first_at is not None
                first[name].append(opening.first_at - opening.began)
                second[name].append(turn.first_at - turn.began)
                prefilled[name].append(lane.prefilled_tokens - before)
                answers[name] = turn.tokens
            same += answers["reuse"] == answers["whole"]
    finally:
        for lane in lanes.values():
            lane.close()

    def median_ms(values: list[float]) -> float:
        return round(statistics.median(values) * 1000, 1)

    report = {
        "shape": args.shape,
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "added_tokens": args.added_tokens,
        "rounds": args.rounds,
        "turn1_first_token_ms": {name: median_ms(first[name]) for name in lanes},
        "turn2_first_token_ms": {name: median_ms(second[name]) for name in lanes},
        "turn2_speedup": round(
            statistics.median(second["whole"]) / statistics.median(second["reuse"]), 2
        ),
        "turn2_prefilled_tokens": {name: statistics.median(prefilled[name]) for name in lanes},
        "same_greedy_tokens": f"{same}/{args.rounds}",
        "machine": _cpu(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    print(json.dumps(report, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
