"""The managed llama.cpp engine (ENGINE=llamacpp): the bot runs llama.cpp's `llama-server`
itself with a GGUF and talks to it through the OpenAI-compatible client, with token-id prompts
and the roleplay samplers.

Where the server comes from: `LLAMA_SERVER` when the host gives one, else a Release build from
the pinned llama.cpp sources (`synatra_bot.engine.llama_build`), made on the first start and
cached. The server listens on a free loopback port and is supervised by
`synatra_bot.engine.supervisor`: a reply in flight when it dies ends with the engine's note,
and the next reply waits for it to be back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from synatra_bot.engine.base import EngineHealth, SamplingParams
from synatra_bot.engine.gguf import GgufSource, fetch_gguf
from synatra_bot.engine.openai_compat import OpenAICompatEngine
from synatra_bot.engine.supervisor import ServerProcess

#: The name the server serves the model by.
ALIAS = "synatra"


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


class ManagedLlamaEngine:
    """An Engine that owns its llama-server (see the module docstring)."""

    def __init__(
        self,
        config: LlamaServerConfig,
        *,
        tokenizer: Any = None,
        tokenizer_dir_or_id: str | None = None,
        timeout_s: float = 120.0,
        backoff_s: float = 1.0,
    ) -> None:
        self._config = config
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._tokenizer = tokenizer
        self._tokenizer_source = tokenizer_dir_or_id
        self.server: ServerProcess | None = None
        self._client: OpenAICompatEngine | None = None

    async def start(self) -> None:
        if self._client is not None:
            return
        gguf = await asyncio.to_thread(fetch_gguf, self._config.gguf)
        binary = await asyncio.to_thread(self._server_binary)
        self.server = ServerProcess(
            "llama-server",
            lambda port: server_command(binary, gguf, self._config, port),
            backoff_s=self._backoff_s,
        )
        await self.server.start()
        client = OpenAICompatEngine(
            self.server.url,
            model=ALIAS,
            tokenizer=self._tokenizer,
            tokenizer_dir_or_id=self._tokenizer_source,
            timeout_s=self._timeout_s,
            send_token_ids=True,
        )
        try:
            await client.start()
        except BaseException:
            await self.server.stop()
            raise
        self._client = client

    def _server_binary(self) -> Path:
        if self._config.server:
            return Path(self._config.server)
        from synatra_bot.engine.llama_build import build

        return build("release").server

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        if self.server is not None:
            await self.server.stop()

    def stream(
        self, prompt: Sequence[int] | str, params: SamplingParams, *, request_id: str
    ) -> AsyncIterator[str]:
        return self._stream(prompt, params, request_id=request_id)

    async def _stream(
        self, prompt: Sequence[int] | str, params: SamplingParams, *, request_id: str
    ) -> AsyncIterator[str]:
        client = self._started()
        assert self.server is not None
        await self.server.wait_ready(self._timeout_s)
        async for delta in client.stream(prompt, params, request_id=request_id):
            yield delta

    async def cancel(self, request_id: str) -> None:
        if self._client is not None:
            await self._client.cancel(request_id)

    def count_tokens(self, text: str) -> int:
        return self._started().count_tokens(text)

    def health(self) -> EngineHealth:
        if self._client is None or self.server is None:
            return EngineHealth(False, "llama-server (not started)", 0, 0, 0.0)
        health = self._client.health()
        if self.server.ready:
            return health
        return replace(
            health,
            ok=False,
            recovering=True,
            reason="the llama.cpp server is restarting",
            detail=f"{health.detail} (llama-server restarting, {self.server.restarts} restarts)",
        )

    def _started(self) -> OpenAICompatEngine:
        if self._client is None:
            from synatra_bot.errors import EngineUnavailable

            raise EngineUnavailable("the llama.cpp engine is not started")
        return self._client
