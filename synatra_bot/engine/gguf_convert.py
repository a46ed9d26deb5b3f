"""`synatra-bot gguf`: make a GGUF of MODEL_ID for ENGINE=llamacpp with llama.cpp's own tools.

llama.cpp's `convert_hf_to_gguf.py` writes the model in 16-bit (or a type it writes itself:
f32, f16, bf16, q8_0); `llama-quantize` then makes the asked type (Q4_K_M by default: about
4.4 GB for a 7B model, the usual choice for a CPU or an 8 GB GPU). Both come from the same
llama.cpp build the engine uses (`synatra_bot.engine.llama_build`), built first when missing.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from synatra_bot.engine.llama_build import LlamaBuild
from synatra_bot.errors import ConfigError, EngineError
from synatra_bot.language import Language, choose

log = logging.getLogger(__name__)

DEFAULT_TYPE = "Q4_K_M"
#: Types the converter writes itself (no quantiser needed), by its `--outtype` names.
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
#: Types `llama-quantize` makes that suit this model (its own names).
QUANTIZER_TYPES = (
    "Q2_K",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q4_0",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_0",
    "Q5_K_S",
    "Q5_K_M",
    "Q6_K",
)


def check_type(raw: str) -> str:
    """The type in its canonical spelling, or ConfigError naming --type."""
    for known in (*CONVERTER_TYPES, *QUANTIZER_TYPES):
        if raw.lower() == known.lower():
            return known
    choices = ", ".join((*QUANTIZER_TYPES, *CONVERTER_TYPES))
    raise ConfigError("--type", f"must be one of {choices}, got {raw!r}")


def model_folder(model_id: str) -> Path:
    """A local folder of `model_id`, downloading a hub model into the hub's cache first."""
    from synatra_bot.tokenizer import check_model_source

    path = Path(model_id)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError("MODEL_ID", f"{model_id} has no config.json: not a model folder")
        return path
    check_model_source(model_id)
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.model", "*.safetensors", "*.txt"]
    return Path(snapshot_download(model_id, allow_patterns=patterns))


def convert(model: Path, out: Path, kind: str, tools: LlamaBuild) -> Path:
    """Write `model` (a folder) as a GGUF of type `kind` to `out`; returns `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    direct = kind in CONVERTER_TYPES
    written = out if direct else out.with_name(out.name + ".f16.tmp")
    try:
        converter = [sys.executable, str(tools.converter), str(model)]
        _step(
            "converting",
            [*converter, "--outfile", str(written), "--outtype", kind if direct else "f16"],
        )
        if not direct:
            _step("quantising", [str(tools.quantizer), str(written), str(out), kind])
    finally:
        if not direct:
            written.unlink(missing_ok=True)
    return out


def _step(what: str, command: list[str]) -> None:
    log.info("%s: %s", what, " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, errors="replace")
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        last = lines[-1] if lines else f"status {result.returncode}"
        raise EngineError(f"{what} failed: {last}")


def configure_parser(parser: argparse.ArgumentParser, *, language: Language = "en") -> None:
    """Add the conversion's options to `parser`, their help in `language`."""

    def say(english: str, korean: str) -> str:
        return choose(language, english, korean)

    parser.add_argument(
        "--model",
        help=say(
            "the model folder or hub id (default: MODEL_ID)",
            "모델 폴더나 허브 id (기본: MODEL_ID)",
        ),
    )
    parser.add_argument(
        "--type",
        default=DEFAULT_TYPE,
        help=say(f"the GGUF's type (default {DEFAULT_TYPE})", f"GGUF 형식 (기본 {DEFAULT_TYPE})"),
    )
    parser.add_argument(
        "--out",
        help=say(
            "the file to write (default: models/<model>.<type>.gguf)",
            "쓸 파일 (기본: models/<모델>.<형식>.gguf)",
        ),
    )
    parser.add_argument(
        "--llama-cpp",
        type=Path,
        default=None,
        help=say(
            "a llama.cpp folder laid out as the bot's build (default: build or reuse the bot's)",
            "봇의 빌드와 같은 구조의 llama.cpp 폴더 (기본: 봇의 빌드를 만들거나 다시 씀)",
        ),
    )


def run_convert(args: argparse.Namespace, *, default_model_id: str) -> int:
    """Convert, print the file's path, and say how to use it."""
    from synatra_bot.engine.llama_build import build

    kind = check_type(args.type)
    model_id = args.model or default_model_id
    folder = model_folder(model_id)
    name = Path(model_id.rstrip("/")).name
    out = Path(args.out) if args.out else Path("models") / f"{name}.{kind}.gguf"
    tools = LlamaBuild(args.llama_cpp) if args.llama_cpp else build("release", progress=_print)
    if not tools.is_built():
        raise ConfigError("--llama-cpp", f"{tools.root} has no llama-quantize or converter")
    convert(folder, out, kind, tools)
    print(out)
    print(f"run the bot on it with MODEL_GGUF={out}", file=sys.stderr)
    return 0


def _print(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
