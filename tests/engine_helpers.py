"""Helpers for engine tests: free ports, a real `transformers serve` process, and a small real
aiohttp server process that misbehaves on purpose (for retries, 4xx and cut-off streams).

Run the fault server with `python -m tests.engine_helpers PORT`. Each scenario is a path prefix:
`http://127.0.0.1:PORT/<scenario>/v1/completions`; `GET /stats` returns requests per scenario.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

SECRET = "sk-test-very-secret-key-1234"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


@contextlib.contextmanager
def running_process(args: list[str], ready_url: str, log_path: Path) -> Iterator[None]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_http(ready_url, process)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.asynccontextmanager
async def loopback_app(path: str, handler: Callable[[Any], Awaitable[Any]]) -> AsyncIterator[str]:
    """An aiohttp app in this process answering POST `path` with `handler`, on a free loopback
    port; yields its base URL."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def sse_reply(request: Any, choices: Iterable[dict[str, Any]]) -> Any:
    """A streamed answer: one server-sent event per choice, then `[DONE]`."""
    import asyncio

    from aiohttp import web

    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for choice in choices:
        event = json.dumps({"choices": [{"index": 0, **choice}]}, ensure_ascii=False)
        await response.write(f"data: {event}\n\n".encode())
        await asyncio.sleep(0)
    await response.write(b"data: [DONE]\n\n")
    return response


async def sse_lines(request: Any, lines: Iterable[bytes]) -> Any:
    """A streamed answer written as given, byte for byte (for servers that break the format)."""
    import asyncio

    from aiohttp import web

    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for line in lines:
        await response.write(line)
        await asyncio.sleep(0)
    return response


def transformers_serve_args(model_dir: Path, port: int) -> list[str]:
    cli = Path(sys.executable).with_name("transformers")
    return [str(cli), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]


def fault_server_args(port: int) -> list[str]:
    return [sys.executable, "-m", "tests.engine_helpers", str(port)]


def _sse(text: str, finish_reason: str | None = None) -> bytes:
    choice = {"index": 0, "text": text, "finish_reason": finish_reason}
    return f"data: {json.dumps({'choices': [choice]}, ensure_ascii=False)}\n\n".encode()


def run_fault_server(port: int) -> None:
    import asyncio

    from aiohttp import web

    counts: dict[str, int] = {}
    bodies: dict[str, list[dict[str, object]]] = {}

    async def stream_reply(
        request: web.Request, parts: list[str], *, finish: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for part in parts:
            await response.write(_sse(part))
            await asyncio.sleep(0.01)
        if finish:
            await response.write(_sse("", "stop"))
            await response.write(b"data: [DONE]\n\n")
        return response

    async def completions(request: web.Request) -> web.StreamResponse:
        scenario = request.match_info["scenario"]
        count = counts[scenario] = counts.get(scenario, 0) + 1
        body = await request.json()
        bodies.setdefault(scenario, []).append(body)
        reply = ["안녕", "하세요", "! 반", "갑습니다"]
        if scenario == "flaky" and count <= 2:
            return web.Response(status=503, text="busy")
        if scenario == "ratelimit" and count <= 1:
            return web.Response(status=429, text="slow down", headers={"Retry-After": "0"})
        if scenario == "badrequest":
            return web.Response(status=400, text="max_tokens is too large for this model")
        if scenario == "auth":
            auth = request.headers.get("Authorization", "")
            return web.Response(status=401, text=f"invalid key {auth}")
        if scenario == "cut":
            response = await stream_reply(request, reply[:2], finish=False)
            request.transport.close()  # mid-reply, no finish reason
            return response
        if scenario == "slow":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for _ in range(600):
                await response.write(_sse("가"))
                await asyncio.sleep(0.05)
            return response
        if scenario == "stopstring":
            return await stream_reply(request, ["좋아요", "<|im_", "end|>", "무시"], finish=True)
        return await stream_reply(request, reply, finish=True)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"counts": counts, "bodies": bodies})

    app = web.Application()
    app.router.add_post("/{scenario}/v1/completions", completions)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=True)


if __name__ == "__main__":
    run_fault_server(int(sys.argv[1]))


async def wait_until(predicate, timeout_s: float = 10.0) -> None:
    """Poll `predicate` on the event loop until it holds (for state changed by other tasks)."""
    import asyncio

    deadline = time.monotonic() + timeout_s
    for _ in iter(int, 1):
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
