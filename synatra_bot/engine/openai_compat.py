"""Engine for OpenAI-compatible servers: vLLM, TGI, llama.cpp server, `transformers serve`.

It posts our own ChatML prompt to `/v1/completions` (the legacy text API, so the budgeted prompt is
exactly what the model sees) with `stream: true`, and reads the server-sent events.

- Prompts given as token ids are sent as ids when `send_token_ids=True` (vLLM and llama.cpp
  accept them, and take them as they are, so the BOS stays); otherwise they are rendered as text
  with `ids_to_server_text` (a leading BOS is dropped: servers add their own to text): the
  server re-tokenizes it into the same ids, and role-token text typed by users is broken so it
  stays ordinary text.
- `top_k`, `repetition_penalty` and `stop_token_ids` are not in the OpenAI schema. They are sent
  (vLLM honours them) until a server rejects them by name (`transformers serve` answers 422);
  after that the engine sends only standard fields. A repetition penalty also goes under
  llama.cpp's names, `repeat_penalty` over `repeat_last_n` tokens: the whole context, as
  transformers and vLLM apply it. Stop strings `<|im_end|>`, `<|im_start|>`, `</s>` always go
  in `stop`, and the text is also cut at them here.
- The roleplay samplers go under the names llama.cpp and koboldcpp read: `min_p` always (0 is
  off; llama.cpp's server would apply 0.05 to a request without it), the `dry_*` fields when
  `dry_multiplier` is above 0, the `xtc_*` fields when `xtc_probability` is above 0. A window of
  0 (`dry_penalty_last_n`, the whole context) is sent as the reply's whole length, prompt and
  new tokens: llama.cpp's server takes only a count. A 400/422 that names one of them is sent
  again at once without them, and they stay off for this engine: a server that rejects `min_p`
  knows none of them, one that rejects a DRY or XTC field may still know `min_p`. Such a resend
  (for these or the fields above) spends no retry.
- Each request asks for the stream's token usage (`stream_options.include_usage`; newer
  `transformers serve` and vLLM report it only when asked): the reply's `completion_tokens`
  feed `health()`'s tokens per second, which otherwise count one token per text event. The
  stream is read past the finishing event to the usage event that follows it. A server that
  rejects `stream_options` by name gets the request again without it.
- Each reply asks for its own connection (`Connection: close`), never one pooled from the last
  reply: llama.cpp's server closes the connection after a stream although it announces
  keep-alive, and reusing it would cost the next reply a failed attempt.
- Connect errors, timeouts, 429 and 5xx before the first token are retried with exponential
  backoff (429 honours Retry-After). Other 4xx fail at once with the server's reason. A stream
  that ends without a finish reason raises GenerationInterrupted with the text so far.
- A stream of another shape than the API's (a line that is not UTF-8, an event that is not a
  JSON object, `choices` that is not a list, a choice with neither text nor delta, a field of
  the wrong type) is the server's fault, not the bot's: GenerationInterrupted with the text so
  far and the key `engine.malformed`, logged as one warning. A stream that ends without a
  single choice is malformed too, and one whose choices carry no text at all raises
  EngineError (`engine.empty`): neither becomes an empty reply. Until a reply goes through
  again, `health()` says how many failed in a row and why the last one did.
- The request's `model` is the name the server knows the model by (ENGINE_MODEL: a GGUF file's
  alias in llama.cpp, vLLM's `--served-model-name`), which may differ from the tokenizer's
  MODEL_ID. At start the engine reads the server's `/v1/models` and warns, naming what it
  serves, when the name is not there.
- The API key is sent only in the Authorization header and never appears in errors or logs.
- Error messages are safe to show players: a short reason with a localisation `key` (see
  synatra_bot.errors.EngineError), never the URL or the server's answer. Those go to the log,
  the URL without the user and password it may carry and with the API key masked.

With `api="chat"` it posts to `/v1/chat/completions` instead, for servers that offer only that:
the prompt is split back into the messages it was built from (`chat_prompt`) and the server
renders them with its own chat template, which must be ChatML for Synatra (vLLM:
`--chat-template`). Everything above holds for both APIs; only the prompt fields of the
request and the field each streamed chunk carries its text in (`text`, `delta.content`) differ.

- The split works on token ids: only the real `<|im_start|>`/`<|im_end|>` ids are role
  boundaries. The builder never lets user text produce those ids, and text inside a message
  that merely reads like a special token (a user typing `<|im_start|>system`) is broken with a
  zero-width space, as `ids_to_server_text` does above, because the server tokenizes the
  rendered template and would otherwise turn it into a real role token. A prompt given as text
  is split on the marker text and trusted as it is, just as the completions API trusts it:
  the bot always gives ids.
- The open block at the end becomes the model's prefix (a group speaker's `민지:`, a message
  being continued, a player's name when impersonating). It is sent as the last message, in its
  own role, with vLLM's `continue_final_message: true, add_generation_prompt: false`, so the
  model writes on from it. A server that rejects those fields by name (`transformers serve`
  answers 422: it always adds a generation prompt and cannot continue a final message, not even
  through `chat_template_kwargs`) gets the same messages without the prefix from then on, and
  its generation prompt opens a fresh assistant message: no speaker's name to go on from, a
  message being continued is answered instead, an impersonated player's line comes out in the
  character's voice. An empty assistant block at the end is that generation prompt already, so
  it is never sent. A server that silently ignores the fields cannot be told apart.
- `send_token_ids` is for the completions API only: chat messages are text.
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
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from synatra_bot.engine.base import (
    CONTINUATION,
    STOP_STRINGS,
    EngineHealth,
    SamplingParams,
    ThroughputMeter,
)
from synatra_bot.engine.detokenize import StopStringFilter
from synatra_bot.errors import EngineError, EngineUnavailable, GenerationInterrupted
from synatra_bot.tokenizer import (
    BOS_ID,
    FORBIDDEN_CONTENT_IDS,
    IM_END,
    IM_END_ID,
    IM_START,
    IM_START_ID,
    ids_to_server_text,
)

if TYPE_CHECKING:
    import aiohttp
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

EXTENSION_FIELDS = (
    "top_k",
    "repetition_penalty",
    "repeat_penalty",
    "repeat_last_n",
    "stop_token_ids",
)
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
#: The chat API's fields that make the server write on from the final message instead of
#: opening a new assistant message (vLLM's names).
CONTINUE_FIELDS = ("continue_final_message", "add_generation_prompt")
#: A streamed reply's connection is never reused (see the module docstring).
STREAM_HEADERS = {"Connection": "close"}
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 10.0

#: Which OpenAI API the engine speaks: `/v1/completions` or `/v1/chat/completions`.
Api = Literal["completions", "chat"]
API_PATHS: dict[Api, str] = {"completions": "/completions", "chat": "/chat/completions"}
CHAT_ROLES = frozenset({"system", "user", "assistant"})


class ChatMessage(NamedTuple):
    role: str
    content: str


@dataclass(frozen=True)
class ChatPrompt:
    """A ChatML prompt as the chat API's messages."""

    #: The closed blocks, in order.
    messages: tuple[ChatMessage, ...]
    #: The open block at the end, which the model writes on from; None when it is an empty
    #: assistant block (the generation prompt a chat server adds itself).
    prefix: ChatMessage | None = None


def chat_prompt(
    prompt: Sequence[int] | str, tokenizer: PreTrainedTokenizerBase | None = None
) -> ChatPrompt:
    """Split a ChatML prompt built by synatra_bot.prompt.builder back into its messages.

    From ids (which need `tokenizer`), only the `<|im_start|>`/`<|im_end|>` ids are
    boundaries, and each message's text is decoded on its own with any special-token text in it
    broken (`ids_to_server_text`): the server's tokenizer cannot make a role token of it. Text
    is split on the marker text and trusted as given. A leading BOS is dropped; anything else
    that is not ChatML (text between blocks, a block without a role line, no open block at the
    end) raises EngineError.
    """
    if isinstance(prompt, str):
        closed, last = _text_blocks(prompt)
    else:
        if tokenizer is None:
            raise EngineError("prompts given as token ids need a tokenizer (tokenizer_dir_or_id)")
        closed, last = _id_blocks(prompt, tokenizer)
    prefix = _chat_message(last)
    return ChatPrompt(
        tuple(_chat_message(block) for block in closed),
        None if prefix == ChatMessage("assistant", "") else prefix,
    )


def _not_chatml(problem: str) -> EngineError:
    return EngineError(f"the prompt is not ChatML the chat API can carry: {problem}")


def _id_blocks(ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> tuple[list[str], str]:
    """The closed blocks' text and the open block's text (role line, content), split on ids."""
    closed: list[str] = []
    block: list[int] | None = None
    between: list[int] = []
    for position, token in enumerate(ids):
        if token == IM_START_ID:
            if block is not None:
                raise _not_chatml("a block opens inside another")
            if ids_to_server_text(tokenizer, between).strip():
                raise _not_chatml("there is text between its blocks")
            block, between = [], []
        elif token == IM_END_ID:
            if block is None:
                raise _not_chatml("a block closes that never opened")
            closed.append(ids_to_server_text(tokenizer, block))
            block = None
        elif token == BOS_ID and position == 0:
            continue
        elif token in FORBIDDEN_CONTENT_IDS:
            raise _not_chatml(f"it holds the special id {token}")
        else:
            (between if block is None else block).append(token)
    if block is None:
        raise _not_chatml("it does not end in an open block")
    return closed, ids_to_server_text(tokenizer, block)


def _text_blocks(text: str) -> tuple[list[str], str]:
    """The closed blocks' text and the open block's text, split on the marker text."""
    head, *parts = text.removeprefix("<s>").split(IM_START)
    if not parts:
        raise _not_chatml("it does not end in an open block")
    if head.strip():
        raise _not_chatml("there is text between its blocks")
    closed: list[str] = []
    for part in parts[:-1]:
        body, end, after = part.partition(IM_END)
        if not end:
            raise _not_chatml("a block opens inside another")
        if after.strip():
            raise _not_chatml("there is text between its blocks")
        closed.append(body)
    if IM_END in parts[-1]:
        raise _not_chatml("it does not end in an open block")
    return closed, parts[-1]


def _chat_message(block: str) -> ChatMessage:
    role, newline, content = block.partition("\n")
    if not newline or role not in CHAT_ROLES:
        raise _not_chatml(f"a block does not begin with a role line ({role[:20]!r})")
    return ChatMessage(role, content)


class _Retry(Exception):
    def __init__(self, reason: str, delay_s: float | None = None) -> None:
        super().__init__(reason)
        self.delay_s = delay_s


class _Resend(Exception):
    """The server rejected optional fields by name; they are dropped, send again at once."""


class _Malformed(Exception):
    """The stream is not what the API promises; the message says how, naming no content."""


#: The prompt as the request carries it: text or ids (completions), messages (chat).
_Payload = str | list[int] | ChatPrompt


@dataclass
class _Active:
    response: aiohttp.ClientResponse | None = None
    started: bool = False
    cancelled: bool = False


def _json_type(value: object) -> str:
    """What JSON calls `value`'s type, for a log line that names no content."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def completions_url(base_url: str, api: Api = "completions") -> str:
    """`http://host:8000`, `http://host:8000/` or `http://host:8000/v1` -> `.../v1/completions`
    (`.../v1/chat/completions` for the chat API)."""
    base = base_url.rstrip("/")
    return base + ("" if base.endswith("/v1") else "/v1") + API_PATHS[api]


def without_credentials(url: str) -> str:
    """`http://user:password@host/v1` -> `http://host/v1`: for logs and health reports."""
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _completion_tokens(event: dict[str, Any]) -> int | None:
    """The reply's token count from an event's `usage`, where it has one."""
    usage = event.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None


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
        api: Api = "completions",
    ) -> None:
        if api == "chat" and send_token_ids:
            raise ValueError("send_token_ids is for the completions API: chat messages are text")
        self.base_url = base_url
        self._api = api
        self._url = completions_url(base_url, api)
        self._api_key = api_key
        self.model = model
        self._tokenizer_source = tokenizer_dir_or_id
        self._tokenizer = tokenizer
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._send_token_ids = send_token_ids
        self._extensions_ok = True
        #: Whether the server may be asked to write on from a final message (chat API).
        self._continue_ok = True
        #: Whether the server may be asked for the stream's token usage.
        self._usage_ok = True
        #: Sampler fields this server rejected: never sent again.
        self._refused_fields: set[str] = set()
        self._session: aiohttp.ClientSession | None = None
        #: The model names the server's `/v1/models` listed at start (empty: none listed).
        self.served_models: tuple[str, ...] = ()
        self._active: dict[str, _Active] = {}
        self._meter = ThroughputMeter()
        self._last_error = ""
        #: Replies that failed in a row on the server's side (0 once one goes through).
        self._failures = 0

    async def start(self) -> None:
        import aiohttp

        if self._tokenizer is None and self._tokenizer_source is not None:
            from synatra_bot.tokenizer import load_tokenizer

            self._tokenizer = await asyncio.to_thread(load_tokenizer, self._tokenizer_source)
        if self._session is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._session = aiohttp.ClientSession(headers=headers)
            await self._check_served_model()

    async def _check_served_model(self) -> None:
        """Warn when the server's `/v1/models` does not list the model name the engine sends.

        vLLM and TGI refuse a request for a model they do not serve; llama.cpp's server answers
        any name. A server that is down or has no model list is left to the first reply.
        """
        import aiohttp

        assert self._session is not None
        url = self._url.removesuffix(API_PATHS[self._api]) + "/models"
        try:
            async with self._session.get(
                url, timeout=aiohttp.ClientTimeout(total=min(self._timeout_s, 10))
            ) as response:
                listed = await response.json(content_type=None) if response.status == 200 else {}
        except (TimeoutError, OSError, aiohttp.ClientError, ValueError):
            return
        data = listed.get("data") if isinstance(listed, dict) else None
        served = [str(m["id"]) for m in data or () if isinstance(m, dict) and "id" in m]
        self.served_models = tuple(served)
        if served and self.model not in served:
            log.warning(
                "the engine at %s serves %s, not %r: set ENGINE_MODEL to the name it serves "
                "(MODEL_ID stays the tokenizer)",
                self._safe_url(),
                ", ".join(repr(name) for name in served[:5]),
                self.model,
            )

    async def close(self) -> None:
        for request_id in list(self._active):
            await self.cancel(request_id)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _secret_free(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _prompt_payload(self, prompt: Sequence[int] | str) -> _Payload:
        if self._api == "chat":
            return chat_prompt(prompt, self._tokenizer)
        if isinstance(prompt, str):
            return prompt
        ids = list(prompt)
        if self._send_token_ids:
            return ids
        if ids and ids[0] == BOS_ID:
            ids = ids[1:]
        if self._tokenizer is None:
            raise EngineError("prompts given as token ids need a tokenizer (tokenizer_dir_or_id)")
        return ids_to_server_text(self._tokenizer, ids)

    def _prompt_fields(self, payload: _Payload) -> dict[str, Any]:
        """Where the two APIs differ: `prompt`, or `messages` with the prefix to continue."""
        if not isinstance(payload, ChatPrompt):
            return {"prompt": payload}
        messages = [message._asdict() for message in payload.messages]
        if payload.prefix is None or not self._continue_ok:
            return {"messages": messages}
        return {
            "messages": [*messages, payload.prefix._asdict()],
            "continue_final_message": True,
            "add_generation_prompt": False,
        }

    def _body(self, payload: _Payload, params: SamplingParams, context: int) -> dict[str, Any]:
        """The request; `context` bounds the reply's whole length in tokens, prompt included."""
        body: dict[str, Any] = {
            "model": self.model,
            **self._prompt_fields(payload),
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": list(dict.fromkeys((*STOP_STRINGS, *params.stop_strings))),
            "stream": True,
        }
        if self._usage_ok:
            body["stream_options"] = {"include_usage": True}
        if params.seed is not None:
            body["seed"] = params.seed
        if self._extensions_ok:
            body["top_k"] = params.top_k if params.top_k > 0 else -1
            body["repetition_penalty"] = params.repetition_penalty
            if params.repetition_penalty != 1.0:
                body["repeat_penalty"] = params.repetition_penalty
                body["repeat_last_n"] = context
            body["stop_token_ids"] = list(params.stop_ids)
        samplers: dict[str, Any] = {"min_p": params.min_p}
        if params.dry_on:
            samplers["dry_multiplier"] = params.dry_multiplier
            samplers["dry_base"] = params.dry_base
            samplers["dry_allowed_length"] = params.dry_allowed_length
            samplers["dry_sequence_breakers"] = list(params.dry_sequence_breakers)
            samplers["dry_penalty_last_n"] = params.dry_penalty_last_n or context
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
        # A token is at least one byte of text, so a text prompt's length in bytes bounds it.
        length = len(prompt.encode()) if isinstance(prompt, str) else len(prompt)
        context = length + params.max_new_tokens
        active = _Active()
        self._active[request_id] = active
        stops = StopStringFilter((*STOP_STRINGS, *params.stop_strings))
        shown = ""
        #: Whether any event carried a choice, and any choice some text (before stop strings).
        chosen = received = False
        try:
            response = await self._connect(payload, params, active, context)
            finished = usage_seen = False
            #: Tokens put on the throughput meter for this reply so far.
            counted = 0
            try:
                async for line in response.content:
                    event = self._parse_line(line)
                    if event is None:
                        continue
                    if isinstance(event, str):  # [DONE]
                        finished = True
                        break
                    tokens = _completion_tokens(event)
                    if tokens is not None:
                        # The server's own count replaces one token per text event.
                        self._meter.add(max(0, tokens - counted))
                        counted, usage_seen = max(counted, tokens), True
                    choice = self._event_text(event, shown)
                    if choice is None:
                        if finished and usage_seen:
                            break
                        continue
                    chosen = True
                    text, finish_reason = choice
                    if text:
                        received = active.started = True
                        if not usage_seen:
                            self._meter.add(1)
                            counted += 1
                        out = stops.feed(text)
                        if out:
                            shown += out
                            yield out
                    if stops.stopped:
                        finished = True
                        break
                    if finish_reason is not None:
                        finished = True
                        if usage_seen or not self._usage_ok:
                            break
                        # Read on to the usage event (the stream ends after it).
            except (TimeoutError, OSError, aiohttp.ClientError) as error:
                if not active.cancelled:
                    self._failed(type(error).__name__)
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
            except _Malformed as problem:
                raise self._malformed(str(problem), shown) from None
            if active.cancelled:
                raise GenerationInterrupted("request cancelled", partial_text=shown)
            if not finished:
                self._failed("the stream ended before the reply did")
                log.warning(
                    "the engine at %s closed the stream before the reply ended", self._safe_url()
                )
                raise GenerationInterrupted(
                    "the generation server ended the reply early",
                    partial_text=shown,
                    key="engine.ended_early",
                )
            if not chosen:
                raise self._malformed("the stream carried no choices", shown)
            if not received:
                self._failed("the reply had no text")
                log.warning("the engine at %s sent a reply with no text", self._safe_url())
                raise EngineError("the generation server sent no text", key="engine.empty")
            tail = stops.flush()
            if tail:
                yield tail
            self._last_error = ""
            self._failures = 0
        finally:
            self._active.pop(request_id, None)
            if active.response is not None:
                active.response.close()

    async def _connect(
        self, payload: _Payload, params: SamplingParams, active: _Active, context: int
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
                body = self._body(payload, params, context)
                response = await self._session.post(
                    self._url, json=body, timeout=timeout, headers=STREAM_HEADERS
                )
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
                self._failures += 1
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

    def _failed(self, reason: str) -> None:
        """A reply failed on the server's side: `health()` shows it until one goes through."""
        self._last_error = reason
        self._failures += 1

    def _malformed(self, problem: str, shown: str) -> GenerationInterrupted:
        self._failed(f"malformed stream: {problem}")
        log.warning("the engine at %s sent a malformed stream: %s", self._safe_url(), problem)
        return GenerationInterrupted(
            f"the generation server sent a malformed stream ({problem})",
            partial_text=shown,
            key="engine.malformed",
        )

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
        if self._continue_ok and any(name in sent and name in answer for name in CONTINUE_FIELDS):
            log.warning(
                "the engine cannot write on from a final message; the open end of each prompt "
                "(a speaker's name, a message being continued) is left out from now on"
            )
            self._continue_ok = False
            dropped = True
        if self._usage_ok and "stream_options" in sent and "stream_options" in answer:
            log.warning("the engine does not accept stream_options; counting tokens by events")
            self._usage_ok = False
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
        """A `data:` event's JSON object, or "[DONE]"; None for any other line (comments,
        keep-alives, blank lines). Raises _Malformed for a line that is not UTF-8 (no
        character contains a newline byte, so a whole line always decodes) or an event
        that is not a JSON object."""
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise _Malformed("a line is not UTF-8") from None
        if not text.startswith("data:"):
            return None
        data = text[5:].strip()
        if data == "[DONE]" or not data:
            return data or None
        try:
            parsed = json.loads(data)
        except json.JSONDecodeError:
            raise _Malformed("an event is not JSON") from None
        if not isinstance(parsed, dict):
            raise _Malformed(f"an event is a JSON {_json_type(parsed)}, not an object")
        return parsed

    def _event_text(self, event: dict[str, Any], shown: str) -> tuple[str, str | None] | None:
        """The text and finish reason of an event's first choice; None for an event without
        one (a usage chunk). Raises _Malformed when the choice has another shape."""
        if "error" in event:
            self._failed("the server reported an error mid-reply")
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
        choices = event.get("choices")
        if choices is None or choices == []:
            return None
        if not isinstance(choices, list):
            raise _Malformed(f"choices is a {_json_type(choices)}, not a list")
        choice = choices[0]
        if not isinstance(choice, dict):
            raise _Malformed(f"a choice is a {_json_type(choice)}, not an object")
        finish_reason = choice.get("finish_reason")
        if finish_reason is not None and not isinstance(finish_reason, str):
            raise _Malformed(f"finish_reason is a {_json_type(finish_reason)}, not a string")
        if "delta" in choice:
            # The chat API streams `delta.content` (its first chunk carries only the role).
            delta = choice["delta"]
            if not isinstance(delta, dict):
                raise _Malformed(f"delta is a {_json_type(delta)}, not an object")
            text = delta.get("content")
        elif "text" in choice:
            text = choice["text"]
        elif finish_reason is None:
            raise _Malformed("a choice carries neither text nor delta")
        else:
            text = None  # a last chunk that only says why the reply ended
        if text is not None and not isinstance(text, str):
            raise _Malformed(f"the text is a {_json_type(text)}, not a string")
        return text or "", finish_reason

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
        if self.served_models and self.model not in self.served_models:
            detail += f" (the server lists only {', '.join(self.served_models[:5])})"
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
            failures=self._failures,
            reason=f"last error: {self._last_error}" if self._last_error else "",
        )

    def _refused_settings(self) -> frozenset[str]:
        """The SamplingParams settings the server refused (by the setting that turns each on),
        and CONTINUATION when it cannot write on from a final message."""
        refused = set(self._refused_fields)
        if not self._extensions_ok:
            refused |= {"top_k", "repetition_penalty"}
        if not self._continue_ok:
            refused.add(CONTINUATION)
        return frozenset(refused)
