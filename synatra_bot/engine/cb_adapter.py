"""The few transformers internals the embedded engine relies on, reached from this module only.

transformers' continuous batching ("CB") documents how to submit, stream and cancel requests,
but not how to ask what it holds or how it resolved its configuration. What the engine needs
and CB has no public API for lives here, each named after what it does:

- `forget_result_handler`: `register_result_handler` removes a request's handler when its final
  output arrives, but a cancelled request never gets one, so its handler would stay in
  `manager.output_router.result_handlers` (guarded by `output_router._lock`) for good.
- `wait_for_generation_loop` and `fatal_error`: CB's generation thread ends for good when a step
  raises (it fails the requests it holds, records the error in
  `manager.background_thread_status.fatal_error` and exits), and CB has no public way to wait
  for that: the engine joins `manager._generation_thread` to learn it, then rebuilds the loop.
- `busy_request_ids`: which requests CB still holds, from the scheduler's `active_requests` and
  `waiting_requests` (`manager.batch_processor.scheduler`): what the engine waits on after a
  cancellation.
- `cache_facts`: the paged cache's real size and whether it shares prefixes
  (`manager.batch_processor.cache`: `num_blocks`, `max_batch_tokens`, `cache_tensor`,
  `use_prefix_sharing`), known only once the generation thread has created it.
- `resolved_config`: the `ContinuousBatchingConfig` CB resolved from the one it was given
  (`manager.continuous_batching_config`: CUDA graphs, async batching and compile decided,
  cache sizes filled in once the cache exists).
- `attention_of`: the attention implementation a model runs with (`config._attn_implementation`;
  CB itself reads it there and switches eager to `paged|eager`).
- `scheduler_names`: the schedulers CB offers (`scheduler.SCHEDULER_MAPPING`).
- `compile_on_any_device`: a `CompileConfig` that `generate()` honours on the CPU too
  (`_compile_all_devices`; it auto-compiles on GPUs only), for the benchmark's baseline.

tests/test_engine_cb_adapter.py checks that each of these still exists with the shape used
here, so a transformers upgrade that moves one fails there with a message naming it.
"""

from __future__ import annotations

from typing import Any


def attention_of(model: Any) -> str:
    """The attention implementation `model` runs with, e.g. "sdpa" or "paged|eager"."""
    return str(model.config._attn_implementation)


def compile_on_any_device() -> Any:
    """A `CompileConfig` that makes `generate()` compile the forward pass on any device."""
    from transformers import CompileConfig

    config: Any = CompileConfig()  # type: ignore[no-untyped-call]
    config._compile_all_devices = True
    return config


def scheduler_names() -> tuple[str, ...]:
    """The `scheduler_type` values continuous batching accepts."""
    from transformers.generation.continuous_batching.scheduler import SCHEDULER_MAPPING

    return tuple(SCHEDULER_MAPPING)


def resolved_config(manager: Any) -> Any:
    """The manager's fully resolved `ContinuousBatchingConfig`."""
    return manager.continuous_batching_config


def _processor(manager: Any) -> Any:
    # Created by the generation thread when it starts (or by warmup()); None before that.
    return getattr(manager, "batch_processor", None)


def busy_request_ids(manager: Any) -> set[str]:
    """Requests the generation loop still holds, waiting or generating."""
    processor = _processor(manager)
    if processor is None:
        return set()
    scheduler = processor.scheduler
    return set(scheduler.active_requests) | set(scheduler.waiting_requests)


def cache_facts(manager: Any) -> dict[str, Any]:
    """The paged cache's blocks, batch token budget, bytes and prefix sharing; {} before the
    cache exists."""
    processor = _processor(manager)
    cache = getattr(processor, "cache", None)
    if cache is None:
        return {}
    tensor = cache.cache_tensor
    return {
        "num_blocks": int(cache.num_blocks),
        "max_batch_tokens": int(cache.max_batch_tokens),
        "bytes": int(tensor.numel() * tensor.element_size()),
        "prefix_sharing": bool(cache.use_prefix_sharing),
    }


def forget_result_handler(manager: Any, request_id: str) -> None:
    """Drop the result handler registered for `request_id`, if it is still there."""
    router = manager.output_router
    with router._lock:
        router.result_handlers.pop(request_id, None)


def wait_for_generation_loop(manager: Any) -> None:
    """Block until the manager's generation thread has ended (at once if none is running)."""
    thread = getattr(manager, "_generation_thread", None)
    if thread is not None:
        thread.join()


def fatal_error(manager: Any) -> BaseException | None:
    """The error that ended the manager's generation loop; None when it ended on request."""
    error = manager.background_thread_status.fatal_error
    return error if isinstance(error, BaseException) else None
