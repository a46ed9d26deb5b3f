"""Who is acting and where: the small value types the core takes from any front end."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Actor:
    """A person using the bot. `is_moderator` means Manage Server in that guild; `can_speak`
    means they may send messages where they act (a chat message's author always could)."""

    user_id: int
    display_name: str
    guild_id: int | None = None
    is_moderator: bool = False
    can_speak: bool = True


@dataclass(frozen=True, slots=True)
class Place:
    """A channel or thread. Threads name their parent (webhooks live there)."""

    channel_id: int
    guild_id: int
    parent_channel_id: int | None = None
    age_restricted: bool = False

    @property
    def settings_channel_id(self) -> int:
        """Threads follow their parent channel's configuration; only sessions are per thread."""
        return self.parent_channel_id or self.channel_id
