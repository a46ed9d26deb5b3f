"""The managed vLLM engine (ENGINE=vllm): the bot runs `vllm serve MODEL_ID` itself from the
host's vLLM install and talks to it like the managed llama.cpp server
(`synatra_bot.engine.managed`): loopback, supervised, token-id prompts to `/v1/completions`.

vLLM pins its own torch, so it lives in a venv of its own: `VLLM_COMMAND` is that venv's `vllm`
command, or its python (then `python -m vllm.entrypoints.cli.main serve ...`, what the `vllm`
command runs). The bot sets the address, the served name and the context window; the prompt
goes as ChatML token ids to the completions API, so no chat template is involved. The server's
API key is ENGINE_API_KEY, given in its environment (`VLLM_API_KEY`), never on its command line,
which every local user can read; without one it is empty (vLLM then asks for none), so a
`VLLM_API_KEY` in the bot's own environment cannot lock the bot out of its server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synatra_bot.engine.managed import ALIAS, ManagedServerEngine

#: The module the `vllm` command runs, for a VLLM_COMMAND that is vLLM's python.
CLI_MODULE = "vllm.entrypoints.cli.main"


@dataclass(frozen=True, slots=True)
class VllmServerConfig:
    """How to run vLLM: `command` its `vllm` (or python), `model` the hub id or folder it
    serves, `max_model_len` one reply's window (prompt and reply)."""

    command: str
    model: str
    max_model_len: int = 4096
    extra_args: tuple[str, ...] = ()


def is_python(command: str) -> bool:
    """Whether VLLM_COMMAND names a Python interpreter rather than the `vllm` command."""
    return Path(command).name.startswith("python")


def vllm_command(config: VllmServerConfig, port: int) -> list[str]:
    start = [config.command, "-m", CLI_MODULE] if is_python(config.command) else [config.command]
    return [
        *start,
        *("serve", config.model),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--served-model-name", ALIAS),
        *("--max-model-len", str(config.max_model_len)),
        *config.extra_args,
    ]


class ManagedVllmEngine(ManagedServerEngine):
    """An Engine that owns its vLLM server (see the module docstring)."""

    name = "vllm"
    label = "the vLLM server"

    def __init__(self, config: VllmServerConfig, **options: Any) -> None:
        super().__init__(**options)
        self._config = config

    async def _prepare(self) -> Callable[[int], Sequence[str]]:
        return lambda port: vllm_command(self._config, port)

    def _server_env(self) -> Mapping[str, str]:
        return {"VLLM_API_KEY": self._api_key}
