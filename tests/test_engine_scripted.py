"""The scripted engine streams Korean in whole-character chunks, fails and cancels on request."""

from __future__ import annotations

import asyncio

import pytest

from synatra_bot.engine.base import Engine, SamplingParams
from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.errors import EngineUnavailable, GenerationInterrupted
from tests.engine_helpers import wait_until


async def collect(engine: ScriptedEngine, prompt: str = "질문", **params) -> list[str]:
    return [d async for d in engine.stream(prompt, SamplingParams(**params), request_id="r1")]


async def test_streams_the_reply_in_small_korean_chunks() -> None:
    engine = ScriptedEngine("반갑습니다, 여행자님.")
    await engine.start()
    deltas = await collect(engine)
    assert "".join(deltas) == "반갑습니다, 여행자님."
    assert len(deltas) > 3 and all(1 <= len(d) <= 3 for d in deltas)
    assert isinstance(engine, Engine)


async def test_reply_function_sees_the_prompt() -> None:
    engine = ScriptedEngine(lambda prompt: f"[{prompt}]에 대한 답")
    await engine.start()
    assert "".join(await collect(engine, "안녕")) == "[안녕]에 대한 답"
    assert engine.prompts == ["안녕"]


async def test_max_new_tokens_and_stop_strings_limit_the_reply() -> None:
    engine = ScriptedEngine("하나둘셋넷다섯여섯")
    await engine.start()
    assert "".join(await collect(engine, max_new_tokens=2)) == "하나둘"
    assert "".join(await collect(engine, stop_strings=("넷",))) == "하나둘셋"


async def test_fails_mid_stream_with_the_partial_text() -> None:
    engine = ScriptedEngine("가나다라마바사", fail_after=2)
    await engine.start()
    with pytest.raises(GenerationInterrupted) as caught:
        await collect(engine)
    assert caught.value.partial_text == "가나다"


async def test_cancel_stops_a_running_request() -> None:
    engine = ScriptedEngine("천천히 말하는 긴 대답입니다", delay_s=5)
    await engine.start()
    stream = engine.stream("질문", SamplingParams(), request_id="느린")
    task = asyncio.create_task(anext(stream))
    await wait_until(lambda: "느린" in engine.running)
    await engine.cancel("느린")
    with pytest.raises(GenerationInterrupted):
        await task
    assert engine.cancelled == ["느린"]
    assert engine.health().running == 0


async def test_refuses_before_start() -> None:
    with pytest.raises(EngineUnavailable):
        await collect(ScriptedEngine())
