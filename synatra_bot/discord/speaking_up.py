"""Where characters who speak up on their own are shown in Discord (`roleplay.initiative`)."""

from __future__ import annotations

from typing import Any, Protocol

import discord

from synatra_bot.discord.interactions import editor_of
from synatra_bot.discord.replies import ReplyController
from synatra_bot.roleplay.core import ActiveRoleplay
from synatra_bot.roleplay.turns import Reply
from synatra_bot.roleplay.types import Actor, Place


class StageHost(Protocol):
    replies: ReplyController

    def serves(self, guild_id: int | None) -> bool: ...

    def get_channel(self, channel_id: int, /) -> Any: ...


class DiscordStage:
    """Posts a character's own turn through the same replies as any other, where Discord still
    lets it: the channel is this process's, the bot sees it, and who is charged the turn (the
    player who asked for it, else the scene's starter) is still in the server and may still
    speak there."""

    def __init__(self, host: StageHost) -> None:
        self.host = host

    def may_speak(self, place: Place, active: ActiveRoleplay, payer: Actor | None = None) -> bool:
        if place.dm or not self.host.serves(place.guild_id):
            return False
        channel = self.host.get_channel(place.channel_id)
        if not isinstance(channel, discord.TextChannel | discord.Thread):
            return False
        paying = payer.user_id if payer is not None else active.session.started_by
        member = channel.guild.get_member(paying)
        if member is None:
            return False
        return editor_of(member, channel, place.guild_id).can_speak

    async def perform(self, reply: Reply) -> None:
        channel = self.host.get_channel(reply.place.channel_id)
        if channel is not None:
            await self.host.replies.play(reply, channel=channel)
