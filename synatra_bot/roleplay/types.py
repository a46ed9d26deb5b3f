"""Who is acting and where: the small value types the core takes from any front end."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Actor:
    """A person using the bot. `is_moderator` means Manage Server in that guild; `can_speak`
    means they may send messages where they act (a chat message's author always could), and
    `can_read_history` that they may read its history."""

    user_id: int
    display_name: str
    guild_id: int | None = None
    is_moderator: bool = False
    can_speak: bool = True
    #: Read Message History where they act: what a scene said there is theirs to read back.
    can_read_history: bool = True
    #: In a DM (no `guild_id`): the servers this user shares with the bot, whose shared
    #: characters they may play there.
    member_of: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Place:
    """A channel or thread, or a DM with the bot (`dm`; its guild_id is 0). Threads name
    their parent (webhooks live there)."""

    channel_id: int
    guild_id: int
    parent_channel_id: int | None = None
    age_restricted: bool = False
    dm: bool = False

    @property
    def settings_channel_id(self) -> int:
        """Threads follow their parent channel's configuration; only sessions are per thread."""
        return self.parent_channel_id or self.channel_id
