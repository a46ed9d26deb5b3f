"""Storage of what characters know about players (`roleplay.player_facts`).

Facts are kept per player and per character within one server (`guild_id` NULL: the player's
DM with the bot); every read and change names all three, so a fact is never seen or changed
from another server, another player's DM or by another player.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, case, delete, func, select

from synatra_bot.storage.models import Message, PlayerFact
from synatra_bot.storage.records import PlayerFactRecord, snapshot
from synatra_bot.storage.repository import Sessions, one_at_a_time

#: Where a fact came from, in the order they make room when a player's facts are full: the
#: memory job's first, then pins; the player's own are never dropped to make room.
SOURCES = ("summary", "pin", "player")


def _owned(guild_id: int | None, user_id: int) -> tuple[ColumnElement[bool], ...]:
    place = PlayerFact.guild_id.is_(None) if guild_id is None else PlayerFact.guild_id == guild_id
    return (place, PlayerFact.user_id == user_id)


async def add_fact(
    sessions: Sessions,
    *,
    guild_id: int | None,
    user_id: int,
    character_id: int,
    text: str,
    source: str,
    message_id: int | None,
    cap: int,
) -> PlayerFactRecord | None:
    """Store a fact; None when the character already knows it, or `cap` facts are kept and
    none of them may make room (the oldest memory-job fact goes first, then the oldest pin;
    the player's own stay). Looking and adding are one transaction, held against another
    fact of the same player here (two scenes may fold at once)."""
    if source not in SOURCES:
        raise ValueError(f"unknown fact source {source!r}")
    where = (*_owned(guild_id, user_id), PlayerFact.character_id == character_id)
    async with sessions.begin() as session:
        await one_at_a_time(session, f"player_facts:{guild_id}", user_id)
        same = await session.scalar(select(PlayerFact.id).where(*where, PlayerFact.text == text))
        if same is not None:
            return None
        kept = await session.scalar(select(func.count()).select_from(PlayerFact).where(*where))
        excess = (kept or 0) - cap + 1
        if excess > 0:
            rank = case({"summary": 0, "pin": 1}, value=PlayerFact.source, else_=2)
            removable = (
                await session.scalars(
                    select(PlayerFact.id)
                    .where(*where, PlayerFact.source != "player")
                    .order_by(rank, PlayerFact.id)
                    .limit(excess)
                )
            ).all()
            if len(removable) < excess:
                return None
            await session.execute(delete(PlayerFact).where(PlayerFact.id.in_(removable)))
        row = PlayerFact(
            guild_id=guild_id,
            user_id=user_id,
            character_id=character_id,
            text=text,
            source=source,
            message_id=message_id,
        )
        session.add(row)
        await session.flush()
        return snapshot(PlayerFactRecord, row)


async def facts_of(
    sessions: Sessions, *, guild_id: int | None, user_id: int, character_id: int | None = None
) -> list[PlayerFactRecord]:
    """The player's facts here, of one character or of all (by character, oldest first)."""
    query = select(PlayerFact).where(*_owned(guild_id, user_id))
    if character_id is not None:
        query = query.where(PlayerFact.character_id == character_id)
    async with sessions() as session:
        rows = await session.scalars(query.order_by(PlayerFact.character_id, PlayerFact.id))
        return [snapshot(PlayerFactRecord, row) for row in rows]


async def edit_fact(
    sessions: Sessions, *, guild_id: int | None, user_id: int, fact_id: int, text: str
) -> PlayerFactRecord | None:
    """The player's own fact here with its new text (it becomes theirs: "player"); None when
    they have no such fact here."""
    async with sessions.begin() as session:
        row = await session.scalar(
            select(PlayerFact).where(*_owned(guild_id, user_id), PlayerFact.id == fact_id)
        )
        if row is None:
            return None
        row.text, row.source = text, "player"
        await session.flush()
        return snapshot(PlayerFactRecord, row)


async def delete_facts(
    sessions: Sessions,
    *,
    guild_id: int | None,
    user_id: int,
    fact_id: int | None = None,
    character_id: int | None = None,
) -> int:
    """Delete the player's fact `fact_id` here, or all they have of `character_id`; how many."""
    if fact_id is None and character_id is None:
        raise ValueError("name a fact or a character")
    query = delete(PlayerFact).where(*_owned(guild_id, user_id))
    if fact_id is not None:
        query = query.where(PlayerFact.id == fact_id)
    if character_id is not None:
        query = query.where(PlayerFact.character_id == character_id)
    async with sessions.begin() as session:
        result = await session.execute(query)
        return int(result.rowcount)  # type: ignore[attr-defined]


async def pin_facts_changed(
    sessions: Sessions,
    *,
    guild_id: int | None,
    user_id: int,
    message_id: int,
    text: str,
    new_text: str | None,
) -> int:
    """The facts a pin made (source "pin", its turn `message_id` and its `text`) follow it: they
    take `new_text`, or go with None (where a character already knows `new_text`, its copy
    goes). How many changed. A fact the player has made their own since is not touched."""
    where = (
        *_owned(guild_id, user_id),
        PlayerFact.source == "pin",
        PlayerFact.message_id == message_id,
        PlayerFact.text == text,
    )
    async with sessions.begin() as session:
        await one_at_a_time(session, f"player_facts:{guild_id}", user_id)
        rows = (await session.scalars(select(PlayerFact).where(*where))).all()
        for row in rows:
            known = new_text is not None and await session.scalar(
                select(PlayerFact.id).where(
                    *_owned(guild_id, user_id),
                    PlayerFact.character_id == row.character_id,
                    PlayerFact.text == new_text,
                    PlayerFact.id != row.id,
                )
            )
            if new_text is None or known:
                await session.delete(row)
            else:
                row.text = new_text
        return len(rows)


async def spoke_before(
    sessions: Sessions, *, session_id: int, user_id: int, before_id: int
) -> bool:
    """Whether the player has a line in the scene older than `before_id`."""
    query = (
        select(Message.id)
        .where(
            Message.session_id == session_id,
            Message.author_id == user_id,
            Message.role == "user",
            Message.chosen,
            ~Message.deleted,
            Message.id < before_id,
        )
        .limit(1)
    )
    async with sessions() as session:
        return await session.scalar(query) is not None
