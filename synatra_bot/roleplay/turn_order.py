"""Who answers a player's line in a group scene, by the channel's turn order.

The orders are SillyTavern's group activation strategies, with the bot's own default first:

- *addressed*: the characters the line names (the first, or each where the channel says so),
  else the one that last answered this player.
- *natural*: the characters named, in the order named; then every other character in a
  shuffled order answers when a draw falls within its talkativeness (a card's
  `extensions.talkativeness`, 0 to 1, 0.5 when it has none); when nobody does, one character
  whose talkativeness is above 0 is drawn. Several may answer one line.
- *list*: every character, in cast order.
- *pooled*: one character a line, drawn among the characters that have not spoken since the
  last player line; names and talkativeness play no part. A player's line is itself the last
  player line, so the whole cast is the pool for it; a turn that comes without one (`/rp next`
  with no name) is drawn among those yet to speak since, and when all have spoken, among all
  but the one that spoke last.
- *manual*: nobody; `/rp next` (or a button under a reply) makes a character speak.

A muted character never answers on its own in any order; called by name with `/rp next`, it
still speaks. The draws are seeded by the scene and the turn, never by global random state, so a
turn is drawn the same way every time it is played.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from synatra_bot.storage.records import CharacterRecord

TurnOrder = Literal["addressed", "natural", "list", "pooled", "manual"]
TURN_ORDERS: tuple[TurnOrder, ...] = ("addressed", "natural", "list", "pooled", "manual")
#: SillyTavern's talkativeness for a card that gives none.
DEFAULT_TALKATIVENESS = 0.5

#: Why a character answers: named in the line, its talkativeness won the draw, drawn because
#: nobody else was, its place in the cast (list order), the last one to answer the player (or
#: to speak), drawn among those yet to speak since the last player line (pooled order), or
#: drawn among all but the last speaker once everyone had spoken (pooled order).
Why = Literal["named", "talkative", "drawn", "listed", "last", "pooled", "pooled_again"]


@dataclass(frozen=True, slots=True)
class Pick:
    """One character that answers, and why; `draw` and `talkativeness` for the natural order's
    rolls."""

    character: CharacterRecord
    why: Why
    draw: float | None = None
    talkativeness: float | None = None

    @property
    def reason(self) -> Reason:
        """Why it answered, by the character's name (what the inspector keeps and shows)."""
        return Reason(self.character.name, self.why, self.draw, self.talkativeness)


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a character answered a line, by name."""

    name: str
    why: Why
    draw: float | None = None
    talkativeness: float | None = None


def talkativeness(character: CharacterRecord) -> float:
    """How likely a character speaks up in the natural order: its card's
    `extensions.talkativeness` (a number or a numeric string, as SillyTavern writes it) within
    0 and 1; `DEFAULT_TALKATIVENESS` when missing or not a number."""
    value = character.extensions.get("talkativeness") if character.extensions else None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return DEFAULT_TALKATIVENESS
    try:
        number = float(value)
    except ValueError:
        return DEFAULT_TALKATIVENESS
    if not math.isfinite(number):
        return DEFAULT_TALKATIVENESS
    return min(1.0, max(0.0, number))


def seeded(scene_id: int, turn: int) -> random.Random:
    """The draws of one turn of one scene: the same on every run (a string seed is hashed
    with SHA-512, whatever PYTHONHASHSEED is)."""
    return random.Random(f"turn-order:{scene_id}:{turn}")


def natural_order(
    named: Sequence[CharacterRecord],
    speakers: Sequence[CharacterRecord],
    rng: random.Random,
) -> list[Pick]:
    """The natural order among `speakers` (the unmuted cast, in cast order): who `named`
    names first, then each other speaker whose talkativeness reaches its draw, in a shuffled
    order; nobody: one speaker drawn among those whose talkativeness is above 0."""
    picks = [Pick(character, "named") for character in named]
    chosen = {character.id for character in named}
    shuffled = list(speakers)
    rng.shuffle(shuffled)
    chatty = []
    for character in shuffled:
        share = talkativeness(character)
        draw = rng.random()
        if character.id not in chosen and share >= draw:
            picks.append(Pick(character, "talkative", draw=draw, talkativeness=share))
            chosen.add(character.id)
        if share > 0:
            chatty.append(character)
    if not picks and chatty:
        picks.append(Pick(rng.choice(chatty), "drawn"))
    return picks


def spoken_since_player(
    history: Sequence[tuple[str, int | None]],
) -> list[int]:
    """The characters that spoke since the newest player line of `history` ((role, character
    id) pairs, oldest first), oldest first."""
    spoken: list[int] = []
    for role, character_id in reversed(history):
        if role == "user":
            break
        if character_id is not None:
            spoken.append(character_id)
    return spoken[::-1]


def pooled_order(
    speakers: Sequence[CharacterRecord],
    spoken: Sequence[int],
    rng: random.Random,
) -> list[Pick]:
    """SillyTavern's pooled order among `speakers` (the unmuted cast, in cast order): one
    character drawn among those not in `spoken` (who spoke since the last player line, oldest
    first); when all are, one drawn among all but the last to speak (the only speaker
    included when it is alone). Nobody when nobody may speak."""
    if not speakers:
        return []
    said = set(spoken)
    pool = [character for character in speakers if character.id not in said]
    if pool:
        return [Pick(rng.choice(pool), "pooled")]
    last = spoken[-1] if spoken else None
    others = [character for character in speakers if character.id != last]
    return [Pick(rng.choice(others or list(speakers)), "pooled_again")]
