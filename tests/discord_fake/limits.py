"""Discord's documented request limits, checked the way Discord answers them.

A body that breaks a limit is refused with 400 and code 50035 ("Invalid Form Body"); its
``errors`` object mirrors the body's shape down to the offending field, e.g.
``{"embeds": {"0": {"description": {"_errors": [{"code": ..., "message": ...}]}}}}``.
A message left with nothing to show is refused with 50006.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import regex

Path = tuple[str | int, ...]

CONTENT_LIMIT = 2000
EMBEDS_PER_MESSAGE = 10
EMBED_TOTAL = 6000
EMBED_TITLE = 256
EMBED_DESCRIPTION = 4096
EMBED_FIELDS = 25
EMBED_FIELD_NAME = 256
EMBED_FIELD_VALUE = 1024
EMBED_FOOTER = 2048
EMBED_AUTHOR = 256
ACTION_ROWS = 5
ROW_WIDTH = 5
CUSTOM_ID = 100
BUTTON_LABEL = 80
USERNAME = 80
MODAL_TITLE = 45
MODAL_ROWS = 5
TEXT_INPUT_LABEL = 45
TEXT_INPUT_VALUE = 4000
TEXT_INPUT_PLACEHOLDER = 100
#: Discord refuses these anywhere in a webhook's name or a message's username, in any case.
FORBIDDEN_NAME_PARTS = ("discord", "clyde")
#: Query parameters Discord parses as booleans (webhook execute/edit, guild and command GETs).
BOOLEAN_QUERY = ("wait", "with_components", "with_response", "with_counts", "with_localizations")
_BOOLEAN = re.compile(r"^(?:true|false|1|0)$", re.IGNORECASE)
#: Component types that carry a custom_id and sit inside an action row.
_INTERACTIVE = {2, 3, 5, 6, 7, 8}
_LINK_STYLE = 5
_PREMIUM_STYLE = 6


class ApiError(Exception):
    """Raised by route handlers; becomes a Discord-style JSON error response."""

    def __init__(
        self, status: int, message: str, code: int = 0, errors: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.errors = errors

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


class FormErrors:
    """Collects field errors into Discord's nested ``errors`` object."""

    def __init__(self) -> None:
        self.errors: dict[str, Any] = {}

    def add(self, path: Path, code: str, message: str) -> None:
        node = self.errors
        for key in path:
            node = node.setdefault(str(key), {})
        node.setdefault("_errors", []).append({"code": code, "message": message})

    def max_length(self, path: Path, value: Any, limit: int) -> None:
        if isinstance(value, str | list) and len(value) > limit:
            self.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")

    def length_between(self, path: Path, value: Any, low: int, high: int) -> None:
        if not isinstance(value, str | list) or not low <= len(value) <= high:
            self.add(path, "BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length.")

    def at_most(self, path: Path, value: Any, limit: int) -> None:
        if isinstance(value, int) and value > limit:
            self.add(path, "NUMBER_TYPE_MAX", f"int value should be less than or equal to {limit}.")

    def raise_if_any(self) -> None:
        if self.errors:
            raise ApiError(400, "Invalid Form Body", 50035, self.errors)


def check_message(
    body: Mapping[str, Any],
    *,
    files: int = 0,
    prefix: Path = (),
    existing: Any = None,
    webhook: bool = False,
) -> None:
    """Refuse a message create/edit body Discord would refuse.

    ``prefix`` is where the message sits in the request (``("data",)`` in an interaction
    callback); ``existing`` is the message being edited, whose kept parts count as content.
    """
    errors = FormErrors()
    errors.max_length((*prefix, "content"), body.get("content"), CONTENT_LIMIT)
    check_embeds(errors, body.get("embeds"), (*prefix, "embeds"))
    check_components(errors, body.get("components"), (*prefix, "components"))
    check_allowed_mentions(errors, body.get("allowed_mentions"), (*prefix, "allowed_mentions"))
    if webhook and "username" in body:
        check_name(errors, body["username"], (*prefix, "username"))
    errors.raise_if_any()
    if _is_empty(body, files, existing):
        raise ApiError(400, "Cannot send an empty message", 50006)


def _is_empty(body: Mapping[str, Any], files: int, existing: Any) -> bool:
    """Nothing to show: blank content, no embeds, components, files or stickers."""

    def kept(key: str, attribute: str) -> Any:
        if key in body:
            return body[key]
        return getattr(existing, attribute, None) if existing is not None else None

    content = kept("content", "content") or ""
    attachments = len(body["attachments"] or []) if "attachments" in body else None
    if attachments is None:
        attachments = len(getattr(existing, "attachments", None) or [])
    shown = (
        content.strip()
        or kept("embeds", "embeds")
        or kept("components", "components")
        or body.get("sticker_ids")
        or body.get("poll")
        or files
        or attachments
    )
    return not shown


def check_embeds(errors: FormErrors, embeds: Any, path: Path) -> None:
    """Per-embed field limits, at most 10 embeds, at most 6000 characters in all."""
    if not isinstance(embeds, list):
        return
    errors.max_length(path, embeds, EMBEDS_PER_MESSAGE)
    total = 0
    for index, embed in enumerate(embeds):
        here = (*path, index)
        for key, limit in (("title", EMBED_TITLE), ("description", EMBED_DESCRIPTION)):
            errors.max_length((*here, key), embed.get(key), limit)
            total += len(embed.get(key) or "")
        fields = embed.get("fields") or []
        errors.max_length((*here, "fields"), fields, EMBED_FIELDS)
        for number, item in enumerate(fields):
            errors.max_length((*here, "fields", number, "name"), item.get("name"), EMBED_FIELD_NAME)
            errors.max_length(
                (*here, "fields", number, "value"), item.get("value"), EMBED_FIELD_VALUE
            )
            total += len(item.get("name") or "") + len(item.get("value") or "")
        for key, limit in (("footer", EMBED_FOOTER), ("author", EMBED_AUTHOR)):
            part = embed.get(key) or {}
            text_key = "text" if key == "footer" else "name"
            errors.max_length((*here, key, text_key), part.get(text_key), limit)
            total += len(part.get(text_key) or "")
    if total > EMBED_TOTAL:
        errors.add(
            path, "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {EMBED_TOTAL}"
        )


def check_components(errors: FormErrors, rows: Any, path: Path) -> None:
    """At most 5 action rows of 5 buttons; custom ids 1-100 and unique; labels <= 80."""
    if not isinstance(rows, list):
        return
    errors.max_length(path, rows, ACTION_ROWS)
    seen: set[str] = set()
    for index, row in enumerate(rows):
        children = row.get("components") if row.get("type") == 1 else None
        if children is None:
            continue
        errors.max_length((*path, index, "components"), children, ROW_WIDTH)
        for number, item in enumerate(children):
            here = (*path, index, "components", number)
            if item.get("type") not in _INTERACTIVE:
                continue
            if item.get("type") == 2:
                errors.max_length((*here, "label"), item.get("label"), BUTTON_LABEL)
                if item.get("style") in (_LINK_STYLE, _PREMIUM_STYLE):
                    continue
            _check_custom_id(errors, item.get("custom_id"), (*here, "custom_id"), seen)


def _check_custom_id(errors: FormErrors, custom_id: Any, path: Path, seen: set[str]) -> None:
    errors.length_between(path, custom_id, 1, CUSTOM_ID)
    if isinstance(custom_id, str):
        if custom_id in seen:
            errors.add(
                path, "COMPONENT_CUSTOM_ID_DUPLICATED", "Component custom id cannot be duplicated"
            )
        seen.add(custom_id)


def check_allowed_mentions(errors: FormErrors, allowed: Any, path: Path) -> None:
    """``parse`` naming users (roles) excludes an explicit ``users`` (``roles``) list."""
    if not isinstance(allowed, dict):
        return
    parse = allowed.get("parse") or []
    for kind in ("users", "roles"):
        if kind in parse and kind in allowed:
            errors.add(
                path,
                "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                f'parse:["{kind}"] and {kind}: [ids...] are mutually exclusive.',
            )


def check_name(errors: FormErrors, name: Any, path: Path) -> None:
    """A webhook name or message username: 1-80 characters, never "discord" or "clyde"."""
    errors.length_between(path, name, 1, USERNAME)
    if not isinstance(name, str):
        return
    for part in FORBIDDEN_NAME_PARTS:
        if part in name.lower():
            errors.add(path, "USERNAME_INVALID_CONTAINS", f'Username cannot contain "{part}"')


def check_webhook_body(body: Mapping[str, Any]) -> None:
    """Webhook create/modify: the same name rules as a message's username."""
    errors = FormErrors()
    if "name" in body:
        check_name(errors, body["name"], ("name",))
    errors.raise_if_any()


def check_modal(data: Mapping[str, Any]) -> None:
    """A modal (interaction callback 9): 1-5 rows or labels of one text input each."""
    errors = FormErrors()
    errors.length_between(("data", "title"), data.get("title"), 1, MODAL_TITLE)
    errors.length_between(("data", "custom_id"), data.get("custom_id"), 1, CUSTOM_ID)
    rows = data.get("components")
    errors.length_between(("data", "components"), rows, 1, MODAL_ROWS)
    seen: set[str] = set()
    for index, row in enumerate(rows if isinstance(rows, list) else []):
        here: Path = ("data", "components", index)
        if row.get("type") == 1:
            children = row.get("components")
            errors.length_between((*here, "components"), children, 1, 1)
            for number, item in enumerate(children or []):
                _check_text_input(errors, item, (*here, "components", number), seen, labelled=True)
        elif row.get("type") == 18:
            errors.length_between((*here, "label"), row.get("label"), 1, TEXT_INPUT_LABEL)
            _check_text_input(errors, row.get("component") or {}, (*here, "component"), seen)
    errors.raise_if_any()


def _check_text_input(
    errors: FormErrors,
    item: Mapping[str, Any],
    path: Path,
    seen: set[str],
    *,
    labelled: bool = False,
) -> None:
    if item.get("type") != 4:
        return  # selects and other modal components are not modelled further
    _check_custom_id(errors, item.get("custom_id"), (*path, "custom_id"), seen)
    if labelled:
        errors.length_between((*path, "label"), item.get("label"), 1, TEXT_INPUT_LABEL)
    errors.max_length((*path, "placeholder"), item.get("placeholder"), TEXT_INPUT_PLACEHOLDER)
    max_length = item.get("max_length")
    errors.at_most((*path, "max_length"), max_length, TEXT_INPUT_VALUE)
    errors.at_most((*path, "min_length"), item.get("min_length"), TEXT_INPUT_VALUE)
    limit = TEXT_INPUT_VALUE
    if isinstance(max_length, int):
        limit = min(limit, max_length)
    errors.max_length((*path, "value"), item.get("value"), limit)


def check_query(query: Mapping[str, str]) -> None:
    """Boolean query parameters take only true/false (any case) or 1/0."""
    errors = FormErrors()
    for key in BOOLEAN_QUERY:
        value = query.get(key)
        if value is not None and not _BOOLEAN.match(value):
            errors.add((key,), "BASE_TYPE_BOOLEAN", "Must be either true or false.")
    errors.raise_if_any()


# --- application commands -------------------------------------------------------------------

COMMANDS_PER_KIND = {1: 100, 2: 15, 3: 15}
COMMAND_NAME = 32
COMMAND_DESCRIPTION = 100
COMMAND_OPTIONS = 25
COMMAND_CHOICES = 25
CHOICE_NAME = 100
CHOICE_VALUE = 100
#: Characters of one slash command in all: names, descriptions and choice names and values of
#: the command, its subcommands, groups and options; each field counted at its longest form
#: (the default or any localisation). Discord's docs raised it from 4,000 to 8,000 in 2024.
COMMAND_TOTAL = 8000
#: Discord's documented rule for slash command and option names (with the unicode flag).
_CHAT_INPUT_NAME = regex.compile(r"^[-_'\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$")
#: The keys a localisation dictionary may have (Discord's "available locales").
LOCALES = frozenset(
    {
        *("id", "da", "de", "en-GB", "en-US", "es-ES", "es-419", "fr", "hr", "it", "lt", "hu"),
        *("nl", "no", "pl", "pt-BR", "ro", "fi", "sv-SE", "vi", "tr", "cs", "el", "bg", "ru"),
        *("uk", "hi", "th", "zh-CN", "ja", "zh-TW", "ko"),
    }
)
_SUBCOMMAND, _GROUP = 1, 2


def chat_input_name_ok(name: Any) -> bool:
    """A slash command or option name as Discord documents it: 1-32 letters, numbers, `-`, `_`
    or `'` of any script, lowercase where the letter has a lowercase form, no spaces."""
    return isinstance(name, str) and bool(_CHAT_INPUT_NAME.match(name)) and name == name.lower()


def _localisations(
    errors: FormErrors, item: Mapping[str, Any], field: str, path: Path
) -> dict[str, Any]:
    """A field's localisations; a key that is not one of Discord's locales is refused."""
    localised = item.get(f"{field}_localizations")
    if not isinstance(localised, Mapping):
        return {}
    for locale in localised:
        if locale not in LOCALES:
            errors.add(
                (*path, f"{field}_localizations", locale),
                "LOCALE_INVALID",
                f"Invalid locale: {locale}",
            )
    return dict(localised)


def _longest(item: Mapping[str, Any], field: str) -> int:
    """What a field counts towards a command's size: its longest form, localisations included."""
    forms = [item.get(field) or ""]
    localised = item.get(f"{field}_localizations")
    if isinstance(localised, Mapping):
        forms += [value for value in localised.values() if isinstance(value, str)]
    return max(len(str(form)) for form in forms)


def _check_texts(errors: FormErrors, item: Mapping[str, Any], path: Path, chat_input: bool) -> None:
    """Name and description, and each of their localisations, as Discord checks them."""
    names = [("name", item.get("name"))]
    descriptions = [("description", item.get("description"))]
    for field, forms in (("name", names), ("description", descriptions)):
        localised = _localisations(errors, item, field, path)
        forms += [(f"{field}_localizations", value) for value in localised.values()]
    for field, name in names:
        if chat_input and not chat_input_name_ok(name):
            errors.add(
                (*path, field), "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
            )
        elif not chat_input:
            errors.length_between((*path, field), name, 1, COMMAND_NAME)
    for field, description in descriptions:
        if chat_input:
            errors.length_between((*path, field), description, 1, COMMAND_DESCRIPTION)
        elif description:
            errors.add((*path, field), "APPLICATION_COMMAND_INVALID_DESCRIPTION", "Must be empty")


def _check_sibling_names(errors: FormErrors, options: list[Any], path: Path) -> None:
    """Option names are unique among their siblings; a localised name must also differ from
    every sibling's default name and from the siblings' names in the same locale."""
    defaults = [str(option.get("name")) for option in options]
    seen: set[str] = set()
    for index, name in enumerate(defaults):
        if name in seen:
            errors.add(
                (*path, index, "name"),
                "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS",
                "Duplicate",
            )
        seen.add(name)
    taken: dict[str, set[str]] = {}
    for index, option in enumerate(options):
        localised = option.get("name_localizations")
        for locale, name in (localised if isinstance(localised, Mapping) else {}).items():
            others = {n for i, n in enumerate(defaults) if i != index}
            in_locale = taken.setdefault(locale, set())
            if name in others or name in in_locale:
                errors.add(
                    (*path, index, "name_localizations", locale),
                    "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS",
                    "Duplicate localised name",
                )
            in_locale.add(name)


def _check_options(errors: FormErrors, options: Any, path: Path, depth: int) -> int:
    """One level of options (depth 0: the command's own); returns the characters they count."""
    if options is None:
        return 0
    errors.max_length(path, options, COMMAND_OPTIONS)
    if not isinstance(options, list):
        return 0
    size = 0
    kinds = {option.get("type") for option in options}
    if kinds & {_SUBCOMMAND, _GROUP} and kinds - {_SUBCOMMAND, _GROUP}:
        errors.add(path, "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID", "Subcommands mix with options")
    _check_sibling_names(errors, options, path)
    optional_seen = False
    for index, option in enumerate(options):
        here = (*path, index)
        kind = option.get("type")
        _check_texts(errors, option, here, chat_input=True)
        size += _longest(option, "name") + _longest(option, "description")
        if (kind == _GROUP and depth > 0) or (kind == _SUBCOMMAND and depth > 1):
            errors.add(
                (*here, "type"), "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID", "Nested too deep"
            )
        if kind in (_SUBCOMMAND, _GROUP):
            inner = option.get("options")
            if kind == _GROUP and any(o.get("type") != _SUBCOMMAND for o in inner or []):
                errors.add(
                    (*here, "options"),
                    "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                    "Not a subcommand",
                )
            size += _check_options(errors, inner, (*here, "options"), depth + 1)
            continue
        if option.get("required"):
            if optional_seen:
                errors.add(
                    (*here, "required"),
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            optional_seen = True
        choices = option.get("choices")
        errors.max_length((*here, "choices"), choices, COMMAND_CHOICES)
        for number, choice in enumerate(choices if isinstance(choices, list) else []):
            spot = (*here, "choices", number)
            errors.length_between((*spot, "name"), choice.get("name"), 1, CHOICE_NAME)
            for locale, name in _localisations(errors, choice, "name", spot).items():
                errors.length_between((*spot, "name_localizations", locale), name, 1, CHOICE_NAME)
            value = choice.get("value")
            if isinstance(value, str):
                errors.length_between((*spot, "value"), value, 1, CHOICE_VALUE)
            size += _longest(choice, "name") + len(str(value))
        for bound, low in (("min_length", 0), ("max_length", 1)):
            value = option.get(bound)
            if value is not None and not (isinstance(value, int) and low <= value <= 6000):
                errors.add((*here, bound), "NUMBER_TYPE_MAX", f"Must be between {low} and 6000.")
    return size


def check_commands(commands: Any) -> None:
    """A bulk overwrite of application commands, refused as Discord refuses it: bad names or
    descriptions (localisations too), too many commands, options or choices, required options
    after optional ones, wrong nesting, or a slash command over 8,000 characters in all."""
    errors = FormErrors()
    if not isinstance(commands, list):
        errors.add((), "BASE_TYPE_ARRAY", "Must be an array.")
        errors.raise_if_any()
        return
    per_kind: dict[int, int] = {}
    names: set[tuple[int, str]] = set()
    for index, command in enumerate(commands):
        kind = command.get("type", 1)
        per_kind[kind] = per_kind.get(kind, 0) + 1
        chat_input = kind == 1
        _check_texts(errors, command, (index,), chat_input=chat_input)
        if (kind, command.get("name")) in names:
            errors.add((index, "name"), "APPLICATION_COMMANDS_DUPLICATE_NAME", "Duplicate name")
        names.add((kind, str(command.get("name"))))
        size = _longest(command, "name") + _longest(command, "description")
        size += _check_options(errors, command.get("options"), (index, "options"), 0)
        if size > COMMAND_TOTAL:
            errors.add(
                (index,),
                "APPLICATION_COMMAND_TOO_LARGE",
                f"Command exceeds maximum size ({COMMAND_TOTAL})",
            )
    for kind, count in per_kind.items():
        if count > COMMANDS_PER_KIND.get(kind, 0):
            errors.add((), "APPLICATION_COMMANDS_LIMIT", f"Maximum number of commands ({kind})")
    errors.raise_if_any()


def command_size(command: Mapping[str, Any]) -> int:
    """The characters a command counts towards Discord's 8,000 (for tests that watch the margin)."""
    scratch = FormErrors()
    options = command.get("options")
    return (
        _longest(command, "name")
        + _longest(command, "description")
        + _check_options(scratch, options, (), 0)
    )
