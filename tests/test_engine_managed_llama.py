"""ENGINE=llamacpp: the bot runs llama.cpp's own `llama-server` (the tests' build) with a tiny
GGUF made at test time, supervises it and stops it; its settings refuse bad values in one line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from synatra_bot.engine.base import SamplingParams
from synatra_bot.engine.factory import build_engine
from synatra_bot.engine.gguf import fetch_gguf
from synatra_bot.engine.gguf_convert import check_type
from synatra_bot.engine.llamacpp import LlamaServerConfig, ManagedLlamaEngine
from synatra_bot.errors import ConfigError, EngineError, GenerationInterrupted
from synatra_bot.gguf_source import GgufSource, parse_gguf_source
from synatra_bot.settings import settings_from_env
from tests import llama_cpp
from tests.bot_process import bot_env, spawn_bot
from tests.llama_cpp import alive, gone

ROOT = Path(__file__).resolve().parents[1]
#: Korean in, for a prompt of real ids.
LINE = "하은아, 같이 바다 보러 갈래? 노을이 예쁘대."


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    """A file that starts like a GGUF (enough for the settings' check)."""
    path = tmp_path / "모델.gguf"
    path.write_bytes(b"GGUF" + bytes(28))
    return path


def env_with(**values: str) -> dict[str, str]:
    return {"DISCORD_TOKEN": "t0ken", **values}


def test_naming_a_gguf_is_enough_to_run_on_llama_cpp(gguf_file):
    settings = settings_from_env(env_with(MODEL_GGUF=str(gguf_file)))
    assert settings.engine == "llamacpp"
    assert (settings.model_gguf, settings.llama_server, settings.llama_parallel) == (
        str(gguf_file),
        "",
        4,
    )
    # Without a GGUF the embedded engine stays the default.
    assert settings_from_env(env_with()).engine == "transformers"


def test_a_llama_server_on_path_is_found_by_name(gguf_file, tmp_path):
    server = tmp_path / "bin" / "llama-server"
    server.parent.mkdir()
    server.write_text("#!/bin/sh\n", encoding="utf-8")
    server.chmod(0o755)
    settings = settings_from_env(
        env_with(MODEL_GGUF=str(gguf_file), LLAMA_SERVER="llama-server", PATH=str(server.parent))
    )
    assert settings.llama_server == str(server)


def test_llama_args_are_split_like_a_shell_and_passed_on(gguf_file):
    settings = settings_from_env(
        env_with(MODEL_GGUF=str(gguf_file), LLAMA_ARGS="--threads 8 -ngl 99 --chat-template ''")
    )
    assert settings.llama_args == ("--threads", "8", "-ngl", "99", "--chat-template", "")


@pytest.mark.parametrize(
    ("values", "setting", "words"),
    [
        ({"ENGINE": "llamacpp"}, "MODEL_GGUF", "required"),
        ({"MODEL_GGUF": "모델.bin"}, "MODEL_GGUF", ".gguf"),
        ({"MODEL_GGUF": "/없는/모델.gguf"}, "MODEL_GGUF", "no such file"),
        ({"MODEL_GGUF": "누군가/저장소/모델.gguf"}, "MODEL_GGUF", "owner/repo/file.gguf"),
        ({"MODEL_GGUF": "{not_gguf}"}, "MODEL_GGUF", "not a GGUF"),
        ({"MODEL_GGUF": "{gguf}", "LLAMA_SERVER": "/없는/llama-server"}, "LLAMA_SERVER", "exec"),
        ({"MODEL_GGUF": "{gguf}", "LLAMA_ARGS": "--port 9000"}, "LLAMA_ARGS", "--port"),
        ({"MODEL_GGUF": "{gguf}", "LLAMA_ARGS": "--alias=x"}, "LLAMA_ARGS", "--alias"),
        ({"MODEL_GGUF": "{gguf}", "LLAMA_ARGS": "--ctx_size 9"}, "LLAMA_ARGS", "--ctx-size"),
        ({"MODEL_GGUF": "{gguf}", "LLAMA_ARGS": "--paral=2"}, "LLAMA_ARGS", "--parallel"),
        ({"MODEL_GGUF": "{gguf}", "LLAMA_ARGS": "-np=2"}, "LLAMA_ARGS", "-np is set"),
        ({"MODEL_GGUF": "{gguf}", "LLAMA_ARGS": "'열린 따옴표"}, "LLAMA_ARGS", "split"),
        ({"MODEL_GGUF": "{gguf}", "LLAMA_PARALLEL": "0"}, "LLAMA_PARALLEL", "between"),
        (
            {"MODEL_GGUF": "{gguf}", "ENGINE_URL": "http://127.0.0.1:8080"},
            "ENGINE_URL",
            "own server",
        ),
    ],
)
def test_each_bad_llama_cpp_setting_names_itself(tmp_path, gguf_file, values, setting, words):
    not_gguf = tmp_path / "가짜.gguf"
    not_gguf.write_text("안녕", encoding="utf-8")
    filled = {k: v.format(gguf=gguf_file, not_gguf=not_gguf) for k, v in values.items()}
    with pytest.raises(ConfigError) as raised:
        settings_from_env(env_with(**filled))
    assert raised.value.setting == setting
    assert words in raised.value.problem


def test_a_bad_gguf_setting_exits_2_with_one_line(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "DISCORD_TOKEN": "x",
        "MODEL_GGUF": str(tmp_path / "없는.gguf"),
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
        f"synatra-bot: MODEL_GGUF: no such file: {tmp_path / '없는.gguf'} "
        "(or give owner/repo/file.gguf)"
    ]


async def test_a_hub_gguf_that_cannot_be_downloaded_exits_2_with_one_line(
    discord_fake, tmp_path, tokenizer_dir
):
    """Past the login (the fake Discord answers), the GGUF's download fails: one line, 2."""
    env = {
        **bot_env(discord_fake, tmp_path / "bot.db", tokenizer_dir, tmp_path / "prompts.log"),
        "FAULT_ENGINE": "settings",
        "MODEL_GGUF": "nobody/nothing-here/시나트라.Q4_K_M.gguf",
        "HF_HOME": str(tmp_path / "hf"),
    }
    with (tmp_path / "bot.log").open("wb") as output:
        process = await spawn_bot(discord_fake, env, output)
        code = await asyncio.wait_for(process.wait(), timeout=120)
    printed = (tmp_path / "bot.log").read_text(encoding="utf-8")
    assert code == 2, printed
    assert "Traceback" not in printed
    last = printed.strip().splitlines()[-1]
    assert last.startswith(
        "synatra-bot: MODEL_GGUF: nobody/nothing-here/시나트라.Q4_K_M.gguf could not be downloaded"
    )


def test_a_hub_gguf_is_owner_repo_and_the_files_path():
    source = parse_gguf_source("TheBloke/Synatra-7B-v0.3-RP-GGUF/synatra-7b-v0.3-rp.Q4_K_M.gguf")
    assert source == GgufSource(
        "synatra-7b-v0.3-rp.Q4_K_M.gguf", "TheBloke/Synatra-7B-v0.3-RP-GGUF"
    )


def test_a_hub_gguf_without_the_hub_is_one_line_naming_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ConfigError) as raised:
        fetch_gguf(GgufSource("없는.gguf", "nobody/nothing"))
    assert raised.value.setting == "MODEL_GGUF"
    assert "cannot be reached" in raised.value.problem
    assert "\n" not in str(raised.value)


def test_a_hub_gguf_downloaded_once_is_found_in_the_hubs_cache_without_the_network(
    monkeypatch, tmp_path
):
    from huggingface_hub import constants

    # The hub cache's layout: the file in a snapshot, the branch naming that snapshot.
    repo = tmp_path / "models--TheBloke--Synatra-7B-v0.3-RP-GGUF"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "synatra.Q4_K_M.gguf").write_bytes(b"GGUF" + bytes(28))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    source = parse_gguf_source("TheBloke/Synatra-7B-v0.3-RP-GGUF/synatra.Q4_K_M.gguf")
    assert fetch_gguf(source) == snapshot / "synatra.Q4_K_M.gguf"


def test_quantisation_types_are_checked_and_spelled_as_llama_cpp_does():
    assert check_type("q4_k_m") == "Q4_K_M"
    assert check_type("F16") == "f16"
    with pytest.raises(ConfigError, match="--type"):
        check_type("Q1_X")


# With the real llama-server from here on.


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test model as an f32 GGUF, made by `synatra-bot gguf` with llama.cpp's tools."""
    if not llama_cpp.is_built():
        pytest.fail(f"llama.cpp is not built: {llama_cpp.BUILD_HELP}")
    return llama_cpp.make_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def managed(gguf: Path, tokenizer, **config) -> ManagedLlamaEngine:
    config.setdefault("parallel", 2)
    config.setdefault("extra_args", ("--threads", "2"))
    return ManagedLlamaEngine(
        LlamaServerConfig(GgufSource(str(gguf)), server=str(llama_cpp.server_binary()), **config),
        tokenizer=tokenizer,
        backoff_s=0.2,
    )


def ids_for(tokenizer, text: str) -> list[int]:
    return [1, *tokenizer.encode(text, add_special_tokens=False)]


@pytest.mark.slow
def test_the_converter_command_quantises_to_q4_k_m_by_default(tiny_model_dir, tmp_path):
    if not llama_cpp.is_built():
        pytest.fail(f"llama.cpp is not built: {llama_cpp.BUILD_HELP}")
    out = tmp_path / "작은.gguf"
    command = [sys.executable, "-m", "synatra_bot.cli", "gguf", "--model", str(tiny_model_dir)]
    command += ["--out", str(out), "--llama-cpp", str(llama_cpp.build_dir())]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert parse_gguf_source(str(out)) == GgufSource(str(out))
    assert not list(tmp_path.glob("*.tmp"))  # the 16-bit middle step is removed
    # llama.cpp's own reader: the file type is Q4_K_M (15 in llama.cpp's numbering).
    sys.path.insert(0, str(llama_cpp.converter().parent / "gguf-py"))
    try:
        from gguf import GGUFReader
    finally:
        sys.path.pop(0)
    field = GGUFReader(out).fields["general.file_type"]
    assert int(field.parts[field.data[0]][0]) == 15


@pytest.mark.slow
async def test_the_bot_starts_llama_server_and_replies_through_it(tiny_gguf, tokenizer):
    engine = managed(tiny_gguf, tokenizer)
    await engine.start()
    try:
        assert engine.server is not None and engine.server.url.startswith("http://127.0.0.1:")
        params = SamplingParams(max_new_tokens=8, seed=7, min_p=0.1, dry_multiplier=0.8)
        text = "".join(
            [d async for d in engine.stream(ids_for(tokenizer, LINE), params, request_id="1")]
        )
        assert text
        assert engine.health().state == "ok"
    finally:
        await engine.close()


@pytest.mark.slow
async def test_a_killed_server_cuts_the_reply_in_flight_is_restarted_and_serves_the_next(
    tiny_gguf, tokenizer, caplog
):
    engine = managed(tiny_gguf, tokenizer)
    await engine.start()
    server = engine.server
    assert server is not None and server.pid is not None
    first_pid = server.pid
    try:
        long = SamplingParams(max_new_tokens=3000, seed=3, temperature=1.0)
        deltas = engine.stream(ids_for(tokenizer, LINE), long, request_id="긴")
        caplog.set_level(logging.INFO)
        with pytest.raises(GenerationInterrupted) as cut:
            async for _ in deltas:
                if alive(first_pid):
                    os.kill(first_pid, signal.SIGKILL)
        assert cut.value.key in {"engine.lost", "engine.ended_early"}
        # The next reply waits for the server to be back, and goes through.
        short = SamplingParams(max_new_tokens=6, seed=7)
        text = "".join(
            [d async for d in engine.stream(ids_for(tokenizer, LINE), short, request_id="다음")]
        )
        assert text
        assert server.restarts == 1 and server.pid != first_pid
        assert any(
            f"exited with status -{signal.SIGKILL.value}" in r.getMessage()
            and "restarting" in r.getMessage()
            for r in caplog.records
        )
        # The reply may reach the new server before the supervisor's own health check has
        # seen it up; health says "ok" from then on.
        await server.wait_ready(30)
        assert engine.health().state == "ok"
        second_pid = server.pid
    finally:
        await engine.close()
    assert second_pid is not None and await gone(second_pid)


@pytest.mark.slow
async def test_a_server_that_cannot_start_is_one_line_with_its_last_words(tiny_gguf, tokenizer):
    engine = managed(tiny_gguf, tokenizer, extra_args=("--no-such-option",))
    with pytest.raises(EngineError) as raised:
        await engine.start()
    message = str(raised.value)
    assert message.startswith("llama-server exited with status")
    assert "\n" not in message
    assert "no-such-option" in message


@pytest.mark.slow
async def test_the_server_never_outlives_a_bot_killed_with_sigkill(tiny_gguf, tokenizer_dir):
    script = (
        "import asyncio, sys\n"
        "from synatra_bot.engine.factory import build_engine\n"
        "from synatra_bot.settings import settings_from_env\n"
        "async def main():\n"
        "    settings = settings_from_env(dict(__import__('os').environ), require_token=False)\n"
        "    engine = build_engine(settings)\n"
        "    await engine.start()\n"
        "    print(engine.server.pid, flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    env = {
        **os.environ,
        "MODEL_GGUF": str(tiny_gguf),
        "MODEL_ID": str(tokenizer_dir),
        "LLAMA_SERVER": str(llama_cpp.server_binary()),
        "LLAMA_PARALLEL": "1",
        "HF_HUB_OFFLINE": "1",
    }
    bot = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    assert bot.stdout is not None
    try:
        server_pid = int(await asyncio.wait_for(bot.stdout.readline(), 120))
        assert alive(server_pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            bot.kill()
        await bot.wait()
    assert await gone(server_pid)


def test_the_factory_builds_the_managed_engine_from_settings(gguf_file, tokenizer):
    settings = settings_from_env(env_with(MODEL_GGUF=str(gguf_file), LLAMA_PARALLEL="3"))
    engine = build_engine(settings, tokenizer=tokenizer)
    assert isinstance(engine, ManagedLlamaEngine)
    assert engine.health().state == "down"
