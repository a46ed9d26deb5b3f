"""What the model was last shown in each scene: the prompt sent for its newest reply.

Kept in memory for the newest scenes only (a restart forgets them, and the inspector says so):
the prompt's exact text, compressed (a 32k-token Korean prompt is a few hundred kB as text and
much less compressed), and the builder's report of its blocks.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synatra_bot.prompt.builder import BuiltPrompt
    from synatra_bot.prompt.report import PromptReport

#: Scenes whose last prompt is kept; the one longest without a reply is forgotten first.
SCENES_KEPT = 256


@dataclass(frozen=True)
class SentPrompt:
    """One prompt as it went to the engine."""

    report: PromptReport
    token_count: int
    #: Who the reply was for: a character's name, or a player's for a suggestion.
    speaker: str
    #: "reply", "regenerate", "continue" or "suggest".
    kind: str
    sent_at: datetime
    _text: bytes

    @property
    def text(self) -> str:
        """The whole prompt, special tokens included, exactly as its ids read."""
        return zlib.decompress(self._text).decode()


class SentPrompts:
    """The last prompt sent for each of the newest scenes, by session id."""

    def __init__(self, limit: int = SCENES_KEPT) -> None:
        self._limit = limit
        self._by_session: OrderedDict[int, SentPrompt] = OrderedDict()

    def record(self, session_id: int, built: BuiltPrompt, *, speaker: str, kind: str) -> None:
        self._by_session.pop(session_id, None)
        self._by_session[session_id] = SentPrompt(
            report=built.report,
            token_count=built.token_count,
            speaker=speaker,
            kind=kind,
            sent_at=datetime.now(UTC),
            _text=zlib.compress(built.text.encode(), 1),
        )
        while len(self._by_session) > self._limit:
            self._by_session.popitem(last=False)

    def last(self, session_id: int) -> SentPrompt | None:
        """The prompt sent for the scene's newest reply since the process started, if any."""
        return self._by_session.get(session_id)
