"""Replies on screen that are not finished yet: written before a reply's first message is
posted, updated as it is posted and stored, removed once its final text is shown. What a
process leaves behind when it dies is finished by the next one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select, update

from synatra_bot.storage.models import OpenReply
from synatra_bot.storage.records import OpenReplyRecord, snapshot
from synatra_bot.storage.repository import Sessions


async def open_reply(
    sessions: Sessions,
    *,
    guild_id: int | None,
    channel_id: int,
    parent_channel_id: int | None,
    webhook_id: int | None,
    session_id: int | None,
    kind: str,
    discord_message_ids: Iterable[int] = (),
) -> OpenReplyRecord:
    """Record a reply about to be posted (or, replacing one, posted in `discord_message_ids`)."""
    async with sessions.begin() as session:
        row = OpenReply(
            guild_id=guild_id,
            channel_id=channel_id,
            parent_channel_id=parent_channel_id,
            webhook_id=webhook_id,
            session_id=session_id,
            kind=kind,
            discord_message_ids=list(discord_message_ids),
        )
        session.add(row)
        await session.flush()
        return snapshot(OpenReplyRecord, row)


async def update_open_reply(sessions: Sessions, *, reply_id: int, **changes: Any) -> None:
    """Change what is known of an open reply: its `discord_message_ids`, its `webhook_id`
    (a deleted webhook was made again)."""
    allowed = {"discord_message_ids", "webhook_id"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"cannot change {', '.join(sorted(unknown))} of an open reply")
    if "discord_message_ids" in changes:
        changes["discord_message_ids"] = list(changes["discord_message_ids"])
    async with sessions.begin() as session:
        await session.execute(update(OpenReply).where(OpenReply.id == reply_id).values(**changes))


async def close_open_reply(sessions: Sessions, *, reply_id: int) -> None:
    """The reply's final text is on screen: forget it."""
    async with sessions.begin() as session:
        await session.execute(delete(OpenReply).where(OpenReply.id == reply_id))


async def open_replies(
    sessions: Sessions, *, ids: Iterable[int] | None = None
) -> list[OpenReplyRecord]:
    """Every open reply (or those of `ids` still open), oldest first."""
    query = select(OpenReply).order_by(OpenReply.id)
    if ids is not None:
        query = query.where(OpenReply.id.in_(list(ids)))
    async with sessions() as session:
        rows = (await session.scalars(query)).all()
        return [snapshot(OpenReplyRecord, row) for row in rows]
