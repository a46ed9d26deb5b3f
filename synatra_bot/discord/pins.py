"""Pins on Discord: "📌 Remember this" in a message's Apps menu opens a form with the turn's
text, which the player may edit before it is pinned; `/rp memory` lists the scene's pins and
edits or removes one (`roleplay.pins` holds the rules)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord

from synatra_bot.discord.interactions import ComponentError, actor_of, answer, place_of, tr
from synatra_bot.errors import NotFound
from synatra_bot.prompt.pins import PIN_CHARS, pin_text
from synatra_bot.storage.records import PinRecord, SessionRecord

if TYPE_CHECKING:
    from synatra_bot.discord.bot import SynatraBot

#: Discord's limits: a modal's title, an embed's description.
MODAL_TITLE = 45
EMBED_DESCRIPTION = 4096
#: A pin's text as the list shows it, at most.
LISTED_CHARS = 150


class PinForm(discord.ui.Modal):
    """The line to pin (a turn's text, trimmed to what a pin holds), or a pin to edit."""

    def __init__(
        self,
        interaction: discord.Interaction[SynatraBot],
        session: SessionRecord,
        text: str,
        *,
        message_id: int | None = None,
        pin_id: int | None = None,
    ) -> None:
        title = (
            tr(interaction, "rp.pin_form")
            if pin_id is None
            else tr(interaction, "rp.pin_form_edit", id=pin_id)
        )
        super().__init__(title=title[:MODAL_TITLE], timeout=900)
        self.session = session
        self.message_id = message_id
        self.pin_id = pin_id
        self.line: discord.ui.TextInput[PinForm] = discord.ui.TextInput(
            label=tr(interaction, "rp.pin_form_label")[:MODAL_TITLE],
            style=discord.TextStyle.paragraph,
            default=pin_text(text),
            max_length=PIN_CHARS,
        )
        self.add_item(self.line)

    async def on_submit(self, interaction: discord.Interaction[SynatraBot]) -> None:  # type: ignore[override]
        bot = interaction.client
        assert interaction.channel is not None
        actor = actor_of(interaction)
        active = await bot.core.require_active(place_of(interaction.channel, interaction.guild_id))
        if active.session.id != self.session.id:  # the scene changed while the form was open
            raise NotFound("the scene changed", key="error.pin_not_turn")
        pins = bot.core.pins
        if self.pin_id is not None:
            await bot.turns.edit_pin(actor, active, self.pin_id, self.line.value)
            await answer(interaction, tr(interaction, "rp.pin_edited", id=self.pin_id))
            return
        pinned = await bot.turns.pin(actor, active, self.line.value, message_id=self.message_id)
        count = len(await pins.of(active.session.id))
        text = tr(interaction, "rp.pinned", id=pinned.id, count=count, limit=pins.limit)
        await answer(interaction, text)

    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction[SynatraBot], error: Exception
    ) -> None:
        await interaction.client.tree.on_error(interaction, ComponentError(error))


async def open_pin_form(
    interaction: discord.Interaction[SynatraBot], message: discord.Message, place: Any
) -> None:
    """The message menu's "Remember this": checked first (a turn of the running scene, and
    someone who may pin it), then the form with the turn's text."""
    core = interaction.client.core
    active = await core.require_active(place)
    await core.pins.require_may_pin(actor_of(interaction), active.session)
    turn = await core.pins.turn_shown_in(active.session, message.id, await core.recent(active))
    await interaction.response.send_modal(
        PinForm(interaction, active.session, turn.content, message_id=turn.id)
    )


async def open_edit_form(
    interaction: discord.Interaction[SynatraBot], session: SessionRecord, pin_id: int
) -> None:
    """`/rp memory edit_pin:`: the form with the pin's text (refused before it opens)."""
    pins = interaction.client.core.pins
    await pins.require_may_change(actor_of(interaction), session, pin_id)
    found = await pins.find(session, pin_id)
    await interaction.response.send_modal(PinForm(interaction, session, found.text, pin_id=pin_id))


def pins_embed(
    interaction: discord.Interaction[SynatraBot], pins: tuple[PinRecord, ...], limit: int
) -> discord.Embed:
    """The scene's pins with their ids, newest last, within an embed's description."""
    title = tr(interaction, "rp.pins_heading", count=len(pins), limit=limit)
    if not pins:
        return discord.Embed(title=title, description=tr(interaction, "rp.pins_none"))
    lines = [f"`#{pin.id}` {_short(pin.text)}" for pin in pins]
    while len("\n".join(lines)) > EMBED_DESCRIPTION - 16:
        lines.pop(0)
    dropped = len(pins) - len(lines)
    head = [f"(+{dropped})"] if dropped else []
    return discord.Embed(title=title, description="\n".join(head + lines))


def _short(text: str) -> str:
    return text if len(text) <= LISTED_CHARS else text[: LISTED_CHARS - 1] + "…"
