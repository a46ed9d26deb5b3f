"""The OpenAI-compatible engine against a real `transformers serve` process and a real faulty
aiohttp server process, both on loopback ports."""

from __future__ import annotations

import json
import logging
import urllib.request

import pytest
from aiohttp import web

from synatra_bot.engine.base import Engine, SamplingParams
from synatra_bot.engine.openai_compat import (
    OpenAICompatEngine,
    completions_url,
    without_credentials,
)
from synatra_bot.errors import EngineError, EngineUnavailable, GenerationInterrupted
from synatra_bot.tokenizer import IM_END, IM_START
from tests.engine_helpers import (
    SECRET,
    fault_server_args,
    free_port,
    loopback_app,
    running_process,
    sse_lines,
    sse_reply,
    transformers_serve_args,
    wait_until,
)

PROMPT = f"{IM_START}user\n안녕하세요!{IM_END}\n{IM_START}assistant\n"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def serve_url(tiny_model_dir, tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with running_process(transformers_serve_args(tiny_model_dir, port), f"{url}/v1/models", log):
        yield url


@pytest.fixture(scope="module")
def fault_url(tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("fault") / "fault.log"
    with running_process(fault_server_args(port), f"{url}/stats", log):
        yield url


def server_stats(fault_url: str) -> dict:
    with urllib.request.urlopen(f"{fault_url}/stats") as response:
        return json.loads(response.read())


async def collect(engine: OpenAICompatEngine, prompt=PROMPT, request_id="r", **params):
    return [d async for d in engine.stream(prompt, SamplingParams(**params), request_id=request_id)]


def make_engine(url: str, **kwargs) -> OpenAICompatEngine:
    kwargs.setdefault("model", "tiny")
    kwargs.setdefault("backoff_s", 0.01)
    return OpenAICompatEngine(url, **kwargs)


def test_completions_url_accepts_base_with_or_without_v1() -> None:
    assert completions_url("http://h:8000") == "http://h:8000/v1/completions"
    assert completions_url("http://h:8000/v1/") == "http://h:8000/v1/completions"


async def test_streams_from_a_real_transformers_serve(serve_url, tiny_model_dir, tokenizer) -> None:
    engine = OpenAICompatEngine(serve_url, model=str(tiny_model_dir), tokenizer=tokenizer)
    await engine.start()
    try:
        assert isinstance(engine, Engine)
        deltas = await collect(engine, max_new_tokens=6)
        assert deltas and IM_END not in "".join(deltas)
        # transformers serve rejects top_k & co by name: the engine switched to standard fields.
        ids = tokenizer.encode(PROMPT)
        assert await collect(engine, ids, request_id="ids", max_new_tokens=4)
        assert engine.count_tokens("안녕하세요") == 8
        assert engine.health().ok
    finally:
        await engine.close()


async def test_cancel_closes_the_stream(fault_url) -> None:
    engine = make_engine(f"{fault_url}/slow")
    await engine.start()
    try:
        stream = engine.stream(PROMPT, SamplingParams(), request_id="느린")
        assert await anext(stream) == "가"
        await engine.cancel("느린")
        with pytest.raises(GenerationInterrupted):
            async for _ in stream:
                pass
        await wait_until(lambda: engine.health().running == 0)
    finally:
        await engine.close()


async def test_retries_5xx_before_the_first_token(fault_url) -> None:
    engine = make_engine(f"{fault_url}/flaky", max_retries=3)
    await engine.start()
    try:
        assert "".join(await collect(engine)) == "안녕하세요! 반갑습니다"
    finally:
        await engine.close()
    assert server_stats(fault_url)["counts"]["flaky"] == 3
    body = server_stats(fault_url)["bodies"]["flaky"][0]
    assert body["prompt"] == PROMPT and body["stream"] is True
    assert body["stop"] == ["<|im_end|>", "<|im_start|>", "</s>"]


async def test_retries_429_honouring_retry_after(fault_url) -> None:
    engine = make_engine(f"{fault_url}/ratelimit")
    await engine.start()
    try:
        assert "".join(await collect(engine)) == "안녕하세요! 반갑습니다"
    finally:
        await engine.close()
    assert server_stats(fault_url)["counts"]["ratelimit"] == 2


async def test_4xx_fails_at_once_with_the_server_reason_in_the_log_only(fault_url, caplog) -> None:
    engine = make_engine(f"{fault_url}/badrequest")
    await engine.start()
    try:
        with (
            caplog.at_level(logging.WARNING, logger="synatra_bot.engine"),
            pytest.raises(EngineError) as caught,
        ):
            await collect(engine)
    finally:
        await engine.close()
    assert server_stats(fault_url)["counts"]["badrequest"] == 1
    assert caught.value.key == "engine.rejected"
    assert "max_tokens" not in str(caught.value)
    assert "rejected the request (400): max_tokens is too large" in caplog.text


async def test_the_api_key_never_appears_in_errors(fault_url) -> None:
    engine = make_engine(f"{fault_url}/auth", api_key=SECRET)
    await engine.start()
    try:
        with pytest.raises(EngineUnavailable) as caught:
            await collect(engine)
    finally:
        await engine.close()
    assert SECRET not in str(caught.value)
    assert SECRET not in engine.health().detail


async def test_a_reply_cut_mid_stream_is_interrupted_with_partial_text(fault_url) -> None:
    engine = make_engine(f"{fault_url}/cut")
    await engine.start()
    try:
        with pytest.raises(GenerationInterrupted) as caught:
            await collect(engine)
    finally:
        await engine.close()
    assert caught.value.partial_text == "안녕하세요"


async def test_unreachable_server_gives_up_after_retries() -> None:
    engine = make_engine(f"http://127.0.0.1:{free_port()}", max_retries=2)
    await engine.start()
    try:
        with pytest.raises(EngineUnavailable, match="3 attempts"):
            await collect(engine)
        assert not engine.health().ok
    finally:
        await engine.close()


def test_urls_lose_their_credentials_for_logs() -> None:
    assert without_credentials("http://user:pa@ss@h:8000/v1") == "http://h:8000/v1"
    assert without_credentials("https://h/v1/completions") == "https://h/v1/completions"


async def test_credentials_in_the_url_never_appear_in_errors_or_health(caplog) -> None:
    port = free_port()
    engine = make_engine(f"http://synatra:hunter2-password@127.0.0.1:{port}", max_retries=1)
    await engine.start()
    try:
        with (
            caplog.at_level(logging.WARNING, logger="synatra_bot.engine"),
            pytest.raises(EngineUnavailable) as caught,
        ):
            await collect(engine)
        health = engine.health().detail
    finally:
        await engine.close()
    message = str(caught.value)
    assert message == "the generation server is unavailable (gave up after 2 attempts)"
    assert (caught.value.key, caught.value.params) == ("engine.unavailable", {"attempts": 2})
    assert "hunter2" not in caplog.text + health
    assert f"gave up after 2 attempts at http://127.0.0.1:{port}/v1/completions" in caplog.text


async def test_stop_strings_in_the_text_are_cut(fault_url) -> None:
    engine = make_engine(f"{fault_url}/stopstring")
    await engine.start()
    try:
        assert "".join(await collect(engine)) == "좋아요"
    finally:
        await engine.close()


ROLEPLAY_FIELDS = (
    "min_p",
    "dry_multiplier",
    "dry_base",
    "dry_allowed_length",
    "dry_sequence_breakers",
    "dry_penalty_last_n",
    "xtc_threshold",
    "xtc_probability",
)


async def test_roleplay_samplers_are_sent_under_llama_cpp_names_when_on(fault_url) -> None:
    engine = make_engine(f"{fault_url}/samplers")
    await engine.start()
    try:
        on = {
            "min_p": 0.05,
            "dry_multiplier": 0.8,
            "dry_base": 2.0,
            "dry_allowed_length": 3,
            "dry_sequence_breakers": ("\n", "「"),
            "xtc_threshold": 0.2,
            "xtc_probability": 0.4,
        }
        assert "".join(await collect(engine, request_id="켜짐", **on)) == "안녕하세요! 반갑습니다"
        assert await collect(engine, request_id="꺼짐")
        assert await collect(engine, request_id="최소", min_p=0.1)
    finally:
        await engine.close()
    on_body, off_body, min_p_body = server_stats(fault_url)["bodies"]["samplers"]
    assert {name: on_body[name] for name in ROLEPLAY_FIELDS} == {
        "min_p": 0.05,
        "dry_multiplier": 0.8,
        "dry_base": 2.0,
        "dry_allowed_length": 3,
        "dry_sequence_breakers": ["\n", "「"],
        # The whole context: the prompt (at most a token per byte) and the reply.
        "dry_penalty_last_n": len(PROMPT.encode()) + 300,
        "xtc_threshold": 0.2,
        "xtc_probability": 0.4,
    }
    # min_p goes even when off: llama.cpp's server would apply its own 0.05.
    assert {name: off_body[name] for name in set(ROLEPLAY_FIELDS) & set(off_body)} == {"min_p": 0}
    assert {name: min_p_body[name] for name in set(ROLEPLAY_FIELDS) & set(min_p_body)} == {
        "min_p": 0.1
    }


async def test_a_server_that_rejects_dry_and_xtc_still_replies_and_keeps_min_p() -> None:
    from aiohttp import web

    bodies: list[dict] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        bodies.append(body)
        unknown = sorted(name for name in body if name.startswith(("dry_", "xtc_")))
        if unknown:  # like OpenAI's own API: a 400 naming the first unknown argument
            message = f"Unrecognized request argument supplied: {unknown[0]}"
            return web.json_response({"error": {"message": message}}, status=400)
        texts = (("좋은 ", None), ("밤이에요", None), ("", "stop"))
        return await sse_reply(request, ({"text": t, "finish_reason": f} for t, f in texts))

    async with loopback_app("/v1/completions", completions) as url:
        engine = make_engine(url, max_retries=0)
        await engine.start()
        try:
            params = {"min_p": 0.1, "dry_multiplier": 0.8, "xtc_probability": 0.5}
            assert "".join(await collect(engine, request_id="첫", **params)) == "좋은 밤이에요"
            assert "".join(await collect(engine, request_id="둘", **params)) == "좋은 밤이에요"
        finally:
            await engine.close()
    rejected, resent, later = bodies
    assert {"min_p", "dry_multiplier", "xtc_probability"} <= set(rejected)
    for body in (resent, later):
        assert set(ROLEPLAY_FIELDS) & set(body) == {"min_p"}


async def test_transformers_serve_rejecting_the_samplers_costs_no_retry(
    serve_url, tiny_model_dir, tokenizer, caplog
) -> None:
    engine = OpenAICompatEngine(
        serve_url, model=str(tiny_model_dir), tokenizer=tokenizer, max_retries=0
    )
    await engine.start()
    try:
        with caplog.at_level(logging.WARNING, logger="synatra_bot.engine"):
            for request_id in ("하나", "둘"):
                deltas = await collect(
                    engine,
                    request_id=request_id,
                    max_new_tokens=4,
                    min_p=0.1,
                    dry_multiplier=0.8,
                    xtc_probability=0.5,
                )
                assert deltas
    finally:
        await engine.close()
    # Rejected once, by name, and never sent again.
    assert caplog.text.count("does not accept min_p") == 1


async def test_id_prompts_keep_their_bos_and_a_repetition_penalty_has_llama_cpp_names(
    fault_url, tokenizer
) -> None:
    ids = [1, 32001, *tokenizer.encode("user\n안녕!", add_special_tokens=False), 32000, 32001]
    by_ids = make_engine(f"{fault_url}/ids", send_token_ids=True, tokenizer=tokenizer)
    by_text = make_engine(f"{fault_url}/text", tokenizer=tokenizer)
    for engine in (by_ids, by_text):
        await engine.start()
        try:
            assert await collect(engine, ids, repetition_penalty=1.1, max_new_tokens=20)
        finally:
            await engine.close()
    bodies = server_stats(fault_url)["bodies"]
    (by_ids_body,) = bodies["ids"]
    (by_text_body,) = bodies["text"]
    # Servers take ids as they are, so the BOS stays; they add their own to text.
    assert by_ids_body["prompt"] == ids
    assert not by_text_body["prompt"].startswith("<s>")
    assert by_ids_body["repetition_penalty"] == by_ids_body["repeat_penalty"] == 1.1
    # Over the whole context, as transformers and vLLM apply it.
    assert by_ids_body["repeat_last_n"] == len(ids) + 20


# --- a server that streams another shape than the API's ---------------------------------------


def _event(payload: object) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


FIRST = _event({"choices": [{"index": 0, "text": "안녕"}]})
MALFORMED = {
    "invalid UTF-8": b'data: {"choices": [{"text": "\xed\xa0\x80\xff"}]}\n\n',
    "not JSON": b"data: {choices: [\n\n",
    "an array": _event([{"text": "안녕"}]),
    "a string": _event("하세요"),
    "choices not a list": _event({"choices": {"text": "하세요"}}),
    "a choice not an object": _event({"choices": ["하세요"]}),
    "neither text nor delta": _event({"choices": [{"index": 0}]}),
    "text a number": _event({"choices": [{"index": 0, "text": 7}]}),
    "delta a string": _event({"choices": [{"index": 0, "delta": "하세요"}]}),
    "content a list": _event({"choices": [{"index": 0, "delta": {"content": ["하세요"]}}]}),
    "finish_reason a number": _event({"choices": [{"index": 0, "text": "", "finish_reason": 1}]}),
}
GOOD = [
    _event({"choices": [{"index": 0, "text": "좋은 밤이에요"}]}),
    _event({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}),
    b"data: [DONE]\n\n",
]


class ScriptedServer:
    """Answers each request with the next stream of lines it was given (the last one after)."""

    def __init__(self, *streams: list[bytes]) -> None:
        self.streams = list(streams)

    async def completions(self, request):
        await request.json()
        lines = self.streams.pop(0) if len(self.streams) > 1 else self.streams[0]
        return await sse_lines(request, lines)


@pytest.mark.parametrize("shape", list(MALFORMED))
async def test_a_malformed_stream_is_an_engine_error_with_a_note_and_a_warning(
    shape, caplog
) -> None:
    server = ScriptedServer([FIRST, MALFORMED[shape], *GOOD], GOOD)
    async with loopback_app("/v1/completions", server.completions) as url:
        engine = make_engine(url, max_retries=0)
        await engine.start()
        try:
            with (
                caplog.at_level(logging.WARNING, logger="synatra_bot"),
                pytest.raises(GenerationInterrupted) as caught,
            ):
                await collect(engine, request_id="이상한")
            health = engine.health()
            assert "".join(await collect(engine, request_id="멀쩡한")) == "좋은 밤이에요"
            recovered = engine.health()
        finally:
            await engine.close()
    assert caught.value.key == "engine.malformed"
    assert caught.value.partial_text == "안녕"
    (warning,) = [r for r in caplog.records if "malformed stream" in r.getMessage()]
    assert warning.levelno == logging.WARNING and warning.exc_info is None
    assert not health.ok and health.state == "degraded" and health.failures == 1
    assert health.reason.startswith("last error: malformed stream")
    assert "engine: degraded, 1 failed in a row" in health.to_text()
    assert url not in health.to_text()
    assert recovered.ok and recovered.state == "ok" and recovered.failures == 0


async def test_a_stream_without_choices_is_malformed_not_an_empty_reply() -> None:
    no_choices = [_event({"id": "cmpl-1", "object": "text_completion"}), b"data: [DONE]\n\n"]
    server = ScriptedServer(no_choices)
    async with loopback_app("/v1/completions", server.completions) as url:
        engine = make_engine(url, max_retries=0)
        await engine.start()
        try:
            for attempt in ("하나", "둘"):
                with pytest.raises(GenerationInterrupted) as caught:
                    await collect(engine, request_id=attempt)
                assert caught.value.key == "engine.malformed"
            health = engine.health()
        finally:
            await engine.close()
    assert health.state == "degraded" and health.failures == 2
    assert health.reason == "last error: malformed stream: the stream carried no choices"


async def test_a_stream_whose_choices_carry_no_text_is_an_empty_reply_error() -> None:
    silent = [
        _event({"choices": [{"index": 0, "text": ""}]}),
        _event({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}),
        b"data: [DONE]\n\n",
    ]
    server = ScriptedServer(silent)
    async with loopback_app("/v1/completions", server.completions) as url:
        engine = make_engine(url, max_retries=0)
        await engine.start()
        try:
            with pytest.raises(EngineError) as caught:
                await collect(engine, request_id="조용한")
            health = engine.health()
        finally:
            await engine.close()
    assert caught.value.key == "engine.empty"
    assert not health.ok and health.failures == 1 and health.state == "degraded"


async def test_chunks_the_api_allows_are_still_read() -> None:
    lines = [
        b": keep-alive comment\n\n",
        b"data:\n\n",
        _event({"choices": [], "usage": {"prompt_tokens": 3}}),
        _event({"choices": [{"index": 0, "text": None}]}),
        _event({"choices": [{"index": 0, "text": "좋은 밤"}]}),
        _event({"choices": [{"index": 0, "finish_reason": "stop"}]}),
        b"data: [DONE]\n\n",
    ]
    server = ScriptedServer(lines)
    async with loopback_app("/v1/completions", server.completions) as url:
        engine = make_engine(url, max_retries=0)
        await engine.start()
        try:
            assert "".join(await collect(engine)) == "좋은 밤"
            assert engine.health().state == "ok"
        finally:
            await engine.close()


class RecordingServer(ScriptedServer):
    """A ScriptedServer that keeps each request's body; a body with a field in `refuse` gets
    422 naming it, as `transformers serve` names fields it does not know."""

    def __init__(self, *streams: list[bytes], refuse: str = "") -> None:
        super().__init__(*streams)
        self.bodies: list[dict] = []
        self.refuse = refuse

    async def completions(self, request):
        body = await request.json()
        self.bodies.append(body)
        if self.refuse and self.refuse in body:
            return web.json_response({"detail": f"unknown field: {self.refuse}"}, status=422)
        lines = self.streams.pop(0) if len(self.streams) > 1 else self.streams[0]
        return await sse_lines(request, lines)


WITH_USAGE = [
    _event({"choices": [{"index": 0, "text": "좋은 "}]}),
    _event({"choices": [{"index": 0, "text": "밤", "finish_reason": "stop"}]}),
    _event({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7}}),
    b"data: [DONE]\n\n",
]


async def test_each_request_asks_for_usage_and_health_counts_the_servers_tokens() -> None:
    server = RecordingServer(WITH_USAGE)
    async with loopback_app("/v1/completions", server.completions) as url:
        engine = make_engine(url, max_retries=0)
        await engine.start()
        try:
            assert "".join(await collect(engine)) == "좋은 밤"
            health = engine.health()
        finally:
            await engine.close()
    assert server.bodies[0]["stream_options"] == {"include_usage": True}
    # Seven tokens in the meter's ten-second window, not one per text event.
    assert health.tokens_per_second == pytest.approx(0.7)
    assert health.state == "ok"


async def test_a_server_that_refuses_stream_options_gets_the_request_without_it(caplog) -> None:
    server = RecordingServer(GOOD, refuse="stream_options")
    async with loopback_app("/v1/completions", server.completions) as url:
        engine = make_engine(url, max_retries=0)
        await engine.start()
        try:
            with caplog.at_level(logging.WARNING, logger="synatra_bot"):
                assert "".join(await collect(engine)) == "좋은 밤이에요"
            assert "".join(await collect(engine, request_id="둘째")) == "좋은 밤이에요"
            health = engine.health()
        finally:
            await engine.close()
    assert ["stream_options" in body for body in server.bodies] == [True, False, False]
    assert "stream_options" in caplog.text
    assert health.state == "ok" and not health.refused
