"""The Discord bot: an AutoShardedBot holding its dependencies, and one error policy."""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from synatra_bot.discord.i18n import KoreanTranslator, t
from synatra_bot.discord.interactions import answer
from synatra_bot.discord.replies import ReplyController
from synatra_bot.discord.speaking_up import DiscordStage
from synatra_bot.discord.unfinished import UnfinishedReplies
from synatra_bot.discord.webhooks import WebhookPool
from synatra_bot.engine.base import Engine
from synatra_bot.errors import EngineError, UserFacingError
from synatra_bot.observe import IGNORED, Observer
from synatra_bot.roleplay.archive import Archive
from synatra_bot.roleplay.initiative import Initiative, LoopTimers, Timers
from synatra_bot.roleplay.turns import Turns
from synatra_bot.settings import Settings

log = logging.getLogger(__name__)

#: The language of DM replies to a user whose Discord language is not known yet.
DM_LOCALE = "ko"
DM_LOCALES_KEPT = 10_000

COGS = (
    "synatra_bot.discord.cogs.roleplay",
    "synatra_bot.discord.cogs.characters",
    "synatra_bot.discord.cogs.personas",
    "synatra_bot.discord.cogs.moderation",
    "synatra_bot.discord.cogs.lorebooks",
)


@dataclass(frozen=True, slots=True)
class BotDependencies:
    settings: Settings
    turns: Turns
    engine: Engine
    observer: Observer = IGNORED
    #: The clock of the characters' quiet times (tests move their own).
    timers: Timers | None = None


def rest_trace(observer: Observer) -> aiohttp.TraceConfig:
    """Tell `observer` how Discord answered each REST request (webhooks' included: they
    share the client's session). discord.py waits out a 429 and sends again by itself, so the
    bot sees rate limits nowhere else."""

    async def ended(
        _session: aiohttp.ClientSession, _context: SimpleNamespace, params: Any
    ) -> None:
        observer.discord_response(params.response.status)

    async def failed(
        _session: aiohttp.ClientSession, _context: SimpleNamespace, _params: Any
    ) -> None:
        observer.discord_unreachable()

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(ended)
    trace.on_request_exception.append(failed)
    return trace


class SynatraTree(app_commands.CommandTree["SynatraBot"]):
    """Holds the error policy: domain errors go back ephemeral in the user's language;
    anything else is logged with its traceback and the user gets a short apology."""

    async def interaction_check(self, interaction: discord.Interaction[SynatraBot]) -> bool:
        # Every command runs in a task of discord.py's: track it, so that shutdown waits for
        # commands that are still writing to the database before it closes the database.
        interaction.client.replies.track_current()
        if interaction.guild_id is None:
            interaction.client.remember_dm_locale(interaction.user.id, str(interaction.locale))
        return True

    async def on_error(
        self, interaction: discord.Interaction[SynatraBot], error: app_commands.AppCommandError
    ) -> None:
        original = getattr(error, "original", error)
        if isinstance(original, UserFacingError):
            text = t(
                interaction.locale,
                original.key,
                message=interaction.client.public(original),
                **original.params,
            )
        elif isinstance(original, EngineError):
            text = t(
                interaction.locale,
                "error.engine",
                message=interaction.client.public(original, interaction.locale),
            )
        elif isinstance(error, app_commands.MissingPermissions | app_commands.CheckFailure):
            text = t(interaction.locale, "error.moderator_only")
        else:
            command = interaction.command.qualified_name if interaction.command else "?"
            log.error("command %s failed", command, exc_info=original)
            text = t(interaction.locale, "error.unexpected")
        try:
            await answer(interaction, text, ephemeral=True)
        except discord.HTTPException:
            log.warning("could not tell the user about an error", exc_info=True)


def _unless_from_webhook(parse: Callable[[Any], None], data: Any) -> None:
    if data.get("webhook_id") is None:
        parse(data)


class SynatraBot(commands.AutoShardedBot):
    """The bot. Its dependencies are built in `main()` and passed in, never created here."""

    def __init__(self, deps: BotDependencies, **options: Any) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        intents.members = True
        if deps.observer is not IGNORED:
            options.setdefault("http_trace", rest_trace(deps.observer))
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=SynatraTree,
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
            # Edits and deletes are read from the raw events; a message cache would only cost
            # a linear search and a copy for every streaming edit's echo.
            max_messages=None,
            **options,
        )
        self.deps = deps
        self.settings = deps.settings
        self.turns = deps.turns
        self.core = deps.turns.core
        self.scheduler = deps.turns.scheduler
        self.archive = Archive(self.turns)
        self.engine = deps.engine
        self.webhooks = WebhookPool()
        #: The language each DM user's Discord showed in their last command there.
        self._dm_locales: OrderedDict[int, str] = OrderedDict()
        self.replies = ReplyController(self)
        self.unfinished = UnfinishedReplies(self.replies)
        self.initiative = Initiative(self.turns, DiscordStage(self), deps.timers or LoopTimers())
        self._skip_webhook_messages()

    def _skip_webhook_messages(self) -> None:
        """Drop gateway events for messages that webhooks post or edit, before they are parsed.

        Every character reply comes back as a MESSAGE_CREATE and a MESSAGE_UPDATE per edit,
        and no listener here reads a webhook's messages, but discord.py builds a full Message
        for each (most of handling an event). Its parser table has no public hook, so the two
        entries are wrapped where present; a discord.py without it just parses as before.
        """
        parsers = getattr(self._connection, "parsers", None)
        if not isinstance(parsers, dict):
            return
        for event in ("MESSAGE_CREATE", "MESSAGE_UPDATE"):
            parse = parsers.get(event)
            if parse is not None:
                parsers[event] = functools.partial(_unless_from_webhook, parse)

    def public(self, error: BaseException, locale: discord.Locale | str | None = None) -> str:
        """An error's message as users may see it: an engine error's localised note where it
        names one (never the engine's URL or the server's answer), else its text with secrets
        (token, API key) masked."""
        if locale is not None and isinstance(error, EngineError) and error.key is not None:
            return t(locale, error.key, **error.params)
        text = str(error)
        for secret in self.settings.secrets:
            text = text.replace(secret, "***")
        return text

    def locale_for(self, channel: object) -> str:
        """The language for messages that answer no interaction: the server's own; in a DM
        the one its user's Discord used last (Korean until they used a command)."""
        if isinstance(channel, discord.DMChannel):
            user = channel.recipient
            return self._dm_locales.get(user.id, DM_LOCALE) if user else DM_LOCALE
        if getattr(channel, "type", None) is discord.ChannelType.private:
            return DM_LOCALE  # a DM known only by its id (its user is not known yet)
        guild = getattr(channel, "guild", None)
        return str(guild.preferred_locale) if guild is not None else "en-US"

    def remember_dm_locale(self, user_id: int, locale: str) -> None:
        self._dm_locales[user_id] = locale
        self._dm_locales.move_to_end(user_id)
        while len(self._dm_locales) > DM_LOCALES_KEPT:
            self._dm_locales.popitem(last=False)

    def serves(self, guild_id: int | None) -> bool:
        """Whether this process's shards hold `guild_id` (None: DMs, which shard 0 gets)."""
        if guild_id is None:
            return self.shard_ids is None or 0 in self.shard_ids
        return self.get_guild(guild_id) is not None

    async def on_message(self, message: discord.Message, /) -> None:
        """Every command is a slash command: a message goes to the roleplay's listener only,
        not first through the prefix-command parser (for every message in every channel)."""

    async def close(self) -> None:
        await self.unfinished.close()
        await self.replies.close()
        await super().close()

    async def setup_hook(self) -> None:
        from synatra_bot.discord import commands_ko

        await self.tree.set_translator(
            KoreanTranslator(
                commands=commands_ko.COMMAND_NAMES,
                options=commands_ko.OPTION_NAMES,
                choices=commands_ko.CHOICE_NAMES,
                descriptions=commands_ko.DESCRIPTIONS,
            )
        )
        for cog in COGS:
            await self.load_extension(cog)
        left = await self.unfinished.adopt_left_over()
        if left:
            log.info("%d replies were left unfinished on screen; finishing them once ready", left)
        if self.settings.dev_guild_id:
            guild = discord.Object(id=self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()

    async def on_ready(self) -> None:
        self.unfinished.start_sweeping()
        log.info(
            "logged in as %s (%s) in %d servers",
            self.user,
            self.user and self.user.id,
            len(self.guilds),
        )
