"""A card's example dialogues (`mes_example`) as the prompt's turns: `<START>` splits them,
`{{user}}:` / `{{char}}:` (or `<USER>:` / `<BOT>:`) start each speaker's lines."""

from __future__ import annotations

import re

from synatra_bot.prompt.cards import CharacterCard, macro_name
from synatra_bot.prompt.history import clean_name
from synatra_bot.prompt.macros import MacroContext, substitute_macros

_EXAMPLE_SPLIT = re.compile(r"^\s*<START>\s*$", re.IGNORECASE | re.MULTILINE)
_EXAMPLE_SPEAKER = re.compile(
    r"^\s*(?P<who>\{\{\s*(?:char|user)\s*\}\}|<(?:bot|user)>)\s*:\s?(?P<text>.*)$",
    re.IGNORECASE,
)


def example_blocks(card: CharacterCard) -> list[str]:
    """The card's example dialogues, one text each."""
    return _EXAMPLE_SPLIT.split(card.example_messages)


def example_turns(
    card: CharacterCard,
    block: str,
    user: str,
    named: bool,
    context: MacroContext | None = None,
) -> list[tuple[str, str]]:
    """One example dialogue of `card` as (role, message body) turns; with `named` the
    character's lines carry its name."""
    turns: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        speaker = _EXAMPLE_SPEAKER.match(line)
        if speaker is not None:
            role = "user" if "user" in speaker.group("who").lower() else "assistant"
            turns.append((role, [speaker.group("text")]))
        elif turns:
            turns[-1][1].append(line)
        elif line.strip():
            turns.append(("assistant", [line]))
    bodies = []
    for role, lines in turns:
        text = substitute_macros(
            "\n".join(lines), char=macro_name(card), user=user, context=context
        ).strip()
        if not text:
            continue
        if role == "user":
            text = f"{clean_name(user)}: {text}"
        elif named:
            text = f"{clean_name(card.name, '캐릭터')}: {text}"
        bodies.append((role, text))
    return bodies
