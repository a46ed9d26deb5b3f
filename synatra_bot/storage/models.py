"""SQLAlchemy ORM models: guild, channel and user settings, sampling presets, characters,
personal lorebooks, personas, sessions, their casts, messages, pins, what characters know
about players."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SamplingColumns:
    """Sampling and limits; on a channel NULL means "use the server default"."""

    temperature: Mapped[float | None] = mapped_column(Float)
    top_p: Mapped[float | None] = mapped_column(Float)
    top_k: Mapped[int | None] = mapped_column(Integer)
    repetition_penalty: Mapped[float | None] = mapped_column(Float)
    #: The roleplay samplers (SamplingParams says what each does; 0 turns min-p, DRY, XTC off).
    min_p: Mapped[float | None] = mapped_column(Float)
    dry_multiplier: Mapped[float | None] = mapped_column(Float)
    dry_base: Mapped[float | None] = mapped_column(Float)
    dry_allowed_length: Mapped[int | None] = mapped_column(Integer)
    xtc_threshold: Mapped[float | None] = mapped_column(Float)
    xtc_probability: Mapped[float | None] = mapped_column(Float)
    max_new_tokens: Mapped[int | None] = mapped_column(Integer)
    context_size: Mapped[int | None] = mapped_column(Integer)
    #: Turns one user may start per minute in a channel.
    user_rate_limit: Mapped[int | None] = mapped_column(Integer)
    #: "off" (never), "age_restricted" (only in age-restricted channels), "allowed".
    nsfw_policy: Mapped[str | None] = mapped_column(String(16))
    #: What a new message does while a reply is generating: "queue" or "restart".
    busy_policy: Mapped[str | None] = mapped_column(String(16))
    #: Tokens the lorebooks may take in a prompt; NULL on a channel: the server's; NULL on the
    #: server: the prompt builder's default (a quarter of the prompt budget).
    lorebook_budget: Mapped[int | None] = mapped_column(Integer)
    #: Recursive scanning steps for the lorebooks that ask for it (0: off); NULL on a channel:
    #: the server's; NULL on the server: the default (decided above storage).
    lorebook_recursion: Mapped[int | None] = mapped_column(Integer)
    #: Whether characters' card scripts run; NULL on a channel: the server's; NULL on the
    #: server: they run.
    card_scripts: Mapped[bool | None] = mapped_column(Boolean)
    #: Texts that end a reply where the model writes them (a JSON list; [] for none).
    stop_strings: Mapped[list[str] | None] = mapped_column(JSON)


class GuildSettings(SamplingColumns, Base):
    __tablename__ = "guild_settings"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    #: Shared characters need a moderator's approval before others can use them.
    approval_required: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Characters one member may have in this server; NULL means the default (50).
    character_limit: Mapped[int | None] = mapped_column(Integer)
    #: MiB one member's characters may take in this server as stored; NULL means the
    #: default (decided above storage).
    character_megabytes: Mapped[int | None] = mapped_column(Integer)
    #: Rows and MiB one member's imported and branched scenes may hold in this server; NULL
    #: means the default (decided above storage).
    scene_rows: Mapped[int | None] = mapped_column(Integer)
    scene_megabytes: Mapped[int | None] = mapped_column(Integer)
    #: Characters one scene may hold; NULL means the default (decided above storage).
    cast_limit: Mapped[int | None] = mapped_column(Integer)
    #: Tokens a scene's automatic memory may take; NULL means the default (decided above
    #: storage).
    summary_tokens: Mapped[int | None] = mapped_column(Integer)
    #: Tokens a prompt's recall of old turns may take (0: off; NULL: the default).
    recall_tokens: Mapped[int | None] = mapped_column(Integer)
    #: Tokens of what a character knows about the player speaking (0: off; NULL: the default).
    fact_tokens: Mapped[int | None] = mapped_column(Integer)
    #: Tokens a prompt's pinned memories may take (0: off; NULL: the default).
    pin_tokens: Mapped[int | None] = mapped_column(Integer)
    #: Days an archived scene is kept; NULL keeps archived scenes for ever.
    archive_keep_days: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class ChannelSettings(SamplingColumns, Base):
    __tablename__ = "channel_settings"

    channel_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    guild_id: Mapped[int] = mapped_column(BigInteger, index=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    #: "all": every message gets a reply; "mention": only messages that mention the bot.
    reply_mode: Mapped[str] = mapped_column(String(16), default="all")
    #: What an edit of the last player message does: "offer" a regenerate button or "regenerate".
    edit_policy: Mapped[str] = mapped_column(String(16), default="offer")
    #: When a player addresses several characters of the cast, each of them answers in turn
    #: (otherwise only the first). The server default fills the rows that existed before it.
    answer_every_addressed: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    #: Who answers a player's line in a group scene here (`roleplay.turn_order`); NULL: the
    #: addressed order.
    turn_order: Mapped[str | None] = mapped_column(String(16))
    #: What characters know about the players goes into prompts here (NULL: yes).
    player_facts: Mapped[bool | None] = mapped_column(Boolean)
    #: Characters speak up on their own after a quiet time (`roleplay.initiative`); the
    #: numbers are NULL while the channel keeps the defaults.
    initiative: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    initiative_quiet_minutes: Mapped[int | None] = mapped_column(Integer)
    initiative_in_a_row: Mapped[int | None] = mapped_column(Integer)
    initiative_auto_turns: Mapped[int | None] = mapped_column(Integer)
    active_session_id: Mapped[int | None] = mapped_column(
        ForeignKey("roleplay_sessions.id", ondelete="SET NULL")
    )
    author_note: Mapped[str] = mapped_column(Text, default="")
    author_note_depth: Mapped[int] = mapped_column(Integer, default=4)
    #: A channel-level lorebook in character_book JSON form.
    lorebook: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class UserSettings(Base):
    """A user's own choices, wherever they play; a missing row means every default."""

    __tablename__ = "user_settings"

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    #: The user opts in to NSFW characters in their DMs with the bot (no server decides there).
    nsfw_in_dms: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Character(Base):
    __tablename__ = "characters"
    __table_args__ = (Index("ix_characters_guild_name", "guild_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigInteger, index=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    #: "private" (owner only) or "guild" (shared with the server).
    visibility: Mapped[str] = mapped_column(String(16), default="private")
    #: "none" (not shared), "pending", "approved", "rejected".
    approval: Mapped[str] = mapped_column(String(16), default="none")
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    personality: Mapped[str] = mapped_column(Text, default="")
    scenario: Mapped[str] = mapped_column(Text, default="")
    first_message: Mapped[str] = mapped_column(Text, default="")
    alternate_greetings: Mapped[list[str]] = mapped_column(JSON, default=list)
    example_messages: Mapped[str] = mapped_column(Text, default="")
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    post_history_instructions: Mapped[str] = mapped_column(Text, default="")
    creator_notes: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    creator: Mapped[str] = mapped_column(String(200), default="")
    character_version: Mapped[str] = mapped_column(String(100), default="")
    extensions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    character_book: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    avatar: Mapped[bytes | None] = mapped_column(LargeBinary)
    nsfw: Mapped[bool] = mapped_column(Boolean, default=False)
    #: "formal" (존댓말), "informal" (반말) or NULL (unspecified).
    speech_level: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class SamplingPreset(Base):
    """A server's own named sampling preset (`/config preset save`)."""

    __tablename__ = "sampling_presets"
    __table_args__ = (UniqueConstraint("guild_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, index=True)
    name: Mapped[str] = mapped_column(String(100))
    #: Setting name -> value, for the fields a preset sets.
    preset_values: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class PersonalLorebook(Base):
    """A lorebook a player imported for their own characters; a character uses the one its
    `extensions.world` names (SillyTavern links a card to a World Info book by name)."""

    __tablename__ = "personal_lorebooks"
    __table_args__ = (UniqueConstraint("owner_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigInteger, index=True)
    name: Mapped[str] = mapped_column(String(200))
    #: The book in character_book JSON form.
    book: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Persona(Base):
    __tablename__ = "personas"
    __table_args__ = (UniqueConstraint("user_id", "guild_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger)
    #: 0 means "every server".
    guild_id: Mapped[int] = mapped_column(BigInteger, default=0)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class RoleplaySession(Base):
    __tablename__ = "roleplay_sessions"
    __table_args__ = (Index("ix_roleplay_sessions_channel", "channel_id", "ended_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    #: The channel or thread the roleplay happens in.
    channel_id: Mapped[int] = mapped_column(BigInteger)
    #: For threads, the parent channel (webhooks live there); NULL for plain channels.
    parent_channel_id: Mapped[int | None] = mapped_column(BigInteger)
    #: The character the scene started with; the whole cast is in `session_cast`.
    character_id: Mapped[int | None] = mapped_column(
        ForeignKey("characters.id", ondelete="SET NULL"), index=True
    )
    started_by: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    summary: Mapped[str] = mapped_column(Text, default="")
    #: The newest message folded into `summary` (NULL: none yet): the summary covers the
    #: session's history up to and including it.
    summary_until_id: Mapped[int | None] = mapped_column(Integer)
    #: Dropped history is folded into the summary automatically (the starter or a moderator
    #: may turn it off for the scene).
    summary_auto: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    #: A message the summary covers changed (undo, edit, delete, swipe): it is rewritten.
    summary_stale: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: The summary last written by hand (NULL: never) and the newest message it covers: a
    #: rewrite starts from it, and a change to a message it covers leaves the summary as it is.
    summary_written: Mapped[str | None] = mapped_column(Text)
    summary_written_until_id: Mapped[int | None] = mapped_column(Integer)
    #: Made by an import or a branch (its history was copied in, not played here): its rows
    #: count against its starter's scene quota.
    copied: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: The scene's own author's note (an imported chat's), in place of its channel's: its text
    #: (NULL: the channel's note applies), depth and interval (every how many player messages
    #: it is added; 0 never).
    author_note: Mapped[str | None] = mapped_column(Text)
    author_note_depth: Mapped[int | None] = mapped_column(Integer)
    author_note_interval: Mapped[int | None] = mapped_column(Integer)


class CastMember(Base):
    """One character of a scene's cast; `position` orders the cast (0: the one it started with).

    Deleting the character or the session removes the row.
    """

    __tablename__ = "session_cast"
    __table_args__ = (UniqueConstraint("session_id", "character_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(
        ForeignKey("roleplay_sessions.id", ondelete="CASCADE"), index=True
    )
    character_id: Mapped[int] = mapped_column(ForeignKey("characters.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    #: A muted character never answers on its own (`/rp mute`); `/rp next` still calls it.
    muted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    joined_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Message(Base):
    """One turn of history, or one alternative (swipe) of an assistant turn.

    The alternatives of a turn share `swipe_group` (the id of the first one), set when the first
    alternative is added (a turn without alternatives has none); exactly one of them is
    `chosen`, and only chosen, undeleted rows form the history the model sees.
    """

    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_session_history", "session_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("roleplay_sessions.id", ondelete="CASCADE"))
    #: "user", "assistant" or "system".
    role: Mapped[str] = mapped_column(String(16))
    #: The player who wrote a user turn.
    author_id: Mapped[int | None] = mapped_column(BigInteger)
    #: The character who spoke an assistant turn (NULL for player turns, or once it is deleted).
    character_id: Mapped[int | None] = mapped_column(
        ForeignKey("characters.id", ondelete="SET NULL"), index=True
    )
    display_name: Mapped[str] = mapped_column(String(200), default="")
    content: Mapped[str] = mapped_column(Text, default="")
    token_count: Mapped[int | None] = mapped_column(Integer)
    #: The first Discord message holding this turn (indexed for edit/delete events).
    discord_message_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    #: Every Discord message holding this turn (long replies are split).
    discord_message_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    swipe_group: Mapped[int | None] = mapped_column(Integer, index=True)
    swipe_index: Mapped[int] = mapped_column(Integer, default=0)
    chosen: Mapped[bool] = mapped_column(Boolean, default=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    edited_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The model's reasoning before this reply (kept from an imported chat; never in a prompt).
    reasoning: Mapped[str | None] = mapped_column(Text)


class MessageTerms(Base):
    """A turn's search terms (its content morphemes, space-separated), for recalling old turns
    (`roleplay.recall`). A turn without a row is not indexed yet; a change to a turn drops its
    row, and the turn is indexed again."""

    __tablename__ = "message_terms"

    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    terms: Mapped[str] = mapped_column(Text, default="")


class PlayerFact(Base):
    """Something a character knows about a player, within one server (NULL: the player's DM
    with the bot). `source` says where it came from: "summary" (the memory job), "pin" or
    "player" (written or edited by the player); `message_id` the turn it came from."""

    __tablename__ = "player_facts"
    __table_args__ = (Index("ix_player_facts_owner", "user_id", "guild_id", "character_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)
    character_id: Mapped[int] = mapped_column(ForeignKey("characters.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ScenePin(Base):
    """A line a player pinned into a scene's memory ("Remember this"): always in the scene's
    prompts, within their own budget. `message_id` is the turn it came from (NULL: typed in,
    or the turn is gone); the pinned text is the player's own, edited or not."""

    __tablename__ = "scene_pins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(
        ForeignKey("roleplay_sessions.id", ondelete="CASCADE"), index=True
    )
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    #: Who pinned it.
    author_id: Mapped[int] = mapped_column(BigInteger)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MessageVector(Base):
    """A turn's embedding (float32, little-endian) from the host's `/v1/embeddings` server, for
    recalling old turns by meaning (`roleplay.embedded_recall`). One per turn, under the model
    that made it: a turn without one (or with another model's) is embedded again, and a change
    to a turn drops it."""

    __tablename__ = "message_vectors"

    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    model: Mapped[str] = mapped_column(String(200))
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class OpenReply(Base):
    """A reply on screen that is not finished yet: written before its first message is posted,
    removed once its final text is shown. What is left at start belongs to a process that
    died; it is finished then, so nothing on screen keeps a cursor or a live stop button.

    Front-end neutral: a channel, the webhook that posts there (NULL: the bot's own
    messages), and the messages posted so far. Whether the reply was stored is read from the
    messages (a stored turn names the messages that show it).
    """

    __tablename__ = "open_replies"

    #: Chosen by the front end (`open_replies.new_open_id`): the reply's stop button names it.
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    #: NULL in a DM.
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    #: The channel or thread the messages are in.
    channel_id: Mapped[int] = mapped_column(BigInteger, index=True)
    #: The thread's parent channel when the messages are in a thread; NULL otherwise.
    parent_channel_id: Mapped[int | None] = mapped_column(BigInteger)
    #: The webhook that posts the messages; NULL when the bot posts them itself.
    webhook_id: Mapped[int | None] = mapped_column(BigInteger)
    session_id: Mapped[int | None] = mapped_column(
        ForeignKey("roleplay_sessions.id", ondelete="SET NULL")
    )
    #: "reply", "regenerate" or "continue".
    kind: Mapped[str] = mapped_column(String(16))
    discord_message_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
