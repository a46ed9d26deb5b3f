"""Plain, immutable snapshots of stored rows: what the repository hands to the layers above."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeVar

R = TypeVar("R")


def snapshot(cls: type[R], row: object) -> R:
    """Copy the attributes named by dataclass `cls` from an ORM row."""
    return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class SamplingRecord:
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    min_p: float | None = None
    dry_multiplier: float | None = None
    dry_base: float | None = None
    dry_allowed_length: int | None = None
    xtc_threshold: float | None = None
    xtc_probability: float | None = None
    max_new_tokens: int | None = None
    context_size: int | None = None
    user_rate_limit: int | None = None
    nsfw_policy: str | None = None
    busy_policy: str | None = None
    lorebook_budget: int | None = None
    lorebook_recursion: int | None = None
    card_scripts: bool | None = None
    stop_strings: list[str] | None = None


@dataclass(frozen=True, slots=True)
class GuildSettingsRecord(SamplingRecord):
    guild_id: int = 0
    approval_required: bool = False
    character_limit: int | None = None
    character_megabytes: int | None = None
    scene_rows: int | None = None
    scene_megabytes: int | None = None
    cast_limit: int | None = None
    summary_tokens: int | None = None
    #: Tokens a prompt's recall of old turns may take (0: off; None: the default).
    recall_tokens: int | None = None
    #: Tokens of what a character knows about the player speaking (0: off; None: the default).
    fact_tokens: int | None = None
    #: Tokens a prompt's pinned memories may take (0: off; None: the default).
    pin_tokens: int | None = None
    #: Days an archived scene is kept; None keeps it for ever.
    archive_keep_days: int | None = None


@dataclass(frozen=True, slots=True)
class ChannelSettingsRecord(SamplingRecord):
    channel_id: int = 0
    guild_id: int = 0
    enabled: bool = False
    reply_mode: str = "all"
    edit_policy: str = "offer"
    active_session_id: int | None = None
    author_note: str = ""
    author_note_depth: int = 4
    lorebook: dict[str, Any] | None = None
    answer_every_addressed: bool = False
    turn_order: str | None = None
    #: What characters know about the players goes into prompts here (None: yes).
    player_facts: bool | None = None
    initiative: bool = False
    initiative_quiet_minutes: int | None = None
    initiative_in_a_row: int | None = None
    initiative_auto_turns: int | None = None


@dataclass(frozen=True, slots=True)
class UserSettingsRecord:
    user_id: int
    nsfw_in_dms: bool = False


@dataclass(frozen=True, slots=True)
class CharacterRecord:
    id: int
    owner_id: int
    guild_id: int | None
    visibility: str
    approval: str
    name: str
    description: str
    personality: str
    scenario: str
    first_message: str
    alternate_greetings: list[str]
    example_messages: str
    system_prompt: str
    post_history_instructions: str
    creator_notes: str
    tags: list[str]
    creator: str
    character_version: str
    extensions: dict[str, Any]
    character_book: dict[str, Any] | None
    avatar: bytes | None
    nsfw: bool
    speech_level: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class PresetRecord:
    """A server's own sampling preset."""

    guild_id: int
    name: str
    preset_values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LorebookRecord:
    """A player's own lorebook, by name."""

    id: int
    owner_id: int
    name: str
    book: dict[str, Any]
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class PersonaRecord:
    user_id: int
    guild_id: int
    name: str
    description: str


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: int
    guild_id: int | None
    channel_id: int
    parent_channel_id: int | None
    character_id: int | None
    started_by: int
    started_at: datetime
    ended_at: datetime | None
    summary: str
    #: The newest message the summary covers (None: it covers none yet).
    summary_until_id: int | None = None
    #: Dropped history is folded into the summary automatically.
    summary_auto: bool = True
    #: A message the summary covers changed since it was written: it is to be rewritten.
    summary_stale: bool = False
    #: The summary last written by hand (None: never) and the newest message it covers.
    summary_written: str | None = None
    summary_written_until_id: int | None = None
    #: The scene's own author's note (None: its channel's applies), its depth and interval.
    author_note: str | None = None
    author_note_depth: int | None = None
    author_note_interval: int | None = None


@dataclass(frozen=True, slots=True)
class CastMemberRecord:
    """One character of a scene's cast, in `position` order."""

    session_id: int
    character_id: int
    position: int
    joined_at: datetime
    muted: bool = False


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: int
    session_id: int
    role: str
    author_id: int | None
    display_name: str
    content: str
    token_count: int | None
    discord_message_id: int | None
    swipe_group: int | None
    swipe_index: int
    chosen: bool
    deleted: bool
    created_at: datetime
    edited_at: datetime | None
    discord_message_ids: tuple[int, ...] = ()
    #: The character who spoke an assistant turn; None for player turns and for the lines of
    #: a guest (a speaker of an imported chat outside the cast, named by `display_name`).
    character_id: int | None = None
    #: The model's reasoning before the reply (None: none).
    reasoning: str | None = None

    @property
    def turn_group(self) -> int:
        """What every alternative of this turn shares: the swipe group, which starts when the
        first alternative is added; until then the turn's own id."""
        return self.swipe_group if self.swipe_group is not None else self.id

    def __post_init__(self) -> None:
        # A tuple, not the list the database hands back: immutable like the record, and the
        # garbage collector stops tracking it (recent history keeps thousands of records).
        if not isinstance(self.discord_message_ids, tuple):
            object.__setattr__(self, "discord_message_ids", tuple(self.discord_message_ids))


@dataclass(frozen=True, slots=True)
class PinRecord:
    """A line pinned into a scene's memory (see `models.ScenePin`)."""

    id: int
    session_id: int
    message_id: int | None
    author_id: int
    text: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class OpenReplyRecord:
    """A reply on screen that is not finished yet (see `models.OpenReply`)."""

    id: int
    guild_id: int | None
    channel_id: int
    parent_channel_id: int | None
    webhook_id: int | None
    session_id: int | None
    kind: str
    discord_message_ids: tuple[int, ...]
    created_at: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.discord_message_ids, tuple):
            object.__setattr__(self, "discord_message_ids", tuple(self.discord_message_ids))


@dataclass(frozen=True, slots=True)
class PlayerFactRecord:
    """Something a character knows about a player (see `models.PlayerFact`)."""

    id: int
    guild_id: int | None
    user_id: int
    character_id: int
    text: str
    source: str
    message_id: int | None
    created_at: datetime
