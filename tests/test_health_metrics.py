"""/healthz and /metrics (METRICS_ADDR) on a bot that plays a scene through the real client
against the fake Discord."""

import asyncio
import logging
import re
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.errors import ConfigError
from synatra_bot.settings import settings_from_env
from tests.bot_harness import eventually

WEBHOOK_EDIT = "/webhooks/{webhook_id}/{token}/messages/{message_id}"
LISTENING = re.compile(r"health and metrics on (http://[\d.]+:\d+)")


def endpoint(caplog) -> str:
    """The address the bot listens on (METRICS_ADDR's port 0: any free one), from its log."""
    found = LISTENING.search(caplog.text)
    assert found, caplog.text
    return found.group(1)


async def scrape(base: str) -> dict[str, float]:
    """Every sample of /metrics, keyed `name{label="value",...}`."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def container_healthcheck(base: str) -> tuple[int, str]:
    """The container's HEALTHCHECK command (deploy/healthcheck.py) against the bot at `base`."""
    script = Path(__file__).resolve().parents[1] / "deploy" / "healthcheck.py"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env={"METRICS_ADDR": f"0.0.0.0:{base.rpartition(':')[2]}"},
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    return process.returncode, stderr.decode()


async def health(base: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as response:
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("127.0.0.1:9108", ("127.0.0.1", 9108)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:9108", ("::1", 9108)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_metrics_addr_is_a_host_and_port(raw, expected):
    settings = settings_from_env({"DISCORD_TOKEN": "t", "METRICS_ADDR": raw})
    assert settings.metrics_addr == expected


def test_metrics_are_off_unless_metrics_addr_is_set():
    assert settings_from_env({"DISCORD_TOKEN": "t"}).metrics_addr is None


@pytest.mark.parametrize(
    "raw", ["9108", "127.0.0.1", ":9108", "127.0.0.1:http", "a b:1", "h:70000"]
)
def test_a_bad_metrics_addr_names_the_setting(raw):
    with pytest.raises(ConfigError) as caught:
        settings_from_env({"DISCORD_TOKEN": "t", "METRICS_ADDR": raw})
    assert str(caught.value).startswith("METRICS_ADDR: ")


def test_a_bad_metrics_addr_stops_the_bot_with_one_line_and_exit_2(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DISCORD_TOKEN": "x" * 59,
        "METRICS_ADDR": "localhost",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "synatra_bot.cli"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "synatra-bot: METRICS_ADDR: must be host:port, e.g. 127.0.0.1:9108, got 'localhost'"
    ]


async def test_a_scene_moves_the_metrics_and_health_follows_the_engine(start_bot, caplog):
    caplog.set_level(logging.INFO, logger="synatra_bot.health")
    async with start_bot(env={"METRICS_ADDR": "127.0.0.1:0"}) as harness:
        base = endpoint(caplog)
        s = harness.scenario
        assert await health(base) == (
            200,
            {"status": "ok", "checks": {"gateway": "ok", "database": "ok", "engine": "ok"}},
        )
        assert await container_healthcheck(base) == (0, "")
        before = await scrape(base)
        assert before["synatra_active_scenes"] == 0
        assert before.get('synatra_replies_total{outcome="finished"}', 0) == 0

        character_id = await harness.character(s.moderator, "민지")
        await harness.start_roleplay(s.moderator, s.general, character_id)
        # Discord answers the reply's first streaming edit with 429: discord.py waits and edits
        # again, and only the metrics tell the host it happened.
        harness.fake.force_rate_limit("PATCH", WEBHOOK_EDIT, times=1, retry_after=0.01)
        # ... and a moment of outage on the next: discord.py sends it again after a 503.
        harness.fake.fail_requests("PATCH", WEBHOOK_EDIT, times=1, status=503)
        await harness.reply_to(s.general, s.members[0], "안녕? 오늘 날씨 좋다")

        async def finished():
            samples = await scrape(base)
            return samples if samples.get('synatra_replies_total{outcome="finished"}') else None

        after = await eventually(finished)
        assert after['synatra_replies_total{outcome="finished"}'] == 1
        assert after["synatra_first_token_seconds_count"] == 1
        assert after["synatra_inter_token_seconds_count"] >= 1
        assert after["synatra_generated_tokens_total"] > 0
        assert after["synatra_queue_wait_seconds_count"] == 1
        assert after["synatra_queue_depth"] == 0
        assert after["synatra_discord_rate_limited_total"] == 1
        assert after['synatra_discord_rest_errors_total{status="503"}'] == 1
        assert after["synatra_database_statement_seconds_count"] > before.get(
            "synatra_database_statement_seconds_count", 0
        )
        assert after["synatra_active_scenes"] == 1
        assert not any(k.startswith("synatra_engine_errors_total{") for k in after)

        # The engine stops serving: /healthz turns 503 and says why.
        await harness.engine.close()
        status, body = await health(base)
        assert status == 503
        assert body == {
            "status": "unhealthy",
            "checks": {"gateway": "ok", "database": "ok", "engine": "down: not started"},
        }
        code, said = await container_healthcheck(base)
        assert code == 1 and '"engine": "down: not started"' in said


async def test_a_failed_reply_counts_as_failed_and_as_an_engine_error(start_bot, caplog, tokenizer):
    caplog.set_level(logging.INFO, logger="synatra_bot.health")
    engine = ScriptedEngine("첫 마디를 하다가 멈춘다", fail_after=1, tokenizer=tokenizer)
    async with start_bot(engine=engine, env={"METRICS_ADDR": "127.0.0.1:0"}) as harness:
        base = endpoint(caplog)
        s = harness.scenario
        character_id = await harness.character(s.moderator, "민지")
        await harness.start_roleplay(s.moderator, s.general, character_id)
        await harness.fake.say(s.general, s.members[0], "안녕?")

        async def failed():
            samples = await scrape(base)
            return samples if samples.get('synatra_replies_total{outcome="failed"}') else None

        samples = await eventually(failed)
        assert samples['synatra_engine_errors_total{kind="GenerationInterrupted"}'] == 1
        assert samples.get('synatra_replies_total{outcome="finished"}', 0) == 0


async def test_a_taken_metrics_port_stops_the_start_naming_the_setting(start_bot):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^METRICS_ADDR: cannot listen on 127.0.0.1:{port}"):
            async with start_bot(env={"METRICS_ADDR": f"127.0.0.1:{port}"}):
                pass


def test_metrics_registries_are_per_bot():
    from synatra_bot.metrics import PrometheusMetrics

    first, second = PrometheusMetrics(), PrometheusMetrics()
    first.reply_ended("finished")
    assert b'synatra_replies_total{outcome="finished"} 1.0' in first.exposition(active_scenes=0)
    assert b"synatra_replies_total{" not in second.exposition(active_scenes=0)


async def test_failed_sql_statements_are_counted_by_error(tmp_path):
    from sqlalchemy import text

    from synatra_bot.metrics import PrometheusMetrics
    from synatra_bot.storage.database import create_engine, observe_statements

    metrics = PrometheusMetrics()
    database = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    observe_statements(database, metrics)
    try:
        async with database.connect() as connection:
            await connection.execute(text("SELECT 1"))
            with pytest.raises(Exception, match="no such table"):
                await connection.execute(text("SELECT * FROM 없는_표"))
    finally:
        await database.dispose()
    sample = metrics.registry.get_sample_value
    assert sample("synatra_database_errors_total", {"kind": "OperationalError"}) == 1
    assert sample("synatra_database_statement_seconds_count") >= 1


async def test_a_discord_request_that_gets_no_answer_counts_as_a_connection_error():
    from synatra_bot.discord.bot import rest_trace
    from synatra_bot.metrics import PrometheusMetrics

    metrics = PrometheusMetrics()
    async with aiohttp.ClientSession(trace_configs=[rest_trace(metrics)]) as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get("http://127.0.0.1:1/api/v10/gateway")
    sample = metrics.registry.get_sample_value
    assert sample("synatra_discord_rest_errors_total", {"status": "connection"}) == 1


async def test_health_says_when_the_gateway_is_down_and_recovers_with_it(start_bot, caplog):
    caplog.set_level(logging.INFO, logger="synatra_bot.health")
    async with start_bot(env={"METRICS_ADDR": "127.0.0.1:0"}) as harness:
        base = endpoint(caplog)
        harness.identify_at_once()

        async def gateway_state(expected_status):
            status, body = await health(base)
            return body["checks"]["gateway"] if status == expected_status else None

        async with harness.fake.gateway_outage():
            await harness.fake.invalidate_session()
            assert await eventually(lambda: gateway_state(503)) == "shards 0 disconnected"
        assert await eventually(lambda: gateway_state(200)) == "ok"
