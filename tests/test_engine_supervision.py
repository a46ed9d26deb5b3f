"""The supervision and the build of a server the bot runs itself, with stand-ins: a small real
HTTP server process that dies when told, and build steps that print what CMake prints."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from pathlib import Path

import pytest

from synatra_bot.engine import llama_build
from synatra_bot.engine.supervisor import ServerProcess
from synatra_bot.errors import EngineError
from tests.llama_cpp import alive, gone

#: Serves GET /health with 200 for `LIVES` requests, then exits with status 3.
STAND_IN = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

port, lives = int(sys.argv[1]), int(sys.argv[2])

class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        global lives
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        lives -= 1
        if lives <= 0:
            print("error: 서버가 멈춥니다", flush=True)
            sys.stdout.flush()
            raise SystemExit(3)

    def log_message(self, *args):
        print("request", *args, flush=True)

print("listening", port, flush=True)
HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""
RESTARTING = re.compile(r"exited with status 3: .*; restarting in ([\d.]+) s")


def stand_in(tmp_path: Path, lives: int):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN, encoding="utf-8")
    return lambda port: [sys.executable, str(script), str(port), str(lives)]


async def test_a_server_that_keeps_dying_is_restarted_with_doubling_backoff(tmp_path, caplog):
    server = ServerProcess("stand-in", stand_in(tmp_path, lives=1), backoff_s=0.1)
    caplog.set_level(logging.INFO, logger="synatra_bot.engine.supervisor")
    await server.start()
    try:
        for _ in range(600):
            if len(RESTARTING.findall(caplog.text)) >= 4:
                break
            await server.wait_ready(30)
            await asyncio.sleep(0.05)
    finally:
        await server.stop()
    delays = [float(d) for d in RESTARTING.findall(caplog.text)][:4]
    assert delays == [0.1, 0.2, 0.4, 0.8]
    # Its own lines came through the bot's logger, errors as warnings (Korean intact).
    relayed = [r for r in caplog.records if r.name == "synatra_bot.engine.supervisor.stand-in"]
    assert any(
        r.levelno == logging.WARNING and "서버가 멈춥니다" in r.getMessage() for r in relayed
    )


async def test_stopping_ends_the_server_and_no_restart_follows(tmp_path, caplog):
    server = ServerProcess("stand-in", stand_in(tmp_path, lives=10**6), backoff_s=0.05)
    await server.start()
    pid = server.pid
    assert pid is not None and alive(pid)
    await server.stop()
    assert await gone(pid)
    assert server.restarts == 0
    assert "restarting" not in caplog.text
    with pytest.raises(EngineError):
        await server.wait_ready(1)


async def test_a_server_that_dies_while_loading_is_one_line_with_its_last_words(tmp_path):
    script = tmp_path / "dies.py"
    script.write_text("print('loading model'); print('error: 모델을 열 수 없어요'); exit(1)\n")
    server = ServerProcess("stand-in", lambda port: [sys.executable, str(script)])
    with pytest.raises(EngineError) as raised:
        await server.start()
    assert str(raised.value) == "stand-in exited with status 1: error: 모델을 열 수 없어요"


#: Prints a progress bar the way a download does (carriage returns, no newline, past 64 KiB),
#: then a line in Korean, then serves GET /health.
PROGRESS = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

for percent in range(1000):
    sys.stdout.write(f"\\rmodel.safetensors: {percent / 10:5.1f}% " + "#" * 80)
sys.stdout.write("\\n모델을 불러왔어요\\n")
sys.stdout.flush()

class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


async def test_a_progress_bar_without_newlines_is_relayed_and_never_blocks_the_start(
    tmp_path, caplog
):
    script = tmp_path / "progress.py"
    script.write_text(PROGRESS, encoding="utf-8")
    caplog.set_level(logging.DEBUG, logger="synatra_bot.engine.supervisor")
    server = ServerProcess("stand-in", lambda port: [sys.executable, str(script), str(port)])
    await server.start()
    await server.stop()
    relayed = [
        r.getMessage() for r in caplog.records if r.name == "synatra_bot.engine.supervisor.stand-in"
    ]
    assert "model.safetensors:  99.9% " + "#" * 80 in relayed
    assert "모델을 불러왔어요" in relayed


async def test_a_server_silent_past_the_start_timeout_is_given_up(tmp_path):
    script = tmp_path / "silent.py"
    script.write_text("import time\nprint('loading', flush=True)\ntime.sleep(600)\n")
    server = ServerProcess(
        "stand-in", lambda port: [sys.executable, str(script)], start_timeout_s=1
    )
    with pytest.raises(EngineError) as raised:
        await server.start()
    assert str(raised.value) == "stand-in did not become healthy and printed nothing for 1 s"
    assert server.pid is not None and await gone(server.pid)


async def test_a_server_that_logs_in_a_loop_without_serving_is_given_up_at_the_cap(
    tmp_path, caplog
):
    """Output keeps the silence timeout away, but not the cap on the whole start: a server
    whose engine dies and is started again inside it, forever, is given up all the same."""
    script = tmp_path / "crash_loop.py"
    script.write_text(
        "import time\n"
        "while True:\n"
        "    print('엔진이 죽었어요; 다시 시작합니다', flush=True)\n"
        "    time.sleep(0.01)\n",
        encoding="utf-8",
    )
    now = [0.0]
    caplog.set_level(logging.DEBUG, logger="synatra_bot.engine.supervisor")
    server = ServerProcess(
        "stand-in",
        lambda port: [sys.executable, str(script)],
        start_cap_s=5,
        clock=lambda: now[0],
    )
    starting = asyncio.create_task(server.start())
    relayed = "synatra_bot.engine.supervisor.stand-in"
    while sum(r.name == relayed for r in caplog.records) < 3:
        assert not starting.done()
        await asyncio.sleep(0.01)
    now[0] = 5.0
    with pytest.raises(EngineError) as raised:
        await asyncio.wait_for(starting, 60)
    assert str(raised.value) == (
        "stand-in did not become healthy within 5 s: 엔진이 죽었어요; 다시 시작합니다"
    )
    assert server.pid is not None and await gone(server.pid)


def test_the_release_build_is_native_and_uses_cuda_only_where_the_toolkit_is():
    cpu = llama_build.cmake_options("release", cuda=False)
    assert "-DCMAKE_BUILD_TYPE=Release" in cpu and "-DGGML_NATIVE=ON" in cpu
    assert "-DGGML_CUDA=ON" not in cpu
    assert "-DGGML_CUDA=ON" in llama_build.cmake_options("release", cuda=True)
    test = llama_build.cmake_options("test", cuda=True)
    assert "-DGGML_NATIVE=OFF" in test and "-DGGML_CUDA=ON" not in test


def test_the_two_builds_are_cached_apart(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SYNATRA_LLAMA_CPP_DIR", raising=False)
    release, test = llama_build.build_for("release"), llama_build.build_for("test")
    assert release.root != test.root
    assert release.server == release.root / "bin" / "llama-server"
    assert not release.is_built()


def test_a_build_without_cmake_is_one_line_saying_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no cmake, no compiler
    with pytest.raises(EngineError) as raised:
        llama_build.build("release", progress=lambda _line: None)
    assert "cmake" in str(raised.value) and "LLAMA_SERVER" in str(raised.value)


def test_compilation_progress_is_reported_every_tenth(tmp_path):
    lines = "".join(f"[{p:3d}%] Building CXX object x{p}.o\\n" for p in (*range(0, 100, 3), 100))
    heard: list[str] = []
    llama_build._run(["printf", "%b", lines], heard.append, compiling=True)
    percents = [int(line.rsplit(" ", 1)[1].rstrip("%")) for line in heard]
    assert percents == [0, 12, 21, 30, 42, 51, 60, 72, 81, 90, 100]


def test_a_failed_build_step_is_one_line_with_its_last_words():
    with pytest.raises(EngineError) as raised:
        llama_build._run(["sh", "-c", "echo 컴파일 중; echo 'fatal: 헤더가 없어요'; exit 2"], print)
    assert str(raised.value) == "building llama.cpp failed in sh -c: fatal: 헤더가 없어요"


def test_a_cuda_toolkit_cmake_cannot_use_leaves_a_cpu_build(monkeypatch, tmp_path):
    """Where nvcc is installed but CMake refuses the CUDA configuration (no GPU to detect, say),
    the host still gets a CPU build, and is told so."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(llama_build.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(llama_build, "_download", lambda into: into / "sdist.tar.gz")
    monkeypatch.setattr(llama_build, "_unpack", lambda sdist, into: into / "llama.cpp")
    monkeypatch.setattr(llama_build, "_keep", lambda source, build_dir, kept: None)
    configured: list[list[str]] = []

    def run(command, progress, *, compiling=False):
        if command[1] == "-S":
            configured.append(command)
            if "-DGGML_CUDA=ON" in command:
                raise EngineError("building llama.cpp failed in cmake -S: CMake Error in ggml-cuda")

    monkeypatch.setattr(llama_build, "_run", run)
    heard: list[str] = []
    llama_build.build("release", progress=heard.append)
    assert ["-DGGML_CUDA=ON" in command for command in configured] == [True, False]
    assert any("no CUDA build" in line and "building for the CPU" in line for line in heard)
