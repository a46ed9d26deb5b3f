"""Every command, option and choice reaches Discord with a Korean name and description: checked
on the payloads the real discord.py client synced to the fake Discord."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from synatra_bot.discord import commands_ko
from synatra_bot.discord.i18n import MESSAGES
from tests.discord_fake.limits import COMMAND_NAME, chat_input_name_ok

_SUBCOMMAND, _GROUP = 1, 2


def synced(harness) -> list[dict[str, Any]]:
    fake = harness.fake
    commands = [*fake.global_commands.values()]
    commands += [c for scope in fake.guild_commands.values() for c in scope.values()]
    return commands


def walk(command: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(English path, item, kind) for a command, its groups, subcommands, options and choices;
    kind is "command", "option" or "choice"."""
    yield command["name"], command, "command"
    stack = [(command["name"], option) for option in command.get("options") or []]
    while stack:
        parent, item = stack.pop()
        path = f"{parent} {item['name']}"
        is_command = item.get("type") in (_SUBCOMMAND, _GROUP)
        yield path, item, "command" if is_command else "option"
        stack += [(path, inner) for inner in item.get("options") or []]
        for choice in item.get("choices") or []:
            yield f"{path} [{choice['name']}]", choice, "choice"


def korean(item: dict[str, Any], field: str) -> str | None:
    return (item.get(f"{field}_localizations") or {}).get("ko")


async def test_every_synced_name_description_and_choice_has_a_valid_korean_localisation(harness):
    commands = synced(harness)
    assert {c["name"] for c in commands} >= {"rp", "character", "persona", "config", "lorebook"}
    lacking = []
    for command in commands:
        chat_input = command.get("type", 1) == 1
        for path, item, kind in walk(command):
            name = korean(item, "name")
            if name is None:  # the fake keeps none identical to the English (Discord ignores it)
                lacking.append(f"{path}: no Korean name")
            elif kind != "choice" and chat_input and not chat_input_name_ok(name):
                lacking.append(f"{path}: Korean name {name!r} breaks Discord's name rules")
            elif not chat_input and not 1 <= len(name) <= COMMAND_NAME:
                lacking.append(f"{path}: Korean menu name {name!r} is not 1-32 characters")
            if kind != "choice" and chat_input and korean(item, "description") is None:
                lacking.append(f"{path}: no Korean description for {item['description']!r}")
    assert lacking == []


async def test_the_korean_catalogue_holds_only_text_the_bot_syncs(harness):
    """A command renamed or reworded in English leaves no Korean text behind that nothing uses."""
    used: dict[str, set[str]] = {"commands": set(), "options": set(), "choices": set()}
    descriptions: set[str] = set()
    for command in synced(harness):
        for path, item, kind in walk(command):
            if kind == "command":
                used["commands"].add(path)
            elif kind == "option":
                used["options"].add(item["name"])
            else:
                used["choices"].add(item["name"])
            if item.get("description"):
                descriptions.add(item["description"])
    assert set(commands_ko.COMMAND_NAMES) - used["commands"] == set()
    assert set(commands_ko.OPTION_NAMES) - used["options"] == set()
    assert set(commands_ko.CHOICE_NAMES) - used["choices"] == set()
    # `/config reset` offers its settings by autocomplete: each has its Korean label.
    from synatra_bot.discord.cogs.moderation import RESETTABLE_SETTINGS

    assert set(commands_ko.SETTING_NAMES) == set(RESETTABLE_SETTINGS)
    assert set(commands_ko.DESCRIPTIONS) - descriptions == set()


async def test_the_same_english_word_gets_the_korean_its_place_calls_for(harness):
    by_path = {path: item for c in synced(harness) for path, item, _ in walk(c)}
    # "stop" ends a scene under /rp and sets stop strings under /config.
    assert korean(by_path["rp stop"], "name") == "끝내기"
    assert korean(by_path["config stop"], "name") == "멈춤문자열"
    # "channel" is a subcommand's name and a choice's name.
    assert korean(by_path["config channel"], "name") == "채널"
    assert korean(by_path["config sampling scope [channel]"], "name") == "이 채널"
    # The same English text as a name and as a description.
    assert korean(by_path["rp cast"], "description") == "이 장면에 있는 캐릭터"
    assert korean(by_path["rp start character"], "name") == "캐릭터"
    assert korean(by_path["character show character"], "description") == "캐릭터"
    # The message menu item keeps its spaces.
    assert korean(by_path["Branch from here"], "name") == "여기서 갈래 만들기"


#: "/" then a word starting with a letter, and up to two words after it.
_COMMAND_MENTION = re.compile(r"(?<!\w)/([^\W\d_][^\s`:().,]*(?: [^\s`:().,]+){0,2})")


def _command_paths(harness, language: str) -> set[str]:
    """Every command path as a client in that language shows it ("rp cast list", "롤플레이 …")."""
    paths = set()
    for command in synced(harness):
        if command.get("type", 1) != 1:  # menu items are not typed after a slash
            continue
        for path, _item, kind in walk(command):
            if kind != "command":
                continue
            if language == "en":
                paths.add(path)
                continue
            words = path.split(" ")
            paths.add(
                " ".join(
                    commands_ko.COMMAND_NAMES[" ".join(words[: n + 1])] for n in range(len(words))
                )
            )
    return paths


def _mentioned(text: str, paths: set[str]) -> list[str]:
    """The longest command path each `/...` in the text starts with, or the bare mention."""
    found = []
    for match in _COMMAND_MENTION.finditer(text):
        words = match.group(1).split(" ")
        for n in range(len(words), 0, -1):
            if " ".join(words[:n]) in paths:
                found.append(" ".join(words[:n]))
                break
        else:
            found.append(f"unknown: /{match.group(1)}")
    return found


_QUOTED_COMMAND = re.compile(r"`/([^`]+)`")


def _quoted_paths(text: str) -> list[str]:
    """The command path of each `/...` quoted in the text, its options (`name:value`) left off."""
    return [
        " ".join(word for word in quoted.split(" ") if ":" not in word)
        for quoted in _QUOTED_COMMAND.findall(text)
    ]


async def test_replies_name_commands_as_the_readers_client_shows_them(harness):
    """A Korean reply names `/롤플레이 시작`, an English one /rp start: what each client lists.
    Korean replies quote the command so that the particle after it is not taken for a word."""
    english, korean_paths = _command_paths(harness, "en"), _command_paths(harness, "ko")
    wrong = []
    for key, (en, ko) in MESSAGES.items():
        wrong += [f"{key} (en) {m}" for m in _mentioned(en, english) if m.startswith("unknown")]
        bare = _COMMAND_MENTION.findall(_QUOTED_COMMAND.sub("", ko))
        wrong += [f"{key} (ko) unquoted /{m}" for m in bare]
        wrong += [f"{key} (ko) /{m}" for m in _quoted_paths(ko) if m not in korean_paths]
    assert wrong == []
    assert _quoted_paths(MESSAGES["error.no_session"][1]) == ["롤플레이 시작"]
    assert _quoted_paths(MESSAGES["rp.dm_nsfw_on"][1]) == ["롤플레이 dm-성인"]
