"""`/persona`: who the player is in the story ({{user}} and the persona block)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from synatra_bot.discord.interactions import answer, tr

if TYPE_CHECKING:
    from synatra_bot.discord.bot import SynatraBot

MAX_PERSONA_NAME = 64
MAX_PERSONA_DESCRIPTION = 2000


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
        guild_id = 0 if everywhere or interaction.guild_id is None else interaction.guild_id
        await self.bot.core.set_persona(
            interaction.user.id, guild_id, name=name.strip(), description=description.strip()
        )
        await answer(interaction, tr(interaction, "persona.set", name=name.strip()))

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


async def setup(bot: SynatraBot) -> None:
    await bot.add_cog(Personas(bot))
