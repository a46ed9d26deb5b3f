"""Repository: small async functions, one unit of work each, returning immutable records.

Every function takes the session factory first and keyword-only arguments after it; no ORM
object leaves the function that loaded it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    LargeBinary,
    String,
    Table,
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from synatra_bot.errors import LimitReached, LorebookLimitReached, QuotaReached
from synatra_bot.storage.models import (
    CastMember,
    ChannelSettings,
    Character,
    GuildSettings,
    Message,
    Persona,
    PersonalLorebook,
    RoleplaySession,
    SamplingPreset,
    UserSettings,
    utcnow,
)
from synatra_bot.storage.records import (
    CastMemberRecord,
    ChannelSettingsRecord,
    CharacterRecord,
    GuildSettingsRecord,
    LorebookRecord,
    MessageRecord,
    PersonaRecord,
    PresetRecord,
    SessionRecord,
    UserSettingsRecord,
    snapshot,
)

Sessions = async_sessionmaker[AsyncSession]
#: The messages table, for the hot paths that use Core statements instead of the ORM.
MESSAGES: Table = Message.__table__  # type: ignore[assignment]
#: The statements of the hot paths are built once: the same statement object keeps its cache
#: key, so SQLAlchemy does not work it out again for every batch, and no bound values are built
#: (an IN list's parameters form reference cycles that wait for the garbage collector).
INSERT_MESSAGES = insert(MESSAGES).returning(*MESSAGES.c)
#: Personas of many users in many servers (one read for a batch of turns).
PERSONAS_OF = select(Persona).where(
    Persona.user_id.in_(bindparam("users", expanding=True)),
    Persona.guild_id.in_(bindparam("guilds", expanding=True)),
)

GUILD_SETTING_FIELDS = frozenset(
    f for f in GuildSettingsRecord.__dataclass_fields__ if f != "guild_id"
)
CHANNEL_SETTING_FIELDS = frozenset(
    f
    for f in ChannelSettingsRecord.__dataclass_fields__
    if f not in {"channel_id", "guild_id", "active_session_id"}
)
USER_SETTING_FIELDS = frozenset(
    f for f in UserSettingsRecord.__dataclass_fields__ if f != "user_id"
)
CHARACTER_FIELDS = frozenset(
    f for f in CharacterRecord.__dataclass_fields__ if f not in {"id", "created_at", "updated_at"}
)


def _same_guild(guild_id: int | None) -> ColumnElement[bool]:
    """Characters of `guild_id`, or those outside any server when it is None."""
    return Character.guild_id.is_(None) if guild_id is None else Character.guild_id == guild_id


def _check_fields(changes: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")


# --- guild and channel settings -------------------------------------------------------------


async def get_guild_settings(sessions: Sessions, *, guild_id: int) -> GuildSettingsRecord:
    async with sessions() as session:
        row = await session.get(GuildSettings, guild_id)
        return snapshot(GuildSettingsRecord, row) if row else GuildSettingsRecord(guild_id=guild_id)


async def update_guild_settings(
    sessions: Sessions, *, guild_id: int, **changes: Any
) -> GuildSettingsRecord:
    _check_fields(changes, GUILD_SETTING_FIELDS)
    async with sessions.begin() as session:
        row = await session.get(GuildSettings, guild_id)
        if row is None:
            row = GuildSettings(guild_id=guild_id, approval_required=False)
            session.add(row)
        for name, value in changes.items():
            setattr(row, name, value)
        await session.flush()
        return snapshot(GuildSettingsRecord, row)


async def get_channel_settings(
    sessions: Sessions, *, channel_id: int
) -> ChannelSettingsRecord | None:
    async with sessions() as session:
        row = await session.get(ChannelSettings, channel_id)
        return snapshot(ChannelSettingsRecord, row) if row else None


async def update_channel_settings(
    sessions: Sessions, *, channel_id: int, guild_id: int, **changes: Any
) -> ChannelSettingsRecord:
    _check_fields(changes, CHANNEL_SETTING_FIELDS)
    async with sessions.begin() as session:
        row = await _channel_row(session, channel_id=channel_id, guild_id=guild_id)
        for name, value in changes.items():
            setattr(row, name, value)
        await session.flush()
        return snapshot(ChannelSettingsRecord, row)


async def _channel_row(session: AsyncSession, *, channel_id: int, guild_id: int) -> ChannelSettings:
    row = await session.get(ChannelSettings, channel_id)
    if row is None:
        row = ChannelSettings(
            channel_id=channel_id,
            guild_id=guild_id,
            enabled=False,
            reply_mode="all",
            edit_policy="offer",
            author_note="",
            author_note_depth=4,
            answer_every_addressed=False,
            initiative=False,
        )
        session.add(row)
    return row


# --- user settings --------------------------------------------------------------------------


async def get_user_settings(sessions: Sessions, *, user_id: int) -> UserSettingsRecord:
    """The user's own settings; every default when they never changed one."""
    async with sessions() as session:
        row = await session.get(UserSettings, user_id)
        return snapshot(UserSettingsRecord, row) if row else UserSettingsRecord(user_id=user_id)


async def update_user_settings(
    sessions: Sessions, *, user_id: int, **changes: Any
) -> UserSettingsRecord:
    _check_fields(changes, USER_SETTING_FIELDS)
    async with sessions.begin() as session:
        row = await session.get(UserSettings, user_id)
        if row is None:
            row = UserSettings(user_id=user_id, nsfw_in_dms=False)
            session.add(row)
        for name, value in changes.items():
            setattr(row, name, value)
        await session.flush()
        return snapshot(UserSettingsRecord, row)


# --- characters -----------------------------------------------------------------------------


#: Every stored column of a character that can grow with what a member writes or imports.
_CHARACTER_CONTENT = tuple(
    column
    for column in Character.__table__.columns
    if isinstance(column.type, Text | JSON | LargeBinary | String)
)


def _characters_of(owner_id: int, guild_id: int | None) -> ColumnElement[bool]:
    return (Character.owner_id == owner_id) & _same_guild(guild_id)


async def create_character(
    sessions: Sessions,
    *,
    owner_id: int,
    guild_id: int | None,
    name: str,
    max_owned: int | None = None,
    max_bytes: int | None = None,
    **fields: Any,
) -> CharacterRecord:
    """Store a new character. With `max_owned`, raise LimitReached instead when the owner
    already has that many in `guild_id` (None: their characters outside any server); with
    `max_bytes`, QuotaReached when their characters there would take more bytes than that as
    stored. Both are counted in the inserting transaction, one owner at a time
    (`one_at_a_time`), so concurrent imports cannot slip past them."""
    _check_fields(fields, CHARACTER_FIELDS)
    async with sessions.begin() as session:
        if max_owned is not None or max_bytes is not None:
            await one_at_a_time(session, "characters", owner_id)
        if max_owned is not None:
            owned = await session.scalar(
                select(func.count())
                .select_from(Character)
                .where(Character.owner_id == owner_id, _same_guild(guild_id))
            )
            if (owned or 0) >= max_owned:
                raise LimitReached(max_owned)
        mine = _characters_of(owner_id, guild_id)
        before = await _bytes_owned(session, mine, *_CHARACTER_CONTENT) if max_bytes else 0
        row = Character(owner_id=owner_id, guild_id=guild_id, name=name, **fields)
        session.add(row)
        await session.flush()
        if max_bytes is not None:
            await _within_quota(session, "character", mine, _CHARACTER_CONTENT, before, max_bytes)
        await session.refresh(row)
        return snapshot(CharacterRecord, row)


async def get_character(sessions: Sessions, *, character_id: int) -> CharacterRecord | None:
    async with sessions() as session:
        row = await session.get(Character, character_id)
        return snapshot(CharacterRecord, row) if row else None


async def update_character(
    sessions: Sessions, *, character_id: int, max_bytes: int | None = None, **changes: Any
) -> CharacterRecord | None:
    """Change a character; with `max_bytes`, QuotaReached (nothing changed) when its owner's
    characters in its server would then take more bytes than that as stored."""
    _check_fields(changes, CHARACTER_FIELDS)
    async with sessions.begin() as session:
        row = await session.get(Character, character_id)
        if row is None:
            return None
        before = 0
        if max_bytes is not None:
            await one_at_a_time(session, "characters", row.owner_id)
            mine = _characters_of(row.owner_id, row.guild_id)
            before = await _bytes_owned(session, mine, *_CHARACTER_CONTENT)
        for name, value in changes.items():
            setattr(row, name, value)
        await session.flush()
        if max_bytes is not None:
            mine = _characters_of(row.owner_id, row.guild_id)
            await _within_quota(session, "character", mine, _CHARACTER_CONTENT, before, max_bytes)
        await session.refresh(row)
        return snapshot(CharacterRecord, row)


async def delete_character(sessions: Sessions, *, character_id: int) -> bool:
    async with sessions.begin() as session:
        row = await session.get(Character, character_id)
        if row is None:
            return False
        await session.delete(row)
        return True


async def characters_owned_by(sessions: Sessions, *, owner_id: int) -> list[CharacterRecord]:
    """Every character the member owns, wherever it was made, by name."""
    async with sessions() as session:
        rows = await session.scalars(
            select(Character).where(Character.owner_id == owner_id).order_by(Character.name)
        )
        return [snapshot(CharacterRecord, r) for r in rows]


async def visible_characters(
    sessions: Sessions,
    *,
    guild_id: int | None,
    user_id: int,
    name_prefix: str = "",
    limit: int = 25,
    member_of: Iterable[int] = (),
) -> list[CharacterRecord]:
    """Characters `user_id` may use in `guild_id`: their own, and approved/shared ones there.
    In a DM (`guild_id` None) the shared ones come from the servers in `member_of`."""
    member_of = tuple(member_of)
    mine = (Character.owner_id == user_id) & or_(
        Character.guild_id == guild_id, Character.guild_id.is_(None)
    )
    if guild_id is None:
        # In a DM: all of one's own characters, and what is shared in the servers one is a
        # member of ("no server" is not a server anything is shared in).
        own = Character.owner_id == user_id
        shared = Character.guild_id.in_(list(member_of)) & (Character.visibility == "guild")
        shared &= Character.approval.in_(("none", "approved"))
        query = select(Character).where(or_(own, shared) if member_of else own)
    else:
        shared = (Character.guild_id == guild_id) & (Character.visibility == "guild")
        shared &= Character.approval.in_(("none", "approved"))
        query = select(Character).where(or_(mine, shared))
    if name_prefix:
        escaped = name_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Character.name.ilike(f"%{escaped}%", escape="\\"))
    query = query.order_by(Character.name, Character.id).limit(limit)
    async with sessions() as session:
        rows = (await session.scalars(query)).all()
        return [snapshot(CharacterRecord, row) for row in rows]


async def characters_awaiting_approval(
    sessions: Sessions, *, guild_id: int
) -> list[CharacterRecord]:
    query = select(Character).where(Character.guild_id == guild_id, Character.approval == "pending")
    async with sessions() as session:
        return [snapshot(CharacterRecord, r) for r in (await session.scalars(query)).all()]


# --- personas -------------------------------------------------------------------------------


async def set_persona(
    sessions: Sessions, *, user_id: int, guild_id: int, name: str, description: str
) -> PersonaRecord:
    async with sessions.begin() as session:
        row = await session.scalar(
            select(Persona).where(Persona.user_id == user_id, Persona.guild_id == guild_id)
        )
        if row is None:
            row = Persona(user_id=user_id, guild_id=guild_id)
            session.add(row)
        row.name, row.description = name, description
        await session.flush()
        return snapshot(PersonaRecord, row)


async def get_personas(
    sessions: Sessions, keys: Sequence[tuple[int, int]]
) -> list[PersonaRecord | None]:
    """`get_persona` for many (user, server) pairs at once, in one read; results in order."""
    users = list({user_id for user_id, _ in keys})
    guilds = list({guild_id for _, guild_id in keys} | {0})
    async with sessions() as session:
        rows = {
            (r.user_id, r.guild_id): snapshot(PersonaRecord, r)
            for r in await session.scalars(PERSONAS_OF, {"users": users, "guilds": guilds})
        }
    return [rows.get((user_id, guild_id)) or rows.get((user_id, 0)) for user_id, guild_id in keys]


async def get_persona(sessions: Sessions, *, user_id: int, guild_id: int) -> PersonaRecord | None:
    """The user's persona for this server, else their persona for every server."""
    query = (
        select(Persona)
        .where(Persona.user_id == user_id, Persona.guild_id.in_((guild_id, 0)))
        .order_by(Persona.guild_id.desc())
        .limit(1)
    )
    async with sessions() as session:
        row = await session.scalar(query)
        return snapshot(PersonaRecord, row) if row else None


async def clear_persona(sessions: Sessions, *, user_id: int, guild_id: int) -> bool:
    async with sessions.begin() as session:
        row = await session.scalar(
            select(Persona).where(Persona.user_id == user_id, Persona.guild_id == guild_id)
        )
        if row is None:
            return False
        await session.delete(row)
        return True


# --- named rows: sampling presets, personal lorebooks -------------------------------------
# Both are rows with a name, unique under an owner column (a server, a member).

NamedRow = SamplingPreset | PersonalLorebook


async def _named_row(
    session: AsyncSession, model: type[NamedRow], owner: Any, owner_id: int, name: str
) -> Any:
    return await session.scalar(select(model).where(owner == owner_id, model.name == name))


async def one_at_a_time(session: AsyncSession, table: str, owner_id: int) -> None:
    """Hold the owner's rows of `table` for this transaction, so that counting them and adding
    one is not raced by another transaction doing the same. SQLite's transactions begin
    IMMEDIATE and already write one at a time; PostgreSQL takes a transaction-scoped advisory
    lock on the pair (its READ COMMITTED count would let two inserts past a limit)."""
    if session.get_bind().dialect.name == "postgresql":
        key = func.hashtextextended(f"{table}:{owner_id}", 0)
        await session.execute(select(func.pg_advisory_xact_lock(key)))


def _stored_bytes(session: AsyncSession, *columns: Any) -> ColumnElement[Any]:
    """The bytes `columns` take as stored (text as UTF-8, JSON as its text, blobs as they
    are), summed, in the database's own terms."""
    postgres = session.get_bind().dialect.name == "postgresql"
    sizes: list[ColumnElement[Any]] = []
    for column in columns:
        if isinstance(column.type, LargeBinary):
            size = func.octet_length(column) if postgres else func.length(column)
        elif postgres:
            size = func.octet_length(cast(column, Text))
        else:
            size = func.length(cast(column, LargeBinary))
        sizes.append(func.coalesce(size, 0))
    total: ColumnElement[Any] = sizes[0]
    for more in sizes[1:]:
        total = total + more
    return total


async def _bytes_owned(session: AsyncSession, where: Any, *columns: Any) -> int:
    total = await session.scalar(
        select(func.coalesce(func.sum(_stored_bytes(session, *columns)), 0)).where(where)
    )
    return int(total or 0)


async def _within_quota(
    session: AsyncSession, kind: str, where: Any, columns: Sequence[Any], before: int, limit: int
) -> None:
    """After a write (flushed, not committed): QuotaReached, undoing it, when the owner's rows
    now take more than `limit` bytes and more than `before` (someone already over a lowered
    quota may still shrink what they keep)."""
    used = await _bytes_owned(session, where, *columns)
    if used > limit and used > before:
        raise QuotaReached(kind, limit=limit, used=used)


async def _put_named(
    session: AsyncSession, model: type[NamedRow], owner: Any, owner_id: int, name: str, limit: int
) -> Any:
    """The owner's row `name`, a new one when there is none yet; None when a new one would
    be past `limit` (counted one owner at a time, see `one_at_a_time`)."""
    await one_at_a_time(session, model.__tablename__, owner_id)
    row = await _named_row(session, model, owner, owner_id, name)
    if row is None:
        count = await session.scalar(
            select(func.count()).select_from(model).where(owner == owner_id)
        )
        if (count or 0) >= limit:
            return None
        row = model(**{owner.key: owner_id, "name": name})
        session.add(row)
    return row


async def _rows_of(
    sessions: Sessions, model: type[NamedRow], owner: Any, owner_id: int
) -> list[Any]:
    async with sessions() as session:
        return list(
            await session.scalars(select(model).where(owner == owner_id).order_by(model.name))
        )


async def _delete_named(
    sessions: Sessions, model: type[NamedRow], owner: Any, owner_id: int, name: str
) -> bool:
    async with sessions.begin() as session:
        row = await _named_row(session, model, owner, owner_id, name)
        if row is None:
            return False
        await session.delete(row)
        return True


async def save_preset(
    sessions: Sessions, *, guild_id: int, name: str, values: dict[str, Any], max_saved: int
) -> PresetRecord | None:
    """Store the server's preset `name`, replacing one of that name; None when it would be a
    new one past `max_saved`."""
    async with sessions.begin() as session:
        owner = SamplingPreset.guild_id
        row = await _put_named(session, SamplingPreset, owner, guild_id, name, max_saved)
        if row is None:
            return None
        row.preset_values = values
        await session.flush()
        return snapshot(PresetRecord, row)


async def presets_of(sessions: Sessions, *, guild_id: int) -> list[PresetRecord]:
    rows = await _rows_of(sessions, SamplingPreset, SamplingPreset.guild_id, guild_id)
    return [snapshot(PresetRecord, r) for r in rows]


async def delete_preset(sessions: Sessions, *, guild_id: int, name: str) -> bool:
    return await _delete_named(sessions, SamplingPreset, SamplingPreset.guild_id, guild_id, name)


async def save_lorebook(
    sessions: Sessions,
    *,
    owner_id: int,
    name: str,
    book: dict[str, Any],
    max_owned: int,
    max_bytes: int,
) -> LorebookRecord:
    """Store `book` as the owner's lorebook `name`, replacing one of that name;
    LorebookLimitReached when it would be a new one past `max_owned`, QuotaReached when the
    owner's lorebooks would take more than `max_bytes` as stored."""
    async with sessions.begin() as session:
        owner = PersonalLorebook.owner_id
        row = await _put_named(session, PersonalLorebook, owner, owner_id, name, max_owned)
        if row is None:
            raise LorebookLimitReached(max_owned)
        mine = owner == owner_id
        with session.no_autoflush:  # the new row has no book yet
            before = await _bytes_owned(session, mine, PersonalLorebook.book)
        row.book = book
        await session.flush()
        await _within_quota(session, "lorebook", mine, [PersonalLorebook.book], before, max_bytes)
        await session.refresh(row)
        return snapshot(LorebookRecord, row)


async def lorebooks_of(sessions: Sessions, *, owner_id: int) -> list[LorebookRecord]:
    rows = await _rows_of(sessions, PersonalLorebook, PersonalLorebook.owner_id, owner_id)
    return [snapshot(LorebookRecord, r) for r in rows]


async def named_lorebooks(
    sessions: Sessions, keys: Iterable[tuple[int, str]]
) -> dict[tuple[int, str], LorebookRecord]:
    """The lorebooks for (owner, name) pairs, in one read; pairs without one are left out."""
    wanted = set(keys)
    if not wanted:
        return {}
    owners = {owner for owner, _ in wanted}
    names = {name for _, name in wanted}
    async with sessions() as session:
        rows = await session.scalars(
            select(PersonalLorebook).where(
                PersonalLorebook.owner_id.in_(owners), PersonalLorebook.name.in_(names)
            )
        )
        found = {(r.owner_id, r.name): snapshot(LorebookRecord, r) for r in rows}
    return {key: record for key, record in found.items() if key in wanted}


async def delete_lorebook(sessions: Sessions, *, owner_id: int, name: str) -> bool:
    owner = PersonalLorebook.owner_id
    return await _delete_named(sessions, PersonalLorebook, owner, owner_id, name)


# --- roleplay sessions ----------------------------------------------------------------------


async def start_session(
    sessions: Sessions,
    *,
    guild_id: int | None,
    channel_id: int,
    parent_channel_id: int | None,
    character_id: int,
    started_by: int,
) -> SessionRecord:
    """End the channel's active session (its history stays archived) and start a new one, with
    `character_id` as the first of its cast.

    `guild_id` is None in a DM; the DM channel's settings row then has guild 0 (not nullable).
    """
    async with sessions.begin() as session:
        channel, row = await _new_scene(
            session,
            guild_id=guild_id,
            channel_id=channel_id,
            parent_channel_id=parent_channel_id,
            character_id=character_id,
            started_by=started_by,
        )
        await _end_active(session, channel)
        channel.active_session_id = row.id
        return snapshot(SessionRecord, row)


async def _new_scene(
    session: AsyncSession,
    *,
    guild_id: int | None,
    channel_id: int,
    parent_channel_id: int | None,
    character_id: int | None,
    started_by: int,
    cast_lead: bool = True,
    summary: str = "",
    **fields: Any,
) -> tuple[ChannelSettings, RoleplaySession]:
    """A new session row of the channel (flushed: it has its id), with `character_id` first in
    its cast unless `cast_lead` is off, and the channel's settings row. The caller makes it the
    running scene when it is ready."""
    channel = await _channel_row(
        session, channel_id=channel_id, guild_id=0 if guild_id is None else guild_id
    )
    row = RoleplaySession(
        guild_id=guild_id,
        channel_id=channel_id,
        parent_channel_id=parent_channel_id,
        character_id=character_id,
        started_by=started_by,
        summary=summary,
        **fields,
    )
    session.add(row)
    await session.flush()
    if cast_lead and character_id is not None:
        session.add(CastMember(session_id=row.id, character_id=character_id, position=0))
    return channel, row


async def _end_active(session: AsyncSession, channel: ChannelSettings) -> int | None:
    if channel.active_session_id is None:
        return None
    ended = channel.active_session_id
    await session.execute(
        update(RoleplaySession)
        .where(RoleplaySession.id == ended, RoleplaySession.ended_at.is_(None))
        .values(ended_at=utcnow())
    )
    channel.active_session_id = None
    return ended


async def end_session(sessions: Sessions, *, channel_id: int) -> int | None:
    """End the channel's active session; returns its id, or None when there was none."""
    async with sessions.begin() as session:
        channel = await session.get(ChannelSettings, channel_id)
        if channel is None:
            return None
        return await _end_active(session, channel)


async def get_session(sessions: Sessions, *, session_id: int) -> SessionRecord | None:
    async with sessions() as session:
        row = await session.get(RoleplaySession, session_id)
        return snapshot(SessionRecord, row) if row else None


async def get_active_session(sessions: Sessions, *, channel_id: int) -> SessionRecord | None:
    query = (
        select(RoleplaySession)
        .join(ChannelSettings, ChannelSettings.active_session_id == RoleplaySession.id)
        .where(ChannelSettings.channel_id == channel_id)
    )
    async with sessions() as session:
        row = await session.scalar(query)
        return snapshot(SessionRecord, row) if row else None


async def set_summary(sessions: Sessions, *, session_id: int, summary: str) -> None:
    """A summary written by hand: kept as written (not stale), covering what it covered, and
    kept apart as the base a rewrite starts from."""
    async with sessions.begin() as session:
        await session.execute(
            update(RoleplaySession)
            .where(RoleplaySession.id == session_id)
            .values(
                summary=summary,
                summary_stale=False,
                summary_written=summary,
                summary_written_until_id=RoleplaySession.summary_until_id,
            )
        )


async def store_summary(
    sessions: Sessions,
    *,
    session_id: int,
    summary: str,
    until_id: int | None,
    expect_summary: str,
    expect_until_id: int | None,
    expect_stale: bool,
) -> bool:
    """Store an automatic summary covering the history up to `until_id`, only while the
    session still has the summary it was folded from (`expect_*`) and automatic memory on:
    a summary written or changed meanwhile is never overwritten. Whether it was stored."""
    until = RoleplaySession.summary_until_id
    query = (
        update(RoleplaySession)
        .where(
            RoleplaySession.id == session_id,
            RoleplaySession.summary_auto,
            RoleplaySession.summary == expect_summary,
            RoleplaySession.summary_stale == expect_stale,
            until.is_(None) if expect_until_id is None else until == expect_until_id,
        )
        .values(summary=summary, summary_until_id=until_id, summary_stale=False)
    )
    async with sessions.begin() as session:
        result = await session.execute(query)
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def mark_summary_stale(sessions: Sessions, *, session_id: int, changed_id: int) -> bool:
    """The session's history changed from message `changed_id` on: its summary is stale when
    it covers that message, unless the summary written by hand covers it (that text stays as
    its author wrote it). Whether it became stale now."""
    written_until = RoleplaySession.summary_written_until_id
    query = (
        update(RoleplaySession)
        .where(
            RoleplaySession.id == session_id,
            RoleplaySession.summary_until_id >= changed_id,
            or_(written_until.is_(None), written_until < changed_id),
            ~RoleplaySession.summary_stale,
        )
        .values(summary_stale=True)
    )
    async with sessions.begin() as session:
        result = await session.execute(query)
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def set_summary_auto(sessions: Sessions, *, session_id: int, enabled: bool) -> bool:
    """Turn the session's automatic memory on or off; False when there is no such session."""
    query = (
        update(RoleplaySession).where(RoleplaySession.id == session_id).values(summary_auto=enabled)
    )
    async with sessions.begin() as session:
        result = await session.execute(query)
        return bool(result.rowcount)  # type: ignore[attr-defined]


# --- scene cast -----------------------------------------------------------------------------


async def session_cast(sessions: Sessions, *, session_id: int) -> list[CastMemberRecord]:
    """The characters of the scene, in cast order."""
    query = (
        select(CastMember)
        .where(CastMember.session_id == session_id)
        .order_by(CastMember.position, CastMember.id)
    )
    async with sessions() as session:
        return [snapshot(CastMemberRecord, r) for r in (await session.scalars(query)).all()]


async def add_to_cast(
    sessions: Sessions, *, session_id: int, character_id: int, max_size: int
) -> CastMemberRecord | None:
    """Append a character to the end of the scene's cast; None when it is in the cast already.

    Raise LimitReached when the cast already has `max_size` characters. The cast is read in the
    inserting transaction, with the session's row locked on servers that lock rows (SQLite's
    write lock does the same), so concurrent additions cannot slip past the limit.
    """
    async with sessions.begin() as session:
        found = await session.scalar(
            select(RoleplaySession.id).where(RoleplaySession.id == session_id).with_for_update()
        )
        if found is None:
            raise LookupError(f"session {session_id} does not exist")
        members = (
            await session.execute(
                select(CastMember.character_id, CastMember.position).where(
                    CastMember.session_id == session_id
                )
            )
        ).all()
        if any(member.character_id == character_id for member in members):
            return None
        if len(members) >= max_size:
            raise LimitReached(max_size)
        row = CastMember(
            session_id=session_id,
            character_id=character_id,
            position=max((member.position for member in members), default=-1) + 1,
        )
        session.add(row)
        await session.flush()
        return snapshot(CastMemberRecord, row)


async def remove_from_cast(sessions: Sessions, *, session_id: int, character_id: int) -> bool:
    """Take a character out of the scene's cast (its past turns stay); False when not in it."""
    async with sessions.begin() as session:
        result = await session.execute(
            delete(CastMember).where(
                CastMember.session_id == session_id, CastMember.character_id == character_id
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def set_cast_muted(
    sessions: Sessions, *, session_id: int, character_id: int, muted: bool
) -> bool:
    """Mute or unmute a character of the scene's cast; False when it is not in the cast."""
    async with sessions.begin() as session:
        result = await session.execute(
            update(CastMember)
            .where(CastMember.session_id == session_id, CastMember.character_id == character_id)
            .values(muted=muted)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A turn to append. Its swipe group starts when its first alternative is added.

    `author_id` is the player of a user turn, `character_id` the character of an assistant turn.
    """

    session_id: int
    role: str
    content: str
    author_id: int | None = None
    display_name: str = ""
    discord_message_ids: tuple[int, ...] = ()
    token_count: int | None = None
    character_id: int | None = None


async def add_messages(sessions: Sessions, turns: Sequence[NewMessage]) -> list[MessageRecord]:
    """Append turns in one transaction, in order; returns their records in the same order.

    Core statements on a connection, not the ORM's unit of work (about a third more per round):
    this runs for every message, so it is one multi-row INSERT ... RETURNING, however many
    turns there are.
    """
    if not turns:
        return []
    values = [
        {
            "session_id": turn.session_id,
            "role": turn.role,
            "content": turn.content,
            "author_id": turn.author_id,
            "character_id": turn.character_id,
            "display_name": turn.display_name,
            "discord_message_id": turn.discord_message_ids[0] if turn.discord_message_ids else None,
            "discord_message_ids": list(turn.discord_message_ids),
            "token_count": turn.token_count,
            "swipe_index": 0,
            "chosen": True,
            "deleted": False,
        }
        for turn in turns
    ]
    # Executed as "many": SQLAlchemy's insertmanyvalues sends one INSERT ... VALUES (...),
    # (...) RETURNING for the batch from a statement compiled once (`.values(list)` would compile
    # a new one per batch). With sort_by_parameter_order it would fall back to a statement per
    # row on SQLite (no sentinel it trusts), so the rows are matched back to the turns here.
    async with _engine_of(sessions).begin() as connection:
        rows = (await connection.execute(INSERT_MESSAGES, values)).all()
    return _in_turn_order([MessageRecord(**row._mapping) for row in rows], turns)


def _engine_of(sessions: Sessions) -> AsyncEngine:
    """The engine the session factory is bound to."""
    engine: AsyncEngine = sessions.kw["bind"]
    return engine


def _in_turn_order(
    records: list[MessageRecord], turns: Sequence[NewMessage]
) -> list[MessageRecord]:
    """The inserted rows in the order of the turns they came from.

    RETURNING promises no order. Each turn is matched to the lowest-id row with the same
    fields; rows with identical fields cannot be told apart, and ids follow the VALUES order.
    """

    def key(item: MessageRecord | NewMessage) -> tuple[Any, ...]:
        return (
            item.session_id,
            item.role,
            item.content,
            item.author_id,
            item.display_name,
            item.discord_message_ids,
            item.token_count,
            item.character_id,
        )

    by_key: dict[tuple[Any, ...], list[MessageRecord]] = {}
    for record in sorted(records, key=lambda r: r.id, reverse=True):
        by_key.setdefault(key(record), []).append(record)
    return [by_key[key(turn)].pop() for turn in turns]


async def add_message(
    sessions: Sessions,
    *,
    session_id: int,
    role: str,
    content: str,
    author_id: int | None = None,
    display_name: str = "",
    discord_message_ids: Iterable[int] = (),
    token_count: int | None = None,
    character_id: int | None = None,
) -> MessageRecord:
    """Append one turn (see `NewMessage`)."""
    turn = NewMessage(
        session_id=session_id,
        role=role,
        content=content,
        author_id=author_id,
        display_name=display_name,
        discord_message_ids=tuple(discord_message_ids),
        token_count=token_count,
        character_id=character_id,
    )
    return (await add_messages(sessions, [turn]))[0]


async def add_alternative(
    sessions: Sessions,
    *,
    message_id: int,
    content: str,
    token_count: int | None = None,
    discord_message_ids: Iterable[int] = (),
) -> MessageRecord:
    """Add a new alternative to the turn of `message_id` and make it the chosen one."""
    ids = list(discord_message_ids)
    async with sessions.begin() as session:
        base = await session.get(Message, message_id)
        if base is None:
            raise LookupError(f"message {message_id} does not exist")
        group = base.swipe_group if base.swipe_group is not None else base.id
        base.swipe_group = group
        count = await session.scalar(
            select(func.max(Message.swipe_index)).where(Message.swipe_group == group)
        )
        await session.execute(
            update(Message).where(Message.swipe_group == group).values(chosen=False)
        )
        row = Message(
            session_id=base.session_id,
            role=base.role,
            author_id=base.author_id,
            character_id=base.character_id,
            display_name=base.display_name,
            content=content,
            token_count=token_count,
            discord_message_id=ids[0] if ids else base.discord_message_id,
            discord_message_ids=ids or list(base.discord_message_ids),
            swipe_group=group,
            swipe_index=(count or 0) + 1,
            chosen=True,
            deleted=False,
        )
        session.add(row)
        await session.flush()
        return snapshot(MessageRecord, row)


async def alternatives(sessions: Sessions, *, message_id: int) -> list[MessageRecord]:
    """All alternatives of the turn holding `message_id`, in swipe order."""
    async with sessions() as session:
        base = await session.get(Message, message_id)
        if base is None:
            return []
        if base.swipe_group is None:
            return [snapshot(MessageRecord, base)]
        rows = await session.scalars(
            select(Message)
            .where(Message.swipe_group == base.swipe_group)
            .order_by(Message.swipe_index)
        )
        return [snapshot(MessageRecord, r) for r in rows]


async def choose_alternative(sessions: Sessions, *, message_id: int) -> MessageRecord:
    """Make `message_id` the chosen alternative of its turn (the one history shows)."""
    async with sessions.begin() as session:
        row = await session.get(Message, message_id)
        if row is None:
            raise LookupError(f"message {message_id} does not exist")
        if row.swipe_group is not None:
            await session.execute(
                update(Message).where(Message.swipe_group == row.swipe_group).values(chosen=False)
            )
        row.chosen = True
        await session.flush()
        return snapshot(MessageRecord, row)


async def recent_history(
    sessions: Sessions, *, session_id: int, limit: int, since_id: int | None = None
) -> list[MessageRecord]:
    """The newest `limit` turns of the history the model sees, oldest first.

    With `since_id`, only turns from that id on, plus the one turn just before it (so a caller
    can tell that older history exists without loading it).
    """
    columns = MESSAGES.c
    visible = (columns.session_id == session_id, columns.chosen, ~columns.deleted)
    query = select(MESSAGES).where(*visible).order_by(columns.id.desc()).limit(limit)
    if since_id is not None:
        before = (
            select(columns.id)
            .where(*visible, columns.id < since_id)
            .order_by(columns.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        query = query.where(columns.id >= func.coalesce(before, since_id))
    async with sessions() as session:
        rows = (await session.execute(query)).all()
    return [MessageRecord(**row._mapping) for row in reversed(rows)]


async def count_history_before(sessions: Sessions, *, session_id: int, before_id: int) -> int:
    """How many turns of the history the model sees come before `before_id`."""
    columns = MESSAGES.c
    query = (
        select(func.count())
        .select_from(MESSAGES)
        .where(columns.session_id == session_id, columns.chosen, ~columns.deleted)
        .where(columns.id < before_id)
    )
    async with sessions() as session:
        return int(await session.scalar(query) or 0)


async def history_between(
    sessions: Sessions, *, session_id: int, after_id: int | None, before_id: int, limit: int
) -> list[MessageRecord]:
    """The oldest `limit` turns of the history the model sees after `after_id` (None: from
    the start) and before `before_id`, oldest first."""
    columns = MESSAGES.c
    query = (
        select(MESSAGES)
        .where(
            columns.session_id == session_id,
            columns.chosen,
            ~columns.deleted,
            columns.id < before_id,
        )
        .order_by(columns.id)
        .limit(limit)
    )
    if after_id is not None:
        query = query.where(columns.id > after_id)
    async with sessions() as session:
        rows = (await session.execute(query)).all()
    return [MessageRecord(**row._mapping) for row in rows]


async def count_history(sessions: Sessions, *, session_id: int) -> int:
    query = select(func.count(Message.id)).where(
        Message.session_id == session_id, Message.chosen, ~Message.deleted
    )
    async with sessions() as session:
        return int(await session.scalar(query) or 0)


async def last_activity(sessions: Sessions, *, session_id: int) -> datetime | None:
    """When a turn of the session was last written or edited, undone and unchosen ones
    included (None without any)."""
    query = select(func.max(Message.created_at), func.max(Message.edited_at)).where(
        Message.session_id == session_id
    )
    async with sessions() as session:
        row = (await session.execute(query)).one()
    times = [t if t.tzinfo else t.replace(tzinfo=UTC) for t in row if t is not None]
    return max(times, default=None)


async def first_message_id(sessions: Sessions, *, session_id: int) -> int | None:
    query = select(func.min(Message.id)).where(Message.session_id == session_id)
    async with sessions() as session:
        return await session.scalar(query)


async def get_message(sessions: Sessions, *, message_id: int) -> MessageRecord | None:
    async with sessions() as session:
        row = await session.get(Message, message_id)
        return snapshot(MessageRecord, row) if row else None


async def find_by_discord_id(
    sessions: Sessions, *, discord_message_id: int
) -> MessageRecord | None:
    """The chosen, undeleted turn shown in Discord message `discord_message_id`."""
    query = (
        select(Message)
        .where(Message.discord_message_id == discord_message_id, ~Message.deleted)
        .order_by(Message.chosen.desc(), Message.id.desc())
        .limit(1)
    )
    async with sessions() as session:
        row = await session.scalar(query)
        return snapshot(MessageRecord, row) if row else None


async def has_discord_messages(sessions: Sessions, lines: Sequence[tuple[int, int]]) -> list[bool]:
    """For each (session, Discord message id): whether a turn of that session (deleted, or an
    unchosen alternative, too) is shown in that Discord message. One query for them all."""
    if not lines:
        return []
    query = select(Message.session_id, Message.discord_message_id).where(
        Message.discord_message_id.in_({discord_id for _, discord_id in lines})
    )
    async with sessions() as session:
        found = {(row[0], row[1]) for row in (await session.execute(query)).all()}
    return [line in found for line in lines]


async def add_removed_message(
    sessions: Sessions,
    *,
    session_id: int,
    role: str,
    content: str,
    author_id: int | None = None,
    display_name: str = "",
    discord_message_ids: Iterable[int] = (),
) -> MessageRecord:
    """Append a turn that is deleted from the start: kept, never in the history the model sees."""
    ids = list(discord_message_ids)
    async with sessions.begin() as session:
        row = Message(
            session_id=session_id,
            role=role,
            content=content,
            author_id=author_id,
            display_name=display_name,
            discord_message_id=ids[0] if ids else None,
            discord_message_ids=ids,
            swipe_index=0,
            chosen=True,
            deleted=True,
        )
        session.add(row)
        await session.flush()
        return snapshot(MessageRecord, row)


async def count_active_scenes(sessions: Sessions) -> int:
    """How many channels and DMs have a scene running."""
    query = select(func.count()).where(ChannelSettings.active_session_id.is_not(None))
    async with sessions() as session:
        return int((await session.execute(query)).scalar_one())


async def active_scenes(
    sessions: Sessions, *, guild_ids: Collection[int], dms: bool, limit: int
) -> list[tuple[SessionRecord, int | None]]:
    """At most `limit` running scenes in `guild_ids` (and in DMs with `dms`), each with the
    newest Discord message stored in it (deleted and unchosen turns too; None: none), the
    scenes with the newest first."""
    newest = (
        select(func.max(Message.discord_message_id))
        .where(Message.session_id == RoleplaySession.id)
        .correlate(RoleplaySession)
        .scalar_subquery()
    )
    where: ColumnElement[bool] = RoleplaySession.guild_id.in_(list(guild_ids))
    if dms:
        where = or_(where, RoleplaySession.guild_id.is_(None))
    query = (
        select(RoleplaySession, newest)
        .join(ChannelSettings, ChannelSettings.active_session_id == RoleplaySession.id)
        .where(where)
        .order_by(func.coalesce(newest, 0).desc(), RoleplaySession.id.desc())
        .limit(limit)
    )
    async with sessions() as session:
        rows = (await session.execute(query)).all()
        return [(snapshot(SessionRecord, row), found) for row, found in rows]


async def update_message(
    sessions: Sessions,
    *,
    message_id: int,
    content: str | None = None,
    token_count: int | None = None,
    discord_message_ids: Iterable[int] | None = None,
    edited: bool = False,
) -> MessageRecord | None:
    """Change a turn's text (its cached token count is reset unless given) or Discord ids."""
    async with sessions.begin() as session:
        row = await session.get(Message, message_id)
        if row is None:
            return None
        if content is not None:
            row.content = content
            row.token_count = token_count
        if discord_message_ids is not None:
            ids = list(discord_message_ids)
            row.discord_message_ids = ids
            row.discord_message_id = ids[0] if ids else None
        if edited:
            row.edited_at = utcnow()
        await session.flush()
        return snapshot(MessageRecord, row)


async def save_token_counts(sessions: Sessions, *, counts: Mapping[int, int]) -> None:
    """Cache token counts so the next turn does not re-tokenise the history."""
    if not counts:
        return
    async with sessions.begin() as session:
        for message_id, count in counts.items():
            await session.execute(
                update(Message).where(Message.id == message_id).values(token_count=count)
            )


async def delete_messages(sessions: Sessions, *, message_ids: Iterable[int]) -> int:
    """Mark turns deleted (kept for the archive, hidden from the model); returns how many."""
    ids = list(message_ids)
    if not ids:
        return 0
    async with sessions.begin() as session:
        result = await session.execute(
            update(Message).where(Message.id.in_(ids), ~Message.deleted).values(deleted=True)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _same_turn(row: Message) -> ColumnElement[bool]:
    """Every alternative of the turn `row` belongs to."""
    if row.swipe_group is not None:
        return Message.swipe_group == row.swipe_group
    return Message.id == row.id


async def delete_turn_group(sessions: Sessions, *, message_id: int) -> int:
    """Delete a turn with all its alternatives."""
    async with sessions.begin() as session:
        row = await session.get(Message, message_id)
        if row is None:
            return 0
        result = await session.execute(
            update(Message).where(_same_turn(row), ~Message.deleted).values(deleted=True)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def undo_last_exchange(sessions: Sessions, *, session_id: int) -> list[MessageRecord]:
    """Remove the newest assistant turn and the player turns right before it.

    A reply that follows another reply (a character that spoke without a player's message,
    or the next of several addressed characters) or a system line goes alone, and so does a
    system line that is the newest turn (narration from an imported chat). The session's
    opening greeting never goes. Returns the removed turns (oldest first) so their Discord
    messages can be cleaned up.
    """
    async with sessions.begin() as session:
        rows = (
            await session.scalars(
                select(Message)
                .where(Message.session_id == session_id, Message.chosen, ~Message.deleted)
                .order_by(Message.id.desc())
                .limit(50)
            )
        ).all()
        if rows and rows[0].role == "system":
            removed: list[Message] = [rows[0]]
        else:
            removed = list(rows[:1]) if rows and rows[0].role == "assistant" else []
            for row in rows[len(removed) :]:
                if row.role != "user":
                    break
                removed.append(row)
        greeting_alone = len(rows) == 1 and rows[0].role == "assistant"
        if not removed or greeting_alone:
            return []  # nothing to undo, or the greeting that opens the session
        for row in removed:
            await session.execute(update(Message).where(_same_turn(row)).values(deleted=True))
        return [snapshot(MessageRecord, r) for r in reversed(removed)]
