"""What `MODEL_GGUF` names: a local GGUF file, or a file of a model hub repository.

The setting is checked here, below both the settings and the engine that downloads it
(`engine.gguf`): `owner/repo/file.gguf` (the repository's first two parts, then the file's path
inside it) or a path to a file that starts as every GGUF does.
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
