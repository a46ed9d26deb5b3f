"""The transformers internals synatra_bot.engine.cb_adapter reaches into still exist, with the
shape it expects, in the installed transformers: an upgrade that moves one fails here, naming it.

Checked on a real continuous batching manager over the tiny random model, on the CPU.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from typing import Any

import pytest

from synatra_bot.engine import cb_adapter
from synatra_bot.engine.transformers_engine import RESOLVED_CB_FIELDS
from synatra_bot.settings import CB_SCHEDULERS
from tests.engine_helpers import wait_until
from tests.model_fixtures import FailingSteps


def _moved(what: str, used_by: str) -> str:
    import transformers

    return (
        f"transformers {transformers.__version__} no longer has {what}, which "
        f"cb_adapter.{used_by} relies on: update synatra_bot/engine/cb_adapter.py"
    )


@pytest.fixture(scope="module")
def model(tiny_model_dir: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="sdpa")


@pytest.fixture
async def manager(model: Any) -> Any:
    from transformers import ContinuousBatchingConfig, GenerationConfig

    config = ContinuousBatchingConfig(
        num_blocks=32, page_size=32, max_batch_tokens=128, auto_switch_to_flash=False
    )
    generation = GenerationConfig(do_sample=False, max_new_tokens=400, eos_token_id=[-1])  # type: ignore[no-untyped-call]
    manager = model.init_continuous_batching(
        generation_config=generation, continuous_batching_config=config
    )
    manager.start()
    try:
        yield manager
    finally:
        await asyncio.to_thread(manager.stop, block=True, timeout=30, hard_stop=True)
        await asyncio.to_thread(manager.destroy)


def test_attention_is_read_from_the_model_config(model: Any) -> None:
    from transformers import PretrainedConfig

    assert isinstance(getattr(PretrainedConfig, "_attn_implementation", None), property), _moved(
        "PretrainedConfig._attn_implementation", "attention_of"
    )
    assert cb_adapter.attention_of(model) == "sdpa"


def test_the_schedulers_the_settings_offer_exist() -> None:
    try:
        names = cb_adapter.scheduler_names()
    except ImportError:
        pytest.fail(_moved("continuous_batching.scheduler.SCHEDULER_MAPPING", "scheduler_names"))
    missing = set(CB_SCHEDULERS) - set(names)
    assert not missing, _moved(f"the schedulers {sorted(missing)}", "scheduler_names")


def test_the_engine_options_and_reported_fields_are_config_fields() -> None:
    from transformers import ContinuousBatchingConfig

    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    passed = {
        "per_request_processors",
        "auto_switch_to_flash",
        "seed",
        "num_blocks",
        "max_batch_tokens",
        "page_size",
        "max_memory_percent",
        "use_cuda_graph",
        "use_async_batching",
        "default_compile_level",
        "scheduler_type",
        "allow_block_sharing",
    }
    missing = (passed | set(RESOLVED_CB_FIELDS)) - fields
    assert not missing, _moved(f"ContinuousBatchingConfig fields {sorted(missing)}", "*")


def test_the_flash_availability_checks_take_the_kernels_fallback() -> None:
    from transformers.utils import import_utils

    for name in ("is_flash_attn_2_available", "is_flash_attn_3_available"):
        check = getattr(import_utils, name, None)
        assert check is not None, _moved(f"utils.import_utils.{name}", "(probe_flash_support)")
        assert "kernels_fallback_ok" in inspect.signature(check).parameters, _moved(
            f"the kernels_fallback_ok parameter of {name}", "(probe_flash_support)"
        )
    assert callable(getattr(import_utils, "is_kernels_available", None)), _moved(
        "utils.import_utils.is_kernels_available", "(probe_flash_support)"
    )


async def test_the_manager_exposes_its_resolved_config_and_cache(manager: Any) -> None:
    from transformers import ContinuousBatchingConfig

    config = cb_adapter.resolved_config(manager)
    assert isinstance(config, ContinuousBatchingConfig), _moved(
        "ContinuousBatchingManager.continuous_batching_config", "resolved_config"
    )
    await wait_until(lambda: getattr(manager, "batch_processor", None) is not None)
    processor = manager.batch_processor
    cache = getattr(processor, "cache", None)
    assert cache is not None, _moved("ContinuousBatchProcessor.cache", "cache_facts")
    for name, kind in (
        ("num_blocks", int),
        ("max_batch_tokens", int),
        ("use_prefix_sharing", bool),
    ):
        assert isinstance(getattr(cache, name, None), kind), _moved(
            f"PagedAttentionCache.{name} ({kind.__name__})", "cache_facts"
        )
    import torch

    assert isinstance(getattr(cache, "cache_tensor", None), torch.Tensor), _moved(
        "PagedAttentionCache.cache_tensor", "cache_facts"
    )
    facts = cb_adapter.cache_facts(manager)
    assert facts["num_blocks"] >= 32 and facts["bytes"] > 0
    # CB writes the cache's real figures back into its resolved config.
    assert config.num_blocks == facts["num_blocks"]


async def test_requests_are_tracked_and_a_cancelled_handler_can_be_forgotten(
    manager: Any,
) -> None:
    router = getattr(manager, "output_router", None)
    assert router is not None, _moved("ContinuousBatchingManager.output_router", "*")
    assert hasattr(getattr(router, "_lock", None), "__enter__"), _moved(
        "OutputRouter._lock (a lock)", "forget_result_handler"
    )
    assert isinstance(getattr(router, "result_handlers", None), dict), _moved(
        "OutputRouter.result_handlers (a dict)", "forget_result_handler"
    )
    outputs: list[Any] = []
    manager.register_result_handler("probe", outputs.append)
    assert "probe" in router.result_handlers, _moved(
        "register_result_handler storing into OutputRouter.result_handlers",
        "forget_result_handler",
    )
    manager.add_request([1, 100, 200, 300], request_id="probe", max_new_tokens=400, streaming=True)
    await wait_until(lambda: bool(outputs))
    scheduler = manager.batch_processor.scheduler
    for name in ("active_requests", "waiting_requests"):
        assert isinstance(getattr(scheduler, name, None), dict), _moved(
            f"Scheduler.{name} (a dict)", "busy_request_ids"
        )
    assert "probe" in cb_adapter.busy_request_ids(manager)

    manager.cancel_request("probe")
    await wait_until(lambda: "probe" not in cb_adapter.busy_request_ids(manager))
    # A cancelled request gets no final output, so its handler is still registered.
    assert "probe" in router.result_handlers, (
        "transformers now drops a cancelled request's result handler itself: "
        "cb_adapter.forget_result_handler may no longer be needed"
    )
    cb_adapter.forget_result_handler(manager, "probe")
    assert "probe" not in router.result_handlers


async def test_a_failed_step_ends_the_loop_and_its_error_can_be_read(
    model: Any, manager: Any
) -> None:
    assert cb_adapter.fatal_error(manager) is None, _moved(
        "BackgroundThreadStatus.fatal_error", "fatal_error"
    )
    outputs: list[Any] = []
    manager.register_result_handler("doomed", outputs.append)
    steps = FailingSteps(model, times=1)
    try:
        manager.add_request([1, 100, 200], request_id="doomed", max_new_tokens=8, streaming=True)
        await asyncio.to_thread(cb_adapter.wait_for_generation_loop, manager)
    finally:
        steps.remove()
    assert not manager.is_running(), _moved(
        "ContinuousBatchingManager._generation_thread", "wait_for_generation_loop"
    )
    error = cb_adapter.fatal_error(manager)
    assert isinstance(error, RuntimeError) and "simulated" in str(error), (
        "a failed step no longer ends the generation loop with a fatal error: the engine's "
        "recovery (TransformersEngine._supervise) may need another signal"
    )
    await wait_until(lambda: bool(outputs))
    assert outputs[-1].error, "CB no longer fails the requests it held when its loop dies"


def test_generate_can_be_told_to_compile_on_the_cpu() -> None:
    from transformers import CompileConfig

    config = cb_adapter.compile_on_any_device()
    assert isinstance(config, CompileConfig)
    from transformers.generation import utils

    assert "_compile_all_devices" in inspect.getsource(utils), _moved(
        "GenerationMixin's check of CompileConfig._compile_all_devices", "compile_on_any_device"
    )
