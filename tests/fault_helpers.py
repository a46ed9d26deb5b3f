"""Processes for the fault-injection tests (tests/test_faults.py).

- `python -m tests.fault_helpers engine PORT`: an OpenAI-compatible server whose behaviour is
  switched at run time with `POST /mode/<name>`: "ok" (a short reply), "flaky" (503 twice,
  then ok), "hang" (reads the request, never answers), "garbage" (200 with HTML instead of
  server-sent events). `GET /stats` returns the requests per mode.
- `python -m tests.fault_helpers bot API_BASE GATEWAY_URL`: the real bot through
  `synatra_bot.app.serve` (signal handling included) against a fake Discord running in the
  test process, with a slow ScriptedEngine. Settings come from the environment; the engine
  writes each prompt to $FAULT_PROMPT_LOG (separated by NUL) and answers long for "길게".
  With FAULT_SLOW_START=1 the engine's start never ends, as a model that takes long to load:
  it prints "engine: loading" when it begins, and "engine: closed" when it is closed.
  With FAULT_ENGINE=settings the bot starts as `synatra-bot run` does (its engine the one the
  settings name, ENGINE=llamacpp say, and its errors as the command line prints them).
- `python -m tests.fault_helpers writer DB_PATH BURSTS HOLD_S`: holds write transactions on a
  SQLite database in bursts (a table of its own), then prints how many rows it wrote.
- `python -m tests.fault_helpers lock DB_PATH`: takes SQLite's write lock, prints "locked",
  holds it until a line arrives on stdin, then commits and prints "released".
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from pathlib import Path

from synatra_bot.engine.scripted import ScriptedEngine

SHORT_REPLY = "응, 잘 기억해 둘게."
LONG_REPLY = "옛날 옛적에 작은 마을에 이야기꾼이 살았어. " * 12


def long_when_asked(prompt: str) -> str:
    """The long reply when the newest player line asks for "길게", else the short one."""
    blocks = [b.split("<|im_end|>", 1)[0].strip() for b in prompt.split("<|im_start|>")]
    user_blocks = [b for b in blocks if b.startswith("user")]
    lines = user_blocks[-1].splitlines() if user_blocks else []
    return LONG_REPLY if lines and "길게" in lines[-1] else SHORT_REPLY


def run_engine_server(port: int) -> None:
    import asyncio
    import json

    from aiohttp import web

    state = {"mode": "ok"}
    counts: dict[str, int] = {}

    def sse(text: str, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason}
        return f"data: {json.dumps({'choices': [choice]}, ensure_ascii=False)}\n\n".encode()

    async def completions(request: web.Request) -> web.StreamResponse:
        mode = state["mode"]
        count = counts[mode] = counts.get(mode, 0) + 1
        await request.read()
        if mode == "flaky" and count <= 2:
            return web.Response(status=503, text="busy")
        if mode == "hang":
            await asyncio.sleep(60)
        if mode == "garbage":
            return web.Response(text="<html><body>502 Bad Gateway</body></html>\n" * 5)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for part in ("다시 ", "연결됐", "어요!"):
            await response.write(sse(part))
        await response.write(sse("", "stop"))
        await response.write(b"data: [DONE]\n\n")
        return response

    async def set_mode(request: web.Request) -> web.Response:
        state["mode"] = request.match_info["mode"]
        return web.json_response(state)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"mode": state["mode"], "counts": counts})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/mode/{mode}", set_mode)
    app.router.add_get("/stats", stats)
    # A hanging handler must not hold up SIGTERM for aiohttp's default 60 s.
    web.run_app(
        app, host="127.0.0.1", port=port, print=None, handle_signals=True, shutdown_timeout=0.5
    )


def run_bot(api_base: str, gateway_url: str) -> int:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
        import discord.gateway
        import discord.http
    import yarl

    from synatra_bot import eventloop
    from synatra_bot.app import serve
    from synatra_bot.settings import configure_logging, settings_from_env
    from synatra_bot.tokenizer import load_tokenizer

    # The same two patches FakeDiscord.install makes in the test process.
    discord.http.Route.BASE = api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url + "/")
    prompt_log = Path(os.environ["FAULT_PROMPT_LOG"])

    def reply(prompt: str) -> str:
        with prompt_log.open("a", encoding="utf-8") as log:
            log.write(prompt + "\0")
        return long_when_asked(prompt)

    if os.environ.get("FAULT_ENGINE") == "settings":
        # The bot as `synatra-bot run` starts it, errors and all, only talking to the fake.
        from synatra_bot.cli import main as command_line

        return command_line(["run"])
    settings = settings_from_env(os.environ)
    configure_logging(settings)
    tokenizer = load_tokenizer(settings.model_id)
    delay_s = float(os.environ.get("FAULT_DELAY_S", "0.05"))
    kind = SlowStartEngine if os.environ.get("FAULT_SLOW_START") == "1" else ScriptedEngine
    engine = kind(reply, delay_s=delay_s, tokenizer=tokenizer)
    # The loop a deployed bot runs on (uvloop where installed), as `run_bot` chooses it.
    return eventloop.run(
        serve(settings, engine=engine, tokenizer=tokenizer), kind=settings.event_loop
    )


class SlowStartEngine(ScriptedEngine):
    """A scripted engine whose start waits until it is cancelled (a model still loading)."""

    async def start(self) -> None:
        print("engine: loading", flush=True)
        await asyncio.Event().wait()

    async def close(self) -> None:
        await super().close()
        print("engine: closed", flush=True)


def run_writer(db_path: str, bursts: int, hold_s: float) -> int:
    connection = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    connection.execute("PRAGMA busy_timeout=30000")
    connection.execute(
        "CREATE TABLE IF NOT EXISTS fault_writer (id INTEGER PRIMARY KEY, note TEXT)"
    )
    written = 0
    for burst in range(bursts):
        connection.execute("BEGIN IMMEDIATE")
        for row in range(20):
            connection.execute(
                "INSERT INTO fault_writer (note) VALUES (?)", (f"다른 프로세스 {burst}-{row}",)
            )
            written += 1
        time.sleep(hold_s)  # hold the write lock while the bot wants it
        connection.execute("COMMIT")
        time.sleep(hold_s / 2)
    connection.close()
    print(written, flush=True)
    return 0


def run_lock_holder(db_path: str) -> int:
    connection = sqlite3.connect(db_path, isolation_level=None)
    connection.execute("CREATE TABLE IF NOT EXISTS fault_lock (id INTEGER PRIMARY KEY)")
    connection.execute("BEGIN IMMEDIATE")
    connection.execute("INSERT INTO fault_lock DEFAULT VALUES")
    print("locked", flush=True)
    sys.stdin.readline()
    connection.execute("COMMIT")
    connection.close()
    print("released", flush=True)
    return 0


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "engine":
        run_engine_server(int(args[0]))
        return 0
    if command == "bot":
        return run_bot(args[0], args[1])
    if command == "writer":
        return run_writer(args[0], int(args[1]), float(args[2]))
    if command == "lock":
        return run_lock_holder(args[0])
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
