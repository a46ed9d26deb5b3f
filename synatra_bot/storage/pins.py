"""Storage of the lines players pin into a scene's memory (`roleplay.pins`).

Like `repository`, each function is one unit of work, takes the session factory first and
keyword-only arguments after it, and hands back immutable records.
"""

from __future__ import annotations

from sqlalchemy import delete, func, select

from synatra_bot.errors import PinLimitReached
from synatra_bot.storage.models import Message, ScenePin
from synatra_bot.storage.records import PinRecord, snapshot
from synatra_bot.storage.repository import Sessions, one_at_a_time


async def scene_pins(sessions: Sessions, *, session_id: int) -> list[PinRecord]:
    """The scene's pins, oldest first."""
    query = select(ScenePin).where(ScenePin.session_id == session_id).order_by(ScenePin.id)
    async with sessions() as session:
        return [snapshot(PinRecord, row) for row in (await session.scalars(query)).all()]


async def add_pin(
    sessions: Sessions,
    *,
    session_id: int,
    author_id: int,
    text: str,
    message_id: int | None,
    limit: int,
) -> PinRecord:
    """Pin `text` into the scene; raises PinLimitReached (nothing stored) when the scene
    already holds `limit` pins. Counting and adding are one transaction, held against
    another pin of the same scene."""
    async with sessions.begin() as session:
        await one_at_a_time(session, "scene_pins", session_id)
        held = await session.scalar(
            select(func.count()).select_from(ScenePin).where(ScenePin.session_id == session_id)
        )
        if (held or 0) >= limit:
            raise PinLimitReached(limit)
        row = ScenePin(session_id=session_id, author_id=author_id, text=text, message_id=message_id)
        session.add(row)
        await session.flush()
        return snapshot(PinRecord, row)


async def set_pin_text(
    sessions: Sessions, *, session_id: int, pin_id: int, text: str
) -> PinRecord | None:
    """Change a pin's text; None when the scene has no such pin."""
    async with sessions.begin() as session:
        row = await session.get(ScenePin, pin_id)
        if row is None or row.session_id != session_id:
            return None
        row.text = text
        await session.flush()
        return snapshot(PinRecord, row)


async def remove_pin(sessions: Sessions, *, session_id: int, pin_id: int) -> PinRecord | None:
    """Unpin; the pin as it was, or None when the scene has no such pin."""
    async with sessions.begin() as session:
        row = await session.get(ScenePin, pin_id)
        if row is None or row.session_id != session_id:
            return None
        gone = snapshot(PinRecord, row)
        await session.execute(delete(ScenePin).where(ScenePin.id == pin_id))
        return gone


async def has_spoken(sessions: Sessions, *, session_id: int, user_id: int) -> bool:
    """Whether `user_id` wrote a turn of the scene (is one of its players)."""
    query = (
        select(Message.id)
        .where(Message.session_id == session_id, Message.author_id == user_id)
        .where(Message.role == "user")
        .limit(1)
    )
    async with sessions() as session:
        return await session.scalar(query) is not None
