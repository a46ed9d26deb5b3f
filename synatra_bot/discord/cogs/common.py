"""Pieces the cogs share: the character, cast and scene options with autocomplete."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from synatra_bot.discord.interactions import actor_of, place_of, tr
from synatra_bot.errors import CardError, NotFound
from synatra_bot.storage.archives import SceneSummary
from synatra_bot.storage.ids import typed_number
from synatra_bot.storage.records import CharacterRecord

if TYPE_CHECKING:
    from synatra_bot.discord.bot import SynatraBot


class ArgumentNotResolved(app_commands.AppCommandError):
    """A typed value (a character's name, a scene) that matches nothing visible.

    discord.py wraps anything but an AppCommandError raised in a transformer into a
    TransformerError without `original`, which the tree would answer with the generic apology;
    carrying the domain error as `original` lets the tree's policy show it localised."""

    def __init__(self, original: NotFound) -> None:
        super().__init__(str(original))
        self.original = original


def name_choices(names: Iterable[str], typed: str) -> list[app_commands.Choice[str]]:
    """Autocomplete for a value picked by name: the names holding what was typed (any case),
    as many as Discord shows."""
    wanted = typed.strip().casefold()
    found = [app_commands.Choice(name=n, value=n) for n in names if wanted in n.casefold()]
    return found[:25]


def _label(record: CharacterRecord) -> str:
    badge = {"pending": " ⏳", "rejected": " ✖"}.get(record.approval, "")
    shared = " 👥" if record.visibility == "guild" else ""
    return f"{record.name}{shared}{badge} #{record.id}"[:100]


class CharacterArg(app_commands.Transformer):
    """A character the user may see, chosen by autocomplete (its id) or typed by name."""

    async def autocomplete(  # type: ignore[override]
        self, interaction: discord.Interaction[SynatraBot], value: str
    ) -> list[app_commands.Choice[str]]:
        found = await interaction.client.core.characters.search(actor_of(interaction), value)
        return [app_commands.Choice(name=_label(r), value=str(r.id)) for r in found[:25]]

    async def transform(  # type: ignore[override]
        self, interaction: discord.Interaction[SynatraBot], value: Any
    ) -> int:
        text = str(value).strip()
        number = typed_number(text)
        if number is not None:
            return number
        found = await interaction.client.core.characters.search(actor_of(interaction), text)
        exact = [r for r in found if r.name == text] or found
        if not exact:
            raise ArgumentNotResolved(
                NotFound(f"no character called {text}", key="error.no_character")
            )
        return exact[0].id


class CastArg(app_commands.Transformer):
    """A character of the scene running here, chosen by autocomplete or typed by name."""

    async def _cast(self, interaction: discord.Interaction[SynatraBot]) -> list[CharacterRecord]:
        channel = interaction.channel
        if channel is None:
            return []
        place = place_of(channel, interaction.guild_id)
        active = await interaction.client.core.active(place)
        return list(active.cast) if active is not None else []

    async def autocomplete(  # type: ignore[override]
        self, interaction: discord.Interaction[SynatraBot], value: str
    ) -> list[app_commands.Choice[str]]:
        wanted = value.strip().casefold()
        cast = [c for c in await self._cast(interaction) if wanted in c.name.casefold()]
        return [app_commands.Choice(name=c.name[:100], value=str(c.id)) for c in cast[:25]]

    async def transform(  # type: ignore[override]
        self, interaction: discord.Interaction[SynatraBot], value: Any
    ) -> int:
        text = str(value).strip()
        number = typed_number(text)
        if number is not None:
            return number
        cast = await self._cast(interaction)
        found = [c for c in cast if c.name == text] or [
            c for c in cast if c.name.casefold() == text.casefold()
        ]
        if not found:
            raise ArgumentNotResolved(
                NotFound(f"no character called {text} in the scene", key="error.not_in_cast")
            )
        return found[0].id


def scene_line(interaction: discord.Interaction[SynatraBot], scene: SceneSummary) -> str:
    """One scene of a channel on a line: its id, cast, day, length, whether it runs."""
    names = ", ".join(scene.names) or "?"
    day = scene.session.started_at.strftime("%Y-%m-%d")
    key = "rp.scene_running" if scene.active else "rp.scene_archived"
    return tr(interaction, key, id=scene.session.id, names=names, day=day, turns=scene.turns)


class SceneArg(app_commands.Transformer):
    """One of this channel's scenes, by autocomplete or `#id`."""

    async def autocomplete(  # type: ignore[override]
        self, interaction: discord.Interaction[SynatraBot], value: str
    ) -> list[app_commands.Choice[str]]:
        channel = interaction.channel
        if channel is None:
            return []
        scenes = await interaction.client.archive.scenes(place_of(channel, interaction.guild_id))
        choices = []
        for scene in scenes:
            label = scene_line(interaction, scene).replace("**", "")[:100]
            if value.strip().lstrip("#") in label:
                choices.append(app_commands.Choice(name=label, value=str(scene.session.id)))
        return choices[:25]

    async def transform(  # type: ignore[override]
        self, interaction: discord.Interaction[SynatraBot], value: Any
    ) -> int:
        number = typed_number(str(value).strip().removeprefix("#"))
        if number is None:
            raise ArgumentNotResolved(NotFound(f"no scene {value}", key="error.no_scene"))
        return number


class SceneNotResolved(app_commands.AppCommandError):
    """A typed scene that is no number (carried to the tree's policy like ArgumentNotResolved)."""

    def __init__(self, original: NotFound) -> None:
        super().__init__(str(original))
        self.original = original


def require_attachment_size(file: discord.Attachment, limit: int) -> None:
    """Refuse an attachment over the bot's size limit before anything reads it."""
    if file.size > limit:
        raise CardError("file too large", key="error.card_too_large", size=file.size, limit=limit)
