"""`/rp` and the conversation itself: players talk, the character answers through a webhook."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, TypeGuard

import discord
from discord import app_commands
from discord.ext import commands

from synatra_bot.discord.cogs.common import CharacterArg
from synatra_bot.discord.interactions import actor_of, answer, place_of, speaker_of, tr
from synatra_bot.discord.replies import ReplyButton, SwipePosition
from synatra_bot.errors import UserFacingError
from synatra_bot.roleplay.rules import (
    require_may_inspect,
    require_starter_or_moderator,
    require_voice,
)

if TYPE_CHECKING:
    from synatra_bot.discord.bot import SynatraBot

log = logging.getLogger(__name__)

#: Messages starting with these are out of character: neither stored nor answered.
OOC_PREFIXES = ("//", "((", "(OOC")


def _channel_types_ok(channel: Any) -> TypeGuard[discord.TextChannel | discord.Thread]:
    return isinstance(channel, discord.TextChannel | discord.Thread)


@app_commands.guild_only()
class Roleplay(commands.GroupCog, group_name="rp", group_description="Roleplay in this channel"):
    def __init__(self, bot: SynatraBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ReplyButton, SwipePosition)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ReplyButton, SwipePosition)

    # --- commands -----------------------------------------------------------------------------

    @app_commands.command(name="start", description="Start a roleplay with a character here")
    @app_commands.describe(
        character="Who to talk to", greeting="Which greeting to open with (1 = the first)"
    )
    async def start(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CharacterArg],
        greeting: app_commands.Range[int, 1, 50] = 1,
    ) -> None:
        channel, place, actor = self._where(interaction)
        require_voice(actor)
        core = self.bot.core
        config = await core.config_for(place)
        if not config.enabled:
            if not actor.is_moderator:
                raise UserFacingError("channel disabled", key="error.channel_disabled")
            await core.update_channel_settings(place, enabled=True)
        await core.ensure_can_start(actor, place)
        # A greeting is a message as the character: it counts like any other.
        self.bot.scheduler.charge(actor.user_id, config.user_rate_limit)
        await interaction.response.defer(thinking=True)
        await self.bot.scheduler.cancel_channel(place.channel_id, reason="a new roleplay started")
        started = await core.start(
            actor, place, character_id=character, greeting_index=greeting - 1
        )
        await answer(
            interaction,
            tr(interaction, "rp.started", name=started.character.name, user=actor.display_name),
            ephemeral=False,
        )
        active = await core.require_active(place)
        if started.greeting is not None:
            await self.bot.replies.show_greeting(
                channel, active, started.greeting, started.greeting_count
            )

    @app_commands.command(name="stop", description="End the roleplay here (history is kept)")
    async def stop(self, interaction: discord.Interaction[SynatraBot]) -> None:
        _, place, actor = self._where(interaction)
        active = await self.bot.core.require_active(place)
        require_starter_or_moderator(actor, active.session)
        await self.bot.scheduler.cancel_channel(place.channel_id, reason="roleplay stopped")
        await self.bot.core.stop(place)
        await answer(
            interaction, tr(interaction, "rp.stopped", name=active.character.name), ephemeral=False
        )

    @app_commands.command(
        name="reset", description="Start over with the same character (history archived)"
    )
    async def reset(self, interaction: discord.Interaction[SynatraBot]) -> None:
        channel, place, actor = self._where(interaction)
        active = await self.bot.core.require_active(place)
        require_starter_or_moderator(actor, active.session)
        self.bot.scheduler.charge(actor.user_id, active.config.user_rate_limit)
        await interaction.response.defer(thinking=True)
        await self.bot.scheduler.cancel_channel(place.channel_id, reason="roleplay reset")
        started = await self.bot.core.reset(actor, place)
        await answer(
            interaction, tr(interaction, "rp.reset", name=started.character.name), ephemeral=False
        )
        if started.greeting is not None:
            active = await self.bot.core.require_active(place)
            await self.bot.replies.show_greeting(
                channel, active, started.greeting, started.greeting_count
            )

    @app_commands.command(name="undo", description="Remove the last exchange from the story")
    async def undo(self, interaction: discord.Interaction[SynatraBot]) -> None:
        channel, place, actor = self._where(interaction)
        require_starter_or_moderator(actor, (await self.bot.core.require_active(place)).session)
        await self.bot.scheduler.cancel_channel(place.channel_id, reason="undo")
        removed = await self.bot.core.undo(place)
        if not removed:
            raise UserFacingError("nothing to undo", key="error.nothing_to_undo")
        await interaction.response.defer(ephemeral=True)
        active = await self.bot.core.require_active(place)
        writer = await self.bot.replies.writer_for(channel, active)
        for message in removed:
            if message.role == "assistant" and message.discord_message_ids:
                await writer.adopted(list(message.discord_message_ids)).discard()
        await answer(interaction, tr(interaction, "rp.undone", count=len(removed)))

    @app_commands.command(name="continue", description="Let the character keep talking")
    async def continue_(self, interaction: discord.Interaction[SynatraBot]) -> None:
        channel, place, actor = self._where(interaction)
        active = await self.bot.core.require_active(place)
        require_starter_or_moderator(actor, active.session)
        self.bot.replies.admit(active, place, actor)  # refused before anything is posted
        latest = await self.bot.core.latest_reply(place)
        await interaction.response.defer(ephemeral=True)
        await answer(interaction, tr(interaction, "rp.continuing"))
        await self.bot.replies.run(
            channel=channel,
            place=place,
            active=active,
            speaker=actor,
            kind="reply" if latest is None else "continue",
            target=latest,
            admitted=True,
        )

    @app_commands.command(name="memory", description="Show or set what the character remembers")
    @app_commands.describe(
        text="Long-term memory the model always sees (leave empty to show; '-' to clear)"
    )
    async def memory(
        self,
        interaction: discord.Interaction[SynatraBot],
        text: app_commands.Range[str, 1, 2000] | None = None,
    ) -> None:
        _, place, actor = self._where(interaction)
        active = await self.bot.core.require_active(place)
        if text is None:
            shown = active.session.summary or tr(interaction, "rp.memory_empty")
            await answer(interaction, shown[:2000])
            return
        require_starter_or_moderator(actor, active.session)
        memory = "" if text.strip() == "-" else text.strip()
        await self.bot.core.set_memory(place, memory)
        await answer(
            interaction, tr(interaction, "rp.memory_set" if memory else "rp.memory_cleared")
        )

    @app_commands.command(name="context", description="Show what the model sees (inspector)")
    async def context(self, interaction: discord.Interaction[SynatraBot]) -> None:
        _, place, actor = self._where(interaction)
        active = await self.bot.core.require_active(place)
        require_may_inspect(actor, active.session)
        built = await self.bot.core.build_prompt(active, speaker=actor)
        # A private card is its owner's alone: others learn how many of its lorebook entries
        # fired, not which (their names give the story away).
        character = active.character
        hide = character.visibility == "private" and actor.user_id != character.owner_id
        text = f"```\n{built.report.to_text(hide_card_entry_names=hide)[:1900]}\n```"
        if hide and any(note.book == "card" for note in built.report.lorebook):
            text += "\n" + tr(interaction, "rp.context_names_hidden")
        await answer(interaction, text)

    # --- the conversation ---------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.webhook_id is not None or message.guild is None:
            return  # our own replies come back as events too: drop them before any work
        # discord.py runs each listener in a task of its own: count it among the work shutdown
        # waits for (so the turn gets stored) and go on in it; a task of our own would cost
        # the reply another turn of the event loop before its first message goes out.
        self.bot.replies.track_current()
        await self._on_message(message)

    async def _on_message(self, message: discord.Message) -> None:
        assert message.guild is not None
        if not _channel_types_ok(message.channel) or message.type not in (
            discord.MessageType.default,
            discord.MessageType.reply,
        ):
            return
        content = self._story_text(message)
        if content is None:
            return
        place = place_of(message.channel, message.guild.id)
        core = self.bot.core
        active = await core.active(place)
        if active is None or not active.config.enabled:
            return
        me = self.bot.user
        mentioned = me is not None and me in message.mentions
        actor = speaker_of(message.author, message.guild.id)
        answered = active.config.reply_mode != "mention" or mentioned
        if answered:
            # A refused turn (rate limit, a character no longer available) costs one notice:
            # nothing is posted as the character and nothing enters the story.
            try:
                self.bot.replies.admit(active, place, actor)
            except UserFacingError as error:
                locale = self.bot.locale_for(message.channel)
                await self.bot.replies.tell(
                    message, message.channel, self.bot.replies.text(locale, error)
                )
                return
        # Store the player's turn while the reply's first message goes out: the prompt, built
        # once the turn is admitted, waits for it.
        stored = self.bot.replies.spawn(
            core.add_user_message(active, actor, content, discord_message_id=message.id)
        )
        if not answered:
            return
        await self.bot.replies.run(
            channel=message.channel,
            place=place,
            active=active,
            speaker=actor,
            notify=message,
            after=stored,
            admitted=True,
        )

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        author = payload.data.get("author") or {}
        if payload.data.get("webhook_id") or author.get("bot") or "content" not in payload.data:
            return  # edits of our own streaming replies: nothing to sync
        self.bot.replies.spawn(self._on_edit(payload))

    async def _on_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        content = self._story_text(payload.message)
        if content is None:
            # Edited into an out-of-character note (or emptied): it leaves the story.
            await self.bot.core.message_deleted(payload.message_id)
            return
        editor = speaker_of(payload.message.author, payload.guild_id)
        edited = await self.bot.core.message_edited(payload.message_id, content)
        if edited is None or not edited.is_last_user_turn or payload.guild_id is None:
            return
        channel = self.bot.get_channel(payload.channel_id)
        if not _channel_types_ok(channel):
            return
        place = place_of(channel, payload.guild_id)
        active = await self.bot.core.active(place)
        if active is None:
            return
        latest = await self.bot.core.latest_reply(place)
        if latest is None or latest.id < edited.message.id:
            return
        if active.config.edit_policy == "regenerate":
            await self.bot.replies.run(
                channel=channel,
                place=place,
                active=active,
                speaker=editor,  # the editor's turn: counted against their own limit
                kind="regenerate",
                target=latest,
            )
            return
        view = discord.ui.View(timeout=None)
        view.add_item(ReplyButton("regen", latest.id))
        locale = self.bot.locale_for(channel)
        from synatra_bot.discord.i18n import t

        try:
            await channel.send(
                t(locale, "rp.edit_offer"),
                view=view,
                delete_after=120,
                reference=discord.MessageReference(
                    message_id=payload.message_id,
                    channel_id=payload.channel_id,
                    fail_if_not_exists=False,
                ),
                mention_author=False,
            )
        except discord.HTTPException:
            log.info("could not offer a regeneration in %s", payload.channel_id)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        self.bot.replies.spawn(self.bot.core.message_deleted(payload.message_id))

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        for message_id in payload.message_ids:
            self.bot.replies.spawn(self.bot.core.message_deleted(message_id))

    # --- helpers ------------------------------------------------------------------------------

    def _story_text(self, message: discord.Message) -> str | None:
        """What a player's message adds to the story, the same for new and edited messages:
        mentions shown as names (no `<@id>` markup), the bot's own mention dropped; None
        for an out-of-character note or an empty message."""
        content = message.clean_content.strip()
        if not content or content.startswith(OOC_PREFIXES):
            return None
        me = self.bot.user
        if me is not None and me in message.mentions:
            content = content.replace(f"@{me.display_name}", "").strip() or content
        return content

    def _where(self, interaction: discord.Interaction[SynatraBot]) -> tuple[Any, Any, Any]:
        channel = interaction.channel
        if interaction.guild_id is None or channel is None or not _channel_types_ok(channel):
            raise UserFacingError(
                "use this in a server text channel or thread", key="error.channel_type"
            )
        return channel, place_of(channel, interaction.guild_id), actor_of(interaction)


async def setup(bot: SynatraBot) -> None:
    await bot.add_cog(Roleplay(bot))
