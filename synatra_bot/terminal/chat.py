"""`synatra-bot chat`: roleplay in the terminal, with one character or a group, through the
bot's own turns.

The terminal plays the same `Turns` over the same core, scheduler and database as the Discord
bot; it only reads lines and prints replies. It plays in a synthetic place: guild 0 and a
negative channel id (never a Discord snowflake) for each character, or each set of characters,
which gives it one session that continues across runs. The player is user 0
(`TERMINAL_USER_ID`); cards imported here belong to that user, outside any server. The place
counts as age-restricted: whoever runs the terminal owns the database anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import hashlib
import os
import re
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TextIO

from synatra_bot.app import build_core, open_engine, open_storage
from synatra_bot.errors import CardError, ChatFileError, EngineError, NotFound, UserFacingError
from synatra_bot.prompt.cards import parse_card
from synatra_bot.roleplay.addressing import Addressable, leading_address
from synatra_bot.roleplay.archive import Archive
from synatra_bot.roleplay.characters import CharacterService, columns_from_card, names_of
from synatra_bot.roleplay.core import Started
from synatra_bot.roleplay.turns import STOPPED_BY_USER, Ending, Reply, Turns
from synatra_bot.roleplay.types import Actor, Place
from synatra_bot.storage import repository as repo
from synatra_bot.storage.records import CharacterRecord, MessageRecord, SessionRecord

if TYPE_CHECKING:
    from synatra_bot.engine.base import Engine
    from synatra_bot.settings import Settings

TERMINAL_USER_ID = 0
TERMINAL_GUILD_ID = 0
DEFAULT_USER_NAME = "나"
#: Turns shown again when an earlier chat with the character continues.
RECAP_TURNS = 6
#: One person at a keyboard needs no rate limit.
TERMINAL_USER_TURNS = 1_000_000
#: C0 controls but newline and tab, DEL and C1 controls -> a visible escape ("\x1b", "\r").
_CONTROL_ESCAPES = MappingProxyType(
    {
        code: f"\\x{code:02x}"
        for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))
        if chr(code) not in "\n\t"
    }
)


HELP = """\
명령 · commands
  /regen        마지막 답장 다시 만들기 · new alternative of the newest reply
  /prev, /next  답장(인사말) 대안 넘겨 보기 · browse the alternatives
  /continue     이어서 말하게 하기 · let the character keep talking
  /next 이름     그 캐릭터가 지금 말하기 · that character speaks now
  /cast         장면의 캐릭터 · who is in the scene
  @이름 말       그 캐릭터에게 말하기 · talk to one character
  /undo         마지막 주고받기 지우기 · remove the last exchange
  /reset        처음부터 다시 (기록은 보관) · start over (history archived)
  /context      모델이 보는 프롬프트 요약 · what the model sees
  /export 파일   SillyTavern 채팅 파일로 저장 · save as a SillyTavern chat (.jsonl)
  /sessions     이 자리의 장면 목록 · this place's scenes, earlier ones too
  /resume 번호   이전 장면 다시 열기 · reopen an earlier scene
  /branch       여기서 새 갈래 (지금 장면은 보관) · go on in a new branch; this one is kept
  /help         도움말 · this help
  /quit         끝내기 (Ctrl-D) · quit
Ctrl-C: 답장 중이면 멈추기, 아니면 끝내기 · stop the reply, or quit at the prompt"""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--character",
        required=True,
        action="append",
        metavar="PATH_OR_NAME",
        help="a card file (PNG or JSON) to import, or the name or #id of a stored character;"
        " give it again for a group scene",
    )
    parser.add_argument(
        "--user-name", default=None, help="your name in the story (default: your OS user name)"
    )
    parser.add_argument(
        "--import-chat",
        default=None,
        metavar="FILE",
        help="continue a SillyTavern chat file (.jsonl) with the (first) character",
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


def default_user_name() -> str:
    try:
        return getpass.getuser() or DEFAULT_USER_NAME
    except (OSError, KeyError, ImportError):
        return DEFAULT_USER_NAME


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
    number = re.fullmatch(r"#?([0-9]+)", wanted)
    if number:
        return await characters.get(int(number[1])), ""
    if Path(spec).suffix.lower() in (".png", ".json") or os.sep in spec:
        raise CardError(f"no card file at {spec}", key="error.card", filename=spec)
    found = await characters.search(actor, wanted, limit=25)
    exact = [c for c in found if c.name.casefold() == wanted.casefold()]
    candidates = exact or found
    if len(candidates) == 1:
        return candidates[0], ""
    if not candidates:
        raise NotFound(f"no character named {wanted!r}: give a card file or a #id")
    listed = ", ".join(f"#{c.id} {c.name}" for c in candidates[:8])
    raise NotFound(f"{wanted!r} matches several characters ({listed}): use a #id")


def _write_chat_file(spec: str, data: bytes) -> Path:
    target = Path(spec).expanduser()
    try:
        target.write_bytes(data)
    except OSError as error:
        raise ChatFileError(0, f"cannot write it: {error.strerror}", filename=str(target)) from None
    return target


def _read_chat_file(path: Path) -> bytes:
    try:
        return path.expanduser().read_bytes()
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
        raise CardError(f"cannot read {path}: {error.strerror}", filename=str(path)) from None


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
    prompt left waiting never holds up exit."""

    def __init__(self, stream: TextIO) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
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
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, line)
            except RuntimeError:  # the loop is gone: nobody is listening
                return
            if line is None:
                return

    async def next_line(self, quit_requested: asyncio.Event) -> str | None:
        """The next line, or None at end of input or when quitting was requested."""
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
    ) -> None:
        self.turns = turns
        self.core = turns.core
        self.archive = Archive(turns)
        self.actor = actor
        self.place = place
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

    def _show(self, message: MessageRecord, fallback_name: str) -> None:
        self._line(f"{message.display_name or fallback_name}: {message.content}")

    def _error(self, error: Exception) -> None:
        self._line(f"⚠ {error}")

    # --- Ctrl-C -------------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Ctrl-C: stop the reply being generated, or quit when waiting at the prompt."""
        if not self._busy:
            self._quit.set()
            return
        self._stop_requested = True
        self._spawn(self._stop())

    async def _stop(self) -> None:
        await self.turns.scheduler.cancel_channel(self.place.channel_id, reason=STOPPED_BY_USER)

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the session --------------------------------------------------------------------------

    async def import_chat(self, characters: list[CharacterRecord], path: Path) -> None:
        """Start this place's scene over from a SillyTavern chat, then show where it stands."""
        data = await asyncio.to_thread(_read_chat_file, path)
        imported = await self.archive.import_chat(
            self.actor, self.place, data=data, filename=path.name, character_id=characters[0].id
        )
        self._line(f"— 가져옴 · imported {imported.turns} message(s) from {path.name} —")
        await self.open(characters)

    async def open(self, characters: list[CharacterRecord]) -> None:
        """Continue the terminal session of these characters (showing its last turns), or
        start one: the first character opens it, the others join."""
        if not (await self.core.config_for(self.place)).enabled:
            # The terminal's own place: the person at the keyboard turned the bot on here.
            await self.core.update_channel_settings(self.place, enabled=True)
        active = await self.core.active(self.place)
        if active is not None and active.lead.id == characters[0].id:
            history = await repo.recent_history(
                self.core.sessions, session_id=active.session.id, limit=RECAP_TURNS
            )
            self._line(f"— 이어서 · continuing with {active.names} —")
            for message in history:
                self._show(message, active.lead.name)
            present = {c.id for c in active.cast}
            for character in characters[1:]:
                if character.id not in present:
                    await self._join(character)
            return
        started = await self.turns.start(self.actor, self.place, character_id=characters[0].id)
        self._line(f"— 새 대화 · new chat with {characters[0].name} —")
        self._show_greeting(started)
        for character in characters[1:]:
            await self._join(character)

    async def _join(self, character: CharacterRecord) -> None:
        joined = await self.turns.join(self.actor, self.place, character.id)
        self._line(f"— {character.name} 등장 · joins the scene —")
        if joined.greeting is not None:
            self._show_greeting(joined)

    def _show_greeting(self, started: Started) -> None:
        name = started.character.name
        if started.greeting is None:
            self._line(
                f"({name}: 인사말 없음 — 먼저 말을 걸어 보세요 · no greeting: say something)"
            )
            return
        self._show(started.greeting, name)
        if started.greeting_count > 1:
            count = started.greeting_count
            self._line(f"(인사말 1/{count} · /next 로 다른 인사말 · /next shows another greeting)")

    async def run(self) -> int:
        self._line("/help 도움말 · help, /quit 끝내기 · quit")
        reader = _LineReader(self._stdin)
        while True:
            self._write(f"{self.actor.display_name}> ")
            line = await reader.next_line(self._quit)
            if line is None:
                self._line()
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
                    await self._say(text)
            except (UserFacingError, EngineError) as error:
                self._error(error)
            finally:
                self._busy = False

    async def _say(self, text: str) -> None:
        """A line of the story; `@name` at its start talks to that character."""
        active = await self.core.require_active(self.place)
        cast = [Addressable(c.id, names_of(c)) for c in active.cast]
        to, rest = leading_address(text, cast) if active.is_group else (None, text)
        said = await self.turns.say(self.place, self.actor, rest or text, to=to)
        if said is None:
            return
        await said.stored
        async for reply in said.replies():
            await self._play(reply)

    async def _command(self, text: str) -> bool:
        """Run a slash command; False means quit."""
        name, _, argument = text.partition(" ")
        name = name.lower()
        if name in ("/quit", "/exit", "/q"):
            return False
        if name in ("/help", "/h", "/?"):
            self._line(HELP)
        elif name == "/regen":
            await self._regenerate()
        elif name == "/continue":
            await self._play(await self.turns.continue_reply(self.place, self.actor))
        elif name == "/next" and argument.strip():
            await self._next(argument.strip())
        elif name in ("/prev", "/next"):
            await self._browse(-1 if name == "/prev" else 1)
        elif name == "/export" and argument.strip():
            filename, data = await self.archive.export(self.place)
            target = await asyncio.to_thread(_write_chat_file, argument.strip(), data)
            self._line(f"저장했어요 · saved: {target} ({filename})")
        elif name == "/sessions":
            for scene in await self.archive.scenes(self.place):
                mark = " ← 진행 중 · running" if scene.active else ""
                names = ", ".join(scene.names) or "?"
                day = scene.session.started_at.strftime("%Y-%m-%d")
                self._line(f"#{scene.session.id} {names} · {day} · {scene.turns}턴{mark}")
        elif name == "/resume" and argument.strip().lstrip("#").isdigit():
            scene_id = int(argument.strip().lstrip("#"))
            await self.archive.resume(self.actor, self.place, scene_id)
            self._line(f"— 장면 #{scene_id} 이어서 · scene #{scene_id} resumed —")
            await self._recap()
        elif name == "/branch":
            branch = await self._branch()
            self._line(f"— 새 갈래 · new branch, scene #{branch.id} —")
        elif name == "/cast":
            active = await self.core.require_active(self.place)
            self._line(f"장면 · scene: {active.names}")
        elif name == "/undo":
            try:
                removed = await self.turns.undo(self.place, self.actor)
            except UserFacingError:
                self._line("되돌릴 것이 없어요 · nothing to undo")
            else:
                self._line(f"되돌렸어요 · undone: {len(removed)} message(s)")
        elif name == "/reset":
            started = await self.turns.reset(self.actor, self.place)
            self._line(f"— 새 대화 · new chat with {started.character.name} —")
            self._show_greeting(started)
        elif name == "/context":
            active = await self.core.require_active(self.place)
            built = await self.core.build_prompt(active, speaker=self.actor)
            self._line(built.report.to_text())
        else:
            self._line(f"모르는 명령이에요 · unknown command: {name} (/help)")
        return True

    async def _branch(self) -> SessionRecord:
        active = await self.core.require_active(self.place)
        newest = await self.core.recent(active)
        if not newest:
            raise UserFacingError("nothing to branch from", key="error.nothing_to_branch")
        return await self.archive.branch(self.actor, self.place, newest[-1].id)

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
            self._line("인사말은 다시 만들 수 없어요 · the greeting cannot be regenerated (/next)")
            return
        await self._play(reply)

    async def _next(self, wanted: str) -> None:
        active = await self.core.require_active(self.place)
        cast = [Addressable(c.id, names_of(c)) for c in active.cast]
        key, _ = leading_address("@" + wanted.removeprefix("@"), cast)
        if key is None:
            self._line(f"장면에 없는 캐릭터예요 · not in the scene: {wanted} ({active.names})")
            return
        await self._play(await self.turns.next_speaker(self.place, self.actor, key))

    async def _browse(self, step: int) -> None:
        latest = await self.core.latest_reply(self.place)
        if latest is None:
            self._line("넘겨 볼 답장이 없어요 · no reply to browse")
            return
        shown, _ = await self.turns.browse(self.place, self.actor, latest.id, step)
        self._show(shown.message, shown.message.display_name)
        self._line(f"({shown.index + 1}/{shown.count})")

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
                self._line("(멈춤 · stopped)")
            if outcome.shown.count > 1:
                shown = outcome.shown
                self._line(f"({shown.index + 1}/{shown.count} · /prev /next)")
        elif outcome.ending is Ending.FAILED:
            error = outcome.error
            if isinstance(error, UserFacingError):
                self._error(error)
                return
            detail = str(error) if error is not None else "unexpected error (see the log)"
            self._line(f"⚠ 답장 실패, 저장하지 않았어요 · reply failed, nothing stored: {detail}")
            self._line("(/regen 으로 다시 시도 · /regen to try again)")
        elif outcome.ending is Ending.CUT and outcome.timed_out:
            self._line("(시간 초과, 저장하지 않았어요 · timed out, nothing stored)")
        elif outcome.ending in (Ending.CUT, Ending.DISCARDED):
            self._line("(멈춤, 저장하지 않았어요 · stopped, nothing stored)")


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


async def run_chat(
    args: argparse.Namespace,
    *,
    settings: Settings,
    engine: Engine | None = None,
    tokenizer: Any = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Chat in the terminal until /quit, end of input or Ctrl-C at the prompt.

    Returns 0, or 2 when `--character` names nothing usable (one line on stderr), or 1 when
    the engine cannot start.
    """
    out = stdout if stdout is not None else sys.stdout
    async with open_storage(settings) as storage:
        actor = Actor(TERMINAL_USER_ID, args.user_name or default_user_name())
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
                    label = {"imported": "가져옴 · imported", "updated": "카드 갱신 · card updated"}
                    line = f"{label[note]}: #{character.id} {character.name}"
                    print(terminal_safe(line), file=out, flush=True)
                if all(c.id != character.id for c in characters):
                    characters.append(character)
        except UserFacingError as error:
            print(terminal_safe(f"synatra-bot chat: {error}"), file=sys.stderr)
            return 2

        def loading() -> None:
            print(f"모델 준비 중 · loading {settings.model_id}…", file=out, flush=True)

        async with contextlib.AsyncExitStack() as running:
            try:
                started_engine, started_tokenizer = await running.enter_async_context(
                    open_engine(settings, engine=engine, tokenizer=tokenizer, on_loading=loading)
                )
            except EngineError as error:
                print(terminal_safe(f"synatra-bot chat: {error}"), file=sys.stderr)
                return 1
            turns = build_core(
                settings,
                storage,
                started_engine,
                started_tokenizer,
                max_concurrent=1,
                user_turns=TERMINAL_USER_TURNS,
            )
            place = replace(
                terminal_place(*(c.id for c in characters)), guild_id=actor.guild_id or 0
            )
            chat = TerminalChat(
                turns=turns,
                actor=actor,
                place=place,
                stdin=stdin if stdin is not None else sys.stdin,
                stdout=out,
            )
            try:
                with _ctrl_c_calls(chat.interrupt):
                    try:
                        if args.import_chat:
                            await chat.import_chat(characters, Path(args.import_chat))
                        else:
                            await chat.open(characters)
                    except UserFacingError as error:
                        print(terminal_safe(f"synatra-bot chat: {error}"), file=sys.stderr)
                        return 2
                    return await chat.run()
            finally:
                await turns.scheduler.shutdown(finish=False)
                if turns.core.recall is not None:
                    await turns.core.recall.close()
