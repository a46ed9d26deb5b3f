"""The host's window on a running bot (METRICS_ADDR): `/healthz` says whether the bot can
serve, `/metrics` shows its numbers in Prometheus' format. Served by aiohttp on the bot's own
event loop; every answer is built from state the bot already holds plus one short query."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from synatra_bot.engine.base import Engine
from synatra_bot.errors import ConfigError
from synatra_bot.metrics import PrometheusMetrics
from synatra_bot.storage import repository as repo

log = logging.getLogger(__name__)

#: How long /healthz waits for the database before it calls it unhealthy.
DATABASE_TIMEOUT_S = 5.0
OK = "ok"


@dataclass(frozen=True, slots=True)
class Watched:
    """What the endpoints look at: the Discord client, the database's sessions, the engine."""

    bot: Any
    sessions: Any
    engine: Engine
    metrics: PrometheusMetrics


def gateway_state(bot: Any) -> str:
    """OK when the bot is logged in and every shard's gateway connection is open."""
    if bot.is_closed():
        return "closed"
    if not bot.is_ready():
        return "not connected yet"
    down = sorted(shard_id for shard_id, shard in bot.shards.items() if shard.is_closed())
    if down:
        return "shards " + ", ".join(map(str, down)) + " disconnected"
    return OK


async def database_state(sessions: Any) -> tuple[str, int | None]:
    """OK and the number of running scenes, or why the database did not answer."""
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_S):
            scenes = await repo.count_active_scenes(sessions)
    except TimeoutError:
        return f"no answer within {DATABASE_TIMEOUT_S:g} s", None
    except Exception as error:  # any failure is the answer: the endpoint must not fail
        return f"{type(error).__name__}: {error}", None
    return OK, scenes


def engine_state(engine: Engine) -> str:
    """OK while the engine serves; else its state and reason."""
    health = engine.health()
    if health.ok and not health.recovering:
        return OK
    reason = health.reason or health.detail
    return f"{health.state}: {reason}" if reason else health.state


async def healthz(watched: Watched) -> tuple[int, dict[str, Any]]:
    """200 and every check "ok", or 503 with each failing check's reason."""
    database, _ = await database_state(watched.sessions)
    checks = {
        "gateway": gateway_state(watched.bot),
        "database": database,
        "engine": engine_state(watched.engine),
    }
    healthy = all(state == OK for state in checks.values())
    return (200 if healthy else 503), {"status": OK if healthy else "unhealthy", "checks": checks}


def build_app(watched: Watched) -> web.Application:
    async def health_page(_request: web.Request) -> web.Response:
        status, body = await healthz(watched)
        return web.Response(
            status=status,
            text=json.dumps(body, ensure_ascii=False),
            content_type="application/json",
        )

    async def metrics_page(_request: web.Request) -> web.Response:
        _, scenes = await database_state(watched.sessions)
        body = watched.metrics.exposition(active_scenes=scenes)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", health_page)
    app.router.add_get("/metrics", metrics_page)
    return app


@contextlib.asynccontextmanager
async def serving(address: tuple[str, int], watched: Watched) -> AsyncIterator[web.AppRunner]:
    """Serve /healthz and /metrics on `address` until the block ends."""
    runner = web.AppRunner(build_app(watched), access_log=None, handle_signals=False)
    await runner.setup()
    host, port = address
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as error:
            raise ConfigError(
                "METRICS_ADDR", f"cannot listen on {host}:{port}: {error.strerror or error}"
            ) from None
        bound = runner.addresses[0]
        log.info("health and metrics on http://%s:%d (/healthz, /metrics)", bound[0], bound[1])
        yield runner
    finally:
        await runner.cleanup()
