"""ENGINE=vllm: the bot runs `vllm serve` from the host's vLLM venv, supervises it and stops it;
its settings refuse bad values in one line. vLLM itself needs a GPU and its own torch, so the
server here is the stand-in of tests/vllm_stand_in.py, started through a vLLM venv's layout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from synatra_bot.engine.base import SamplingParams
from synatra_bot.engine.factory import build_engine
from synatra_bot.engine.vllm_server import ManagedVllmEngine, VllmServerConfig, vllm_command
from synatra_bot.errors import ConfigError, EngineError, GenerationInterrupted
from synatra_bot.settings import settings_from_env
from synatra_bot.tokenizer import BOS_ID
from tests import vllm_stand_in
from tests.llama_cpp import alive, gone

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-vllm-test-key-5678"


@pytest.fixture(scope="module")
def vllm_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A vLLM venv's `bin/vllm` and `bin/python`, both running the stand-in."""
    return vllm_stand_in.install(tmp_path_factory.mktemp("vllm-venv"))


def env_with(**values: str) -> dict[str, str]:
    return {"DISCORD_TOKEN": "t0ken", "PATH": os.environ.get("PATH", ""), **values}


def managed(command: Path, model: Path, tokenizer, **config) -> ManagedVllmEngine:
    api_key = config.pop("api_key", "")
    return ManagedVllmEngine(
        VllmServerConfig(str(command), str(model), **config),
        tokenizer=tokenizer,
        backoff_s=0.2,
        api_key=api_key,
    )


def state(engine: ManagedVllmEngine) -> dict:
    assert engine.server is not None
    with urllib.request.urlopen(f"{engine.server.url}/stand-in/state", timeout=10) as answer:
        return dict(json.loads(answer.read()))


def ids_for(tokenizer, text: str) -> list[int]:
    """A ChatML prompt of real ids, the player's line last."""
    chatml = f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    return [BOS_ID, *tokenizer.encode(chatml, add_special_tokens=False)]


async def collect(engine: ManagedVllmEngine, prompt, request_id: str, **params) -> str:
    sampling = SamplingParams(**{"max_new_tokens": 40, **params})
    return "".join([d async for d in engine.stream(prompt, sampling, request_id=request_id)])


def test_vllm_is_named_by_its_command_and_further_arguments_are_split_like_a_shell(vllm_venv):
    vllm, python = vllm_venv
    settings = settings_from_env(
        env_with(
            ENGINE="vllm",
            VLLM_COMMAND=str(vllm),
            VLLM_ARGS="--gpu-memory-utilization 0.85 --dtype 'bfloat16'",
        )
    )
    assert (settings.engine, settings.vllm_command) == ("vllm", str(vllm))
    assert settings.vllm_args == ("--gpu-memory-utilization", "0.85", "--dtype", "bfloat16")
    # A bare name is looked up on PATH, as a shell would.
    on_path = env_with(ENGINE="vllm", VLLM_COMMAND="vllm", PATH=str(vllm.parent))
    assert settings_from_env(on_path).vllm_command == str(vllm)
    assert settings_from_env(env_with(ENGINE="vllm", VLLM_COMMAND=str(python))).vllm_command


@pytest.mark.parametrize(
    ("values", "setting", "words"),
    [
        ({}, "VLLM_COMMAND", "required"),
        ({"VLLM_COMMAND": "/없는/venv/bin/vllm"}, "VLLM_COMMAND", "not an executable file"),
        ({"VLLM_COMMAND": "{not_executable}"}, "VLLM_COMMAND", "not an executable file"),
        ({"VLLM_COMMAND": "{folder}"}, "VLLM_COMMAND", "not an executable file"),
        ({"VLLM_COMMAND": "없는-vllm"}, "VLLM_COMMAND", "not an executable file"),
        ({"VLLM_COMMAND": "{vllm}", "VLLM_ARGS": "--port 9000"}, "VLLM_ARGS", "--port"),
        ({"VLLM_COMMAND": "{vllm}", "VLLM_ARGS": "--api-key=x"}, "VLLM_ARGS", "ENGINE_API_KEY"),
        (
            {"VLLM_COMMAND": "{vllm}", "VLLM_ARGS": "--served-model-name x --max-model-len 9"},
            "VLLM_ARGS",
            "--max-model-len, --served-model-name are set by the bot",
        ),
        ({"VLLM_COMMAND": "{vllm}", "VLLM_ARGS": "'열린 따옴표"}, "VLLM_ARGS", "split"),
        (
            {"VLLM_COMMAND": "{vllm}", "ENGINE_URL": "http://127.0.0.1:8000"},
            "ENGINE_URL",
            "ENGINE=vllm the bot starts its own server",
        ),
    ],
)
def test_each_bad_vllm_setting_names_itself(tmp_path, vllm_venv, values, setting, words):
    not_executable = tmp_path / "vllm"
    not_executable.write_text("#!/bin/sh\n", encoding="utf-8")
    filled = {
        k: v.format(vllm=vllm_venv[0], not_executable=not_executable, folder=tmp_path)
        for k, v in values.items()
    }
    with pytest.raises(ConfigError) as raised:
        settings_from_env(env_with(ENGINE="vllm", **filled))
    assert raised.value.setting == setting
    assert words in raised.value.problem
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ("--max_model_len 9", "--max_model_len (that is --max-model-len) is set by the bot"),
        ("--api_key x", "--api_key (that is --api-key) is set by the bot"),
        ("--api-key=x", "--api-key is set by the bot"),
        ("--api-k x", "--api-k (that is --api-key) is set by the bot"),
        ("--max-model 9", "--max-model (that is --max-model-len) is set by the bot"),
        ("--served_model=x", "--served_model (that is --served-model-name) is set by the bot"),
        ("--ho 0.0.0.0 --po=1", "--ho (that is --host), --po (that is --port) are set by the bot"),
        ("--mod x", "--mod (that is --model) is set by the bot"),
        ("--m x", "--m (that is --max-model-len or --model) is set by the bot"),
    ],
)
def test_vllm_args_refuse_what_vllm_would_read_as_an_option_the_bot_sets(vllm_venv, args, problem):
    """vLLM reads `_` as `-`, `--name=value`, and any abbreviation of a long option."""
    with pytest.raises(ConfigError) as raised:
        settings_from_env(env_with(ENGINE="vllm", VLLM_COMMAND=str(vllm_venv[0]), VLLM_ARGS=args))
    assert raised.value.setting == "VLLM_ARGS"
    assert raised.value.problem == (f"{problem} (MODEL_ID, CONTEXT_SIZE, ENGINE_API_KEY)")


def test_vllm_args_that_only_begin_like_an_option_the_bot_sets_are_passed_on(vllm_venv):
    args = "--max-num-seqs 4 --model-impl vllm --api-server-count=1 --max_num_batched_tokens 8"
    settings = settings_from_env(
        env_with(ENGINE="vllm", VLLM_COMMAND=str(vllm_venv[0]), VLLM_ARGS=args)
    )
    assert settings.vllm_args == tuple(args.split())


def test_an_abbreviated_vllm_option_the_bot_sets_exits_2_with_one_line(tmp_path, vllm_venv):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "DISCORD_TOKEN": "x",
        "ENGINE": "vllm",
        "VLLM_COMMAND": str(vllm_venv[0]),
        "VLLM_ARGS": "--api-k 비밀",
    }
    result = subprocess.run(
        [sys.executable, "-m", "synatra_bot.cli", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "synatra-bot: VLLM_ARGS: --api-k (that is --api-key) is set by the bot "
        "(MODEL_ID, CONTEXT_SIZE, ENGINE_API_KEY)"
    ]


def test_a_vllm_command_that_is_not_there_exits_2_with_one_line(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "DISCORD_TOKEN": "x",
        "ENGINE": "vllm",
        "VLLM_COMMAND": "/opt/없는-vllm/bin/vllm",
    }
    result = subprocess.run(
        [sys.executable, "-m", "synatra_bot.cli", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "synatra-bot: VLLM_COMMAND: /opt/없는-vllm/bin/vllm is not an executable file "
        "(the vllm command, or the python, of vLLM's venv)"
    ]


def test_the_command_line_is_vllm_serve_on_loopback_with_the_bots_name_and_window():
    config = VllmServerConfig(
        "/opt/vllm/bin/vllm",
        "maywell/Synatra-7B-v0.3-RP",
        max_model_len=8192,
        extra_args=("--gpu-memory-utilization", "0.85"),
    )
    assert vllm_command(config, 41234) == [
        "/opt/vllm/bin/vllm",
        *("serve", "maywell/Synatra-7B-v0.3-RP"),
        *("--host", "127.0.0.1", "--port", "41234"),
        *("--served-model-name", "synatra"),
        *("--max-model-len", "8192"),
        *("--gpu-memory-utilization", "0.85"),
    ]
    # vLLM's python runs the module the `vllm` command runs.
    python = VllmServerConfig("/opt/vllm/bin/python3.12", "m")
    assert vllm_command(python, 1)[:5] == [
        "/opt/vllm/bin/python3.12",
        *("-m", "vllm.entrypoints.cli.main"),
        *("serve", "m"),
    ]


def test_the_factory_builds_the_managed_vllm_engine_from_settings(vllm_venv, tokenizer):
    settings = settings_from_env(
        env_with(ENGINE="vllm", VLLM_COMMAND=str(vllm_venv[0]), CONTEXT_SIZE="2048")
    )
    engine = build_engine(settings, tokenizer=tokenizer)
    assert isinstance(engine, ManagedVllmEngine)
    assert engine.health().state == "down"


async def test_the_bot_starts_vllm_and_replies_through_it_with_token_ids(
    vllm_venv, tokenizer_dir, tokenizer
):
    engine = managed(
        vllm_venv[0], tokenizer_dir, tokenizer, max_model_len=2048, extra_args=("--dtype", "half")
    )
    await engine.start()
    try:
        assert engine.server is not None and engine.server.url.startswith("http://127.0.0.1:")
        # The command line the server got: `vllm serve` with what the bot sets.
        assert state(engine)["argv"] == [
            *("serve", str(tokenizer_dir)),
            *("--host", "127.0.0.1", "--port", str(engine.server.port)),
            *("--served-model-name", "synatra", "--max-model-len", "2048"),
            *("--dtype", "half"),
        ]
        prompt = ids_for(tokenizer, "안녕! 오늘 뭐 할래?")
        assert await collect(engine, prompt, "1", seed=7, min_p=0.1) == "응, 잘 기억해 둘게."
        [body] = state(engine)["bodies"]
        # The prompt went as the bot's own ids, BOS and all, under the served name.
        assert body["prompt"] == prompt and body["model"] == "synatra"
        assert body["stream_options"] == {"include_usage": True}
        assert engine.health().state == "ok"
        assert engine._started().served_models == ("synatra",)
    finally:
        await engine.close()


async def test_the_api_key_reaches_vllm_in_its_environment_not_its_command_line(
    vllm_venv, tokenizer_dir, tokenizer
):
    engine = managed(vllm_venv[0], tokenizer_dir, tokenizer, api_key=SECRET)
    await engine.start()
    try:
        started = state(engine)
        assert started["key_from"] == "VLLM_API_KEY"
        assert SECRET not in " ".join(started["argv"])
        # The stand-in answers 401 without it, as vLLM does.
        assert await collect(engine, ids_for(tokenizer, "안녕"), "1") == "응, 잘 기억해 둘게."
        assert SECRET not in engine.health().detail
    finally:
        await engine.close()


async def test_a_vllm_api_key_in_the_bots_own_environment_does_not_lock_it_out(
    vllm_venv, tokenizer_dir, tokenizer, monkeypatch
):
    monkeypatch.setenv("VLLM_API_KEY", "sk-someone-elses")
    engine = managed(vllm_venv[0], tokenizer_dir, tokenizer)
    await engine.start()
    try:
        assert state(engine)["key_from"] == ""
        assert await collect(engine, ids_for(tokenizer, "안녕"), "1") == "응, 잘 기억해 둘게."
    finally:
        await engine.close()


async def test_vllms_python_runs_the_vllm_command_module(vllm_venv, tokenizer_dir, tokenizer):
    engine = managed(vllm_venv[1], tokenizer_dir, tokenizer)
    await engine.start()
    try:
        assert state(engine)["argv"][:2] == ["serve", str(tokenizer_dir)]
        assert await collect(engine, ids_for(tokenizer, "안녕"), "1") == "응, 잘 기억해 둘게."
    finally:
        await engine.close()


async def test_a_killed_vllm_cuts_the_reply_in_flight_is_restarted_and_serves_the_next(
    vllm_venv, tokenizer_dir, tokenizer, caplog
):
    caplog.set_level(logging.DEBUG, logger="synatra_bot.engine.supervisor")
    engine = managed(vllm_venv[0], tokenizer_dir, tokenizer)
    await engine.start()
    server = engine.server
    assert server is not None and server.pid is not None
    first_pid, first_helper = server.pid, state(engine)["helper_pid"]
    try:
        deltas = engine.stream(
            ids_for(tokenizer, "길게 이야기해 줘"),
            SamplingParams(max_new_tokens=300),
            request_id="긴",
        )
        with pytest.raises(GenerationInterrupted) as cut:
            async for _ in deltas:
                if alive(first_pid):
                    os.kill(first_pid, signal.SIGKILL)
        assert cut.value.key in {"engine.lost", "engine.ended_early"}
        # Its engine core went with it, and the next reply waits for it to be back.
        assert await gone(first_helper)
        text = await collect(engine, ids_for(tokenizer, "다시 해 볼까?"), "다음")
        assert text == "응, 잘 기억해 둘게."
        assert server.restarts == 1 and server.pid != first_pid
        await server.wait_ready(30)
        assert engine.health().state == "ok"
        second_pid, second_helper = server.pid, state(engine)["helper_pid"]
    finally:
        await engine.close()
    assert any(
        f"vllm exited with status -{signal.SIGKILL.value}" in r.getMessage()
        and "restarting" in r.getMessage()
        for r in caplog.records
    )
    # Its own lines came through the bot's logger.
    assert any(
        r.name == "synatra_bot.engine.supervisor.vllm" and "Starting vLLM API server" in r.message
        for r in caplog.records
    )
    assert second_pid is not None and await gone(second_pid) and await gone(second_helper)


async def test_while_vllm_restarts_health_says_so(vllm_venv, tokenizer_dir, tokenizer):
    engine = managed(vllm_venv[0], tokenizer_dir, tokenizer)
    await engine.start()
    server = engine.server
    assert server is not None and server.pid is not None
    try:
        os.kill(server.pid, signal.SIGKILL)
        for _ in range(600):
            if not server.ready:
                break
            await asyncio.sleep(0.01)
        health = engine.health()
        assert (health.state, health.reason) == ("recovering", "the vLLM server is restarting")
        await server.wait_ready(60)
        assert engine.health().state == "ok"
    finally:
        await engine.close()


async def test_a_vllm_that_cannot_start_is_one_line_with_its_last_words(
    vllm_venv, tokenizer_dir, tokenizer
):
    engine = managed(vllm_venv[0], tokenizer_dir, tokenizer, extra_args=("--no-such-option",))
    with pytest.raises(EngineError) as raised:
        await engine.start()
    message = str(raised.value)
    assert message.startswith("vllm exited with status 2: ")
    assert "\n" not in message and "--no-such-option" in message


async def test_vllm_and_its_engine_core_never_outlive_a_bot_killed_with_sigkill(
    vllm_venv, tokenizer_dir
):
    script = (
        "import asyncio, json, urllib.request\n"
        "from synatra_bot.engine.factory import build_engine\n"
        "from synatra_bot.settings import settings_from_env\n"
        "async def main():\n"
        "    settings = settings_from_env(dict(__import__('os').environ), require_token=False)\n"
        "    engine = build_engine(settings)\n"
        "    await engine.start()\n"
        "    url = engine.server.url + '/stand-in/state'\n"
        "    helper = json.loads(urllib.request.urlopen(url).read())['helper_pid']\n"
        "    print(engine.server.pid, helper, flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    env = {
        **os.environ,
        "ENGINE": "vllm",
        "VLLM_COMMAND": str(vllm_venv[0]),
        "MODEL_ID": str(tokenizer_dir),
        "HF_HUB_OFFLINE": "1",
    }
    bot = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    assert bot.stdout is not None
    try:
        line = await asyncio.wait_for(bot.stdout.readline(), 120)
        server_pid, helper_pid = (int(pid) for pid in line.split())
        assert alive(server_pid) and alive(helper_pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            bot.kill()
        await bot.wait()
    assert await gone(server_pid) and await gone(helper_pid)
