"""The managed llama.cpp engine (ENGINE=llamacpp): the bot runs llama.cpp's `llama-server`
itself with a GGUF and talks to it through the OpenAI-compatible client, with token-id prompts
and the roleplay samplers (`synatra_bot.engine.managed`).

Where the server comes from: `LLAMA_SERVER` when the host gives one, else a Release build from
the pinned llama.cpp sources (`synatra_bot.engine.llama_build`), made on the first start and
cached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synatra_bot.engine.gguf import fetch_gguf
from synatra_bot.engine.managed import ALIAS, ManagedServerEngine
from synatra_bot.gguf_source import GgufSource


@dataclass(frozen=True, slots=True)
class LlamaServerConfig:
    """How to run llama-server: `server` "" builds one; `context_size` is one reply's window
    (the server's is that times `parallel`, shared by its slots)."""

    gguf: GgufSource
    server: str = ""
    parallel: int = 4
    context_size: int = 4096
    extra_args: tuple[str, ...] = ()


def server_command(server: Path, gguf: Path, config: LlamaServerConfig, port: int) -> list[str]:
    return [
        str(server),
        *("--model", str(gguf), "--alias", ALIAS),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--parallel", str(config.parallel)),
        *("--ctx-size", str(config.context_size * config.parallel)),
        *config.extra_args,
    ]


class ManagedLlamaEngine(ManagedServerEngine):
    """An Engine that owns its llama-server (see the module docstring)."""

    name = "llama-server"
    label = "the llama.cpp server"

    def __init__(self, config: LlamaServerConfig, **options: Any) -> None:
        super().__init__(**options)
        self._config = config

    async def _prepare(self) -> Callable[[int], Sequence[str]]:
        gguf = await asyncio.to_thread(fetch_gguf, self._config.gguf)
        binary = await asyncio.to_thread(self._server_binary)
        return lambda port: server_command(binary, gguf, self._config, port)

    def _server_binary(self) -> Path:
        if self._config.server:
            return Path(self._config.server)
        from synatra_bot.engine.llama_build import build

        return build("release").server
