"""The OpenAI-compatible engine against a real `transformers serve` process and a real faulty
aiohttp server process, both on loopback ports."""

from __future__ import annotations

import json
import logging
import urllib.request

import pytest

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
    running_process,
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
