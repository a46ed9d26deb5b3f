"""`/rp suggest` in Discord: the model writes the player's next line, shown only to them with
Send / Regenerate / Edit. Sent, it is posted labelled as theirs and the turn goes on as if
they had typed it."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import discord

from synatra_bot.discord.i18n import t
from synatra_bot.discord.interactions import ComponentError, actor_of, answer, place_of
from synatra_bot.errors import UserFacingError
from synatra_bot.roleplay.turns import Ending

log = logging.getLogger(__name__)

#: A Discord text input holds at most this many characters.
TEXT_INPUT_LIMIT = 4000
SUGGEST_TEMPLATE = r"rp:suggest:(?P<action>new|send|again|edit)"


def suggestion_view() -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in ("send", "again", "edit"):
        view.add_item(SuggestionButton(action))
    return view


class SuggestionButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=SUGGEST_TEMPLATE):
    """💡 under a reply (ask for a suggestion), and the buttons under a suggestion. The
    suggestion is the ephemeral message's own text, so the buttons need nothing else and keep
    working after a restart."""

    STYLES: ClassVar[dict[str, tuple[str, discord.ButtonStyle]]] = {
        "new": ("💡", discord.ButtonStyle.secondary),
        "send": ("📨", discord.ButtonStyle.primary),
        "again": ("🔄", discord.ButtonStyle.secondary),
        "edit": ("✏️", discord.ButtonStyle.secondary),
    }

    def __init__(self, action: str) -> None:
        emoji, style = self.STYLES[action]
        super().__init__(
            discord.ui.Button(style=style, emoji=emoji, custom_id=f"rp:suggest:{action}")
        )
        self.action = action

    @classmethod
    async def from_custom_id(  # type: ignore[override]
        cls, interaction: discord.Interaction[Any], item: discord.ui.Button[Any], match: Any
    ) -> SuggestionButton:
        return cls(match["action"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:  # type: ignore[override]
        bot = interaction.client
        bot.replies.track_current()
        try:
            await _press(interaction, self.action)
        except Exception as error:  # the tree's policy decides what the user sees
            await bot.tree.on_error(interaction, ComponentError(error))


class SuggestionEdit(discord.ui.Modal):
    """Edit a suggestion before sending it."""

    def __init__(self, text: str, *, title: str) -> None:
        super().__init__(title=title[:45], timeout=600)
        self.line: discord.ui.TextInput[SuggestionEdit] = discord.ui.TextInput(
            label="✏️",
            style=discord.TextStyle.paragraph,
            default=text[:TEXT_INPUT_LIMIT],
            max_length=TEXT_INPUT_LIMIT,
        )
        self.add_item(self.line)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:  # type: ignore[override]
        text = self.line.value.strip()
        if not text:
            await answer(interaction, t(interaction.locale, "rp.suggest_empty"))
            return
        await send_as_player(interaction, text)

    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction[Any], error: Exception
    ) -> None:
        await interaction.client.tree.on_error(interaction, ComponentError(error))


async def suggest(interaction: discord.Interaction[Any], *, again: bool = False) -> None:
    """Write a suggestion for the player and show it to them alone (or in place of the last)."""
    bot = interaction.client
    assert interaction.channel is not None
    place = place_of(interaction.channel, interaction.guild_id)
    suggestion = await bot.turns.suggest(place, actor_of(interaction))  # refused before it runs
    if again:
        await interaction.response.defer()
    else:
        await interaction.response.defer(ephemeral=True, thinking=True)
    async with suggestion.stream() as texts:
        async for _text in texts:
            pass
    outcome = suggestion.outcome
    if outcome is None or outcome.ending is not Ending.SUGGESTED or not outcome.text.strip():
        note = bot.replies.failure_note(str(interaction.locale), outcome.error if outcome else None)
        await interaction.edit_original_response(content=note[:2000], view=None)
        return
    await interaction.edit_original_response(
        content=outcome.text.strip()[:2000], view=suggestion_view()
    )


async def _press(interaction: discord.Interaction[Any], action: str) -> None:
    message = interaction.message
    text = message.content.strip() if message is not None else ""
    if action == "new":
        await suggest(interaction)
    elif action == "again":
        await suggest(interaction, again=True)
    elif action == "edit":
        title = t(interaction.locale, "rp.suggest_edit_title")
        await interaction.response.send_modal(SuggestionEdit(text, title=title))
    else:
        if not text:
            raise UserFacingError("nothing to send", key="rp.suggest_empty")
        await send_as_player(interaction, text)


async def send_as_player(interaction: discord.Interaction[Any], text: str) -> None:
    """Post `text` labelled as the player's, then play it as their message; the suggestion
    reads "sent" only once the line passed the gate of every turn (`Turns.admit`)."""
    bot = interaction.client
    channel = interaction.channel
    assert channel is not None
    place = place_of(channel, interaction.guild_id)
    actor = actor_of(interaction)
    replies = bot.replies
    # Admitted first: a refused line (rate limit, a scene gone) is never posted.
    try:
        said = await bot.turns.say(place, actor, text)
    except UserFacingError as error:
        await answer(interaction, replies.text(str(interaction.locale), error))
        return
    if said is None:
        await answer(interaction, t(interaction.locale, "error.no_session"))
        return
    await interaction.response.edit_message(
        content=t(interaction.locale, "rp.suggest_sent"), view=None
    )
    replies.track(said.stored)
    message_id = await replies.post_as_player(channel, place, interaction.user, text)
    stored = await said.stored
    await bot.turns.core.attach_discord_ids(stored.id, [message_id])
    async for reply in said.replies():
        await replies.play(reply, channel=channel)
