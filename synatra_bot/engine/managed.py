"""An engine whose OpenAI-compatible server the bot runs itself (llama.cpp's, vLLM's).

The server is supervised by `synatra_bot.engine.supervisor` on a free loopback port and spoken
to through `OpenAICompatEngine` with token-id prompts under the name it serves the model by. A
reply in flight when the server dies ends with the engine's note; the next reply waits for the
server to be back (up to the engine timeout), and `health()` says it is restarting meanwhile.
A subclass says how to run its server (`_prepare`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from synatra_bot.engine.base import EngineHealth, SamplingParams
from synatra_bot.engine.openai_compat import OpenAICompatEngine
from synatra_bot.engine.supervisor import ServerProcess
from synatra_bot.errors import EngineUnavailable

#: The name a managed server serves the model by.
ALIAS = "synatra"


class ManagedServerEngine:
    """An Engine that owns its server (see the module docstring).

    `name` is the server's process name in the log; `label` names it to people ("the vLLM
    server"); `api_key`, when set, goes to the server through `_server_env` and with each
    request.
    """

    name = "server"
    label = "the server"

    def __init__(
        self,
        *,
        tokenizer: Any = None,
        tokenizer_dir_or_id: str | None = None,
        timeout_s: float = 120.0,
        backoff_s: float = 1.0,
        api_key: str = "",
    ) -> None:
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._tokenizer = tokenizer
        self._tokenizer_source = tokenizer_dir_or_id
        self._api_key = api_key
        self.server: ServerProcess | None = None
        self._client: OpenAICompatEngine | None = None

    async def _prepare(self) -> Callable[[int], Sequence[str]]:
        """What the server needs before it can run (a download, a build), then its command
        line for a port."""
        raise NotImplementedError

    def _server_env(self) -> Mapping[str, str]:
        """Environment the server gets on top of the bot's."""
        return {}

    async def start(self) -> None:
        if self._client is not None:
            return
        command = await self._prepare()
        self.server = ServerProcess(
            self.name, command, env=self._server_env(), backoff_s=self._backoff_s
        )
        await self.server.start()
        client = OpenAICompatEngine(
            self.server.url,
            model=ALIAS,
            api_key=self._api_key,
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
            return EngineHealth(False, f"{self.name} (not started)", 0, 0, 0.0)
        health = self._client.health()
        if self.server.ready:
            return health
        return replace(
            health,
            ok=False,
            recovering=True,
            reason=f"{self.label} is restarting",
            detail=f"{health.detail} ({self.name} restarting, {self.server.restarts} restarts)",
        )

    def _started(self) -> OpenAICompatEngine:
        if self._client is None:
            raise EngineUnavailable(f"{self.label} is not started")
        return self._client
