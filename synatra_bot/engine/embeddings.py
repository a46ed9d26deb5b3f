"""A client of an OpenAI-compatible `/v1/embeddings` server (llama.cpp's `llama-server
--embeddings`, vLLM, text-embeddings-inference): texts in, one float32 vector each out.

Every failure (refused, timed out, an answer that is not a list of vectors) is one
`EmbeddingsUnavailable`, so a caller recalls by words only for that prompt. The API key goes
only in the Authorization header and never into an error.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from synatra_bot.engine.openai_compat import without_credentials

if TYPE_CHECKING:
    import aiohttp

#: Characters of a turn that are embedded: a server refuses an input longer than its batch,
#: and a turn's start says what it is about.
EMBEDDED_CHARS = 512


class EmbeddingsUnavailable(Exception):
    """The server gave no vectors: down, slow, or an answer that is not what was asked."""


class EmbeddingsRefused(EmbeddingsUnavailable):
    """The server refused the request itself (a 4xx): sending it again would not help."""


def embeddings_url(base_url: str) -> str:
    """`http://host:8081`, `.../` or `.../v1` -> `.../v1/embeddings`."""
    base = base_url.rstrip("/")
    return base + ("" if base.endswith("/v1") else "/v1") + "/embeddings"


class EmbeddingsClient:
    """Asks one server for embeddings of `model`; `close()` ends its connections."""

    def __init__(self, url: str, *, model: str, api_key: str = "") -> None:
        self.url = embeddings_url(url)
        self.model = model
        self._api_key = api_key
        self._session: aiohttp.ClientSession | None = None

    @property
    def shown_url(self) -> str:
        """The server's address without any user and password in it, for logs."""
        return without_credentials(self.url)

    async def embed(self, texts: Sequence[str], *, timeout_s: float) -> list[list[float]]:
        """One vector per text, in order, within `timeout_s` seconds all told."""
        import aiohttp

        if not texts:
            return []
        if self._session is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._session = aiohttp.ClientSession(headers=headers)
        request = {
            "model": self.model,
            "input": [text[:EMBEDDED_CHARS] or " " for text in texts],
            "encoding_format": "float",
        }
        try:
            async with asyncio.timeout(timeout_s):
                async with self._session.post(self.url, json=request) as response:
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        raise EmbeddingsRefused(f"HTTP {response.status}")
                    if response.status != 200:
                        raise EmbeddingsUnavailable(f"HTTP {response.status}")
                    answer = await response.read()
        except TimeoutError:
            raise EmbeddingsUnavailable(f"no answer within {timeout_s:g} s") from None
        except (OSError, aiohttp.ClientError) as error:
            raise EmbeddingsUnavailable(type(error).__name__) from None
        # A batch's answer is thousands of numbers as text: read off the event loop.
        return await asyncio.to_thread(_vectors, answer, len(texts))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _vectors(body: bytes, expected: int) -> list[list[float]]:
    """The answer's vectors in input order, each of the same length, all finite numbers."""
    try:
        answer: Any = json.loads(body)
    except ValueError:
        raise EmbeddingsUnavailable("the answer is not JSON") from None
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list) or len(data) != expected:
        raise EmbeddingsUnavailable("the answer holds no vector for each input")
    vectors: list[list[float] | None] = [None] * expected
    for position, item in enumerate(data):
        index = item.get("index", position) if isinstance(item, dict) else None
        values = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < expected or not isinstance(values, list):
            raise EmbeddingsUnavailable("the answer holds no vector for each input")
        try:
            vector = [float(v) for v in values]
        except (TypeError, ValueError):
            raise EmbeddingsUnavailable("a vector holds something other than numbers") from None
        if not vector or not all(math.isfinite(v) for v in vector):
            raise EmbeddingsUnavailable("a vector is empty or not finite")
        vectors[index] = vector
    if any(v is None for v in vectors) or len({len(v or ()) for v in vectors}) != 1:
        raise EmbeddingsUnavailable("the vectors are missing or of different lengths")
    return [v for v in vectors if v is not None]
