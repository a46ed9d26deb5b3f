"""`synatra-bot chat`: roleplay in the terminal, with one character or a group, through the
bot's own turns.

The terminal plays the same `Turns` over the same core, scheduler and database as the Discord
bot; it only reads lines and prints replies. It plays in a synthetic place: guild 0 and a
negative channel id (never a Discord snowflake) for each character, or each set of characters,
which gives it one session that continues across runs. The player is user 0
(`TERMINAL_USER_ID`); cards imported here belong to that user, outside any server, and the
player's name is that user's persona (asked once, or `--user-name`). The place counts as
age-restricted: whoever runs the terminal owns the database anyway. One person at the keyboard
is never rate-limited; everything else (chat file limits, the scene quota, the gate of a new
scene) is the bot's. Log lines go to a file while the chat runs, never into the chat's lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TextIO

from synatra_bot.app import build_core, open_engine, open_storage
from synatra_bot.errors import CardError, ChatFileError, EngineError, NotFound, UserFacingError
from synatra_bot.language import Language, choose
from synatra_bot.prompt.cards import parse_card
from synatra_bot.roleplay.addressing import Addressable, leading_address
from synatra_bot.roleplay.archive import Archive
from synatra_bot.roleplay.characters import CharacterService, columns_from_card, names_of
from synatra_bot.roleplay.config import MAX_AUTO_TURNS
from synatra_bot.roleplay.core import ActiveRoleplay, Started
from synatra_bot.roleplay.initiative import take_turns
from synatra_bot.roleplay.turns import STOPPED_BY_USER, Ending, Reply, Turns
from synatra_bot.roleplay.types import Actor, Place
from synatra_bot.storage import repository as repo
from synatra_bot.storage.ids import typed_number
from synatra_bot.storage.records import CharacterRecord, MessageRecord, SessionRecord
from synatra_bot.terminal.messages import TerminalText

if TYPE_CHECKING:
    from synatra_bot.engine.base import Engine
    from synatra_bot.settings import Settings

log = logging.getLogger(__name__)

TERMINAL_USER_ID = 0
TERMINAL_GUILD_ID = 0
#: The player's name when none was given or remembered and nobody could be asked.
DEFAULT_USER_NAMES: Mapping[Language, str] = MappingProxyType({"ko": "나", "en": "You"})
#: Longest name the player may give (a Discord display name's limit).
MAX_USER_NAME_CHARS = 32
#: Turns shown again when an earlier chat with the character continues.
RECAP_TURNS = 6
QUIT_COMMANDS = ("/quit", "/exit", "/q")
#: C0 controls but newline and tab, DEL and C1 controls -> a visible escape ("\x1b", "\r").
_CONTROL_ESCAPES = MappingProxyType(
    {
        code: f"\\x{code:02x}"
        for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))
        if chr(code) not in "\n\t"
    }
)
#: What a file name written for the player may not hold.
_UNSAFE_IN_FILE_NAMES = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


def configure_parser(parser: argparse.ArgumentParser, *, language: Language = "en") -> None:
    """Add the chat's options to `parser`, their help in `language`."""

    def say(english: str, korean: str) -> str:
        return choose(language, english, korean)

    parser.add_argument(
        "--character",
        required=True,
        action="append",
        metavar="PATH_OR_NAME",
        help=say(
            "a card file (PNG or JSON) to import, or the name or #id of a stored character;"
            " give it again for a group scene",
            "가져올 카드 파일(PNG 또는 JSON), 또는 저장된 캐릭터의 이름이나 #번호;"
            " 여러 번 주면 그룹 장면",
        ),
    )
    parser.add_argument(
        "--user-name",
        default=None,
        help=say(
            "your name in the story, remembered for later chats (default: the name you gave"
            f" before; asked once at a terminal, else {DEFAULT_USER_NAMES['en']!r})",
            "이야기 속 내 이름, 다음 대화에도 기억해요 (기본: 전에 정한 이름; 터미널이면 한 번"
            f" 물어보고, 아니면 {DEFAULT_USER_NAMES['ko']!r})",
        ),
    )
    parser.add_argument(
        "--import-chat",
        default=None,
        metavar="FILE",
        help=say(
            "continue a SillyTavern chat file (.jsonl) with the (first) character",
            "SillyTavern 채팅 파일(.jsonl)을 (첫) 캐릭터와 이어서 하기",
        ),
    )
    parser.add_argument(
        "--log-file",
        default=None,
        type=Path,
        metavar="FILE",
        help=say(
            "where log lines go while the chat runs (default: chat.log in"
            " $XDG_STATE_HOME/synatra-bot, ~/.local/state/synatra-bot without it)",
            "대화 중 로그를 쓸 파일 (기본: $XDG_STATE_HOME/synatra-bot/chat.log,"
            " 없으면 ~/.local/state/synatra-bot/chat.log)",
        ),
    )


def terminal_place(*character_ids: int) -> Place:
    """The terminal's place for a character, or a group of them: one continuing session for
    each (a group's id comes from its members, far below every single character's)."""
    if len(character_ids) == 1:
        channel_id = -character_ids[0]
    else:
        members = ",".join(map(str, character_ids)).encode()
        channel_id = -(2**48 + int.from_bytes(hashlib.sha256(members).digest()[:5], "big"))
    return Place(channel_id=channel_id, guild_id=TERMINAL_GUILD_ID, age_restricted=True)


async def player_name(
    sessions: Any, given: str | None, *, stdin: TextIO, stdout: TextIO, text: TerminalText
) -> str:
    """The player's name in the story: `given` (`--user-name`), else the name remembered from
    an earlier chat, else asked once at a terminal, else the language's default. A name given
    or answered is remembered (the terminal user's persona, which names the player's lines)."""
    remembered = await repo.get_persona(
        sessions, user_id=TERMINAL_USER_ID, guild_id=TERMINAL_GUILD_ID
    )
    name = _clean_name(given or "")
    if not name and remembered is not None:
        return remembered.name
    default = DEFAULT_USER_NAMES[text.language]
    if not name and _is_terminal(stdin):
        stdout.write(terminal_safe(text("ask_name", default=default)))
        stdout.flush()
        answer = await asyncio.to_thread(stdin.readline)
        name = _clean_name(answer)
        if name:
            stdout.write(terminal_safe(text("name_remembered", name=name)) + "\n")
    if not name:
        return default
    if remembered is None or remembered.name != name:
        await repo.set_persona(
            sessions,
            user_id=TERMINAL_USER_ID,
            guild_id=TERMINAL_GUILD_ID,
            name=name,
            description=remembered.description if remembered else "",
        )
    return name


def _clean_name(raw: str) -> str:
    return " ".join(terminal_safe(raw).split())[:MAX_USER_NAME_CHARS]


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, OSError):  # closed
        return False


async def resolve_character(
    characters: CharacterService, actor: Actor, spec: str, *, max_card_bytes: int
) -> tuple[CharacterRecord, str]:
    """The character `spec` names, and a note on what happened to it ("" when nothing did).

    A card file is imported as `actor`, or reuses (and refreshes) the card of the same name
    `actor` imported before. Otherwise `spec` is `#id` or a name among `actor`'s characters.
    """
    card_file = await asyncio.to_thread(_read_card_file, spec)
    if card_file is not None:
        name, data = card_file
        return await _import_card(characters, actor, name, data, max_card_bytes=max_card_bytes)
    wanted = spec.strip()
    number = typed_number(wanted.removeprefix("#"))
    if number is not None:
        return await characters.get(number), ""
    if Path(spec).suffix.lower() in (".png", ".json") or os.sep in spec:
        raise CardError(f"no card file at {spec}", key="error.no_card_file", filename=spec)
    found = await characters.search(actor, wanted, limit=25)
    exact = [c for c in found if c.name.casefold() == wanted.casefold()]
    candidates = exact or found
    if len(candidates) == 1:
        return candidates[0], ""
    if not candidates:
        raise NotFound(
            f"no character named {wanted!r}: give a card file or a #id",
            key="error.no_character_named",
            name=wanted,
        )
    listed = ", ".join(f"#{c.id} {c.name}" for c in candidates[:8])
    raise NotFound(
        f"{wanted!r} matches several characters ({listed}): use a #id",
        key="error.several_characters",
        name=wanted,
        listed=listed,
    )


def export_path(folder: Path, filename: str) -> Path:
    """Where `/export` without a file name writes: `filename` (the bot's export name:
    character, date, scene) made safe in `folder`, numbered when that file exists."""
    safe = _UNSAFE_IN_FILE_NAMES.sub("_", filename).strip(" .") or "chat.jsonl"
    stem, suffix = safe.removesuffix(".jsonl"), ".jsonl"
    target = folder / f"{stem}{suffix}"
    number = 2
    while target.exists():
        target = folder / f"{stem} ({number}){suffix}"
        number += 1
    return target


def _write_chat_file(target: Path, data: bytes) -> Path:
    target = target.expanduser()
    try:
        target.write_bytes(data)
    except OSError as error:
        raise UserFacingError(
            f"cannot write {target}: {error.strerror}",
            key="error.file_unwritable",
            filename=str(target),
            reason=error.strerror or "",
        ) from None
    return target.resolve()


def _read_chat_file(path: Path, limit: int) -> bytes:
    """The chat file's bytes, refused (before reading it) over the bot's attachment limit or
    when it is not a `.jsonl` file, as `/rp import` refuses an attachment."""
    path = path.expanduser()
    if path.suffix.lower() != ".jsonl":
        raise UserFacingError("not a chat file", key="error.chat_file_type", file=str(path))
    try:
        size = path.stat().st_size
        if size > limit:
            raise CardError("file too large", key="error.card_too_large", size=size, limit=limit)
        return path.read_bytes()
    except OSError as error:
        raise ChatFileError(0, f"cannot read it: {error.strerror}", filename=str(path)) from None


def _read_card_file(spec: str) -> tuple[str, bytes] | None:
    """The file name and bytes when `spec` is an existing file, else None."""
    path = Path(spec).expanduser()
    if not path.is_file():
        return None
    try:
        return path.name, path.read_bytes()
    except OSError as error:
        raise CardError(
            f"cannot read {path}: {error.strerror}",
            key="error.file_unreadable",
            filename=str(path),
            reason=error.strerror or "",
        ) from None


async def _import_card(
    characters: CharacterService,
    actor: Actor,
    filename: str,
    data: bytes,
    *,
    max_card_bytes: int,
) -> tuple[CharacterRecord, str]:
    if len(data) > max_card_bytes:
        # import_file explains the limit.
        return await characters.import_file(actor, data, filename=filename), "imported"
    card = parse_card(data, filename=filename)
    same_name = [
        c
        for c in await characters.search(actor, card.name, limit=100)
        if c.owner_id == actor.user_id and c.name == card.name
    ]
    if not same_name:
        return await characters.create(actor, card), "imported"  # parsed once, above
    stored = same_name[0]
    changes = {k: v for k, v in columns_from_card(card).items() if getattr(stored, k) != v}
    if not changes:
        return stored, ""
    return await characters.edit(actor, stored.id, **changes), "updated"


class _LineReader:
    """Reads lines on a daemon thread, so the event loop (and Ctrl-C) stays responsive and a
    prompt left waiting never holds up exit. It stops reading at a quit command: what is typed
    after it is left to whatever reads the terminal next (the shell)."""

    def __init__(self, stream: TextIO, on_quit: Callable[[], object]) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._on_quit = on_quit
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=self._read, args=(stream, loop), name="terminal-input", daemon=True
        ).start()

    def _read(self, stream: TextIO, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                line: str | None = stream.readline() or None
            except UnicodeDecodeError:
                continue
            except (OSError, ValueError):  # closed or broken input: same as end of file
                line = None
            quits = line is not None and line.strip().lower() in QUIT_COMMANDS
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, line)
                if quits:
                    loop.call_soon_threadsafe(self._on_quit)
            except RuntimeError:  # the loop is gone: nobody is listening
                return
            if line is None or quits:
                return

    def drop_unread(self) -> int:
        """Forget the lines read but not handled (typed while a reply was being written) and
        say how many there were."""
        dropped = 0
        while not self._queue.empty():
            line = self._queue.get_nowait()
            if line is not None and line.strip() and line.strip().lower() not in QUIT_COMMANDS:
                dropped += 1
        return dropped

    async def next_line(self, quit_requested: asyncio.Event) -> str | None:
        """The next line, or None at end of input or when quitting was requested."""
        if quit_requested.is_set():
            return None
        get = asyncio.ensure_future(self._queue.get())
        stop = asyncio.ensure_future(quit_requested.wait())
        _, pending = await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if quit_requested.is_set():
            return None
        return get.result()


def terminal_safe(text: str) -> str:
    """`text` with control characters shown as escapes (newlines and tabs kept): card text
    and model output cannot clear the screen, move the cursor or hide a speaker's name."""
    return text.translate(_CONTROL_ESCAPES)


class TerminalChat:
    """One terminal conversation with one character or a group."""

    def __init__(
        self,
        *,
        turns: Turns,
        actor: Actor,
        place: Place,
        stdin: TextIO,
        stdout: TextIO,
        text: TerminalText,
        log_file: Path,
        max_chat_bytes: int,
    ) -> None:
        self.turns = turns
        self.core = turns.core
        self.archive = Archive(turns)
        self.actor = actor
        self.place = place
        self.text = text
        self.log_file = log_file
        self.max_chat_bytes = max_chat_bytes
        self.characters: list[CharacterRecord] = []
        self._stdin = stdin
        self._out = stdout
        self._quit = asyncio.Event()
        self._busy = False
        self._stop_requested = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- output -------------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        self._out.write(terminal_safe(text))
        self._out.flush()

    def _line(self, text: str = "") -> None:
        self._write(text + "\n")

    def _say(self, key: str, **params: Any) -> None:
        self._line(self.text(key, **params))

    def _show(self, message: MessageRecord, fallback_name: str) -> None:
        self._line(f"{message.display_name or fallback_name}: {message.content}")

    def _error(self, error: Exception) -> None:
        self._line(f"⚠ {self.text.error(error)}")

    # --- Ctrl-C and /quit ---------------------------------------------------------------------

    def interrupt(self) -> None:
        """Ctrl-C: stop the reply being generated, or quit when waiting at the prompt."""
        if not self._busy:
            self._quit.set()
            return
        self._stop_requested = True
        self._spawn(self._stop())

    def quit_typed(self) -> None:
        """`/quit` was typed. At a terminal it acts at once: a reply being written stops (what
        it wrote so far is kept, as with Ctrl-C) and the chat ends. Lines piped in are played
        in order, so there `/quit` waits its turn."""
        if not _is_terminal(self._stdin):
            return
        self._quit.set()
        if self._busy:
            self._stop_requested = True
            self._spawn(self._stop())

    async def _stop(self) -> None:
        await self.turns.scheduler.cancel_channel(self.place.channel_id, reason=STOPPED_BY_USER)

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the session --------------------------------------------------------------------------

    async def _claim_place(self) -> None:
        """The terminal's own place: the person at the keyboard turned the bot on here."""
        if not (await self.core.config_for(self.place)).enabled:
            await self.core.update_channel_settings(self.place, enabled=True)

    async def import_chat(self, path: Path) -> None:
        """Start this place's scene over from a SillyTavern chat, then show where it stands.

        The file passes what `/rp import` checks: its size and type before it is read, then
        the gate of every new scene (`Turns.admit_start`, which counts no turns here), then
        the file's row and swipe limits and the member's scene quota; a refusal stores
        nothing."""
        await self._claim_place()
        data = await asyncio.to_thread(_read_chat_file, path, self.max_chat_bytes)
        await self.turns.admit_start(self.actor, self.place)
        imported = await self.archive.import_chat(
            self.actor,
            self.place,
            data=data,
            filename=path.name,
            character_id=self.characters[0].id,
        )
        self._say("chat_imported", count=imported.turns, file=path.name)
        await self.open(self.characters)

    async def open(self, characters: list[CharacterRecord]) -> None:
        """Continue the terminal session of these characters (showing its last turns), or
        start one: the first character opens it, the others join."""
        self.characters = characters
        await self._claim_place()
        active = await self.core.active(self.place)
        if active is not None and active.lead.id == characters[0].id:
            history = await repo.recent_history(
                self.core.sessions, session_id=active.session.id, limit=RECAP_TURNS
            )
            self._say("continuing", names=active.names)
            for message in history:
                self._show(message, active.lead.name)
            present = {c.id for c in active.cast}
            for character in characters[1:]:
                if character.id not in present:
                    await self._join(character)
            return
        started = await self.turns.start(self.actor, self.place, character_id=characters[0].id)
        self._say("new_chat", name=characters[0].name)
        self._show_greeting(started)
        for character in characters[1:]:
            await self._join(character)

    async def _join(self, character: CharacterRecord) -> None:
        joined = await self.turns.join(self.actor, self.place, character.id)
        self._say("joins", name=character.name)
        if joined.greeting is not None:
            self._show_greeting(joined)

    def _show_greeting(self, started: Started) -> None:
        name = started.character.name
        if started.greeting is None:
            self._say("no_greeting", name=name)
            return
        shown = started.greeting
        if started.greeting_display is not None:
            shown = dataclasses.replace(shown, content=started.greeting_display)
        self._show(shown, name)
        if started.greeting_count > 1:
            self._say("greetings", count=started.greeting_count)

    async def run(self) -> int:
        self._say("hint")
        reader = _LineReader(self._stdin, self.quit_typed)
        while True:
            self._write(f"{self.actor.display_name}> ")
            line = await reader.next_line(self._quit)
            if line is None:
                self._line()
                dropped = reader.drop_unread()
                if dropped:
                    self._say("not_sent", count=dropped)
                return 0
            text = line.strip()
            if not text:
                continue
            self._busy, self._stop_requested = True, False
            try:
                if text.startswith("/"):
                    if not await self._command(text):
                        return 0
                else:
                    await self._story_line(text)
            except (UserFacingError, EngineError) as error:
                self._error(error)
            except ValueError:  # a command's argument it could not take: the chat goes on
                if not text.startswith("/"):
                    raise
                command = text.split()[0].lower()
                log.exception("%s could not take its argument", command)
                self._say("command_failed", name=command)
            finally:
                self._busy = False

    async def _story_line(self, text: str) -> None:
        """A line of the story; `@name` at its start talks to that character, and a name
        nobody in the cast has is refused (nothing is stored)."""
        active = await self.core.require_active(self.place)
        cast = [Addressable(c.id, names_of(c)) for c in active.cast]
        to, rest = leading_address(text, cast)
        if to is None and _addresses_someone(text):
            wanted = text.split()[0]
            self._say("address_unknown", wanted=wanted, names=active.names)
            return
        said = await self.turns.say(
            self.place, self.actor, rest or text, to=to if active.is_group else None
        )
        if said is None:
            return
        await said.stored
        async for reply in said.replies():
            await self._play(reply)

    async def _command(self, text: str) -> bool:
        """Run a slash command; False means quit."""
        name, _, argument = text.partition(" ")
        name, argument = name.lower(), argument.strip()
        if name in QUIT_COMMANDS:
            return False
        if name in ("/help", "/h", "/?"):
            self._say("help", log=self.log_file)
        elif name == "/regen":
            await self._regenerate()
        elif name == "/continue":
            await self._play(await self.turns.continue_reply(self.place, self.actor))
        elif name == "/next" and argument:
            await self._next(argument)
        elif name in ("/prev", "/next"):
            await self._browse(-1 if name == "/prev" else 1)
        elif name == "/auto":
            await self._auto(argument)
        elif name == "/export":
            await self._export(argument)
        elif name == "/import" and argument:
            await self.import_chat(Path(argument))
        elif name == "/sessions":
            for scene in await self.archive.scenes(self.place):
                self._say(
                    "scene_line",
                    id=scene.session.id,
                    names=", ".join(scene.names) or "?",
                    day=scene.session.started_at.strftime("%Y-%m-%d"),
                    turns=scene.turns,
                    mark=self.text("scene_running") if scene.active else "",
                )
        elif name == "/resume":
            await self._resume(argument)
        elif name == "/branch":
            branch = await self._branch()
            self._say("branched", id=branch.id)
        elif name == "/pin":
            await self._pin(argument)
        elif name == "/pins":
            await self._list_pins()
        elif name == "/unpin":
            await self._unpin(argument)
        elif name == "/cast":
            active = await self.core.require_active(self.place)
            self._say("cast", names=active.names)
        elif name == "/undo":
            try:
                removed = await self.turns.undo(self.place, self.actor)
            except UserFacingError:
                self._say("nothing_to_undo")
            else:
                self._say("undone", count=len(removed))
        elif name == "/reset":
            started = await self.turns.reset(self.actor, self.place)
            self._say("new_chat", name=started.character.name)
            self._show_greeting(started)
        elif name == "/context":
            active = await self.core.require_active(self.place)
            sent = self.turns.sent.last(active.session.id)
            korean = self.text.language == "ko"
            if sent is None:
                built = await self.core.build_prompt(active, speaker=self.actor)
                self._say("context_none", tokens=built.token_count)
                self._line(built.report.to_text(korean=korean))
            else:
                self._say("context_sent", name=sent.speaker, tokens=sent.token_count)
                why = self.turns.last_spoke_up(self.place)
                if why is not None:
                    self._say("context_auto_turn", name=why.name, turn=why.turn, of=why.of)
                self._line(sent.report.to_text(korean=korean))
        else:
            self._say("unknown_command", name=name)
        return True

    async def _export(self, argument: str) -> None:
        """The running scene as a SillyTavern chat file: the file named, or one named like
        the bot's export (character, date, scene) in the working folder."""
        filename, data = await self.archive.export(self.place)
        if argument:
            target = Path(argument)
        else:
            target = await asyncio.to_thread(export_path, Path.cwd(), filename)
        written = await asyncio.to_thread(_write_chat_file, target, data)
        self._say("saved", path=written)

    async def _branch(self) -> SessionRecord:
        active = await self.core.require_active(self.place)
        newest = await self.core.recent(active)
        if not newest:
            raise UserFacingError("nothing to branch from", key="error.nothing_to_branch")
        return await self.archive.branch(self.actor, self.place, newest[-1].id)

    async def _resume(self, argument: str) -> None:
        scene_id = typed_number(argument.removeprefix("#"))
        if scene_id is None:
            self._say("resume_usage")
            return
        await self.archive.resume(self.actor, self.place, scene_id)
        self._say("resumed", id=scene_id)
        await self._recap()

    async def _pin(self, argument: str) -> None:
        """Pin the last turn, the Nth from the end (`/pin 3`), or the text typed after it."""
        active = await self.core.require_active(self.place)
        message_id = None
        if argument and not argument.isdecimal():
            text = argument
        else:
            back = typed_number(argument or "1")
            turns = [m for m in await self.core.recent(active) if m.role in ("user", "assistant")]
            if back is None or not 1 <= back <= len(turns):
                self._say("no_turn_to_pin")
                return
            text, message_id = turns[-back].content, turns[-back].id
        pinned = await self.turns.pin(self.actor, active, text, message_id=message_id)
        self._say("pinned", id=pinned.id, text=pinned.text)

    async def _unpin(self, argument: str) -> None:
        pin_id = typed_number(argument.removeprefix("#"))
        if pin_id is None:
            self._say("unpin_usage")
            return
        active = await self.core.require_active(self.place)
        gone = await self.turns.unpin(self.actor, active, pin_id)
        self._say("unpinned", id=gone.id)

    async def _list_pins(self) -> None:
        active = await self.core.require_active(self.place)
        pins = await self.core.pins.of(active.session.id)
        if not pins:
            self._say("no_pins")
            return
        self._say("pins", count=len(pins), limit=self.core.pins.limit)
        for pin in pins:
            self._line(f"  #{pin.id} {pin.text}")

    async def _recap(self) -> None:
        active = await self.core.require_active(self.place)
        history = await repo.recent_history(
            self.core.sessions, session_id=active.session.id, limit=RECAP_TURNS
        )
        for message in history:
            self._show(message, active.lead.name)

    async def _regenerate(self) -> None:
        latest = await self.core.latest_reply(self.place)
        if latest is None:
            # The last reply failed or was undone: the one who spoke last tries again.
            active = await self.core.require_active(self.place)
            await self._play(await self.turns.next_speaker(self.place, self.actor, active.lead.id))
            return
        try:
            reply = await self.turns.regenerate(self.place, self.actor, latest.id)
        except UserFacingError as error:
            if error.key != "reply.greeting_fixed":
                raise
            self._say("greeting_fixed")
            return
        await self._play(reply)

    async def _next(self, wanted: str) -> None:
        active = await self.core.require_active(self.place)
        cast = [Addressable(c.id, names_of(c)) for c in active.cast]
        key, _ = leading_address("@" + wanted.removeprefix("@"), cast)
        if key is None:
            self._say("not_in_scene", wanted=wanted, names=active.names)
            return
        await self._play(await self.turns.next_speaker(self.place, self.actor, key))

    async def _auto(self, argument: str) -> None:
        """`/auto N`: the characters take N turns among themselves (in a scene of one, the
        character goes on by itself); Ctrl-C stops them."""
        turns = typed_number(argument, most=MAX_AUTO_TURNS)
        if turns is None or turns < 1:
            self._say("auto_usage", most=MAX_AUTO_TURNS)
            return
        count, _ = await take_turns(
            self.turns,
            _TerminalStage(self),
            self.place,
            turns,
            wanted=lambda: not self._stop_requested,
        )
        self._say("auto_done", count=count)

    async def _browse(self, step: int) -> None:
        latest = await self.core.latest_reply(self.place)
        if latest is None:
            self._say("nothing_to_browse")
            return
        shown, _ = await self.turns.browse(self.place, self.actor, latest.id, step)
        self._show(shown.message, shown.message.display_name)
        self._say("alternative", index=shown.index + 1, count=shown.count)

    # --- a reply ------------------------------------------------------------------------------

    async def _play(self, reply: Reply) -> None:
        """Print one reply as it streams, then how it ended (the core decided what is stored)."""
        printed = 0
        started = False
        try:
            async with reply.stream() as texts:
                async for text in texts:
                    if not started:
                        started = True
                        if self._stop_requested:
                            await self._stop()
                        continued = "… " if reply.kind == "continue" else ""
                        self._write(f"{reply.character.name}: {continued}")
                        printed = len(text)
                        continue
                    self._write(text[printed:])
                    printed = len(text)
        finally:
            if started:
                self._line()
        outcome = reply.outcome
        assert outcome is not None
        if outcome.ending is Ending.STORED:
            assert outcome.shown is not None
            if outcome.stopped:
                self._say("stopped")
            if outcome.shown.count > 1:
                shown = outcome.shown
                self._say("alternatives", index=shown.index + 1, count=shown.count)
        elif outcome.ending is Ending.FAILED:
            error = outcome.error
            if isinstance(error, UserFacingError):
                self._error(error)
                return
            unexpected = self.text("unexpected", log=self.log_file)
            detail = str(error) if error is not None else unexpected
            self._say("reply_failed", detail=detail)
            self._say("try_again")
        elif outcome.ending is Ending.CUT and outcome.timed_out:
            self._say("timed_out")
        elif outcome.ending in (Ending.CUT, Ending.DISCARDED):
            self._say("cut")


class _TerminalStage:
    """The characters' own turns, printed as every reply is (the person at the keyboard is
    always there to read them)."""

    def __init__(self, chat: TerminalChat) -> None:
        self.chat = chat

    def may_speak(self, place: Place, active: ActiveRoleplay, payer: Actor | None = None) -> bool:
        return True

    async def perform(self, reply: Reply) -> None:
        await self.chat._play(reply)


def _addresses_someone(line: str) -> bool:
    """Whether `line` starts with `@` and a name (`@ ` or a lone `@` is just text)."""
    stripped = line.lstrip()
    return len(stripped) > 1 and stripped[0] == "@" and not stripped[1].isspace()


@contextlib.contextmanager
def _ctrl_c_calls(callback: Callable[[], object]) -> Iterator[None]:
    """While inside, SIGINT calls `callback` on the event loop instead of raising."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = signal.signal(
        signal.SIGINT, lambda _signum, _frame: loop.call_soon_threadsafe(callback)
    )
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def default_log_file(environ: Mapping[str, str]) -> Path:
    """chat.log in the user's state folder (XDG_STATE_HOME, else ~/.local/state)."""
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "synatra-bot" / "chat.log"


def _log_handler(path: Path) -> logging.FileHandler:
    """A handler appending to `path` (its folder made); OSError when it cannot be written."""
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


@contextlib.contextmanager
def _logs_to(handler: logging.FileHandler) -> Iterator[None]:
    """While inside, log records go to `handler`'s file and nothing logs to the terminal: a
    log line printed there would tear the line being typed or streamed. Handlers writing to
    stderr or stdout (the root's, or a library's own) are set aside and put back; with none,
    the file stands in for Python's last-resort printing to stderr. Closes `handler`."""
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    set_aside: list[tuple[logging.Logger, logging.Handler]] = []
    for logger in loggers:
        for found in list(logger.handlers):
            if _writes_to_terminal(found):
                logger.removeHandler(found)
                set_aside.append((logger, found))
    for logger in {logger for logger, _ in set_aside} | {logging.getLogger()}:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            if handler in logger.handlers:
                logger.removeHandler(handler)
        for logger, found in set_aside:
            logger.addHandler(found)
        handler.close()


def _writes_to_terminal(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return (
        isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
        and stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    )


async def run_chat(
    args: argparse.Namespace,
    *,
    settings: Settings,
    language: Language = "en",
    engine: Engine | None = None,
    tokenizer: Any = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Chat in the terminal until /quit, end of input or Ctrl-C at the prompt, saying
    everything in `language`; log lines go to `--log-file` meanwhile.

    Returns 0, or 2 when `--character` names nothing usable (one line on stderr), or 1 when
    the engine cannot start.
    """
    out = stdout if stdout is not None else sys.stdout
    return await _chat(
        args,
        settings=settings,
        text=TerminalText(language),
        log_file=getattr(args, "log_file", None) or default_log_file(os.environ),
        engine=engine,
        tokenizer=tokenizer,
        stdin=stdin if stdin is not None else sys.stdin,
        out=out,
    )


async def _chat(
    args: argparse.Namespace,
    *,
    settings: Settings,
    text: TerminalText,
    log_file: Path,
    engine: Engine | None,
    tokenizer: Any,
    stdin: TextIO,
    out: TextIO,
) -> int:
    def fail(error: Exception) -> None:
        print(terminal_safe(f"synatra-bot chat: {text.error(error)}"), file=sys.stderr)

    async with open_storage(settings) as storage:
        name = await player_name(
            storage.sessions, args.user_name, stdin=stdin, stdout=out, text=text
        )
        actor = Actor(TERMINAL_USER_ID, name)
        specs = args.character if isinstance(args.character, list) else [args.character]
        characters: list[CharacterRecord] = []
        try:
            for spec in specs:
                character, note = await resolve_character(
                    storage.characters,
                    actor,
                    spec,
                    max_card_bytes=settings.max_attachment_bytes,
                )
                if character.owner_id != actor.user_id and character.visibility == "guild":
                    # A character shared on a server: play it as a member of that server would.
                    actor = replace(actor, guild_id=character.guild_id)
                await storage.characters.for_use(
                    actor, character.id, place=None, nsfw_policy="allowed"
                )
                if note:
                    key = "card_imported" if note == "imported" else "card_updated"
                    line = text(key, id=character.id, name=character.name)
                    print(terminal_safe(line), file=out, flush=True)
                if all(c.id != character.id for c in characters):
                    characters.append(character)
        except UserFacingError as error:
            fail(error)
            return 2

        def loading() -> None:
            print(terminal_safe(text("loading", model=settings.model_id)), file=out, flush=True)

        async with contextlib.AsyncExitStack() as running:
            try:
                started_engine, started_tokenizer = await running.enter_async_context(
                    open_engine(settings, engine=engine, tokenizer=tokenizer, on_loading=loading)
                )
            except EngineError as error:
                fail(error)
                return 1
            turns = build_core(
                settings,
                storage,
                started_engine,
                started_tokenizer,
                max_concurrent=1,
                rate_limited=False,
            )
            place = replace(
                terminal_place(*(c.id for c in characters)), guild_id=actor.guild_id or 0
            )
            chat = TerminalChat(
                turns=turns,
                actor=actor,
                place=place,
                stdin=stdin,
                stdout=out,
                text=text,
                log_file=log_file,
                max_chat_bytes=settings.max_attachment_bytes,
            )
            chat.characters = characters
            try:
                log = _log_handler(log_file)
            except OSError as error:
                problem = text("log_unwritable", log=log_file, reason=error.strerror or "")
                print(terminal_safe(f"synatra-bot chat: {problem}"), file=sys.stderr)
                return 2
            chat.log_file = Path(log.baseFilename)
            try:
                # From here on the chat owns the terminal's lines: log lines go to the file.
                with _ctrl_c_calls(chat.interrupt), _logs_to(log):
                    try:
                        if args.import_chat:
                            await chat.import_chat(Path(args.import_chat))
                        else:
                            await chat.open(characters)
                    except UserFacingError as error:
                        fail(error)
                        return 2
                    print(terminal_safe(text("log", log=chat.log_file)), file=out, flush=True)
                    return await chat.run()
            finally:
                # Stop what still runs (a reply, the scene's memory) before the engine and
                # the database close, in that order.
                await turns.scheduler.shutdown(finish=False)
                if turns.core.recall is not None:
                    await turns.core.recall.close()
