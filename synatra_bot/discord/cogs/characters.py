"""`/character`: create (form), import (PNG/JSON card), edit, share, export, review."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from synatra_bot.discord.cogs.common import CharacterArg, ComponentError
from synatra_bot.discord.i18n import is_korean
from synatra_bot.discord.interactions import actor_of, answer, tr
from synatra_bot.errors import CardError, UserFacingError
from synatra_bot.prompt.cards import CharacterCard, SpeechLevel
from synatra_bot.storage.records import CharacterRecord

if TYPE_CHECKING:
    from synatra_bot.discord.bot import SynatraBot

Visibility = Literal["private", "guild"]
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")


class CharacterForm(discord.ui.Modal):
    """The first page of the form: the five fields every character needs."""

    def __init__(
        self,
        bot: SynatraBot,
        *,
        title: str,
        visibility: str,
        record: CharacterRecord | None = None,
    ) -> None:
        super().__init__(title=title[:45], timeout=900)
        self.bot = bot
        self.visibility = visibility
        self.record = record
        self.name: discord.ui.TextInput[CharacterForm] = discord.ui.TextInput(
            label="Name / 이름", max_length=100, default=record.name if record else None
        )
        self.description: discord.ui.TextInput[CharacterForm] = discord.ui.TextInput(
            label="Description / 설명",
            style=discord.TextStyle.paragraph,
            max_length=4000,
            default=record.description if record else None,
        )
        self.personality: discord.ui.TextInput[CharacterForm] = discord.ui.TextInput(
            label="Personality / 성격",
            style=discord.TextStyle.paragraph,
            max_length=2000,
            required=False,
            default=record.personality if record else None,
        )
        self.scenario: discord.ui.TextInput[CharacterForm] = discord.ui.TextInput(
            label="Scenario / 상황",
            style=discord.TextStyle.paragraph,
            max_length=2000,
            required=False,
            default=record.scenario if record else None,
        )
        self.greeting: discord.ui.TextInput[CharacterForm] = discord.ui.TextInput(
            label="Greeting / 첫 인사",
            style=discord.TextStyle.paragraph,
            max_length=4000,
            required=False,
            default=record.first_message if record else None,
        )
        for item in (self.name, self.description, self.personality, self.scenario, self.greeting):
            self.add_item(item)

    async def on_submit(self, interaction: discord.Interaction[SynatraBot]) -> None:  # type: ignore[override]
        actor = actor_of(interaction)
        values = {
            "name": self.name.value.strip(),
            "description": self.description.value.strip(),
            "personality": self.personality.value.strip(),
            "scenario": self.scenario.value.strip(),
            "first_message": self.greeting.value.strip(),
        }
        service = self.bot.core.characters
        if self.record is None:
            card = CharacterCard(**values)  # type: ignore[arg-type]
            record = await service.create(actor, card, visibility=self.visibility)
            key = "character.created"
        else:
            record = await service.edit(actor, self.record.id, **values)
            key = "character.updated"
        await answer(
            interaction,
            tr(interaction, key, name=record.name, id=record.id)
            + approval_note(interaction, record),
            view=MoreDetails(self.bot, record.id, locale=str(interaction.locale)),
        )

    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction[SynatraBot], error: Exception
    ) -> None:
        await self.bot.tree.on_error(interaction, ComponentError(error))


class ExamplesForm(discord.ui.Modal):
    """The second page: example dialogues."""

    def __init__(self, bot: SynatraBot, character_id: int, current: str) -> None:
        super().__init__(title="Example dialogues / 예시 대화", timeout=900)
        self.bot = bot
        self.character_id = character_id
        self.examples: discord.ui.TextInput[ExamplesForm] = discord.ui.TextInput(
            label="<START> {{user}}: ... {{char}}: ...",
            style=discord.TextStyle.paragraph,
            max_length=4000,
            required=False,
            default=current or None,
        )
        self.add_item(self.examples)

    async def on_submit(self, interaction: discord.Interaction[SynatraBot]) -> None:  # type: ignore[override]
        record = await self.bot.core.characters.edit(
            actor_of(interaction), self.character_id, example_messages=self.examples.value.strip()
        )
        await answer(
            interaction, tr(interaction, "character.updated", name=record.name, id=record.id)
        )

    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction[SynatraBot], error: Exception
    ) -> None:
        await self.bot.tree.on_error(interaction, ComponentError(error))


class MoreDetails(discord.ui.View):
    """After the first page: add example dialogues and choose the speech level."""

    def __init__(self, bot: SynatraBot, character_id: int, *, locale: str) -> None:
        super().__init__(timeout=900)
        self.bot = bot
        self.character_id = character_id
        korean = is_korean(locale)
        self.examples_button.label = "예시 대화 추가" if korean else "Add example dialogues"
        self.formal_button.label = "존댓말" if korean else "Formal (존댓말)"
        self.informal_button.label = "반말" if korean else "Casual (반말)"

    @discord.ui.button(style=discord.ButtonStyle.primary, custom_id="character:examples")
    async def examples_button(
        self, interaction: discord.Interaction[SynatraBot], button: discord.ui.Button[MoreDetails]
    ) -> None:
        record = await self.bot.core.characters.managed(actor_of(interaction), self.character_id)
        await interaction.response.send_modal(
            ExamplesForm(self.bot, self.character_id, record.example_messages)
        )

    @discord.ui.button(style=discord.ButtonStyle.secondary, custom_id="character:formal")
    async def formal_button(
        self, interaction: discord.Interaction[SynatraBot], button: discord.ui.Button[MoreDetails]
    ) -> None:
        await self._speech(interaction, SpeechLevel.FORMAL)

    @discord.ui.button(style=discord.ButtonStyle.secondary, custom_id="character:informal")
    async def informal_button(
        self, interaction: discord.Interaction[SynatraBot], button: discord.ui.Button[MoreDetails]
    ) -> None:
        await self._speech(interaction, SpeechLevel.INFORMAL)

    async def _speech(
        self, interaction: discord.Interaction[SynatraBot], level: SpeechLevel
    ) -> None:
        record = await self.bot.core.characters.edit(
            actor_of(interaction), self.character_id, speech_level=level
        )
        await answer(
            interaction,
            tr(interaction, f"character.speech.{level.value}", name=record.name),
        )

    async def on_error(  # type: ignore[override]
        self,
        interaction: discord.Interaction[SynatraBot],
        error: Exception,
        item: discord.ui.Item[MoreDetails],
    ) -> None:
        await self.bot.tree.on_error(interaction, ComponentError(error))


def approval_note(interaction: discord.Interaction[SynatraBot], record: CharacterRecord) -> str:
    if record.approval == "pending":
        return "\n" + tr(interaction, "character.pending")
    return ""


def describe(record: CharacterRecord) -> discord.Embed:
    embed = discord.Embed(
        title=f"{record.name} #{record.id}", description=record.description[:4000]
    )
    for label, value in (
        ("Personality / 성격", record.personality),
        ("Scenario / 상황", record.scenario),
        ("Greeting / 첫 인사", record.first_message),
    ):
        if value:
            embed.add_field(name=label, value=value[:1024], inline=False)
    tags = ", ".join(record.tags[:20])
    footer = f"{record.visibility} · {record.approval}" + (" · NSFW" if record.nsfw else "")
    embed.set_footer(text=f"{footer} · {tags}"[:2048] if tags else footer)
    return embed


class Characters(
    commands.GroupCog, group_name="character", group_description="Create and manage characters"
):
    def __init__(self, bot: SynatraBot) -> None:
        self.bot = bot

    @app_commands.command(name="create", description="Create a character with a form")
    @app_commands.describe(visibility="private: only you; guild: shared with this server")
    async def create(
        self, interaction: discord.Interaction[SynatraBot], visibility: Visibility = "private"
    ) -> None:
        await interaction.response.send_modal(
            CharacterForm(self.bot, title="New character / 새 캐릭터", visibility=visibility)
        )

    @app_commands.command(name="import", description="Import a SillyTavern/Chub card (PNG or JSON)")
    @app_commands.describe(
        file="A character card: .png with embedded data, or .json",
        visibility="private: only you; guild: shared with this server",
    )
    async def import_card(
        self,
        interaction: discord.Interaction[SynatraBot],
        file: discord.Attachment,
        visibility: Visibility = "private",
    ) -> None:
        limit = self.bot.settings.max_attachment_bytes
        if file.size > limit:
            raise CardError(
                "file too large", key="error.card_too_large", size=file.size, limit=limit
            )
        if not file.filename.lower().endswith((".png", ".json")):
            raise UserFacingError("not a card file", key="error.attachment_type")
        await interaction.response.defer(ephemeral=True, thinking=True)
        data = await file.read()
        record = await self.bot.core.characters.import_file(
            actor_of(interaction), data, filename=file.filename, visibility=visibility
        )
        await answer(
            interaction,
            tr(interaction, "character.imported", name=record.name, id=record.id)
            + approval_note(interaction, record),
            embed=describe(record),
        )

    @app_commands.command(name="edit", description="Edit a character you own")
    @app_commands.describe(
        character="The character", visibility="Change who can use it (leave empty to keep)"
    )
    async def edit(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CharacterArg],
        visibility: Visibility | None = None,
    ) -> None:
        actor = actor_of(interaction)
        if visibility is not None:
            record = await self.bot.core.characters.edit(actor, character, visibility=visibility)
            await answer(
                interaction,
                tr(interaction, "character.updated", name=record.name, id=record.id)
                + approval_note(interaction, record),
            )
            return
        record = await self.bot.core.characters.managed(actor, character)
        await interaction.response.send_modal(
            CharacterForm(self.bot, title=record.name, visibility=record.visibility, record=record)
        )

    @app_commands.command(name="delete", description="Delete a character you own")
    @app_commands.describe(character="The character")
    async def delete(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CharacterArg],
    ) -> None:
        record = await self.bot.core.characters.delete(actor_of(interaction), character)
        await answer(interaction, tr(interaction, "character.deleted", name=record.name))

    @app_commands.command(name="show", description="Show a character's sheet")
    @app_commands.describe(character="The character")
    async def show(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CharacterArg],
    ) -> None:
        actor = actor_of(interaction)
        record = await self.bot.core.characters.get(character)
        from synatra_bot.roleplay.characters import can_manage, can_use

        if not (can_use(actor, record) or can_manage(actor, record)):
            raise UserFacingError("not available", key="error.no_character")
        await answer(interaction, embed=describe(record))

    @app_commands.command(name="list", description="List the characters you can use here")
    async def list_characters(self, interaction: discord.Interaction[SynatraBot]) -> None:
        actor = actor_of(interaction)
        found = await self.bot.core.characters.search(actor, "", limit=50)
        lines = [
            f"`#{r.id}` **{r.name}**"
            + (" 👥" if r.visibility == "guild" else "")
            + (" ⏳" if r.approval == "pending" else "")
            + (" 🔞" if r.nsfw else "")
            for r in found
        ]
        if actor.is_moderator and actor.guild_id is not None:
            pending = await self.bot.core.characters.pending(actor)
            if pending:
                lines.append(tr(interaction, "character.awaiting_review"))
                lines += [f"`#{r.id}` **{r.name}** ⏳ <@{r.owner_id}>" for r in pending]
        text = "\n".join(lines) if lines else tr(interaction, "character.none")
        await answer(interaction, text[:2000])

    @app_commands.command(name="export", description="Export a character card (PNG or JSON)")
    @app_commands.describe(
        character="The character", format="png: card inside an image; json: plain card"
    )
    async def export(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CharacterArg],
        format: Literal["png", "json"] = "png",
    ) -> None:
        filename, data = await self.bot.core.characters.export(
            actor_of(interaction), character, as_png=format == "png"
        )
        await answer(interaction, file=discord.File(io.BytesIO(data), filename=filename))

    @app_commands.command(name="avatar", description="Set a character's avatar image")
    @app_commands.describe(character="The character", image="PNG, JPEG, WebP or GIF")
    async def avatar(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CharacterArg],
        image: discord.Attachment,
    ) -> None:
        limit = self.bot.settings.max_attachment_bytes
        if image.size > limit:
            raise CardError(
                "file too large", key="error.card_too_large", size=image.size, limit=limit
            )
        if (image.content_type or "").split(";")[0] not in IMAGE_TYPES:
            raise UserFacingError("not an image", key="error.image_type")
        actor = actor_of(interaction)
        await self.bot.core.characters.managed(actor, character)
        await interaction.response.defer(ephemeral=True, thinking=True)
        record = await self.bot.core.characters.edit(actor, character, avatar=await image.read())
        await answer(interaction, tr(interaction, "character.avatar_set", name=record.name))

    @app_commands.command(name="approve", description="Approve a shared character (moderators)")
    @app_commands.describe(character="The character")
    async def approve(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CharacterArg],
    ) -> None:
        record = await self.bot.core.characters.review(
            actor_of(interaction), character, approve=True
        )
        await answer(interaction, tr(interaction, "character.approved", name=record.name))

    @app_commands.command(name="reject", description="Reject a shared character (moderators)")
    @app_commands.describe(character="The character")
    async def reject(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CharacterArg],
    ) -> None:
        record = await self.bot.core.characters.review(
            actor_of(interaction), character, approve=False
        )
        await answer(interaction, tr(interaction, "character.rejected", name=record.name))


async def setup(bot: SynatraBot) -> None:
    await bot.add_cog(Characters(bot))
