"""Replies on screen that are not finished yet: written once a reply's first message is
posted, updated if its messages change, removed once its final text is shown. What a process
leaves behind when it dies is finished by the next one.

Every reply writes here, so the writes are made for group commit (`storage.batching`): the
writes of replies that open, post and end together go in one transaction, in order. An open
reply's id is chosen by the front end (its stop button carries it from the first post on)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update

from synatra_bot.storage.models import OpenReply, utcnow
from synatra_bot.storage.records import OpenReplyRecord, snapshot
from synatra_bot.storage.repository import Sessions


@dataclass(frozen=True, slots=True)
class NewOpenReply:
    id: int
    guild_id: int | None
    channel_id: int
    parent_channel_id: int | None
    webhook_id: int | None
    session_id: int | None
    kind: str
    discord_message_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class OpenReplyChange:
    """What became known of an open reply: its messages and webhook (a deleted webhook made
    again), or, with `close`, that its final text is shown."""

    reply_id: int
    discord_message_ids: tuple[int, ...] | None = None
    webhook_id: int | None = None
    close: bool = False


#: One write of the open replies' book.
OpenReplyWrite = NewOpenReply | OpenReplyChange


async def write_many(sessions: Sessions, writes: Sequence[OpenReplyWrite]) -> list[None]:
    """Apply writes to the open replies, in order, in one transaction."""
    async with sessions.begin() as session:
        for change in writes:
            if isinstance(change, NewOpenReply):
                await session.execute(insert(OpenReply).values(**_values(change)))
                continue
            if change.close:
                await session.execute(delete(OpenReply).where(OpenReply.id == change.reply_id))
                continue
            values: dict[str, object] = {"webhook_id": change.webhook_id}
            if change.discord_message_ids is not None:
                values["discord_message_ids"] = list(change.discord_message_ids)
            await session.execute(
                update(OpenReply).where(OpenReply.id == change.reply_id).values(**values)
            )
    return [None] * len(writes)


def _values(reply: NewOpenReply) -> dict[str, object]:
    return {
        "id": reply.id,
        "guild_id": reply.guild_id,
        "channel_id": reply.channel_id,
        "parent_channel_id": reply.parent_channel_id,
        "webhook_id": reply.webhook_id,
        "session_id": reply.session_id,
        "kind": reply.kind,
        "discord_message_ids": list(reply.discord_message_ids),
        "created_at": utcnow(),
    }


def new_open_id() -> int:
    """A fresh open reply id: random, so processes (shards) never pick the same one; below
    2**53, so every JSON reader keeps it exact."""
    return secrets.randbits(52) + 1


async def open_reply(sessions: Sessions, **fields: object) -> OpenReplyRecord:
    """Record one reply about to be posted (the fields of `NewOpenReply`)."""
    ids = fields.pop("discord_message_ids", ())
    fields.setdefault("id", new_open_id())
    new = NewOpenReply(**fields, discord_message_ids=tuple(ids))  # type: ignore[arg-type]
    async with sessions.begin() as session:
        row = OpenReply(**_values(new))
        session.add(row)
        await session.flush()
        return snapshot(OpenReplyRecord, row)


async def close_open_reply(sessions: Sessions, *, reply_id: int) -> None:
    """The reply's final text is on screen: forget it."""
    await write_many(sessions, [OpenReplyChange(reply_id, close=True)])


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
