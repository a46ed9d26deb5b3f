"""`synatra-bot chat`: the terminal roleplay, through the real core, scheduler and database."""

from __future__ import annotations

import argparse
import io
import itertools
import os
import signal
from pathlib import Path

import pytest

from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.prompt.cards import CharacterCard, card_to_png, card_to_v2_json
from synatra_bot.settings import Settings, settings_from_env
from synatra_bot.storage import repository as repo
from synatra_bot.storage.database import create_engine, create_sessionmaker
from synatra_bot.terminal.chat import (
    TERMINAL_USER_ID,
    TerminalChat,
    configure_parser,
    run_chat,
    terminal_place,
    terminal_safe,
)
from tests.hostile_corpus import RecordingEngine

GREETING = "안녕, {{user}}! 오늘 뭐 할래?"


class RecordingOutput(io.StringIO):
    """Stdout that remembers each write, to see that a reply arrives in pieces."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def card_file(tmp_path: Path, *, name: str = "세라", png: bool = False, **fields) -> Path:
    fields.setdefault("description", "{{char}}는 바닷가 마을의 등대지기다.")
    fields.setdefault("first_message", GREETING)
    card = CharacterCard(name=name, **fields)
    path = tmp_path / (f"{name}.png" if png else f"{name}.json")
    path.write_bytes(card_to_png(card) if png else card_to_v2_json(card))
    return path


def replies(*texts: str):
    """A ScriptedEngine script that answers with `texts` in turn (the last one repeats)."""
    turn = itertools.count()
    return lambda _prompt: texts[min(next(turn), len(texts) - 1)]


@pytest.fixture(autouse=True)
def state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The chat's log goes to $XDG_STATE_HOME/synatra-bot/chat.log: here, not the home."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_from_env(
        {"DISCORD_TOKEN": "", "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"},
        require_token=False,
    )


@pytest.fixture
async def sessions(settings: Settings):
    database = create_engine(settings.database_url)
    yield create_sessionmaker(database)
    await database.dispose()


def args_for(character: str | Path, user_name: str | None = "민수") -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    argv = ["--character", str(character)]
    if user_name is not None:
        argv += ["--user-name", user_name]
    return parser.parse_args(argv)


async def chat(
    settings: Settings,
    tokenizer,
    character: str | Path,
    lines: str,
    *,
    engine=None,
    stdout: io.StringIO | None = None,
) -> tuple[int, str]:
    out = stdout if stdout is not None else RecordingOutput()
    code = await run_chat(
        args_for(character),
        settings=settings,
        language="ko",
        engine=engine or ScriptedEngine("음, 그럼 바다를 보러 가자!", tokenizer=tokenizer),
        tokenizer=tokenizer,
        stdin=io.StringIO(lines),
        stdout=out,
    )
    return code, out.getvalue()


async def terminal_history(sessions, name: str = "세라"):
    [character] = [
        c
        for c in await repo.visible_characters(sessions, guild_id=None, user_id=TERMINAL_USER_ID)
        if c.name == name
    ]
    place = terminal_place(character.id)
    session = await repo.get_active_session(sessions, channel_id=place.channel_id)
    assert session is not None
    return session, await repo.recent_history(sessions, session_id=session.id, limit=100)


async def test_greeting_is_shown_and_a_reply_streams_and_is_stored(
    settings, sessions, tokenizer, tmp_path
) -> None:
    out = RecordingOutput()
    engine = ScriptedEngine("음, 그럼 바다를 보러 가자!", tokenizer=tokenizer)
    code, text = await chat(
        settings,
        tokenizer,
        card_file(tmp_path),
        "안녕하세요, 세라 씨!\n/quit\n",
        engine=engine,
        stdout=out,
    )

    assert code == 0
    assert "세라: 안녕, 민수! 오늘 뭐 할래?" in text
    assert "세라: 음, 그럼 바다를 보러 가자!\n" in text
    # Streamed: the reply reached the terminal in several writes, not one.
    reply_writes = out.writes[out.writes.index("세라: ") + 1 :]
    assert len([w for w in reply_writes if w.strip()]) > 3
    assert "안녕하세요, 세라 씨!" in engine.prompts[0]
    _, history = await terminal_history(sessions)
    assert [(m.role, m.display_name, m.content) for m in history] == [
        ("assistant", "세라", "안녕, 민수! 오늘 뭐 할래?"),
        ("user", "민수", "안녕하세요, 세라 씨!"),
        ("assistant", "세라", "음, 그럼 바다를 보러 가자!"),
    ]


async def test_regen_stores_a_new_alternative_of_the_newest_reply(
    settings, sessions, tokenizer, tmp_path
) -> None:
    engine = ScriptedEngine(replies("첫 번째 대답이야.", "두 번째 대답이야."), tokenizer=tokenizer)
    code, text = await chat(
        settings, tokenizer, card_file(tmp_path), "오늘 날씨 어때?\n/regen\n", engine=engine
    )

    assert code == 0
    assert "세라: 두 번째 대답이야." in text and "(2/2" in text
    _, history = await terminal_history(sessions)
    newest = history[-1]
    assert newest.content == "두 번째 대답이야."
    options = await repo.alternatives(sessions, message_id=newest.id)
    assert [m.content for m in options] == ["첫 번째 대답이야.", "두 번째 대답이야."]
    # The regenerated prompt left the old reply out.
    assert "첫 번째 대답이야." not in engine.prompts[1]


async def test_prev_browses_back_to_the_first_alternative(
    settings, sessions, tokenizer, tmp_path
) -> None:
    engine = ScriptedEngine(replies("하나.", "둘."), tokenizer=tokenizer)
    code, text = await chat(
        settings, tokenizer, card_file(tmp_path), "골라 봐.\n/regen\n/prev\n", engine=engine
    )

    assert code == 0 and "(1/2)" in text
    _, history = await terminal_history(sessions)
    assert history[-1].content == "하나."


async def test_undo_removes_the_last_exchange(settings, sessions, tokenizer, tmp_path) -> None:
    code, text = await chat(
        settings, tokenizer, card_file(tmp_path), "이건 지울 말이야.\n/undo\n/undo\n"
    )

    assert code == 0
    assert "되돌렸어요: 메시지 2개" in text
    assert "되돌릴 것이 없어요" in text
    _, history = await terminal_history(sessions)
    assert [m.content for m in history] == ["안녕, 민수! 오늘 뭐 할래?"]


async def test_a_second_run_continues_the_same_session(
    settings, sessions, tokenizer, tmp_path
) -> None:
    card = card_file(tmp_path)
    await chat(settings, tokenizer, card, "첫 만남이야.\n")
    first, _ = await terminal_history(sessions)

    code, text = await chat(settings, tokenizer, card, "또 왔어.\n/quit\n")

    assert code == 0
    assert "이어서" in text and "민수: 첫 만남이야." in text
    assert "새 대화" not in text and "가져옴" not in text
    second, history = await terminal_history(sessions)
    assert second.id == first.id
    assert [m.content for m in history if m.role == "user"] == ["첫 만남이야.", "또 왔어."]
    characters = await repo.visible_characters(sessions, guild_id=None, user_id=TERMINAL_USER_ID)
    assert [c.name for c in characters] == ["세라"]


async def test_a_stored_character_is_found_by_name_and_by_id(
    settings, sessions, tokenizer, tmp_path
) -> None:
    await chat(settings, tokenizer, card_file(tmp_path), "처음이야.\n")
    session, _ = await terminal_history(sessions)

    by_name = await chat(settings, tokenizer, "세라", "")
    by_id = await chat(settings, tokenizer, f"#{session.character_id}", "")

    for code, text in (by_name, by_id):
        assert code == 0 and "민수: 처음이야." in text
    assert (await terminal_history(sessions))[0].id == session.id


async def test_a_changed_card_file_updates_the_stored_character(
    settings, sessions, tokenizer, tmp_path
) -> None:
    await chat(settings, tokenizer, card_file(tmp_path), "")
    changed = card_file(tmp_path, description="{{char}}는 이제 항구의 선장이다.")

    code, text = await chat(settings, tokenizer, changed, "")

    assert code == 0 and "카드 갱신" in text
    [character] = await repo.visible_characters(sessions, guild_id=None, user_id=TERMINAL_USER_ID)
    assert character.description == "{{char}}는 이제 항구의 선장이다."


async def test_a_png_card_is_imported(settings, sessions, tokenizer, tmp_path) -> None:
    code, text = await chat(settings, tokenizer, card_file(tmp_path, png=True), "")

    assert code == 0 and "가져옴: #" in text and "세라: 안녕, 민수!" in text


@pytest.mark.parametrize(
    "character",
    ["없는/카드.png", "없는카드.json", "아무도아님", "#999"],
    ids=["missing-path", "missing-json", "unknown-name", "unknown-id"],
)
async def test_a_bad_character_exits_2_with_one_line(
    settings, tokenizer, tmp_path, capsys, character
) -> None:
    engine = ScriptedEngine(tokenizer=tokenizer)
    code, text = await chat(settings, tokenizer, tmp_path / character, "", engine=engine)

    assert code == 2 and text == ""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("synatra-bot chat: ")
    assert not engine.prompts


async def test_a_broken_card_file_exits_2_with_one_line(
    settings, tokenizer, tmp_path, capsys
) -> None:
    broken = tmp_path / "깨진카드.json"
    broken.write_text('{"name": ', encoding="utf-8")

    code, _ = await chat(settings, tokenizer, broken, "")

    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "캐릭터 카드를 읽을 수 없어요" in err


async def test_an_engine_failing_mid_stream_prints_an_error_and_stores_no_reply(
    settings, sessions, tokenizer, tmp_path
) -> None:
    engine = ScriptedEngine("이 대답은 중간에 끊긴다.", fail_after=3, tokenizer=tokenizer)
    code, text = await chat(
        settings, tokenizer, card_file(tmp_path), "말해 줘.\n/context\n", engine=engine
    )

    assert code == 0
    assert "⚠ 답장 실패" in text and "scripted failure" in text
    assert "토큰 " in text  # the loop went on to the next command
    _, history = await terminal_history(sessions)
    assert [(m.role, m.content) for m in history] == [
        ("assistant", "안녕, 민수! 오늘 뭐 할래?"),
        ("user", "말해 줘."),
    ]


async def test_continue_extends_the_newest_reply(settings, sessions, tokenizer, tmp_path) -> None:
    engine = ScriptedEngine(replies("바다가 좋아.", " 특히 밤바다가."), tokenizer=tokenizer)
    code, text = await chat(
        settings, tokenizer, card_file(tmp_path), "뭐가 좋아?\n/continue\n", engine=engine
    )

    assert code == 0 and "세라: …  특히 밤바다가." in text
    _, history = await terminal_history(sessions)
    assert history[-1].content == "바다가 좋아. 특히 밤바다가."


async def test_reset_starts_over_and_archives_the_old_session(
    settings, sessions, tokenizer, tmp_path
) -> None:
    card = card_file(tmp_path)
    await chat(settings, tokenizer, card, "기억해 줘.\n")
    old, _ = await terminal_history(sessions)

    code, text = await chat(settings, tokenizer, card, "/reset\n")

    assert code == 0
    assert "세라: 안녕, 민수! 오늘 뭐 할래?" in text.partition("새 대화 —")[2]
    new, history = await terminal_history(sessions)
    assert new.id != old.id and [m.role for m in history] == ["assistant"]
    archived = await repo.recent_history(sessions, session_id=old.id, limit=10)
    assert "기억해 줘." in [m.content for m in archived]


async def test_help_and_unknown_commands_are_answered(settings, tokenizer, tmp_path) -> None:
    code, text = await chat(settings, tokenizer, card_file(tmp_path), "/help\n/춤춰\n")

    assert code == 0 and "/regen" in text and "모르는 명령이에요" in text


async def test_regen_of_the_greeting_is_refused_and_next_shows_another_greeting(
    settings, sessions, tokenizer, tmp_path
) -> None:
    card = card_file(tmp_path, alternate_greetings=["또 만났네, {{user}}."])

    code, text = await chat(settings, tokenizer, card, "/regen\n/next\n")

    assert code == 0 and "(인사말 1/2" in text and "인사말은 다시 만들 수 없어요" in text
    assert "세라: 또 만났네, 민수." in text
    _, history = await terminal_history(sessions)
    assert [m.content for m in history] == ["또 만났네, 민수."]


class InterruptAfter(RecordingOutput):
    """Stdout that presses Ctrl-C (a real SIGINT) once the n-th write of exactly `marker` lands."""

    def __init__(self, marker: str, count: int = 1) -> None:
        super().__init__()
        self.marker = marker
        self.left = count

    def write(self, text: str) -> int:
        written = super().write(text)
        if text == self.marker and self.left > 0:
            self.left -= 1
            if self.left == 0:
                os.kill(os.getpid(), signal.SIGINT)
        return written


async def test_ctrl_c_during_a_reply_keeps_the_partial_text(
    settings, sessions, tokenizer, tmp_path
) -> None:
    full = "가나다라마바사아자차카타파하" * 3
    engine = ScriptedEngine(full, delay_s=0.01, tokenizer=tokenizer)
    out = InterruptAfter("라마바")  # Ctrl-C once the third delta is on screen

    code, text = await chat(
        settings,
        tokenizer,
        card_file(tmp_path),
        "길게 말해 줘.\n/quit\n",
        engine=engine,
        stdout=out,
    )

    assert code == 0 and "(멈춤)\n" in text
    _, history = await terminal_history(sessions)
    stored = history[-1]
    assert stored.role == "assistant" and stored.content
    assert stored.content.startswith("가나다라마바") and full.startswith(stored.content)
    assert stored.content != full
    assert engine.cancelled


async def test_ctrl_c_at_the_prompt_exits_cleanly(settings, tokenizer, tmp_path) -> None:
    handler_before = signal.getsignal(signal.SIGINT)
    read_end, write_end = os.pipe()
    with open(read_end, encoding="utf-8") as stdin, open(write_end, "w") as feeder:
        out = InterruptAfter("민수> ")
        code = await run_chat(
            args_for(card_file(tmp_path)),
            settings=settings,
            language="ko",
            engine=ScriptedEngine(tokenizer=tokenizer),
            tokenizer=tokenizer,
            stdin=stdin,
            stdout=out,
        )
        feeder.close()  # lets the reader thread see the end of input

    assert code == 0 and out.getvalue().endswith("민수> \n")
    assert signal.getsignal(signal.SIGINT) is handler_before


async def test_end_of_input_exits_like_quit(settings, tokenizer, tmp_path) -> None:
    code, text = await chat(settings, tokenizer, card_file(tmp_path), "안녕!")

    assert code == 0 and "세라: 음, 그럼 바다를 보러 가자!" in text


def test_the_user_name_defaults_to_someone() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--character", "세라"])
    assert args.character == ["세라"] and args.user_name is None


@pytest.mark.slow
async def test_chat_with_the_tiny_real_model(tmp_path, tokenizer, tiny_model_dir) -> None:
    from synatra_bot.engine.transformers_engine import TransformersEngine

    settings = settings_from_env(
        {
            "DISCORD_TOKEN": "",
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'tiny.db'}",
            "CONTEXT_SIZE": "1024",
            "MAX_NEW_TOKENS": "6",
        },
        require_token=False,
    )
    engine = TransformersEngine(str(tiny_model_dir), context_size=1024)

    code, text = await chat(
        settings, tokenizer, card_file(tmp_path), "안녕하세요!\n/quit\n", engine=engine
    )

    assert code == 0 and "⚠" not in text
    database = create_engine(settings.database_url)
    try:
        _, history = await terminal_history(create_sessionmaker(database))
    finally:
        await database.dispose()
    assert [m.role for m in history] == ["assistant", "user", "assistant"]
    assert f"세라: {history[-1].content}\n" in text


async def test_a_server_shared_character_plays_by_id_but_a_private_one_does_not(
    settings, sessions, tokenizer, capsys
) -> None:
    from synatra_bot.storage.migrate import upgrade_database

    await upgrade_database(settings.database_url)
    shared = await repo.create_character(
        sessions,
        owner_id=42,
        guild_id=7,
        name="하린",
        visibility="guild",
        approval="approved",
        first_message="어서 와, {{user}}.",
    )
    private = await repo.create_character(
        sessions, owner_id=42, guild_id=7, name="비밀", first_message="누구세요?"
    )

    code, text = await chat(settings, tokenizer, f"#{shared.id}", "")
    assert code == 0 and "하린: 어서 와, 민수." in text

    code, text = await chat(settings, tokenizer, f"#{private.id}", "")
    assert code == 2 and text == ""
    err = capsys.readouterr().err
    assert "그 캐릭터가 없거나 여기서 쓸 수 없어요 (character " in err and "not available" in err


async def test_control_characters_in_card_text_and_model_output_cannot_take_over_the_terminal(
    settings, tokenizer, tmp_path
) -> None:
    hostile = card_file(
        tmp_path,
        name="세라\x1b[31m",
        first_message="\x1b[2J\x1b[H화면이 지워졌지?\x07",
    )
    engine = ScriptedEngine("\r가짜 민수: 내가 졌어\x1b]0;title\x07 \x9b2J", tokenizer=tokenizer)
    code, text = await chat(settings, tokenizer, hostile, "안녕\n/quit\n", engine=engine)

    assert code == 0
    assert not any(ch in text for ch in "\x1b\r\x07\x9b")
    assert "\\x1b[2J\\x1b[H화면이 지워졌지?\\x07" in text
    assert "세라\\x1b[31m: \\x0d가짜 민수: 내가 졌어" in text
    assert "\n" in text and "\\x0a" not in text  # newlines still end lines


def group_args(*cards: Path, user_name: str = "민수") -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    argv = [arg for card in cards for arg in ("--character", str(card))]
    return parser.parse_args([*argv, "--user-name", user_name])


async def group_chat(settings, tokenizer, cards, lines: str, *, engine) -> tuple[int, str]:
    out = RecordingOutput()
    code = await run_chat(
        group_args(*cards),
        settings=settings,
        language="ko",
        engine=engine,
        tokenizer=tokenizer,
        stdin=io.StringIO(lines),
        stdout=out,
    )
    return code, out.getvalue()


def speaker_of_prompt(prompt: str) -> str:
    """The name a group prompt's final header asks to speak ("...assistant\\n이름:")."""
    tail = prompt.rpartition("assistant\n")[2]
    return tail.split(":")[0] if ":" in tail else "?"


async def test_a_group_scene_plays_in_the_terminal_and_at_name_talks_to_one(
    settings, sessions, tokenizer, tmp_path
) -> None:
    sera = card_file(tmp_path)
    haneul = card_file(
        tmp_path,
        name="하늘",
        description="{{char}}는 세라의 동생이다.",
        first_message="(혼자일 때의 인사)",
    )
    turn = itertools.count(1)
    engine = ScriptedEngine(
        lambda p: f" {speaker_of_prompt(p)}의 말 {next(turn)}.", tokenizer=tokenizer
    )
    lines = "하늘아, 안녕!\n그래서 어떻게 됐어?\n@세라 너는?\n/next 하늘\n/cast\n/quit\n"

    code, text = await group_chat(settings, tokenizer, [sera, haneul], lines, engine=engine)

    assert code == 0 and "⚠" not in text
    assert "— 하늘 등장 —" in text and "(혼자일 때의 인사)" not in text
    # Named, then the one who last answered, then `@name`, then /next.
    assert "하늘: 하늘의 말 1.\n" in text and "하늘: 하늘의 말 2.\n" in text
    assert "세라: 세라의 말 3.\n" in text and "하늘: 하늘의 말 4.\n" in text
    assert "장면: 세라, 하늘" in text
    place = terminal_place(*sorted(_ids(text)))
    session = await repo.get_active_session(sessions, channel_id=place.channel_id)
    cast = await repo.session_cast(sessions, session_id=session.id)
    assert len(cast) == 2
    history = await repo.recent_history(sessions, session_id=session.id, limit=20)
    assert [m.content for m in history if m.role == "user"] == [
        "하늘아, 안녕!",
        "그래서 어떻게 됐어?",
        "너는?",
    ]
    assert [m.display_name for m in history if m.role == "assistant"] == [
        "세라",
        "하늘",
        "하늘",
        "세라",
        "하늘",
    ]


def _ids(text: str) -> list[int]:
    """The character ids the import lines name ("가져옴 · imported: #3 세라")."""
    return [int(line.split("#")[1].split()[0]) for line in text.splitlines() if "가져옴: #" in line]


@pytest.mark.slow
async def test_a_group_scene_with_the_tiny_real_model(tmp_path, tokenizer, tiny_model_dir) -> None:
    from synatra_bot.engine.transformers_engine import TransformersEngine

    settings = settings_from_env(
        {
            "DISCORD_TOKEN": "",
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'tiny-group.db'}",
            "CONTEXT_SIZE": "1024",
            "MAX_NEW_TOKENS": "6",
        },
        require_token=False,
    )
    engine = TransformersEngine(str(tiny_model_dir), context_size=1024)
    cards = [card_file(tmp_path), card_file(tmp_path, name="하늘", first_message="")]
    lines = "하늘아, 안녕!\n@세라 너도 안녕?\n/next 하늘\n/quit\n"

    code, text = await group_chat(settings, tokenizer, cards, lines, engine=engine)

    assert code == 0 and "⚠" not in text
    database = create_engine(settings.database_url)
    try:
        sessions = create_sessionmaker(database)
        place = terminal_place(*_ids(text))
        session = await repo.get_active_session(sessions, channel_id=place.channel_id)
        history = await repo.recent_history(sessions, session_id=session.id, limit=20)
    finally:
        await database.dispose()
    speakers = [m.display_name for m in history if m.role == "assistant"]
    assert speakers == ["세라", "하늘", "세라", "하늘"]
    for message in history[1:]:
        if message.role == "assistant":  # shown as stored, control characters escaped
            assert f"{message.display_name}: {terminal_safe(message.content)}\n" in text


async def test_export_then_import_chat_round_trips_in_the_terminal(
    settings, sessions, tokenizer, tmp_path
) -> None:
    card = card_file(tmp_path)
    exported = tmp_path / "세라와의 대화.jsonl"
    engine = ScriptedEngine(replies("첫 대답이야.", "두 번째 대답이야."), tokenizer=tokenizer)
    code, text = await chat(
        settings, tokenizer, card, f"안녕!\n/regen\n/export {exported}\n/quit\n", engine=engine
    )
    assert code == 0 and "저장했어요" in text and exported.is_file()
    _, before = await terminal_history(sessions)

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(
        ["--character", str(card), "--user-name", "민수", "--import-chat", str(exported)]
    )
    out = RecordingOutput()
    code = await run_chat(
        args,
        settings=settings,
        language="ko",
        engine=ScriptedEngine("이어서.", tokenizer=tokenizer),
        tokenizer=tokenizer,
        stdin=io.StringIO("또 왔어.\n/quit\n"),
        stdout=out,
    )
    assert code == 0 and "메시지 3개를 가져왔어요" in out.getvalue()
    _, after = await terminal_history(sessions)
    assert [(m.role, m.content) for m in after[:3]] == [(m.role, m.content) for m in before]
    options = await repo.alternatives(sessions, message_id=after[2].id)
    assert [m.content for m in options] == ["첫 대답이야.", "두 번째 대답이야."]
    assert [m.content for m in after[3:]] == ["또 왔어.", "이어서."]


async def test_a_broken_chat_file_is_refused_and_nothing_is_stored(
    settings, sessions, tokenizer, tmp_path, capsys
) -> None:
    card = card_file(tmp_path)
    await chat(settings, tokenizer, card, "안녕!\n/quit\n")
    _, before = await terminal_history(sessions)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"user_name": "민수"}\n{"name": "세라", "mes": 1}\n', encoding="utf-8")
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--character", str(card), "--import-chat", str(broken)])
    code = await run_chat(
        args,
        settings=settings,
        language="ko",
        engine=ScriptedEngine(tokenizer=tokenizer),
        tokenizer=tokenizer,
        stdin=io.StringIO("/quit\n"),
        stdout=io.StringIO(),
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "2번째 줄" in err
    _, after = await terminal_history(sessions)
    assert [m.id for m in after] == [m.id for m in before]


async def test_sessions_resume_and_branch_in_the_terminal(settings, sessions, tokenizer, tmp_path):
    card = card_file(tmp_path)
    engine = ScriptedEngine(replies("하나.", "둘.", "셋."), tokenizer=tokenizer)
    code, text = await chat(
        settings,
        tokenizer,
        card,
        "첫 장면.\n/reset\n두 번째 장면.\n/sessions\n/quit\n",
        engine=engine,
    )
    assert code == 0
    second, _ = await terminal_history(sessions)
    listed = [line for line in text.splitlines() if line.startswith("#") or "> #" in line]
    assert any(f"#{second.id}" in line and "진행 중" in line for line in listed)
    first_id = second.id - 1
    assert any(f"#{first_id} " in line for line in listed)

    code, text = await chat(
        settings,
        tokenizer,
        card,
        f"/resume {first_id}\n다시 왔어.\n/branch\n/quit\n",
        engine=engine,
    )
    assert code == 0 and f"장면 #{first_id} 이어서" in text and "세라: 하나." in text
    branch, history = await terminal_history(sessions)
    assert branch.id not in (first_id, second.id)
    assert [m.content for m in history if m.role == "user"] == ["첫 장면.", "다시 왔어."]
    resumed = await repo.get_session(sessions, session_id=first_id)
    assert resumed.ended_at is not None  # archived again once the branch took over


async def test_context_shows_the_prompt_sent_for_the_last_reply(
    settings, tokenizer, tmp_path
) -> None:
    engine = RecordingEngine("바다 보러 가자.", tokenizer=tokenizer)
    code, text = await chat(
        settings, tokenizer, card_file(tmp_path), "/context\n어디 갈까?\n/context\n", engine=engine
    )

    assert code == 0
    before, after = text.split("바다 보러 가자.", 1)
    assert "보낸 프롬프트가 아직 없어요" in before
    sent = len(engine.prompt_ids[-1])
    assert f"모델이 본 프롬프트 (세라, {sent}토큰)" in after
    assert f"토큰 {sent}/" in after


class TypedInput(io.StringIO):
    """Lines typed at a terminal (isatty), all there from the start, as if typed ahead."""

    def isatty(self) -> bool:
        return True


async def test_the_player_is_never_rate_limited_in_the_terminal(
    settings, sessions, tokenizer, tmp_path
) -> None:
    lines = "".join(f"{n}번째 말이야.\n" for n in range(1, 10))  # more than 6 in a minute

    code, text = await chat(settings, tokenizer, card_file(tmp_path), lines + "/quit\n")

    assert code == 0 and "⚠" not in text
    _, history = await terminal_history(sessions)
    assert [m.content for m in history if m.role == "user"] == [
        f"{n}번째 말이야." for n in range(1, 10)
    ]
    assert len([m for m in history if m.role == "assistant"]) == 10  # greeting + 9 replies


async def test_export_without_a_file_name_writes_a_named_file_in_the_working_folder(
    settings, sessions, tokenizer, tmp_path, monkeypatch
) -> None:
    folder = tmp_path / "작업"
    folder.mkdir()
    monkeypatch.chdir(folder)

    code, text = await chat(settings, tokenizer, card_file(tmp_path), "안녕!\n/export\n/export\n")

    session, _ = await terminal_history(sessions)
    day = session.started_at.strftime("%Y-%m-%d")
    first = folder / f"세라 - {day} - scene {session.id}.jsonl"
    second = folder / f"세라 - {day} - scene {session.id} (2).jsonl"
    assert code == 0 and "모르는 명령" not in text
    assert f"저장했어요: {first}" in text and f"저장했어요: {second}" in text
    assert first.read_bytes() == second.read_bytes()
    assert '"mes":"음, 그럼 바다를 보러 가자!"' in first.read_text(encoding="utf-8")


async def test_a_character_name_in_an_export_cannot_leave_the_working_folder(
    settings, tokenizer, tmp_path, monkeypatch
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    monkeypatch.chdir(folder)
    card = card_file(tmp_path, name="../세라")
    card = card.rename(tmp_path / "sera.json")

    code, _ = await chat(settings, tokenizer, card, "/export\n")

    assert code == 0
    [written] = list(folder.iterdir())
    assert written.name.startswith("_세라 - ") and not list(tmp_path.glob("세라 - *"))


@pytest.mark.parametrize("group", [False, True], ids=["one-character", "group"])
async def test_at_a_name_nobody_in_the_cast_says_who_is_and_stores_nothing(
    settings, sessions, tokenizer, tmp_path, group
) -> None:
    engine = ScriptedEngine("대답.", tokenizer=tokenizer)
    cards = [card_file(tmp_path)]
    if group:
        cards.append(card_file(tmp_path, name="하늘", first_message=""))

    code, text = await group_chat(settings, tokenizer, cards, "@민지 안녕?\n", engine=engine)

    cast = "세라, 하늘" if group else "세라"
    assert code == 0
    assert f"장면에 @민지(이)라는 캐릭터가 없어서 보내지 않았어요. 장면에는 {cast}" in text
    assert not engine.prompts
    place = terminal_place(*_ids(text))
    session = await repo.get_active_session(sessions, channel_id=place.channel_id)
    history = await repo.recent_history(sessions, session_id=session.id, limit=20)
    assert [m.role for m in history] == ["assistant"]


async def test_at_the_one_character_talks_to_it_without_the_name_in_the_story(
    settings, sessions, tokenizer, tmp_path
) -> None:
    code, text = await chat(settings, tokenizer, card_file(tmp_path), "@세라 바다 보러 갈래?\n")

    assert code == 0 and "세라: 음, 그럼 바다를 보러 가자!" in text
    _, history = await terminal_history(sessions)
    assert [m.content for m in history if m.role == "user"] == ["바다 보러 갈래?"]


def no_name_args(character: Path) -> argparse.Namespace:
    return args_for(character, user_name=None)


async def test_without_user_name_the_player_is_asked_once_and_remembered(
    settings, sessions, tokenizer, tmp_path
) -> None:
    card = card_file(tmp_path)
    out = RecordingOutput()
    code = await run_chat(
        no_name_args(card),
        settings=settings,
        language="ko",
        engine=ScriptedEngine("반가워.", tokenizer=tokenizer),
        tokenizer=tokenizer,
        stdin=TypedInput("  지우  \n처음 왔어.\n"),
        stdout=out,
    )
    assert code == 0
    assert "이야기 속 내 이름은? (Enter: 나): " in out.getvalue()
    assert "세라: 안녕, 지우! 오늘 뭐 할래?" in out.getvalue() and "지우> " in out.getvalue()

    # Later, even with nobody to ask (input piped in), the name is the one given.
    code, text = await chat_as(settings, tokenizer, card, "또 왔어.\n", user_name=None)

    assert code == 0 and "이름은?" not in text and "지우> " in text
    _, history = await terminal_history(sessions)
    assert [m.display_name for m in history if m.role == "user"] == ["지우", "지우"]


async def chat_as(settings, tokenizer, card, lines, *, user_name, language="ko"):
    out = RecordingOutput()
    code = await run_chat(
        args_for(card, user_name=user_name),
        settings=settings,
        language=language,
        engine=ScriptedEngine("음.", tokenizer=tokenizer),
        tokenizer=tokenizer,
        stdin=io.StringIO(lines),
        stdout=out,
    )
    return code, out.getvalue()


@pytest.mark.parametrize(("language", "name"), [("ko", "나"), ("en", "You")])
async def test_with_nobody_to_ask_the_player_gets_the_languages_default_name(
    settings, tokenizer, tmp_path, language, name
) -> None:
    code, text = await chat_as(
        settings, tokenizer, card_file(tmp_path), "", user_name=None, language=language
    )

    assert code == 0 and f"세라: 안녕, {name}! 오늘 뭐 할래?" in text and f"{name}> " in text


async def test_user_name_replaces_the_remembered_name(settings, sessions, tokenizer, tmp_path):
    card = card_file(tmp_path)
    await chat_as(settings, tokenizer, card, "하나.\n", user_name="지우")
    await chat_as(settings, tokenizer, card, "둘.\n", user_name="민수")
    code, text = await chat_as(settings, tokenizer, card, "셋.\n", user_name=None)

    assert code == 0 and "민수> " in text
    _, history = await terminal_history(sessions)
    assert [m.display_name for m in history if m.role == "user"] == ["지우", "민수", "민수"]


class TypedLater:
    """A terminal (isatty) whose lines arrive through a pipe, typed while the chat runs."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def isatty(self) -> bool:
        return True

    def readline(self) -> str:
        return self._stream.readline()

    def read(self) -> str:
        return self._stream.read()


class TypesAfter(RecordingOutput):
    """Stdout that types `lines` (into `feeder`) once the n-th write of `marker` lands."""

    def __init__(self, marker: str, count: int, feeder, lines: str) -> None:
        super().__init__()
        self.marker, self.left, self.feeder, self.lines = marker, count, feeder, lines

    def write(self, text: str) -> int:
        written = super().write(text)
        if text == self.marker and self.left > 0:
            self.left -= 1
            if self.left == 0:
                self.feeder.write(self.lines)
                self.feeder.flush()
        return written


async def test_quit_typed_during_a_reply_stops_it_at_once_and_keeps_what_was_written(
    settings, sessions, tokenizer, tmp_path
) -> None:
    full = "가나다라마바사아자차카타파하" * 20
    engine = ScriptedEngine(full, delay_s=0.05, tokenizer=tokenizer)
    read_end, write_end = os.pipe()
    with open(read_end, encoding="utf-8") as pipe, open(write_end, "w") as feeder:
        feeder.write("길게 말해 줘.\n")
        feeder.flush()
        # Typed once the third piece of the reply is on screen.
        out = TypesAfter("라마바", 1, feeder, "이건 보내지 않아.\n/quit\n/quit 뒤에 친 줄\n")
        typed = TypedLater(pipe)
        code = await run_chat(
            args_for(card_file(tmp_path)),
            settings=settings,
            language="ko",
            engine=engine,
            tokenizer=tokenizer,
            stdin=typed,
            stdout=out,
        )
        feeder.close()
        left_for_the_shell = typed.read()

    text = out.getvalue()
    assert code == 0 and "(멈춤)\n" in text and engine.cancelled
    assert "(/quit 전에 입력한 1줄은 보내지 않았어요)" in text
    _, history = await terminal_history(sessions)
    assert [m.content for m in history if m.role == "user"] == ["길게 말해 줘."]
    stored = history[-1]
    assert stored.role == "assistant" and stored.content.startswith("가나다라마바")
    assert full.startswith(stored.content) and stored.content != full
    # Reading stopped at /quit: what was typed after it is left for the shell.
    assert left_for_the_shell == "/quit 뒤에 친 줄\n"


async def test_piped_lines_are_played_in_order_before_quit(
    settings, sessions, tokenizer, tmp_path
) -> None:
    engine = ScriptedEngine("가나다라마바사" * 5, delay_s=0.001, tokenizer=tokenizer)
    code, text = await chat(
        settings, tokenizer, card_file(tmp_path), "하나.\n둘.\n/quit\n셋.\n", engine=engine
    )

    assert code == 0 and "(멈춤)" not in text
    _, history = await terminal_history(sessions)
    assert [m.content for m in history if m.role == "user"] == ["하나.", "둘."]
    assert history[-1].content == "가나다라마바사" * 5


async def test_log_lines_go_to_the_log_file_not_into_the_chat(
    settings, tokenizer, tmp_path, capsys, state_folder
) -> None:
    import logging

    engine_log = logging.getLogger("synatra_bot.engine.openai_compat")

    def answer(_prompt: str) -> str:
        engine_log.warning("engine request failed (connection refused); retrying in 1.0 s")
        return "여기 있어."

    root = logging.getLogger()
    console = logging.StreamHandler()  # as the bot's logging set-up would leave it
    root.addHandler(console)
    try:
        code, text = await chat(
            settings,
            tokenizer,
            card_file(tmp_path),
            "안녕?\n",
            engine=ScriptedEngine(answer, tokenizer=tokenizer),
        )
        assert console in root.handlers  # put back afterwards
    finally:
        root.removeHandler(console)

    log_file = state_folder / "synatra-bot" / "chat.log"
    assert code == 0 and "세라: 여기 있어." in text
    assert "retrying" not in text and "retrying" not in capsys.readouterr().err
    assert "engine request failed (connection refused); retrying" in log_file.read_text("utf-8")
    assert f"(로그: {log_file})" in text


async def test_the_chat_speaks_english_when_asked(settings, tokenizer, tmp_path) -> None:
    code, text = await chat_as(
        settings,
        tokenizer,
        card_file(tmp_path),
        "안녕?\n/undo\n/춤\n",
        user_name="민수",
        language="en",
    )

    assert code == 0
    assert "— new chat with 세라 —" in text and "undone: 2 message(s)" in text
    assert "unknown command: /춤 (/help)" in text
    assert "되돌렸어요" not in text and "새 대화" not in text


def sillytavern_chat(path: Path, *messages: dict) -> Path:
    import json

    header = {"user_name": "민수", "character_name": "세라", "create_date": "", "chat_metadata": {}}
    rows = [header, *messages]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def st_message(text: str, *, user: bool, swipes: int = 0) -> dict:
    message = {"name": "민수" if user else "세라", "is_user": user, "mes": text}
    if swipes:
        message |= {"swipes": [f"{text} {n}" for n in range(swipes)], "swipe_id": 0}
        message["mes"] = message["swipes"][0]
    return message


async def test_import_of_a_chat_over_the_swipe_limit_is_refused_and_stores_nothing(
    settings, sessions, tokenizer, tmp_path, capsys
) -> None:
    from synatra_bot.prompt.st_chat import MAX_SWIPES_PER_MESSAGE

    card = card_file(tmp_path)
    await chat(settings, tokenizer, card, "안녕!\n")
    before, history_before = await terminal_history(sessions)
    over = sillytavern_chat(
        tmp_path / "많은 스와이프.jsonl",
        st_message("안녕", user=True),
        st_message("대답", user=False, swipes=MAX_SWIPES_PER_MESSAGE + 1),
    )
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--character", str(card), "--import-chat", str(over)])

    code = await run_chat(
        args,
        settings=settings,
        language="ko",
        engine=ScriptedEngine(tokenizer=tokenizer),
        tokenizer=tokenizer,
        stdin=io.StringIO(""),
        stdout=io.StringIO(),
    )

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"3번째 줄 메시지의 스와이프가 한 메시지에 둘 수 있는 {MAX_SWIPES_PER_MESSAGE}개" in err
    assert "아무것도 저장하지 않았어요" in err
    after, history_after = await terminal_history(sessions)
    assert after.id == before.id and [m.id for m in history_after] == [m.id for m in history_before]


async def test_import_in_the_chat_passes_the_scene_quota_and_the_size_limit(
    settings, sessions, tokenizer, tmp_path
) -> None:
    from synatra_bot.storage.migrate import upgrade_database

    await upgrade_database(settings.database_url)
    card = card_file(tmp_path)
    rows = [st_message(f"{n}번째 " + "파도 소리. " * 20, user=n % 2 == 0) for n in range(12)]
    chat_file = sillytavern_chat(tmp_path / "긴 대화.jsonl", *rows)
    await repo.update_guild_settings(sessions, guild_id=0, scene_rows=10)
    assert card.stat().st_size < chat_file.stat().st_size - 1
    small = replace_settings(settings, max_attachment_bytes=chat_file.stat().st_size - 1)

    code, text = await chat(settings, tokenizer, card, f"안녕!\n/import {chat_file}\n")
    assert code == 0 and "⚠" in text and "모두 합쳐 10줄까지" in text
    code, text = await chat(small, tokenizer, card, f"/import {chat_file}\n")
    assert code == 0 and "⚠ 파일이 너무 커요" in text

    _, history = await terminal_history(sessions)
    assert [m.content for m in history if m.role == "user"] == ["안녕!"]


def replace_settings(settings: Settings, **changes) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, **changes)


async def test_a_log_file_that_cannot_be_written_exits_2_with_one_line(
    settings, tokenizer, tmp_path, capsys
) -> None:
    blocker = tmp_path / "파일"
    blocker.write_text("", encoding="utf-8")
    args = args_for(card_file(tmp_path))
    args.log_file = blocker / "chat.log"

    code = await run_chat(
        args,
        settings=settings,
        language="ko",
        engine=ScriptedEngine(tokenizer=tokenizer),
        tokenizer=tokenizer,
        stdin=io.StringIO("안녕\n"),
        stdout=io.StringIO(),
    )

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"synatra-bot chat: 로그 {blocker / 'chat.log'}에 쓸 수 없어요: ")


#: Messages with no words in them (counts): the same in both languages.
WORDLESS = ("alternative", "alternatives")


@pytest.mark.parametrize("language", ["ko", "en"])
def test_every_terminal_message_is_there_in_both_languages(language) -> None:
    import re
    import string

    from synatra_bot.terminal.messages import MESSAGES, TerminalText

    hangul = re.compile(r"[\uac00-\ud7a3]")
    say = TerminalText(language)
    for key, (english, korean) in MESSAGES.items():
        assert (english != korean) != (key in WORDLESS), key
        fields = {
            name.split("|")[0]
            for template in (english, korean)
            for _, name, _, _ in string.Formatter().parse(template)
            if name
        }
        shown = say(key, **dict.fromkeys(fields, "x"))
        assert "{" not in shown, key
        if key not in WORDLESS and key != "error.generic":  # English: the message itself
            assert bool(hangul.search(shown)) == (language == "ko"), key


async def test_auto_lets_the_characters_take_n_turns_among_themselves(
    settings, sessions, tokenizer, tmp_path
) -> None:
    sera = card_file(tmp_path)
    haneul = card_file(
        tmp_path, name="하늘", description="{{char}}는 세라의 동생이다.", first_message="(인사)"
    )
    turn = itertools.count(1)
    engine = ScriptedEngine(
        lambda p: f" {speaker_of_prompt(p)}의 말 {next(turn)}.", tokenizer=tokenizer
    )
    lines = "하늘아, 안녕!\n/auto 3\n/context\n/auto 0\n/auto 세\n/quit\n"

    code, text = await group_chat(settings, tokenizer, [sera, haneul], lines, engine=engine)

    assert code == 0 and "⚠" not in text
    # 하늘 answered the player last, so she goes on first; then the cast order.
    assert "하늘: 하늘의 말 2.\n세라: 세라의 말 3.\n하늘: 하늘의 말 4.\n" in text
    assert "— 캐릭터끼리 3차례 주고받았어요 —" in text
    assert "하늘이 스스로 말했어요: 캐릭터끼리 주고받는 3차례 중 3번째" in text  # /context says why
    assert text.count("/auto N: 캐릭터끼리 N차례 주고받아요 (N은 1부터 10까지)") == 2
    place = terminal_place(*sorted(_ids(text)))
    session = await repo.get_active_session(sessions, channel_id=place.channel_id)
    history = await repo.recent_history(sessions, session_id=session.id, limit=20)
    # No player line made up for them: what the terminal showed is what is stored.
    assert [m.display_name if m.role == "assistant" else "user" for m in history] == [
        "세라",
        "user",
        "하늘",
        "하늘",
        "세라",
        "하늘",
    ]
    assert "먼저 입을 열어" in engine.prompts[-1] and "먼저 입을 열어" not in engine.prompts[0]


async def test_ctrl_c_stops_the_characters_turns_among_themselves(
    settings, sessions, tokenizer, tmp_path
) -> None:
    sera = card_file(tmp_path)
    haneul = card_file(
        tmp_path, name="하늘", description="{{char}}는 세라의 동생이다.", first_message="(인사)"
    )
    engine = ScriptedEngine(
        lambda p: f" {speaker_of_prompt(p)}의 말은 아주 길어서 끝날 줄을 모른다." * 4,
        delay_s=0.01,
        tokenizer=tokenizer,
    )
    out = InterruptAfter("세라: ")  # Ctrl-C as 세라's own turn begins
    code = await run_chat(
        group_args(sera, haneul),
        settings=settings,
        language="ko",
        engine=engine,
        tokenizer=tokenizer,
        stdin=io.StringIO("하늘아, 안녕!\n/auto 5\n/quit\n"),
        stdout=out,
    )
    text = out.getvalue()

    assert code == 0
    assert "— 캐릭터끼리 1차례 주고받았어요 —" in text or "— 캐릭터끼리 2차례" in text
    place = terminal_place(*sorted(_ids(text)))
    session = await repo.get_active_session(sessions, channel_id=place.channel_id)
    history = await repo.recent_history(sessions, session_id=session.id, limit=20)
    assert len(history) <= 5  # the greeting, the line, its answer, at most two of their own


async def test_numbers_the_commands_cannot_take_are_answered_and_the_chat_goes_on(
    settings, sessions, tokenizer, tmp_path
) -> None:
    """ "²" passes `str.isdigit` but is no number to `int`; a number past any id is no id; a
    Korean keyboard's full-width digits are numbers."""
    huge = "9" * 30
    lines = (
        "/pin ²\n/unpin ²\n/resume ²\n/auto ²\n"
        f"/pin {huge}\n/unpin {huge}\n/resume {huge}\n/auto {huge}\n/unpin\n/resume #\n"
        "/unpin １\n/pins\n안녕.\n/quit\n"
    )
    code, text = await chat(settings, tokenizer, card_file(tmp_path), lines)

    assert code == 0
    assert "📌 #1번으로 고정했어요: ²" in text  # not a number: the text itself is pinned
    assert text.count("/unpin 번호: 그 번호의 고정 기억을 빼요 (/pins 참고)") == 3
    assert text.count("/resume 번호: 그 번호의 이전 장면을 다시 열어요 (/sessions 참고)") == 3
    assert text.count("/auto N: 캐릭터끼리 N차례 주고받아요") == 2
    assert "고정할 대화가 없어요" in text
    assert "📌 #1번 고정 기억을 뺐어요" in text and "고정 기억이 없어요" in text
    assert "세라: 음, 그럼 바다를 보러 가자!" in text
    _, history = await terminal_history(sessions)
    assert [m.content for m in history if m.role == "user"] == ["안녕."]


async def test_a_command_that_fails_on_its_argument_is_answered_and_the_chat_goes_on(
    settings, sessions, tokenizer, tmp_path, monkeypatch
) -> None:
    async def cannot(self, argument: str) -> None:
        raise ValueError(f"invalid literal for int() with base 10: {argument!r}")

    monkeypatch.setattr(TerminalChat, "_auto", cannot)
    code, text = await chat(settings, tokenizer, card_file(tmp_path), "/auto 3\n안녕.\n/quit\n")

    assert code == 0
    assert "/auto 명령이 뒤에 쓴 내용을 처리하지 못했어요 (/help)" in text
    assert "세라: 음, 그럼 바다를 보러 가자!" in text


async def test_a_character_id_past_any_stored_one_exits_2_with_one_line(
    settings, tokenizer, capsys
) -> None:
    engine = ScriptedEngine(tokenizer=tokenizer)
    code = await run_chat(
        args_for("#" + "9" * 30),
        settings=settings,
        language="ko",
        engine=engine,
        tokenizer=tokenizer,
        stdin=io.StringIO(""),
        stdout=RecordingOutput(),
    )

    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("synatra-bot chat: ")
