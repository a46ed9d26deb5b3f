"""Repository functions for a channel's scenes over time: list, reopen, branch, forget.

Like `repository`, each function is one unit of work, takes the session factory first and
keyword-only arguments after it, and hands back immutable records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from synatra_bot.errors import QuotaReached, SceneRowsReached
from synatra_bot.storage.models import (
    CastMember,
    ChannelSettings,
    Character,
    Message,
    MessageTerms,
    MessageVector,
    RoleplaySession,
    ScenePin,
    utcnow,
)
from synatra_bot.storage.records import MessageRecord, SessionRecord, snapshot
from synatra_bot.storage.repository import (
    MESSAGES,
    Sessions,
    _channel_row,
    _end_active,
    _new_scene,
    _stored_bytes,
    one_at_a_time,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SceneQuota:
    """What one member's imported and branched scenes may hold together in one server (or
    outside servers): rows of history (each alternative a row, deleted ones too, as they are
    stored) and their text's bytes as stored."""

    rows: int
    bytes: int


async def _copied_usage(
    session: AsyncSession, *, started_by: int, guild_id: int | None
) -> tuple[int, int]:
    """Rows and bytes the member's imported and branched scenes of `guild_id` hold now. The
    bytes count the turns' recall index too (their search terms and vectors, at most one row
    of each per turn): an index that grows with the scene grows within its quota."""
    same_guild = (
        RoleplaySession.guild_id.is_(None)
        if guild_id is None
        else RoleplaySession.guild_id == guild_id
    )
    scenes = select(RoleplaySession.id).where(
        RoleplaySession.copied, RoleplaySession.started_by == started_by, same_guild
    )
    rows, size = (
        await session.execute(
            select(
                func.count(Message.id),
                func.coalesce(
                    func.sum(_stored_bytes(session, Message.content, Message.reasoning)), 0
                ),
            ).where(Message.session_id.in_(scenes))
        )
    ).one()
    index = 0
    for turn, column in (
        (MessageTerms.message_id, MessageTerms.terms),
        (MessageVector.message_id, MessageVector.vector),
    ):
        index += int(
            await session.scalar(
                select(func.coalesce(func.sum(_stored_bytes(session, column)), 0))
                .join(Message, Message.id == turn)
                .where(Message.session_id.in_(scenes))
            )
            or 0
        )
    return int(rows or 0), int(size or 0) + index


async def _within_scene_quota(
    session: AsyncSession,
    quota: SceneQuota | None,
    *,
    started_by: int,
    guild_id: int | None,
    adding: tuple[int, int] = (0, 0),
) -> None:
    """SceneRowsReached or QuotaReached when the member's copied scenes hold, with `adding`
    (rows, bytes) not yet written, more than `quota`. Held one member at a time
    (`one_at_a_time`), so imports and branches at the same moment cannot slip past it."""
    if quota is None:
        return
    await one_at_a_time(session, "scenes", started_by)
    rows, size = await _copied_usage(session, started_by=started_by, guild_id=guild_id)
    rows, size = rows + adding[0], size + adding[1]
    if rows > quota.rows:
        raise SceneRowsReached(limit=quota.rows, used=rows)
    if size > quota.bytes:
        raise QuotaReached("scene", limit=quota.bytes, used=size)


async def check_scene_room(
    sessions: Sessions,
    quota: SceneQuota,
    *,
    started_by: int,
    guild_id: int | None,
    adding: tuple[int, int],
) -> None:
    """SceneRowsReached or QuotaReached now when `adding` (rows, bytes) would not fit the
    member's quota: a refusal before anything running is stopped for it. The storing
    transaction counts again, and decides."""
    async with sessions() as session:
        await _within_scene_quota(
            session, quota, started_by=started_by, guild_id=guild_id, adding=adding
        )


async def branch_size(sessions: Sessions, *, message_id: int) -> tuple[int, int]:
    """Rows and bytes a branch at the message would copy (none for an unknown message)."""
    async with sessions() as session:
        target = await session.get(Message, message_id)
        if target is None:
            return 0, 0
        turn = target.swipe_group if target.swipe_group is not None else target.id
        rows, size = (
            await session.execute(
                select(
                    func.count(Message.id),
                    func.coalesce(
                        func.sum(_stored_bytes(session, Message.content, Message.reasoning)), 0
                    ),
                ).where(
                    Message.session_id == target.session_id,
                    ~Message.deleted,
                    func.coalesce(Message.swipe_group, Message.id) <= turn,
                )
            )
        ).one()
        return int(rows or 0), int(size or 0)


def import_size(turns: Sequence[ImportedTurn]) -> tuple[int, int]:
    """Rows and bytes (text and reasoning as UTF-8) an import of `turns` stores."""
    return (
        sum(len(turn.options) for turn in turns),
        sum(len(text.encode()) for turn in turns for text in (*turn.options, *turn.reasonings)),
    )


@dataclass(frozen=True, slots=True)
class SceneSummary:
    """One scene of a channel as a list shows it."""

    session: SessionRecord
    #: The cast's names in cast order (characters deleted since are left out).
    names: tuple[str, ...]
    #: Turns the model would see (chosen, not deleted).
    turns: int
    active: bool


async def channel_scenes(
    sessions: Sessions, *, channel_id: int, limit: int = 25
) -> list[SceneSummary]:
    """The channel's scenes, newest first: the running one and the archived ones."""
    async with sessions() as session:
        active_id = await session.scalar(
            select(ChannelSettings.active_session_id).where(
                ChannelSettings.channel_id == channel_id
            )
        )
        rows = (
            await session.scalars(
                select(RoleplaySession)
                .where(RoleplaySession.channel_id == channel_id)
                .order_by(RoleplaySession.id.desc())
                .limit(limit)
            )
        ).all()
        ids = [row.id for row in rows]
        counted = await session.execute(
            select(Message.session_id, func.count(Message.id))
            .where(Message.session_id.in_(ids), Message.chosen, ~Message.deleted)
            .group_by(Message.session_id)
        )
        counts = {session_id: count for session_id, count in counted}
        names: dict[int, list[str]] = {}
        cast = await session.execute(
            select(CastMember.session_id, Character.name)
            .join(Character, Character.id == CastMember.character_id)
            .where(CastMember.session_id.in_(ids))
            .order_by(CastMember.session_id, CastMember.position)
        )
        for session_id, name in cast:
            names.setdefault(session_id, []).append(name)
        return [
            SceneSummary(
                snapshot(SessionRecord, row),
                tuple(names.get(row.id, ())),
                int(counts.get(row.id, 0)),
                row.id == active_id,
            )
            for row in rows
        ]


async def reopen_scene(sessions: Sessions, *, channel_id: int, session_id: int) -> SessionRecord:
    """Make an earlier scene of the channel the running one again (the running one is archived).

    Raises LookupError when the scene is not one of this channel's.
    """
    async with sessions.begin() as session:
        row = await session.get(RoleplaySession, session_id)
        if row is None or row.channel_id != channel_id:
            raise LookupError(f"scene {session_id} is not one of channel {channel_id}'s")
        channel = await _channel_row(session, channel_id=channel_id, guild_id=row.guild_id or 0)
        if channel.active_session_id != row.id:
            await _end_active(session, channel)
        row.ended_at = None
        channel.active_session_id = row.id
        await session.flush()
        return snapshot(SessionRecord, row)


async def branch_scene(
    sessions: Sessions, *, message_id: int, started_by: int, quota: SceneQuota | None = None
) -> SessionRecord:
    """A new running scene in the message's channel whose history is a copy of its scene's up
    to and including that message's turn (alternatives kept, the chosen ones chosen), with the
    same cast and long-term memory. Its pins come along where they belong to the shared past
    (pinned from a turn up to the branch point, or typed in; a pin of a later turn stays behind
    with that turn). The scene it came from is archived, untouched. A memory
    that covers turns after the branch point is marked stale (rewritten from the branch's own
    turns); one that does not covers the same turns' copies.

    The copies show in no Discord message (their ids are not copied), so an edit of an old
    message never reaches the branch. Raises LookupError for an unknown message; with `quota`,
    SceneRowsReached or QuotaReached (nothing stored) when the copies would take the rows or
    bytes of the member's imported and branched scenes in that server past it.
    """
    async with sessions.begin() as session:
        target = await session.get(Message, message_id)
        if target is None or target.deleted:
            raise LookupError(f"message {message_id} does not exist")
        source = await session.get(RoleplaySession, target.session_id)
        assert source is not None
        turn = target.swipe_group if target.swipe_group is not None else target.id
        channel, branch = await _new_scene(
            session,
            guild_id=source.guild_id,
            channel_id=source.channel_id,
            parent_channel_id=source.parent_channel_id,
            character_id=source.character_id,
            started_by=started_by,
            cast_lead=False,  # the source's whole cast is copied below
            summary=source.summary,
            summary_auto=source.summary_auto,
            copied=True,
            author_note=source.author_note,
            author_note_depth=source.author_note_depth,
            author_note_interval=source.author_note_interval,
        )
        await _end_active(session, channel)
        channel.active_session_id = branch.id
        members = await session.scalars(
            select(CastMember)
            .where(CastMember.session_id == source.id)
            .order_by(CastMember.position)
        )
        for member in members.all():
            session.add(
                CastMember(
                    session_id=branch.id,
                    character_id=member.character_id,
                    position=member.position,
                    joined_at=member.joined_at,
                )
            )
        marks = (source.summary_until_id, source.summary_written_until_id)
        pins = await _pins_kept(session, source.id, up_to_turn=turn)
        new_ids = await _copy_turns(
            session,
            source.id,
            branch.id,
            up_to_turn=turn,
            remember={m for m in (*marks, *(p.message_id for p in pins)) if m is not None},
        )
        for pin in pins:
            session.add(
                ScenePin(
                    session_id=branch.id,
                    message_id=None if pin.message_id is None else new_ids.get(pin.message_id),
                    author_id=pin.author_id,
                    text=pin.text,
                    created_at=pin.created_at,
                )
            )
        covered = source.summary_until_id
        if covered is not None:
            branch.summary_until_id = new_ids.get(covered)
            branch.summary_stale = source.summary_stale or branch.summary_until_id is None
        if source.summary_written is not None:
            written_until = source.summary_written_until_id
            branch.summary_written = source.summary_written
            branch.summary_written_until_id = (
                None if written_until is None else new_ids.get(written_until)
            )
        await session.flush()
        await _within_scene_quota(session, quota, started_by=started_by, guild_id=source.guild_id)
        return snapshot(SessionRecord, branch)


async def _pins_kept(session: AsyncSession, source_id: int, *, up_to_turn: int) -> list[ScenePin]:
    """The source's pins a branch up to turn `up_to_turn` keeps, oldest first: those of no
    turn, and those of a turn up to it."""
    turn_of = func.coalesce(Message.swipe_group, Message.id)
    query = (
        select(ScenePin)
        .outerjoin(Message, Message.id == ScenePin.message_id)
        .where(ScenePin.session_id == source_id)
        .where(ScenePin.message_id.is_(None) | (turn_of <= up_to_turn))
        .order_by(ScenePin.id)
    )
    return list((await session.scalars(query)).all())


#: Rows a branch copies per statement, all in the one transaction that makes the branch: what
#: a statement costs the event loop (building and binding its rows) grows with its rows, and at
#: 100 it stays a few milliseconds.
COPY_BATCH_ROWS = 100

#: The copied columns of a turn (the rest: the new scene's, or reset: Discord ids, deleted).
_COPIED = (
    Message.role,
    Message.author_id,
    Message.display_name,
    Message.content,
    Message.token_count,
    Message.swipe_index,
    Message.chosen,
    Message.character_id,
    Message.created_at,
    Message.edited_at,
    Message.reasoning,
)


async def _copy_turns(
    session: AsyncSession, source_id: int, scene_id: int, *, up_to_turn: int, remember: set[int]
) -> dict[int, int]:
    """Copy the undeleted rows of `source_id` up to turn `up_to_turn` into `scene_id`, in
    rounds of `COPY_BATCH_ROWS` rows (read as plain rows, written with one multi-row INSERT
    each), so a scene of tens of thousands of rows never holds the event loop for long.
    Returns the copies' ids of the originals in `remember`."""
    turn_of = func.coalesce(Message.swipe_group, Message.id)
    copied: dict[int, int] = {}
    after = 0
    while True:
        rows = (
            await session.execute(
                select(Message.id, Message.swipe_group, *_COPIED)
                .where(
                    Message.session_id == source_id,
                    ~Message.deleted,
                    turn_of <= up_to_turn,
                    Message.id > after,
                )
                .order_by(Message.id)
                .limit(COPY_BATCH_ROWS)
            )
        ).all()
        if not rows:
            break
        pending: list[dict[str, Any]] = []
        for row in rows:
            copy = {
                "session_id": scene_id,
                "discord_message_ids": [],
                "deleted": False,
                "swipe_group": None if row.swipe_group is None else -row.swipe_group,
                **{column.key: getattr(row, column.key) for column in _COPIED},
            }
            if row.id not in remember:
                pending.append(copy)
                continue
            # A copy whose id is needed is written alone (the ids a multi-row INSERT returns
            # come in no promised order); what came before it first, to keep the order.
            await _insert_rows(session, pending)
            pending = []
            copied[row.id] = (
                await session.scalars(insert(Message).returning(Message.id), [copy])
            ).one()
        await _insert_rows(session, pending)
        after = rows[-1].id
    await _join_swipe_groups(session, scene_id)
    return copied


async def _insert_rows(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(Message), rows)


async def _join_swipe_groups(session: AsyncSession, scene_id: int) -> None:
    """Rows of `scene_id` written with a negative `swipe_group` mark one turn's alternatives
    by that number; each such group takes the id of its first alternative (the lowest
    `swipe_index`), as a turn's alternatives do. The first ones are read before anything is
    updated (SQLite's UPDATE would see its own earlier rows changed)."""
    other = aliased(Message)
    lowest = (
        select(func.min(other.swipe_index))
        .where(other.session_id == scene_id, other.swipe_group == Message.swipe_group)
        .scalar_subquery()
    )
    firsts = (
        await session.execute(
            select(Message.swipe_group, Message.id).where(
                Message.session_id == scene_id,
                Message.swipe_group < 0,
                Message.swipe_index == lowest,
            )
        )
    ).all()
    # A Core UPDATE (the ORM's bulk UPDATE wants each row's primary key), one per group.
    table = MESSAGES
    joined = (
        update(table)
        .where(table.c.session_id == scene_id, table.c.swipe_group == bindparam("mark"))
        .values(swipe_group=bindparam("first"))
    )
    for start in range(0, len(firsts), COPY_BATCH_ROWS):
        batch = firsts[start : start + COPY_BATCH_ROWS]
        await session.execute(joined, [{"mark": mark, "first": first} for mark, first in batch])


async def forget_archived(sessions: Sessions, *, guild_id: int, ended_before: datetime) -> int:
    """Delete the server's scenes archived before `ended_before`, their messages with them
    (the running scenes stay); returns how many went."""
    async with sessions.begin() as session:
        running = select(ChannelSettings.active_session_id).where(
            ChannelSettings.active_session_id.is_not(None)
        )
        doomed = (
            await session.scalars(
                select(RoleplaySession.id).where(
                    RoleplaySession.guild_id == guild_id,
                    RoleplaySession.ended_at.is_not(None),
                    RoleplaySession.ended_at < ended_before,
                    RoleplaySession.id.not_in(running),
                )
            )
        ).all()
        if not doomed:
            return 0
        ids = list(doomed)
        # Not left to ON DELETE CASCADE: SQLite honours it only with foreign keys on.
        await session.execute(delete(ScenePin).where(ScenePin.session_id.in_(ids)))
        await session.execute(delete(Message).where(Message.session_id.in_(ids)))
        await session.execute(delete(CastMember).where(CastMember.session_id.in_(ids)))
        await session.execute(delete(RoleplaySession).where(RoleplaySession.id.in_(ids)))
        return len(ids)


async def scene_turns(
    sessions: Sessions, *, session_id: int
) -> list[tuple[MessageRecord, list[MessageRecord]]]:
    """The scene's history as a chat file holds it: each turn's chosen row with all of its
    alternatives (in swipe order), oldest turn first; deleted turns left out."""
    async with sessions() as session:
        rows = (
            await session.scalars(
                select(Message)
                .where(Message.session_id == session_id, ~Message.deleted)
                .order_by(Message.id)
            )
        ).all()
    turns: dict[int, list[MessageRecord]] = {}
    for row in rows:
        record = snapshot(MessageRecord, row)
        turns.setdefault(record.turn_group, []).append(record)
    result = []
    for group in sorted(turns):
        options = sorted(turns[group], key=lambda m: m.swipe_index)
        chosen = next((m for m in options if m.chosen), None)
        if chosen is not None:
            result.append((chosen, options))
    return result


async def drop_scene_note(sessions: Sessions, *, session_id: int) -> None:
    """The scene follows its channel's author's note again (its own is forgotten)."""
    async with sessions.begin() as session:
        await session.execute(
            update(RoleplaySession)
            .where(RoleplaySession.id == session_id)
            .values(author_note=None, author_note_depth=None, author_note_interval=None)
        )


async def player_turns(sessions: Sessions, *, session_id: int) -> int:
    """How many of the players' messages the scene's history holds (deleted ones left out)."""
    async with sessions() as session:
        count = await session.scalar(
            select(func.count(Message.id)).where(
                Message.session_id == session_id,
                Message.role == "user",
                Message.chosen,
                ~Message.deleted,
            )
        )
    return int(count or 0)


@dataclass(frozen=True, slots=True)
class ImportedTurn:
    """One turn of a chat being imported: its alternatives, the chosen one's index, and each
    alternative's reasoning (empty: none has any)."""

    role: str
    options: tuple[str, ...]
    chosen: int = 0
    author_id: int | None = None
    display_name: str = ""
    character_id: int | None = None
    sent_at: datetime | None = None
    reasonings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SceneNote:
    """A scene's own author's note: text, depth, interval (see `RoleplaySession`)."""

    text: str
    depth: int
    interval: int


#: Rows one transaction of an import writes at most: a large chat is stored in rounds, so no
#: round keeps the event loop (the ORM's work runs on it) or the database's write lock long.
IMPORT_BATCH_ROWS = 100


async def import_scene(
    sessions: Sessions,
    *,
    guild_id: int | None,
    channel_id: int,
    parent_channel_id: int | None,
    character_id: int,
    started_by: int,
    turns: Sequence[ImportedTurn],
    quota: SceneQuota | None = None,
    cast: Sequence[int] = (),
    note: SceneNote | None = None,
) -> SessionRecord:
    """A new running scene whose history is `turns`, with `character_id` and then `cast` (other
    characters' ids) in its cast and `note` as its own author's note. It is written archived,
    in transactions of at most `IMPORT_BATCH_ROWS` rows (a turn's alternatives always
    together), and becomes the channel's scene only once all of it is stored (the one it
    replaces is archived then); if any round fails, what was written is deleted again.

    With `quota`, SceneRowsReached or QuotaReached when the member's imported and branched
    scenes in that server would hold more than it: counted with the whole chat before the
    first row is written (nothing stored), and again in the transaction that makes the scene
    the channel's (an import or branch stored meanwhile may have taken the room; what was
    written is deleted)."""
    async with sessions.begin() as session:
        await _within_scene_quota(
            session, quota, started_by=started_by, guild_id=guild_id, adding=import_size(turns)
        )
        _, scene = await _new_scene(
            session,
            guild_id=guild_id,
            channel_id=channel_id,
            parent_channel_id=parent_channel_id,
            character_id=character_id,
            started_by=started_by,
            ended_at=utcnow(),  # out of sight of the channel until it is whole
            copied=True,
            author_note=None if note is None else note.text,
            author_note_depth=None if note is None else note.depth,
            author_note_interval=None if note is None else note.interval,
        )
        for position, member in enumerate(cast, 1):
            session.add(CastMember(session_id=scene.id, character_id=member, position=position))
        scene_id = scene.id
    try:
        for batch in _batches(turns, IMPORT_BATCH_ROWS):
            async with sessions.begin() as session:
                await _store_turns(session, scene_id, batch)
        async with sessions.begin() as session:
            await _within_scene_quota(session, quota, started_by=started_by, guild_id=guild_id)
            row = await session.get(RoleplaySession, scene_id)
            assert row is not None
            channel = await _channel_row(
                session, channel_id=channel_id, guild_id=0 if guild_id is None else guild_id
            )
            await _end_active(session, channel)
            row.ended_at = None
            channel.active_session_id = scene_id
            await session.flush()
            return snapshot(SessionRecord, row)
    except BaseException:
        try:
            async with sessions.begin() as session:
                await session.execute(delete(Message).where(Message.session_id == scene_id))
                await session.execute(delete(CastMember).where(CastMember.session_id == scene_id))
                await session.execute(delete(RoleplaySession).where(RoleplaySession.id == scene_id))
        except SQLAlchemyError:
            # The database failed the import, and fails this too: an archived scene of
            # part of the chat is left, which `/rp sessions` lists and archive pruning ends.
            log.warning("a half-imported scene %s could not be deleted", scene_id, exc_info=True)
        raise


def _batches(turns: Sequence[ImportedTurn], rows: int) -> list[Sequence[ImportedTurn]]:
    """`turns` cut into runs of at most `rows` rows (a turn larger than that alone)."""
    batches: list[Sequence[ImportedTurn]] = []
    start, size = 0, 0
    for index, turn in enumerate(turns):
        if size and size + len(turn.options) > rows:
            batches.append(turns[start:index])
            start, size = index, 0
        size += len(turn.options)
    if start < len(turns):
        batches.append(turns[start:])
    return batches


async def _store_turns(session: AsyncSession, scene_id: int, turns: Sequence[ImportedTurn]) -> None:
    """`turns` as rows, written with one multi-row INSERT (building ORM objects for each row
    would keep the event loop several times longer); a turn's alternatives are joined by a
    mark its alternatives share, resolved to the first one's id before the round commits."""
    now = utcnow()
    rows: list[dict[str, Any]] = [
        {
            "session_id": scene_id,
            "role": turn.role,
            "author_id": turn.author_id,
            "display_name": turn.display_name,
            "content": text,
            "character_id": turn.character_id,
            "discord_message_ids": [],
            "swipe_group": -(number + 1) if len(turn.options) > 1 else None,
            "swipe_index": index,
            "chosen": index == turn.chosen,
            "deleted": False,
            "created_at": now if turn.sent_at is None else turn.sent_at,
            "reasoning": (turn.reasonings[index] or None) if turn.reasonings else None,
        }
        for number, turn in enumerate(turns)
        for index, text in enumerate(turn.options)
    ]
    await _insert_rows(session, rows)
    await _join_swipe_groups(session, scene_id)
