"""The engine benchmark runs end to end on the CPU with a tiny model (speed is not asserted)."""

from __future__ import annotations

import argparse
import json

from synatra_bot.engine.bench import configure_parser, run_bench


def test_tiny_benchmark_reports_every_phase(tokenizer_dir, tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args(
        [
            "--tiny",
            "-P",
            "32",
            "-N",
            "4",
            "-C",
            "2",
            "--baseline-requests",
            "1",
            "--prefix-channels",
            "1",
            "--tokenizer",
            str(tokenizer_dir),
            "--json",
            str(out),
        ]
    )
    assert run_bench(args) == 0
    table = capsys.readouterr().out
    assert "plain generate(), one at a time" in table
    assert "engine, 2 arriving 50 ms apart" in table
    report = json.loads(out.read_text())
    assert [p["requests"] for p in report["phases"]] == [1, 1, 2, 1, 1]
    assert report["device"].startswith("CPU")
