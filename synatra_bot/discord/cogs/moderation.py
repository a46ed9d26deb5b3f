"""`/config`: where and how the bot talks. Manage Server only, checked by Discord and at runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from synatra_bot.discord.cogs.common import name_choices
from synatra_bot.discord.commands_ko import SETTING_NAMES
from synatra_bot.discord.i18n import is_korean
from synatra_bot.discord.interactions import ComponentError, actor_of, answer, place_of, tr
from synatra_bot.errors import NotFound, UserFacingError
from synatra_bot.prompt.lorebook import MAX_RECURSION_STEPS
from synatra_bot.roleplay.config import (
    INHERITED_SETTINGS,
    MAX_AUTO_TURNS,
    MAX_CHARACTER_MEGABYTES,
    MAX_IN_A_ROW,
    MAX_SCENE_MEGABYTES,
    MAX_SCENE_ROWS,
    QUIET_MINUTES,
    SERVER_SETTINGS,
    parse_stop_lines,
    parse_stop_strings,
    preset_batchable,
    sampling_values,
    shown_stop_strings,
    stop_lines,
)
from synatra_bot.roleplay.turn_order import TurnOrder
from synatra_bot.settings import AUTHOR_NOTE_DEPTH_RANGE, CONTEXT_SIZE_RANGE

#: What `/config reset` puts back, by the names `/config show` gives them.
RESETTABLE_SETTINGS = (*INHERITED_SETTINGS, *SERVER_SETTINGS)

if TYPE_CHECKING:
    from synatra_bot.discord.bot import SynatraBot

Scope = Literal["channel", "server"]
#: What the stop strings form takes: every stop string at its longest, escaped, one a line.
STOP_FORM_CHARS = 1000


def _shown(values: dict[str, float | int]) -> str:
    """A preset's values, short, leaving out the samplers it keeps off (and their details)."""
    hidden = {name for name in ("min_p", "dry_multiplier", "xtc_probability") if not values[name]}
    if not values["dry_multiplier"]:
        hidden |= {"dry_base", "dry_allowed_length"}
    if not values["xtc_probability"]:
        hidden.add("xtc_threshold")
    return ", ".join(f"{k} {v:g}" for k, v in values.items() if k not in hidden)


@app_commands.default_permissions(manage_guild=True)
@app_commands.guild_only()
class Moderation(commands.GroupCog, group_name="config", group_description="Configure the bot"):
    def __init__(self, bot: SynatraBot) -> None:
        self.bot = bot

    async def interaction_check(self, interaction: discord.Interaction[SynatraBot]) -> bool:  # type: ignore[override]
        # Discord hides the group from members without Manage Server, but a server can override
        # that in its integration settings: check again on every use.
        # Returning False makes discord.py raise CheckFailure, which the tree's error policy
        # answers with the localised "moderators only" message.
        return actor_of(interaction).is_moderator

    async def _save(
        self, interaction: discord.Interaction[SynatraBot], scope: Scope, **changes: Any
    ) -> None:
        await self._store(interaction, scope, **changes)
        shown = ", ".join(f"{k}={v}" for k, v in changes.items())
        await answer(interaction, tr(interaction, f"config.saved.{scope}", changes=shown))

    async def _store(
        self, interaction: discord.Interaction[SynatraBot], scope: Scope, **changes: Any
    ) -> None:
        assert interaction.guild_id is not None and interaction.channel is not None
        core = self.bot.core
        if scope == "server":
            await core.update_guild_settings(interaction.guild_id, **changes)
        else:
            await core.update_channel_settings(
                place_of(interaction.channel, interaction.guild_id), **changes
            )

    @app_commands.command(
        name="channel", description="Turn the bot on or off here and choose how it replies"
    )
    @app_commands.describe(
        enabled="Whether the bot talks in this channel",
        reply_mode="all: reply to every message; mention: only when the bot is mentioned",
        busy="What a new message does while a reply is being written",
        edits="What editing your last message does",
    )
    async def channel(
        self,
        interaction: discord.Interaction[SynatraBot],
        enabled: bool | None = None,
        reply_mode: Literal["all", "mention"] | None = None,
        busy: Literal["queue", "restart"] | None = None,
        edits: Literal["offer", "regenerate"] | None = None,
    ) -> None:
        changes: dict[str, Any] = {}
        if enabled is not None:
            changes["enabled"] = enabled
        if reply_mode is not None:
            changes["reply_mode"] = reply_mode
        if busy is not None:
            changes["busy_policy"] = busy
        if edits is not None:
            changes["edit_policy"] = edits
        if not changes:
            await self._show(interaction)
            return
        await self._save(interaction, "channel", **changes)

    @app_commands.command(name="sampling", description="Sampling settings for replies")
    @app_commands.describe(
        scope="This channel, or the server default",
        temperature="Randomness (0-2)",
        top_p="Nucleus sampling (0-1)",
        top_k="Only the k most likely tokens (0 = off)",
        repetition_penalty="Penalty for repeating (1 = off)",
        max_new_tokens="Longest reply in tokens",
        min_p="Drop tokens less likely than this share of the likeliest (0 = off)",
        dry_multiplier="DRY: how hard repeating earlier text is penalised (0 = off)",
        dry_base="DRY: how fast the penalty grows with the repeat's length",
        dry_allowed_length="DRY: the longest repeat left alone, in tokens",
        xtc_threshold="XTC: choices at least this likely count as top choices",
        xtc_probability="XTC: how often the top choices are set aside (0 = off)",
    )
    async def sampling(
        self,
        interaction: discord.Interaction[SynatraBot],
        scope: Scope = "channel",
        temperature: app_commands.Range[float, 0.0, 2.0] | None = None,
        top_p: app_commands.Range[float, 0.05, 1.0] | None = None,
        top_k: app_commands.Range[int, 0, 200] | None = None,
        repetition_penalty: app_commands.Range[float, 1.0, 2.0] | None = None,
        max_new_tokens: app_commands.Range[int, 16, 2048] | None = None,
        min_p: app_commands.Range[float, 0.0, 1.0] | None = None,
        dry_multiplier: app_commands.Range[float, 0.0, 5.0] | None = None,
        dry_base: app_commands.Range[float, 1.0, 4.0] | None = None,
        dry_allowed_length: app_commands.Range[int, 1, 20] | None = None,
        xtc_threshold: app_commands.Range[float, 0.01, 0.5] | None = None,
        xtc_probability: app_commands.Range[float, 0.0, 1.0] | None = None,
    ) -> None:
        changes = {
            k: v
            for k, v in {
                "temperature": temperature,
                "top_p": top_p,
                "top_k": top_k,
                "repetition_penalty": repetition_penalty,
                "max_new_tokens": max_new_tokens,
                "min_p": min_p,
                "dry_multiplier": dry_multiplier,
                "dry_base": dry_base,
                "dry_allowed_length": dry_allowed_length,
                "xtc_threshold": xtc_threshold,
                "xtc_probability": xtc_probability,
            }.items()
            if v is not None
        }
        if not changes:
            await self._show(interaction)
            return
        await self._save(interaction, scope, **changes)

    @app_commands.command(name="stop", description="Texts that end a reply where it writes them")
    @app_commands.describe(
        strings="Split by |, \\| for a bar, \\n for a new line; - for none. Leave out: a form",
        scope="This channel, or the server default",
    )
    async def stop(
        self,
        interaction: discord.Interaction[SynatraBot],
        strings: app_commands.Range[str, 1, 400] | None = None,
        scope: Scope = "channel",
    ) -> None:
        if strings is None:
            # The form takes one stop string a line, so any text can be one, bars included.
            assert interaction.guild_id is not None and interaction.channel is not None
            core = self.bot.core
            if scope == "server":
                config = await core.server_config(interaction.guild_id)
            else:
                config = await core.config_for(place_of(interaction.channel, interaction.guild_id))
            form = StopStringsForm(self, scope, config.sampling.stop_strings, interaction)
            await interaction.response.send_modal(form)
            return
        await self._store_stops(interaction, scope, parse_stop_strings(strings))

    async def _store_stops(
        self, interaction: discord.Interaction[SynatraBot], scope: Scope, stops: list[str]
    ) -> None:
        await self._store(interaction, scope, stop_strings=stops)
        shown = f"stop_strings={shown_stop_strings(stops)}"
        await answer(interaction, tr(interaction, f"config.saved.{scope}", changes=shown))

    @app_commands.command(name="context", description="Context window size in tokens")
    @app_commands.describe(
        size="Tokens the model sees (prompt + reply)", scope="This channel, or the server default"
    )
    async def context(
        self,
        interaction: discord.Interaction[SynatraBot],
        size: app_commands.Range[int, CONTEXT_SIZE_RANGE[0], CONTEXT_SIZE_RANGE[1]],
        scope: Scope = "channel",
    ) -> None:
        await self._save(interaction, scope, context_size=size)

    @app_commands.command(name="ratelimit", description="Replies one member may ask for per minute")
    @app_commands.describe(
        per_minute="Replies per member per minute", scope="This channel, or the server default"
    )
    async def ratelimit(
        self,
        interaction: discord.Interaction[SynatraBot],
        per_minute: app_commands.Range[int, 1, 60],
        scope: Scope = "channel",
    ) -> None:
        await self._save(interaction, scope, user_rate_limit=per_minute)

    @app_commands.command(name="nsfw", description="Where NSFW characters may be used")
    @app_commands.describe(
        policy="off: nowhere; age_restricted: age-restricted channels; allowed",
        scope="This channel, or the server default",
    )
    async def nsfw(
        self,
        interaction: discord.Interaction[SynatraBot],
        policy: Literal["off", "age_restricted", "allowed"],
        scope: Scope = "server",
    ) -> None:
        await self._save(interaction, scope, nsfw_policy=policy)

    @app_commands.command(
        name="approval", description="Require moderator approval for shared characters"
    )
    @app_commands.describe(required="Whether shared characters need approval")
    async def approval(self, interaction: discord.Interaction[SynatraBot], required: bool) -> None:
        await self._save(interaction, "server", approval_required=required)

    @app_commands.command(
        name="characters", description="How many characters each member may have in this server"
    )
    @app_commands.describe(
        limit="Characters per member (default 50); existing ones are kept",
        megabytes="MiB each member's characters may take together (default 32)",
    )
    async def characters(
        self,
        interaction: discord.Interaction[SynatraBot],
        limit: app_commands.Range[int, 1, 500] | None = None,
        megabytes: app_commands.Range[int, 1, MAX_CHARACTER_MEGABYTES] | None = None,
    ) -> None:
        changes = {
            k: v
            for k, v in {"character_limit": limit, "character_megabytes": megabytes}.items()
            if v is not None
        }
        if not changes:
            await self._show(interaction)
            return
        await self._save(interaction, "server", **changes)

    @app_commands.command(name="scene", description="How scenes with several characters play")
    @app_commands.describe(
        cast_limit="Characters one scene may hold in this server (default 4)",
        answer_every="Here: a message naming several characters gets an answer from each",
        turn_order="Here: who answers a player in a group scene",
    )
    async def scene(
        self,
        interaction: discord.Interaction[SynatraBot],
        cast_limit: app_commands.Range[int, 1, 8] | None = None,
        answer_every: bool | None = None,
        turn_order: TurnOrder | None = None,
    ) -> None:
        if cast_limit is None and answer_every is None and turn_order is None:
            await self._show(interaction)
            return
        if cast_limit is not None:
            await self._save(interaction, "server", cast_limit=cast_limit)
        channel = {"answer_every_addressed": answer_every, "turn_order": turn_order}
        changes = {name: value for name, value in channel.items() if value is not None}
        if changes:
            await self._save(interaction, "channel", **changes)

    @app_commands.command(
        name="initiative", description="Characters speak up on their own in quiet scenes here"
    )
    @app_commands.describe(
        enabled="Whether characters here speak up after a quiet time (off by default)",
        quiet_minutes="Minutes without a word before one does (default 30)",
        max_in_a_row="Times in a row before a player has to answer (default 2)",
        auto_turns="Turns a group's characters then take among themselves (default 3)",
    )
    async def initiative(
        self,
        interaction: discord.Interaction[SynatraBot],
        enabled: bool | None = None,
        quiet_minutes: app_commands.Range[int, QUIET_MINUTES[0], QUIET_MINUTES[1]] | None = None,
        max_in_a_row: app_commands.Range[int, 1, MAX_IN_A_ROW] | None = None,
        auto_turns: app_commands.Range[int, 0, MAX_AUTO_TURNS] | None = None,
    ) -> None:
        given = {
            "initiative": enabled,
            "initiative_quiet_minutes": quiet_minutes,
            "initiative_in_a_row": max_in_a_row,
            "initiative_auto_turns": auto_turns,
        }
        changes = {name: value for name, value in given.items() if value is not None}
        if not changes:
            await self._show(interaction)
            return
        await self._save(interaction, "channel", **changes)

    @app_commands.command(name="memory", description="How much scenes' memory may take")
    @app_commands.describe(
        summary_tokens="Tokens a scene's summary may take (default 384)",
        recall_tokens="Tokens of old turns recalled into each prompt (0: off; default 256)",
        fact_tokens="Tokens of what a character knows about the player speaking (0: off; "
        "default 120)",
        player_facts="Here: characters' knowledge of the players goes into prompts",
        pin_tokens="Tokens of pinned memories in each prompt (0: off; default 200)",
    )
    async def memory(
        self,
        interaction: discord.Interaction[SynatraBot],
        summary_tokens: app_commands.Range[int, 32, 2048] | None = None,
        recall_tokens: app_commands.Range[int, 0, 2048] | None = None,
        fact_tokens: app_commands.Range[int, 0, 1024] | None = None,
        player_facts: bool | None = None,
        pin_tokens: app_commands.Range[int, 0, 2048] | None = None,
    ) -> None:
        server = {
            "summary_tokens": summary_tokens,
            "recall_tokens": recall_tokens,
            "fact_tokens": fact_tokens,
            "pin_tokens": pin_tokens,
        }
        changes = {k: v for k, v in server.items() if v is not None}
        if not changes and player_facts is None:
            await self._show(interaction)
            return
        if changes:
            await self._save(interaction, "server", **changes)
        if player_facts is not None:
            await self._save(interaction, "channel", player_facts=player_facts)

    @app_commands.command(
        name="lorebook-budget", description="How many tokens lorebooks may take in a prompt"
    )
    @app_commands.describe(
        tokens="Tokens for lore (0: none; empty: a quarter of the prompt)",
        scope="This channel, or the server default",
        recursion="Recursion steps (0: off)",
    )
    async def lorebook_budget(
        self,
        interaction: discord.Interaction[SynatraBot],
        tokens: app_commands.Range[int, 0, CONTEXT_SIZE_RANGE[1]] | None = None,
        scope: Scope = "channel",
        recursion: app_commands.Range[int, 0, MAX_RECURSION_STEPS] | None = None,
    ) -> None:
        assert interaction.channel is not None
        if recursion is not None and tokens is None:
            # Only the recursion steps change: the budget stays as it is.
            await self._save(interaction, scope, lorebook_recursion=recursion)
            return
        if tokens is not None:
            place = place_of(interaction.channel, interaction.guild_id)
            limit = (await self.bot.core.config_for(place)).context_size
            if tokens > limit:
                raise UserFacingError(
                    f"lorebook budget {tokens} is over the context size {limit}",
                    key="error.lorebook_budget",
                    limit=limit,
                )
        steps = {} if recursion is None else {"lorebook_recursion": recursion}
        await self._save(interaction, scope, lorebook_budget=tokens, **steps)

    @app_commands.command(name="scripts", description="Whether card scripts run")
    @app_commands.describe(
        enabled="Run the find/replace scripts of characters' cards",
        scope="This channel, or the server default",
    )
    async def scripts(
        self, interaction: discord.Interaction[SynatraBot], enabled: bool, scope: Scope = "channel"
    ) -> None:
        await self._save(interaction, scope, card_scripts=enabled)

    @app_commands.command(name="archive", description="How long archived scenes are kept")
    @app_commands.describe(
        keep_days="Days an archived scene is kept (0: for ever, the default)",
        rows="Rows per member's imported/branched scenes (default 50000)",
        megabytes="MiB per member's imported/branched scenes (default 32)",
    )
    async def archive(
        self,
        interaction: discord.Interaction[SynatraBot],
        keep_days: app_commands.Range[int, 0, 3650] | None = None,
        rows: app_commands.Range[int, 1, MAX_SCENE_ROWS] | None = None,
        megabytes: app_commands.Range[int, 1, MAX_SCENE_MEGABYTES] | None = None,
    ) -> None:
        changes: dict[str, int | None] = {
            k: v for k, v in {"scene_rows": rows, "scene_megabytes": megabytes}.items() if v
        }
        if keep_days is not None:
            changes["archive_keep_days"] = keep_days or None
        if not changes:
            await self._show(interaction)
            return
        await self._save(interaction, "server", **changes)
        if keep_days:
            assert interaction.channel is not None
            place = place_of(interaction.channel, interaction.guild_id)
            await self.bot.archive.prune(place)

    @app_commands.command(
        name="authornote", description="A note the model sees near the end of the prompt"
    )
    @app_commands.describe(text="The note (empty to remove)", depth="How many turns from the end")
    async def authornote(
        self,
        interaction: discord.Interaction[SynatraBot],
        text: app_commands.Range[str, 0, 1000] = "",
        depth: app_commands.Range[int, AUTHOR_NOTE_DEPTH_RANGE[0], AUTHOR_NOTE_DEPTH_RANGE[1]] = 4,
    ) -> None:
        assert interaction.channel is not None
        # The moderator's note is the one in force: a running scene's own (an imported
        # chat's) gives way to it.
        await self.bot.core.drop_scene_note(place_of(interaction.channel, interaction.guild_id))
        await self._save(interaction, "channel", author_note=text, author_note_depth=depth)

    async def _setting_names(
        self, interaction: discord.Interaction[SynatraBot], value: str
    ) -> list[app_commands.Choice[str]]:
        """The settings holding what was typed, in English or in Korean, labelled in the
        member's language (more of them than a choice list may hold)."""
        wanted = value.strip().casefold()
        korean = is_korean(interaction.locale)
        found = []
        for name in RESETTABLE_SETTINGS:
            label = SETTING_NAMES.get(name, name)
            if wanted in name.casefold() or wanted in label.casefold():
                found.append(app_commands.Choice(name=label if korean else name, value=name))
        return found[:25]

    @app_commands.command(
        name="reset", description="Put a setting back to what it inherits (server or default)"
    )
    @app_commands.describe(
        setting="The setting (as /config show names it)",
        scope="This channel (back to the server's), or the server (back to the default)",
    )
    @app_commands.autocomplete(setting=_setting_names)
    async def reset(
        self,
        interaction: discord.Interaction[SynatraBot],
        setting: str,
        scope: Scope = "channel",
    ) -> None:
        if setting not in RESETTABLE_SETTINGS:
            names = ", ".join(RESETTABLE_SETTINGS)
            await answer(interaction, tr(interaction, "config.unknown_setting", names=names))
            return
        # A server-only setting has nothing between it and the default.
        where: Scope = "server" if setting in SERVER_SETTINGS else scope
        await self._store(interaction, where, **{setting: None})
        await answer(interaction, tr(interaction, f"config.reset.{where}", setting=setting))

    preset = app_commands.Group(name="preset", description="Named sets of sampling settings")

    async def _preset_names(
        self, interaction: discord.Interaction[SynatraBot], value: str
    ) -> list[app_commands.Choice[str]]:
        if interaction.guild_id is None:
            return []
        return name_choices(await self.bot.core.presets(interaction.guild_id), value)

    @preset.command(name="apply", description="Use a preset's sampling settings")
    @app_commands.describe(
        name="The preset (see /config preset list)", scope="This channel, or the server default"
    )
    @app_commands.autocomplete(name=_preset_names)
    async def preset_apply(
        self, interaction: discord.Interaction[SynatraBot], name: str, scope: Scope = "channel"
    ) -> None:
        assert interaction.guild_id is not None
        values = (await self.bot.core.presets(interaction.guild_id)).get(name)
        if values is None:
            raise NotFound(f"no preset called {name}", key="error.no_preset", name=name)
        await self._store(interaction, scope, **values)
        await answer(
            interaction,
            tr(interaction, f"preset.applied.{scope}", name=name, values=_shown(values)),
        )

    @preset.command(name="save", description="Keep this channel's sampling settings as a preset")
    @app_commands.describe(name="The preset's name")
    async def preset_save(
        self, interaction: discord.Interaction[SynatraBot], name: app_commands.Range[str, 1, 100]
    ) -> None:
        assert interaction.guild_id is not None and interaction.channel is not None
        name = " ".join(name.split())
        config = await self.bot.core.config_for(place_of(interaction.channel, interaction.guild_id))
        values = sampling_values(config)
        await self.bot.core.save_preset(interaction.guild_id, name, values)
        await answer(interaction, tr(interaction, "preset.saved", name=name, values=_shown(values)))

    @preset.command(name="list", description="The presets this server can apply")
    async def preset_list(self, interaction: discord.Interaction[SynatraBot]) -> None:
        assert interaction.guild_id is not None
        presets = await self.bot.core.presets(interaction.guild_id)
        lines = [tr(interaction, "preset.list")]
        for name, values in presets.items():
            mark = "" if preset_batchable(values) else " ⏱"
            lines.append(f"- **{name}**{mark}: {_shown(values)}")
        lines.append(tr(interaction, "preset.lane_note"))
        await answer(interaction, "\n".join(lines)[:2000])

    @preset.command(name="delete", description="Delete one of this server's own presets")
    @app_commands.describe(name="The preset")
    @app_commands.autocomplete(name=_preset_names)
    async def preset_delete(self, interaction: discord.Interaction[SynatraBot], name: str) -> None:
        assert interaction.guild_id is not None
        await self.bot.core.delete_preset(interaction.guild_id, name)
        await answer(interaction, tr(interaction, "preset.deleted", name=name))

    @app_commands.command(name="show", description="Show the settings that apply in this channel")
    async def show(self, interaction: discord.Interaction[SynatraBot]) -> None:
        await self._show(interaction)

    async def _show(self, interaction: discord.Interaction[SynatraBot]) -> None:
        assert interaction.guild_id is not None and interaction.channel is not None
        config = await self.bot.core.config_for(place_of(interaction.channel, interaction.guild_id))
        rows = "\n".join(f"`{name}` {value}" for name, value in config.as_rows())
        await answer(interaction, tr(interaction, "config.show") + "\n" + rows)


class StopStringsForm(discord.ui.Modal):
    """`/config stop` without text: the stop strings one a line, opened with those in force."""

    def __init__(
        self,
        cog: Moderation,
        scope: Scope,
        current: tuple[str, ...],
        interaction: discord.Interaction[SynatraBot],
    ) -> None:
        super().__init__(title=tr(interaction, "config.stop_form"), timeout=900)
        self.cog = cog
        self.scope: Scope = scope
        self.lines: discord.ui.TextInput[StopStringsForm] = discord.ui.TextInput(
            label=tr(interaction, "config.stop_form_label"),
            style=discord.TextStyle.paragraph,
            max_length=STOP_FORM_CHARS,
            required=False,
            default=stop_lines(current) or None,
        )
        self.add_item(self.lines)

    async def on_submit(self, interaction: discord.Interaction[SynatraBot]) -> None:  # type: ignore[override]
        if not actor_of(interaction).is_moderator:
            raise UserFacingError("moderators only", key="error.moderator_only")
        await self.cog._store_stops(interaction, self.scope, parse_stop_lines(self.lines.value))

    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction[SynatraBot], error: Exception
    ) -> None:
        await self.cog.bot.tree.on_error(interaction, ComponentError(error))


async def setup(bot: SynatraBot) -> None:
    await bot.add_cog(Moderation(bot))
