"""The OpenAI-compatible engine against llama.cpp's own `llama-server` on loopback.

The tiny test model is converted to GGUF with llama.cpp's converter; the server is built from
source by `python -m tests.llama_cpp build` (the README's test command runs it first).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from synatra_bot.engine.base import SamplingParams
from synatra_bot.engine.factory import build_engine
from synatra_bot.engine.openai_compat import OpenAICompatEngine
from synatra_bot.errors import GenerationInterrupted
from synatra_bot.prompt.builder import HistoryMessage, PromptBuilder, PromptOptions
from synatra_bot.prompt.cards import CharacterCard
from synatra_bot.settings import Settings
from synatra_bot.tokenizer import ids_to_server_text
from tests import llama_cpp
from tests.engine_helpers import free_port, running_process
from tests.hostile_corpus import CORPUS, special_ids

pytestmark = pytest.mark.slow

#: The name the server serves the model by, unlike the tokenizer's MODEL_ID (a folder here).
ALIAS = "synatra-tiny-gguf"
HAEUN = CharacterCard(name="하은", description="{{char}}는 바닷가 마을의 카페 주인이다.")
GREETINGS = (
    "안녕하세요! 오늘 기분 어때?",
    "하은아, 같이 바다 보러 갈래? 노을이 예쁘대.",
    "*문을 열고 들어오며* 아메리카노 한 잔 주세요.",
)


@pytest.fixture(scope="module")
def gguf_path(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not llama_cpp.is_built():
        pytest.fail(f"llama.cpp's server is not built: {llama_cpp.BUILD_HELP}")
    out = tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf"
    subprocess.run(
        [
            *(sys.executable, str(llama_cpp.converter()), str(tiny_model_dir)),
            *("--outfile", str(out), "--outtype", "f32"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


@pytest.fixture(scope="module")
def llama_url(gguf_path: Path, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        str(llama_cpp.server_binary()),
        *("-m", str(gguf_path), "--alias", ALIAS),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--ctx-size", "4096", "--parallel", "2", "--threads", "2", "--metrics"),
    ]
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with running_process(args, f"{url}/health", log):
        yield url


@pytest.fixture(scope="module")
def builder(tokenizer) -> PromptBuilder:
    return PromptBuilder(tokenizer)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def last_task(url: str) -> dict[str, Any]:
    """The slot that ran the server's latest request, as `/slots` reports it."""
    slots = [slot for slot in get_json(f"{url}/slots") if "params" in slot]
    return max(slots, key=lambda slot: slot["id_task"])


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"llamacpp:{name} "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def prompt_tokens_read(url: str) -> float:
    """Prompt tokens the server has read so far, computed or found in its cache."""
    return metric(url, "prompt_tokens_total") + metric(url, "prompt_tokens_cached_total")


def engine_for(url: str, tokenizer, **kwargs: Any) -> OpenAICompatEngine:
    kwargs.setdefault("model", ALIAS)
    return OpenAICompatEngine(url, tokenizer=tokenizer, send_token_ids=True, **kwargs)


def prompt_ids(builder: PromptBuilder, text: str) -> list[int]:
    history = [HistoryMessage("user", "준", text, message_id=1)]
    built = builder.build(card=HAEUN, history=history, user_name="준", options=PromptOptions())
    return list(built.input_ids)


async def reply(engine: OpenAICompatEngine, ids: list[int], request_id: str = "r", **params):
    """The whole reply; seeded unless told otherwise, so every run samples the same tokens."""
    params.setdefault("seed", 7)
    deltas = engine.stream(ids, SamplingParams(**params), request_id=request_id)
    return "".join([delta async for delta in deltas])


def test_the_gguf_reads_the_bots_ids_as_the_same_text(llama_url, builder, tokenizer) -> None:
    for text in (*GREETINGS, *CORPUS):
        ids = list(builder.encode_content(text))
        assert post_json(f"{llama_url}/detokenize", {"tokens": ids})["content"] == text
    for text in GREETINGS:
        body = {"content": text, "add_special": False, "parse_special": False}
        served = post_json(f"{llama_url}/tokenize", body)["tokens"]
        assert served == tokenizer.encode(text, add_special_tokens=False)


async def test_a_reply_is_what_transformers_writes_from_the_same_ids(
    llama_url, builder, tokenizer, tiny_model_dir
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    engine = engine_for(llama_url, tokenizer)
    await engine.start()
    try:
        for number, text in enumerate(GREETINGS):
            ids = prompt_ids(builder, text)
            before = prompt_tokens_read(llama_url)
            served = await reply(engine, ids, str(number), max_new_tokens=12, temperature=0.0)
            # The ids went as they are: ChatML ids and the BOS included, nothing added.
            assert prompt_tokens_read(llama_url) - before == len(ids)
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
            expected = tokenizer.decode(out[0][len(ids) :], skip_special_tokens=True)
            assert served.strip() == expected.strip()
    finally:
        await engine.close()


async def test_the_roleplay_samplers_reach_llama_cpp_by_its_own_names(
    llama_url, builder, tokenizer, caplog
) -> None:
    ids = prompt_ids(builder, GREETINGS[1])
    params = {
        "max_new_tokens": 8,
        "top_k": 30,
        "repetition_penalty": 1.15,
        "seed": 1234,
        "min_p": 0.1,
        "dry_multiplier": 0.8,
        "dry_base": 2.0,
        "dry_allowed_length": 3,
        "xtc_threshold": 0.2,
        "xtc_probability": 0.4,
    }
    engine = engine_for(llama_url, tokenizer, max_retries=0)
    await engine.start()
    try:
        with caplog.at_level(logging.WARNING, logger="synatra_bot.engine"):
            assert await reply(engine, ids, **params)
        used = last_task(llama_url)["params"]
        whole_context = len(ids) + params["max_new_tokens"]
        assert used["seed"] == 1234
        assert used["top_k"] == 30
        assert used["repeat_penalty"] == pytest.approx(1.15)
        assert used["repeat_last_n"] == whole_context
        assert used["min_p"] == pytest.approx(0.1)
        assert used["dry_multiplier"] == pytest.approx(0.8)
        assert used["dry_base"] == pytest.approx(2.0)
        assert used["dry_allowed_length"] == 3
        assert used["dry_penalty_last_n"] == whole_context
        assert used["xtc_threshold"] == pytest.approx(0.2)
        assert used["xtc_probability"] == pytest.approx(0.4)
        # Off means off: llama.cpp's own defaults (min-p 0.05, a 64-token penalty) stay out.
        assert await reply(engine, ids, "꺼짐", max_new_tokens=4)
        used = last_task(llama_url)["params"]
        assert (used["min_p"], used["dry_multiplier"], used["xtc_probability"]) == (0, 0, 0)
        assert used["repeat_penalty"] == 1.0
        assert engine.health().refused == frozenset()
    finally:
        await engine.close()
    assert "does not accept" not in caplog.text


async def test_replies_back_to_back_need_no_retry(llama_url, builder, tokenizer, caplog) -> None:
    engine = engine_for(llama_url, tokenizer, max_retries=0)
    await engine.start()
    try:
        with caplog.at_level(logging.WARNING, logger="synatra_bot.engine"):
            for number in range(4):
                ids = prompt_ids(builder, GREETINGS[number % len(GREETINGS)])
                assert await reply(engine, ids, str(number), max_new_tokens=6)
    finally:
        await engine.close()
    assert caplog.text == ""


async def test_stop_ends_the_reply_on_the_server_too(llama_url, builder, tokenizer) -> None:
    engine = engine_for(llama_url, tokenizer)
    await engine.start()
    ids = prompt_ids(builder, GREETINGS[2])
    predicted = metric(llama_url, "tokens_predicted_total")
    try:
        params = SamplingParams(max_new_tokens=1500, seed=7)
        stream = engine.stream(ids, params, request_id="긴 답")
        shown = await anext(stream)
        await engine.cancel("긴 답")
        with pytest.raises(GenerationInterrupted) as caught:
            async for delta in stream:
                shown += delta
        assert caught.value.partial_text == shown
        # The server is free again: the next reply runs, and the stopped one did not go on.
        assert await reply(engine, ids, "다음", max_new_tokens=4)
    finally:
        await engine.close()
    assert metric(llama_url, "tokens_predicted_total") - predicted < 1500


async def test_engine_model_names_the_server_model_and_model_id_the_tokenizer(
    llama_url, tiny_model_dir, builder, tokenizer, caplog
) -> None:
    settings = Settings(
        engine="openai",
        engine_url=llama_url,
        model_id=str(tiny_model_dir),
        engine_model=ALIAS,
        engine_send_token_ids=True,
    )
    engine = build_engine(settings)
    await engine.start()
    try:
        with caplog.at_level(logging.WARNING, logger="synatra_bot.engine"):
            assert isinstance(engine, OpenAICompatEngine)
            assert engine.model == ALIAS
            assert engine.served_models == (ALIAS,)
            # The tokenizer came from MODEL_ID.
            words = "노을 지는 바닷가"
            assert engine.count_tokens(words) == len(
                tokenizer.encode(words, add_special_tokens=False)
            )
            assert await reply(engine, prompt_ids(builder, GREETINGS[0]), max_new_tokens=4)
        assert ALIAS in engine.health().detail
        assert caplog.text == ""
    finally:
        await engine.close()


async def test_a_model_name_the_server_does_not_list_is_named_at_start(
    llama_url, tiny_model_dir, caplog
) -> None:
    settings = Settings(engine="openai", engine_url=llama_url, model_id=str(tiny_model_dir))
    engine = build_engine(settings)
    with caplog.at_level(logging.WARNING, logger="synatra_bot.engine"):
        await engine.start()
    try:
        assert f"serves '{ALIAS}', not '{tiny_model_dir}'" in caplog.text
        assert "set ENGINE_MODEL" in caplog.text
        assert f"the server lists only {ALIAS}" in engine.health().detail
    finally:
        await engine.close()


async def test_the_chat_api_gets_the_bots_prompt_rendered_exactly(
    llama_url, builder, tokenizer, caplog
) -> None:
    ids = prompt_ids(builder, GREETINGS[1])
    speaker = [*ids, *tokenizer.encode("민지:", add_special_tokens=False)]
    by_ids = engine_for(llama_url, tokenizer)
    by_chat = OpenAICompatEngine(llama_url, model=ALIAS, tokenizer=tokenizer, api="chat")
    await by_ids.start()
    await by_chat.start()
    try:
        with caplog.at_level(logging.WARNING, logger="synatra_bot.engine"):
            # The open assistant block, and a group speaker's name the reply goes on from.
            for prompt in (ids, speaker):
                before = prompt_tokens_read(llama_url)
                chat = await reply(by_chat, prompt, "채팅", max_new_tokens=8, temperature=0.0)
                # The server's template rendered the bot's ChatML token for token.
                assert prompt_tokens_read(llama_url) - before == len(prompt)
                assert chat == await reply(by_ids, prompt, "ids", max_new_tokens=8, temperature=0.0)
                assert not chat.startswith("민지:")
    finally:
        await by_ids.close()
        await by_chat.close()
    assert caplog.text == ""


async def test_text_prompts_keep_forged_role_text_ordinary_on_llama_cpp(
    llama_url, builder, tokenizer
) -> None:
    """For servers given text (ENGINE_SEND_TOKEN_IDS=false): llama.cpp parses special-token
    text in a text prompt, so the rendered prompt must hold role tokens only where the bot
    put them, whatever the players typed."""
    history = [
        HistoryMessage("user", f"준{number}", attack, message_id=number + 1)
        for number, attack in enumerate(CORPUS)
    ]
    built = builder.build(card=HAEUN, history=history, user_name="준0", options=PromptOptions())
    ids = list(built.input_ids)
    text = ids_to_server_text(tokenizer, ids[1:])  # the server adds its own BOS to text
    body = {"content": text, "add_special": True, "parse_special": True}
    served = post_json(f"{llama_url}/tokenize", body)["tokens"]
    assert special_ids(served) == special_ids(ids)
    # And the reply streams from that text.
    engine = OpenAICompatEngine(llama_url, model=ALIAS, tokenizer=tokenizer)
    await engine.start()
    try:
        assert await reply(engine, ids, max_new_tokens=4)
    finally:
        await engine.close()
