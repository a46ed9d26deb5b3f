"""Typed settings read from the environment and `.env`, validated once at start."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Literal, cast

from synatra_bot.errors import ConfigError
from synatra_bot.eventloop import EVENT_LOOP_KINDS, EventLoopKind, uvloop_available
from synatra_bot.gguf_source import parse_gguf_source

EngineKind = Literal["transformers", "openai", "llamacpp", "vllm"]
ENGINES = ("transformers", "openai", "llamacpp", "vllm")
#: The engines whose server the bot runs itself.
MANAGED_ENGINES = ("llamacpp", "vllm")
LogFormat = Literal["text", "json"]
LOG_FORMATS = ("text", "json")
#: The API of the OpenAI-compatible server: `/v1/completions` or `/v1/chat/completions`.
EngineApi = Literal["completions", "chat"]
ENGINE_APIS = ("completions", "chat")
Quantization = Literal["none", "8bit", "4bit"]

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///data/synatra.db"
DEFAULT_MODEL_ID = "maywell/Synatra-7B-v0.3-RP"
TOKEN_HELP = (
    "DISCORD_TOKEN: not set. Create a bot at https://discord.com/developers/applications, "
    "copy its token, and put DISCORD_TOKEN=... in .env (see .env.example) or the environment."
)

QUANTIZATIONS = ("none", "8bit", "4bit")
BOOLEANS = ("true", "false", "1", "0", "yes", "no")
TRUE = ("true", "1", "yes")
ATTN_IMPLEMENTATIONS = (
    "auto",
    "sdpa",
    "eager",
    "flash_attention_2",
    "flash_attention_3",
    # What older transformers called sdpa and flash_attention_2 under continuous batching.
    "paged|sdpa",
    "paged|flash_attention_2",
)
#: ATTN_IMPLEMENTATION may also name a flash kernel on the Hub (loaded by the kernels package).
HUB_FLASH_KERNEL = re.compile(r"kernels-community/[a-z0-9._-]*flash[a-z0-9._-]*")
#: The schedulers transformers' continuous batching offers (its SCHEDULER_MAPPING).
CB_SCHEDULERS = ("fifo", "prefill_first")
#: How the embedded engine decodes a reply when it is the only one (engine.transformers_engine).
SINGLE_STREAM_MODES = ("off", "static", "static-compile")
#: Rows the batched static-cache lane may have (0 turns it off).
BATCH_SLOTS_RANGE = (0, 64)
AUTO_ON_OFF = MappingProxyType({"auto": None, "on": True, "off": False})


#: Bytes one member's personal lorebooks may take together unless the host says otherwise.
DEFAULT_LOREBOOK_QUOTA_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the bot. Field names are the environment variables in lower case."""

    discord_token: str = ""
    database_url: str = DEFAULT_DATABASE_URL
    #: SQLite: how long one transaction waits for another process's write lock.
    database_busy_timeout_s: float = 10.0
    #: How long a player's line (or a reply) is tried again while the database stays locked.
    database_retry_s: float = 60.0
    model_id: str = DEFAULT_MODEL_ID
    engine: EngineKind = "transformers"
    engine_url: str = ""
    #: The name the remote server knows the model by; "" means MODEL_ID (see served_model).
    engine_model: str = ""
    engine_api_key: str = ""
    engine_timeout_s: float = 120.0
    engine_send_token_ids: bool = False
    engine_api: EngineApi = "completions"
    #: ENGINE=llamacpp: the GGUF the bot serves (a path, or owner/repo/file.gguf on the hub).
    model_gguf: str = ""
    #: ENGINE=llamacpp: a llama-server the host built; "" builds one from pinned sources.
    llama_server: str = ""
    #: ENGINE=llamacpp: replies the server generates at once (its slots).
    llama_parallel: int = 4
    #: ENGINE=llamacpp: further llama-server arguments (e.g. --n-gpu-layers 99 --threads 8).
    llama_args: tuple[str, ...] = ()
    #: ENGINE=vllm: the `vllm` command (or the python) of vLLM's own venv, as found on PATH.
    vllm_command: str = ""
    #: ENGINE=vllm: further `vllm serve` arguments (e.g. --gpu-memory-utilization 0.85).
    vllm_args: tuple[str, ...] = ()
    quantization: Quantization = "none"
    attn_implementation: str = "auto"
    #: Continuous batching of the embedded engine; None leaves the value to transformers.
    cb_max_batch_tokens: int | None = None
    cb_num_blocks: int | None = None
    cb_max_memory_percent: float | None = None
    cb_page_size: int | None = None
    cb_cuda_graphs: bool | None = None
    cb_async_batching: bool | None = None
    cb_compile_level: int = 0
    cb_scheduler: str = "fifo"
    cb_prefix_sharing: bool = True
    single_stream: str = "off"
    #: Rows of the embedded engine's batched static-cache lane (0: continuous batching only).
    batch_slots: int = 8
    max_concurrent_replies: int = 32
    turn_timeout_s: float = 300.0
    context_size: int = 4096
    max_new_tokens: int = 300
    max_attachment_bytes: int = 8 * 1024 * 1024
    #: Bytes one member's personal lorebooks may take together, as stored.
    lorebook_quota_bytes: int = DEFAULT_LOREBOOK_QUOTA_BYTES
    dev_guild_id: int | None = None
    log_level: str = "INFO"
    #: "text" for people reading a terminal or journal, "json" (one object a line) for hosts
    #: that ship logs to a collector.
    log_format: LogFormat = "text"
    #: Where /healthz and /metrics are served (host, port); None: not served.
    metrics_addr: tuple[str, int] | None = None
    event_loop: EventLoopKind = "auto"
    #: Several processes share the gateway: all of them get SHARD_COUNT, each its SHARD_IDS.
    shard_count: int | None = None
    shard_ids: tuple[int, ...] | None = None
    #: An OpenAI-compatible `/v1/embeddings` server for recalling old turns by meaning too
    #: ("": recall by words only), the model it serves, and its API key.
    embeddings_url: str = ""
    embeddings_model: str = ""
    embeddings_api_key: str = ""
    #: How long a prompt waits for its query's vector before recalling by words only.
    embeddings_timeout_s: float = 0.5

    def __repr__(self) -> str:
        # Secrets never reach logs through repr().
        shown = {
            f.name: (
                "***"
                if f.name in {"discord_token", "engine_api_key", "embeddings_api_key"}
                and getattr(self, f.name)
                else getattr(self, f.name)
            )
            for f in fields(self)
        }
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def served_model(self) -> str:
        """The model name sent to a remote engine: ENGINE_MODEL, else MODEL_ID."""
        return self.engine_model or self.model_id

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in logs or error messages."""
        keys = (self.discord_token, self.engine_api_key, self.embeddings_api_key)
        return tuple(s for s in keys if s)


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"must be a whole number, got {raw!r}") from None
    return check_range(name, value, (low, high))


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(name, f"must be between {low} and {high}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    value = raw.lower()
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {raw!r}")
    return value


def settings_from_env(env: Mapping[str, str], *, require_token: bool = True) -> Settings:
    """Validate `env` into Settings; the first problem raises ConfigError naming the setting."""
    token = env.get("DISCORD_TOKEN", "").strip()
    if require_token and not token:
        raise ConfigError("DISCORD_TOKEN", TOKEN_HELP.removeprefix("DISCORD_TOKEN: "))

    database_url = env.get("DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL
    if "://" not in database_url:
        raise ConfigError("DATABASE_URL", f"must be a SQLAlchemy URL, got {database_url!r}")
    _check_async_driver(database_url)

    model_gguf = env.get("MODEL_GGUF", "").strip()
    # Naming a GGUF is enough to run on llama.cpp; without one the embedded engine stays.
    engine = _choice(env, "ENGINE", "llamacpp" if model_gguf else "transformers", ENGINES)
    engine_url = env.get("ENGINE_URL", "").strip().rstrip("/")
    if engine in MANAGED_ENGINES and engine_url:
        raise ConfigError(
            "ENGINE_URL",
            f"is for ENGINE=openai: with ENGINE={engine} the bot starts its own server",
        )
    llama_server = _check_llamacpp(env, model_gguf) if engine == "llamacpp" else ""
    vllm_command = _vllm_command(env) if engine == "vllm" else ""
    if engine == "openai" and not engine_url:
        raise ConfigError("ENGINE_URL", "required when ENGINE=openai, e.g. http://127.0.0.1:8000")
    if engine_url and not engine_url.startswith(("http://", "https://")):
        raise ConfigError("ENGINE_URL", f"must start with http:// or https://, got {engine_url!r}")
    engine_api_key = env.get("ENGINE_API_KEY", "").strip()
    if engine_api_key and urllib.parse.urlsplit(engine_url).username is not None:
        # HTTP carries one Authorization: aiohttp refuses a request with both.
        raise ConfigError(
            "ENGINE_URL",
            "has a user and password in it and ENGINE_API_KEY is set too: give one of them",
        )
    engine_api = _choice(env, "ENGINE_API", "completions", ENGINE_APIS)
    send_token_ids = _choice(env, "ENGINE_SEND_TOKEN_IDS", "false", BOOLEANS) in TRUE
    if engine_api == "chat" and send_token_ids:
        raise ConfigError(
            "ENGINE_SEND_TOKEN_IDS", "must be false with ENGINE_API=chat (chat messages are text)"
        )

    levels = ("debug", "info", "warning", "error", "critical")
    context_size = _int(env, "CONTEXT_SIZE", 4096, *CONTEXT_SIZE_RANGE)
    max_new_tokens = _int(env, "MAX_NEW_TOKENS", 300, *MAX_NEW_TOKENS_RANGE)
    if max_new_tokens >= context_size // 2:
        raise ConfigError("MAX_NEW_TOKENS", f"must be below half of CONTEXT_SIZE ({context_size})")
    dev_guild = _int(env, "DEV_GUILD_ID", 0, 0, 2**63 - 1)
    shard_count = _int(env, "SHARD_COUNT", 0, 1, 10_000) or None
    shard_ids = _shard_ids(env.get("SHARD_IDS", "").strip(), shard_count)
    event_loop = _choice(env, "EVENT_LOOP", "auto", EVENT_LOOP_KINDS)
    if event_loop == "uvloop" and not uvloop_available():
        raise ConfigError("EVENT_LOOP", "uvloop is not installed: pip install uvloop, or use auto")

    embeddings_url, embeddings_model, embeddings_api_key = _embeddings(env)
    return Settings(
        discord_token=token,
        database_url=database_url,
        database_busy_timeout_s=_float(env, "DATABASE_BUSY_TIMEOUT_S", 10.0, 0.01, 600),
        database_retry_s=_float(env, "DATABASE_RETRY_S", 60.0, 0, 3600),
        model_id=env.get("MODEL_ID", "").strip() or DEFAULT_MODEL_ID,
        engine=cast(EngineKind, engine),
        engine_url=engine_url,
        engine_model=env.get("ENGINE_MODEL", "").strip(),
        engine_api_key=engine_api_key,
        engine_timeout_s=_float(env, "ENGINE_TIMEOUT_S", 120.0, 1, 3600),
        engine_send_token_ids=send_token_ids,
        engine_api=cast(EngineApi, engine_api),
        model_gguf=model_gguf,
        llama_server=llama_server,
        llama_parallel=_int(env, "LLAMA_PARALLEL", 4, 1, 256),
        llama_args=_server_args(env, "LLAMA_ARGS", LLAMA_MANAGED_ARGS, LLAMA_MANAGED_BY),
        vllm_command=vllm_command,
        vllm_args=_server_args(env, "VLLM_ARGS", VLLM_MANAGED_ARGS, VLLM_MANAGED_BY),
        quantization=cast(Quantization, _choice(env, "QUANTIZATION", "none", QUANTIZATIONS)),
        attn_implementation=_attention(env),
        cb_max_batch_tokens=_int(env, "CB_MAX_BATCH_TOKENS", 0, 16, 1 << 20) or None,
        cb_num_blocks=_int(env, "CB_NUM_BLOCKS", 0, 1, 1 << 24) or None,
        cb_max_memory_percent=_float(env, "CB_MAX_MEMORY_PERCENT", 0, 1, 99) or None,
        cb_page_size=_int(env, "CB_PAGE_SIZE", 0, 4, 4096) or None,
        cb_cuda_graphs=AUTO_ON_OFF[_choice(env, "CB_CUDA_GRAPHS", "auto", tuple(AUTO_ON_OFF))],
        cb_async_batching=AUTO_ON_OFF[
            _choice(env, "CB_ASYNC_BATCHING", "auto", tuple(AUTO_ON_OFF))
        ],
        cb_compile_level=_int(env, "CB_COMPILE_LEVEL", 0, 0, 3),
        cb_scheduler=_choice(env, "CB_SCHEDULER", "fifo", CB_SCHEDULERS),
        cb_prefix_sharing=_choice(env, "CB_PREFIX_SHARING", "true", BOOLEANS) in TRUE,
        single_stream=_choice(env, "SINGLE_STREAM", "off", SINGLE_STREAM_MODES),
        batch_slots=_int(env, "BATCH_SLOTS", 8, *BATCH_SLOTS_RANGE),
        max_concurrent_replies=_int(env, "MAX_CONCURRENT_REPLIES", 32, 1, 1024),
        turn_timeout_s=_float(env, "TURN_TIMEOUT_S", 300.0, 5, 3600),
        context_size=context_size,
        max_new_tokens=max_new_tokens,
        max_attachment_bytes=_int(env, "MAX_ATTACHMENT_BYTES", 8 << 20, 1024, 64 << 20),
        lorebook_quota_bytes=_int(
            env, "LOREBOOK_QUOTA_BYTES", DEFAULT_LOREBOOK_QUOTA_BYTES, 64 << 10, 1 << 30
        ),
        dev_guild_id=dev_guild or None,
        log_level=_choice(env, "LOG_LEVEL", "info", levels).upper(),
        log_format=cast(LogFormat, _choice(env, "LOG_FORMAT", "text", LOG_FORMATS)),
        metrics_addr=_address(env, "METRICS_ADDR"),
        event_loop=cast(EventLoopKind, event_loop),
        shard_count=shard_count,
        shard_ids=shard_ids,
        embeddings_url=embeddings_url,
        embeddings_model=embeddings_model,
        embeddings_api_key=embeddings_api_key,
        embeddings_timeout_s=_float(env, "EMBEDDINGS_TIMEOUT_S", 0.5, 0.05, 30),
    )


def _embeddings(env: Mapping[str, str]) -> tuple[str, str, str]:
    """EMBEDDINGS_URL, EMBEDDINGS_MODEL and EMBEDDINGS_API_KEY, checked together: the model is
    required with a server (its vectors are stored under its name), and neither without one."""
    url = env.get("EMBEDDINGS_URL", "").strip().rstrip("/")
    model = env.get("EMBEDDINGS_MODEL", "").strip()
    key = env.get("EMBEDDINGS_API_KEY", "").strip()
    if not url:
        for name, value in (("EMBEDDINGS_MODEL", model), ("EMBEDDINGS_API_KEY", key)):
            if value:
                raise ConfigError(name, "needs EMBEDDINGS_URL (the /v1/embeddings server)")
        return "", "", ""
    if not url.startswith(("http://", "https://")):
        raise ConfigError("EMBEDDINGS_URL", f"must start with http:// or https://, got {url!r}")
    if key and urllib.parse.urlsplit(url).username is not None:
        raise ConfigError(
            "EMBEDDINGS_URL",
            "has a user and password in it and EMBEDDINGS_API_KEY is set too: give one of them",
        )
    if not model:
        raise ConfigError(
            "EMBEDDINGS_MODEL", "required with EMBEDDINGS_URL (the model the server embeds with)"
        )
    if len(model) > 200:
        raise ConfigError("EMBEDDINGS_MODEL", "must be at most 200 characters")
    return url, model, key


def _check_llamacpp(env: Mapping[str, str], model_gguf: str) -> str:
    """ENGINE=llamacpp: a GGUF that can be had and a server that can run (or none named, "")."""
    if not model_gguf:
        raise ConfigError(
            "MODEL_GGUF",
            "required when ENGINE=llamacpp: a .gguf file, or owner/repo/file.gguf on the hub",
        )
    parse_gguf_source(model_gguf)
    server = env.get("LLAMA_SERVER", "").strip()
    if not server:
        return ""
    found = _program(env, server)
    if found is None:
        raise ConfigError(
            "LLAMA_SERVER",
            f"{server} is not an executable file (leave it empty and the bot builds one)",
        )
    return found


def _vllm_command(env: Mapping[str, str]) -> str:
    """ENGINE=vllm: VLLM_COMMAND, a program that can run."""
    raw = env.get("VLLM_COMMAND", "").strip()
    if not raw:
        raise ConfigError(
            "VLLM_COMMAND",
            "required when ENGINE=vllm: the vllm command of vLLM's own venv, "
            "e.g. /opt/vllm/bin/vllm",
        )
    found = _program(env, raw)
    if found is None:
        raise ConfigError(
            "VLLM_COMMAND",
            f"{raw} is not an executable file (the vllm command, or the python, of vLLM's venv)",
        )
    return found


def _program(env: Mapping[str, str], name: str) -> str | None:
    """The executable file `name` names, as a shell finds it (a bare name on PATH), made
    absolute; None when there is none."""
    import shutil

    found = shutil.which(name, path=env.get("PATH", os.defpath))
    return None if found is None else str(Path(found).absolute())


#: llama-server arguments the managed engine sets itself, and the settings they come from.
LLAMA_MANAGED_ARGS = frozenset(
    {"-m", "--model", "--host", "--port", "--alias", "-a", "-np", "--parallel", "-c", "--ctx-size"}
)
LLAMA_MANAGED_BY = "MODEL_GGUF, LLAMA_PARALLEL, CONTEXT_SIZE"
#: `vllm serve` arguments the managed engine sets itself (the key goes in its environment).
VLLM_MANAGED_ARGS = frozenset(
    {"--model", "--host", "--port", "--served-model-name", "--max-model-len", "--api-key"}
)
VLLM_MANAGED_BY = "MODEL_ID, CONTEXT_SIZE, ENGINE_API_KEY"


def _server_args(
    env: Mapping[str, str], name: str, managed: frozenset[str], managed_by: str
) -> tuple[str, ...]:
    """A managed server's further arguments, split like a shell; those the bot sets refused."""
    import shlex

    raw = env.get(name, "").strip()
    try:
        args = tuple(shlex.split(raw))
    except ValueError as error:
        raise ConfigError(name, f"cannot be split into arguments ({error})") from None
    taken = sorted({written for arg in args if (written := _refused_option(arg, managed))})
    if taken:
        verb = "is" if len(taken) == 1 else "are"
        raise ConfigError(name, f"{', '.join(taken)} {verb} set by the bot ({managed_by})")
    return args


def _refused_option(arg: str, managed: frozenset[str]) -> str:
    """`arg` as written (its value cut off) when it sets one of `managed`, said with what it
    stands for where it differs; "" when it does not. A long option is taken as vLLM's argument
    parser takes it: `_` as `-`, `--name=value`, and any abbreviation of a longer name."""
    written = arg.split("=", 1)[0]
    if not written.startswith("--"):
        return written if written in managed else ""
    if written == "--":
        return ""
    spelled = "--" + written[2:].replace("_", "-")
    meant = sorted(option for option in managed if option.startswith(spelled))
    if not meant:
        return ""
    return written if meant == [written] else f"{written} (that is {' or '.join(meant)})"


def _attention(env: Mapping[str, str]) -> str:
    raw = env.get("ATTN_IMPLEMENTATION", "").strip()
    if not raw:
        return "auto"
    if HUB_FLASH_KERNEL.fullmatch(raw) or raw.lower() in ATTN_IMPLEMENTATIONS:
        return raw if "/" in raw else raw.lower()
    raise ConfigError(
        "ATTN_IMPLEMENTATION",
        f"must be one of {', '.join(ATTN_IMPLEMENTATIONS)} or a Hub flash kernel such as "
        f"kernels-community/flash-attn2, got {raw!r}",
    )


def _address(env: Mapping[str, str], name: str) -> tuple[str, int] | None:
    """`host:port` (`[::1]:9108` for IPv6; port 0 takes any free one), or None when unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    host, _, port = raw.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if (
        not host
        or any(c.isspace() or c in "/[]" for c in host)
        or not (port.isascii() and port.isdigit())
    ):
        raise ConfigError(name, f"must be host:port, e.g. 127.0.0.1:9108, got {raw!r}")
    return host, check_range(name, int(port), (0, 65535))


def _shard_ids(raw: str, shard_count: int | None) -> tuple[int, ...] | None:
    if not raw:
        return None
    if shard_count is None:
        raise ConfigError("SHARD_IDS", "needs SHARD_COUNT (the total over every process)")
    try:
        ids = tuple(sorted({int(part) for part in raw.split(",") if part.strip()}))
    except ValueError:
        raise ConfigError("SHARD_IDS", f"must be comma-separated numbers, got {raw!r}") from None
    if not ids or ids[0] < 0 or ids[-1] >= shard_count:
        raise ConfigError("SHARD_IDS", f"must be between 0 and {shard_count - 1}, got {raw!r}")
    return ids


#: The asynchronous drivers SQLAlchemy can run the bot on, and the one to suggest first.
ASYNC_DRIVERS = MappingProxyType(
    {
        "sqlite": ("aiosqlite",),
        "postgresql": ("asyncpg", "psycopg"),
        "mysql": ("aiomysql", "asyncmy"),
    }
)


def _check_async_driver(database_url: str) -> None:
    """The bot is asynchronous: `postgresql://` (psycopg2) or `mysql://` would block it, and
    SQLAlchemy would only fail on first use with a long traceback."""
    scheme = database_url.split("://", 1)[0].lower()
    dialect, _, driver = scheme.partition("+")
    drivers = ASYNC_DRIVERS.get(dialect)
    if drivers is None:
        known = ", ".join(f"{name}+{options[0]}://" for name, options in ASYNC_DRIVERS.items())
        raise ConfigError("DATABASE_URL", f"unsupported database {dialect!r} (use {known})")
    if driver not in drivers:
        raise ConfigError(
            "DATABASE_URL",
            f"{scheme}:// is not an asynchronous driver: use {dialect}+{drivers[0]}://...",
        )


#: The numbers a context window and a reply length may be, wherever they are set (.env,
#: command-line flags, /config).
CONTEXT_SIZE_RANGE = (512, 32768)
MAX_NEW_TOKENS_RANGE = (1, 4096)
#: How many messages from the end an author's note may go.
AUTHOR_NOTE_DEPTH_RANGE = (0, 50)


def check_range(name: str, value: int, bounds: tuple[int, int]) -> int:
    """`value`, or a ConfigError naming `name` that reads the same for every setting."""
    low, high = bounds
    if not low <= value <= high:
        raise ConfigError(name, f"must be between {low} and {high}, got {value}")
    return value


#: The settings file read when none is named.
DEFAULT_ENV_FILE = ".env"


def load_settings(*, env_file: str | Path | None = None, require_token: bool = True) -> Settings:
    """Read the settings file (without overriding the real environment) and validate
    everything. Without `env_file`, `.env` is read when there is one; a file named on purpose
    must exist."""
    from dotenv import dotenv_values

    merged: dict[str, str] = {}
    path = Path(env_file if env_file is not None else DEFAULT_ENV_FILE)
    if env_file is not None and not path.is_file():
        raise ConfigError("--env-file", f"no such file: {env_file}")
    if path.is_file():
        merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update(os.environ)
    return settings_from_env(merged, require_token=require_token)


def sqlite_path(database_url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other databases and in-memory SQLite."""
    if not database_url.startswith("sqlite"):
        return None
    _, _, rest = database_url.partition(":///")
    rest = rest.split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest)


#: The text log's line: time, level, logger, message.
TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: transformers' continuous batching logs through this logger, with a handler and a format of
#: its own that it adds on import unless the logger already stopped propagating.
CB_LOGGER = "ContinuousBatchingLogger"


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, and exception
    (the traceback as text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        exception = record.exc_text
        if not exception and record.exc_info:
            exception = self.formatException(record.exc_info)
        if record.stack_info:
            exception = "\n".join(filter(None, (exception, self.formatStack(record.stack_info))))
        if exception:
            entry["exception"] = exception
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    """Log to stderr at LOG_LEVEL in LOG_FORMAT, masking secrets and webhook tokens in every
    record, every library's loggers in the same format; no progress bars unless stderr is a
    terminal (in a journal or a log file they are lines of control characters)."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_LOG_FORMAT))
    handler.addFilter(SecretFilter(settings.secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # At DEBUG these log every request's URL, and a webhook's URL holds its token.
    for name in ("discord.http", "discord.webhook.async_", "discord.webhook.sync"):
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
    # Alembic narrates every plugin and step at INFO; the bot logs the outcome itself.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    # The bot has no voice: discord.py's "PyNaCl/davey is not installed" warnings mean nothing.
    logging.getLogger("discord.client").addFilter(_without_voice_notices)
    # transformers writes through a handler of its own, in another format: send its lines
    # through ours instead (masked, one format), warnings and worse unless debugging.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()  # type: ignore[no-untyped-call]
    hf_logging.enable_propagation()  # type: ignore[no-untyped-call]
    logging.getLogger("transformers").setLevel(max(logging.WARNING, root.level))
    # Its continuous batching logs outside the "transformers" tree: give that logger our
    # handler in place of its own. Set before transformers imports it, the logger keeps ours.
    batching = logging.getLogger(CB_LOGGER)
    batching.handlers[:] = [handler]
    batching.propagate = False
    batching.setLevel(max(logging.WARNING, root.level))
    if not sys.stderr.isatty():
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _without_voice_notices(record: logging.LogRecord) -> bool:
    return "voice will NOT be supported" not in record.getMessage()


#: `/webhooks/<id>/<token>`: the token lets anyone post as the webhook (as a character), and an
#: interaction's token (`/webhooks/<application id>/<token>`, `/interactions/<id>/<token>`)
#: lets anyone answer for the bot while it is valid.
WEBHOOK_TOKEN = re.compile(r"(/(?:webhooks|interactions)/\d+/)[^/?#\s'\"<>]+")
#: The same tokens as payload fields (`'token': '...'`), as discord.py logs gateway events and
#: API answers at DEBUG.
TOKEN_FIELD = re.compile(r"""(['"]token['"]\s*:\s*['"])[^'"]+""")


class SecretFilter(logging.Filter):
    """Replace secrets and webhook tokens in log messages and tracebacks with ***."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if len(s) >= 4)

    def _mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return TOKEN_FIELD.sub(r"\1***", WEBHOOK_TOKEN.sub(r"\1***", text))

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = self._mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = self._mask(text), None
        elif record.exc_text:
            record.exc_text = self._mask(record.exc_text)
        return True
