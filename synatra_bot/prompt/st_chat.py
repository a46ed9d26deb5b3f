"""SillyTavern chat files (.jsonl): read them into a ChatFile and write them back.

A chat file is UTF-8 JSON Lines. The first line is the chat's metadata (`user_name`,
`character_name`, `create_date`, `chat_metadata`); every other line is one message (`name`,
`is_user`, `is_system`, `send_date`, `mes`, `extra`, and for a message with alternatives
`swipes`, `swipe_id` and `swipe_info`). A message's `extra.reasoning` (and each swipe's, in
its `swipe_info`) is the model's reasoning shown folded above it; it is kept.

Group chats have several speakers, each line named. SillyTavern writes them with a metadata line
that holds only `chat_metadata` (its `user_name` and `character_name` read "unused"); older
group chats have no metadata line at all. `chat_metadata` carries the chat's own author's note:
`note_prompt` (its text), `note_depth` (messages from the end) and `note_interval` (every how
many player messages it is added; 0 never).

Dates are written the way SillyTavern writes them today: `send_date` in ISO 8601 UTC with
milliseconds (2025-11-23T14:56:50.682Z) and `create_date` in its compact "humanized" form
(2025-11-23@14h56m50s682ms, here in UTC). Reading also accepts the older forms SillyTavern
still reads: Unix milliseconds (number or digits), "June 19, 2023 2:20pm" and
"2024-6-5 @14h 56m 50s 682ms". A date without a zone is taken as UTC; one that cannot be
read becomes None, as SillyTavern shows such a message without a date.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from synatra_bot.errors import ChatFileError, ChatFileOverLimit

MAX_CHAT_BYTES = 8 * 1024 * 1024
MAX_CHAT_LINES = 20_000
#: Alternatives (swipes) one message may bring; a file with more is refused, not cut.
MAX_SWIPES_PER_MESSAGE = 100
#: Rows one import stores at most: every message's alternatives (one without any is one row).
MAX_CHAT_ROWS = 20_000
MAX_MESSAGE_CHARS = 64_000
MAX_NAME_CHARS = 100
#: The names a chat without a metadata line (or with one that lacks them) gets.
DEFAULT_USER_NAME = "User"
DEFAULT_CHARACTER_NAME = ""
#: What SillyTavern writes for both names in a group chat's metadata line.
GROUP_HEADER_NAME = "unused"
#: SillyTavern's author's note defaults (`authors-note.js`): 4 messages deep, every message.
DEFAULT_NOTE_DEPTH = 4
DEFAULT_NOTE_INTERVAL = 1
#: The largest note depth and interval read; a larger number is read as this one.
MAX_NOTE_NUMBER = 1000

_MAX_DATE_CHARS = 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_DIGITS = re.compile(r"[0-9]+")
# 2024-6-5 @14h 56m 50s 682ms (older), 2024-07-12@01h31m37s123ms (today), 2024-7-12@01h31m37s
_HUMANIZED = re.compile(
    r"([0-9]{4})-([0-9]{1,2})-([0-9]{1,2}) ?@([0-9]{1,2})h ?([0-9]{1,2})m ?([0-9]{1,2})s"
    r"(?: ?([0-9]{1,3})ms)?"
)
# June 19, 2023 2:20pm
_MERIDIEM = re.compile(
    r"([A-Za-z]+) ([0-9]{1,2}), ([0-9]{4}) ([0-9]{1,2}):([0-9]{1,2}) ?(am|pm)", re.IGNORECASE
)
_ISO_START = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass(frozen=True, slots=True)
class ChatLine:
    """One message. `text` is the chosen alternative, `swipes[swipe_id]` when there are any.

    `reasoning` is the chosen alternative's reasoning ("" for none); `swipe_reasoning` holds
    every swipe's (one per swipe; empty when none has any)."""

    name: str
    is_user: bool
    text: str
    swipes: tuple[str, ...] = ()
    swipe_id: int = 0
    sent_at: datetime | None = None
    is_system: bool = False
    reasoning: str = ""
    swipe_reasoning: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.swipes:
            if not 0 <= self.swipe_id < len(self.swipes):
                raise ValueError(f"swipe_id {self.swipe_id} is outside {len(self.swipes)} swipes")
            if self.swipes[self.swipe_id] != self.text:
                raise ValueError("text must be the chosen swipe, swipes[swipe_id]")
        elif self.swipe_id != 0:
            raise ValueError("swipe_id must be 0 for a message without swipes")
        if self.swipe_reasoning and not any(self.swipe_reasoning):
            object.__setattr__(self, "swipe_reasoning", ())  # one form for "none has any"
        if self.swipe_reasoning:
            if len(self.swipe_reasoning) != len(self.swipes):
                raise ValueError("swipe_reasoning must have one entry per swipe")
            if self.swipe_reasoning[self.swipe_id] != self.reasoning:
                raise ValueError("reasoning must be the chosen swipe's")
        _check_aware(self.sent_at, "sent_at")

    @property
    def alternatives(self) -> tuple[tuple[str, str], ...]:
        """Every alternative as (text, reasoning), in swipe order (one without swipes)."""
        if not self.swipes:
            return ((self.text, self.reasoning),)
        reasoning = self.swipe_reasoning or tuple(
            self.reasoning if i == self.swipe_id else "" for i in range(len(self.swipes))
        )
        return tuple(zip(self.swipes, reasoning, strict=True))


@dataclass(frozen=True, slots=True)
class AuthorNote:
    """A chat's own author's note: its text goes `depth` messages from the end, added when the
    player's message count is a multiple of `interval` (1: always; 0: never)."""

    text: str
    depth: int = DEFAULT_NOTE_DEPTH
    interval: int = DEFAULT_NOTE_INTERVAL


def note_due(interval: int, player_messages: int) -> bool:
    """Whether an author's note with `interval` goes in a prompt after `player_messages`
    messages of the players, as SillyTavern decides: always at 1, never at 0, else when the
    count is a multiple of the interval."""
    if interval == 1:
        return True
    return interval > 0 and player_messages > 0 and player_messages % interval == 0


@dataclass(frozen=True, slots=True)
class ChatFile:
    """A whole chat: who talks, when it began, and its messages in order. A `group` chat is
    written as SillyTavern writes group chats."""

    user_name: str
    character_name: str
    created_at: datetime | None
    lines: tuple[ChatLine, ...]
    group: bool = False
    author_note: AuthorNote | None = None

    def __post_init__(self) -> None:
        _check_aware(self.created_at, "created_at")


def _check_aware(value: datetime | None, field: str) -> None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{field} must carry a time zone")


def parse_chat(data: bytes, *, filename: str | None = None) -> ChatFile:
    """Read a SillyTavern chat file.

    Raises ChatFileError naming the line and what is wrong; never returns half a chat.
    """
    try:
        return _parse(data)
    except ChatFileError as exc:
        if filename is None:
            raise
        raise exc.named(filename) from None


def _parse(data: bytes) -> ChatFile:
    if len(data) > MAX_CHAT_BYTES:
        raise ChatFileError(0, f"the file is {len(data)} bytes, the limit is {MAX_CHAT_BYTES}")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    line_count = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    if line_count > MAX_CHAT_LINES:
        raise ChatFileError(MAX_CHAT_LINES + 1, f"the file has more than {MAX_CHAT_LINES} lines")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ChatFileError(data.count(b"\n", 0, exc.start) + 1, "the text is not UTF-8") from None

    rows = [
        (number, _decode(raw, number))
        for number, raw in enumerate(text.split("\n"), 1)
        if raw.strip(" \t\r")
    ]
    # SillyTavern's metadata line is the first one, and it has no `mes`; older group chats
    # have none.
    header_line, header = rows.pop(0) if rows and "mes" not in rows[0][1] else (0, {})
    user_name = _name(header, "user_name", header_line, DEFAULT_USER_NAME)
    character_name = _name(header, "character_name", header_line, DEFAULT_CHARACTER_NAME)
    group = (not header_line and bool(rows)) or user_name == character_name == GROUP_HEADER_NAME
    if group:
        user_name, character_name = DEFAULT_USER_NAME, DEFAULT_CHARACTER_NAME
    created_at = _date(header, "create_date", header_line)
    note = _author_note(header.get("chat_metadata"), header_line)
    lines: list[ChatLine] = []
    stored = 0
    for number, obj in rows:
        lines.append(line := _message(obj, number, user_name, character_name))
        stored += len(line.swipes) or 1
        if stored > MAX_CHAT_ROWS:
            raise ChatFileOverLimit(
                number,
                f"the chat holds more than {MAX_CHAT_ROWS} messages and swipes together",
                key="error.chat_file_rows",
                limit=MAX_CHAT_ROWS,
            )
    return ChatFile(user_name, character_name, created_at, tuple(lines), group, note)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _decode(raw: str, number: int) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise ChatFileError(number, "the JSON is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ChatFileError(number, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except ValueError:  # an integer with more digits than Python converts
        raise ChatFileError(number, "not valid JSON (a number is too long)") from None
    if not isinstance(obj, dict):
        raise ChatFileError(number, f"expected a JSON object, found {_kind(obj)}")
    return obj


def _name(obj: dict[str, Any], key: str, number: int, default: str) -> str:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ChatFileError(number, f"'{key}' must be text, found {_kind(value)}")
    if len(value) > MAX_NAME_CHARS:
        raise ChatFileError(
            number, f"'{key}' is {len(value)} characters, the limit is {MAX_NAME_CHARS}"
        )
    return value


def _flag(obj: dict[str, Any], key: str, number: int) -> bool:
    value = obj.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ChatFileError(number, f"'{key}' must be true or false, found {_kind(value)}")
    return value


def _text(value: Any, what: str, number: int) -> str:
    if not isinstance(value, str):
        raise ChatFileError(number, f"{what} must be text, found {_kind(value)}")
    if len(value) > MAX_MESSAGE_CHARS:
        raise ChatFileError(
            number, f"{what} is {len(value)} characters, the limit is {MAX_MESSAGE_CHARS}"
        )
    return value


def _whole(value: Any, what: str, number: int) -> int:
    """A whole number, also when written as digits in text; out of range is read as the bound."""
    if isinstance(value, str) and _DIGITS.fullmatch(digits := value.strip()):
        value = int(digits) if len(digits) <= len(str(MAX_NOTE_NUMBER)) else MAX_NOTE_NUMBER
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChatFileError(number, f"{what} must be a whole number, found {_kind(value)}")
    return max(0, min(MAX_NOTE_NUMBER, value))


def _author_note(metadata: Any, number: int) -> AuthorNote | None:
    """The chat's author's note from its `chat_metadata` (None when it has no text)."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise ChatFileError(number, f"'chat_metadata' must be an object, found {_kind(metadata)}")
    text = metadata.get("note_prompt")
    if text is None or not _text(text, "'note_prompt'", number).strip():
        return None
    depth, interval = metadata.get("note_depth"), metadata.get("note_interval")
    return AuthorNote(
        text=text,
        depth=DEFAULT_NOTE_DEPTH if depth is None else _whole(depth, "'note_depth'", number),
        interval=(
            DEFAULT_NOTE_INTERVAL
            if interval is None
            else _whole(interval, "'note_interval'", number)
        ),
    )


def _reasoning(extra: Any, what: str, number: int) -> str:
    """The reasoning an `extra` object holds ("" for none)."""
    if extra is None:
        return ""
    if not isinstance(extra, dict):
        raise ChatFileError(number, f"{what} must be an object, found {_kind(extra)}")
    value = extra.get("reasoning")
    return "" if value is None else _text(value, f"{what}'s 'reasoning'", number)


def _swipe_reasoning(obj: dict[str, Any], count: int, number: int) -> list[str]:
    """Each swipe's reasoning from `swipe_info` ("" where it has none)."""
    info = obj.get("swipe_info")
    if info is None:
        return [""] * count
    if not isinstance(info, list):
        raise ChatFileError(number, f"'swipe_info' must be a list, found {_kind(info)}")
    found = [
        _reasoning(item.get("extra"), f"swipe {i}'s 'extra'", number)
        if isinstance(item, dict)
        else ""
        for i, item in enumerate(info[:count])
    ]
    return found + [""] * (count - len(found))


def _message(obj: dict[str, Any], number: int, user_name: str, character_name: str) -> ChatLine:
    if "mes" not in obj:
        raise ChatFileError(number, "a message needs 'mes' (its text)")
    mes = _text(obj["mes"], "'mes'", number)
    is_user = _flag(obj, "is_user", number)
    is_system = _flag(obj, "is_system", number)
    name = _name(obj, "name", number, user_name if is_user else character_name)
    sent_at = _date(obj, "send_date", number)

    raw_swipes = obj.get("swipes")
    if raw_swipes is None:
        raw_swipes = []
    if not isinstance(raw_swipes, list):
        raise ChatFileError(number, f"'swipes' must be a list, found {_kind(raw_swipes)}")
    if len(raw_swipes) > MAX_SWIPES_PER_MESSAGE:
        raise ChatFileOverLimit(
            number,
            f"the message has {len(raw_swipes)} swipes, the limit is {MAX_SWIPES_PER_MESSAGE}",
            key="error.chat_file_swipes",
            limit=MAX_SWIPES_PER_MESSAGE,
        )
    swipes = [_text(item, f"swipe {i}", number) for i, item in enumerate(raw_swipes)]

    swipe_id = obj.get("swipe_id")
    if swipe_id is not None and (isinstance(swipe_id, bool) or not isinstance(swipe_id, int)):
        raise ChatFileError(number, f"'swipe_id' must be a whole number, found {_kind(swipe_id)}")
    choices = len(swipes) or 1
    if swipe_id is None:
        swipe_id = swipes.index(mes) if mes in swipes else 0
    elif not 0 <= swipe_id < choices:
        raise ChatFileError(
            number, f"'swipe_id' is {swipe_id}, but the message has {choices} alternative(s)"
        )
    reasoning = _reasoning(obj.get("extra"), "'extra'", number)
    swipe_reasoning: list[str] = []
    if swipes:
        swipes[swipe_id] = mes  # SillyTavern shows `mes`, so it is the chosen text
        swipe_reasoning = _swipe_reasoning(obj, len(swipes), number)
        swipe_reasoning[swipe_id] = reasoning  # and `extra` is the chosen swipe's
    return ChatLine(
        name=name,
        is_user=is_user,
        text=mes,
        swipes=tuple(swipes),
        swipe_id=swipe_id,
        sent_at=sent_at,
        is_system=is_system,
        reasoning=reasoning,
        swipe_reasoning=tuple(swipe_reasoning),
    )


def _date(obj: dict[str, Any], key: str, number: int) -> datetime | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return read_date(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ChatFileError(
            number, f"'{key}' must be a date as text or a number, found {_kind(value)}"
        )
    return _from_millis(value)


def _from_millis(value: float) -> datetime | None:
    # SillyTavern treats 0 and negative numbers as "no date".
    if not value > 0 or value == float("inf"):
        return None
    try:
        return _EPOCH + timedelta(milliseconds=value)
    except OverflowError:
        return None


def read_date(value: str) -> datetime | None:
    """A SillyTavern date string as an aware datetime (UTC when it names no zone), or None."""
    text = value.strip()
    if len(text) > _MAX_DATE_CHARS:
        return None
    try:
        if _DIGITS.fullmatch(text):
            return _from_millis(int(text))
        if humanized := _HUMANIZED.fullmatch(text):
            year, month, day, hour, minute, second = (int(g) for g in humanized.groups()[:6])
            millis = int(humanized[7] or 0)
            return datetime(year, month, day, hour, minute, second, millis * 1000, tzinfo=UTC)
        if meridiem := _MERIDIEM.fullmatch(text):
            month_of_year = _month(meridiem[1])
            if month_of_year is None:
                return None
            hour24 = int(meridiem[4]) % 12 + (12 if meridiem[6].lower() == "pm" else 0)
            return datetime(
                int(meridiem[3]),
                month_of_year,
                int(meridiem[2]),
                hour24,
                int(meridiem[5]),
                tzinfo=UTC,
            )
        if _ISO_START.match(text):
            parsed = datetime.fromisoformat(text)
            if parsed.utcoffset() is None:
                return parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return None


def _month(name: str) -> int | None:
    lowered = name.lower()
    for index, full in enumerate(_MONTHS, 1):
        if lowered == full or lowered == full[:3]:
            return index
    return None


def send_date_text(value: datetime) -> str:
    """`value` as SillyTavern writes `send_date`: ISO 8601 UTC with milliseconds."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def create_date_text(value: datetime) -> str:
    """`value` as SillyTavern writes `create_date` (its compact humanized form), in UTC."""
    u = value.astimezone(UTC)
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}"
        f"@{u.hour:02d}h{u.minute:02d}m{u.second:02d}s{u.microsecond // 1000:03d}ms"
    )


def render_chat(chat: ChatFile) -> bytes:
    """The chat as a UTF-8 .jsonl file that SillyTavern opens.

    Dates are written to the millisecond (finer parts are dropped); `parse_chat` reads the
    result back equal to `chat` (but for a group chat's user and character names and start
    date: SillyTavern keeps none of them for a group chat).
    """
    metadata: dict[str, Any] = {}
    if chat.author_note is not None:
        metadata = {
            "note_prompt": chat.author_note.text,
            "note_depth": chat.author_note.depth,
            "note_interval": chat.author_note.interval,
        }
    header: dict[str, Any]
    if chat.group:
        header = {
            "chat_metadata": metadata,
            "user_name": GROUP_HEADER_NAME,
            "character_name": GROUP_HEADER_NAME,
        }
    else:
        header = {
            "user_name": chat.user_name,
            "character_name": chat.character_name,
            "create_date": (
                create_date_text(chat.created_at) if chat.created_at is not None else ""
            ),
            "chat_metadata": metadata,
        }
    rows: list[dict[str, Any]] = [header]
    for line in chat.lines:
        row: dict[str, Any] = {
            "name": line.name,
            "is_user": line.is_user,
            "is_system": line.is_system,
        }
        sent = send_date_text(line.sent_at) if line.sent_at is not None else None
        if sent is not None:
            row["send_date"] = sent
        row["mes"] = line.text
        if line.swipes:
            row["swipes"] = list(line.swipes)
            row["swipe_id"] = line.swipe_id
            info: dict[str, Any] = {"send_date": sent} if sent is not None else {}
            row["swipe_info"] = [
                {**info, "extra": _extra(reasoning)} for _, reasoning in line.alternatives
            ]
        row["extra"] = _extra(line.reasoning)
        rows.append(row)
    return "\n".join(
        json.dumps(row, ensure_ascii=False, separators=(",", ":")) for row in rows
    ).encode("utf-8")


def _extra(reasoning: str) -> dict[str, Any]:
    return {"reasoning": reasoning} if reasoning else {}
