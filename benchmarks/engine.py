"""Benchmark the embedded engine: `python benchmarks/engine.py --tiny` (CPU) or, on a GPU without
internet, `python benchmarks/engine.py --random-weights --tokenizer FOLDER` (Mistral-7B shape,
bf16), FOLDER made beforehand with `--save-tokenizer FOLDER`.
Options are those of `synatra-bot bench`; see synatra_bot/engine/bench.py."""

from __future__ import annotations

import argparse
import logging
import sys

from synatra_bot.engine.bench import configure_parser, run_bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    configure_parser(parser)
    logging.basicConfig(level=logging.WARNING)
    return run_bench(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
