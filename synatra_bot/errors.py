"""Exceptions of synatra-bot.

SynatraError                   base of everything raised on purpose
├── ConfigError                a setting is missing or invalid (exit status 2)
├── DiscordUnusable            Discord refuses the token or cannot be reached (exit status 2)
├── StorageError               the database cannot be opened, is corrupt or too new
│   └── StorageUnavailable     ... or nothing can be stored now (locked too long, the file gone);
│                              also a UserFacingError: players read its note
├── UserFacingError            message is safe to show a Discord user (localisable key + params)
│   ├── PermissionDenied       the user may not do this
│   ├── NotFound               a character, session or message does not exist
│   │   └── NoSession          no roleplay is running in this channel
│   ├── CardError              a character card file is malformed or too large
│   ├── ChatFileError          a SillyTavern chat file is malformed or too large
│   │   └── ChatFileOverLimit       ... or holds more swipes or rows than one import may
│   ├── LorebookError          a lorebook (World Info) file is malformed or too large
│   ├── ImageRejected          an avatar image is not one, is too large, or cannot be used
│   ├── LimitReached           the member already has as many characters as the server allows
│   │   ├── LorebookLimitReached    ... or as many personal lorebooks as anyone may keep
│   │   ├── PinLimitReached         ... or a scene holds as many pins as one may
│   │   └── QuotaReached           ... or would store more bytes than the member may
│   ├── PromptTooLarge         the character sheet alone does not fit the context budget
│   └── RateLimited            the user or channel is over its limit
├── TurnCancelled              a reply turn was dropped before it began (stop, superseded, shutdown)
└── EngineError                generation failed (`key`, where set: a localised note for players)
    ├── EngineUnavailable      the engine cannot be reached or is not loaded
    └── GenerationInterrupted  a reply was cut off mid-stream (never stored as complete)
"""

from __future__ import annotations

from typing import Any


class SynatraError(Exception):
    """Base of every error synatra-bot raises on purpose."""


class ConfigError(SynatraError):
    """A setting is missing or invalid; the message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class DiscordUnusable(SynatraError):
    """The bot cannot log in: Discord refuses its token or cannot be reached. The message is
    the host's one line, in Korean and English."""


class StorageError(SynatraError):
    """The database cannot be opened, is corrupt, or was written by a newer version."""


class UserFacingError(SynatraError):
    """An error whose message is safe to show to a Discord user.

    `key` names a localised message (see synatra_bot.discord.i18n); `params` fill it in.
    The plain `str()` is English, for logs and the terminal.
    """

    key = "error.generic"

    def __init__(self, message: str, *, key: str | None = None, **params: Any) -> None:
        super().__init__(message)
        if key is not None:
            self.key = key
        self.params = params


class StorageUnavailable(StorageError, UserFacingError):
    """The running bot cannot store what it was asked to: the database stayed locked or
    unreachable past every retry, or its file was removed or replaced. Nothing of the unit of
    work was stored; `key` is the note players read."""

    key = "storage.not_kept"


class PermissionDenied(UserFacingError):
    key = "error.permission"


class NotFound(UserFacingError):
    key = "error.not_found"


class NoSession(NotFound):
    key = "error.no_session"


class CardError(UserFacingError):
    """A character card is malformed, too large, or missing a required field."""

    key = "error.card"


class ChatFileError(UserFacingError):
    """A SillyTavern chat file (.jsonl) is malformed or too large.

    `line` is the 1-based line at fault (0 when the file as a whole is too large);
    `reason` says what is wrong.
    """

    key = "error.chat_file"

    def __init__(self, line: int, reason: str, *, filename: str | None = None) -> None:
        where = f" {filename}" if filename else ""
        at = f", line {line}" if line else ""
        super().__init__(
            f"invalid chat file{where}{at}: {reason}",
            line=line,
            reason=reason,
            filename=filename or "",
        )
        self.line = line
        self.reason = reason

    def named(self, filename: str) -> ChatFileError:
        """The same error, naming the file it is about."""
        return ChatFileError(self.line, self.reason, filename=filename)


class ChatFileOverLimit(ChatFileError):
    """A chat file holds more than one import may store: more swipes on one message, or more
    rows (messages and their swipes together), than `limit`. `key` names which."""

    def __init__(
        self, line: int, reason: str, *, key: str, limit: int, filename: str | None = None
    ) -> None:
        super().__init__(line, reason, filename=filename)
        self.key = key
        self.limit = limit
        self.params["limit"] = limit

    def named(self, filename: str) -> ChatFileError:
        return ChatFileOverLimit(
            self.line, self.reason, key=self.key, limit=self.limit, filename=filename
        )


class LorebookError(UserFacingError):
    """A lorebook file (SillyTavern World Info, a character_book, or a card's) is malformed or
    too large; `reason` says what is wrong."""

    key = "error.lorebook"

    def __init__(self, reason: str, *, filename: str | None = None) -> None:
        where = f" {filename}" if filename else ""
        super().__init__(
            f"invalid lorebook file{where}: {reason}", reason=reason, filename=filename or ""
        )
        self.reason = reason


class ImageRejected(UserFacingError):
    """An avatar image cannot be read, declares too many pixels, or is too large as PNG."""

    key = "error.image_unreadable"


class LimitReached(UserFacingError):
    """The member already has as many characters in this server as its moderators allow."""

    key = "error.character_limit"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the member already has {limit} characters here, the most allowed")
        self.params = {"limit": limit}


class LorebookLimitReached(LimitReached):
    """The member already keeps as many personal lorebooks as anyone may."""

    key = "error.lorebook_limit"

    def __init__(self, limit: int) -> None:
        UserFacingError.__init__(
            self, f"the member already has {limit} lorebooks, the most allowed", limit=limit
        )


class PinLimitReached(LimitReached):
    """The scene already holds as many pinned memories as one may."""

    key = "error.pin_limit"

    def __init__(self, limit: int) -> None:
        UserFacingError.__init__(
            self, f"the scene already holds {limit} pins, the most allowed", limit=limit
        )


class PromptTooLarge(UserFacingError):
    key = "error.prompt_too_large"


class RateLimited(UserFacingError):
    key = "error.rate_limited"


class TurnCancelled(SynatraError):
    """The turn was dropped before it was admitted (stop, superseded, or shutdown)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EngineError(SynatraError):
    """Generation failed.

    The plain `str()` is English, for logs and the terminal. Where `key` is set it names a
    short localised message for players (see synatra_bot.discord.i18n), filled in from
    `params`; details that players must not see (URLs, upstream bodies) are only logged.
    """

    key: str | None = None

    def __init__(self, message: str, *, key: str | None = None, **params: Any) -> None:
        super().__init__(message)
        if key is not None:
            self.key = key
        self.params = params


class EngineUnavailable(EngineError):
    """The engine cannot be reached, or its model is not loaded."""


class GenerationInterrupted(EngineError):
    """A reply stopped before the model finished it; its text must not be stored as complete."""

    def __init__(
        self, message: str, *, partial_text: str = "", key: str | None = None, **params: Any
    ) -> None:
        super().__init__(message, key=key, **params)
        self.partial_text = partial_text


class QuotaReached(LimitReached):
    """Storing this would take the member past the bytes they may keep (`kind`: "lorebook"
    for personal lorebooks, "character" for their characters in one server, "scene" for
    their imported and branched scenes in one server)."""

    def __init__(self, kind: str, *, limit: int, used: int) -> None:
        UserFacingError.__init__(
            self,
            f"storing this would take the member's {kind}s to {used} bytes, over {limit}",
            key=f"error.{kind}_quota",
            limit=shown_bytes(limit),
            used=shown_bytes(used),
        )


class SceneRowsReached(LimitReached):
    """Storing this import or branch would take the rows of the member's imported and branched
    scenes in this server past what its moderators allow."""

    def __init__(self, *, limit: int, used: int) -> None:
        UserFacingError.__init__(
            self,
            f"storing this would take the member's copied scenes to {used} rows, over {limit}",
            key="error.scene_rows_quota",
            limit=f"{limit:,}",
            used=f"{used:,}",
        )


def shown_bytes(size: int) -> str:
    """A size as players read it: "64 KiB", "16.0 MiB"."""
    if size < 1024 * 1024:
        return f"{-(-size // 1024)} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"
