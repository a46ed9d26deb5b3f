"""Pins: lines players pin into a scene's memory ("📌 Remember this" on a turn, `/pin` in the
terminal), always in the scene's prompts within their own budget (`prompt.pins`).

A pin belongs to its scene: it is stored (`storage.pins`), so a restart keeps it, and a branch
keeps the pins of the past it shares with its scene (`storage.archives.branch_scene`). Who
may pin: the scene's players (whoever wrote a turn of it), its starter and moderators, with
their voice in the channel; a pin is edited or removed by who pinned it, the scene's starter
or a moderator. A scene holds at most `PIN_LIMIT` pins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from synatra_bot.errors import NotFound, PermissionDenied, UserFacingError
from synatra_bot.prompt.lru import Lru
from synatra_bot.prompt.pins import PIN_LIMIT, PinBlock, pin_block, pin_text
from synatra_bot.roleplay.rules import is_starter_or_moderator, require_voice
from synatra_bot.roleplay.types import Actor
from synatra_bot.storage import pins as store
from synatra_bot.storage import repository as repo
from synatra_bot.storage.records import MessageRecord, PinRecord, SessionRecord
from synatra_bot.storage.repository import Sessions

#: Scenes whose pins are kept in memory (each prompt reads them).
SCENES_KEPT = 64


class ScenePins:
    """The scenes' pins: pinning, editing, removing, and the block each prompt holds."""

    def __init__(self, sessions: Sessions, *, limit: int = PIN_LIMIT) -> None:
        self.sessions = sessions
        self.limit = limit
        self._kept: Lru[int, tuple[PinRecord, ...]] = Lru(SCENES_KEPT)

    async def of(self, session_id: int) -> tuple[PinRecord, ...]:
        """The scene's pins, oldest first."""
        kept = self._kept.get(session_id)
        return kept if kept is not None else await self._read(session_id)

    async def block(
        self, session_id: int, *, budget: int, count: Callable[[str], int]
    ) -> PinBlock | None:
        """The scene's pin block within `budget` tokens (None: no pins, or the budget is 0)."""
        if budget <= 0:
            return None
        pins = await self.of(session_id)
        return pin_block([(p.id, p.text) for p in pins], budget=budget, count=count)

    async def require_may_pin(self, actor: Actor, session: SessionRecord) -> None:
        """Pinning belongs to the scene's players, its starter and moderators."""
        require_voice(actor)
        if is_starter_or_moderator(actor, session):
            return
        if not await store.has_spoken(self.sessions, session_id=session.id, user_id=actor.user_id):
            raise PermissionDenied("only the scene's players may pin", key="error.pin_players")

    async def turn_shown_in(
        self, session: SessionRecord, discord_message_id: int, recent: Sequence[MessageRecord]
    ) -> MessageRecord:
        """The turn of the scene a Discord message shows (any part of a long reply); NotFound
        for a message that is not one of its turns."""
        found = next(
            (m for m in reversed(recent) if discord_message_id in m.discord_message_ids), None
        )
        if found is None:
            found = await repo.find_by_discord_id(
                self.sessions, discord_message_id=discord_message_id
            )
        if (
            found is None
            or found.session_id != session.id
            or found.deleted
            or found.role not in ("user", "assistant")
            or not found.content.strip()
        ):
            raise NotFound("that message is not a turn of this scene", key="error.pin_not_turn")
        return found

    async def pin(
        self, actor: Actor, session: SessionRecord, text: str, *, message_id: int | None = None
    ) -> PinRecord:
        """Pin `text` (one line, cut to the longest a pin may be) into the scene."""
        await self.require_may_pin(actor, session)
        line = _checked(text)
        pinned = await store.add_pin(
            self.sessions,
            session_id=session.id,
            author_id=actor.user_id,
            text=line,
            message_id=message_id,
            limit=self.limit,
        )
        await self._read(session.id)
        return pinned

    async def edit(self, actor: Actor, session: SessionRecord, pin_id: int, text: str) -> PinRecord:
        """Change a pin's text."""
        await self.require_may_change(actor, session, pin_id)
        changed = await store.set_pin_text(
            self.sessions, session_id=session.id, pin_id=pin_id, text=_checked(text)
        )
        if changed is None:
            raise NotFound("no such pin", key="error.no_pin", id=pin_id)
        await self._read(session.id)
        return changed

    async def remove(self, actor: Actor, session: SessionRecord, pin_id: int) -> PinRecord:
        """Unpin."""
        await self.require_may_change(actor, session, pin_id)
        gone = await store.remove_pin(self.sessions, session_id=session.id, pin_id=pin_id)
        if gone is None:
            raise NotFound("no such pin", key="error.no_pin", id=pin_id)
        await self._read(session.id)
        return gone

    async def find(self, session: SessionRecord, pin_id: int) -> PinRecord:
        """One of the scene's pins; NotFound when it has no such pin."""
        found = next((p for p in await self.of(session.id) if p.id == pin_id), None)
        if found is None:
            raise NotFound("no such pin", key="error.no_pin", id=pin_id)
        return found

    async def require_may_change(self, actor: Actor, session: SessionRecord, pin_id: int) -> None:
        """A pin is changed by who pinned it, the scene's starter or a moderator."""
        require_voice(actor)
        pin = await self.find(session, pin_id)
        if pin.author_id != actor.user_id and not is_starter_or_moderator(actor, session):
            raise PermissionDenied("not your pin", key="error.pin_not_yours")

    async def _read(self, session_id: int) -> tuple[PinRecord, ...]:
        """The scene's pins as stored, kept for its next prompts."""
        pins = tuple(await store.scene_pins(self.sessions, session_id=session_id))
        return self._kept.put(session_id, pins)


def _checked(text: str) -> str:
    line = pin_text(text)
    if not line:
        raise UserFacingError("a pin needs some text", key="error.pin_empty")
    return line
