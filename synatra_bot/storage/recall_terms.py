"""Storage of the turns' search terms, for recalling old turns (`roleplay.recall`).

Every turn a player or a character wrote (deleted and unchosen ones too: a turn can be chosen
or restored again) gets one `message_terms` row when it is indexed. A search reads the rows of
one scene once; the turns it recalls are read back by id, and only the ones the history still
shows are used, so an undo, a delete or another swipe chosen is never recalled.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, insert, select

from synatra_bot.storage.models import ChannelSettings, Message, MessageTerms
from synatra_bot.storage.records import MessageRecord
from synatra_bot.storage.repository import MESSAGES, Sessions

#: Roles whose turns are indexed (a system line is never recalled).
INDEXED_ROLES = ("user", "assistant")


async def scene_terms(
    sessions: Sessions, *, session_id: int, after_id: int = 0, limit: int | None = None
) -> list[tuple[int, str]]:
    """(turn id, its terms) of the scene's indexed turns after `after_id`, oldest first, at
    most `limit` of them (None: all)."""
    query = (
        select(MessageTerms.message_id, MessageTerms.terms)
        .join(Message, Message.id == MessageTerms.message_id)
        .where(Message.session_id == session_id, MessageTerms.message_id > after_id)
        .order_by(MessageTerms.message_id)
        .limit(limit)
    )
    async with sessions() as session:
        return [(int(i), str(t)) for i, t in (await session.execute(query)).all()]


async def unindexed_turns(
    sessions: Sessions, *, session_id: int, limit: int
) -> list[tuple[int, str]]:
    """(turn id, its text) of the oldest `limit` turns of the scene without terms."""
    query = (
        select(Message.id, Message.content)
        .outerjoin(MessageTerms, MessageTerms.message_id == Message.id)
        .where(
            Message.session_id == session_id,
            Message.role.in_(INDEXED_ROLES),
            MessageTerms.message_id.is_(None),
        )
        .order_by(Message.id)
        .limit(limit)
    )
    async with sessions() as session:
        return [(int(i), str(c)) for i, c in (await session.execute(query)).all()]


async def store_terms(sessions: Sessions, *, rows: Sequence[tuple[int, str]]) -> None:
    """Store each turn's terms (replacing what a turn had)."""
    if not rows:
        return
    ids = [message_id for message_id, _ in rows]
    async with sessions() as session, session.begin():
        await session.execute(delete(MessageTerms).where(MessageTerms.message_id.in_(ids)))
        await session.execute(
            insert(MessageTerms), [{"message_id": i, "terms": t} for i, t in rows]
        )


async def forget_terms(sessions: Sessions, *, session_id: int, from_id: int) -> None:
    """Drop the terms of the scene's turns from `from_id` on: they are indexed again."""
    turns = select(Message.id).where(Message.session_id == session_id, Message.id >= from_id)
    async with sessions() as session, session.begin():
        await session.execute(delete(MessageTerms).where(MessageTerms.message_id.in_(turns)))


async def shown_turns(sessions: Sessions, *, message_ids: Sequence[int]) -> list[MessageRecord]:
    """Those of the turns that the history still shows (chosen and not deleted)."""
    if not message_ids:
        return []
    columns = MESSAGES.c
    query = select(MESSAGES).where(
        columns.id.in_(list(message_ids)), columns.chosen, ~columns.deleted
    )
    async with sessions() as session:
        rows = (await session.execute(query)).all()
    return [MessageRecord(**row._mapping) for row in rows]


async def scenes_to_index(sessions: Sessions, *, min_turns: int) -> list[int]:
    """The running scenes with at least `min_turns` turns, some of them without terms: what
    is indexed in the background after an upgrade (a shorter scene is indexed once its prompt
    first leaves turns behind)."""
    running = select(ChannelSettings.active_session_id).where(
        ChannelSettings.active_session_id.is_not(None)
    )
    unindexed = func.count(Message.id) - func.count(MessageTerms.message_id)
    query = (
        select(Message.session_id)
        .outerjoin(MessageTerms, MessageTerms.message_id == Message.id)
        .where(Message.session_id.in_(running), Message.role.in_(INDEXED_ROLES))
        .group_by(Message.session_id)
        .having(func.count(Message.id) >= min_turns, unindexed > 0)
        .order_by(Message.session_id)
    )
    async with sessions() as session:
        return [int(i) for i in (await session.scalars(query)).all()]
