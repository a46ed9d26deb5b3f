"""A message of a scene's history as the prompt builder and recall read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["user", "assistant"]


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
