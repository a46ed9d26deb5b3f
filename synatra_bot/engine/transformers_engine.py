"""The embedded engine: transformers continuous batching on the model's own worker thread.

All channels share one forward pass through `model.init_continuous_batching()`: the manager runs
its generation loop on a dedicated thread, `add_request(streaming=True)` submits a reply and
`register_result_handler` delivers every new token back onto the asyncio loop with
`loop.call_soon_threadsafe`, so the loop never waits on the GPU. Leaving a stream (break,
cancellation, `cancel()`) calls `cancel_request`, which frees the request's cache blocks.

Choices, with their reasons:
- Which lane serves a reply (decided as it arrives, kept to its end): a reply that needs a
  penalty, a seed or a roleplay sampler takes the single-stream lane (below); a lone reply with
  SINGLE_STREAM on takes it too; any other reply takes a free row of the batched static-cache
  lane (synatra_bot.engine.batched_lane; `batch_slots` rows, 8 by default), and only when all
  its rows are busy does it go to CB. The batched lane runs with sdpa only
  (`batched_lane_slots`): with sdpa, CB packs the whole batch into one masked sequence each step
  (copying every reply's gathered cache, a dense mask and index lists: a step costs batch x
  context on the host), while the lane keeps each reply's cache in place and decodes all rows in
  one forward, so eight replies cost a little more than one step of generate() with batch 8.
  With flash attention CB has the faster path (no padding, CUDA graphs) and serves everything.
  Replies on the lane get only each step's new token (CB's streaming output copies a reply's
  whole token list every step), and are sampled with `samplers.pick_token` (top-k through
  `torch.topk`, no sort of the vocabulary). A row whose reply ended keeps its cache until a
  joining reply needs the row, and a reply whose prompt starts with what a kept row holds is
  prefilled only past it (a channel's next prompt is its last one plus the new turn). A failed
  lane step fails the replies it held with the same note as a failed CB step and counts as a
  failure in a row in `health()`; the lane is ready again at once, with no row kept.
- Sampling: temperature, top-p and top-k are per request (CB's per-request logits processors).
  Temperature 0 is approximated by 1e-4 (CB samples for every request or none).
- Repetition penalty and seeds: CB ignores the penalty and has one seed for everything, so a
  request with `repetition_penalty != 1.0` or a `seed` goes to a single-stream lane: plain
  `model.generate()` on one extra worker thread, concurrently with the CB loop (or inside
  `manager.pause()` when the attention implementation is paged-only). It is slower per token and
  serves one such request at a time; the default (1.0, no seed) keeps every channel batched.
- min-p, DRY and XTC take the single-stream lane too. CB has per-request versions of only
  temperature, top-k and top-p; any other processor (min-p included) is built once from the
  manager's generation config and applied to every request alike, and sees only the batch's
  newest tokens, not each request's history. DRY needs that history and XTC its own random
  draws, so neither can run per request in CB. On the lane min-p goes to `generate()` as
  `min_p`, and DRY and XTC (synatra_bot.engine.samplers) as `logits_processor`. All three are
  off by default, so default requests stay batched.
- A lone reply (`single_stream="static"` or `"static-compile"`, SINGLE_STREAM): when nothing else
  is being generated, a batchable request takes the single-stream lane too, decoding through a
  static cache sized for the whole context (one shape, so "static-compile" compiles the decode
  step once, on the first such reply, and reuses it); requests that arrive while it runs go to
  CB as usual. Each request stays on the lane it started on, so no token is lost or repeated
  and cancelling works the same. Off by default until measured on a GPU: with a paged-only
  attention the lane pauses CB while it decodes (see docs/benchmarks.md).
- Prefix reuse: CB shares cache blocks between requests whose prompts start alike, but only for
  full-attention layers. Mistral declares a 4096-token sliding window, which turns sharing off;
  when `context_size` fits inside the window the window can never take effect, so the engine
  loads the model with full attention (same outputs) and prefix sharing works. Requests longer
  than `context_size` are refused in that mode.
- Precision: bf16 on GPUs that support it, else fp16; fp32 on the CPU, with a warning that
  there is no GPU. 8/4-bit through bitsandbytes, imported only when asked.
- On the CPU, CB sizes its cache from free RAM (through psutil); the engine gives it a small
  explicit cache there instead.
- Attention: `resolve_attention` is the one place that picks it. "auto" takes flash attention
  when this machine can run it (flash-attn-3 on Hopper, flash-attn, else a hub flash kernel
  through the `kernels` package) and sdpa otherwise (always on the CPU); CB's own switch to
  flash stays off so the choice, and the INFO line naming it and why, are the engine's. With
  sdpa CB packs the batch into one masked sequence and never turns on CUDA graphs, async
  batching or the decode fast path; flash attention turns them on.
- Recovery: a step that raises (a CUDA error, an out-of-memory) ends CB's generation thread for
  good. A supervisor thread waits on it; when it ends without the engine closing, the replies
  it held fail with a localised note (`engine.model_failed`, never the exception's text), and
  the loop is rebuilt from scratch (a new manager and cache) after a delay that doubles with
  each failure in a row, from `recovery_backoff_s` up to `max_recovery_backoff_s`. Meanwhile
  new replies are refused at once (`engine.recovering`) rather than left waiting for a loop
  that may fail again; `health()` says it is recovering and how many failures in a row, until
  a reply on the rebuilt loop produces tokens. The single-stream lane runs beside CB and is
  not affected; a failure there fails only its own reply. An error that leaves the GPU unusable
  for the whole process (a sticky CUDA error) makes every rebuild fail too: the count keeps
  growing, the wait stays at its cap, and only restarting the process helps.
- The remaining CB knobs (cache size, batch tokens, page size, CUDA graphs, async batching,
  compile level, scheduler, prefix sharing) pass through as given; None leaves the choice to
  transformers. `batching_config()` reports what CB resolved. Anything CB offers no public API
  for is reached through synatra_bot.engine.cb_adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from synatra_bot.engine import cb_adapter
from synatra_bot.engine.base import EngineHealth, SamplingParams, ThroughputMeter
from synatra_bot.engine.detokenize import IncrementalDetokenizer, StopStringFilter, reply_so_far
from synatra_bot.errors import ConfigError, EngineError, EngineUnavailable, GenerationInterrupted
from synatra_bot.observe import IGNORED, Observer
from synatra_bot.settings import SINGLE_STREAM_MODES

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from synatra_bot.engine.batched_lane import BatchedLane

log = logging.getLogger(__name__)

#: On the CPU the cache holds this many tokens unless num_blocks says otherwise.
CPU_DEFAULT_CACHE_TOKENS = 8192
DEFAULT_PAGE_SIZE = 256
CPU_DEFAULT_MAX_BATCH_TOKENS = 512
MIN_TEMPERATURE = 1e-4
DEFAULT_RECOVERY_BACKOFF_S = 0.5
MAX_RECOVERY_BACKOFF_S = 60.0
#: Replies the batched static-cache lane decodes together by default (BatchedLane); more
#: concurrent replies go to continuous batching.
DEFAULT_BATCH_SLOTS = 8
#: Attention implementations the batched lane runs with (it needs a 4D mask per row).
BATCHED_LANE_ATTENTION = ("sdpa",)


def batched_lane_slots(
    requested: int | None, attention: str, context: int | None, model_config: Any = None
) -> int:
    """How many replies the batched static-cache lane takes: `requested` (None: the default),
    or 0 (continuous batching serves everything) when the attention is not sdpa, where CB has
    the faster path (flash attention: CUDA graphs, no padding); when there is no context size
    to bound the lane's cache; or when the model's layers do not all attend alike over the
    whole context (a sliding window the context goes past, or mixed layer types), which the
    lane's one mask per row does not describe."""
    if context is None or attention not in BATCHED_LANE_ATTENTION:
        return 0
    window = getattr(model_config, "sliding_window", None)
    layer_types = getattr(model_config, "layer_types", None) or ()
    if (window is not None and context > window) or any(
        kind != "full_attention" for kind in layer_types
    ):
        return 0
    return DEFAULT_BATCH_SLOTS if requested is None else max(requested, 0)


def recovery_delay(failures: int, base_s: float, cap_s: float) -> float:
    """How long to wait before rebuilding the generation loop after `failures` in a row."""
    return min(base_s * 2.0 ** min(max(failures - 1, 0), 32), cap_s)


@dataclass
class _Request:
    queue: asyncio.Queue[Any]
    loop: asyncio.AbstractEventLoop
    started: bool = False
    cancel_event: threading.Event = field(default_factory=threading.Event)
    #: The CB manager the request went to (None: the single-stream or the batched lane).
    manager: Any = None
    #: The request went to the batched static-cache lane.
    batched_lane: bool = False

    def deliver(self, item: Any) -> None:
        """Put `item` on the request's queue from any thread."""
        with contextlib.suppress(RuntimeError):  # its event loop is closed: nobody listens
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class _Closed:
    """Queue marker: the request was cancelled or the engine closed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Failed:
    """Queue marker: generation failed; `reason` is for the log."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


_END = object()


def _resolve_dtype(dtype: Any, device: str) -> torch.dtype:
    import torch

    if dtype is None:
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise EngineError(f"unknown dtype {dtype!r}")
        return resolved
    if isinstance(dtype, torch.dtype):
        return dtype
    raise EngineError(f"unknown dtype {dtype!r}")


#: ATTN_IMPLEMENTATION values of older transformers, and what transformers 5 calls them.
LEGACY_ATTENTION = {"paged|sdpa": "sdpa", "paged|flash_attention_2": "flash_attention_2"}
#: Implementations that need nothing installed, so there is nothing to probe.
_PLAIN_ATTENTION = ("sdpa", "eager", "paged|eager")
#: Flash attention 2 runs on Ampere (compute capability 8.0) and newer; flash attention 3 is
#: built for Hopper (9.x) only.
FLASH_MIN_CAPABILITY = (8, 0)
HOPPER_MAJOR = 9


@dataclass(frozen=True)
class FlashSupport:
    """What this machine offers flash attention. The default is a machine without a GPU."""

    #: The GPU's compute capability; None without a CUDA GPU.
    cuda_capability: tuple[int, int] | None = None
    #: The flash-attn package (flash attention 2) is installed.
    flash_attn_2: bool = False
    #: The flash-attn-3 package (`flash_attn_interface`) is installed.
    flash_attn_3: bool = False
    #: The `kernels` package is installed: transformers can load flash kernels from the Hub.
    kernels: bool = False
    #: Hub flash kernels that loaded through `kernels` (from its cache, or downloaded).
    kernel_flash_attn_2: bool = False
    kernel_flash_attn_3: bool = False


@dataclass(frozen=True)
class AttentionChoice:
    """The attention implementation a model is loaded with, and why it was chosen."""

    implementation: str
    reason: str


def probe_flash_support(device: str, *, load_kernels: bool = True) -> FlashSupport:
    """Ask torch and transformers what flash attention `device` can run.

    Loading a hub kernel may download it, so it is tried only with `load_kernels`, on a GPU that
    can run it, when no flash-attn package is installed.
    """
    if not device.startswith("cuda"):
        return FlashSupport()
    import torch
    from transformers.utils import import_utils as hf_utils

    if not torch.cuda.is_available():
        return FlashSupport()
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    capability = (int(major), int(minor))
    flash_2 = bool(hf_utils.is_flash_attn_2_available())
    flash_3 = bool(hf_utils.is_flash_attn_3_available())
    kernels = bool(hf_utils.is_kernels_available())
    kernel_2 = kernel_3 = False
    if load_kernels and kernels and not (flash_2 or flash_3) and capability >= FLASH_MIN_CAPABILITY:
        if capability[0] == HOPPER_MAJOR:
            kernel_3 = bool(hf_utils.is_flash_attn_3_available(kernels_fallback_ok=True))
        if not kernel_3:
            kernel_2 = bool(hf_utils.is_flash_attn_2_available(kernels_fallback_ok=True))
    return FlashSupport(capability, flash_2, flash_3, kernels, kernel_2, kernel_3)


def choose_attention(
    requested: str, support: FlashSupport, *, dtype: str = "bfloat16"
) -> AttentionChoice:
    """The attention for ATTN_IMPLEMENTATION=`requested` on a machine offering `support`.

    "auto" prefers flash attention, which CB batches without padding masks and runs with CUDA
    graphs; anything else is used as asked, unless it cannot work here (ConfigError).
    """
    name = LEGACY_ATTENTION.get(requested, requested)
    if name != "auto":
        _check_forced(name, support)
        if name != requested:
            return AttentionChoice(name, f"ATTN_IMPLEMENTATION={requested}, called {name} now")
        return AttentionChoice(name, "set by ATTN_IMPLEMENTATION")
    capability = support.cuda_capability
    if capability is None:
        return AttentionChoice("sdpa", "no CUDA GPU: flash attention needs one")
    if dtype == "float32":
        return AttentionChoice("sdpa", "float32 weights: flash attention needs float16 or bfloat16")
    if capability < FLASH_MIN_CAPABILITY:
        return AttentionChoice(
            "sdpa",
            f"GPU compute capability {capability[0]}.{capability[1]}: flash attention needs 8.0",
        )
    hopper = capability[0] == HOPPER_MAJOR
    if support.flash_attn_3 and hopper:
        return AttentionChoice("flash_attention_3", "flash-attn-3 installed, Hopper GPU")
    if support.flash_attn_2:
        return AttentionChoice("flash_attention_2", "flash-attn installed")
    through_kernels = "flash-attn not installed; a Hub flash kernel through the kernels package"
    if support.kernel_flash_attn_3 and hopper:
        return AttentionChoice("flash_attention_3", through_kernels)
    if support.kernel_flash_attn_2:
        return AttentionChoice("flash_attention_2", through_kernels)
    if support.kernels:
        return AttentionChoice(
            "sdpa", "flash-attn not installed and the kernels package loaded no flash kernel"
        )
    return AttentionChoice("sdpa", "flash-attn not installed")


def _check_forced(name: str, support: FlashSupport) -> None:
    if name in _PLAIN_ATTENTION or "flash" not in name:
        return  # anything else non-flash is transformers' to accept or refuse
    problem = None
    if support.cuda_capability is None:
        problem = f"{name} needs a CUDA GPU"
    elif name.startswith("kernels-community/") and not support.kernels:
        problem = f"{name} needs the kernels package (pip install kernels)"
    elif name == "flash_attention_2" and not (support.flash_attn_2 or support.kernels):
        problem = f"{name} needs flash-attn (pip install flash-attn) or the kernels package"
    elif name == "flash_attention_3" and not (support.flash_attn_3 or support.kernels):
        problem = f"{name} needs flash-attn-3 or the kernels package"
    if problem is not None:
        raise ConfigError("ATTN_IMPLEMENTATION", f"{problem}; use auto or sdpa")


def resolve_attention(requested: str, device: str, *, dtype: str = "bfloat16") -> AttentionChoice:
    """The attention a model on `device` is loaded with for ATTN_IMPLEMENTATION=`requested`."""
    name = LEGACY_ATTENTION.get(requested, requested)
    if name in _PLAIN_ATTENTION:
        support = FlashSupport()
    else:
        support = probe_flash_support(device, load_kernels=name == "auto")
    return choose_attention(requested, support, dtype=dtype)


#: The resolved ContinuousBatchingConfig fields `batching_config()` reports.
RESOLVED_CB_FIELDS = (
    "num_blocks",
    "max_batch_tokens",
    "page_size",
    "max_memory_percent",
    "max_requests_per_batch",
    "max_blocks_per_request",
    "use_async_batching",
    "use_cuda_graph",
    "default_compile_level",
    "varlen_compile_config",
    "decode_compile_config",
    "scheduler_type",
    "allow_block_sharing",
    "per_request_processors",
)


def _plain(value: Any) -> Any:
    """A JSON-friendly form of a config value (a CompileConfig becomes its dict)."""
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return _plain(to_dict())
    return str(value)


class TransformersEngine:
    """Generates with a local transformers model shared by all channels."""

    def __init__(
        self,
        model_id: str,
        *,
        device: str | None = None,
        dtype: Any = None,
        quantization: str = "none",
        attn_implementation: str = "auto",
        max_batch_tokens: int | None = None,
        num_blocks: int | None = None,
        page_size: int | None = None,
        context_size: int | None = None,
        max_memory_percent: float | None = None,
        use_cuda_graph: bool | None = None,
        use_async_batching: bool | None = None,
        compile_level: int = 0,
        scheduler: str = "fifo",
        allow_block_sharing: bool = True,
        single_stream: str = "off",
        batch_slots: int | None = None,
        seed: int | None = None,
        recovery_backoff_s: float = DEFAULT_RECOVERY_BACKOFF_S,
        max_recovery_backoff_s: float = MAX_RECOVERY_BACKOFF_S,
        tokenizer: PreTrainedTokenizerBase | None = None,
        model: PreTrainedModel | None = None,
        observer: Observer = IGNORED,
    ) -> None:
        if quantization not in ("none", "8bit", "4bit"):
            raise EngineError(f"quantization must be none, 8bit or 4bit, got {quantization!r}")
        if single_stream not in SINGLE_STREAM_MODES:
            modes = ", ".join(SINGLE_STREAM_MODES)
            raise EngineError(f"single_stream must be one of {modes}, got {single_stream!r}")
        self.model_id = model_id
        self._single_stream = single_stream
        self._compile_announced = False
        self._device_request = device
        self._dtype_request = dtype
        self._quantization = quantization
        self._attn_implementation = attn_implementation
        self._max_batch_tokens = max_batch_tokens
        self._num_blocks = num_blocks
        self._page_size = page_size
        self._context_size = context_size
        self._max_memory_percent = max_memory_percent
        self._use_cuda_graph = use_cuda_graph
        self._use_async_batching = use_async_batching
        self._compile_level = compile_level
        self._scheduler = scheduler
        self._allow_block_sharing = allow_block_sharing
        self._seed = seed
        self._tokenizer: PreTrainedTokenizerBase | None = tokenizer
        #: A model built in memory (benchmarks with random weights); skips loading.
        self._model: PreTrainedModel | None = model
        self._manager: Any = None
        self._attention_choice: AttentionChoice | None = None
        #: What the engine passed to ContinuousBatchingConfig (None: transformers decides).
        self._cb_requested: dict[str, Any] = {}
        self._single_lane: ThreadPoolExecutor | None = None
        self._batch_slots_request = batch_slots
        self._batched_lane: BatchedLane | None = None
        self._requests: dict[str, _Request] = {}
        self._meter = ThroughputMeter()
        self._context_limit: int | None = None
        self._closing = False
        self._recovery_backoff_s = recovery_backoff_s
        self._observer = observer
        self._max_recovery_backoff_s = max_recovery_backoff_s
        #: Watches the generation loop and rebuilds it when it fails (see the module docstring).
        self._supervisor: threading.Thread | None = None
        #: Set by close(): the supervisor stops waiting to rebuild.
        self._stopping = threading.Event()
        #: Held while the generation loop is swapped (rebuilt, or taken away by close()).
        self._swap = threading.Lock()
        #: Generation loop failures in a row; 0 once a reply on the rebuilt loop gets tokens.
        self._failures = 0
        self._recovering = False
        #: The wait before the next rebuild, while recovering.
        self._next_rebuild_s = 0.0
        self.device = ""
        self.dtype_name = ""

    # ------------------------------------------------------------------ lifecycle

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            raise EngineUnavailable("the engine is not started")
        return self._tokenizer

    @property
    def model(self) -> PreTrainedModel:
        if self._model is None:
            raise EngineUnavailable("the engine is not started")
        return self._model

    @property
    def prefix_sharing(self) -> bool:
        """Whether CB shares cache blocks between prompts with a common prefix."""
        if self._manager is None:
            return False
        return bool(cb_adapter.cache_facts(self._manager).get("prefix_sharing", False))

    @property
    def batched_lane_slots(self) -> int:
        """Replies the batched static-cache lane takes at once (0: it is off)."""
        return 0 if self._batched_lane is None else self._batched_lane.slots

    @property
    def attention_choice(self) -> AttentionChoice:
        """The attention the model was loaded with, and why."""
        if self._attention_choice is None:
            raise EngineUnavailable("the engine is not started")
        return self._attention_choice

    @property
    def attention(self) -> str:
        """The attention implementation continuous batching runs (it turns eager into
        paged|eager, and transformers names a Hub kernel by its repository)."""
        return cb_adapter.attention_of(self.model)

    def batching_config(self) -> dict[str, Any]:
        """The continuous batching configuration in effect, as CB resolved it; {} before start.

        `requested` holds what the engine passed (None: left to transformers). The cache's real
        figures (`cache_blocks`, `cache_max_batch_tokens`, `cache_mib`, `prefix_sharing`) appear
        once the generation thread has created the cache, which it does as it starts.
        """
        manager = self._manager
        if manager is None:
            return {}
        cb = cb_adapter.resolved_config(manager)
        resolved: dict[str, Any] = {"attention": self.attention}
        for name in RESOLVED_CB_FIELDS:
            resolved[name] = _plain(getattr(cb, name, None))
        facts = cb_adapter.cache_facts(manager)
        if facts:
            resolved["cache_blocks"] = facts["num_blocks"]
            resolved["cache_max_batch_tokens"] = facts["max_batch_tokens"]
            resolved["cache_mib"] = round(facts["bytes"] / 2**20, 1)
            resolved["prefix_sharing"] = facts["prefix_sharing"]
            if self.device.startswith("cuda"):
                import torch

                total = torch.cuda.get_device_properties(self.model.device).total_memory
                resolved["cache_share_of_device_memory"] = round(facts["bytes"] / total, 3)
        resolved["requested"] = dict(self._cb_requested)
        return resolved

    def busy_request_ids(self) -> set[str]:
        """Requests the CB loop still holds (waiting or generating): what costs GPU time."""
        busy = set() if self._manager is None else cb_adapter.busy_request_ids(self._manager)
        if self._batched_lane is not None:
            busy |= self._batched_lane.busy_request_ids()
        return busy

    async def start(self) -> None:
        if self._manager is not None:
            return
        self._closing = False
        self._stopping.clear()
        self._failures = 0
        self._recovering = False
        await asyncio.to_thread(self._load)
        slots = batched_lane_slots(
            self._batch_slots_request,
            cb_adapter.attention_of(self.model),
            self._context_limit,
            self.model.config,
        )
        if slots and self._context_limit is not None:
            from synatra_bot.engine.batched_lane import BatchedLane

            # Before CB, which may size its cache from the memory left.
            self._batched_lane = BatchedLane(
                self.model, slots=slots, context=self._context_limit, on_failure=self._lane_failed
            )
            log.info(
                "batched static-cache lane: up to %d replies, continuous batching beyond", slots
            )
        manager = await asyncio.to_thread(self._init_continuous_batching)
        manager.start()
        self._manager = manager
        self._single_lane = ThreadPoolExecutor(1, thread_name_prefix="synatra-single-stream")
        self._supervisor = threading.Thread(
            target=self._supervise, name="synatra-cb-supervisor", daemon=True
        )
        self._supervisor.start()
        log.info("engine ready: %s", self.health().detail)

    # ------------------------------------------------------------------ recovery

    def _supervise(self) -> None:
        """Runs on its own thread for the engine's life: whenever the generation loop ends
        without the engine closing, fail what it held and rebuild it."""
        try:
            while self._watch():
                if not self._rebuild():
                    return
        except Exception:
            log.exception("the generation loop's supervisor stopped; restart the bot")

    def _watch(self) -> bool:
        """Wait for the generation loop to end. When it failed, end the replies it held and
        retire it (True); when the engine is closing, leave it to close() (False)."""
        manager = self._manager
        if manager is None:
            return False
        cb_adapter.wait_for_generation_loop(manager)
        with self._swap:
            if self._closing:
                return False
            self._recovering = True
            self._manager = None
        self._failed()
        error = cb_adapter.fatal_error(manager)
        log.error(
            "the generation loop failed (%s; failure %d in a row): its replies end with a note",
            f"{type(error).__name__}: {error}" if error is not None else "it stopped",
            self._failures,
        )
        # CB fails the requests it held, but not one that reached its queue as it died, nor
        # one it refused once it had (add_request drops those quietly): end each here.
        for request in list(self._requests.values()):
            if request.manager is manager:
                request.deliver(_Failed("the generation loop failed"))
        self._retire(manager)
        if error is not None:
            # Its traceback holds the dead loop's frames, and with them its cache: free that
            # before a new cache is sized from the memory left.
            error.__traceback__ = None
        del manager, error
        self._free_memory()
        return True

    def _rebuild(self) -> bool:
        """Start a new generation loop, backing off while that fails too; False when the
        engine closes first."""
        while True:
            log.warning(
                "rebuilding the generation loop in %g s (failure %d in a row)",
                self._next_rebuild_s,
                self._failures,
            )
            if self._stopping.wait(self._next_rebuild_s):
                return False
            with self._swap:
                if self._closing:
                    return False
                try:
                    manager = self._init_continuous_batching()
                    manager.start()
                except Exception:
                    log.exception("rebuilding the generation loop failed")
                    self._failed()
                    self._free_memory()
                    continue
                self._manager = manager
                self._recovering = False
            log.info("the generation loop is running again")
            self._observer.engine_restarted()
            return True

    def _failed(self) -> None:
        """Count a failure in a row, once the wait before the next rebuild is set (health
        reports both)."""
        failures = self._failures + 1
        self._next_rebuild_s = recovery_delay(
            failures, self._recovery_backoff_s, self._max_recovery_backoff_s
        )
        self._failures = failures

    @staticmethod
    def _retire(manager: Any) -> None:
        """Stop a manager and free its cache."""
        manager.stop(block=True, timeout=30, hard_stop=True)
        manager.destroy()

    def _free_memory(self) -> None:
        """Collect what a dead loop left (reference cycles through its frames) and give the
        device's cached memory back."""
        import gc

        import torch

        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _take_manager(self) -> Any:
        """Take the manager away from the supervisor (for close)."""
        with self._swap:
            manager, self._manager = self._manager, None
            return manager

    def _load(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        from synatra_bot.tokenizer import load_tokenizer

        if self._model is not None:
            given: Any = self._model
            self.device, self.dtype_name = (
                str(given.device),
                str(given.dtype).removeprefix("torch."),
            )
            self._context_limit = self._context_size
            self._attention_choice = AttentionChoice(
                cb_adapter.attention_of(given), "set on the model given to the engine"
            )
            if self._tokenizer is None:
                self._tokenizer = load_tokenizer(self.model_id)
            return
        device = self._device_request or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cpu":
            log.warning(
                "No CUDA GPU found: running %s on the CPU in float32. Replies will be very slow; "
                "use a GPU or ENGINE=openai for real use.",
                self.model_id,
            )
        dtype = _resolve_dtype(self._dtype_request, device)
        self.device, self.dtype_name = device, str(dtype).removeprefix("torch.")
        choice = resolve_attention(self._attn_implementation, device, dtype=self.dtype_name)
        self._attention_choice = choice
        hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]

        config = AutoConfig.from_pretrained(self.model_id)
        window = getattr(config, "sliding_window", None)
        if self._context_size is not None:
            self._context_limit = self._context_size
            if window is not None and self._context_size <= window:
                config.sliding_window = None
                log.info(
                    "context %d fits the %d-token sliding window: loading with full attention",
                    self._context_size,
                    window,
                )

        kwargs: dict[str, Any] = {
            "config": config,
            "dtype": dtype,
            "attn_implementation": choice.implementation,
        }
        if self._quantization != "none":
            kwargs["quantization_config"] = self._quantization_config(dtype, device)
        if device != "cpu":
            kwargs["device_map"] = {"": device}
        log.info("loading %s on %s (%s)...", self.model_id, device, self.dtype_name)
        began = time.perf_counter()
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_id)
        model = AutoModelForCausalLM.from_pretrained(self.model_id, **kwargs)
        model.eval()  # type: ignore[no-untyped-call]
        self._model = model
        log.info("loaded %s in %.1f s", self.model_id, time.perf_counter() - began)

    def _quantization_config(self, dtype: torch.dtype, device: str) -> Any:
        if device == "cpu":
            raise EngineError(f"QUANTIZATION={self._quantization} needs a CUDA GPU")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise EngineUnavailable(
                f"QUANTIZATION={self._quantization} needs bitsandbytes: "
                "pip install 'synatra-bot[quant]' (or pip install bitsandbytes)"
            ) from None
        from transformers import BitsAndBytesConfig

        if self._quantization == "8bit":
            return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
        return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4"
        )

    def _base_generation_config(self) -> Any:
        from transformers import GenerationConfig

        from synatra_bot.tokenizer import EOS_ID, STOP_IDS

        # Every request passes its own temperature/top-p/top-k; these values only make CB
        # create the per-request processors (it skips a processor whose default is neutral).
        return GenerationConfig(  # type: ignore[no-untyped-call]
            do_sample=True,
            temperature=0.8,
            top_p=0.95,
            top_k=40,
            max_new_tokens=300,
            eos_token_id=list(STOP_IDS),
            pad_token_id=EOS_ID,
        )

    def _init_continuous_batching(self) -> Any:
        from transformers import ContinuousBatchingConfig

        schedulers = cb_adapter.scheduler_names()
        if self._scheduler not in schedulers:
            raise EngineError(
                f"scheduler must be one of {', '.join(schedulers)}, got {self._scheduler!r}"
            )
        on_cpu = self.device == "cpu"
        cpu_blocks = CPU_DEFAULT_CACHE_TOKENS // (self._page_size or DEFAULT_PAGE_SIZE)
        requested: dict[str, Any] = {
            "num_blocks": self._num_blocks or (cpu_blocks if on_cpu else None),
            "max_batch_tokens": self._max_batch_tokens
            or (CPU_DEFAULT_MAX_BATCH_TOKENS if on_cpu else None),
            "page_size": self._page_size,
            "max_memory_percent": self._max_memory_percent,
            "use_cuda_graph": self._use_cuda_graph,
            "use_async_batching": self._use_async_batching,
            "default_compile_level": self._compile_level,
            "scheduler_type": self._scheduler,
            "allow_block_sharing": self._allow_block_sharing,
        }
        self._cb_requested = requested
        options: dict[str, Any] = {
            "per_request_processors": True,
            # The engine picked the attention (resolve_attention); generate() on the
            # single-stream lane runs the same one.
            "auto_switch_to_flash": False,
            "seed": self._seed,
            # None leaves the choice to transformers; page_size has a number as its default.
            **{k: v for k, v in requested.items() if not (k == "page_size" and v is None)},
        }
        model: Any = self.model
        manager = model.init_continuous_batching(
            generation_config=self._base_generation_config(),
            continuous_batching_config=ContinuousBatchingConfig(**options),
        )
        choice = self.attention_choice
        in_use = cb_adapter.attention_of(model)
        if in_use == choice.implementation:
            log.info("attention: %s (%s)", in_use, choice.reason)
        else:
            log.info(
                "attention: %s (%s; asked for %s)", in_use, choice.reason, choice.implementation
            )
        if not on_cpu:
            log.info("warming up continuous batching...")
            manager.warmup()
        return manager

    async def close(self) -> None:
        self._closing = True
        self._stopping.set()
        for request in list(self._requests.values()):
            request.cancel_event.set()
            request.queue.put_nowait(_Closed("the engine is shutting down"))
        manager = await asyncio.to_thread(self._take_manager)
        if manager is not None:
            await asyncio.to_thread(self._retire, manager)
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            await asyncio.to_thread(supervisor.join)
        self._recovering, self._failures = False, 0
        lane, self._single_lane = self._single_lane, None
        if lane is not None:
            await asyncio.to_thread(lane.shutdown, wait=True, cancel_futures=True)
        batched, self._batched_lane = self._batched_lane, None
        if batched is not None:
            await asyncio.to_thread(batched.close)

    # ------------------------------------------------------------------ requests

    def _prompt_ids(self, prompt: Sequence[int] | str) -> list[int]:
        if isinstance(prompt, str):
            # Text prompts: BOS is prepended and ChatML markers are parsed as special tokens.
            return list(self.tokenizer.encode(prompt))
        return list(prompt)

    def _budget(self, prompt_len: int, max_new_tokens: int) -> int:
        if self._context_limit is None:
            return max_new_tokens
        room = self._context_limit - prompt_len
        if room <= 0:
            raise EngineError(
                f"prompt of {prompt_len} tokens does not fit the context of {self._context_limit}"
            )
        return min(max_new_tokens, room)

    def stream(
        self, prompt: Sequence[int] | str, params: SamplingParams, *, request_id: str
    ) -> AsyncIterator[str]:
        return self._stream(prompt, params, request_id=request_id, single=not params.batchable)

    def _lone_reply(self) -> bool:
        """Whether a batchable request takes the static-cache lane: it is on, and nothing
        else is being generated (checked and claimed with no await in between)."""
        return self._single_stream != "off" and not self._requests

    async def _stream(
        self, prompt: Sequence[int] | str, params: SamplingParams, *, request_id: str, single: bool
    ) -> AsyncIterator[str]:
        manager = self._manager
        if self._closing:
            raise EngineUnavailable("the engine is not running")
        if self._recovering or (manager is not None and not self._loop_alive(manager)):
            raise EngineUnavailable(
                "the generation loop is being rebuilt after a failure", key="engine.recovering"
            )
        if manager is None:
            raise EngineUnavailable("the engine is not running")
        if request_id in self._requests:
            raise EngineError(f"request id {request_id!r} is already running")
        ids = self._prompt_ids(prompt)
        max_new = self._budget(len(ids), params.max_new_tokens)
        single = single or self._lone_reply()
        request = _Request(queue=asyncio.Queue(), loop=asyncio.get_running_loop())
        self._requests[request_id] = request
        detokenizer = IncrementalDetokenizer(
            self.tokenizer, skip_ids=params.stop_ids, context=reply_so_far(self.tokenizer, ids)
        )
        stops = StopStringFilter(params.stop_strings)
        shown = ""
        completed = False
        try:
            if single:
                self._submit_single(request, ids, params, max_new)
            elif not self._submit_to_lane(request_id, request, ids, params, max_new):
                self._submit_batched(request_id, request, ids, params, max_new)
            while True:
                item = await request.queue.get()
                if isinstance(item, _Closed):
                    raise GenerationInterrupted(item.reason, partial_text=shown)
                if isinstance(item, _Failed):
                    raise GenerationInterrupted(
                        f"generation failed: {item.reason}",
                        partial_text=shown,
                        key="engine.model_failed",
                    )
                finished = item is _END
                if not finished:
                    new_ids, finished, error = item
                    if error:
                        raise GenerationInterrupted(
                            f"generation failed: {error}",
                            partial_text=shown,
                            key="engine.model_failed",
                        )
                    request.started = True
                    if new_ids and request.manager is not None:
                        self._loop_works(request.manager)
                    elif new_ids and request.batched_lane:
                        self._lane_works()
                    self._meter.add(len(new_ids))
                    text = stops.feed(detokenizer.add(new_ids))
                else:
                    text = ""
                if finished:
                    text += stops.feed(detokenizer.flush()) + stops.flush()
                if text:
                    shown += text
                    yield text
                if finished or stops.stopped:
                    completed = True
                    return
        finally:
            request.cancel_event.set()
            self._requests.pop(request_id, None)
            if not single:
                self._forget_batched(request, request_id, cancel=not completed or stops.stopped)

    @staticmethod
    def _loop_alive(manager: Any) -> bool:
        """Whether `manager`'s generation loop runs and has not failed (it may take a moment
        to exit after a failure)."""
        return bool(manager.is_running()) and cb_adapter.fatal_error(manager) is None

    def _loop_works(self, manager: Any) -> None:
        """A step of `manager`'s loop produced tokens: if it is the current one, the failures
        in a row are over."""
        if self._failures and manager is self._manager and not self._recovering:
            log.info("the rebuilt generation loop works (after %d failures)", self._failures)
            self._failures = 0

    def _submit_to_lane(
        self,
        request_id: str,
        request: _Request,
        ids: list[int],
        params: SamplingParams,
        max_new: int,
    ) -> bool:
        """Give the request to the batched static-cache lane if it has a free row."""
        from synatra_bot.engine.batched_lane import LaneJob

        lane = self._batched_lane
        if lane is None:
            return False

        def deliver(new_ids: list[int], finished: bool) -> None:
            # One call per step and reply, with only that step's token.
            request.deliver((new_ids, finished, None))

        job = LaneJob(
            request_id=request_id,
            prompt=ids,
            max_new_tokens=max_new,
            stop_ids=frozenset(params.stop_ids),
            temperature=float(params.temperature),
            top_k=int(params.top_k),
            top_p=float(min(max(params.top_p, 0.0), 1.0)),
            deliver=deliver,
            fail=lambda: request.deliver(_Failed("the batched lane's step failed")),
            cancelled=request.cancel_event,
        )
        request.batched_lane = lane.try_submit(job)
        return request.batched_lane

    def _lane_failed(self) -> None:
        """The batched lane's forward raised (it failed the replies it held): count it as a
        failure in a row, as a failed CB step is; the lane itself is ready again at once."""
        self._failed()
        log.error("the batched lane failed (failure %d in a row)", self._failures)

    def _lane_works(self) -> None:
        """A reply on the batched lane got tokens: the failures in a row are over, unless the
        CB loop is still being rebuilt."""
        if self._failures and not self._recovering:
            log.info("the batched lane works again (after %d failures)", self._failures)
            self._failures = 0

    def _submit_batched(
        self,
        request_id: str,
        request: _Request,
        ids: list[int],
        params: SamplingParams,
        max_new: int,
    ) -> None:
        seen = 0

        def on_output(output: Any) -> None:
            nonlocal seen
            tokens = output.generated_tokens
            new_ids, seen = tokens[seen:], len(tokens)
            request.queue.put_nowait((new_ids, output.is_finished(), output.error))

        manager = request.manager = self._manager
        manager.register_result_handler(request_id, on_output)
        top_k = params.top_k if params.top_k > 0 else self.model.config.vocab_size
        manager.add_request(
            ids,
            request_id=request_id,
            max_new_tokens=max_new,
            streaming=True,
            eos_token_id=list(params.stop_ids),
            temperature=float(max(params.temperature, MIN_TEMPERATURE)),
            top_p=float(min(max(params.top_p, 0.0), 1.0)),
            top_k=int(top_k),
        )

    def _forget_batched(self, request: _Request, request_id: str, *, cancel: bool) -> None:
        manager = request.manager
        if manager is None:
            return
        if cancel:
            manager.cancel_request(request_id)
        # A cancelled request gets no final output, so its handler would stay registered.
        cb_adapter.forget_result_handler(manager, request_id)

    def _submit_single(
        self, request: _Request, ids: list[int], params: SamplingParams, max_new: int
    ) -> None:
        lane = self._single_lane
        if lane is None:
            raise EngineUnavailable("the engine is not running")
        lane.submit(self._generate_single, request, ids, params, max_new)

    def _generate_single(
        self,
        request: _Request,
        ids: list[int],
        params: SamplingParams,
        max_new: int,
    ) -> None:
        """Runs on the single-stream lane thread: plain generate() with a streamer."""
        import torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        from synatra_bot.engine.samplers import TopKTopPWarper, sampler_processors
        from synatra_bot.tokenizer import EOS_ID

        if request.cancel_event.is_set():
            return
        # This thread's OpenMP pool takes the process's torch thread count (see BatchedLane).
        torch.set_num_threads(torch.get_num_threads())
        deliver = request.deliver

        class Streamer(BaseStreamer):
            prompt_seen = False

            def put(self, value: torch.Tensor) -> None:
                if not self.prompt_seen:  # generate() first pushes the prompt
                    self.prompt_seen = True
                    return
                deliver((value.reshape(-1).tolist(), False, None))

            def end(self) -> None:
                deliver(_END)

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> Any:
                return torch.full(
                    (input_ids.shape[0],), request.cancel_event.is_set(), device=input_ids.device
                )

        sample = params.temperature > 0
        # Temperature, top-k and top-p are applied by TopKTopPWarper (no sort of the whole
        # vocabulary), so generate()'s own three are turned off (1.0, 0, 1.0).
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            do_sample=sample,
            temperature=1.0 if sample else None,
            top_p=1.0 if sample else None,
            top_k=0 if sample else None,
            min_p=params.min_p if sample and params.min_p > 0.0 else None,
            repetition_penalty=params.repetition_penalty,
            max_new_tokens=max_new,
            eos_token_id=list(params.stop_ids),
            pad_token_id=EOS_ID,
            **self._static_cache_options(),
        )
        manager = self._manager
        paged_only = cb_adapter.attention_of(self.model).startswith("paged")
        pause: AbstractContextManager[Any] = (
            manager.pause() if paged_only and manager is not None else nullcontext()
        )
        model: Any = self.model
        try:
            input_ids = torch.tensor([ids], device=model.device)
            processors = sampler_processors(params, self.tokenizer)
            if sample:
                processors.append(
                    TopKTopPWarper(
                        temperature=params.temperature, top_k=params.top_k, top_p=params.top_p
                    )
                )
            with torch.inference_mode(), pause:
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=config,
                    logits_processor=processors,
                    streamer=Streamer(),
                    stopping_criteria=StoppingCriteriaList([Cancelled()]),
                )
        except Exception:
            log.exception("single-stream generation failed")
            deliver(_Failed("single-stream generation failed"))

    def _static_cache_options(self) -> dict[str, Any]:
        """generate()'s options for the lane: with the static-cache lane on, one cache shape
        for every reply (the whole context), compiled where `"static-compile"` asks for it."""
        if self._single_stream == "off":
            return {}
        options: dict[str, Any] = {
            "cache_implementation": "static",
            "max_cache_len": self._context_limit,
            "disable_compile": self._single_stream != "static-compile",
        }
        if self._single_stream == "static-compile":
            if self.model.device.type == "cpu":
                options["compile_config"] = cb_adapter.compile_on_any_device()
            if not self._compile_announced:
                self._compile_announced = True
                log.info("compiling the single-stream decode step (the first lone reply waits)")
        return options

    async def cancel(self, request_id: str) -> None:
        request = self._requests.get(request_id)
        if request is None:
            return
        request.cancel_event.set()
        request.queue.put_nowait(_Closed("request cancelled"))
        if request.manager is not None:
            request.manager.cancel_request(request_id)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def health(self) -> EngineHealth:
        running = sum(1 for r in self._requests.values() if r.started)
        queued = len(self._requests) - running
        manager = self._manager
        # Between the loop's failure and the supervisor taking it up it is recovering too.
        recovering = self._recovering or (
            manager is not None and not self._closing and not self._loop_alive(manager)
        )
        reason = ""
        if recovering:
            reason = "the generation loop failed"
            if self._recovering:
                times = "once" if self._failures == 1 else f"{self._failures} times in a row"
                reason += f" {times}; rebuilding it after {self._next_rebuild_s:g} s"
            ok, detail = False, f"{self.model_id}: recovering, {reason}"
        elif manager is None:
            ok, detail = False, "not started"
        else:
            sharing = "on" if self.prefix_sharing else "off"
            ok = True
            detail = (
                f"{self.model_id} on {self.device} ({self.dtype_name}, "
                f"{self._quantization}, {self.attention} attention, prefix sharing {sharing})"
            )
        return EngineHealth(
            ok=ok,
            detail=detail,
            queued=queued,
            running=running,
            tokens_per_second=self._meter.rate(),
            failures=self._failures,
            recovering=recovering,
            reason=reason,
        )
