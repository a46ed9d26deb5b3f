"""Where the managed llama.cpp engine's GGUF comes from: a local file, or a file of a model hub
repository, downloaded once into the hub's cache.

`MODEL_GGUF` is either a path (`models/synatra.Q4_K_M.gguf`, `/srv/x.gguf`) or
`owner/repo/file.gguf` (the repository's first two parts, then the file's path inside it).
"""

from __future__ import annotations

from pathlib import Path

from synatra_bot.errors import ConfigError
from synatra_bot.gguf_source import SETTING, GgufSource

#: Seconds to wait for the model hub before saying it cannot be reached.
HUB_TIMEOUT_S = 5.0


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
