"""Players' lines the gateway never delivered, read back from the channels after a new session.

Discord replays what a connection missed when its session RESUMEs. When the session is replaced
instead (the RESUME refused with INVALID_SESSION) or the process starts afresh, the events of the
gap are gone. So after every READY of a shard (a new session: at start and after a lost one; a
RESUME gets RESUMED, never READY), the running scenes of that shard's servers (and the DM scenes,
with shard 0) are read back from the newest message each one stores, and the players' lines found
go through the normal message path, oldest first: stored and answered as if they had come live.
A line this process took already, or one the scene stores, is not taken again.

The rule for lines that come back late: a line sent more than `LATE_AFTER` before it is read back
is not answered, and it stays out of the story. An answer that late would answer a conversation
that has moved on, and a line nobody answered, slipped into the story under later lines, is not
what its player wrote it for; whoever still wants an answer sends it again. Such lines are kept
only as removed lines (never shown to the model), so that no later read-back takes them again,
and the channel is told once, in a notice that answers the newest of them. Where a channel answers
only messages that mention the bot, a late line that does not mention it enters the story as such
lines always do: no answer was expected of it.

A scene whose newest turn is a player's line stored less than `LATE_AFTER` ago but never
answered (the process stopped between storing the line and showing its reply, or cut the reply
off) has that line answered once what was read back is handled (a line read back and answered
leaves none waiting).

The work is bounded: at most `SCENES` channels per READY (those played most recently), and the
newest `MESSAGES` messages of each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import discord

from synatra_bot.discord.i18n import t
from synatra_bot.storage.records import SessionRecord

if TYPE_CHECKING:
    from synatra_bot.discord.bot import SynatraBot

log = logging.getLogger(__name__)

#: A line read back later than this after it was sent is not answered (see the module docstring).
LATE_AFTER = timedelta(minutes=10)
#: Channels read back per READY of a shard, and messages read back per channel.
SCENES = 50
MESSAGES = 100

#: Hands a message read back to the normal message path (`late`: too old to be answered);
#: returns True when its line was left unanswered for being late.
TakeBack = Callable[[discord.Message, bool], Awaitable[bool]]
#: Answers a scene's newest line if it waits for its answer and was stored after the time given.
AnswerWaiting = Callable[[Any, SessionRecord, datetime], Awaitable[None]]


class CatchUp:
    """Reads back the running scenes of a shard after it got a new gateway session."""

    def __init__(self, bot: SynatraBot, take: TakeBack, answer_waiting: AnswerWaiting) -> None:
        self.bot = bot
        self.take = take
        self.answer_waiting = answer_waiting
        #: Now, on the clock Discord's timestamps use (tests move it).
        self.clock: Callable[[], datetime] = discord.utils.utcnow

    async def read_back(self, shard_id: int) -> int:
        """Read back the scenes of shard `shard_id`, every channel at once; returns how many."""
        guilds = [guild.id for guild in self.bot.guilds if guild.shard_id == shard_id]
        scenes = await self.bot.core.active_scenes(
            guild_ids=guilds, dms=shard_id == 0, limit=SCENES
        )
        await asyncio.gather(*(self._read_scene(scene, newest) for scene, newest in scenes))
        if scenes:
            log.info("read back %d scenes after a new session of shard %s", len(scenes), shard_id)
        return len(scenes)

    async def _read_scene(self, scene: SessionRecord, newest: int | None) -> None:
        try:
            channel = await self._channel(scene.channel_id)
            if channel is not None:
                await self._read_channel(channel, newest or _snowflake_at(scene.started_at))
                await self.answer_waiting(channel, scene, self.clock() - LATE_AFTER)
        except discord.HTTPException as error:
            log.info("could not read back channel %s: %s", scene.channel_id, error)
        except Exception:
            # One channel's failure must not keep the others from being read back.
            log.exception("reading back channel %s failed", scene.channel_id)

    async def _channel(self, channel_id: int) -> Any:
        """The channel, fetched when it is not cached (a DM, an archived thread); None when
        it is gone or holds no messages."""
        channel: Any = self.bot.get_channel(channel_id)
        if channel is None:
            try:
                channel = await self.bot.fetch_channel(channel_id)
            except (discord.NotFound, discord.Forbidden):
                return None
        return channel if isinstance(channel, discord.abc.Messageable) else None

    async def _read_channel(self, channel: Any, after_id: int) -> None:
        found: list[discord.Message] = []
        async for message in channel.history(limit=MESSAGES):  # the newest first
            if message.id <= after_id:
                break
            found.append(message)
        found.reverse()
        now = self.clock()
        late = [message for message in found if now - message.created_at > LATE_AFTER]
        recent = [message for message in found if now - message.created_at <= LATE_AFTER]
        unanswered = [message for message in late if await self.take(message, True)]
        if unanswered:
            await self._tell(channel, unanswered[-1], len(unanswered))
        for message in recent:
            await self.take(message, False)

    async def _tell(self, channel: Any, newest: discord.Message, count: int) -> None:
        minutes = int(LATE_AFTER.total_seconds() // 60)
        text = t(self.bot.locale_for(channel), "rp.missed_late", count=count, minutes=minutes)
        try:
            await channel.send(
                text,
                reference=newest.to_reference(fail_if_not_exists=False),
                mention_author=False,
            )
        except discord.HTTPException:
            log.info("could not tell channel %s of its late lines", channel.id)


def _snowflake_at(when: datetime) -> int:
    """The lowest Discord id of `when` (SQLite hands back naive UTC)."""
    return discord.utils.time_snowflake(when if when.tzinfo else when.replace(tzinfo=UTC))
