"""Small helpers for interactions: who is acting, where, and answering exactly once."""

from __future__ import annotations

import dataclasses
from typing import Any

import discord
from discord import app_commands

from synatra_bot.discord.i18n import t
from synatra_bot.roleplay.types import Actor, Place


class ComponentError(app_commands.AppCommandError):
    """An error from a modal or button, handed to the tree's error policy.

    (`CommandInvokeError` needs a command and fails on `None`.)"""

    def __init__(self, original: Exception) -> None:
        super().__init__(str(original))
        self.original = original


def is_moderator(member: discord.abc.User, permissions: discord.Permissions | None = None) -> bool:
    """Manage Server (or Administrator) in the guild: checked at runtime on every use."""
    if permissions is not None and (permissions.manage_guild or permissions.administrator):
        return True
    if isinstance(member, discord.Member):
        perms = member.guild_permissions
        return perms.manage_guild or perms.administrator
    return False


def actor_of(interaction: discord.Interaction[Any]) -> Actor:
    """Who runs a command or presses a button, with their rights in that very channel
    (Discord computes them, channel overwrites included, for every interaction)."""
    user = interaction.user
    permissions = interaction.permissions
    in_thread = isinstance(interaction.channel, discord.Thread)
    return Actor(
        user_id=user.id,
        display_name=user.display_name,
        guild_id=interaction.guild_id,
        is_moderator=interaction.guild_id is not None and is_moderator(user, permissions),
        # In a DM with the bot there are no channel permissions: its user may always speak.
        can_speak=interaction.guild_id is None
        or (permissions.send_messages_in_threads if in_thread else permissions.send_messages),
        can_read_history=interaction.guild_id is None or permissions.read_message_history,
        member_of=_servers_of(user) if interaction.guild_id is None else frozenset(),
    )


def _servers_of(user: discord.abc.User) -> frozenset[int]:
    """The servers a user shares with the bot (whose shared characters they may play in a DM)."""
    return frozenset(guild.id for guild in getattr(user, "mutual_guilds", ()))


def speaker_of(member: discord.abc.User, guild_id: int | None) -> Actor:
    """Who wrote a chat message. Talking needs no permission, so none is worked out (a
    member's permissions walk all their roles, on every message)."""
    if guild_id is None:
        return Actor(member.id, member.display_name, member_of=_servers_of(member))
    return Actor(user_id=member.id, display_name=member.display_name, guild_id=guild_id)


def editor_of(member: discord.abc.User, channel: Any, guild_id: int | None) -> Actor:
    """Who edited a chat message, with their voice in that channel now: an edit may lead to a
    post (a regenerated reply, an offer to regenerate), and a member may edit their old
    messages after losing Send Messages there."""
    actor = speaker_of(member, guild_id)
    if guild_id is None or not hasattr(channel, "permissions_for"):
        return actor
    guild = getattr(channel, "guild", None)
    found = guild.get_member(member.id) if guild is not None else None
    if found is None:
        return dataclasses.replace(actor, can_speak=False)  # no longer in the server
    permissions = channel.permissions_for(found)
    in_thread = isinstance(channel, discord.Thread)
    speaks = permissions.send_messages_in_threads if in_thread else permissions.send_messages
    return dataclasses.replace(actor, can_speak=speaks)


def place_of(channel: Any, guild_id: int | None) -> Place:
    """The Place of a text channel, thread or DM; threads carry their parent for webhooks."""
    if guild_id is None or isinstance(channel, discord.DMChannel):
        return Place(channel_id=channel.id, guild_id=0, dm=True)
    if isinstance(channel, discord.Thread):
        parent = channel.parent
        return Place(
            channel_id=channel.id,
            guild_id=guild_id,
            parent_channel_id=channel.parent_id,
            age_restricted=bool(parent is not None and parent.is_nsfw()),
        )
    nsfw = channel.is_nsfw() if hasattr(channel, "is_nsfw") else False
    return Place(channel_id=channel.id, guild_id=guild_id, age_restricted=bool(nsfw))


async def answer(
    interaction: discord.Interaction[Any],
    content: str | None = None,
    *,
    ephemeral: bool = True,
    **kwargs: Any,
) -> None:
    """Reply through `response` the first time and `followup` after: never respond twice."""
    kwargs.setdefault("allowed_mentions", discord.AllowedMentions.none())
    if interaction.response.is_done():
        await interaction.followup.send(
            content or discord.utils.MISSING, ephemeral=ephemeral, **kwargs
        )
    else:
        await interaction.response.send_message(content, ephemeral=ephemeral, **kwargs)


def tr(interaction: discord.Interaction[Any], key: str, **params: Any) -> str:
    return t(interaction.locale, key, **params)
