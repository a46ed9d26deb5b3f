"""`/persona`: who the player is in the story ({{user}} and the persona block), and what the
characters know about them here (`/persona memory`: their own facts only, in this server or
this DM)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from synatra_bot.discord.cogs.common import CharacterArg
from synatra_bot.discord.interactions import answer, place_of, tr
from synatra_bot.prompt.player_facts import MAX_FACT_CHARS
from synatra_bot.roleplay.names import taken_by
from synatra_bot.storage import repository as repo
from synatra_bot.storage.ids import ID_MAX
from synatra_bot.storage.records import PlayerFactRecord

if TYPE_CHECKING:
    from synatra_bot.discord.bot import SynatraBot

MAX_PERSONA_NAME = 64
MAX_PERSONA_DESCRIPTION = 2000
#: Discord's limit on a message's content.
MESSAGE_LIMIT = 2000


class Personas(commands.GroupCog, group_name="persona", group_description="Your roleplay persona"):
    def __init__(self, bot: SynatraBot) -> None:
        self.bot = bot

    @app_commands.command(name="set", description="Set the name and description you play as")
    @app_commands.describe(
        name="The name characters call you ({{user}})",
        description="Who you are in the story",
        everywhere="Use this persona in every server (default: only this one)",
    )
    async def set_persona(
        self,
        interaction: discord.Interaction[SynatraBot],
        name: app_commands.Range[str, 1, MAX_PERSONA_NAME],
        description: app_commands.Range[str, 0, MAX_PERSONA_DESCRIPTION] = "",
        everywhere: bool = False,
    ) -> None:
        refusal = await self._refusal(interaction, name)
        if refusal is not None:
            await answer(interaction, refusal)
            return
        guild_id = 0 if everywhere or interaction.guild_id is None else interaction.guild_id
        await self.bot.core.set_persona(
            interaction.user.id, guild_id, name=name.strip(), description=description.strip()
        )
        await answer(interaction, tr(interaction, "persona.set", name=name.strip()))

    async def _refusal(self, interaction: discord.Interaction[SynatraBot], name: str) -> str | None:
        """Why `name` may not be the player's persona here, or None: it would pass for a
        character of the scene in this channel, or for another member of the server (or the
        bot), so lines posted for the player could be read as theirs."""
        if interaction.channel is not None:
            place = place_of(interaction.channel, interaction.guild_id)
            active = await self.bot.core.active(place)
            cast = [character.name for character in active.cast] if active else []
            character = taken_by(name, cast)
            if character is not None:
                return tr(interaction, "persona.taken_character", name=character)
        others: list[str] = []
        me = self.bot.user
        if me is not None:
            others += [me.name, me.display_name]
        guild = interaction.guild
        for member in guild.members if guild is not None else ():
            if member.id != interaction.user.id:
                others += [member.name, member.display_name, member.global_name or ""]
        if taken_by(name, others) is not None:
            return tr(interaction, "persona.taken_member")
        return None

    @app_commands.command(name="clear", description="Forget your persona and use your display name")
    async def clear_persona(self, interaction: discord.Interaction[SynatraBot]) -> None:
        cleared = await self.bot.core.clear_persona(interaction.user.id, interaction.guild_id or 0)
        await answer(interaction, tr(interaction, "persona.cleared" if cleared else "persona.none"))

    @app_commands.command(name="show", description="Show the persona you play as here")
    async def show_persona(self, interaction: discord.Interaction[SynatraBot]) -> None:
        persona = await self.bot.core.persona(interaction.user.id, interaction.guild_id)
        if persona is None:
            text = tr(interaction, "persona.none")
        else:
            text = f"**{persona.name}**\n{persona.description}".strip()
        await answer(interaction, text)

    memory = app_commands.Group(name="memory", description="What characters know about you here")

    @memory.command(name="list", description="List what characters know about you here")
    async def memory_list(self, interaction: discord.Interaction[SynatraBot]) -> None:
        facts = await self.bot.core.facts.facts(interaction.guild_id, interaction.user.id)
        if not facts:
            await answer(interaction, tr(interaction, "facts.none"))
            return
        await answer(interaction, await self._listing(interaction, facts))

    async def _listing(
        self, interaction: discord.Interaction[SynatraBot], facts: list[PlayerFactRecord]
    ) -> str:
        """The facts by character, each with its id and source, within one message."""
        lines = [tr(interaction, "facts.heading")]
        character_id = None
        for shown, fact in enumerate(facts):
            if fact.character_id != character_id:
                character_id = fact.character_id
                record = await repo.get_character(self.bot.core.sessions, character_id=character_id)
                name = record.name if record is not None else "?"
                lines.append(f"**{discord.utils.escape_markdown(name)}** (#{character_id})")
            source = tr(interaction, f"facts.source.{fact.source}")
            line = f"`{fact.id}` {discord.utils.escape_markdown(fact.text)} ({source})"
            more = tr(interaction, "facts.more", n=len(facts) - shown)
            if sum(len(x) + 1 for x in lines) + len(line) + len(more) + 2 > MESSAGE_LIMIT:
                lines.append(more)
                break
            lines.append(line)
        return "\n".join(lines)

    @memory.command(name="edit", description="Change something a character knows about you")
    @app_commands.describe(fact="The fact's number (see /persona memory list)", text="Its new text")
    async def memory_edit(
        self,
        interaction: discord.Interaction[SynatraBot],
        fact: app_commands.Range[int, 1, ID_MAX],
        text: app_commands.Range[str, 1, MAX_FACT_CHARS],
    ) -> None:
        edited = await self.bot.core.facts.edit(
            interaction.guild_id, interaction.user.id, fact, text
        )
        await answer(interaction, tr(interaction, "facts.edited", id=edited.id, text=edited.text))

    @memory.command(name="delete", description="Make a character forget something about you")
    @app_commands.describe(fact="The fact's number (see /persona memory list)")
    async def memory_delete(
        self,
        interaction: discord.Interaction[SynatraBot],
        fact: app_commands.Range[int, 1, ID_MAX],
    ) -> None:
        deleted = await self.bot.core.facts.delete(
            interaction.guild_id, interaction.user.id, fact_id=fact
        )
        key = "facts.deleted" if deleted else "facts.not_found"
        await answer(interaction, tr(interaction, key, id=fact))

    @memory.command(name="clear", description="Make a character forget everything about you here")
    @app_commands.describe(character="The character")
    async def memory_clear(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CharacterArg],
    ) -> None:
        deleted = await self.bot.core.facts.delete(
            interaction.guild_id, interaction.user.id, character_id=character
        )
        await answer(interaction, tr(interaction, "facts.cleared", n=deleted))


async def setup(bot: SynatraBot) -> None:
    await bot.add_cog(Personas(bot))
