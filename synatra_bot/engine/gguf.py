"""Where the managed llama.cpp engine's GGUF comes from: a local file, or a file of a model hub
repository, downloaded once into the hub's cache.

`MODEL_GGUF` is either a path (`models/synatra.Q4_K_M.gguf`, `/srv/x.gguf`) or
`owner/repo/file.gguf` (the repository's first two parts, then the file's path inside it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from synatra_bot.errors import ConfigError

SETTING = "MODEL_GGUF"
#: The first bytes of every GGUF file.
MAGIC = b"GGUF"
#: A hub repository's id, as the hub accepts it.
HUB_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
#: Seconds to wait for the model hub before saying it cannot be reached.
HUB_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class GgufSource:
    """A local file (`repo` empty) or `filename` in hub repository `repo`."""

    filename: str
    repo: str = ""

    def __str__(self) -> str:
        return f"{self.repo}/{self.filename}" if self.repo else self.filename


def parse_gguf_source(raw: str) -> GgufSource:
    """Check `raw` as MODEL_GGUF: a local file must exist and be a GGUF; a hub file must be
    `owner/repo/file.gguf`. Raises ConfigError in one line."""
    if not raw.lower().endswith(".gguf"):
        raise ConfigError(SETTING, f"must name a .gguf file, got {raw!r}")
    path = Path(raw).expanduser()
    local = path.exists() or raw.startswith(("/", ".", "~")) or raw.count("/") < 2
    if not local:
        owner, name, filename = raw.split("/", 2)
        if not HUB_REPO.fullmatch(f"{owner}/{name}") or not filename:
            raise ConfigError(
                SETTING,
                f"must be a file or owner/repo/file.gguf (the hub's names are letters, digits, "
                f"'-', '_' and '.'), got {raw!r}",
            )
        return GgufSource(filename, repo=f"{owner}/{name}")
    if not path.is_file():
        raise ConfigError(SETTING, f"no such file: {raw} (or give owner/repo/file.gguf)")
    try:
        with path.open("rb") as file:
            magic = file.read(len(MAGIC))
    except OSError as error:
        raise ConfigError(SETTING, f"cannot read {raw} ({error.strerror})") from None
    if magic != MAGIC:
        raise ConfigError(SETTING, f"{raw} is not a GGUF file")
    return GgufSource(str(path))


def fetch_gguf(source: GgufSource) -> Path:
    """The local path of `source`, downloading a hub file into the hub's cache first (found
    there without the network the next time). Raises ConfigError in one line."""
    if not source.repo:
        return Path(source.filename)
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(source.repo, source.filename)
    if isinstance(cached, str):
        return Path(cached)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        HfApi().model_info(source.repo, timeout=HUB_TIMEOUT_S)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        problem = f"the model hub has no model {source.repo} (HTTP {status})"
        raise ConfigError(SETTING, problem) from None
    except Exception as exc:  # the hub client's connect/timeout errors are its own types
        raise ConfigError(
            SETTING,
            f"{source} could not be downloaded: the model hub cannot be reached "
            f"({type(exc).__name__}). Download the file on a machine with network and set "
            "MODEL_GGUF to its path",
        ) from None
    try:
        return Path(hf_hub_download(source.repo, source.filename))
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise ConfigError(
            SETTING, f"the model hub has no file {source.filename} in {source.repo} (HTTP {status})"
        ) from None
    except OSError as exc:
        raise ConfigError(SETTING, f"{source} could not be downloaded ({exc})") from None
