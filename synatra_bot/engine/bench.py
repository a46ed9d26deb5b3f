"""Engine benchmark: steady-state throughput and latency of the embedded engine against generate().

One run measures, on the same model:
1. for each concurrency level C (`--streams 1,8,32`), a closed loop: C streams kept busy for
   `--duration` seconds after `--warmup` seconds (each stream submits its next request as soon as
   its previous one ends). Over the window only: aggregate tok/s, per-stream tok/s, decode tok/s
   per request, TTFT p50/p95/p99 and inter-token latency p50/p99. Every stream plays channel
   conversations: turn 1 is a fresh prompt, turn 2 is turn 1 + its reply + a new message, so
   first- and second-turn TTFT (prefix reuse) are measured under the same load (C-1 other
   streams decoding);
2. the baseline: `model.generate()` one request at a time with a static cache and
   `torch.compile` (`--baseline`), after the engine has released its cache;
3. on a GPU, the weight-bandwidth floor: weight bytes / measured device copy bandwidth, with the
   single stream's decode rate as a share of it.

`--steps` measures decode steps instead: per level, all streams start together, and the
engine's time per step (and total tok/s) is set against `generate()` with a batch of the same
size, in rounds back to back so both see the same load. `--preset mistral-60m` runs it on a
60M-parameter Mistral-shaped random model on the CPU with one torch thread, at 1 and 8 streams.

Prompts are random token ids (the bot's length by default: 3,500 tokens in a 4,096 context, 300
new tokens); stop ids are disabled so every reply runs to its token budget. `--tiny` builds a tiny
random Mistral on the CPU; `--random-weights` builds a Mistral-7B-shaped model in memory (no
download). Both need Synatra's tokenizer: a folder from `--save-tokenizer` (no network, no
mistral-common needed) or, without `--tokenizer`, Mistral's v1 tokenizer from mistral-common.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from synatra_bot.engine import cb_adapter
from synatra_bot.engine.base import SamplingParams
from synatra_bot.engine.transformers_engine import TransformersEngine, resolve_attention
from synatra_bot.language import Language, choose
from synatra_bot.settings import SINGLE_STREAM_MODES

MISTRAL_7B = {
    "vocab_size": 32002,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 32768,
    "sliding_window": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
}
TINY = {
    **MISTRAL_7B,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
#: A 60M-parameter Mistral-shaped model: small enough for a CPU, shaped like the real one
#: (GQA 8 heads / 2 key-value heads), for the concurrency preset.
MISTRAL_60M = {
    **MISTRAL_7B,
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 64,
}
#: `--preset` values: the model and workload each one sets (flags given explicitly win).
PRESETS: dict[str, dict[str, Any]] = {
    "mistral-60m": {
        "shape": "mistral-60m",
        "prompt_tokens": 1000,
        "new_tokens": 48,
        "context": 2048,
        "streams": [1, 8],
        "threads": 1,
        "steps": True,
    },
}
SHAPES = {"tiny": TINY, "mistral-7b": MISTRAL_7B, "mistral-60m": MISTRAL_60M}
#: The bot's defaults: CONTEXT_SIZE and a prompt that fills it but for the reply.
BOT_CONTEXT = 4096
BOT_PROMPT_TOKENS = 3500
BOT_NEW_TOKENS = 300
BASELINES = ("static-compile", "static", "eager")
SAMPLING: dict[str, float] = {"temperature": 0.8, "top_p": 0.95, "top_k": 40}


def _streams(value: str) -> list[int]:
    try:
        levels = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a list like 1,8,32") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be positive integers")
    return levels


def configure_parser(parser: argparse.ArgumentParser, *, language: Language = "en") -> None:
    """Add the benchmark's options to `parser` (used by `synatra-bot bench` and the script),
    their help in `language`."""

    def say(english: str, korean: str) -> str:
        return choose(language, english, korean)

    parser.add_argument(
        "--model",
        default="maywell/Synatra-7B-v0.3-RP",
        help=say("hub id or folder", "허브 ID 또는 폴더"),
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help=say(
            "tokenizer folder (default: the model's own)", "토크나이저 폴더 (기본: 모델의 것)"
        ),
    )
    parser.add_argument(
        "--save-tokenizer",
        type=Path,
        default=None,
        metavar="FOLDER",
        help=say(
            "write Synatra's tokenizer (Mistral v1 + ChatML) to FOLDER for --tokenizer, and exit",
            "Synatra 토크나이저(Mistral v1 + ChatML)를 --tokenizer 용으로 FOLDER에 쓰고 끝내기",
        ),
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--tiny",
        action="store_true",
        help=say("tiny random Mistral on the CPU", "CPU에서 도는 아주 작은 무작위 Mistral"),
    )
    what.add_argument(
        "--random-weights",
        action="store_true",
        help=say(
            "Mistral-7B-shaped random model, no download",
            "Mistral-7B 모양의 무작위 모델 (내려받지 않아요)",
        ),
    )
    what.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=None,
        help=say(
            "mistral-60m: a 60M-parameter random Mistral on the CPU, 1,000-token prompts, one "
            "torch thread, --steps at 1 and 8 streams",
            "mistral-60m: CPU의 6천만 매개변수 무작위 Mistral, 1,000토큰 프롬프트, torch 스레드 "
            "하나, 1·8 스트림에서 --steps",
        ),
    )
    parser.add_argument(
        "--steps",
        action="store_true",
        help=say(
            "measure decode steps instead: all streams start together; the engine's ms per "
            "step against generate() with the same batch, in the same run",
            "대신 디코드 단계를 재기: 모든 스트림이 함께 시작하고, 엔진의 단계당 ms를 같은 "
            "배치의 generate()와 같은 실행에서 비교",
        ),
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help=say(
            "--steps: rounds per level, each generate() then the engine (medians reported)",
            "--steps: 수준마다 generate()와 엔진을 번갈아 재는 횟수 (중앙값을 보고)",
        ),
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help=say("torch threads (default: torch's own)", "torch 스레드 수 (기본: torch 기본값)"),
    )
    parser.add_argument(
        "--batch-slots",
        type=int,
        default=None,
        help=say(
            "replies of the engine's batched static-cache lane (default: the engine's; 0: "
            "continuous batching only)",
            "엔진의 배치 정적 캐시 경로가 받는 답장 수 (기본: 엔진의 값, 0: 연속 배칭만)",
        ),
    )
    parser.add_argument(
        "-P",
        "--prompt-tokens",
        type=int,
        default=None,
        help=say(f"default {BOT_PROMPT_TOKENS}", f"프롬프트 토큰 (기본 {BOT_PROMPT_TOKENS})"),
    )
    parser.add_argument(
        "-N",
        "--new-tokens",
        type=int,
        default=None,
        help=say(f"default {BOT_NEW_TOKENS}", f"새로 만들 토큰 (기본 {BOT_NEW_TOKENS})"),
    )
    parser.add_argument(
        "--message-tokens",
        type=int,
        default=48,
        help=say("new message added for the second turn", "두 번째 턴에 더하는 새 메시지의 토큰"),
    )
    parser.add_argument(
        "--context",
        type=int,
        default=None,
        help=say("engine context (CONTEXT_SIZE)", "엔진 컨텍스트 (CONTEXT_SIZE)"),
    )
    parser.add_argument(
        "--streams",
        type=_streams,
        default=None,
        help=say(
            "concurrency levels, e.g. 1,8,32 (default 1,8,32; --tiny 1,4)",
            "동시 요청 수준, 예: 1,8,32 (기본 1,8,32; --tiny 는 1,4)",
        ),
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help=say("measured seconds per level (default 20)", "수준마다 재는 초 (기본 20)"),
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help=say("discarded seconds per level (default 5)", "수준마다 버리는 예열 초 (기본 5)"),
    )
    parser.add_argument(
        "--baseline",
        choices=BASELINES,
        default=None,
        help=say(
            "generate() baseline (default static-compile on a GPU, static on the CPU)",
            "generate() 기준선 (기본: GPU에서 static-compile, CPU에서 static)",
        ),
    )
    parser.add_argument(
        "--baseline-requests",
        type=int,
        default=2,
        help=say("requests of the generate() baseline", "generate() 기준선의 요청 수"),
    )
    parser.add_argument(
        "--skip-baseline",
        action="store_true",
        help=say("measure no generate() baseline", "generate() 기준선을 재지 않기"),
    )
    parser.add_argument(
        "--device",
        default=None,
        help=say(
            "torch device (default: cuda when there is one; cpu with --tiny)",
            "torch 장치 (기본: 있으면 cuda, --tiny 면 cpu)",
        ),
    )
    parser.add_argument(
        "--dtype",
        default=None,
        help=say("bfloat16, float16 or float32", "bfloat16, float16 또는 float32"),
    )
    parser.add_argument(
        "--attn",
        default="auto",
        help=say(
            "auto (default: what the bot picks on this machine), sdpa, eager, "
            "flash_attention_2, paged|eager",
            "어텐션 구현: auto (기본: 이 기계에서 봇이 고르는 것), sdpa, eager, "
            "flash_attention_2, paged|eager",
        ),
    )
    parser.add_argument(
        "--num-blocks",
        type=int,
        default=None,
        help=say("KV cache blocks of continuous batching", "연속 배칭의 KV 캐시 블록 수"),
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help=say("tokens of one continuous-batching step", "연속 배칭 한 단계의 토큰 수"),
    )
    parser.add_argument(
        "--page-size",
        type=int,
        default=None,
        help=say("tokens per KV cache page", "KV 캐시 페이지 하나의 토큰 수"),
    )
    parser.add_argument(
        "--cuda-graph",
        choices=("auto", "on", "off"),
        default="auto",
        help=say("CUDA graphs of continuous batching", "연속 배칭의 CUDA 그래프"),
    )
    parser.add_argument(
        "--compile-level",
        type=int,
        default=0,
        choices=(0, 1, 2, 3),
        help=say("torch.compile level of continuous batching", "연속 배칭의 torch.compile 수준"),
    )
    parser.add_argument(
        "--no-prefix-sharing",
        action="store_true",
        help=say("turn off the KV cache's prefix sharing", "KV 캐시의 접두어 공유 끄기"),
    )
    parser.add_argument(
        "--single-stream",
        choices=SINGLE_STREAM_MODES,
        default="off",
        help=say(
            "the engine's lane for a lone reply (SINGLE_STREAM): compare the 1-stream row",
            "혼자인 답장을 위한 엔진 경로 (SINGLE_STREAM): 1스트림 줄과 비교",
        ),
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1234,
        help=say("seed of the random prompts", "무작위 프롬프트의 시드"),
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help=say("also write results as JSON", "결과를 JSON으로도 쓰기"),
    )


@dataclass
class Level:
    """One closed-loop concurrency level, measured over its window only."""

    streams: int
    window_s: float
    requests: int
    completed: int
    aggregate_tok_s: float
    per_stream_tok_s: float
    decode_tok_s_p50: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    ttft_p99_s: float | None
    itl_p50_s: float | None
    itl_p99_s: float | None
    turn1_requests: int
    turn1_ttft_p50_s: float | None
    turn1_ttft_p95_s: float | None
    turn2_requests: int
    turn2_ttft_p50_s: float | None
    turn2_ttft_p95_s: float | None


@dataclass
class Baseline:
    mode: str
    attn: str
    requests: int
    warmup_s: float
    ttft_p50_s: float
    decode_tok_s: float
    tok_s: float


@dataclass
class StepLevel:
    """Decode steps with `streams` replies at once: the engine against generate() with that
    batch, both from the same prompts' length, in the same run."""

    streams: int
    generate_ms_per_step: float | None
    engine_ms_per_step: float
    engine_total_tok_s: float
    lane: str


@dataclass
class Report:
    config: dict[str, Any]
    levels: list[Level] = field(default_factory=list)
    steps: list[StepLevel] = field(default_factory=list)
    baseline: Baseline | None = None
    floor: dict[str, float] = field(default_factory=dict)
    summary: dict[str, float | None] = field(default_factory=dict)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def _write_tokenizer(folder: Path) -> Path:
    """Mistral v1 SentencePiece from mistral-common + Synatra's ChatML tokens."""
    import shutil

    import mistral_common

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(
        Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1",
        folder / "tokenizer.model",
    )
    special = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "additional_special_tokens": ["<|im_end|>", "<|im_start|>"],
        "added_tokens_decoder": {
            str(i): {"content": c, "special": True, **special}
            for i, c in ((0, "<unk>"), (1, "<s>"), (2, "</s>"), (32000, "<|im_end|>"))
        }
        | {"32001": {"content": "<|im_start|>", "special": True, **special}},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def save_tokenizer(folder: Path) -> Path:
    """Write the tokenizer folder for `--tokenizer` on a machine without network or
    mistral-common, and check it through the project's loader (ChatML ids included).

    The folder holds the SentencePiece model and its config, the layout Synatra ships; loading
    it converts it with sentencepiece and protobuf (both in the bot's environment). A
    `save_pretrained` copy is not used: its saved fast tokenizer splits text after a special
    token differently from the one converted at load time."""
    from synatra_bot.tokenizer import load_tokenizer

    _write_tokenizer(folder)
    load_tokenizer(folder)
    return folder


def _random_model(shape: dict[str, Any], device: str, dtype: Any, context: int, attn: str) -> Any:
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(**shape, bos_token_id=1, eos_token_id=32000, tie_word_embeddings=False)  # type: ignore[no-untyped-call]
    if context <= (config.sliding_window or 0):
        config.sliding_window = None  # same as the engine does for a loaded model
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = MistralForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    # Same mapping as the engine applies to ATTN_IMPLEMENTATION when it loads a model.
    model.set_attn_implementation(
        resolve_attention(attn, device, dtype=str(dtype).removeprefix("torch.")).implementation
    )
    return model.eval()  # type: ignore[no-untyped-call]


def _copy_bandwidth_gbs(device: str) -> float:
    """Device-to-device copy bandwidth (read + write) in GB/s."""
    import torch

    size = 1 << 30
    source = torch.empty(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    torch.cuda.synchronize()
    rounds = 20
    began = time.perf_counter()
    for _ in range(rounds):
        target.copy_(source)
    torch.cuda.synchronize()
    return 2 * size * rounds / (time.perf_counter() - began) / 1e9


def _prompt(rng: random.Random, length: int) -> list[int]:
    return [1] + [rng.randrange(100, 31000) for _ in range(length - 1)]


@dataclass
class _Timed:
    """One streamed request: when it began, when each text delta arrived, how it ended."""

    stream: int
    turn: int
    tokens: int
    began: float
    deltas: list[float] = field(default_factory=list)
    completed: bool = False
    text: str = ""

    def weight(self) -> float:
        """Tokens per delta. A delta is one token unless a character spans byte tokens; a
        finished request ran to its exact budget, so spread that over its deltas."""
        if self.completed and self.deltas:
            return self.tokens / len(self.deltas)
        return 1.0


async def _timed_stream(
    engine: TransformersEngine,
    prompt: list[int],
    params: SamplingParams,
    request_id: str,
    record: _Timed,
    stop_at: float = math.inf,
) -> _Timed:
    """Stream one request into `record`; leave (cancelling it) at the first delta after
    `stop_at`."""
    stream = engine.stream(prompt, params, request_id=request_id)
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for delta in stream:
            now = time.perf_counter()
            record.deltas.append(now)
            record.text += delta
            if now >= stop_at:
                return record
    record.completed = True
    return record


async def _closed_loop(
    engine: TransformersEngine, args: argparse.Namespace, streams: int, seed: int
) -> Level:
    """`streams` channels kept busy: each plays turn 1 then turn 2, then a new channel.

    Only the window after the warm-up counts; every stream leaves at its first delta past the
    window, cancelling that request. The window lasts `--duration` seconds, and longer where a
    stream has not yet finished a first and a second turn begun inside it (a slow machine
    still gets every figure; on a GPU the duration covers many turns)."""
    prompt_tokens, new_tokens = args.prompt_tokens, args.new_tokens
    params = SamplingParams(
        max_new_tokens=new_tokens,
        stop_ids=(),
        temperature=SAMPLING["temperature"],
        top_p=SAMPLING["top_p"],
        top_k=int(SAMPLING["top_k"]),
    )
    began = time.perf_counter()
    window_start = began + args.warmup
    window_end = window_start + args.duration
    records: list[_Timed] = []
    #: Per stream: finished a turn 1 and a turn 2 that began inside the window.
    done = [[False, False] for _ in range(streams)]
    left_at: list[float] = []

    def budget(prompt: list[int]) -> int:
        return min(int(new_tokens), int(args.context) - len(prompt))

    async def channel(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        serial = 0
        # Staggered over the warm-up so that streams do not start, and then finish, in step.
        await asyncio.sleep(index * args.warmup / streams)

        def cut() -> float:
            return window_end if all(done[index]) else math.inf

        def note(record: _Timed) -> None:
            if record.completed and record.began >= window_start:
                done[index][record.turn - 1] = True

        while time.perf_counter() < cut():
            first = _prompt(rng, prompt_tokens)
            record = _Timed(index, 1, budget(first), time.perf_counter())
            records.append(record)
            serial += 1
            await _timed_stream(
                engine, first, params, f"s{streams}-{index}-{serial}", record, cut()
            )
            note(record)
            if not record.completed or time.perf_counter() >= cut():
                break
            reply = engine.tokenizer.encode(record.text, add_special_tokens=False)
            follow_up = first + list(reply) + _prompt(rng, args.message_tokens + 1)[1:]
            if budget(follow_up) < 1:  # the re-encoded reply came out longer than it was
                continue
            second = _Timed(index, 2, budget(follow_up), time.perf_counter())
            records.append(second)
            serial += 1
            await _timed_stream(
                engine, follow_up, params, f"s{streams}-{index}-{serial}", second, cut()
            )
            note(second)
        left_at.append(time.perf_counter())

    await asyncio.gather(*(channel(i) for i in range(streams)))
    return _level(streams, records, window_start, max(window_end, *left_at))


def _level(streams: int, records: list[_Timed], start: float, end: float) -> Level:
    window = end - start
    per_stream = [0.0] * streams
    itls: list[float] = []
    for record in records:
        weight = record.weight()
        inside = [t for t in record.deltas if start <= t <= end]
        per_stream[record.stream] += weight * len(inside)
        itls.extend(b - a for a, b in itertools.pairwise(inside))
    measured = [r for r in records if start <= r.began < end and r.deltas]
    ttfts = [r.deltas[0] - r.began for r in measured]
    turn1 = [r.deltas[0] - r.began for r in measured if r.turn == 1]
    turn2 = [r.deltas[0] - r.began for r in measured if r.turn == 2]
    decode = [
        (r.tokens - 1) / (r.deltas[-1] - r.deltas[0])
        for r in records
        if r.completed and r.deltas[0] >= start and r.tokens > 1 and r.deltas[-1] > r.deltas[0]
    ]
    return Level(
        streams=streams,
        window_s=round(window, 3),
        requests=len(measured),
        completed=sum(1 for r in measured if r.completed),
        aggregate_tok_s=sum(per_stream) / window,
        per_stream_tok_s=statistics.median(per_stream) / window,
        decode_tok_s_p50=statistics.median(decode) if decode else None,
        ttft_p50_s=_percentile(ttfts, 0.50),
        ttft_p95_s=_percentile(ttfts, 0.95),
        ttft_p99_s=_percentile(ttfts, 0.99),
        itl_p50_s=_percentile(itls, 0.50),
        itl_p99_s=_percentile(itls, 0.99),
        turn1_requests=len(turn1),
        turn1_ttft_p50_s=_percentile(turn1, 0.50),
        turn1_ttft_p95_s=_percentile(turn1, 0.95),
        turn2_requests=len(turn2),
        turn2_ttft_p50_s=_percentile(turn2, 0.50),
        turn2_ttft_p95_s=_percentile(turn2, 0.95),
    )


def _baseline(model: Any, prompts: list[list[int]], new_tokens: int, mode: str) -> Baseline:
    """Plain generate(), one request at a time, sampling, with a streamer for TTFT. The first
    call (compilation, cache allocation) is timed apart as warm-up."""
    import torch
    from transformers import GenerationConfig
    from transformers.generation.streamers import BaseStreamer

    class Marker(BaseStreamer):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def put(self, value: Any) -> None:
            self.marks.append(time.perf_counter())

        def end(self) -> None:
            pass

    options: dict[str, Any] = {"disable_compile": mode != "static-compile"}
    if mode != "eager":
        options["cache_implementation"] = "static"
    if mode == "static-compile" and model.device.type == "cpu":
        # generate() compiles on GPUs only unless told otherwise
        options["compile_config"] = cb_adapter.compile_on_any_device()
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=True,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        eos_token_id=None,
        pad_token_id=2,
        **SAMPLING,
        **options,
    )

    torch.set_num_threads(torch.get_num_threads())  # this thread's OpenMP pool too (--threads)

    def one(prompt: list[int]) -> tuple[float, float, float]:
        marker = Marker()
        ids = torch.tensor([prompt], device=model.device)
        began = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=config,
                streamer=marker,
            )
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        end = time.perf_counter()
        first = marker.marks[1] if len(marker.marks) > 1 else end  # marks[0] is the prompt
        return began, first, end

    warm_began, _, warm_end = one(prompts[0])
    runs = [one(prompt) for prompt in prompts[1:]]
    return Baseline(
        mode=mode,
        attn=cb_adapter.attention_of(model),
        requests=len(runs),
        warmup_s=round(warm_end - warm_began, 3),
        ttft_p50_s=statistics.median(first - began for began, first, _ in runs),
        decode_tok_s=statistics.median((new_tokens - 1) / (end - first) for _, first, end in runs),
        tok_s=statistics.median(new_tokens / (end - began) for began, _, end in runs),
    )


async def _engine_steps(
    engine: TransformersEngine, args: argparse.Namespace, streams: int, rng: random.Random
) -> tuple[float, float]:
    """`streams` replies started together; over the window where all of them decode (after
    the last first token, before the first reply ends): the median time between two tokens of
    a reply (ms per step) and the tokens all replies got per second."""
    params = SamplingParams(
        max_new_tokens=args.new_tokens,
        stop_ids=(),
        temperature=SAMPLING["temperature"],
        top_p=SAMPLING["top_p"],
        top_k=int(SAMPLING["top_k"]),
    )
    records = [_Timed(i, 1, args.new_tokens, time.perf_counter()) for i in range(streams)]
    prompts = [_prompt(rng, args.prompt_tokens) for _ in range(streams)]
    await asyncio.gather(
        *(
            _timed_stream(engine, prompts[i], params, f"steps{streams}-{i}", records[i])
            for i in range(streams)
        )
    )
    start = max(r.deltas[0] for r in records)
    end = min(r.deltas[-1] for r in records)
    gaps = [
        b - a
        for r in records
        for a, b in itertools.pairwise(t for t in r.deltas if start <= t <= end)
    ]
    if not gaps:
        raise RuntimeError("no step where every reply decodes: raise --new-tokens")
    step = statistics.median(gaps)
    return step * 1000, streams / step


def _generate_steps(model: Any, prompts: list[list[int]], new_tokens: int) -> float:
    """generate() with the prompts as one batch (a dynamic cache, the same sampling): the
    median time of a decode step, in ms."""
    import torch
    from transformers import GenerationConfig
    from transformers.generation.streamers import BaseStreamer

    class Marker(BaseStreamer):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def put(self, value: Any) -> None:
            self.marks.append(time.perf_counter())

        def end(self) -> None:
            pass

    config = GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=True,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        eos_token_id=None,
        pad_token_id=2,
        **SAMPLING,
    )
    torch.set_num_threads(torch.get_num_threads())  # this thread's OpenMP pool too (--threads)
    ids = torch.tensor(prompts, device=model.device)
    marker = Marker()
    with torch.inference_mode():
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            generation_config=config,
            streamer=marker,
        )
    # marks[0] is the prompt, marks[1] the first token (after the prefill).
    gaps = [b - a for a, b in itertools.pairwise(marker.marks[1:])]
    return statistics.median(gaps) * 1000


async def _step_levels(
    engine: TransformersEngine, args: argparse.Namespace, rng: random.Random
) -> list[StepLevel]:
    """Per level, `--rounds` rounds of generate() then the engine, back to back, so that both
    see the same load from anything else on the machine; the medians over the rounds."""
    levels = []
    for streams in args.streams:
        engine_runs: list[float] = []
        generate_runs: list[float] = []
        for _ in range(args.rounds):
            if not args.skip_baseline:
                prompts = [_prompt(rng, args.prompt_tokens) for _ in range(streams)]
                generate_runs.append(
                    await asyncio.to_thread(_generate_steps, engine.model, prompts, args.new_tokens)
                )
            engine_runs.append((await _engine_steps(engine, args, streams, rng))[0])
        engine_ms = statistics.median(engine_runs)
        total = streams * 1000 / engine_ms
        generate_ms = statistics.median(generate_runs) if generate_runs else None
        lane = "batched static-cache lane"
        slots = engine.batched_lane_slots
        if streams > slots:
            lane = (
                f"{slots} on the batched lane, {streams - slots} on continuous batching"
                if slots
                else "continuous batching"
            )
        level = StepLevel(streams, generate_ms, engine_ms, total, lane)
        levels.append(level)
        print(_step_row(level, levels[0]), file=sys.stderr, flush=True)
    return levels


async def _cb_config(engine: TransformersEngine, wait_s: float = 30.0) -> dict[str, Any]:
    """What continuous batching resolved, once its cache exists. CB's generation thread creates
    the cache as it starts, which may come after the first replies when the batched lane serves
    them: the header waits for it (at most `wait_s`) rather than print whichever came first."""
    deadline = time.monotonic() + wait_s
    config = engine.batching_config()
    while config and "cache_blocks" not in config and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        config = engine.batching_config()
    return config


def _defaults(args: argparse.Namespace, device: str) -> None:
    preset = PRESETS.get(getattr(args, "preset", None) or "", {})
    for key in ("prompt_tokens", "new_tokens", "context", "streams", "threads"):
        if getattr(args, key, None) is None and key in preset:
            setattr(args, key, preset[key])
    args.steps = getattr(args, "steps", False) or bool(preset.get("steps"))
    args.context = args.context or BOT_CONTEXT
    tiny = args.tiny
    args.prompt_tokens = args.prompt_tokens or (256 if tiny else BOT_PROMPT_TOKENS)
    args.new_tokens = args.new_tokens or (16 if tiny else BOT_NEW_TOKENS)
    args.streams = args.streams or ([1, 4] if tiny else [1, 8, 32])
    args.duration = args.duration if args.duration is not None else (2.0 if tiny else 20.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if tiny else 5.0)
    args.baseline = args.baseline or ("static-compile" if device.startswith("cuda") else "static")


async def _run(args: argparse.Namespace) -> Report:
    import torch
    import transformers

    small = args.tiny or args.preset is not None
    device = args.device or ("cpu" if small else ("cuda" if torch.cuda.is_available() else "cpu"))
    _defaults(args, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    from synatra_bot.errors import ConfigError

    longest = args.prompt_tokens + args.new_tokens + args.message_tokens
    if longest >= args.context:
        raise ConfigError(
            "--context",
            f"{args.context} leaves no room for the second turn ({args.prompt_tokens} prompt + "
            f"{args.new_tokens} reply + {args.message_tokens} message tokens)",
        )

    workdir = Path(tempfile.mkdtemp(prefix="synatra-bench-"))
    model_id = args.model
    model = None
    if small or args.random_weights:
        model_id = args.tokenizer or str(_write_tokenizer(workdir / "tokenizer"))
        dtype = getattr(torch, args.dtype) if args.dtype else None
        if dtype is None:
            bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
            dtype = (
                torch.float32 if device == "cpu" else (torch.bfloat16 if bf16 else torch.float16)
            )
        shape = (
            SHAPES[PRESETS[args.preset]["shape"]]
            if args.preset
            else (TINY if args.tiny else MISTRAL_7B)
        )
        model = _random_model(shape, device, dtype, args.context, args.attn)
    cuda_graph = {"auto": None, "on": True, "off": False}[args.cuda_graph]
    page_size = args.page_size or (32 if small else None)
    num_blocks = args.num_blocks
    if small and num_blocks is None:  # every stream's two turns fit: measure batching
        per_stream = math.ceil((longest + args.new_tokens) / 32)
        num_blocks = max(args.streams) * per_stream + 8
    engine = TransformersEngine(
        model_id,
        device=device,
        dtype=args.dtype,
        attn_implementation=args.attn,
        num_blocks=num_blocks,
        max_batch_tokens=args.max_batch_tokens,
        page_size=page_size,
        context_size=args.context,
        use_cuda_graph=cuda_graph,
        compile_level=args.compile_level,
        allow_block_sharing=not args.no_prefix_sharing,
        single_stream=args.single_stream,
        batch_slots=args.batch_slots,
        model=model,
    )
    await engine.start()
    # CB switches the model to an attention it supports while it runs (eager -> paged|eager);
    # the engine remembers what the model was loaded with.
    loaded_attn = engine.attention_choice.implementation
    rng = random.Random(args.seed)
    report = Report(config={})
    try:
        # Warm up kernels and the allocator at the widest batch; CB also creates its cache on
        # the first request.
        warm = SamplingParams(max_new_tokens=min(4, args.new_tokens), stop_ids=())
        await asyncio.gather(
            *(
                _timed_stream(
                    engine, _prompt(rng, args.prompt_tokens), warm, f"warmup{i}", _Timed(i, 1, 4, 0)
                )
                for i in range(max(args.streams))
            )
        )
        report.config = {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "device": device,
            "device_name": _device_name(device),
            "dtype": engine.dtype_name,
            "model": f"random {args.preset}"
            if args.preset
            else (
                "tiny random Mistral" if args.tiny else ("random Mistral-7B" if model else model_id)
            ),
            "threads": torch.get_num_threads(),
            "batched_lane_slots": engine.batched_lane_slots,
            "attn_requested": args.attn,
            "attn_model": loaded_attn,
            "attn_in_use": engine.attention,
            "cb": await _cb_config(engine),
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "message_tokens": args.message_tokens,
            "context": args.context,
            "streams": args.streams,
            "duration_s": args.duration,
            "single_stream": args.single_stream,
            "warmup_s": args.warmup,
            "baseline": None if args.skip_baseline else args.baseline,
            "sampling": SAMPLING,
        }
        print(format_header(report.config), file=sys.stderr, flush=True)
        if args.steps:
            report.steps = await _step_levels(engine, args, rng)
            return report
        for seed, streams in enumerate(args.streams):
            level = await _closed_loop(engine, args, streams, args.seed + seed + 1)
            report.levels.append(level)
            print(_level_row(level), file=sys.stderr, flush=True)
    finally:
        await engine.close()

    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # the CB cache is gone: room for the baseline's static cache
    if not args.skip_baseline:
        baseline_model: Any = engine.model
        if cb_adapter.attention_of(baseline_model).startswith("paged"):
            baseline_model.set_attn_implementation("eager")  # generate() needs a dense cache
        prompts = [_prompt(rng, args.prompt_tokens) for _ in range(args.baseline_requests + 1)]
        report.baseline = await asyncio.to_thread(
            _baseline, baseline_model, prompts, args.new_tokens, args.baseline
        )

    single = next((level for level in report.levels if level.streams == 1), None)
    widest = max(report.levels, key=lambda level: level.streams)
    if device.startswith("cuda"):
        weights = sum(p.numel() * p.element_size() for p in engine.model.parameters())
        bandwidth = _copy_bandwidth_gbs(device)
        report.floor = {
            "weight_gb": round(weights / 1e9, 2),
            "copy_bandwidth_gb_s": round(bandwidth, 1),
            "batch1_floor_ms_per_token": round(weights / bandwidth / 1e6, 2),
            "batch1_ceiling_tok_s": round(bandwidth * 1e9 / weights, 1),
        }
    ceiling = report.floor.get("batch1_ceiling_tok_s")
    single_decode = single.decode_tok_s_p50 if single else None
    report.summary = {
        "single_stream_pct_of_floor": round(100 * single_decode / ceiling, 1)
        if single_decode and ceiling
        else None,
        "widest_streams": widest.streams,
        "widest_aggregate_x_single": round(widest.aggregate_tok_s / single.aggregate_tok_s, 2)
        if single and single.aggregate_tok_s
        else None,
    }
    return report


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {name}"


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def format_header(config: dict[str, Any]) -> str:
    cb = ", ".join(f"{k} {v}" for k, v in config.get("cb", {}).items())
    return "\n".join(
        [
            f"versions: torch {config['torch']}, transformers {config['transformers']}, "
            f"python {config['python']}",
            f"device: {config['device_name']} ({config['device']}); dtype {config['dtype']}; "
            f"model: {config['model']}",
            f"attention: requested {config['attn_requested']}, model {config['attn_model']}, "
            f"in use by CB {config['attn_in_use']}; torch threads {config.get('threads')}; "
            f"batched static-cache lane: {config.get('batched_lane_slots', 0)} replies",
            f"continuous batching: {cb}",
            f"workload: P={config['prompt_tokens']} prompt tokens, N={config['new_tokens']} new "
            f"tokens, turn 2 adds {config['message_tokens']}, context {config['context']}; "
            f"streams {','.join(map(str, config['streams']))}; {config['warmup_s']:g} s warm-up "
            f"+ {config['duration_s']:g} s measured per level; sampling T 0.8, top-p 0.95, "
            f"top-k 40; baseline {config['baseline'] or 'skipped'}",
        ]
    )


_TABLE_HEAD = (
    "| streams | requests | agg tok/s | tok/s per stream | decode tok/s p50 | TTFT p50 (s) "
    "| TTFT p95 (s) | TTFT p99 (s) | ITL p50 (ms) | ITL p99 (ms) | turn 1 TTFT p50 (s) "
    "| turn 2 TTFT p50 (s) |"
)


def _level_row(level: Level) -> str:
    return (
        f"| {level.streams} | {level.requests} | {level.aggregate_tok_s:.1f} | "
        f"{level.per_stream_tok_s:.1f} | {_f(level.decode_tok_s_p50, 1)} | "
        f"{_f(level.ttft_p50_s)} | {_f(level.ttft_p95_s)} | {_f(level.ttft_p99_s)} | "
        f"{_ms(level.itl_p50_s)} | {_ms(level.itl_p99_s)} | "
        f"{_f(level.turn1_ttft_p50_s)} ({level.turn1_requests}) | "
        f"{_f(level.turn2_ttft_p50_s)} ({level.turn2_requests}) |"
    )


_STEPS_HEAD = (
    "| streams | generate() ms/step (same batch) | engine ms/step | engine / generate() "
    "| engine total tok/s | x single stream | served by |"
)


def _step_row(level: StepLevel, single: StepLevel) -> str:
    ratio = (
        f"{level.engine_ms_per_step / level.generate_ms_per_step:.2f}"
        if level.generate_ms_per_step
        else "-"
    )
    return (
        f"| {level.streams} | {_f(level.generate_ms_per_step, 1)} | "
        f"{level.engine_ms_per_step:.1f} | {ratio} | {level.engine_total_tok_s:.1f} | "
        f"{level.engine_total_tok_s / single.engine_total_tok_s:.2f} | {level.lane} |"
    )


def format_steps(report: Report) -> str:
    """The decode-step table of a `--steps` run."""
    single = report.steps[0]
    return "\n".join(
        [
            format_header(report.config),
            "",
            _STEPS_HEAD,
            "|---:|---:|---:|---:|---:|---:|---|",
            *(_step_row(level, single) for level in report.steps),
        ]
    )


def format_report(report: Report) -> str:
    if report.steps:
        return format_steps(report)
    lines = [
        format_header(report.config),
        "",
        _TABLE_HEAD,
        "|" + "---:|" * 12,
        *(_level_row(level) for level in report.levels),
    ]
    single = next((level for level in report.levels if level.streams == 1), None)
    if report.baseline is not None:
        b = report.baseline
        lines += [
            "",
            "| batch 1 | TTFT (s) | decode tok/s | tok/s incl. TTFT | notes |",
            "|---|---:|---:|---:|---|",
            f"| generate() {b.mode} | {b.ttft_p50_s:.3f} | {b.decode_tok_s:.1f} | "
            f"{b.tok_s:.1f} | {b.attn}; median of {b.requests} after a {b.warmup_s:.2f} s warm-up "
            "call |",
        ]
        if single is not None:
            lines.append(
                f"| engine, 1 stream | {_f(single.ttft_p50_s)} | "
                f"{_f(single.decode_tok_s_p50, 1)} | {single.per_stream_tok_s:.1f} | "
                "closed loop, window only |"
            )
    if report.floor:
        lines.append("")
        lines.extend(f"- {key}: {value}" for key, value in report.floor.items())
    lines.append("")
    lines.extend(
        f"- {key}: {_f(value, 2) if isinstance(value, float) else value}"
        for key, value in report.summary.items()
    )
    return "\n".join(lines)


def _check_flags(args: argparse.Namespace) -> None:
    import torch

    from synatra_bot.errors import ConfigError
    from synatra_bot.tokenizer import check_model_source

    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise ConfigError(
                "--device", f"{args.device!r} is not a device (cpu, cuda, cuda:1)"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "--device", f"{args.device} asked for, but this machine has no CUDA GPU"
            )
    if args.tokenizer is not None:
        check_model_source(args.tokenizer, setting="--tokenizer")
    elif args.tiny or args.preset or args.random_weights or args.save_tokenizer is not None:
        try:
            import mistral_common  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--tokenizer",
                "mistral-common is not installed here: make a tokenizer folder on a machine "
                "that has it (--save-tokenizer FOLDER), copy it, and pass --tokenizer FOLDER",
            ) from None
    if not (args.tiny or args.preset or args.random_weights or args.save_tokenizer is not None):
        check_model_source(args.model, setting="--model")


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed `args`; print a Markdown table. Returns 0.

    A flag naming something this machine does not have (a model, CUDA) is a ConfigError."""
    _check_flags(args)
    if args.save_tokenizer is not None:
        folder = save_tokenizer(args.save_tokenizer)
        print(
            choose(
                getattr(args, "lang", None) or "en",
                f"tokenizer written to {folder}; use it with --tokenizer {folder}",
                f"토크나이저를 {folder}에 썼어요. --tokenizer {folder} 로 쓰세요",
            )
        )
        return 0
    report = asyncio.run(_run(args))
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2), encoding="utf-8")
    return 0
