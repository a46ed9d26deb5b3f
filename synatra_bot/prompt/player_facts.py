"""What a character knows about each player: asked of the memory job beside its summary, read
back strictly, and put in the prompt for the player speaking.

The memory job's request gets a small section after the summary: a heading line
(`FACTS_HEADING`), then one line per fact, `- name: fact`, naming one of the players who spoke
in the folded turns. Only such lines are read; anything else (another name, an empty fact, a
line past the limits, a last line the token limit may have cut) is left out, never stored.

In a prompt the facts are one system message after the history, beside the recall block
(`PromptOptions.player_facts`): they follow who speaks, so anywhere earlier they would change
the prompt's start, which an engine's cached prefix needs to stay the same from turn to turn.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

#: The line that starts the facts section of the memory job's answer.
FACTS_HEADING = "### 플레이어 정보"
#: What the model writes for a player it learnt nothing new about.
NO_FACT = "없음"
#: A fact longer than this is not a short fact: left out.
MAX_FACT_CHARS = 200
#: Facts one fold may add about one player.
FACTS_PER_FOLD = 3
#: The share of the memory job's answer (`summary_tokens`) left to the facts section: the
#: summary is asked for in the rest.
FACT_ANSWER_SHARE = 4
#: Facts kept about one player per character (the oldest memory-job ones make room first).
FACTS_PER_CHARACTER = 30
#: Tokens a prompt's facts take by default, and at most this share of the context.
DEFAULT_FACT_TOKENS = 120
FACT_CONTEXT_SHARE = 8
#: What the block's system message adds to its text (its ChatML markers).
FACTS_PIECE_TOKENS = 6
_FACT_LINE = re.compile(r"^[-*•]\s*(?P<name>[^:：\n]{1,64}?)\s*[:：]\s*(?P<fact>.+)$")


def facts_request(players: Sequence[str]) -> str:
    """The request closing the memory job's prompt when it asks for facts about `players` too
    (short: every token of it is one the dialogue cannot have)."""
    return (
        "위 대화를 지금까지의 요약에 더해 새 요약을 쓰세요. 그 뒤 "
        f"'{FACTS_HEADING}' 줄 아래에 {', '.join(players)}에 대해 대화에서 드러난 사실을 "
        f"'- 이름: 사실' 형식으로 한 줄에 하나씩 쓰세요 (사람마다 {FACTS_PER_FOLD}개까지, "
        f"없으면 '- 이름: {NO_FACT}')."
    )


def split_facts(
    text: str, players: Sequence[str], *, cut_off: bool = False
) -> tuple[str, dict[str, list[str]]]:
    """The summary before the facts section, and the facts it holds by player name (only the
    names in `players`). With `cut_off` (the answer reached its token limit) the section's
    last line is left out: it may have been cut."""
    lines = text.split("\n")
    heading = next(
        (i for i, line in enumerate(lines) if line.strip().rstrip(":：") == FACTS_HEADING), None
    )
    if heading is None:
        return text.strip(), {}
    summary = "\n".join(lines[:heading]).strip()
    section = [line.strip() for line in lines[heading + 1 :] if line.strip()]
    if cut_off and section:
        section.pop()
    wanted = set(players)
    facts: dict[str, list[str]] = {}
    for line in section:
        match = _FACT_LINE.match(line)
        if match is None:
            continue
        name, fact = match["name"].strip(), " ".join(match["fact"].split())
        if name not in wanted or fact.strip(".") in ("", NO_FACT, "-", f"({NO_FACT})"):
            continue
        if len(fact) > MAX_FACT_CHARS:
            continue
        known = facts.setdefault(name, [])
        if len(known) < FACTS_PER_FOLD and fact not in known:
            known.append(fact)
    return summary, facts


def fact_budget(chosen: int | None, context_size: int) -> int:
    """The tokens a prompt's facts may take: `chosen` (None: the default) within a
    `FACT_CONTEXT_SHARE`th of the context (0: off)."""
    wanted = DEFAULT_FACT_TOKENS if chosen is None else chosen
    return max(0, min(wanted, context_size // FACT_CONTEXT_SHARE))


@dataclass(frozen=True)
class FactNote:
    """A stored fact: its id, text and where it came from ("summary", "pin", "player")."""

    fact_id: int
    text: str
    source: str


@dataclass(frozen=True)
class FactsBlock:
    """The block's text (without ChatML markers): what `character` knows about `player`."""

    text: str
    player: str
    character: str
    notes: tuple[FactNote, ...]
    #: The player's id, where the caller knows it (who may read the block).
    player_id: int | None = None


#: Which facts the budget takes first: the player's own, then pins, then the memory job's.
_PRIORITY: Mapping[str, int] = MappingProxyType({"player": 0, "pin": 1, "summary": 2})


def facts_block(
    facts: Sequence[FactNote],
    *,
    player: str,
    character: str,
    budget: int,
    count: Callable[[str], int],
) -> FactsBlock | None:
    """The facts that fit `budget` tokens (`count` is the real tokenizer's), the player's own
    first and then the newest, in the order they were learnt; None when none fits."""
    heading = f"### {character}의 기억: {player}"

    def render(chosen: Sequence[FactNote]) -> str:
        ordered = sorted(chosen, key=lambda note: note.fact_id)
        return "\n".join([heading, *(f"- {note.text}" for note in ordered)])

    chosen: list[FactNote] = []
    for note in sorted(facts, key=lambda n: (_PRIORITY.get(n.source, 2), -n.fact_id)):
        if count(render([*chosen, note])) + FACTS_PIECE_TOKENS <= budget:
            chosen.append(note)
    if not chosen:
        return None
    ordered = tuple(sorted(chosen, key=lambda note: note.fact_id))
    return FactsBlock(render(ordered), player, character, ordered)
