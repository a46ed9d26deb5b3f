"""The engine benchmark runs end to end on the CPU with a tiny model (speed is not asserted)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from synatra_bot.engine.bench import _defaults, configure_parser, run_bench
from synatra_bot.errors import ConfigError

#: Short enough for a test; warm-up 0 so every request counts and each level has figures.
QUICK = ["--tiny", "-P", "64", "-N", "8", "--duration", "1.5", "--warmup", "0"]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(list(argv))


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_header_shows_the_attention_asked_for(tokenizer_dir, capsys, attn) -> None:
    args = _args(
        *QUICK,
        "--streams",
        "1",
        "--skip-baseline",
        "--attn",
        attn,
        "--tokenizer",
        str(tokenizer_dir),
    )
    assert run_bench(args) == 0
    header = capsys.readouterr().out.split("\n\n")[0]
    assert f"attention: requested {attn}, model {attn}," in header
    assert "transformers 5." in header and "torch 2." in header
    assert "device: CPU" in header and "dtype float32" in header
    assert "continuous batching: " in header and "cache_blocks" in header


def test_json_has_steady_state_second_turn_and_baseline(tmp_path, capsys) -> None:
    tokenizer = tmp_path / "tokenizer"
    assert run_bench(_args("--save-tokenizer", str(tokenizer))) == 0
    out = tmp_path / "bench.json"
    args = _args(
        *QUICK,
        "--streams",
        "1,2",
        "--baseline",
        "static",
        "--baseline-requests",
        "1",
        "--tokenizer",
        str(tokenizer),
        "--json",
        str(out),
    )
    assert run_bench(args) == 0
    table = capsys.readouterr().out
    assert "| generate() static |" in table and "| engine, 1 stream |" in table
    report = json.loads(out.read_text())

    config = report["config"]
    assert config["attn_in_use"] == "sdpa"
    assert config["streams"] == [1, 2] and config["prompt_tokens"] == 64
    assert _positive(config["cb"]["cache_blocks"]) and _positive(config["cb"]["max_batch_tokens"])

    assert [level["streams"] for level in report["levels"]] == [1, 2]
    for level in report["levels"]:
        for name in (
            "aggregate_tok_s",
            "per_stream_tok_s",
            "decode_tok_s_p50",
            "ttft_p50_s",
            "ttft_p95_s",
            "ttft_p99_s",
            "itl_p50_s",
            "itl_p99_s",
            "turn1_ttft_p50_s",
            "turn2_ttft_p50_s",
        ):
            assert _positive(level[name]), (level["streams"], name, level[name])
        assert level["ttft_p50_s"] <= level["ttft_p95_s"] <= level["ttft_p99_s"]
        assert level["turn2_requests"] >= 1

    baseline = report["baseline"]
    assert baseline["mode"] == "static" and baseline["attn"] == "sdpa"
    for name in ("ttft_p50_s", "decode_tok_s", "tok_s"):
        assert _positive(baseline[name])
    assert report["floor"] == {}  # the weight-bandwidth floor is a GPU figure
    assert report["summary"]["widest_streams"] == 2
    assert _positive(report["summary"]["widest_aggregate_x_single"])


def test_eager_baseline_runs_next_to_the_engine(tokenizer_dir, tmp_path) -> None:
    out = tmp_path / "bench.json"
    args = _args(
        *QUICK,
        "--streams",
        "1",
        "--baseline",
        "eager",
        "--baseline-requests",
        "1",
        "--tokenizer",
        str(tokenizer_dir),
        "--json",
        str(out),
    )
    assert run_bench(args) == 0
    baseline = json.loads(out.read_text())["baseline"]
    assert baseline["mode"] == "eager" and _positive(baseline["decode_tok_s"])


def test_saved_tokenizer_folder_round_trips(tokenizer, tmp_path, capsys) -> None:
    from synatra_bot.tokenizer import IM_END_ID, IM_START_ID, load_tokenizer

    folder = tmp_path / "synatra-tokenizer"
    assert run_bench(_args("--save-tokenizer", str(folder))) == 0
    assert str(folder) in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["tokenizer.model", "tokenizer_config.json"]
    saved = load_tokenizer(folder)
    text = "<|im_start|>user\n안녕하세요, 오늘 날씨 어때?<|im_end|>\n<|im_start|>assistant\n"
    assert saved.encode(text) == tokenizer.encode(text)
    assert saved.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"]) == [IM_END_ID, IM_START_ID]


def test_defaults_are_the_bots_workload_and_compiled_baseline_on_a_gpu() -> None:
    args = _args("--random-weights")
    _defaults(args, "cuda")
    assert (args.prompt_tokens, args.new_tokens, args.context) == (3500, 300, 4096)
    assert args.streams == [1, 8, 32]
    assert args.baseline == "static-compile"
    assert args.warmup * len(args.streams) + args.duration * len(args.streams) <= 90
    cpu = _args("--tiny")
    _defaults(cpu, "cpu")
    assert cpu.baseline == "static"


def test_context_without_room_for_the_second_turn_is_refused(tokenizer_dir: Path) -> None:
    args = _args(*QUICK, "--context", "100", "--tokenizer", str(tokenizer_dir))
    with pytest.raises(ConfigError, match="--context"):
        run_bench(args)


def test_streams_must_be_positive_levels() -> None:
    with pytest.raises(SystemExit):
        _args("--streams", "1,0")


def test_the_lone_reply_lane_can_be_measured(tokenizer_dir, tmp_path) -> None:
    out = tmp_path / "bench.json"
    args = _args(
        *QUICK,
        "--streams",
        "1",
        "--single-stream",
        "static",
        "--skip-baseline",
        "--tokenizer",
        str(tokenizer_dir),
        "--json",
        str(out),
    )
    assert run_bench(args) == 0
    report = json.loads(out.read_text())
    assert report["config"]["single_stream"] == "static"
    [level] = report["levels"]
    assert _positive(level["aggregate_tok_s"]) and _positive(level["turn2_ttft_p50_s"])


def test_the_saved_tokenizer_is_announced_in_korean(tmp_path, capsys) -> None:
    args = _args("--save-tokenizer", str(tmp_path / "토크나이저"))
    args.lang = "ko"  # as `synatra-bot --lang ko bench` sets it
    assert run_bench(args) == 0
    assert capsys.readouterr().out.startswith(f"토크나이저를 {tmp_path / '토크나이저'}에 썼어요.")


def test_attention_defaults_to_what_the_bot_picks(tokenizer_dir, capsys) -> None:
    args = _args(*QUICK, "--streams", "1", "--skip-baseline", "--tokenizer", str(tokenizer_dir))
    assert args.attn == "auto"
    assert run_bench(args) == 0
    header = capsys.readouterr().out.split("\n\n")[0]
    # resolve_attention, the function the engine itself loads a model with, picks sdpa here.
    assert "attention: requested auto, model sdpa," in header
    assert "batched static-cache lane: 8 replies" in header


def test_the_concurrency_preset_sets_the_60m_model_workload() -> None:
    args = _args("--preset", "mistral-60m")
    _defaults(args, "cpu")
    assert (args.prompt_tokens, args.context, args.streams, args.threads) == (1000, 2048, [1, 8], 1)
    assert args.steps
    given = _args("--preset", "mistral-60m", "--streams", "1,4", "-P", "300")
    _defaults(given, "cpu")
    assert (given.streams, given.prompt_tokens) == ([1, 4], 300)


def test_decode_steps_are_measured_against_generate_with_the_same_batch(
    tokenizer_dir, tmp_path, capsys
) -> None:
    out = tmp_path / "steps.json"
    args = _args(
        "--tiny",
        "-P",
        "64",
        "-N",
        "8",
        "--streams",
        "1,2",
        "--steps",
        "--rounds",
        "1",
        "--tokenizer",
        str(tokenizer_dir),
        "--json",
        str(out),
    )
    assert run_bench(args) == 0
    table = capsys.readouterr().out
    assert "| streams | generate() ms/step (same batch) | engine ms/step |" in table
    report = json.loads(out.read_text())
    one, two = report["steps"]
    assert (one["streams"], two["streams"]) == (1, 2)
    for level in (one, two):
        assert _positive(level["generate_ms_per_step"]) and _positive(level["engine_ms_per_step"])
        assert _positive(level["engine_total_tok_s"])
        assert level["lane"] == "batched static-cache lane"
