"""The bot's metrics in Prometheus' format: an Observer that counts into a registry of its
own (one per bot, so two bots in one process, as in the tests, never share a number)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from synatra_bot.observe import Observer

#: Seconds: a first token within a fraction of a second on an idle GPU, tens of seconds behind
#: a long queue of 2k-token prompts.
FIRST_TOKEN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
#: Seconds between streamed pieces: ~30 ms at 30 tokens a second, more under load.
TOKEN_GAP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
DATABASE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class PrometheusMetrics(Observer):
    """Counters, gauges and histograms named `synatra_*`, in `registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.replies = Counter(
            "synatra_replies", "Player reply turns that ended, by outcome.", ["outcome"], registry=r
        )
        self.first_token_seconds = Histogram(
            "synatra_first_token_seconds",
            "Time from a reply's request to its first text.",
            buckets=FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.token_gap_seconds = Histogram(
            "synatra_inter_token_seconds",
            "Time between two streamed pieces of one reply.",
            buckets=TOKEN_GAP_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "synatra_generated_tokens", "Tokens the engine wrote for replies.", registry=r
        )
        self.queue_depth = Gauge(
            "synatra_queue_depth", "Player turns waiting for admission.", registry=r
        )
        self.queue_wait_seconds = Histogram(
            "synatra_queue_wait_seconds",
            "Time a turn waited for admission.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.engine_errors = Counter(
            "synatra_engine_errors",
            "Replies that failed on the engine's side.",
            ["kind"],
            registry=r,
        )
        self.engine_restarts = Counter(
            "synatra_engine_restarts",
            "Times the embedded engine rebuilt its generation loop.",
            registry=r,
        )
        self.discord_errors = Counter(
            "synatra_discord_rest_errors",
            "Discord REST requests that failed, by HTTP status (or 'connection').",
            ["status"],
            registry=r,
        )
        self.discord_rate_limited = Counter(
            "synatra_discord_rate_limited",
            "Discord REST requests answered 429 (discord.py waits and sends them again).",
            registry=r,
        )
        self.database_errors = Counter(
            "synatra_database_errors", "SQL statements that failed, by error.", ["kind"], registry=r
        )
        self.database_seconds = Histogram(
            "synatra_database_statement_seconds",
            "Time one SQL statement took.",
            buckets=DATABASE_BUCKETS,
            registry=r,
        )
        self.active_scenes = Gauge(
            "synatra_active_scenes", "Scenes running in channels and DMs.", registry=r
        )

    def reply_ended(self, outcome: str) -> None:
        self.replies.labels(outcome=outcome).inc()

    def first_token(self, seconds: float) -> None:
        self.first_token_seconds.observe(seconds)

    def token_gap(self, seconds: float) -> None:
        self.token_gap_seconds.observe(seconds)

    def tokens_generated(self, count: int) -> None:
        self.tokens.inc(count)

    def queue_changed(self, waiting: int) -> None:
        self.queue_depth.set(waiting)

    def queue_waited(self, seconds: float) -> None:
        self.queue_wait_seconds.observe(seconds)

    def engine_error(self, kind: str) -> None:
        self.engine_errors.labels(kind=kind).inc()

    def engine_restarted(self) -> None:
        self.engine_restarts.inc()

    def discord_response(self, status: int) -> None:
        if status == 429:
            self.discord_rate_limited.inc()
        elif status >= 400:
            self.discord_errors.labels(status=str(status)).inc()

    def discord_unreachable(self) -> None:
        self.discord_errors.labels(status="connection").inc()

    def database_statement(self, seconds: float) -> None:
        self.database_seconds.observe(seconds)

    def database_error(self, kind: str) -> None:
        self.database_errors.labels(kind=kind).inc()

    def exposition(self, *, active_scenes: int | None) -> bytes:
        """Everything in Prometheus' text format, with the scene count read just now (None:
        the database did not answer, and the last count stands)."""
        if active_scenes is not None:
            self.active_scenes.set(active_scenes)
        return generate_latest(self.registry)
