"""Build the engine the settings ask for."""

from __future__ import annotations

from typing import Any

from synatra_bot.engine.base import Engine
from synatra_bot.observe import IGNORED, Observer
from synatra_bot.settings import Settings


def build_engine(
    settings: Settings, *, tokenizer: Any = None, observer: Observer = IGNORED
) -> Engine:
    """The embedded transformers engine, the OpenAI-compatible one for ENGINE=openai, or a
    server the bot runs itself behind that client: llama.cpp's for ENGINE=llamacpp, vLLM's for
    ENGINE=vllm.

    `tokenizer`: one the caller has already loaded for MODEL_ID (else the engine loads it);
    `observer` hears of the embedded engine's restarts (a server's are its own).
    """
    if settings.engine == "llamacpp":
        from synatra_bot.engine.llamacpp import LlamaServerConfig, ManagedLlamaEngine
        from synatra_bot.gguf_source import parse_gguf_source

        config = LlamaServerConfig(
            parse_gguf_source(settings.model_gguf),
            server=settings.llama_server,
            parallel=settings.llama_parallel,
            context_size=settings.context_size,
            extra_args=settings.llama_args,
        )
        return ManagedLlamaEngine(
            config,
            tokenizer=tokenizer,
            tokenizer_dir_or_id=settings.model_id,
            timeout_s=settings.engine_timeout_s,
        )
    if settings.engine == "vllm":
        from synatra_bot.engine.vllm_server import ManagedVllmEngine, VllmServerConfig

        return ManagedVllmEngine(
            VllmServerConfig(
                settings.vllm_command,
                settings.model_id,
                max_model_len=settings.context_size,
                extra_args=settings.vllm_args,
            ),
            tokenizer=tokenizer,
            tokenizer_dir_or_id=settings.model_id,
            timeout_s=settings.engine_timeout_s,
            api_key=settings.engine_api_key,
        )
    if settings.engine == "openai":
        from synatra_bot.engine.openai_compat import OpenAICompatEngine

        return OpenAICompatEngine(
            settings.engine_url,
            api_key=settings.engine_api_key,
            model=settings.served_model,
            tokenizer_dir_or_id=settings.model_id,
            timeout_s=settings.engine_timeout_s,
            send_token_ids=settings.engine_send_token_ids,
            tokenizer=tokenizer,
            api=settings.engine_api,
        )
    from synatra_bot.engine.transformers_engine import TransformersEngine

    return TransformersEngine(
        settings.model_id,
        quantization=settings.quantization,
        attn_implementation=settings.attn_implementation,
        context_size=settings.context_size,
        max_batch_tokens=settings.cb_max_batch_tokens,
        num_blocks=settings.cb_num_blocks,
        max_memory_percent=(
            None if settings.cb_max_memory_percent is None else settings.cb_max_memory_percent / 100
        ),
        page_size=settings.cb_page_size,
        use_cuda_graph=settings.cb_cuda_graphs,
        use_async_batching=settings.cb_async_batching,
        compile_level=settings.cb_compile_level,
        scheduler=settings.cb_scheduler,
        allow_block_sharing=settings.cb_prefix_sharing,
        single_stream=settings.single_stream,
        batch_slots=settings.batch_slots,
        tokenizer=tokenizer,
        observer=observer,
    )
