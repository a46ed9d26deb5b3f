"""What each character knows about each player, within one server (or one player's DM).

Facts come from the memory job (it reads the turns a prompt dropped and notes what the players
said about themselves), from pins (a player pinning their own line: a pin of someone else's
line says nothing about them), and from the players, who see, edit and delete their own.
`PlayerFacts.remember_fact` is the one way in for the first two. The prompt of a character's
reply holds what that character knows about the player of the newest line
(`PlayerFacts.block`), once that player has spoken in the scene before it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from synatra_bot.errors import NotFound, UserFacingError
from synatra_bot.prompt.history import HistoryMessage
from synatra_bot.prompt.player_facts import (
    FACTS_PER_CHARACTER,
    FACTS_PIECE_TOKENS,
    MAX_FACT_CHARS,
    FactNote,
    FactsBlock,
    facts_block,
)
from synatra_bot.roleplay.ttl_cache import TtlCache
from synatra_bot.storage import player_facts as stored
from synatra_bot.storage.records import PinRecord, PlayerFactRecord
from synatra_bot.storage.repository import Sessions

#: (server or None for a DM, player, character): a cache key of one character's facts.
_Owner = tuple[int | None, int, int]


def fact_text(text: str) -> str:
    """A fact as it is kept: one line, at most `MAX_FACT_CHARS` characters."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_FACT_CHARS else line[: MAX_FACT_CHARS - 1] + "…"


class PlayerFacts:
    """Keeps what characters know about players; every call names the server (None: the
    player's DM) and the player, so nothing crosses servers, DMs or players."""

    def __init__(
        self,
        sessions: Sessions,
        *,
        ttl_s: float,
        limit: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self._facts: TtlCache[_Owner, list[PlayerFactRecord]] = TtlCache(
            ttl_s=ttl_s, limit=limit, clock=clock
        )
        #: (scene, player) known to have spoken in the scene (a line is never taken back
        #: far enough to matter: an undo removes the newest).
        self._spoken: set[tuple[int, int]] = set()
        self._limit = limit

    async def remember_fact(
        self,
        guild_id: int | None,
        user_id: int,
        character_id: int,
        text: str,
        source: str,
        turn_id: int | None = None,
    ) -> PlayerFactRecord | None:
        """Keep that the character `character_id` knows `text` about the player `user_id` in
        the server `guild_id` (None: the player's DM with the bot). `source` is "summary",
        "pin" or "player"; `turn_id` the stored turn it came from. None when it is already
        known, or the player's facts are full of their own (`FACTS_PER_CHARACTER`)."""
        line = fact_text(text)
        if not line:
            raise ValueError("a fact has text")
        fact = await stored.add_fact(
            self.sessions,
            guild_id=guild_id,
            user_id=user_id,
            character_id=character_id,
            text=line,
            source=source,
            message_id=turn_id,
            cap=FACTS_PER_CHARACTER,
        )
        self._facts.drop((guild_id, user_id, character_id))
        return fact

    async def pin_changed(self, guild_id: int | None, pin: PinRecord, new_text: str | None) -> None:
        """The facts `pin` made (about its author, who pinned their own line) take the pin's
        `new_text`, or are forgotten with None (the pin was removed, or someone else rewrote
        it)."""
        if pin.message_id is None:
            return
        changed = await stored.pin_facts_changed(
            self.sessions,
            guild_id=guild_id,
            user_id=pin.author_id,
            message_id=pin.message_id,
            text=fact_text(pin.text),
            new_text=fact_text(new_text) if new_text is not None else None,
        )
        if changed:
            self._facts.clear()

    async def facts(
        self, guild_id: int | None, user_id: int, character_id: int | None = None
    ) -> list[PlayerFactRecord]:
        """The player's facts here (of one character, or of all by character)."""
        if character_id is None:
            return await stored.facts_of(self.sessions, guild_id=guild_id, user_id=user_id)

        async def load() -> list[PlayerFactRecord]:
            return await stored.facts_of(
                self.sessions, guild_id=guild_id, user_id=user_id, character_id=character_id
            )

        return await self._facts.get((guild_id, user_id, character_id), load)

    async def edit(
        self, guild_id: int | None, user_id: int, fact_id: int, text: str
    ) -> PlayerFactRecord:
        """The player's own fact with new text; NotFound when they have none of that id here."""
        line = fact_text(text)
        if not line:
            raise UserFacingError("a fact needs text", key="facts.empty")
        fact = await stored.edit_fact(
            self.sessions, guild_id=guild_id, user_id=user_id, fact_id=fact_id, text=line
        )
        if fact is None:
            raise NotFound(f"no fact #{fact_id} of yours here", key="facts.not_found", id=fact_id)
        self._facts.clear()
        return fact

    async def delete(
        self,
        guild_id: int | None,
        user_id: int,
        *,
        fact_id: int | None = None,
        character_id: int | None = None,
    ) -> int:
        """Delete the player's fact `fact_id` here, or all of `character_id`'s; how many."""
        deleted = await stored.delete_facts(
            self.sessions,
            guild_id=guild_id,
            user_id=user_id,
            fact_id=fact_id,
            character_id=character_id,
        )
        self._facts.clear()
        return deleted

    async def block(
        self,
        *,
        session_id: int,
        guild_id: int | None,
        history: Sequence[HistoryMessage],
        character_id: int,
        character: str,
        players: dict[int, str],
        budget: int,
        count: Callable[[str], int],
    ) -> FactsBlock | None:
        """What `character` knows about the player of the newest line of `history`, within
        `budget` tokens; None on that player's first line in the scene, or when it knows
        nothing. `players` names the scene's players by id."""
        if budget <= FACTS_PIECE_TOKENS:
            return None
        line = next((m for m in reversed(history) if m.role == "user"), None)
        if line is None or line.author_id is None or line.message_id is None:
            return None
        author = line.author_id
        if not await self._spoke_before(session_id, author, line.message_id, history):
            return None
        facts = await self.facts(guild_id, author, character_id)
        if not facts:
            return None
        block = facts_block(
            [FactNote(f.id, f.text, f.source) for f in facts],
            player=players.get(author, line.name),
            character=character,
            budget=budget,
            count=count,
        )
        return dataclasses.replace(block, player_id=author) if block is not None else None

    async def _spoke_before(
        self, session_id: int, author: int, line_id: int, history: Sequence[HistoryMessage]
    ) -> bool:
        if (session_id, author) in self._spoken:
            return True
        spoke = any(
            m.role == "user"
            and m.author_id == author
            and m.message_id is not None
            and m.message_id < line_id
            for m in history
        ) or await stored.spoke_before(
            self.sessions, session_id=session_id, user_id=author, before_id=line_id
        )
        if spoke:
            if len(self._spoken) >= self._limit:
                self._spoken.clear()
            self._spoken.add((session_id, author))
        return spoke
