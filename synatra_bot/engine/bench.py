"""Engine benchmark: TTFT and tokens/s of the embedded engine against plain `generate()`.

One run measures, on the same model:
1. baseline: plain `model.generate()` one request at a time (TTFT, tok/s);
2. the engine with one request at a time (batch-1 tok/s through continuous batching);
3. the engine with C requests arriving `gap` ms apart: TTFT p50/p95, tok/s per stream and total;
4. prefix reuse: the second turn of a channel (first prompt + reply + a new message) against
   the first turn's TTFT;
5. on a GPU, the weight-bandwidth floor: weight bytes / measured device copy bandwidth.

Prompts are random token ids; stop ids are disabled so every reply is exactly N tokens.
`--tiny` builds a tiny random Mistral on the CPU; `--random-weights` builds a Mistral-7B-shaped
model from its config in memory (no download). Both need Mistral's v1 tokenizer from
mistral-common (a dev dependency) unless `--tokenizer` names a folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from synatra_bot.engine.base import SamplingParams
from synatra_bot.engine.transformers_engine import TransformersEngine

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


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to `parser` (used by `synatra-bot bench` and the script)."""
    parser.add_argument("--model", default="maywell/Synatra-7B-v0.3-RP", help="hub id or folder")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--tiny", action="store_true", help="tiny random Mistral on the CPU")
    what.add_argument(
        "--random-weights", action="store_true", help="Mistral-7B-shaped random model, no download"
    )
    parser.add_argument("-P", "--prompt-tokens", type=int, default=None, help="prompt length")
    parser.add_argument("-N", "--new-tokens", type=int, default=None, help="tokens per reply")
    parser.add_argument("-C", "--concurrency", type=int, default=None, help="concurrent requests")
    parser.add_argument("--arrival-gap-ms", type=float, default=50.0, help="gap between arrivals")
    parser.add_argument("--baseline-requests", type=int, default=2)
    parser.add_argument("--prefix-channels", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="bfloat16, float16 or float32")
    parser.add_argument("--attn", default="sdpa", help="sdpa, flash_attention_2, paged|eager")
    parser.add_argument("--num-blocks", type=int, default=None)
    parser.add_argument("--max-batch-tokens", type=int, default=None)
    parser.add_argument("--page-size", type=int, default=None)
    parser.add_argument("--cuda-graph", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--compile-level", type=int, default=0, choices=(0, 1, 2, 3))
    parser.add_argument("--no-prefix-sharing", action="store_true")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write results as JSON")


@dataclass
class Phase:
    name: str
    requests: int
    ttft_p50_s: float
    ttft_p95_s: float
    tok_s_per_stream: float
    tok_s_total: float
    notes: str = ""


@dataclass
class Report:
    device: str
    dtype: str
    model: str
    prompt_tokens: int
    new_tokens: int
    concurrency: int
    arrival_gap_ms: float
    versions: dict[str, str]
    phases: list[Phase] = field(default_factory=list)
    extra: dict[str, float | str] = field(default_factory=dict)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _write_tokenizer(folder: Path) -> Path:
    """Mistral v1 SentencePiece + Synatra's ChatML tokens (same as the test fixture)."""
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


def _random_model(shape: dict[str, Any], device: str, dtype: Any, context: int) -> Any:
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
    model.config._attn_implementation = "sdpa"
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


async def _timed_stream(
    engine: TransformersEngine, prompt: list[int], params: SamplingParams, request_id: str
) -> tuple[float, float, float, int, list[int]]:
    """(start, first token, end, tokens) of one streamed request."""
    began = time.perf_counter()
    first = 0.0
    text = ""
    async for delta in engine.stream(prompt, params, request_id=request_id):
        if not first:
            first = time.perf_counter()
        text += delta
    end = time.perf_counter()
    reply_ids = engine.tokenizer.encode(text, add_special_tokens=False)
    return began, first or end, end, params.max_new_tokens, reply_ids


def _phase(name: str, runs: list[tuple[float, float, float, int, list[int]]], notes: str) -> Phase:
    ttfts = [first - began for began, first, _, _, _ in runs]
    per_stream = [(tokens - 1) / (end - first) for _, first, end, tokens, _ in runs if end > first]
    span = max(end for _, _, end, _, _ in runs) - min(began for began, _, _, _, _ in runs)
    return Phase(
        name=name,
        requests=len(runs),
        ttft_p50_s=statistics.median(ttfts),
        ttft_p95_s=_percentile(ttfts, 0.95),
        tok_s_per_stream=statistics.median(per_stream) if per_stream else float("nan"),
        tok_s_total=sum(r[3] for r in runs) / span,
        notes=notes,
    )


def _baseline(engine: TransformersEngine, prompts: list[list[int]], new_tokens: int) -> Phase:
    """Plain generate(), one request at a time, sampling, with a streamer for TTFT."""
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

    model: Any = engine.model
    runs: list[tuple[float, float, float, int, list[int]]] = []
    for prompt in prompts:
        marker = Marker()

        config = GenerationConfig(  # type: ignore[no-untyped-call]
            do_sample=True,
            temperature=0.8,
            top_p=0.95,
            top_k=40,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            eos_token_id=None,
            pad_token_id=2,
        )
        ids = torch.tensor([prompt], device=model.device)
        began = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=config,
                streamer=marker,
            )
        end = time.perf_counter()
        marks = marker.marks
        first = marks[1] if len(marks) > 1 else end  # marks[0] is the prompt
        runs.append((began, first, end, new_tokens, []))
    return _phase("plain generate(), one at a time", runs, "baseline")


async def _run(args: argparse.Namespace) -> Report:
    import torch
    import transformers

    tiny = args.tiny
    prompt_tokens = args.prompt_tokens or (128 if tiny else 2048)
    new_tokens = args.new_tokens or (16 if tiny else 200)
    concurrency = args.concurrency or (4 if tiny else 32)
    device = args.device or ("cpu" if tiny else ("cuda" if torch.cuda.is_available() else "cpu"))
    context = prompt_tokens + new_tokens * 2 + 64  # room for the prefix-reuse second turn

    workdir = Path(tempfile.mkdtemp(prefix="synatra-bench-"))
    model_id = args.model
    model = None
    if tiny or args.random_weights:
        model_id = args.tokenizer or str(_write_tokenizer(workdir / "tokenizer"))
        dtype = getattr(torch, args.dtype) if args.dtype else None
        if dtype is None:
            bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
            dtype = (
                torch.float32 if device == "cpu" else (torch.bfloat16 if bf16 else torch.float16)
            )
        model = _random_model(TINY if tiny else MISTRAL_7B, device, dtype, context)
    cuda_graph = {"auto": None, "on": True, "off": False}[args.cuda_graph]
    if tiny and args.num_blocks is None:
        args.num_blocks = concurrency * context // 32 + 8  # every stream fits: measure batching
    engine = TransformersEngine(
        model_id,
        device=device,
        dtype=args.dtype,
        attn_implementation=args.attn,
        num_blocks=args.num_blocks,
        max_batch_tokens=args.max_batch_tokens,
        page_size=args.page_size or (32 if tiny else None),
        context_size=context,
        use_cuda_graph=cuda_graph,
        compile_level=args.compile_level,
        allow_block_sharing=not args.no_prefix_sharing,
        model=model,
    )
    await engine.start()
    report = Report(
        device=_device_name(device),
        dtype=engine.dtype_name,
        model="tiny random Mistral" if tiny else ("random Mistral-7B" if model else model_id),
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        concurrency=concurrency,
        arrival_gap_ms=args.arrival_gap_ms,
        versions={"torch": torch.__version__, "transformers": transformers.__version__},
    )
    rng = random.Random(1234)
    params = SamplingParams(max_new_tokens=new_tokens, stop_ids=())
    try:
        # Warm up kernels and the allocator so the first measured request is not penalised.
        await _timed_stream(engine, _prompt(rng, prompt_tokens), params, "warmup")

        if not args.skip_baseline:
            prompts = [_prompt(rng, prompt_tokens) for _ in range(args.baseline_requests)]
            report.phases.append(await asyncio.to_thread(_baseline, engine, prompts, new_tokens))

        single = [
            await _timed_stream(engine, _prompt(rng, prompt_tokens), params, f"single{i}")
            for i in range(args.baseline_requests)
        ]
        report.phases.append(_phase("engine, one at a time", single, "continuous batching"))

        async def arrive(index: int) -> tuple[float, float, float, int, list[int]]:
            await asyncio.sleep(index * args.arrival_gap_ms / 1000)
            return await _timed_stream(engine, prompts_c[index], params, f"c{index}")

        prompts_c = [_prompt(rng, prompt_tokens) for _ in range(concurrency)]
        concurrent = await asyncio.gather(*(arrive(i) for i in range(concurrency)))
        report.phases.append(
            _phase(
                f"engine, {concurrency} arriving {args.arrival_gap_ms:g} ms apart",
                list(concurrent),
                "continuous batching",
            )
        )

        firsts, seconds = [], []
        for channel in range(args.prefix_channels):
            first_prompt = _prompt(rng, prompt_tokens)
            first = await _timed_stream(engine, first_prompt, params, f"p{channel}a")
            follow_up = first_prompt + first[4] + _prompt(rng, 32)[1:]
            second = await _timed_stream(engine, follow_up, params, f"p{channel}b")
            firsts.append(first)
            seconds.append(second)
        sharing = "on" if engine.prefix_sharing else "off"
        report.phases.append(_phase("channel turn 1", firsts, f"prefix sharing {sharing}"))
        report.phases.append(
            _phase(
                "channel turn 2 (turn 1 + reply + message)", seconds, f"prefix sharing {sharing}"
            )
        )

        if device.startswith("cuda"):
            weight_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
            bandwidth = _copy_bandwidth_gbs(device)
            report.extra["weight_gb"] = round(weight_bytes / 1e9, 2)
            report.extra["copy_bandwidth_gb_s"] = round(bandwidth, 1)
            report.extra["batch1_floor_ms_per_token"] = round(weight_bytes / bandwidth / 1e6, 2)
            report.extra["batch1_ceiling_tok_s"] = round(bandwidth * 1e9 / weight_bytes, 1)
    finally:
        await engine.close()
    return report


def _device_name(device: str) -> str:
    import platform

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


def format_report(report: Report) -> str:
    lines = [
        f"device: {report.device}; dtype {report.dtype}; model: {report.model}; "
        + ", ".join(f"{k} {v}" for k, v in report.versions.items()),
        f"workload: P={report.prompt_tokens} prompt tokens, N={report.new_tokens} new tokens, "
        f"C={report.concurrency}, arrival gap {report.arrival_gap_ms:g} ms, sampling "
        "(T 0.8, top-p 0.95, top-k 40)",
        "",
        "| phase | requests | TTFT p50 (s) | TTFT p95 (s) | tok/s per stream | tok/s total "
        "| notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for p in report.phases:
        lines.append(
            f"| {p.name} | {p.requests} | {p.ttft_p50_s:.3f} | {p.ttft_p95_s:.3f} | "
            f"{p.tok_s_per_stream:.1f} | {p.tok_s_total:.1f} | {p.notes} |"
        )
    if report.extra:
        lines.append("")
        lines.extend(f"- {key}: {value}" for key, value in report.extra.items())
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
    if not (args.tiny or args.random_weights):
        check_model_source(args.model, setting="--model")


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed `args`; print a Markdown table. Returns 0.

    A flag naming something this machine does not have (a model, CUDA) is a ConfigError."""
    _check_flags(args)
    report = asyncio.run(_run(args))
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2), encoding="utf-8")
    return 0
