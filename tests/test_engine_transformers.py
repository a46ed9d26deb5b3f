"""The embedded continuous-batching engine on the CPU with the tiny model."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref

import pytest

from synatra_bot.engine.base import Engine, SamplingParams
from synatra_bot.engine.transformers_engine import TransformersEngine, recovery_delay
from synatra_bot.errors import EngineError, EngineUnavailable, GenerationInterrupted
from synatra_bot.tokenizer import IM_END, IM_START
from tests.engine_helpers import wait_until
from tests.model_fixtures import FailingSteps, ForcedToken

PROMPT = f"{IM_START}system\n너는 친절한 안내자야.{IM_END}\n{IM_START}user\n안녕하세요!{IM_END}\n{IM_START}assistant\n"


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    engine = TransformersEngine(str(tiny_model_dir), context_size=1024)
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


async def collect(engine: TransformersEngine, prompt, params: SamplingParams, request_id: str):
    return [d async for d in engine.stream(prompt, params, request_id=request_id)]


async def test_streams_text_from_token_ids(engine) -> None:
    ids = engine.tokenizer.encode(PROMPT)
    deltas = await collect(engine, ids, SamplingParams(max_new_tokens=12), "ids")
    assert deltas and all(isinstance(d, str) and d for d in deltas)
    text = "".join(deltas)
    assert IM_END not in text and IM_START not in text and "</s>" not in text
    assert isinstance(engine, Engine)
    assert engine.health().ok


async def test_text_prompts_are_tokenized_with_chatml_markers(engine) -> None:
    deltas = await collect(engine, PROMPT, SamplingParams(max_new_tokens=4), "text")
    assert deltas
    assert engine.count_tokens("안녕하세요") == 8


async def test_stop_ids_end_the_reply_and_never_appear(engine) -> None:
    every_id = tuple(range(32002))  # whatever the random model picks first is a stop id
    deltas = await collect(engine, PROMPT, SamplingParams(stop_ids=every_id), "stop")
    assert deltas == []


async def test_cancel_interrupts_the_stream_and_frees_the_request(engine) -> None:
    stream = engine.stream(PROMPT, SamplingParams(max_new_tokens=400), request_id="cancel")
    first = await anext(stream)
    await engine.cancel("cancel")
    with pytest.raises(GenerationInterrupted) as caught:
        async for _ in stream:
            pass
    assert caught.value.partial_text.startswith(first)
    await wait_until(lambda: "cancel" not in engine.busy_request_ids())
    assert engine.health().running == 0


async def test_leaving_the_stream_early_stops_generation(engine) -> None:
    stream = engine.stream(PROMPT, SamplingParams(max_new_tokens=400), request_id="early")
    await anext(stream)
    await stream.aclose()
    await wait_until(lambda: not engine.busy_request_ids())


async def test_cancelling_the_task_stops_generation(engine) -> None:
    async def consume() -> None:
        await collect(engine, PROMPT, SamplingParams(max_new_tokens=400), "task")

    task = asyncio.create_task(consume())
    await wait_until(lambda: engine.health().running == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: not engine.busy_request_ids())


async def test_event_loop_stays_responsive_while_generating(engine) -> None:
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - before - 0.01)

    ticking = asyncio.create_task(ticker())
    params = SamplingParams(max_new_tokens=40)
    results = await asyncio.gather(*(collect(engine, PROMPT, params, f"lag{i}") for i in range(4)))
    done.set()
    await ticking
    assert all(results)
    assert len(lags) > 5
    assert max(lags) < 0.5, f"event loop blocked for {max(lags):.2f} s"


async def test_repetition_penalty_takes_the_single_stream_lane_and_seed_repeats(engine) -> None:
    params = SamplingParams(max_new_tokens=10, repetition_penalty=1.3, seed=7)
    first = "".join(await collect(engine, PROMPT, params, "pen1"))
    second = "".join(await collect(engine, PROMPT, params, "pen2"))
    assert first and first == second


async def test_single_stream_lane_can_be_cancelled(engine) -> None:
    params = SamplingParams(max_new_tokens=400, repetition_penalty=1.2)
    stream = engine.stream(PROMPT, params, request_id="pen-cancel")
    await anext(stream)
    await engine.cancel("pen-cancel")
    with pytest.raises(GenerationInterrupted):
        async for _ in stream:
            pass
    # The lane is free again: the next penalised request completes.
    assert await collect(
        engine, PROMPT, SamplingParams(max_new_tokens=3, repetition_penalty=1.2), "after"
    )


async def test_prompt_longer_than_the_context_is_refused(engine) -> None:
    with pytest.raises(EngineError):
        await collect(engine, [1] + [100] * 1100, SamplingParams(max_new_tokens=5), "long")


async def test_prefix_sharing_is_on_when_the_context_fits_the_window(engine) -> None:
    await collect(engine, PROMPT, SamplingParams(max_new_tokens=2), "warm")
    assert engine.prefix_sharing
    assert "prefix sharing on" in engine.health().detail


async def test_the_engine_reports_its_attention_and_resolved_batching_config(engine) -> None:
    await wait_until(lambda: "cache_blocks" in engine.batching_config())
    assert engine.attention == "sdpa"
    assert engine.attention_choice.implementation == "sdpa"
    assert engine.attention_choice.reason == "no CUDA GPU: flash attention needs one"
    config = engine.batching_config()
    assert config["attention"] == "sdpa"
    assert config["scheduler_type"] == "fifo" and config["default_compile_level"] == 0
    assert config["page_size"] == 256 and config["allow_block_sharing"] is True
    assert config["use_cuda_graph"] == [False, False]  # no graphs on the CPU, nor with sdpa
    assert config["requested"]["page_size"] is None  # left to transformers
    assert config["cache_blocks"] == 8192 // 256 and config["prefix_sharing"] is True


@pytest.mark.parametrize(("repetition_penalty", "lane"), [(1.0, "batched"), (1.2, "single stream")])
async def test_a_continuation_keeps_the_space_of_its_first_token(
    engine, repetition_penalty: float, lane: str
) -> None:
    token = engine.tokenizer.convert_tokens_to_ids("▁è")
    params = SamplingParams(max_new_tokens=2, repetition_penalty=repetition_penalty)
    forced = ForcedToken(engine.model, token)
    try:
        continued = await collect(engine, PROMPT + "안녕하세요 message", params, f"이어 {lane}")
        fresh = await collect(engine, PROMPT, params, f"새 답 {lane}")
    finally:
        forced.remove()
    assert "".join(continued) == " è è"
    # A fresh reply starts at its first piece, as SentencePiece decodes it: no leading space.
    assert "".join(fresh) == "è è"


def _engine_from_env(tiny_model_dir, **env: str):
    from synatra_bot.engine.factory import build_engine
    from synatra_bot.settings import settings_from_env

    base = {"DISCORD_TOKEN": "t", "MODEL_ID": str(tiny_model_dir), "CONTEXT_SIZE": "1024"}
    return build_engine(settings_from_env({**base, **env}))


async def test_batching_settings_reach_continuous_batching(tiny_model_dir, caplog) -> None:
    engine = _engine_from_env(
        tiny_model_dir,
        CB_PAGE_SIZE="32",
        CB_NUM_BLOCKS="48",
        CB_MAX_BATCH_TOKENS="128",
        CB_MAX_MEMORY_PERCENT="50",
        CB_CUDA_GRAPHS="off",
        CB_ASYNC_BATCHING="off",
        CB_SCHEDULER="prefill_first",
        CB_PREFIX_SHARING="false",
    )
    with caplog.at_level(logging.INFO, logger="synatra_bot.engine.transformers_engine"):
        await engine.start()
    try:
        assert "attention: sdpa (no CUDA GPU: flash attention needs one)" in caplog.messages
        await wait_until(lambda: "cache_blocks" in engine.batching_config())
        config = engine.batching_config()
        assert config["page_size"] == 32
        assert config["cache_blocks"] >= 48 and config["num_blocks"] == config["cache_blocks"]
        assert config["max_batch_tokens"] == config["cache_max_batch_tokens"] == 128
        assert config["max_memory_percent"] == 0.5
        assert config["use_cuda_graph"] == [False, False]
        assert config["use_async_batching"] is False
        assert config["scheduler_type"] == "prefill_first"
        assert config["allow_block_sharing"] is False and config["prefix_sharing"] is False
        assert not engine.prefix_sharing
        reply = await collect(engine, PROMPT, SamplingParams(max_new_tokens=4), "knobs")
        assert reply
    finally:
        await engine.close()


async def test_compile_level_and_cuda_graphs_are_passed_through(tiny_model_dir) -> None:
    engine = _engine_from_env(tiny_model_dir, CB_COMPILE_LEVEL="1", CB_CUDA_GRAPHS="on")
    await engine.start()
    try:
        config = engine.batching_config()
        assert config["default_compile_level"] == 1
        assert config["varlen_compile_config"]["mode"] == "default"
        assert config["requested"]["use_cuda_graph"] is True
        # Asked for, but the CPU has no graph backend: transformers turns them off.
        assert config["use_cuda_graph"] == [False, False]
    finally:
        await engine.close()


async def test_a_forced_attention_is_loaded_and_named_in_the_log(tiny_model_dir, caplog) -> None:
    engine = _engine_from_env(tiny_model_dir, ATTN_IMPLEMENTATION="eager")
    with caplog.at_level(logging.INFO, logger="synatra_bot.engine.transformers_engine"):
        await engine.start()
    try:
        assert engine.attention_choice.implementation == "eager"
        assert engine.attention == "paged|eager"  # continuous batching runs eager paged
        assert (
            "attention: paged|eager (set by ATTN_IMPLEMENTATION; asked for eager)"
            in caplog.messages
        )
    finally:
        await engine.close()


# --- a generation step that fails -------------------------------------------------------------


def _rebuilt(engine: TransformersEngine, failures: int):
    """The loop was rebuilt after its `failures`-th failure in a row."""
    return lambda: (health := engine.health()).ok and health.failures == failures


async def test_a_failed_step_fails_its_reply_with_a_note_and_the_next_reply_works(
    tiny_model_dir,
) -> None:
    from synatra_bot.metrics import PrometheusMetrics

    metrics = PrometheusMetrics()
    engine = TransformersEngine(
        str(tiny_model_dir),
        context_size=1024,
        recovery_backoff_s=0.01,
        observer=metrics,
        batch_slots=0,  # continuous batching serves every reply: its loop is what fails
    )
    await engine.start()
    steps = FailingSteps(engine.model, times=1)
    try:
        with pytest.raises(GenerationInterrupted) as caught:
            await collect(engine, PROMPT, SamplingParams(max_new_tokens=8), "깨진 답")
        assert caught.value.key == "engine.model_failed"
        await wait_until(_rebuilt(engine, 1))
        assert engine.health().state == "degraded"  # until a reply on the new loop goes through
        assert metrics.registry.get_sample_value("synatra_engine_restarts_total") == 1
        assert await collect(engine, PROMPT, SamplingParams(max_new_tokens=8), "다음 답")
        health = engine.health()
        assert (health.state, health.failures, health.reason) == ("ok", 0, "")
        assert steps.raised == 1
    finally:
        steps.remove()
        await engine.close()


async def test_repeated_failures_back_off_and_show_in_health(tiny_model_dir, caplog) -> None:
    engine = TransformersEngine(
        str(tiny_model_dir), context_size=1024, recovery_backoff_s=0.01, batch_slots=0
    )
    await engine.start()
    steps = FailingSteps(engine.model, times=3)
    try:
        with caplog.at_level(logging.WARNING, logger="synatra_bot.engine"):
            for failure in (1, 2, 3):
                with pytest.raises(GenerationInterrupted):
                    await collect(
                        engine, PROMPT, SamplingParams(max_new_tokens=8), f"실패{failure}"
                    )
                await wait_until(_rebuilt(engine, failure))
        health = engine.health()
        assert health.state == "degraded" and health.failures == 3
        assert health.to_text().startswith("engine: degraded, 3 failed in a row")
        assert await collect(engine, PROMPT, SamplingParams(max_new_tokens=4), "회복")
        assert engine.health().failures == 0
    finally:
        steps.remove()
        await engine.close()
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rebuilding")]
    assert waits == [
        "rebuilding the generation loop in 0.01 s (failure 1 in a row)",
        "rebuilding the generation loop in 0.02 s (failure 2 in a row)",
        "rebuilding the generation loop in 0.04 s (failure 3 in a row)",
    ]
    failed = [r for r in caplog.records if r.getMessage().startswith("the generation loop failed")]
    assert len(failed) == 3 and all(r.exc_info is None for r in failed)


async def test_the_dead_loops_cache_is_freed_before_the_new_one_is_built(
    tiny_model_dir, monkeypatch
) -> None:
    engine = TransformersEngine(
        str(tiny_model_dir), context_size=1024, recovery_backoff_s=0.01, batch_slots=0
    )
    await engine.start()
    await wait_until(lambda: getattr(engine._manager, "batch_processor", None) is not None)
    old_cache = weakref.ref(engine._manager.batch_processor.cache)
    alive_at_rebuild: list[bool] = []
    build = engine._init_continuous_batching

    def rebuild():
        alive_at_rebuild.append(old_cache() is not None)
        return build()

    monkeypatch.setattr(engine, "_init_continuous_batching", rebuild)
    # pytest hands every logger's records to handlers that keep them, and CB's record of the
    # failure holds its traceback (and through it the batch); no handler of the bot keeps
    # records, so CB's logger is silenced here.
    monkeypatch.setattr(logging.getLogger("ContinuousBatchingLogger"), "disabled", True)
    steps = FailingSteps(engine.model, times=1)
    try:
        with pytest.raises(GenerationInterrupted):
            await collect(engine, PROMPT, SamplingParams(max_new_tokens=8), "깨진 답")
        await wait_until(_rebuilt(engine, 1))
    finally:
        steps.remove()
        await engine.close()
    assert alive_at_rebuild == [False]


def test_the_wait_before_a_rebuild_doubles_up_to_its_cap() -> None:
    assert [recovery_delay(n, 0.5, 60.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert recovery_delay(8, 0.5, 60.0) == 60.0
    assert recovery_delay(10_000, 0.5, 60.0) == 60.0


async def test_replies_are_refused_while_the_loop_waits_to_be_rebuilt_and_close_ends_it(
    tiny_model_dir,
) -> None:
    # The first rebuild waits far longer than the test: close() must not wait for it.
    engine = TransformersEngine(
        str(tiny_model_dir), context_size=1024, recovery_backoff_s=60, batch_slots=0
    )
    await engine.start()
    steps = FailingSteps(engine.model, times=1)
    try:
        with pytest.raises(GenerationInterrupted):
            await collect(engine, PROMPT, SamplingParams(max_new_tokens=8), "깨진 답")
        await wait_until(lambda: engine.health().failures == 1)
        health = engine.health()
        assert health.state == "recovering" and not health.ok
        assert health.reason == "the generation loop failed once; rebuilding it after 60 s"
        with pytest.raises(EngineUnavailable) as refused:
            await collect(engine, PROMPT, SamplingParams(max_new_tokens=8), "기다리는 답")
        assert refused.value.key == "engine.recovering"
        supervisor = engine._supervisor
    finally:
        steps.remove()
        await engine.close()
    assert supervisor is not None and not supervisor.is_alive()
    assert engine.health().state == "down"
