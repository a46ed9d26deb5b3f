"""The host's log: one format for every logger, JSON lines on request, no progress bars
outside a terminal."""

import io
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from synatra_bot.settings import CB_LOGGER, configure_logging, settings_from_env


@pytest.fixture
def root_logging():
    """Put back every logger, handler and switch configure_logging changes."""
    from transformers.utils import logging as hf_logging

    root = logging.getLogger()
    names = (
        "discord.http",
        "discord.webhook.async_",
        "discord.webhook.sync",
        "alembic",
        "transformers",
        CB_LOGGER,
    )
    loggers = {n: logging.getLogger(n) for n in names}
    saved = {n: (lg.level, lg.handlers[:], lg.propagate) for n, lg in loggers.items()}
    root_saved = root.handlers[:], root.level
    client_filters = logging.getLogger("discord.client").filters[:]
    progress = hf_logging.is_progress_bar_enabled()
    yield
    root.handlers[:], level = root_saved
    root.setLevel(level)
    for name, (level, handlers, propagate) in saved.items():
        loggers[name].setLevel(level)
        loggers[name].handlers[:] = handlers
        loggers[name].propagate = propagate
    logging.getLogger("discord.client").filters[:] = client_filters
    hf_logging.enable_default_handler()
    hf_logging.disable_propagation()
    if progress:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()


def configure(**env: str) -> None:
    configure_logging(settings_from_env({"DISCORD_TOKEN": "s3cret-token", **env}))


def test_json_log_is_one_object_a_line_with_secrets_masked(root_logging, capsys):
    configure(LOG_FORMAT="json")
    logging.getLogger("synatra_bot.app").info("로그인: %s", "s3cret-token")
    try:
        raise RuntimeError("연결 실패 s3cret-token")
    except RuntimeError:
        logging.getLogger("discord.client").exception("여러 줄\n메시지")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert set(first) == {"time", "level", "logger", "message"}
    assert (first["level"], first["logger"], first["message"]) == (
        "INFO",
        "synatra_bot.app",
        "로그인: ***",
    )
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and second["message"] == "여러 줄\n메시지"
    assert second["exception"].startswith("Traceback (most recent call last):")
    assert second["exception"].endswith("RuntimeError: 연결 실패 ***")


def test_log_format_is_text_or_json():
    assert settings_from_env({"DISCORD_TOKEN": "t"}).log_format == "text"
    assert settings_from_env({"DISCORD_TOKEN": "t", "LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(Exception, match=r"^LOG_FORMAT: must be one of text, json, got 'xml'$"):
        settings_from_env({"DISCORD_TOKEN": "t", "LOG_FORMAT": "xml"})


def test_continuous_batching_logs_in_the_bots_format(root_logging, capsys):
    """transformers' continuous batching gives its logger a handler and a format of its own
    when it is imported: once configured, its lines come out once, in the bot's format."""
    import transformers.generation.continuous_batching.utils  # noqa: F401

    configure(LOG_FORMAT="json")
    logging.getLogger(CB_LOGGER).warning("캐시 블록이 부족하다")
    logging.getLogger(CB_LOGGER).info("step details nobody needs")
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["캐시 블록이 부족하다"]
    assert json.loads(lines[0])["logger"] == CB_LOGGER


def test_continuous_batching_imported_after_configuring_keeps_the_bots_format():
    """The bot configures logging before transformers' continuous batching is imported (with
    the model): the import must not add its own handler then."""
    script = textwrap.dedent(
        """
        import logging
        from synatra_bot.settings import CB_LOGGER, configure_logging, settings_from_env
        configure_logging(settings_from_env({"DISCORD_TOKEN": "t", "LOG_FORMAT": "json"}))
        import transformers.generation.continuous_batching.utils
        logging.getLogger(CB_LOGGER).warning("캐시 블록이 부족하다")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert json.loads(line)["message"] == "캐시 블록이 부족하다"


def test_no_progress_bars_when_stderr_is_not_a_terminal(root_logging, monkeypatch):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    configure()
    assert not hf_logging.is_progress_bar_enabled()
    from huggingface_hub.utils import are_progress_bars_disabled

    assert are_progress_bars_disabled()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_stay_in_a_terminal(root_logging, monkeypatch):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    monkeypatch.setattr(sys, "stderr", Terminal())
    configure()
    assert hf_logging.is_progress_bar_enabled()
