"""Effective per-channel configuration: channel settings over server defaults over app defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from synatra_bot.engine.base import SamplingParams
from synatra_bot.errors import UserFacingError
from synatra_bot.prompt.lorebook import DEFAULT_RECURSION_STEPS, recursion_steps
from synatra_bot.prompt.pins import DEFAULT_PIN_TOKENS, pin_budget
from synatra_bot.prompt.player_facts import DEFAULT_FACT_TOKENS, fact_budget
from synatra_bot.prompt.recall import DEFAULT_RECALL_TOKENS, recall_budget
from synatra_bot.settings import Settings
from synatra_bot.storage.records import ChannelSettingsRecord, GuildSettingsRecord
from synatra_bot.tokenizer import CONTROL_TEXTS

NSFW_POLICIES = ("off", "age_restricted", "allowed")
BUSY_POLICIES = ("queue", "restart")
REPLY_MODES = ("all", "mention")
EDIT_POLICIES = ("offer", "regenerate")
#: Characters one member may have in a server (or outside servers, of their own) until its
#: moderators choose another number with `/config characters`.
DEFAULT_CHARACTER_LIMIT = 50
#: MiB one member's characters (text, lorebooks inside cards, avatars) may take as stored in a
#: server (or outside servers, of their own) until its moderators choose another number.
DEFAULT_CHARACTER_MEGABYTES = 32
MAX_CHARACTER_MEGABYTES = 1024
#: Rows (each alternative of a turn one) and MiB of text one member's imported and branched
#: scenes may hold together in a server (or outside servers, of their own) until its
#: moderators choose other numbers with `/config archive`: room for the largest import
#: (`st_chat.MAX_CHAT_ROWS` rows, `MAX_CHAT_BYTES`) and a few branches of it, where branching
#: without a bound copied a scene's rows as often as anyone asked.
DEFAULT_SCENE_ROWS = 50_000
MAX_SCENE_ROWS = 1_000_000
DEFAULT_SCENE_MEGABYTES = 32
MAX_SCENE_MEGABYTES = 1024
#: Characters in one scene until a server's moderators choose another number.
DEFAULT_CAST_LIMIT = 4
#: Characters who speak up on their own (`roleplay.initiative`): the quiet time before one
#: does (minutes, a moderator picks within the bounds), how many times in a row before a
#: player answers, and the turns a group's characters then take among themselves.
QUIET_MINUTES = (10, 120)
DEFAULT_QUIET_MINUTES = 30
MAX_IN_A_ROW = 5
DEFAULT_IN_A_ROW = 2
MAX_AUTO_TURNS = 10
DEFAULT_AUTO_TURNS = 3
#: Tokens a scene's automatic memory may take until a server's moderators choose another size.
DEFAULT_SUMMARY_TOKENS = 384
#: The memory sits in every prompt's system block: it takes at most this share of the context,
#: so the character sheet and the newest turns still fit beside it.
SUMMARY_CONTEXT_SHARE = 4
#: The least memory a scene may have (a smaller one says nothing useful).
MIN_SUMMARY_TOKENS = 32
#: The samplers roleplayers use beside temperature, top-p and top-k.
ROLEPLAY_SAMPLERS = (
    "min_p",
    "dry_multiplier",
    "dry_base",
    "dry_allowed_length",
    "xtc_threshold",
    "xtc_probability",
)
#: Settings a channel inherits from its server, and a server from the app (`/config reset`).
INHERITED_SETTINGS = (
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    *ROLEPLAY_SAMPLERS,
    "max_new_tokens",
    "context_size",
    "user_rate_limit",
    "nsfw_policy",
    "busy_policy",
    "lorebook_budget",
    "lorebook_recursion",
    "card_scripts",
    "stop_strings",
)
#: What a sampling preset sets.
PRESET_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty", *ROLEPLAY_SAMPLERS)
#: The presets every server has, by name: values a preset leaves out are the engine's defaults
#: (min-p, DRY and XTC off). Chosen for Korean roleplay with Synatra: lower temperatures keep
#: its speech levels and particles steady; DRY breaks the loops long scenes fall into.
SHIPPED_PRESETS: Mapping[str, Mapping[str, float | int]] = MappingProxyType(
    {
        "기본": MappingProxyType({}),
        "안정": MappingProxyType({"temperature": 0.7, "top_p": 0.9, "top_k": 30}),
        "창작": MappingProxyType(
            {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.05, "xtc_probability": 0.5}
        ),
        "반복 억제": MappingProxyType(
            {"temperature": 0.85, "min_p": 0.05, "dry_multiplier": 0.8, "dry_allowed_length": 2}
        ),
    }
)
#: Presets one server may save.
MAX_SERVER_PRESETS = 20
#: Stop strings one channel or server may set, and the longest each may be (in characters).
MAX_STOP_STRINGS = 8
MAX_STOP_STRING_CHARS = 40
#: Between stop strings typed in one option; `\|` is a bar inside one, `\n` a line break and
#: `\\` a backslash (in a form, one stop string a line, the same escapes hold).
STOP_STRING_SEPARATOR = "|"
_STOP_ESCAPES = {"\\": "\\", "n": "\n", "|": "|"}
#: Settings only a server has; reset, they go back to the app's defaults.
SERVER_SETTINGS = (
    "character_limit",
    "character_megabytes",
    "scene_rows",
    "scene_megabytes",
    "cast_limit",
    "summary_tokens",
    "recall_tokens",
    "fact_tokens",
    "pin_tokens",
    "archive_keep_days",
)


@dataclass(frozen=True, slots=True)
class Defaults:
    """App-wide defaults a server can override (sampling: the engine's own defaults)."""

    temperature: float = SamplingParams.temperature
    top_p: float = SamplingParams.top_p
    top_k: int = SamplingParams.top_k
    repetition_penalty: float = SamplingParams.repetition_penalty
    min_p: float = SamplingParams.min_p
    dry_multiplier: float = SamplingParams.dry_multiplier
    dry_base: float = SamplingParams.dry_base
    dry_allowed_length: int = SamplingParams.dry_allowed_length
    xtc_threshold: float = SamplingParams.xtc_threshold
    xtc_probability: float = SamplingParams.xtc_probability
    max_new_tokens: int = SamplingParams.max_new_tokens
    stop_strings: tuple[str, ...] = ()
    context_size: int = 4096
    user_rate_limit: int = 6
    nsfw_policy: str = "age_restricted"
    busy_policy: str = "queue"
    lorebook_recursion: int = DEFAULT_RECURSION_STEPS
    #: Card scripts run unless a channel or its server turns them off.
    card_scripts: bool = True
    #: The engine is started for CONTEXT_SIZE tokens: no channel may ask for more.
    max_context_size: int = 4096

    @classmethod
    def from_settings(cls, settings: Settings) -> Defaults:
        return cls(
            max_new_tokens=settings.max_new_tokens,
            context_size=settings.context_size,
            max_context_size=settings.context_size,
        )


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """Everything one turn in a channel needs to know about how to behave."""

    enabled: bool
    reply_mode: str
    edit_policy: str
    busy_policy: str
    nsfw_policy: str
    user_rate_limit: int
    context_size: int
    sampling: SamplingParams
    author_note: str
    author_note_depth: int
    lorebook: dict[str, Any] | None
    approval_required: bool
    character_limit: int = DEFAULT_CHARACTER_LIMIT
    #: MiB one member's characters may take in the server, as stored.
    character_megabytes: int = DEFAULT_CHARACTER_MEGABYTES
    #: Rows and MiB one member's imported and branched scenes may hold in the server.
    scene_rows: int = DEFAULT_SCENE_ROWS
    scene_megabytes: int = DEFAULT_SCENE_MEGABYTES
    #: A player's message that names several characters of the scene: each answers in turn
    #: (otherwise the first one named does).
    answer_every_addressed: bool = False
    #: Who answers a player's line in a group scene (`turn_order.TURN_ORDERS`).
    turn_order: str = "addressed"
    #: Characters speak up on their own after `initiative_quiet_minutes` without a word in an
    #: active scene, at most `initiative_in_a_row` times before a player answers; in a group
    #: each time is `initiative_auto_turns` turns of the characters among themselves.
    initiative: bool = False
    initiative_quiet_minutes: int = DEFAULT_QUIET_MINUTES
    initiative_in_a_row: int = DEFAULT_IN_A_ROW
    initiative_auto_turns: int = DEFAULT_AUTO_TURNS
    cast_limit: int = DEFAULT_CAST_LIMIT
    #: Tokens the scene's automatic memory may take (its summary job's max_new_tokens).
    summary_tokens: int = DEFAULT_SUMMARY_TOKENS
    #: Tokens a prompt's recall of old turns may take (0: off).
    recall_tokens: int = DEFAULT_RECALL_TOKENS
    #: Tokens of what the answering character knows about the player speaking (0: off) ...
    fact_tokens: int = DEFAULT_FACT_TOKENS
    #: ... and whether it goes into prompts in this channel at all (moderators may turn it off).
    player_facts: bool = True
    #: Tokens a prompt's pinned lines may take (0: off).
    pin_tokens: int = DEFAULT_PIN_TOKENS
    #: Tokens the lorebooks may take in a prompt (within the context); None: the prompt
    #: builder's default, a quarter of the prompt budget.
    lorebook_budget: int | None = None
    #: Recursive scanning steps for the lorebooks that ask for it (0: off).
    lorebook_recursion: int = DEFAULT_RECURSION_STEPS
    #: Whether the cast's card scripts run (moderators may turn them off).
    card_scripts: bool = True

    def as_rows(self) -> list[tuple[str, str]]:
        """(name, value) pairs for `/config show`."""
        s = self.sampling
        return [
            ("enabled", str(self.enabled)),
            ("reply_mode", self.reply_mode),
            ("busy_policy", self.busy_policy),
            ("edit_policy", self.edit_policy),
            ("nsfw_policy", self.nsfw_policy),
            ("approval_required", str(self.approval_required)),
            ("character_limit", f"{self.character_limit}/member"),
            ("character_megabytes", f"{self.character_megabytes} MiB/member"),
            ("scene_rows", f"{self.scene_rows}/member"),
            ("scene_megabytes", f"{self.scene_megabytes} MiB/member"),
            ("cast_limit", f"{self.cast_limit}/scene"),
            ("summary_tokens", str(self.summary_tokens)),
            ("recall_tokens", str(self.recall_tokens)),
            ("fact_tokens", str(self.fact_tokens)),
            ("player_facts", str(self.player_facts)),
            ("pin_tokens", str(self.pin_tokens)),
            (
                "lorebook_budget",
                "auto" if self.lorebook_budget is None else str(self.lorebook_budget),
            ),
            ("lorebook_recursion", str(self.lorebook_recursion)),
            ("card_scripts", str(self.card_scripts)),
            ("answer_every_addressed", str(self.answer_every_addressed)),
            ("turn_order", self.turn_order),
            (
                "initiative",
                f"{self.initiative} ({self.initiative_quiet_minutes} min, "
                f"{self.initiative_in_a_row}x, auto {self.initiative_auto_turns})",
            ),
            ("user_rate_limit", f"{self.user_rate_limit}/min"),
            ("context_size", str(self.context_size)),
            ("max_new_tokens", str(s.max_new_tokens)),
            ("temperature", f"{s.temperature:g}"),
            ("top_p", f"{s.top_p:g}"),
            ("top_k", str(s.top_k)),
            ("repetition_penalty", f"{s.repetition_penalty:g}"),
            ("min_p", f"{s.min_p:g}"),
            ("dry_multiplier", f"{s.dry_multiplier:g}"),
            ("dry_base", f"{s.dry_base:g}"),
            ("dry_allowed_length", str(s.dry_allowed_length)),
            ("xtc_threshold", f"{s.xtc_threshold:g}"),
            ("xtc_probability", f"{s.xtc_probability:g}"),
            ("stop_strings", shown_stop_strings(s.stop_strings)),
        ]


def parse_stop_strings(text: str) -> list[str]:
    """Stop strings as a moderator types them in one option: separated by `|`, `\\|` for a bar
    inside one, `\\n` for a line break, spaces around each ignored; `-` or nothing for none.
    UserFacingError names what is wrong."""
    text = text.strip()
    if text in ("", "-"):
        return []
    # Typed whole, a control token would otherwise be split at its bars into "<", "im_end"...
    _refuse_control_tokens(text)
    pieces: list[str] = []
    current: list[str] = []
    characters = iter(text)
    for character in characters:
        if character == "\\":
            current.append(character + next(characters, ""))
        elif character == STOP_STRING_SEPARATOR:
            pieces.append("".join(current))
            current = []
        else:
            current.append(character)
    pieces.append("".join(current))
    return _checked([_unescaped(piece.strip(" ")) for piece in pieces])


def parse_stop_lines(text: str) -> list[str]:
    """Stop strings as a moderator writes them in the form: one a line, taken as written (a bar
    is a bar), with `\\n` for a line break; blank lines are skipped."""
    lines = [line.strip(" ") for line in text.splitlines()]
    return _checked([_unescaped(line) for line in lines if line])


def _unescaped(piece: str) -> str:
    out: list[str] = []
    characters = iter(piece)
    for character in characters:
        if character == "\\":
            following = next(characters, "")
            out.append(_STOP_ESCAPES.get(following, character + following))
        else:
            out.append(character)
    return "".join(out)


def _refuse_control_tokens(text: str) -> None:
    for token in CONTROL_TEXTS:
        if token in text:
            raise UserFacingError(
                f"{token} is one of the model's control tokens; replies already stop at it",
                key="error.stop_string_control",
                token=token,
            )


def _checked(pieces: list[str]) -> list[str]:
    """The stop strings, each once, or UserFacingError naming what is wrong."""
    if any(not piece.strip() for piece in pieces):
        raise UserFacingError("a stop string is empty", key="error.stop_string_empty")
    if len(set(pieces)) > MAX_STOP_STRINGS:
        raise UserFacingError(
            f"at most {MAX_STOP_STRINGS} stop strings",
            key="error.stop_strings_many",
            limit=MAX_STOP_STRINGS,
        )
    for piece in pieces:
        _refuse_control_tokens(piece)
        if len(piece) > MAX_STOP_STRING_CHARS:
            raise UserFacingError(
                f"a stop string is over {MAX_STOP_STRING_CHARS} characters",
                key="error.stop_string_long",
                limit=MAX_STOP_STRING_CHARS,
            )
    return list(dict.fromkeys(pieces))


def _escaped(stop: str, *specials: str) -> str:
    stop = stop.replace("\\", "\\\\").replace("\n", "\\n")
    for special in specials:
        stop = stop.replace(special, "\\" + special)
    return stop


def shown_stop_strings(stops: tuple[str, ...] | list[str]) -> str:
    """Stop strings as `/config show` lists them, typed as `parse_stop_strings` reads them."""
    if not stops:
        return "-"
    return f" {STOP_STRING_SEPARATOR} ".join(_escaped(s, STOP_STRING_SEPARATOR) for s in stops)


def stop_lines(stops: tuple[str, ...] | list[str]) -> str:
    """Stop strings as the form shows them, written as `parse_stop_lines` reads them."""
    return "\n".join(_escaped(stop) for stop in stops)


def character_limit(guild: GuildSettingsRecord | None) -> int:
    """How many characters one member may have in `guild` (None: outside any server)."""
    if guild is None or guild.character_limit is None:
        return DEFAULT_CHARACTER_LIMIT
    return guild.character_limit


def character_megabytes(guild: GuildSettingsRecord | None) -> int:
    """How many MiB one member's characters may take in `guild` as stored (None: outside
    any server)."""
    if guild is None or guild.character_megabytes is None:
        return DEFAULT_CHARACTER_MEGABYTES
    return guild.character_megabytes


def scene_quota(guild: GuildSettingsRecord | None) -> tuple[int, int]:
    """Rows and MiB one member's imported and branched scenes may hold in `guild` (None:
    outside any server)."""
    rows = DEFAULT_SCENE_ROWS if guild is None or guild.scene_rows is None else guild.scene_rows
    megabytes = (
        DEFAULT_SCENE_MEGABYTES
        if guild is None or guild.scene_megabytes is None
        else guild.scene_megabytes
    )
    return rows, megabytes


def _or(channel: ChannelSettingsRecord | None, name: str, default: int) -> int:
    """A channel's number, or `default` where it keeps the default (NULL)."""
    value = getattr(channel, name, None) if channel is not None else None
    return default if value is None else int(value)


def _pick(name: str, *sources: object) -> Any:
    for source in sources:
        value = getattr(source, name, None)
        if value is not None:
            return value
    raise LookupError(name)


def effective_config(
    *,
    defaults: Defaults,
    guild: GuildSettingsRecord,
    channel: ChannelSettingsRecord | None,
) -> ChannelConfig:
    order = (channel, guild, defaults) if channel is not None else (guild, defaults)
    sampling = SamplingParams(
        temperature=_pick("temperature", *order),
        top_p=_pick("top_p", *order),
        top_k=_pick("top_k", *order),
        repetition_penalty=_pick("repetition_penalty", *order),
        **{name: _pick(name, *order) for name in ROLEPLAY_SAMPLERS},
        max_new_tokens=min(_pick("max_new_tokens", *order), defaults.max_context_size // 2),
        stop_strings=tuple(_pick("stop_strings", *order)),
    )
    context_size = min(_pick("context_size", *order), defaults.max_context_size)
    return ChannelConfig(
        enabled=channel.enabled if channel else False,
        reply_mode=channel.reply_mode if channel else "all",
        edit_policy=channel.edit_policy if channel else "offer",
        busy_policy=_pick("busy_policy", *order),
        nsfw_policy=_pick("nsfw_policy", *order),
        user_rate_limit=_pick("user_rate_limit", *order),
        context_size=context_size,
        sampling=sampling,
        author_note=channel.author_note if channel else "",
        author_note_depth=channel.author_note_depth if channel else 4,
        lorebook=channel.lorebook if channel else None,
        approval_required=guild.approval_required,
        character_limit=character_limit(guild),
        character_megabytes=character_megabytes(guild),
        scene_rows=scene_quota(guild)[0],
        scene_megabytes=scene_quota(guild)[1],
        answer_every_addressed=channel.answer_every_addressed if channel else False,
        turn_order=(channel.turn_order if channel else None) or "addressed",
        initiative=channel.initiative if channel else False,
        initiative_quiet_minutes=_or(channel, "initiative_quiet_minutes", DEFAULT_QUIET_MINUTES),
        initiative_in_a_row=_or(channel, "initiative_in_a_row", DEFAULT_IN_A_ROW),
        initiative_auto_turns=_or(channel, "initiative_auto_turns", DEFAULT_AUTO_TURNS),
        cast_limit=guild.cast_limit if guild.cast_limit is not None else DEFAULT_CAST_LIMIT,
        summary_tokens=summary_tokens(guild, context_size),
        recall_tokens=recall_tokens(guild, context_size),
        fact_tokens=fact_budget(guild.fact_tokens, context_size),
        player_facts=channel.player_facts is not False if channel else True,
        pin_tokens=pin_budget(guild.pin_tokens, context_size),
        lorebook_budget=lorebook_budget(guild, channel, context_size),
        lorebook_recursion=recursion_steps(_pick("lorebook_recursion", *order)),
        card_scripts=_pick("card_scripts", *order),
    )


def lorebook_budget(
    guild: GuildSettingsRecord, channel: ChannelSettingsRecord | None, context_size: int
) -> int | None:
    """The channel's lorebook budget, else the server's, within the context; None when neither
    chose one (the prompt builder then gives lore a quarter of the prompt)."""
    chosen = channel.lorebook_budget if channel is not None else None
    if chosen is None:
        chosen = guild.lorebook_budget
    return None if chosen is None else max(0, min(chosen, context_size))


def summary_tokens(guild: GuildSettingsRecord, context_size: int) -> int:
    """The tokens a scene's memory may take: the server's choice (else the default), within
    `MIN_SUMMARY_TOKENS` and a `SUMMARY_CONTEXT_SHARE`th of the context."""
    chosen = guild.summary_tokens if guild.summary_tokens is not None else DEFAULT_SUMMARY_TOKENS
    return max(MIN_SUMMARY_TOKENS, min(chosen, context_size // SUMMARY_CONTEXT_SHARE))


def recall_tokens(guild: GuildSettingsRecord, context_size: int) -> int:
    """The tokens a prompt's recall may take: the server's choice (else the default), within
    a share of the context (`prompt.recall.recall_budget`)."""
    return recall_budget(guild.recall_tokens, context_size)


def preset_values(preset: Mapping[str, float | int]) -> dict[str, float | int]:
    """Every field a preset sets: its own values, the engine's defaults for the rest."""
    engine_defaults = SamplingParams()
    return {name: preset.get(name, getattr(engine_defaults, name)) for name in PRESET_FIELDS}


def preset_batchable(values: Mapping[str, float | int]) -> bool:
    """Whether replies sampled with a preset stay inside the embedded engine's batch."""
    changes: dict[str, Any] = dict(values)
    return dataclasses.replace(SamplingParams(), **changes).batchable


def sampling_values(config: ChannelConfig) -> dict[str, float | int]:
    """The preset fields as they apply in a channel (what `/config preset save` keeps)."""
    return {name: getattr(config.sampling, name) for name in PRESET_FIELDS}
