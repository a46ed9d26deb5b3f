"""What the bot's engine client adds on top of llama.cpp: the same requests streamed through
the engine ENGINE=llamacpp builds (`ManagedLlamaEngine`, its OpenAI-compatible client) and
straight to llama-server's HTTP API, in one run, against one server, alternating round by round.

`python benchmarks/engine_overhead.py [--llama-cpp DIR] [--gguf FILE]`: without `--llama-cpp`
the Release build of `synatra_bot.engine.llama_build` (built first when missing); without `--gguf`
the tests' tiny random Mistral model, converted to f32 with llama.cpp's converter (the harshest
case for the client: the server spends almost nothing per token). Needs the test extras.

Each request is a different prompt of random ids (no prompt cache helps either side) and the
same body: the direct side posts exactly the JSON the client builds. Reported per stream count:
total tokens a second (every stream's text events over the round's wall time), the mean time
to the first text, and this process's CPU time per token (what the client itself costs; on a
machine with few cores it is taken from the server), each the median over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from synatra_bot.engine.base import SamplingParams
from synatra_bot.engine.llama_build import VERSION, LlamaBuild, build
from synatra_bot.engine.llamacpp import LlamaServerConfig, ManagedLlamaEngine
from synatra_bot.engine.openai_compat import STREAM_HEADERS
from synatra_bot.gguf_source import GgufSource


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--llama-cpp",
        type=Path,
        help="a llama.cpp folder laid out as the bot's build (default: the Release build)",
    )
    parser.add_argument("--server", type=Path, help="llama-server (default: that build's)")
    parser.add_argument("--gguf", type=Path, help="the model (default: the tiny test model)")
    parser.add_argument("--streams", default="1,4", help="concurrent streams, comma-separated")
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="llama-server --threads")
    return parser.parse_args()


def tiny_gguf(folder: Path, tools: LlamaBuild) -> Path:
    from synatra_bot.engine.gguf_convert import convert
    from tests.model_fixtures import write_tiny_model

    model = write_tiny_model(folder / "tiny")
    return convert(model, folder / "tiny-f32.gguf", "f32", tools)


class Prompts:
    """A different prompt of random ordinary ids for every request."""

    def __init__(self, length: int, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._length = length

    def next(self) -> list[int]:
        # 1 is BOS; ids from 3 to 31999 are ordinary pieces of the tokenizer.
        return [1, *(self._rng.randrange(3, 32000) for _ in range(self._length - 1))]


async def through_client(engine: ManagedLlamaEngine, ids: list[int], params: SamplingParams):
    started = time.perf_counter()
    first = None
    count = 0
    async for _delta in engine.stream(ids, params, request_id=str(id(ids))):
        first = first if first is not None else time.perf_counter() - started
        count += 1
    return count, first


async def direct(session: Any, url: str, body: dict[str, Any]):
    started = time.perf_counter()
    first = None
    count = 0
    async with session.post(f"{url}/v1/completions", json=body, headers=STREAM_HEADERS) as answer:
        async for line in answer.content:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if any(choice.get("text") for choice in event.get("choices", ())):
                first = first if first is not None else time.perf_counter() - started
                count += 1
    return count, first


async def measure(args: argparse.Namespace, server_path: Path, gguf: Path) -> list[str]:
    import aiohttp

    from tests.model_fixtures import write_tokenizer

    streams = [int(n) for n in args.streams.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        from synatra_bot.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(write_tokenizer(Path(scratch)))
    # The engine ENGINE=llamacpp builds: it starts the server, the direct side uses it too.
    config = LlamaServerConfig(
        GgufSource(str(gguf)),
        server=str(server_path),
        parallel=max(streams),
        context_size=args.prompt_tokens + args.new_tokens + 16,
        extra_args=("--threads", str(args.threads)),
    )
    engine = ManagedLlamaEngine(config, tokenizer=tokenizer)
    await engine.start()
    assert engine.server is not None and engine._client is not None
    url, client = engine.server.url, engine._client
    # Greedy, no stop ids: every request writes the same number of tokens on both sides.
    params = SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens, stop_ids=(), seed=1)
    prompts = Prompts(args.prompt_tokens)
    #: (tokens a second, seconds to the first text, this process's CPU seconds a token)
    results: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
    try:
        async with aiohttp.ClientSession() as session:
            for _round in range(args.rounds):
                for count in streams:
                    for side in ("bot", "direct"):
                        batch = [prompts.next() for _ in range(count)]
                        started, cpu = time.perf_counter(), time.process_time()
                        if side == "bot":
                            runs = [through_client(engine, ids, params) for ids in batch]
                        else:
                            context_of = [len(ids) + args.new_tokens for ids in batch]
                            bodies = [
                                client._body(ids, params, c)  # the client's exact request
                                for ids, c in zip(batch, context_of, strict=True)
                            ]
                            runs = [direct(session, url, body) for body in bodies]
                        done = await asyncio.gather(*runs)
                        wall = time.perf_counter() - started
                        cpu = time.process_time() - cpu
                        tokens = sum(n for n, _ in done)
                        first = statistics.mean(f for _, f in done if f is not None)
                        results.setdefault((count, side), []).append(
                            (tokens / wall, first, cpu / tokens)
                        )
    finally:
        await engine.close()
    lines = [
        "| streams | direct tok/s | bot tok/s | bot / direct | direct first token ms "
        "| bot first token ms | difference ms | client CPU per token, direct / bot (us) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for count in streams:
        direct_rate, direct_first, direct_cpu = medians(results[(count, "direct")])
        bot_rate, bot_first, bot_cpu = medians(results[(count, "bot")])
        lines.append(
            f"| {count} | {direct_rate:.0f} | {bot_rate:.0f} | {bot_rate / direct_rate:.3f} "
            f"| {direct_first * 1000:.1f} | {bot_first * 1000:.1f} "
            f"| {(bot_first - direct_first) * 1000:+.1f} "
            f"| {direct_cpu * 1e6:.0f} / {bot_cpu * 1e6:.0f} |"
        )
    return lines


def medians(rows: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    rate, first, cpu = zip(*rows, strict=True)
    return statistics.median(rate), statistics.median(first), statistics.median(cpu)


def main() -> int:
    args = parse_args()
    tools = LlamaBuild(args.llama_cpp) if args.llama_cpp else build("release", progress=print)
    server_path = args.server or tools.server
    with tempfile.TemporaryDirectory() as scratch:
        gguf = args.gguf or tiny_gguf(Path(scratch), tools)
        lines = asyncio.run(measure(args, server_path, gguf))
    print(
        f"llama.cpp {VERSION} ({server_path}), Python {platform.python_version()}, "
        f"{platform.machine()}, prompt {args.prompt_tokens} tokens, {args.new_tokens} new, "
        f"{args.rounds} rounds, median"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
