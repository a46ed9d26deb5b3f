"""The static-cache lane for a lone reply (SINGLE_STREAM): a reply generated while no other is
takes it, replies that arrive meanwhile are batched, and each keeps its lane to the end, on
the CPU with the tiny model."""

from __future__ import annotations

import asyncio
import logging

import pytest

from synatra_bot.engine.base import SamplingParams
from synatra_bot.engine.transformers_engine import TransformersEngine
from synatra_bot.errors import EngineError, GenerationInterrupted
from tests.engine_helpers import wait_until
from tests.test_engine_transformers import PROMPT, collect

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12, stop_ids=())


@pytest.fixture(scope="module")
def lone(tiny_model_dir):
    engine = TransformersEngine(str(tiny_model_dir), context_size=1024, single_stream="static")
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


def _count_lanes(engine, monkeypatch) -> dict[str, int]:
    """How many replies took the single-stream lane and how many were batched (by the
    batched static-cache lane or by continuous batching)."""
    lanes = {"single": 0, "batched": 0}
    single, batched, to_lane = engine._submit_single, engine._submit_batched, engine._submit_to_lane

    def on_lane(*args, **kwargs):
        taken = to_lane(*args, **kwargs)
        lanes["batched"] += int(taken)
        return taken

    def on_single(*args, **kwargs):
        lanes["single"] += 1
        return single(*args, **kwargs)

    def on_batched(*args, **kwargs):
        lanes["batched"] += 1
        return batched(*args, **kwargs)

    monkeypatch.setattr(engine, "_submit_single", on_single)
    monkeypatch.setattr(engine, "_submit_batched", on_batched)
    monkeypatch.setattr(engine, "_submit_to_lane", on_lane)
    return lanes


async def test_a_lone_reply_is_exactly_what_generate_writes(lone, monkeypatch) -> None:
    import torch

    lanes = _count_lanes(lone, monkeypatch)
    ids = lone.tokenizer.encode(PROMPT)
    text = "".join(await collect(lone, ids, GREEDY, "혼자"))
    assert lanes == {"single": 1, "batched": 0}
    # The same tokens plain generate() gives: nothing lost, nothing repeated on the way.
    with torch.inference_mode():
        out = lone.model.generate(
            input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=12, min_new_tokens=12
        )
    assert text == lone.tokenizer.decode(out[0, len(ids) :].tolist())


async def test_replies_arriving_meanwhile_are_batched_and_all_finish(lone, monkeypatch) -> None:
    lanes = _count_lanes(lone, monkeypatch)
    params = SamplingParams(max_new_tokens=24, stop_ids=())
    first = lone.stream(PROMPT, params, request_id="첫째")
    opening = await anext(first)  # the lone reply holds the lane
    others = [asyncio.create_task(collect(lone, PROMPT, params, f"다음{n}")) for n in range(2)]
    await wait_until(lambda: len(lone._requests) == 3)
    rest = [d async for d in first]
    replies = await asyncio.gather(*others)
    assert lanes == {"single": 1, "batched": 2}
    assert opening + "".join(rest) and all(replies)


async def test_a_lone_reply_can_be_cancelled_and_the_next_one_runs(lone) -> None:
    stream = lone.stream(PROMPT, SamplingParams(max_new_tokens=400), request_id="멈춤")
    first = await anext(stream)
    await lone.cancel("멈춤")
    with pytest.raises(GenerationInterrupted) as caught:
        async for _ in stream:
            pass
    assert caught.value.partial_text.startswith(first)
    await wait_until(lambda: lone.health().running == 0)
    assert await collect(lone, PROMPT, SamplingParams(max_new_tokens=4), "다음")


async def test_compiling_is_announced_once(tiny_model_dir, caplog) -> None:
    engine = TransformersEngine(
        str(tiny_model_dir), context_size=1024, single_stream="static-compile"
    )
    caplog.set_level(logging.INFO, logger="synatra_bot.engine.transformers_engine")
    await engine.start()
    try:
        options = engine._static_cache_options()
        engine._static_cache_options()
    finally:
        await engine.close()
    assert options["disable_compile"] is False and options["max_cache_len"] == 1024
    assert options["cache_implementation"] == "static"
    assert sum("compiling" in r.getMessage() for r in caplog.records) == 1


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(EngineError, match="single_stream"):
        TransformersEngine("unused", single_stream="fast")
