"""Settings: defaults, one clear line per problem, exit status 2, secrets never shown."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from synatra_bot.errors import ConfigError
from synatra_bot.settings import SecretFilter, load_settings, settings_from_env

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_with_only_a_token():
    settings = settings_from_env({"DISCORD_TOKEN": "abc.def"})
    assert settings.database_url == "sqlite+aiosqlite:///data/synatra.db"
    assert settings.model_id == "maywell/Synatra-7B-v0.3-RP"
    assert settings.engine == "transformers"
    assert settings.dev_guild_id is None
    assert settings.log_level == "INFO"


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({}, "DISCORD_TOKEN"),
        ({"ENGINE": "gpt"}, "ENGINE"),
        ({"ENGINE": "openai"}, "ENGINE_URL"),
        ({"ENGINE": "openai", "ENGINE_URL": "localhost:8000"}, "ENGINE_URL"),
        ({"DATABASE_URL": "data/synatra.db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "sqlite:///data/x.db"}, "DATABASE_URL"),
        ({"DEV_GUILD_ID": "서버"}, "DEV_GUILD_ID"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"CONTEXT_SIZE": "100"}, "CONTEXT_SIZE"),
        ({"MAX_NEW_TOKENS": "3000"}, "MAX_NEW_TOKENS"),
        ({"QUANTIZATION": "2bit"}, "QUANTIZATION"),
    ],
)
def test_each_problem_names_its_setting(env, setting):
    if setting != "DISCORD_TOKEN":
        env = {"DISCORD_TOKEN": "t0ken", **env}
    with pytest.raises(ConfigError) as info:
        settings_from_env(env)
    assert info.value.setting == setting
    assert str(info.value).startswith(f"{setting}: ")
    assert "\n" not in str(info.value)


def test_env_file_is_read_and_environment_wins(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("DISCORD_TOKEN=from-file\nMODEL_ID=/models/synatra\n", encoding="utf-8")
    monkeypatch.setenv("MODEL_ID", "/other")
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    settings = load_settings(env_file=env_file)
    assert settings.discord_token == "from-file"
    assert settings.model_id == "/other"


def test_repr_hides_secrets():
    settings = settings_from_env({"DISCORD_TOKEN": "sekrit-token", "ENGINE_API_KEY": "sk-123456"})
    assert "sekrit-token" not in repr(settings)
    assert "sk-123456" not in repr(settings)


def test_secret_filter_masks_log_records(caplog):
    logger = logging.getLogger("synatra-test-secrets")
    logger.addFilter(SecretFilter(("sekrit-token",)))
    with caplog.at_level(logging.INFO, logger="synatra-test-secrets"):
        logger.info("연결 실패: token=%s", "sekrit-token")
    assert "sekrit-token" not in caplog.text
    assert "token=***" in caplog.text


def test_bot_py_without_token_exits_2_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bot.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "DISCORD_TOKEN" in lines[0]
    assert ".env" in lines[0]
    assert "Traceback" not in result.stderr


def test_invalid_setting_exits_2_without_traceback(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DISCORD_TOKEN": "x", "ENGINE": "nope"}
    result = subprocess.run(
        [sys.executable, "-m", "synatra_bot.cli", "run"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "synatra-bot: ENGINE: must be one of transformers, openai, got 'nope'"
    ]


def test_a_model_that_cannot_be_loaded_exits_2_with_one_line(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "DISCORD_TOKEN": "x",
        "MODEL_ID": str(tmp_path / "없는-모델"),
        "HF_HUB_OFFLINE": "1",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "bot.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("synatra-bot:")]
    assert len(lines) == 1 and "MODEL_ID" in lines[0] and "없는-모델" in lines[0]
    assert "Traceback" not in result.stderr


def test_shards_for_several_processes():
    settings = settings_from_env({"DISCORD_TOKEN": "t", "SHARD_COUNT": "4", "SHARD_IDS": "3, 2"})
    assert settings.shard_count == 4 and settings.shard_ids == (2, 3)
    with pytest.raises(ConfigError, match="SHARD_IDS: must be between 0 and 3"):
        settings_from_env({"DISCORD_TOKEN": "t", "SHARD_COUNT": "4", "SHARD_IDS": "4"})
    with pytest.raises(ConfigError, match="SHARD_IDS: needs SHARD_COUNT"):
        settings_from_env({"DISCORD_TOKEN": "t", "SHARD_IDS": "0"})


async def test_bot_logs_in_with_its_shard_ids(start_bot, discord_fake):
    async with start_bot(env={"SHARD_COUNT": "2", "SHARD_IDS": "0,1"}) as harness:
        assert harness.bot.shard_count == 2
        assert sorted(harness.bot.shards) == [0, 1]
