"""A stand-in for vLLM's OpenAI-compatible server, for the ENGINE=vllm tests (vLLM itself needs
a GPU and its own torch): `python -m tests.vllm_stand_in serve MODEL --host ... --port ...`.

It takes `vllm serve`'s command line (the arguments the bot sets and a few a host might add;
anything else is refused with status 2, as vLLM's argument parser does), loads MODEL's tokenizer
as vLLM does, starts a helper process in its own process group as vLLM starts its engine core,
and serves what the bot uses, in vLLM's shapes:

- `GET /health`: 200 (never behind the API key, as in vLLM);
- `GET /v1/models`: the served model name;
- `POST /v1/completions`: a prompt of text or token ids, streamed as server-sent events with a
  finish reason and, when asked (`stream_options.include_usage`), a usage event. A model name
  it does not serve is 404, a prompt and `max_tokens` past `--max-model-len` is 400. The reply
  is the tests' scripted one (`tests.fault_helpers.long_when_asked`: long when the newest player
  line asks for "길게"), one chunk every `STAND_IN_DELAY_S` seconds (0.05).

The API key comes from `--api-key` or `VLLM_API_KEY`, as vLLM takes it; with one, `/v1` paths
answer 401 without `Authorization: Bearer <key>`. `GET /stand-in/state` (test-only) says how it
was started and what it was asked: its arguments, where its key came from, its helper's pid,
the request bodies and how many replies are streaming.

`install(folder)` lays out a vLLM venv around it: `bin/vllm`, and `bin/python` that runs
`-m vllm.entrypoints.cli.main` as this stand-in.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vllm")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("model_tag")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", nargs="+", default=None)
    serve.add_argument("--max-model-len", type=int, default=32768)
    serve.add_argument("--api-key", default=None)
    serve.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    serve.add_argument("--dtype", default="auto")
    serve.add_argument("--enforce-eager", action="store_true")
    return parser.parse_args(argv)


def error(status: int, message: str, kind: str) -> Any:
    from aiohttp import web

    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.json_response(body, status=status)


def serve(args: argparse.Namespace, argv: list[str]) -> None:
    from aiohttp import web

    from synatra_bot.engine.base import SamplingParams
    from synatra_bot.engine.scripted import ScriptedEngine, split_chunks
    from synatra_bot.errors import GenerationInterrupted
    from synatra_bot.tokenizer import load_tokenizer
    from tests.fault_helpers import long_when_asked

    names = args.served_model_name or [args.model_tag]
    key = args.api_key or os.environ.get("VLLM_API_KEY") or ""
    key_from = "--api-key" if args.api_key else "VLLM_API_KEY" if key else ""
    print(f"INFO non-default args: {json.dumps(argv, ensure_ascii=False)}", flush=True)
    tokenizer = load_tokenizer(args.model_tag)
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(86400)"])
    print(f"INFO engine core started (pid {helper.pid})", flush=True)
    delay_s = float(os.environ.get("STAND_IN_DELAY_S", "0.05"))
    engine = ScriptedEngine(long_when_asked, delay_s=delay_s, tokenizer=tokenizer)
    bodies: list[dict[str, Any]] = []
    counter = iter(range(1, 1 << 62))

    @web.middleware
    async def authorise(request: web.Request, handler: Any) -> Any:
        authorised = request.headers.get("Authorization") == f"Bearer {key}"
        if key and request.path.startswith("/v1") and not authorised:
            return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(request: web.Request) -> web.Response:
        data = [
            {"id": name, "object": "model", "owned_by": "vllm", "max_model_len": args.max_model_len}
            for name in names
        ]
        return web.json_response({"object": "list", "data": data})

    def event(payload: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        bodies.append(body)
        if body.get("model") not in names:
            return error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        prompt = body["prompt"]
        ids = prompt if isinstance(prompt, list) else tokenizer.encode(prompt)
        max_tokens = int(body.get("max_tokens") or 16)
        if len(ids) + max_tokens > args.max_model_len:
            return error(
                400,
                f"This model's maximum context length is {args.max_model_len} tokens. However, "
                f"you requested {len(ids) + max_tokens} tokens ({len(ids)} in the messages, "
                f"{max_tokens} in the completion).",
                "BadRequestError",
            )
        scripted = len(split_chunks(long_when_asked(str(tokenizer.decode(ids)))))
        reply_id = f"cmpl-{next(counter)}"
        params = SamplingParams(max_new_tokens=max_tokens, stop_strings=tuple(body["stop"]))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": reply_id, "object": "text_completion", "created": int(time.time())}
        base["model"] = body["model"]
        sent = 0
        try:
            async for text in engine.stream(prompt, params, request_id=reply_id):
                sent += 1
                choice = {"index": 0, "text": text, "finish_reason": None, "stop_reason": None}
                await response.write(event({**base, "choices": [choice]}))
        except (ConnectionError, GenerationInterrupted):
            await engine.cancel(reply_id)
            return response
        finish = "length" if scripted > max_tokens else "stop"
        choice = {"index": 0, "text": "", "finish_reason": finish, "stop_reason": None}
        await response.write(event({**base, "choices": [choice]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": len(ids), "completion_tokens": sent}
            usage["total_tokens"] = len(ids) + sent
            await response.write(event({**base, "choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        return response

    async def state(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "argv": argv,
                "key_from": key_from,
                "helper_pid": helper.pid,
                "bodies": bodies,
                "running": len(engine.running),
            }
        )

    async def started(app: web.Application) -> None:
        await engine.start()
        print(f"INFO Starting vLLM API server on http://{args.host}:{args.port}", flush=True)

    app = web.Application(middlewares=[authorise])
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/stand-in/state", state)
    app.on_startup.append(started)
    try:
        web.run_app(
            app, host=args.host, port=args.port, print=None, handle_signals=True, shutdown_timeout=1
        )
    finally:
        helper.terminate()


def main(argv: list[str]) -> int:
    args = parse(argv)
    serve(args, argv)
    return 0


def install(folder: Path) -> tuple[Path, Path]:
    """A vLLM venv's layout in `folder` around the stand-in: its `bin/vllm` and `bin/python`."""
    site = folder / "site" / "vllm" / "entrypoints" / "cli"
    site.mkdir(parents=True, exist_ok=True)
    for package in (site.parents[1], site.parent, site):
        (package / "__init__.py").touch()
    (site / "main.py").write_text(
        "import sys\nfrom tests.vllm_stand_in import main\nsys.exit(main(sys.argv[1:]))\n",
        encoding="utf-8",
    )
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    path = f"{folder / 'site'}:{ROOT}"
    commands = {
        "vllm": f'exec "{sys.executable}" -m tests.vllm_stand_in "$@"',
        "python": f'exec "{sys.executable}" "$@"',
    }
    for name, line in commands.items():
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nPYTHONPATH="{path}" {line}\n', encoding="utf-8")
        script.chmod(0o755)
    return bin_dir / "vllm", bin_dir / "python"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
