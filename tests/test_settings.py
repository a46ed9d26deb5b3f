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
    assert settings.served_model == settings.model_id


def test_engine_model_names_the_server_model_and_model_id_stays_the_tokenizer():
    env = {"DISCORD_TOKEN": "t0ken", "ENGINE": "openai", "ENGINE_URL": "http://127.0.0.1:8080"}
    env |= {"MODEL_ID": "maywell/Synatra-7B-v0.3-RP", "ENGINE_MODEL": " synatra-q4 "}
    settings = settings_from_env(env)
    assert (settings.model_id, settings.served_model) == (
        "maywell/Synatra-7B-v0.3-RP",
        "synatra-q4",
    )


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({}, "DISCORD_TOKEN"),
        ({"ENGINE": "gpt"}, "ENGINE"),
        ({"ENGINE": "openai"}, "ENGINE_URL"),
        ({"ENGINE": "openai", "ENGINE_URL": "localhost:8000"}, "ENGINE_URL"),
        (
            {"ENGINE": "openai", "ENGINE_URL": "http://준:비밀@h:8000", "ENGINE_API_KEY": "sk"},
            "ENGINE_URL",
        ),
        ({"DATABASE_URL": "data/synatra.db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "sqlite:///data/x.db"}, "DATABASE_URL"),
        ({"DATABASE_BUSY_TIMEOUT_S": "0"}, "DATABASE_BUSY_TIMEOUT_S"),
        ({"DATABASE_RETRY_S": "한참"}, "DATABASE_RETRY_S"),
        ({"DEV_GUILD_ID": "서버"}, "DEV_GUILD_ID"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"CONTEXT_SIZE": "100"}, "CONTEXT_SIZE"),
        ({"MAX_NEW_TOKENS": "3000"}, "MAX_NEW_TOKENS"),
        ({"QUANTIZATION": "2bit"}, "QUANTIZATION"),
        ({"EMBEDDINGS_URL": "127.0.0.1:8081", "EMBEDDINGS_MODEL": "bge"}, "EMBEDDINGS_URL"),
        ({"EMBEDDINGS_URL": "http://127.0.0.1:8081"}, "EMBEDDINGS_MODEL"),
        ({"EMBEDDINGS_MODEL": "bge-m3"}, "EMBEDDINGS_MODEL"),
        ({"EMBEDDINGS_API_KEY": "sk-embed"}, "EMBEDDINGS_API_KEY"),
        (
            {"EMBEDDINGS_URL": "http://u:p@h:8081", "EMBEDDINGS_MODEL": "m"}
            | {"EMBEDDINGS_API_KEY": "sk"},
            "EMBEDDINGS_URL",
        ),
        (
            {"EMBEDDINGS_URL": "http://h:8081", "EMBEDDINGS_MODEL": "m"}
            | {"EMBEDDINGS_TIMEOUT_S": "빨리"},
            "EMBEDDINGS_TIMEOUT_S",
        ),
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


def test_an_embeddings_server_is_read_with_its_model_and_its_key_kept_secret():
    env = {"DISCORD_TOKEN": "t0ken", "EMBEDDINGS_URL": " http://127.0.0.1:8081/ "}
    env |= {"EMBEDDINGS_MODEL": "bge-m3", "EMBEDDINGS_API_KEY": "sk-embed-1"}
    settings = settings_from_env(env | {"EMBEDDINGS_TIMEOUT_S": "0.25"})
    assert (settings.embeddings_url, settings.embeddings_model) == (
        "http://127.0.0.1:8081",
        "bge-m3",
    )
    assert settings.embeddings_timeout_s == 0.25
    assert "sk-embed-1" not in repr(settings) and "sk-embed-1" in settings.secrets
    assert settings_from_env({"DISCORD_TOKEN": "t0ken"}).embeddings_url == ""


def test_a_bad_embeddings_setting_exits_2_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DISCORD_TOKEN": "x"}
    env |= {"EMBEDDINGS_URL": "http://127.0.0.1:8081", "PYTHONPATH": str(ROOT)}
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
        "synatra-bot: EMBEDDINGS_MODEL: required with EMBEDDINGS_URL "
        "(the model the server embeds with)"
    ]


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
        "synatra-bot: ENGINE: must be one of transformers, openai, llamacpp, vllm, got 'nope'"
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


WEBHOOK_TOKEN = "Xq9-webhook_TOKEN.abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTU"
INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OkVvR2lkZW50aXR5"


@pytest.fixture
def root_logging():
    """Put the root logger and the levels configure_logging sets back after the test."""
    from transformers.utils import logging as hf_logging

    root = logging.getLogger()
    names = (
        "discord.http",
        "discord.webhook.async_",
        "discord.webhook.sync",
        "alembic",
        "transformers",
    )
    saved = root.handlers[:], root.level, {n: logging.getLogger(n).level for n in names}
    client_filters = logging.getLogger("discord.client").filters[:]
    batching = logging.getLogger("ContinuousBatchingLogger")
    batching_saved = batching.level, batching.handlers[:], batching.propagate
    progress = hf_logging.is_progress_bar_enabled()
    yield
    batching.setLevel(batching_saved[0])
    batching.handlers[:], batching.propagate = batching_saved[1], batching_saved[2]
    if progress:
        hf_logging.enable_progress_bar()
    root.handlers[:], level, levels = saved
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)
    logging.getLogger("discord.client").filters[:] = client_filters
    hf_logging.enable_default_handler()
    hf_logging.disable_propagation()


def test_secret_filter_masks_webhook_and_interaction_tokens_in_messages_and_tracebacks(caplog):
    logger = logging.getLogger("synatra-test-webhooks")
    logger.addFilter(SecretFilter(()))
    url = f"https://discord.com/api/v10/webhooks/123456789/{WEBHOOK_TOKEN}/messages/42?wait=1"
    with caplog.at_level(logging.DEBUG, logger="synatra-test-webhooks"):
        logger.debug("Webhook ID %s with %s %s has returned status code %s", 1, "POST", url, 200)
        logger.debug("POST /webhooks/987654321/%s has returned 200", INTERACTION_TOKEN)
        logger.debug("POST /interactions/55/%s/callback has returned 204", INTERACTION_TOKEN)
        logger.debug(
            "WebSocket Event: %s", {"t": "INTERACTION_CREATE", "d": {"token": INTERACTION_TOKEN}}
        )
        logger.debug('received {"id": "7", "token": "%s"}', WEBHOOK_TOKEN)
        try:
            raise RuntimeError(f"cannot reach {url}")
        except RuntimeError:
            logger.exception("webhook send failed")
    assert WEBHOOK_TOKEN not in caplog.text and INTERACTION_TOKEN not in caplog.text
    assert "/webhooks/123456789/***/messages/42?wait=1" in caplog.text
    assert "/webhooks/987654321/*** has returned 200" in caplog.text
    assert "/interactions/55/***/callback" in caplog.text
    assert "{'token': '***'}" in caplog.text and '"token": "***"' in caplog.text
    assert "RuntimeError: cannot reach https://discord.com/api/v10/webhooks/123456789/***/" in (
        caplog.text
    )


def test_debug_logging_holds_discord_request_and_webhook_loggers_at_info(root_logging):
    from synatra_bot.settings import configure_logging

    configure_logging(settings_from_env({"DISCORD_TOKEN": "t0ken", "LOG_LEVEL": "debug"}))
    assert logging.getLogger().level == logging.DEBUG
    for name in ("discord.http", "discord.webhook.async_", "discord.webhook.sync"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.INFO, name


async def test_webhook_and_interaction_tokens_never_reach_the_debug_log(
    start_bot, discord_fake, root_logging, capsys
):
    from synatra_bot.settings import configure_logging

    async with start_bot(env={"LOG_LEVEL": "debug"}) as harness:
        configure_logging(harness.bot.settings)
        # Even when someone turns discord.py's request loggers up, the tokens stay masked.
        for name in ("discord.http", "discord.webhook.async_"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        s = harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        reply = await harness.reply_to(s.general, s.members[0], "안녕!")
        assert reply.content
        listed = await harness.slash(s.members[0], "character list")
        await harness.final_text(listed)
        tokens = [w.token for w in discord_fake.webhooks.values()]
        tokens += list(discord_fake.interactions)
    logged = capsys.readouterr().err
    assert tokens and f"/webhooks/{reply.webhook_id}/***" in logged
    leaked = [line for line in logged.splitlines() if any(t in line for t in tokens)]
    assert not leaked, leaked[:3]


def test_a_named_env_file_that_does_not_exist_is_an_error(tmp_path):
    missing = tmp_path / "없는.env"
    for command in ([], ["db", "current"], ["chat", "--character", "민지"]):
        result = subprocess.run(
            [sys.executable, "-m", "synatra_bot.cli", "--env-file", str(missing), *command],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
        assert result.returncode == 2, command
        assert result.stderr.strip() == f"synatra-bot: --env-file: no such file: {missing}"


def test_without_env_file_a_missing_dotenv_is_fine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCORD_TOKEN", "token-from-environment")
    assert load_settings().discord_token == "token-from-environment"


def test_version_is_printed():
    result = subprocess.run(
        [sys.executable, "-m", "synatra_bot.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("synatra-bot ") and result.stdout.split()[1][0].isdigit()


@pytest.mark.parametrize(
    ("database_url", "expected"),
    [
        ("sqlite+aiosqlite:////sys/synatra.db", "cannot open the database"),
        ("postgresql+asyncpg://bot:hunter2@127.0.0.1:1/synatra", "cannot open the database"),
        ("postgresql://bot:hunter2@127.0.0.1/synatra", "use postgresql+asyncpg://"),
        ("mysql://bot@127.0.0.1/synatra", "use mysql+aiomysql://"),
        ("oracle://bot@127.0.0.1/synatra", "unsupported database 'oracle'"),
    ],
)
@pytest.mark.parametrize("command", [["db", "upgrade"], []])
def test_a_database_that_cannot_be_used_is_one_line_and_exit_2(
    tmp_path, database_url, expected, command
):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DISCORD_TOKEN": "x" * 59,
        "DATABASE_URL": database_url,
        "MODEL_ID": str(tmp_path / "no-model"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "synatra_bot.cli", *command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    [line] = [text for text in result.stderr.splitlines() if text.startswith("synatra-bot:")]
    assert line.startswith("synatra-bot: ") and "DATABASE_URL" in line and expected in line
    assert "hunter2" not in line


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        (
            "maywell/Synatra-7B-v0.3-RP",
            "the model hub cannot be reached (ConnectError). Download the model on a machine "
            "with network (hf download maywell/Synatra-7B-v0.3-RP --local-dir models/synatra)",
        ),
        ("{tmp}/missing-model", "is not a model folder"),
        ("{tmp}/empty-model", "is not a model folder"),
    ],
)
def test_a_model_that_cannot_be_had_is_one_line_and_exit_2_within_seconds(
    tmp_path, model_id, expected
):
    (tmp_path / "empty-model").mkdir()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DISCORD_TOKEN": "x" * 59,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        "MODEL_ID": model_id.format(tmp=tmp_path),
        # No hub here: a closed local port answers at once, the same on every machine.
        "HF_ENDPOINT": "http://127.0.0.1:1",
        "HF_HUB_CACHE": str(tmp_path / "hub-cache"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "synatra_bot.cli"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "synatra-bot:" in line]
    assert (
        len(errors) == 1 and errors[0].startswith("synatra-bot: MODEL_ID") and expected in errors[0]
    )
    assert "Traceback" not in result.stderr and "Retrying" not in result.stderr


def test_the_host_log_has_one_format_and_no_voice_notices(root_logging, capsys):
    from synatra_bot.settings import configure_logging

    configure_logging(settings_from_env({"DISCORD_TOKEN": "x" * 59}))
    logging.getLogger("discord.client").warning(
        "PyNaCl is not installed, voice will NOT be supported"
    )
    logging.getLogger("discord.client").info("logging in using static token")
    logging.getLogger("transformers.modeling_utils").warning("모델 경고")
    logging.getLogger("transformers.generation").info("step details nobody needs")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("INFO discord.client: logging in using static token")
    assert lines[1].endswith("WARNING transformers.modeling_utils: 모델 경고")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--model", "/missing-model"],
            "synatra-bot: --model: /missing-model is not a model folder",
        ),
        (
            ["--tiny", "--device", "cuda"],
            "synatra-bot: --device: cuda asked for, but this machine has no CUDA GPU",
        ),
        (["--tiny", "--device", "gpu"], "synatra-bot: --device: 'gpu' is not a device"),
        (
            ["--tiny", "--tokenizer", "/missing-tok"],
            "synatra-bot: --tokenizer: /missing-tok is not a model folder",
        ),
    ],
)
def test_bench_flags_naming_what_is_not_here_are_one_line_and_exit_2(tmp_path, flags, expected):
    result = subprocess.run(
        [sys.executable, "-m", "synatra_bot.cli", "bench", *flags],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""},
        timeout=60,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(expected)


def test_attention_and_batching_default_to_auto_and_transformers_defaults():
    settings = settings_from_env({"DISCORD_TOKEN": "t"})
    assert settings.attn_implementation == "auto"
    assert (settings.cb_max_batch_tokens, settings.cb_num_blocks, settings.cb_page_size) == (
        None,
        None,
        None,
    )
    assert settings.cb_max_memory_percent is None
    assert settings.cb_cuda_graphs is None and settings.cb_async_batching is None
    assert settings.cb_compile_level == 0 and settings.cb_scheduler == "fifo"
    assert settings.cb_prefix_sharing is True
    assert settings.single_stream == "off"
    assert settings.batch_slots == 8


def test_batching_settings_are_read():
    settings = settings_from_env(
        {
            "DISCORD_TOKEN": "t",
            "ATTN_IMPLEMENTATION": "Flash_Attention_2",
            "CB_MAX_BATCH_TOKENS": "4096",
            "CB_NUM_BLOCKS": "512",
            "CB_MAX_MEMORY_PERCENT": "85.5",
            "CB_PAGE_SIZE": "128",
            "CB_CUDA_GRAPHS": "on",
            "CB_ASYNC_BATCHING": "off",
            "CB_COMPILE_LEVEL": "2",
            "CB_SCHEDULER": "prefill_first",
            "CB_PREFIX_SHARING": "no",
            "SINGLE_STREAM": "static-compile",
            "BATCH_SLOTS": "0",
        }
    )
    assert settings.attn_implementation == "flash_attention_2"
    assert (settings.cb_max_batch_tokens, settings.cb_num_blocks, settings.cb_page_size) == (
        4096,
        512,
        128,
    )
    assert settings.cb_max_memory_percent == 85.5
    assert settings.cb_cuda_graphs is True and settings.cb_async_batching is False
    assert settings.cb_compile_level == 2 and settings.cb_scheduler == "prefill_first"
    assert settings.cb_prefix_sharing is False
    assert settings.single_stream == "static-compile"
    assert settings.batch_slots == 0


@pytest.mark.parametrize(
    "kernel", ["kernels-community/flash-attn2", "kernels-community/vllm-flash-attn3"]
)
def test_attention_may_name_a_hub_flash_kernel(kernel):
    settings = settings_from_env({"DISCORD_TOKEN": "t", "ATTN_IMPLEMENTATION": kernel})
    assert settings.attn_implementation == kernel


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("ATTN_IMPLEMENTATION", "flash"),
        ("ATTN_IMPLEMENTATION", "kernels-community/rmsnorm"),
        ("ATTN_IMPLEMENTATION", "someone/flash-attn2"),
        ("CB_MAX_BATCH_TOKENS", "lots"),
        ("CB_MAX_BATCH_TOKENS", "8"),
        ("CB_NUM_BLOCKS", "0"),
        ("CB_MAX_MEMORY_PERCENT", "0.8"),
        ("CB_MAX_MEMORY_PERCENT", "100"),
        ("CB_PAGE_SIZE", "2"),
        ("CB_CUDA_GRAPHS", "maybe"),
        ("CB_ASYNC_BATCHING", "sometimes"),
        ("CB_COMPILE_LEVEL", "4"),
        ("CB_SCHEDULER", "lifo"),
        ("CB_PREFIX_SHARING", "partly"),
        ("SINGLE_STREAM", "fast"),
        ("BATCH_SLOTS", "-1"),
        ("BATCH_SLOTS", "65"),
        ("BATCH_SLOTS", "many"),
    ],
)
def test_each_bad_batching_value_names_its_setting(setting, value):
    with pytest.raises(ConfigError) as info:
        settings_from_env({"DISCORD_TOKEN": "t", setting: value})
    assert info.value.setting == setting
    assert str(info.value).startswith(f"{setting}: ") and "\n" not in str(info.value)


def test_a_bad_batching_setting_exits_2_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DISCORD_TOKEN": "x"}
    result = subprocess.run(
        [sys.executable, "-m", "synatra_bot.cli", "run"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT), "CB_SCHEDULER": "lifo"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "synatra-bot: CB_SCHEDULER: must be one of fifo, prefill_first, got 'lifo'"
    ]


def test_lane_rows_out_of_range_exit_2_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DISCORD_TOKEN": "x"}
    result = subprocess.run(
        [sys.executable, "-m", "synatra_bot.cli", "run"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT), "BATCH_SLOTS": "100"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("synatra-bot: BATCH_SLOTS: ") and "64" in line
