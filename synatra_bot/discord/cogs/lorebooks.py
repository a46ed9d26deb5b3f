"""`/lorebook`: SillyTavern World Info books, imported and exported.

A player's own books are linked to their characters by name (as SillyTavern links a card to a
World Info book); a channel's book (Manage Server, checked at runtime) applies to every scene
there.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from synatra_bot.discord.cogs.common import CharacterArg, name_choices, require_attachment_size
from synatra_bot.discord.interactions import actor_of, answer, place_of, tr
from synatra_bot.errors import PermissionDenied, UserFacingError
from synatra_bot.prompt.world_info import (
    MAX_LOREBOOK_BYTES,
    parse_lorebook_file,
    world_info_from_book,
)
from synatra_bot.roleplay.characters import lorebook_name, world_of

if TYPE_CHECKING:
    from synatra_bot.discord.bot import SynatraBot

LOREBOOK_SUFFIXES = (".json", ".png", ".charx")
#: Characters Discord (or a file system) would choke on in an attachment's name.
_UNSAFE_FILENAME = re.compile(r'[\\/:*?"<>|\x00-\x1f]+')


def export_filename(name: str) -> str:
    """The attachment's name for a book called `name` (SillyTavern names files after books)."""
    stem = _UNSAFE_FILENAME.sub("_", name).strip(" ._")[:80]
    return f"{stem or 'lorebook'}.json"


def _world_info_file(book: dict[str, Any], name: str) -> tuple[discord.File, int]:
    world_info = world_info_from_book(book, name=name)
    data = json.dumps(world_info, ensure_ascii=False, indent=4).encode()
    file = discord.File(io.BytesIO(data), filename=export_filename(name))
    return file, len(world_info["entries"])


def _require_channel_moderator(interaction: discord.Interaction[SynatraBot]) -> None:
    """A channel's lorebook is for its server's moderators."""
    if interaction.guild_id is None or not actor_of(interaction).is_moderator:
        raise PermissionDenied(
            "only moderators change a channel's lorebook", key="error.moderator_only"
        )


async def _own_book_names(
    interaction: discord.Interaction[SynatraBot], value: str
) -> list[app_commands.Choice[str]]:
    books = await interaction.client.core.characters.lorebooks(actor_of(interaction))
    return name_choices((b.name for b in books), value)


@app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
class Lorebooks(
    commands.GroupCog,
    group_name="lorebook",
    group_description="Lorebooks (SillyTavern World Info): yours and this channel's",
):
    def __init__(self, bot: SynatraBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="import",
        description="Import a SillyTavern World Info file as your lorebook or this channel's",
    )
    @app_commands.describe(
        file="World Info (.json), a character_book (.json), or a card with one (.png, .charx)",
        name="The lorebook's name (default: the file's); one of yours with it is replaced",
        owner="Yours (default), or this channel's (moderators)",
    )
    async def import_book(
        self,
        interaction: discord.Interaction[SynatraBot],
        file: discord.Attachment,
        name: app_commands.Range[str, 1, 100] | None = None,
        owner: Literal["mine", "channel"] = "mine",
    ) -> None:
        assert interaction.channel is not None
        channel = owner == "channel"
        if channel:
            _require_channel_moderator(interaction)
        require_attachment_size(
            file, min(self.bot.settings.max_attachment_bytes, MAX_LOREBOOK_BYTES)
        )
        if not file.filename.lower().endswith(LOREBOOK_SUFFIXES):
            raise UserFacingError("not a lorebook file", key="error.lorebook_type")
        await interaction.response.defer(ephemeral=True, thinking=True)
        data = await file.read()
        book = await asyncio.to_thread(parse_lorebook_file, data, filename=file.filename)
        title = lorebook_name({"name": name} if name else book, file.filename)
        entries = len(book["entries"])
        if channel:
            place = place_of(interaction.channel, interaction.guild_id)
            await self.bot.core.update_channel_settings(place, lorebook={**book, "name": title})
            text = tr(interaction, "lorebook.imported", name=title, entries=entries)
        else:
            await self.bot.core.characters.save_lorebook(actor_of(interaction), book, name=title)
            text = tr(interaction, "lorebook.imported_personal", name=title, entries=entries)
        await answer(interaction, text)

    @app_commands.command(name="export", description="A lorebook as a SillyTavern World Info file")
    @app_commands.describe(name="One of your lorebooks (default: this channel's)")
    @app_commands.autocomplete(name=_own_book_names)
    async def export(
        self, interaction: discord.Interaction[SynatraBot], name: str | None = None
    ) -> None:
        assert interaction.channel is not None
        if name is not None:
            record = await self.bot.core.characters.lorebook(actor_of(interaction), name)
            file, entries = _world_info_file(record.book, record.name)
            text = tr(interaction, "lorebook.exported_personal", name=record.name, entries=entries)
            await answer(interaction, text, file=file)
            return
        _require_channel_moderator(interaction)
        place = place_of(interaction.channel, interaction.guild_id)
        book = (await self.bot.core.config_for(place)).lorebook
        if not book:
            await answer(interaction, tr(interaction, "lorebook.none"))
            return
        title = str(book.get("name") or "")
        file, entries = _world_info_file(book, title)
        text = tr(interaction, "lorebook.exported", name=title or "lorebook", entries=entries)
        await answer(interaction, text, file=file)

    @app_commands.command(name="list", description="Your lorebooks and the characters using them")
    async def list_books(self, interaction: discord.Interaction[SynatraBot]) -> None:
        actor = actor_of(interaction)
        books = await self.bot.core.characters.lorebooks(actor)
        if not books:
            await answer(interaction, tr(interaction, "lorebook.none_personal"))
            return
        mine = await self.bot.core.characters.owned(actor)
        lines = [tr(interaction, "lorebook.list_title")]
        for book in books:
            users = ", ".join(c.name for c in mine if world_of(c) == book.name)
            lines.append(
                tr(
                    interaction,
                    "lorebook.list_line",
                    name=book.name,
                    entries=len(book.book.get("entries") or []),
                    characters=users or "-",
                )
            )
        await answer(interaction, "\n".join(lines)[:2000])

    @app_commands.command(
        name="attach", description="Let one of your characters use one of your lorebooks"
    )
    @app_commands.describe(character="Your character", name="Your lorebook")
    @app_commands.autocomplete(name=_own_book_names)
    async def attach(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CharacterArg],
        name: str,
    ) -> None:
        record = await self.bot.core.characters.link_lorebook(
            actor_of(interaction), character, name
        )
        await answer(
            interaction, tr(interaction, "lorebook.attached", name=name, character=record.name)
        )

    @app_commands.command(
        name="detach", description="Your character goes back to the lorebook in its card"
    )
    @app_commands.describe(character="Your character")
    async def detach(
        self,
        interaction: discord.Interaction[SynatraBot],
        character: app_commands.Transform[int, CharacterArg],
    ) -> None:
        record = await self.bot.core.characters.link_lorebook(
            actor_of(interaction), character, None
        )
        await answer(interaction, tr(interaction, "lorebook.detached", character=record.name))

    @app_commands.command(name="delete", description="Delete one of your lorebooks")
    @app_commands.describe(name="Your lorebook")
    @app_commands.autocomplete(name=_own_book_names)
    async def delete(self, interaction: discord.Interaction[SynatraBot], name: str) -> None:
        await self.bot.core.characters.delete_lorebook(actor_of(interaction), name)
        await answer(interaction, tr(interaction, "lorebook.deleted", name=name))

    @app_commands.command(name="clear", description="Remove this channel's lorebook (moderators)")
    async def clear(self, interaction: discord.Interaction[SynatraBot]) -> None:
        assert interaction.channel is not None
        _require_channel_moderator(interaction)
        place = place_of(interaction.channel, interaction.guild_id)
        if not (await self.bot.core.config_for(place)).lorebook:
            await answer(interaction, tr(interaction, "lorebook.none"))
            return
        await self.bot.core.update_channel_settings(place, lorebook=None)
        await answer(interaction, tr(interaction, "lorebook.cleared"))


async def setup(bot: SynatraBot) -> None:
    await bot.add_cog(Lorebooks(bot))
