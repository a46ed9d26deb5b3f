"""`/rp` and the conversation itself: players talk, the character answers through a webhook."""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeGuard

import discord
from discord import app_commands
from discord.ext import commands

from synatra_bot.discord import suggestions
from synatra_bot.discord.catchup import CatchUp
from synatra_bot.discord.cogs.common import (
    CastArg,
    CharacterArg,
    SceneArg,
    require_attachment_size,
    scene_line,
)
from synatra_bot.discord.i18n import t
from synatra_bot.discord.inspector import context_view
from synatra_bot.discord.interactions import (
    actor_of,
    answer,
    editor_of,
    place_of,
    speaker_of,
    tr,
)
from synatra_bot.discord.pins import open_edit_form, open_pin_form, pins_embed
from synatra_bot.discord.replies import ReplyButton, SpeakButton, SwipePosition
from synatra_bot.discord.streaming import MESSAGE_LIMIT
from synatra_bot.discord.suggestions import SuggestionButton
from synatra_bot.errors import UserFacingError
from synatra_bot.roleplay.config import MAX_AUTO_TURNS
from synatra_bot.roleplay.core import MemoryStatus
from synatra_bot.roleplay.rules import (
    require_history,
    require_may_inspect,
    require_starter_or_moderator,
)
from synatra_bot.roleplay.turn_order import Reason
from synatra_bot.roleplay.turns import Said, SpokeUp
from synatra_bot.roleplay.types import Actor, Place
from synatra_bot.storage.ids import ID_MAX
from synatra_bot.storage.records import MessageRecord, SessionRecord

if TYPE_CHECKING:
    from synatra_bot.discord.bot import SynatraBot

log = logging.getLogger(__name__)

#: Messages starting with these are out of character: neither stored nor answered.
OOC_PREFIXES = ("//", "((", "(OOC")
#: How much of a reopened, branched or imported scene's newest reply is posted again.
RECAP_CHARS = 1500
#: How many guests of an imported chat its notice names (the rest are counted).
GUESTS_NAMED = 10


def _from_player(message: discord.Message) -> bool:
    """Written by a person: not a bot (this one included) and not a webhook (characters)."""
    return not message.author.bot and message.webhook_id is None


def _channel_types_ok(
    channel: Any,
) -> TypeGuard[discord.TextChannel | discord.Thread | discord.DMChannel]:
    """Where scenes play: server text channels, their threads, and DMs with the bot."""
    return isinstance(channel, discord.TextChannel | discord.Thread | discord.DMChannel)


@app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
class Roleplay(commands.GroupCog, group_name="rp", group_description="Roleplay in this channel"):
    def __init__(self, bot: SynatraBot) -> None:
        self.bot = bot
        # A message menu command cannot live in a group: it is made here and added to the tree.
        self.branch_menu = app_commands.ContextMenu(
            name="Branch from here", callback=self.branch_here
        )
        self.pin_menu = app_commands.ContextMenu(name="Remember this", callback=self.pin_here)
        for menu in (self.branch_menu, self.pin_menu):
            menu.allowed_contexts = app_commands.AppCommandContext(
                guild=True, dm_channel=True, private_channel=False
            )
        self.catch_up = CatchUp(bot, self._take_back, self._answer_waiting)

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ReplyButton, SwipePosition, SuggestionButton, SpeakButton)
        self.bot.tree.add_command(self.branch_menu)
        self.bot.tree.add_command(self.pin_menu)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ReplyButton, SwipePosition, SuggestionButton, SpeakButton)
        for menu in (self.branch_menu, self.pin_menu):
            self.bot.tree.remove_command(menu.name, type=menu.type)

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
        turns = self.bot.turns
        await turns.admit_start(actor, place)
        await interaction.response.defer(thinking=True)
        started = await turns.start(
            actor, place, character_id=character, greeting_index=greeting - 1
        )
        await answer(
            interaction,
            tr(interaction, "rp.started", name=started.character.name, user=actor.display_name),
            ephemeral=False,
        )
        await self.bot.replies.show_greeting(channel, started)

    @app_commands.command(name="stop", description="End the roleplay here (history is kept)")
    async def stop(self, interaction: discord.Interaction[SynatraBot]) -> None:
        _, place, actor = self._where(interaction)
        ended = await self.bot.turns.end(place, actor)
        await answer(interaction, tr(interaction, "rp.stopped", name=ended.names), ephemeral=False)

    @app_commands.command(
        name="reset", description="Start over with the same character (history archived)"
    )
    async def reset(self, interaction: discord.Interaction[SynatraBot]) -> None:
        channel, place, actor = self._where(interaction)
        await self.bot.turns.admit_reset(actor, place)
        await interaction.response.defer(thinking=True)
        started = await self.bot.turns.reset(actor, place)
        await answer(
            interaction, tr(interaction, "rp.reset", name=started.character.name), ephemeral=False
        )
        await self.bot.replies.show_greeting(channel, started)

    @app_commands.command(name="undo", description="Remove the last exchange from the story")
    async def undo(self, interaction: discord.Interaction[SynatraBot]) -> None:
        channel, place, actor = self._where(interaction)
        removed = await self.bot.turns.undo(place, actor)
        await interaction.response.defer(ephemeral=True)
        active = await self.bot.core.require_active(place)
        await self.bot.replies.take_back(channel, active, removed)
        await answer(interaction, tr(interaction, "rp.undone", count=len(removed)))

    @app_commands.command(name="continue", description="Let the character keep talking")
    async def continue_(self, interaction: discord.Interaction[SynatraBot]) -> None:
        channel, place, actor = self._where(interaction)
        reply = await self.bot.turns.continue_reply(place, actor)  # refused before it posts
        await interaction.response.defer(ephemeral=True)
        await answer(interaction, tr(interaction, "rp.continuing"))
        await self.bot.replies.play(reply, channel=channel)

    @app_commands.command(name="next", description="Let one character of the scene speak now")
    @app_commands.describe(
        character="Who speaks (leave empty: one who has not spoken since the last player line)"
    )
    async def next_(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CastArg] | None = None,
    ) -> None:
        channel, place, actor = self._where(interaction)
        reply = await self.bot.turns.next_speaker(place, actor, character)
        await interaction.response.defer(ephemeral=True)
        await answer(interaction, tr(interaction, "rp.next", name=reply.character.name))
        await self.bot.replies.play(reply, channel=channel)

    @app_commands.command(
        name="auto", description="Let the scene's characters take turns among themselves"
    )
    @app_commands.describe(turns="How many turns (a player's message or ⏹ stops them)")
    async def auto(
        self,
        interaction: discord.Interaction[SynatraBot],
        turns: app_commands.Range[int, 1, MAX_AUTO_TURNS],
    ) -> None:
        _, place, actor = self._where(interaction)

        async def refused(error: UserFacingError) -> None:
            # A later turn over their rate limit: the run ends, and they are told.
            try:
                await answer(interaction, tr(interaction, "rp.auto_limited", **error.params))
            except discord.HTTPException:
                log.info("could not tell %s why the turns stopped", actor.user_id)

        # Refused before anything starts.
        await self.bot.initiative.auto(place, actor, turns, on_refused=refused)
        await answer(interaction, tr(interaction, "rp.auto", turns=turns))

    cast = app_commands.Group(name="cast", description="Who is in this scene")

    @cast.command(name="add", description="Bring a character into the scene")
    @app_commands.describe(character="Who joins")
    async def cast_add(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CharacterArg],
    ) -> None:
        channel, place, actor = self._where(interaction)
        joined = await self.bot.turns.join(actor, place, character)
        await answer(
            interaction,
            tr(interaction, "rp.cast_added", name=joined.character.name),
            ephemeral=False,
        )
        await self.bot.replies.show_greeting(channel, joined)

    @cast.command(name="remove", description="Take a character out of the scene")
    @app_commands.describe(character="Who leaves")
    async def cast_remove(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CastArg],
    ) -> None:
        _, place, actor = self._where(interaction)
        left = await self.bot.turns.leave(actor, place, character)
        await answer(
            interaction, tr(interaction, "rp.cast_removed", name=left.name), ephemeral=False
        )

    @cast.command(name="list", description="Who is in this scene")
    async def cast_list(self, interaction: discord.Interaction[SynatraBot]) -> None:
        _, place, _ = self._where(interaction)
        active = await self.bot.core.require_active(place)
        limit = active.config.cast_limit
        lines = [
            f"{n}. {c.name}" + (" 🔇" if c.id in active.muted else "")
            for n, c in enumerate(active.cast, start=1)
        ]
        text = tr(interaction, "rp.cast_list", count=len(active.cast), limit=limit)
        order = tr(interaction, f"turn.order.{active.config.turn_order}")
        lines.append("-# " + tr(interaction, "rp.turn_order", order=order))
        await answer(interaction, text + "\n" + "\n".join(lines))

    @app_commands.command(
        name="mute",
        description="Keep a character from answering on its own (/rp next still calls it)",
    )
    @app_commands.describe(character="Who keeps quiet")
    async def mute(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CastArg],
    ) -> None:
        await self._set_muted(interaction, character, muted=True)

    @app_commands.command(
        name="unmute", description="Let a muted character answer on its own again"
    )
    @app_commands.describe(character="Who speaks again")
    async def unmute(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CastArg],
    ) -> None:
        await self._set_muted(interaction, character, muted=False)

    async def _set_muted(
        self, interaction: discord.Interaction[SynatraBot], character_id: int, *, muted: bool
    ) -> None:
        _, place, actor = self._where(interaction)
        changed = await self.bot.core.set_muted(
            actor, place, character_id=character_id, muted=muted
        )
        key = "rp.muted" if muted else "rp.unmuted"
        await answer(interaction, tr(interaction, key, name=changed.name), ephemeral=False)

    @app_commands.command(
        name="suggest", description="Let the model write your next line (only you see it)"
    )
    async def suggest(self, interaction: discord.Interaction[SynatraBot]) -> None:
        self._where(interaction)
        await suggestions.suggest(interaction)

    @app_commands.command(name="sessions", description="This channel's scenes, earlier ones too")
    async def sessions(self, interaction: discord.Interaction[SynatraBot]) -> None:
        _, place, _ = self._where(interaction)
        scenes = await self.bot.archive.scenes(place)
        if not scenes:
            await answer(interaction, tr(interaction, "rp.no_scenes"))
            return
        lines = [scene_line(interaction, scene) for scene in scenes]
        await answer(interaction, tr(interaction, "rp.scenes") + "\n" + "\n".join(lines))

    @app_commands.command(name="resume", description="Reopen an earlier scene of this channel")
    @app_commands.describe(scene="Which scene (see /rp sessions)")
    async def resume(
        self,
        interaction: discord.Interaction[SynatraBot],
        scene: app_commands.Transform[int, SceneArg],
    ) -> None:
        channel, place, actor = self._where(interaction)
        reopened = await self.bot.archive.resume(actor, place, scene)
        active = await self.bot.core.require_active(place)
        await answer(
            interaction,
            tr(interaction, "rp.resumed", id=reopened.id, name=active.names),
            ephemeral=False,
        )
        await self._show_where_it_stands(channel, place, actor)

    @app_commands.command(
        name="branch", description="Go on in a new scene from here; this one stays archived"
    )
    async def branch(self, interaction: discord.Interaction[SynatraBot]) -> None:
        _, place, actor = self._where(interaction)
        active = await self.bot.core.require_active(place)
        newest = await self.bot.core.recent(active)
        if not newest:
            raise UserFacingError("nothing to branch from", key="error.nothing_to_branch")
        await self._branched(
            interaction, await self.bot.archive.branch(actor, place, newest[-1].id)
        )

    async def branch_here(
        self, interaction: discord.Interaction[SynatraBot], message: discord.Message
    ) -> None:
        """The message menu's "Branch from here": a new scene up to that message."""
        _, place, actor = self._where(interaction)
        branch = await self.bot.archive.branch_at(actor, place, message.id)
        await self._branched(interaction, branch)

    async def pin_here(
        self, interaction: discord.Interaction[SynatraBot], message: discord.Message
    ) -> None:
        """The message menu's "Remember this": pin the turn (edited in a form) into memory."""
        _, place, _ = self._where(interaction)
        await open_pin_form(interaction, message, place)

    async def _branched(
        self, interaction: discord.Interaction[SynatraBot], branch: SessionRecord
    ) -> None:
        channel, place, actor = self._where(interaction)
        active = await self.bot.core.require_active(place)
        await answer(
            interaction,
            tr(interaction, "rp.branched", id=branch.id, name=active.names),
            ephemeral=False,
        )
        await self._show_where_it_stands(channel, place, actor)

    async def _show_where_it_stands(self, channel: Any, place: Place, actor: Actor) -> None:
        """After a scene changed under the players: its newest reply as the channel shows it
        (its card's display scripts applied, for `actor`), with its buttons, cut to its last
        `RECAP_CHARS` characters (one message: however long an imported line, reopening a
        scene never floods the channel)."""
        active = await self.bot.core.require_active(place)
        latest = await self.bot.core.latest_reply(place)
        if latest is not None:
            character = active.member(latest.character_id)
            if character is None:
                # A guest of an imported chat speaks under its own name.
                character = dataclasses.replace(
                    active.lead, name=latest.display_name or active.lead.name
                )
            shown = await self.bot.turns.shown_now(latest, place, actor)
            if len(shown.text) > RECAP_CHARS:
                shown = dataclasses.replace(shown, display="…" + shown.text[-RECAP_CHARS:])
            await self.bot.replies.show(channel, character, shown)

    @app_commands.command(name="export", description="This scene as a SillyTavern chat file")
    async def export(self, interaction: discord.Interaction[SynatraBot]) -> None:
        _, place, actor = self._where(interaction)
        require_history(actor)
        name, data = await self.bot.archive.export(place)
        await answer(
            interaction,
            tr(interaction, "rp.exported"),
            file=discord.File(io.BytesIO(data), filename=_safe_filename(name)),
        )

    @app_commands.command(
        name="import", description="Continue a SillyTavern chat (.jsonl) here with a character"
    )
    @app_commands.describe(
        file="A SillyTavern chat file (.jsonl)",
        character="Who leads it (a group chat's other speakers join by name)",
    )
    async def import_chat(
        self,
        interaction: discord.Interaction[SynatraBot],
        file: discord.Attachment,
        character: app_commands.Transform[int, CharacterArg],
    ) -> None:
        channel, place, actor = self._where(interaction)
        require_attachment_size(file, self.bot.settings.max_attachment_bytes)
        if not file.filename.lower().endswith(".jsonl"):
            raise UserFacingError("not a chat file", key="error.chat_file_type")
        await self.bot.turns.admit_start(actor, place)
        await interaction.response.defer(thinking=True)
        imported = await self.bot.archive.import_chat(
            actor, place, data=await file.read(), filename=file.filename, character_id=character
        )
        text = tr(
            interaction,
            "rp.imported",
            name=", ".join(c.name for c in imported.cast),
            count=imported.turns,
        )
        if imported.guests:
            names = ", ".join(imported.guests[:GUESTS_NAMED])
            if len(imported.guests) > GUESTS_NAMED:
                names += f" (+{len(imported.guests) - GUESTS_NAMED})"
            text += "\n" + tr(interaction, "rp.imported_guests", names=names)
        if len(text) > MESSAGE_LIMIT:
            text = text[: MESSAGE_LIMIT - 1] + "…"
        await answer(interaction, text, ephemeral=False)
        await self._show_where_it_stands(channel, place, actor)

    @app_commands.command(
        name="dm-nsfw", description="NSFW characters in your own DMs with the bot (adults only)"
    )
    @app_commands.describe(enabled="On: NSFW characters may play in your DMs with the bot")
    async def dm_nsfw(self, interaction: discord.Interaction[SynatraBot], enabled: bool) -> None:
        await self.bot.core.set_nsfw_in_dms(interaction.user.id, enabled)
        await answer(interaction, tr(interaction, "rp.dm_nsfw_on" if enabled else "rp.dm_nsfw_off"))

    @app_commands.command(name="memory", description="Show or set what the character remembers")
    @app_commands.describe(
        text="Long-term memory the model always sees (leave empty to show; '-' to clear)",
        auto="Fold what falls out of the prompt into it automatically (on by default)",
        edit_pin="Edit a pinned memory (its number in the list)",
        remove_pin="Remove a pinned memory (its number in the list)",
    )
    async def memory(
        self,
        interaction: discord.Interaction[SynatraBot],
        text: app_commands.Range[str, 1, 2000] | None = None,
        auto: bool | None = None,
        edit_pin: app_commands.Range[int, 1, ID_MAX] | None = None,
        remove_pin: app_commands.Range[int, 1, ID_MAX] | None = None,
    ) -> None:
        _, place, actor = self._where(interaction)
        require_history(actor)
        core = self.bot.core
        active = await core.require_active(place)
        if edit_pin is not None:
            await open_edit_form(interaction, active.session, edit_pin)
            return
        if text is None and auto is None and remove_pin is None:
            pins = await core.pins.of(active.session.id)
            await answer(
                interaction,
                _memory_text(interaction, await core.memory_status(place)),
                embed=pins_embed(interaction, pins, core.pins.limit),
            )
            return
        if text is not None or auto is not None:
            require_starter_or_moderator(actor, active.session)
        said = []
        if remove_pin is not None:
            gone = await self.bot.turns.unpin(actor, active, remove_pin)
            said.append(tr(interaction, "rp.pin_removed", id=gone.id))
        if auto is not None:
            await core.set_auto_memory(place, auto)
            said.append(tr(interaction, "rp.memory_auto_on" if auto else "rp.memory_auto_off"))
        if text is not None:
            memory = "" if text.strip() == "-" else text.strip()
            await core.set_memory(place, memory)
            said.append(tr(interaction, "rp.memory_set" if memory else "rp.memory_cleared"))
        await answer(interaction, "\n".join(said))

    @app_commands.command(name="context", description="Show what the model sees (inspector)")
    @app_commands.describe(character="Whose next reply (default: the scene's first character)")
    async def context(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CastArg] | None = None,
    ) -> None:
        _, place, actor = self._where(interaction)
        active = await self.bot.core.require_active(place)
        require_may_inspect(actor, active.session)
        speaking = active.member(character) if character is not None else None
        # The preview answers the scene's last player, as the next reply would: the person
        # asking (a moderator who never played) is not added to it.
        preview = await self.bot.core.build_prompt(active, speaker=None, character=speaking)
        # A private card is its owner's alone: others learn how many of its lorebook entries
        # fired, not which (their names give the story away), and get no copy of the prompt.
        hide = any(c.visibility == "private" and actor.user_id != c.owner_id for c in active.cast)
        view = context_view(
            interaction.locale,
            sent=self.bot.turns.sent.last(active.session.id),
            preview=preview,
            preview_speaker=(speaking or active.lead).name,
            engine=self.bot.engine.health(),
            hide_card=hide,
            viewer_id=actor.user_id,
            picks=_spoke_up_text(interaction, self.bot.turns.last_spoke_up(place))
            or _picks_text(interaction, self.bot.turns.last_picks(place)),
        )
        if view.file is None:
            await answer(interaction, view.content)
        else:
            await answer(interaction, view.content, file=view.file)

    # --- the conversation ---------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if not _from_player(message):
            return  # our own replies come back as events too: drop them before any work
        # discord.py runs each listener in a task of its own: count it among the work shutdown
        # waits for (so the turn gets stored) and go on in it; a task of our own would cost
        # the reply another turn of the event loop before its first message goes out.
        self.bot.replies.track_current()
        await self._on_message(message)

    @commands.Cog.listener()
    async def on_shard_ready(self, shard_id: int) -> None:
        # A new gateway session (at start, or one replacing a lost session): what was said
        # meanwhile is only in the channels' history.
        self.bot.replies.spawn(self.catch_up.read_back(shard_id))

    async def _take_back(self, message: discord.Message, late: bool) -> bool:
        """A message read back after a new gateway session, handled as if it came live;
        True when its line came too late to be answered (`catchup`)."""
        if not _from_player(message):
            # One of the bot's replies, cut off before its record was written.
            await self.bot.unfinished.finish_found(message)
            return False
        said = await self._on_message(message, late=late, read_back=True)
        return said is not None and said.too_late

    async def _answer_waiting(self, channel: Any, scene: SessionRecord, since: datetime) -> None:
        """Answer the scene's newest line if it is a player's, stored after `since`, that never
        got its answer (`catchup`)."""
        place = place_of(channel, scene.guild_id)
        active = await self.bot.core.active(place)
        if active is None or active.session.id != scene.id:
            return
        history = await self.bot.core.recent(active)
        line = history[-1] if history else None
        if line is None or line.role != "user" or line.discord_message_id is None:
            return
        created = line.created_at if line.created_at.tzinfo else line.created_at.replace(tzinfo=UTC)
        if created < since:
            return
        try:
            message = await channel.fetch_message(line.discord_message_id)
        except discord.HTTPException:
            return  # deleted meanwhile: nothing to answer
        replies = self.bot.replies
        try:
            said = await self.bot.turns.answer_waiting(
                place, speaker_of(message.author, scene.guild_id), line
            )
        except UserFacingError as error:
            log.info("the waiting line in %s is not answered: %s", channel.id, error)
            return
        log.info("answering the line left waiting in channel %s", channel.id)
        async for reply in said.replies():
            await replies.play(reply, channel=channel, notify=message)

    async def _on_message(
        self, message: discord.Message, *, late: bool = False, read_back: bool = False
    ) -> Said | None:
        if not _channel_types_ok(message.channel) or message.type not in (
            discord.MessageType.default,
            discord.MessageType.reply,
        ):
            return None
        content = self._story_text(message)
        if content is None:
            return None
        guild_id = message.guild.id if message.guild is not None else None
        place = place_of(message.channel, guild_id)
        me = self.bot.user
        mentioned = me is not None and me in message.mentions
        actor = speaker_of(message.author, guild_id)
        replies = self.bot.replies
        try:
            said = await self.bot.turns.say(
                place,
                actor,
                content,
                message_id=message.id,
                sent_at=message.created_at,
                mentioned=mentioned,
                late=late,
                read_back=read_back,
                on_wait=replies.waiting_notice(message),
            )
        except UserFacingError as error:
            # A refused turn (rate limit, a character no longer available, a line the database
            # could not keep) costs one notice: nothing is posted as the character and nothing
            # enters the story.
            locale = self.bot.locale_for(message.channel)
            await replies.tell(message, message.channel, replies.text(locale, error))
            return None
        if said is None:
            return None
        replies.track(said.stored)
        if not said.answered:
            await replies.unless_kept(said.stored, message)
        async for reply in said.replies():
            await replies.play(reply, channel=message.channel, notify=message)
        return said

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        author = payload.data.get("author") or {}
        if payload.data.get("webhook_id") or author.get("bot") or "content" not in payload.data:
            return  # edits of our own streaming replies: nothing to sync
        self.bot.replies.spawn(self._on_edit(payload))

    async def _on_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        # Edited into an out-of-character note (or emptied): it leaves the story.
        content = self._story_text(payload.message)
        # discord.py caches no DM channel it only got messages in: the edited message has it.
        channel = self.bot.get_channel(payload.channel_id) or payload.message.channel
        editor = editor_of(payload.message.author, channel, payload.guild_id)
        place = place_of(channel, payload.guild_id) if _channel_types_ok(channel) else None
        try:
            edited = await self.bot.turns.edited(place, editor, payload.message_id, content)
        except UserFacingError as error:
            locale = self.bot.locale_for(channel)
            await self.bot.replies.tell(None, channel, self.bot.replies.text(locale, error))
            return
        if edited.regenerate is not None:
            await self.bot.replies.play(edited.regenerate, channel=channel)
        elif edited.offer is not None:
            await self._offer_regeneration(channel, payload, edited.offer)

    async def _offer_regeneration(
        self, channel: Any, payload: discord.RawMessageUpdateEvent, latest: MessageRecord
    ) -> None:
        view = discord.ui.View(timeout=None)
        view.add_item(ReplyButton("regen", latest.id))
        locale = self.bot.locale_for(channel)
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
        self.bot.replies.spawn(self.bot.turns.deleted(payload.message_id))

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        for message_id in payload.message_ids:
            self.bot.replies.spawn(self.bot.turns.deleted(message_id))

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
        if channel is None or not _channel_types_ok(channel):
            raise UserFacingError(
                "use this in a server text channel, a thread or a DM", key="error.channel_type"
            )
        return channel, place_of(channel, interaction.guild_id), actor_of(interaction)


def _memory_text(interaction: discord.Interaction[SynatraBot], status: MemoryStatus) -> str:
    """A scene's memory with what it covers, for `/rp memory`."""
    if status.covers is not None:
        first, until = status.covers
        covered = tr(interaction, "rp.memory_covers", first=first, until=until)
    else:
        covered = tr(interaction, "rp.memory_covers_none")
    facts = [
        tr(interaction, "rp.memory_tokens", tokens=status.tokens, limit=status.limit),
        covered,
        tr(interaction, "rp.memory_auto_on" if status.auto else "rp.memory_auto_off"),
    ]
    if status.stale:
        facts.append(tr(interaction, "rp.memory_stale"))
    if status.updating:
        facts.append(tr(interaction, "rp.memory_updating"))
    body = status.text or tr(interaction, "rp.memory_empty")
    head = "-# " + " · ".join(facts) + "\n"
    return head + body[: 2000 - len(head)]


def _picks_text(interaction: discord.Interaction[SynatraBot], picks: Sequence[Reason]) -> str:
    """Who answered the newest line and why, for the inspector (a line of at most 300
    characters; empty when nobody answered one in this process)."""
    if not picks:
        return ""
    shown = []
    for pick in picks:
        why = tr(
            interaction,
            f"turn.why.{pick.why}",
            share=f"{pick.talkativeness or 0:.2f}",
            draw=f"{pick.draw or 0:.2f}",
        )
        shown.append(f"{pick.name} ({why})")
    line = "\n" + tr(interaction, "rp.context_picks", picks=", ".join(shown))
    return line if len(line) <= 300 else line[:299] + "…"


def _spoke_up_text(interaction: discord.Interaction[SynatraBot], why: SpokeUp | None) -> str:
    """Why the newest reply came with nobody speaking to it, for the inspector ("" when a
    player's line was answered last)."""
    if why is None:
        return ""
    if why.turn > 1 or not why.quiet_minutes:  # a later turn, or asked for with /rp auto
        text = tr(interaction, "rp.context_auto_turn", name=why.name, turn=why.turn, of=why.of)
    else:
        text = tr(interaction, "rp.context_spoke_up", name=why.name, minutes=why.quiet_minutes)
    return "\n" + text[:298]


def _safe_filename(name: str) -> str:
    """A file name Discord keeps as written: no path separators or control characters."""
    kept = "".join(c for c in name if c.isprintable() and c not in '/\\:*?"<>|')
    return kept.strip()[:100] or "scene.jsonl"


async def setup(bot: SynatraBot) -> None:
    await bot.add_cog(Roleplay(bot))
