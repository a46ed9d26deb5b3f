"""A message of a scene's history as the prompt builder and recall read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["user", "assistant"]
#: The longest speaker name a prompt shows.
MAX_NAME_CHARS = 64


def clean_name(name: str, fallback: str = "User") -> str:
    """A speaker name on one line, bounded in length."""
    cleaned = " ".join(name.split())[:MAX_NAME_CHARS]
    return cleaned or fallback


@dataclass(frozen=True)
class HistoryMessage:
    role: Role
    name: str
    content: str
    token_count: int | None = None
    message_id: int | None = None
    #: The player who wrote a user message (matches ScenePlayer.author_id).
    author_id: int | None = None
    #: A line of a speaker outside the cast (an imported chat's guest): shown with its name.
    guest: bool = False
