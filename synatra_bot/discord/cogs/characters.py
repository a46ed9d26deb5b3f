"""`/character`: create (form), import (PNG/JSON/CHARX card), edit, share, export, review."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from synatra_bot.discord.cogs.common import CharacterArg, require_attachment_size
from synatra_bot.discord.i18n import is_korean, t
from synatra_bot.discord.interactions import ComponentError, actor_of, answer, tr
from synatra_bot.errors import UserFacingError
from synatra_bot.prompt.cards import CharacterCard, SpeechLevel, v3_fields
from synatra_bot.prompt.charx import embedded_path, is_charx
from synatra_bot.prompt.png import PNG_SIGNATURE
from synatra_bot.prompt.scripts import script_count
from synatra_bot.roleplay.characters import creator_notes_of
from synatra_bot.storage.records import CharacterRecord

if TYPE_CHECKING:
    from synatra_bot.discord.bot import SynatraBot

Visibility = Literal["private", "guild"]
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
CARD_SUFFIXES = (".png", ".json", ".charx")
#: A RisuAI module: scripts and a lorebook for a character the member already has.
MODULE_SUFFIX = ".risum"


#: Discord's limits on a modal and on an embed (the fake Discord in tests checks the same).
INPUT_LIMIT = 4000
INPUTS_PER_FORM = 5
TITLE_LIMIT = 45
LABEL_LIMIT = 45
EMBED_TOTAL = 6000
EMBED_DESCRIPTION = 4096
EMBED_TITLE = 256
#: How much of personality, scenario, greeting and creator's notes the sheet shows, and of
#: its footer.
FIELD_PREVIEW = 800
NOTES_TITLE = "Creator's notes / 제작자 노트"
FOOTER_PREVIEW = 500


@dataclass(frozen=True)
class Field:
    """A text field of a character as the forms show it."""

    attr: str  # the CharacterRecord attribute, also the service's `edit` keyword
    title: str
    label: str
    limit: int  # what a new character may enter
    required: bool = False
    paragraph: bool = True


FORM_FIELDS = (
    Field("name", "Name / 이름", "Name / 이름", 100, required=True, paragraph=False),
    Field("description", "Description / 설명", "Description / 설명", 4000, required=True),
    Field("personality", "Personality / 성격", "Personality / 성격", 2000),
    Field("scenario", "Scenario / 상황", "Scenario / 상황", 2000),
    Field("first_message", "Greeting / 첫 인사", "Greeting / 첫 인사", 4000),
)
EXAMPLES = Field(
    "example_messages", "Example dialogues / 예시 대화", "<START> {{user}}: ... {{char}}: ...", 4000
)
FIELDS = {field.attr: field for field in (*FORM_FIELDS, EXAMPLES)}


def shorten(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, ending in "…" when something was left out."""
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + "…"


def parts(text: str, size: int = INPUT_LIMIT) -> list[str]:
    """`text` in pieces of at most `size` characters that join back to exactly `text`; a piece
    ends after a line break when one falls in its second half."""
    pieces = []
    while len(text) > size:
        cut = text.rfind("\n", size // 2, size) + 1 or size
        pieces.append(text[:cut])
        text = text[cut:]
    pieces.append(text)
    return pieces


def pages(text: str) -> list[tuple[int, list[str]]]:
    """`text` as forms of up to five inputs: (offset of the form's text, its pieces)."""
    pieces = parts(text)
    result = []
    offset = 0
    for first in range(0, len(pieces), INPUTS_PER_FORM):
        group = pieces[first : first + INPUTS_PER_FORM]
        result.append((offset, group))
        offset += sum(map(len, group))
    return result


def fits(field: Field, record: CharacterRecord) -> bool:
    """Whether the field's stored text fits one input of the main form."""
    return len(getattr(record, field.attr)) <= INPUT_LIMIT


class CharacterForm(discord.ui.Modal):
    """The first page of the form: the five fields every character needs. Editing, a field
    too long for one input is left out (and left as it is): `FieldForm` edits it in parts."""

    def __init__(
        self,
        bot: SynatraBot,
        *,
        title: str,
        visibility: str,
        nsfw: bool = False,
        record: CharacterRecord | None = None,
    ) -> None:
        super().__init__(title=shorten(title, TITLE_LIMIT), timeout=900)
        self.bot = bot
        self.visibility = visibility
        self.nsfw = nsfw  # for a new character; editing leaves the flag as it is
        self.record = record
        self.inputs: dict[str, discord.ui.TextInput[CharacterForm]] = {}
        for field in FORM_FIELDS:
            current = getattr(record, field.attr) if record else ""
            if len(current) > INPUT_LIMIT:
                continue
            item: discord.ui.TextInput[CharacterForm] = discord.ui.TextInput(
                label=field.label,
                style=discord.TextStyle.paragraph if field.paragraph else discord.TextStyle.short,
                # An imported card may hold more than a new character may: keep it editable.
                max_length=max(field.limit, len(current)),
                required=field.required,
                default=current or None,
            )
            self.inputs[field.attr] = item
            self.add_item(item)

    async def on_submit(self, interaction: discord.Interaction[SynatraBot]) -> None:  # type: ignore[override]
        actor = actor_of(interaction)
        # Only what the user changed is written: untouched text stays exactly as stored.
        values = {
            attr: item.value.strip()
            for attr, item in self.inputs.items()
            if self.record is None or item.value != (item.default or "")
        }
        service = self.bot.core.characters
        if self.record is None:
            card = CharacterCard(**values, nsfw=self.nsfw)  # type: ignore[arg-type]
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


class FieldForm(discord.ui.Modal):
    """One field in up to five inputs (`page` of `count` forms for a very long field).

    Submitting replaces exactly the text the form was opened with, so the parts on other
    pages stay as stored; if the stored text changed meanwhile nothing is saved.
    """

    def __init__(
        self, bot: SynatraBot, character_id: int, field: Field, text: str, *, page: int = 0
    ) -> None:
        all_pages = pages(text)
        self.offset, pieces = all_pages[page]
        self.count = len(all_pages)
        title = field.title if self.count == 1 else f"{field.title} {page + 1}/{self.count}"
        super().__init__(title=shorten(title, TITLE_LIMIT), timeout=900)
        self.bot = bot
        self.character_id = character_id
        self.field = field
        self.page = page
        self.opened = "".join(pieces)
        self.whole = self.count == 1
        self.inputs: list[discord.ui.TextInput[FieldForm]] = []
        for number, piece in enumerate(pieces, 1):
            label = field.label if len(pieces) == 1 else f"{field.label} ({number}/{len(pieces)})"
            item: discord.ui.TextInput[FieldForm] = discord.ui.TextInput(
                label=shorten(label, LABEL_LIMIT),
                style=discord.TextStyle.paragraph if field.paragraph else discord.TextStyle.short,
                max_length=INPUT_LIMIT if len(pieces) > 1 else max(field.limit, len(piece)),
                required=False,
                default=piece or None,
            )
            self.inputs.append(item)
            self.add_item(item)

    async def on_submit(self, interaction: discord.Interaction[SynatraBot]) -> None:  # type: ignore[override]
        actor = actor_of(interaction)
        service = self.bot.core.characters
        record = await service.managed(actor, self.character_id)
        stored: str = getattr(record, self.field.attr)
        end = self.offset + len(self.opened)
        if stored[self.offset : end] != self.opened:
            raise UserFacingError(
                "changed while the form was open", key="error.character_changed", name=record.name
            )
        edited = "".join(item.value for item in self.inputs)
        if edited != self.opened:
            value = stored[: self.offset] + edited + stored[end:]
            record = await service.edit(
                actor,
                self.character_id,
                **{self.field.attr: value.strip() if self.whole else value},
            )
        if self.page + 1 < self.count:
            text = tr(
                interaction,
                "character.part_saved",
                name=record.name,
                field=self.field.title,
                page=self.page + 1,
                pages=self.count,
            )
            view = FieldButtons(self.bot, record.id, [(self.field, self.page + 1)])
            await answer(interaction, text, view=view)
            return
        await answer(
            interaction,
            tr(interaction, "character.updated", name=record.name, id=record.id)
            + approval_note(interaction, record),
        )

    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction[SynatraBot], error: Exception
    ) -> None:
        await self.bot.tree.on_error(interaction, ComponentError(error))


async def open_field(
    interaction: discord.Interaction[SynatraBot], character_id: int, field: Field, page: int
) -> None:
    """Open `FieldForm` on the field's stored text as it is now."""
    bot = interaction.client
    record = await bot.core.characters.managed(actor_of(interaction), character_id)
    text: str = getattr(record, field.attr)
    if page >= len(pages(text)):
        raise UserFacingError(
            "the field got shorter", key="error.character_changed", name=record.name
        )
    await interaction.response.send_modal(FieldForm(bot, character_id, field, text, page=page))


class FieldButton(discord.ui.Button["FieldButtons"]):
    """Opens one page of a field's form, or (`field` None) the main form without long fields."""

    def __init__(self, character_id: int, field: Field | None, page: int, label: str) -> None:
        key = f"{field.attr}:{page}" if field else "form"
        super().__init__(label=label[:80], custom_id=f"character:edit:{key}")
        self.character_id = character_id
        self.field = field
        self.page = page

    async def callback(self, interaction: discord.Interaction[SynatraBot]) -> None:  # type: ignore[override]
        if self.field is not None:
            await open_field(interaction, self.character_id, self.field, self.page)
            return
        record = await interaction.client.core.characters.managed(
            actor_of(interaction), self.character_id
        )
        await interaction.response.send_modal(
            CharacterForm(
                interaction.client, title=record.name, visibility=record.visibility, record=record
            )
        )


class FieldButtons(discord.ui.View):
    """Buttons that open the forms of long fields (page numbers count from 0)."""

    def __init__(
        self,
        bot: SynatraBot,
        character_id: int,
        targets: list[tuple[Field, int]],
        *,
        main_form: str | None = None,
    ) -> None:
        super().__init__(timeout=900)
        self.bot = bot
        if main_form is not None:
            self.add_item(FieldButton(character_id, None, 0, main_form))
        for field, page in targets:
            self.add_item(FieldButton(character_id, field, page, f"{field.title} ({page + 1})"))

    async def on_error(  # type: ignore[override]
        self,
        interaction: discord.Interaction[SynatraBot],
        error: Exception,
        item: discord.ui.Item[FieldButtons],
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
        await open_field(interaction, self.character_id, EXAMPLES, 0)

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


def _has_embedded_icon(record: CharacterRecord) -> bool:
    """Whether the card names an icon inside its CHARX archive."""
    assets = v3_fields(record.extensions)["assets"] or []
    return any(a["type"] == "icon" and embedded_path(a["uri"]) is not None for a in assets)


def describe(record: CharacterRecord, *, locale: discord.Locale | str) -> discord.Embed:
    """The character sheet as one embed within Discord's limits. Long text is shortened
    with "…" and the footer says how to get all of it; the stored card is untouched."""
    title = shorten(f"{record.name} #{record.id}", EMBED_TITLE)
    tags = ", ".join(record.tags[:20])
    rating = t(locale, "character.rating.nsfw" if record.nsfw else "character.rating.sfw")
    count = script_count(record.extensions)
    scripts = t(locale, "character.scripts", count=count) if count else ""
    status = (record.visibility, record.approval, rating, scripts, tags)
    footer = shorten(" · ".join(part for part in status if part), FOOTER_PREVIEW)
    fields = [
        (field.title, getattr(record, field.attr))
        for field in FORM_FIELDS[2:]
        if getattr(record, field.attr)
    ]
    notes = creator_notes_of(record, locale=str(locale)).strip()
    if notes:
        fields.append((NOTES_TITLE, notes))
    note = t(locale, "character.sheet_shortened")
    # The note's room is kept whether or not it is needed, so the budget is known up front.
    used = len(title) + len(footer) + 1 + len(note)
    used += sum(len(name) + min(len(value), FIELD_PREVIEW) for name, value in fields)
    room = min(EMBED_DESCRIPTION, EMBED_TOTAL - used)
    shortened = len(record.description) > room or any(len(v) > FIELD_PREVIEW for _, v in fields)
    embed = discord.Embed(title=title, description=shorten(record.description, room))
    for name, value in fields:
        embed.add_field(name=name, value=shorten(value, FIELD_PREVIEW), inline=False)
    embed.set_footer(text=f"{footer}\n{note}" if shortened else footer)
    return embed


class Characters(
    commands.GroupCog, group_name="character", group_description="Create and manage characters"
):
    def __init__(self, bot: SynatraBot) -> None:
        self.bot = bot

    @app_commands.command(name="create", description="Create a character with a form")
    @app_commands.describe(
        visibility="private: only you; guild: shared with this server",
        nsfw="Adults only (NSFW): plays only where the server allows it (default: no)",
    )
    async def create(
        self,
        interaction: discord.Interaction[SynatraBot],
        visibility: Visibility = "private",
        nsfw: bool = False,
    ) -> None:
        await interaction.response.send_modal(
            CharacterForm(
                self.bot, title="New character / 새 캐릭터", visibility=visibility, nsfw=nsfw
            )
        )

    @app_commands.command(
        name="import", description="Import a SillyTavern/Chub/RisuAI card (PNG, JSON or CHARX)"
    )
    @app_commands.describe(
        file="A character card: .png with embedded data, .json, or .charx",
        visibility="private: only you; guild: shared with this server",
        character="For a RisuAI module (.risum): the character that gets its scripts and lore",
    )
    async def import_card(
        self,
        interaction: discord.Interaction[SynatraBot],
        file: discord.Attachment,
        visibility: Visibility = "private",
        character: app_commands.Transform[int, CharacterArg] | None = None,
    ) -> None:
        require_attachment_size(file, self.bot.settings.max_attachment_bytes)
        if file.filename.lower().endswith(MODULE_SUFFIX):
            await self._import_module(interaction, file, character)
            return
        if not file.filename.lower().endswith(CARD_SUFFIXES):
            raise UserFacingError("not a card file", key="error.attachment_type")
        if character is not None:
            raise UserFacingError("a character is named only for a module", key="error.not_module")
        await interaction.response.defer(ephemeral=True, thinking=True)
        data = await file.read()
        record = await self.bot.core.characters.import_file(
            actor_of(interaction), data, filename=file.filename, visibility=visibility
        )
        # A PNG card whose image (a CHARX card whose icons) could not be used as the avatar
        # imports without one.
        dropped = record.avatar is None and (
            data.startswith(PNG_SIGNATURE) or (is_charx(data) and _has_embedded_icon(record))
        )
        await answer(
            interaction,
            tr(interaction, "character.imported", name=record.name, id=record.id)
            + approval_note(interaction, record)
            + ("\n" + tr(interaction, "character.avatar_dropped") if dropped else ""),
            embed=describe(record, locale=interaction.locale),
        )

    async def _import_module(
        self,
        interaction: discord.Interaction[SynatraBot],
        file: discord.Attachment,
        character: int | None,
    ) -> None:
        if character is None:
            raise UserFacingError("a module needs a character", key="error.module_character")
        await interaction.response.defer(ephemeral=True, thinking=True)
        record, scripts, entries = await self.bot.core.characters.import_module(
            actor_of(interaction), character, await file.read()
        )
        text = tr(
            interaction,
            "character.module_imported",
            name=record.name,
            id=record.id,
            scripts=scripts,
            entries=entries,
        )
        await answer(interaction, text + approval_note(interaction, record))

    @app_commands.command(name="edit", description="Edit a character you own")
    @app_commands.describe(
        character="The character",
        visibility="Change who can use it (leave empty to keep)",
        nsfw="Mark it adults only (NSFW) or not (leave empty to keep)",
    )
    async def edit(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CharacterArg],
        visibility: Visibility | None = None,
        nsfw: bool | None = None,
    ) -> None:
        actor = actor_of(interaction)
        changes = {"visibility": visibility, "nsfw": nsfw}
        if any(value is not None for value in changes.values()):
            # Owners, and moderators for a character shared in their server (`can_manage`).
            record = await self.bot.core.characters.edit(
                actor, character, **{k: v for k, v in changes.items() if v is not None}
            )
            text = tr(interaction, "character.updated", name=record.name, id=record.id)
            text += approval_note(interaction, record)
            if nsfw is not None:
                rated = "character.nsfw.on" if record.nsfw else "character.nsfw.off"
                text += "\n" + tr(interaction, rated, name=record.name)
            await answer(interaction, text)
            return
        record = await self.bot.core.characters.managed(actor, character)
        long_fields = [field for field in FORM_FIELDS if not fits(field, record)]
        if not long_fields:
            await interaction.response.send_modal(
                CharacterForm(
                    self.bot, title=record.name, visibility=record.visibility, record=record
                )
            )
            return
        # A modal input holds 4,000 characters: long fields get forms of their own.
        names = ", ".join(field.title for field in long_fields)
        view = FieldButtons(
            self.bot,
            record.id,
            [(field, 0) for field in long_fields],
            main_form="Other fields / 나머지 항목",
        )
        await answer(
            interaction,
            tr(interaction, "character.edit_long", name=record.name, fields=names),
            view=view,
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
        await answer(interaction, embed=describe(record, locale=interaction.locale))

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
        require_attachment_size(image, self.bot.settings.max_attachment_bytes)
        if (image.content_type or "").split(";")[0] not in IMAGE_TYPES:
            raise UserFacingError("not an image", key="error.image_type")
        actor = actor_of(interaction)
        await self.bot.core.characters.managed(actor, character)
        await interaction.response.defer(ephemeral=True, thinking=True)
        record = await self.bot.core.characters.set_avatar(actor, character, await image.read())
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
