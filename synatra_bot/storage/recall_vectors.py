"""Storage of the turns' embeddings, for recalling old turns by meaning
(`roleplay.embedded_recall`).

Like the turns' search terms (`storage.recall_terms`), every turn a player or a character
wrote gets at most one `message_vectors` row, under the model that made it; a change to a
turn drops the rows from it on, and a turn deleted from the database takes its row along.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, delete, func, insert, or_, select

from synatra_bot.storage.models import ChannelSettings, Message, MessageVector
from synatra_bot.storage.recall_terms import INDEXED_ROLES
from synatra_bot.storage.repository import Sessions


def _without_vector(model: str) -> ColumnElement[bool]:
    """A turn with no vector from `model` (none at all, or another model's)."""
    return or_(MessageVector.message_id.is_(None), MessageVector.model != model)


async def scene_vectors(
    sessions: Sessions, *, session_id: int, model: str, after_id: int = 0, limit: int | None = None
) -> list[tuple[int, bytes]]:
    """(turn id, its vector) of the scene's turns embedded by `model` after `after_id`, oldest
    first, at most `limit` of them (None: all)."""
    query = (
        select(MessageVector.message_id, MessageVector.vector)
        .join(Message, Message.id == MessageVector.message_id)
        .where(
            Message.session_id == session_id,
            MessageVector.model == model,
            MessageVector.message_id > after_id,
        )
        .order_by(MessageVector.message_id)
        .limit(limit)
    )
    async with sessions() as session:
        return [(int(i), bytes(v)) for i, v in (await session.execute(query)).all()]


async def unembedded_turns(
    sessions: Sessions, *, session_id: int, model: str, limit: int
) -> list[tuple[int, str]]:
    """(turn id, its text) of the oldest `limit` turns of the scene without a vector from
    `model`."""
    query = (
        select(Message.id, Message.content)
        .outerjoin(MessageVector, MessageVector.message_id == Message.id)
        .where(
            Message.session_id == session_id,
            Message.role.in_(INDEXED_ROLES),
            _without_vector(model),
        )
        .order_by(Message.id)
        .limit(limit)
    )
    async with sessions() as session:
        return [(int(i), str(c)) for i, c in (await session.execute(query)).all()]


async def store_vectors(
    sessions: Sessions, *, model: str, rows: Sequence[tuple[int, bytes]]
) -> None:
    """Store each turn's vector from `model` (replacing what a turn had)."""
    if not rows:
        return
    ids = [message_id for message_id, _ in rows]
    async with sessions() as session, session.begin():
        # A turn deleted meanwhile has no row to point at: leave it out.
        present = set((await session.scalars(select(Message.id).where(Message.id.in_(ids)))).all())
        await session.execute(delete(MessageVector).where(MessageVector.message_id.in_(ids)))
        kept = [{"message_id": i, "model": model, "vector": v} for i, v in rows if i in present]
        if kept:
            await session.execute(insert(MessageVector), kept)


async def forget_vectors(sessions: Sessions, *, session_id: int, from_id: int) -> None:
    """Drop the vectors of the scene's turns from `from_id` on: they are embedded again."""
    turns = select(Message.id).where(Message.session_id == session_id, Message.id >= from_id)
    async with sessions() as session, session.begin():
        await session.execute(delete(MessageVector).where(MessageVector.message_id.in_(turns)))


async def scenes_to_embed(sessions: Sessions, *, model: str, min_turns: int) -> list[int]:
    """The running scenes with at least `min_turns` turns, some of them without a vector from
    `model`: what is embedded in the background once a host configures (or changes) the
    embeddings server."""
    running = select(ChannelSettings.active_session_id).where(
        ChannelSettings.active_session_id.is_not(None)
    )
    embedded = func.count(MessageVector.message_id).filter(MessageVector.model == model)
    query = (
        select(Message.session_id)
        .outerjoin(MessageVector, MessageVector.message_id == Message.id)
        .where(Message.session_id.in_(running), Message.role.in_(INDEXED_ROLES))
        .group_by(Message.session_id)
        .having(func.count(Message.id) >= min_turns, func.count(Message.id) > embedded)
        .order_by(Message.session_id)
    )
    async with sessions() as session:
        return [int(i) for i in (await session.scalars(query)).all()]
