"""Engine for OpenAI-compatible servers: vLLM, TGI, llama.cpp server, `transformers serve`.

It posts our own ChatML prompt to `/v1/completions` (the legacy text API, so the budgeted prompt is
exactly what the model sees) with `stream: true`, and reads the server-sent events.

- Prompts given as token ids are sent as ids when `send_token_ids=True` (vLLM and llama.cpp
  accept them); otherwise they are rendered as text with `ids_to_server_text` (a leading BOS is
  dropped: servers add their own): the server re-tokenizes it into the same ids, and role-token
  text typed by users is broken so it stays ordinary text.
- `top_k`, `repetition_penalty` and `stop_token_ids` are not in the OpenAI schema. They are sent
  (vLLM honours them) until a server rejects them by name (`transformers serve` answers 422);
  after that the engine sends only standard fields. Stop strings `<|im_end|>`, `<|im_start|>`,
  `</s>` always go in `stop`, and the text is also cut at them here.
- The roleplay samplers go under the names llama.cpp and koboldcpp read: `min_p` when above 0,
  the `dry_*` fields when `dry_multiplier` is above 0 (`dry_penalty_last_n` 0, the whole context,
  is sent as llama.cpp's -1), the `xtc_*` fields when `xtc_probability` is above 0. A 400/422
  that names one of them is sent again at once without them, and they stay off for this
  engine: a server that rejects `min_p` knows none of them, one that rejects a DRY or XTC field
  may still know `min_p`. Such a resend (for these or the fields above) spends no retry.
- Connect errors, timeouts, 429 and 5xx before the first token are retried with exponential
  backoff (429 honours Retry-After). Other 4xx fail at once with the server's reason. A stream
  that ends without a finish reason raises GenerationInterrupted with the text so far.
- The API key is sent only in the Authorization header and never appears in errors or logs.
- Error messages are safe to show players: a short reason with a localisation `key` (see
  synatra_bot.errors.EngineError), never the URL or the server's answer. Those go to the log,
  the URL without the user and password it may carry and with the API key masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import urllib.parse
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from synatra_bot.engine.base import STOP_STRINGS, EngineHealth, SamplingParams, ThroughputMeter
from synatra_bot.engine.detokenize import StopStringFilter
from synatra_bot.errors import EngineError, EngineUnavailable, GenerationInterrupted
from synatra_bot.tokenizer import BOS_ID, ids_to_server_text

if TYPE_CHECKING:
    import aiohttp
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

EXTENSION_FIELDS = ("top_k", "repetition_penalty", "stop_token_ids")
DRY_XTC_FIELDS = (
    "dry_multiplier",
    "dry_base",
    "dry_allowed_length",
    "dry_sequence_breakers",
    "dry_penalty_last_n",
    "xtc_threshold",
    "xtc_probability",
)
#: Sampler fields to stop sending once a server rejects the key field by name.
SAMPLER_FIELD_GROUPS = {
    "min_p": ("min_p", *DRY_XTC_FIELDS),
    **dict.fromkeys(DRY_XTC_FIELDS, DRY_XTC_FIELDS),
}
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 10.0


class _Retry(Exception):
    def __init__(self, reason: str, delay_s: float | None = None) -> None:
        super().__init__(reason)
        self.delay_s = delay_s


class _Resend(Exception):
    """The server rejected optional fields by name; they are dropped, send again at once."""


@dataclass
class _Active:
    response: aiohttp.ClientResponse | None = None
    started: bool = False
    cancelled: bool = False


def completions_url(base_url: str) -> str:
    """`http://host:8000`, `http://host:8000/` or `http://host:8000/v1` -> `.../v1/completions`."""
    base = base_url.rstrip("/")
    return base + ("/completions" if base.endswith("/v1") else "/v1/completions")


def without_credentials(url: str) -> str:
    """`http://user:password@host/v1` -> `http://host/v1`: for logs and health reports."""
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


class OpenAICompatEngine:
    """Streams completions from a remote OpenAI-compatible server."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str = "",
        model: str,
        tokenizer_dir_or_id: str | None = None,
        timeout_s: float = 120,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        send_token_ids: bool = False,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        self.base_url = base_url
        self._url = completions_url(base_url)
        self._api_key = api_key
        self.model = model
        self._tokenizer_source = tokenizer_dir_or_id
        self._tokenizer = tokenizer
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._send_token_ids = send_token_ids
        self._extensions_ok = True
        #: Sampler fields this server rejected: never sent again.
        self._refused_fields: set[str] = set()
        self._session: aiohttp.ClientSession | None = None
        self._active: dict[str, _Active] = {}
        self._meter = ThroughputMeter()
        self._last_error = ""

    async def start(self) -> None:
        import aiohttp

        if self._tokenizer is None and self._tokenizer_source is not None:
            from synatra_bot.tokenizer import load_tokenizer

            self._tokenizer = await asyncio.to_thread(load_tokenizer, self._tokenizer_source)
        if self._session is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._session = aiohttp.ClientSession(headers=headers)

    async def close(self) -> None:
        for request_id in list(self._active):
            await self.cancel(request_id)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _secret_free(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _prompt_payload(self, prompt: Sequence[int] | str) -> str | list[int]:
        if isinstance(prompt, str):
            return prompt
        ids = list(prompt)
        if ids and ids[0] == BOS_ID:
            ids = ids[1:]
        if self._send_token_ids:
            return ids
        if self._tokenizer is None:
            raise EngineError("prompts given as token ids need a tokenizer (tokenizer_dir_or_id)")
        return ids_to_server_text(self._tokenizer, ids)

    def _body(self, prompt: str | list[int], params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": list(dict.fromkeys((*STOP_STRINGS, *params.stop_strings))),
            "stream": True,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if self._extensions_ok:
            body["top_k"] = params.top_k if params.top_k > 0 else -1
            body["repetition_penalty"] = params.repetition_penalty
            body["stop_token_ids"] = list(params.stop_ids)
        samplers: dict[str, Any] = {}
        if params.min_p > 0.0:
            samplers["min_p"] = params.min_p
        if params.dry_on:
            samplers["dry_multiplier"] = params.dry_multiplier
            samplers["dry_base"] = params.dry_base
            samplers["dry_allowed_length"] = params.dry_allowed_length
            samplers["dry_sequence_breakers"] = list(params.dry_sequence_breakers)
            samplers["dry_penalty_last_n"] = params.dry_penalty_last_n or -1
        if params.xtc_on:
            samplers["xtc_threshold"] = params.xtc_threshold
            samplers["xtc_probability"] = params.xtc_probability
        body.update((k, v) for k, v in samplers.items() if k not in self._refused_fields)
        return body

    def stream(
        self, prompt: Sequence[int] | str, params: SamplingParams, *, request_id: str
    ) -> AsyncIterator[str]:
        return self._stream(prompt, params, request_id=request_id)

    async def _stream(
        self, prompt: Sequence[int] | str, params: SamplingParams, *, request_id: str
    ) -> AsyncIterator[str]:
        import aiohttp

        if self._session is None:
            raise EngineUnavailable("the OpenAI-compatible engine is not started")
        if request_id in self._active:
            raise EngineError(f"request id {request_id!r} is already running")
        payload = self._prompt_payload(prompt)
        active = _Active()
        self._active[request_id] = active
        stops = StopStringFilter((*STOP_STRINGS, *params.stop_strings))
        shown = ""
        try:
            response = await self._connect(payload, params, active)
            finished = False
            async with response:
                try:
                    async for line in response.content:
                        event = self._parse_line(line)
                        if event is None:
                            continue
                        if event == "[DONE]":
                            finished = True
                            break
                        text, finish_reason = self._event_text(event, shown)
                        if text:
                            active.started = True
                            self._meter.add(1)
                            out = stops.feed(text)
                            if out:
                                shown += out
                                yield out
                        if finish_reason is not None or stops.stopped:
                            finished = True
                            break
                except (TimeoutError, OSError, aiohttp.ClientError) as error:
                    if not active.cancelled:
                        self._last_error = type(error).__name__
                        log.warning(
                            "the connection to the engine at %s broke mid-reply (%s)",
                            self._safe_url(),
                            type(error).__name__,
                        )
                        raise GenerationInterrupted(
                            "the connection to the generation server was lost",
                            partial_text=shown,
                            key="engine.lost",
                        ) from None
            if active.cancelled:
                raise GenerationInterrupted("request cancelled", partial_text=shown)
            if not finished:
                log.warning(
                    "the engine at %s closed the stream before the reply ended", self._safe_url()
                )
                raise GenerationInterrupted(
                    "the generation server ended the reply early",
                    partial_text=shown,
                    key="engine.ended_early",
                )
            tail = stops.flush()
            if tail:
                yield tail
            self._last_error = ""
        finally:
            self._active.pop(request_id, None)
            if active.response is not None:
                active.response.close()

    async def _connect(
        self, payload: str | list[int], params: SamplingParams, active: _Active
    ) -> aiohttp.ClientResponse:
        """POST the request, retrying until the server starts streaming."""
        import aiohttp

        assert self._session is not None
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout_s, sock_read=self._timeout_s
        )
        attempt = 0
        while True:
            if active.cancelled:
                raise GenerationInterrupted("request cancelled", partial_text="")
            try:
                body = self._body(payload, params)
                response = await self._session.post(self._url, json=body, timeout=timeout)
                active.response = response
                if response.status == 200:
                    return response
                await self._raise_for_status(response, sent=body.keys())
            except _Resend:
                # Not an outage: no attempt is spent. Each resend drops fields for good, so
                # this happens at most a few times per engine.
                if active.response is not None:
                    active.response.close()
                    active.response = None
                continue
            except _Retry as retry:
                reason, delay = str(retry), retry.delay_s
            except (TimeoutError, aiohttp.ClientConnectionError, OSError) as error:
                reason, delay = f"cannot reach the engine ({type(error).__name__})", None
            if active.response is not None:
                active.response.close()
                active.response = None
            self._last_error = reason
            if attempt >= self._max_retries:
                attempts = attempt + 1
                log.warning(
                    "engine request failed (%s); gave up after %d attempts at %s",
                    reason,
                    attempts,
                    self._safe_url(),
                )
                raise EngineUnavailable(
                    f"the generation server is unavailable (gave up after {attempts} attempts)",
                    key="engine.unavailable",
                    attempts=attempts,
                )
            wait = delay if delay is not None else self._backoff_delay(attempt)
            log.warning("engine request failed (%s); retrying in %.1f s", reason, wait)
            await asyncio.sleep(wait)
            attempt += 1

    def _backoff_delay(self, attempt: int) -> float:
        base: float = min(self._backoff_s * 2**attempt, MAX_BACKOFF_S)
        return base * (0.75 + random.random() / 2)

    def _safe_url(self) -> str:
        return self._secret_free(without_credentials(self._url))

    async def _raise_for_status(
        self, response: aiohttp.ClientResponse, *, sent: Collection[str]
    ) -> None:
        status = response.status
        answer = self._secret_free(await response.text())
        detail = answer[:300].strip()
        response.close()
        if status in RETRY_STATUSES:
            retry_after = response.headers.get("Retry-After", "")
            delay = None
            with contextlib.suppress(ValueError):
                delay = min(float(retry_after), MAX_BACKOFF_S * 6) if retry_after else None
            raise _Retry(f"engine answered {status}", delay)
        if status in (400, 422) and self._drop_rejected_fields(answer, sent):
            raise _Resend
        if status in (401, 403):
            log.warning(
                "the engine at %s refused the API key (%s); check ENGINE_API_KEY: %s",
                self._safe_url(),
                status,
                detail,
            )
            raise EngineUnavailable(
                f"the generation server refused the bot's credentials ({status})",
                key="engine.refused",
                status=status,
            )
        log.warning(
            "the engine at %s rejected the request (%s): %s", self._safe_url(), status, detail
        )
        raise EngineError(
            f"the generation server rejected the request ({status})",
            key="engine.rejected",
            status=status,
        )

    def _drop_rejected_fields(self, answer: str, sent: Collection[str]) -> bool:
        """Stop sending the optional fields a rejection names; whether there were any."""
        dropped = False
        if self._extensions_ok and any(name in answer for name in EXTENSION_FIELDS):
            log.warning(
                "the engine does not accept top_k/repetition_penalty/stop_token_ids; "
                "sending only standard OpenAI fields from now on"
            )
            self._extensions_ok = False
            dropped = True
        rejected = [name for name in SAMPLER_FIELD_GROUPS if name in sent and name in answer]
        if rejected:
            refused = {field for name in rejected for field in SAMPLER_FIELD_GROUPS[name]}
            self._refused_fields |= refused
            log.warning(
                "the engine does not accept %s; not sending %s from now on",
                ", ".join(rejected),
                ", ".join(sorted(refused)),
            )
            dropped = True
        return dropped

    @staticmethod
    def _parse_line(line: bytes) -> dict[str, Any] | str | None:
        text = line.decode("utf-8").strip()
        if not text.startswith("data:"):
            return None
        data = text[5:].strip()
        if data == "[DONE]":
            return data
        try:
            parsed = json.loads(data)
        except json.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, dict) else None

    def _event_text(self, event: dict[str, Any] | str, shown: str) -> tuple[str, str | None]:
        if isinstance(event, str):
            return "", None
        if "error" in event:
            message = event["error"]
            if isinstance(message, dict):
                message = message.get("message", "")
            log.warning(
                "the engine at %s failed mid-reply: %s",
                self._safe_url(),
                self._secret_free(str(message))[:300],
            )
            raise GenerationInterrupted(
                "the generation server failed mid-reply", partial_text=shown, key="engine.failed"
            )
        choices = event.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        return str(choice.get("text") or ""), choice.get("finish_reason")

    async def cancel(self, request_id: str) -> None:
        active = self._active.get(request_id)
        if active is None:
            return
        active.cancelled = True
        if active.response is not None:
            # Closing the connection is how an OpenAI-compatible server learns to stop.
            active.response.close()

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is None:
            raise EngineUnavailable("counting tokens needs the model's tokenizer (MODEL_ID)")
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def health(self) -> EngineHealth:
        running = sum(1 for a in self._active.values() if a.started)
        ok = self._session is not None and not self._last_error
        detail = f"{self.model} at {self._safe_url()}"
        if self._session is None:
            detail += " (not started)"
        elif self._last_error:
            detail += f" (last error: {self._last_error})"
        return EngineHealth(
            ok=ok,
            detail=detail,
            queued=len(self._active) - running,
            running=running,
            tokens_per_second=self._meter.rate(),
            refused=self._refused_settings(),
        )

    def _refused_settings(self) -> frozenset[str]:
        """The SamplingParams settings the server refused (by the setting that turns each on)."""
        refused = set(self._refused_fields)
        if not self._extensions_ok:
            refused |= {"top_k", "repetition_penalty"}
        return frozenset(refused)
