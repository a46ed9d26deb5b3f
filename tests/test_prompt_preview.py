"""`synatra-bot prompt`: the preview prints the prompt or JSON; errors are one line, exit 2."""

from __future__ import annotations

import argparse
import json

import pytest

from synatra_bot.prompt.cards import card_to_png, parse_card
from synatra_bot.prompt.preview import configure_parser, run_preview
from tests.prompt_helpers import v2_card


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(list(argv))


def _write_card(tmp_path):
    path = tmp_path / "minji.json"
    path.write_text(json.dumps(v2_card(), ensure_ascii=False), encoding="utf-8")
    return path


def _write_history(tmp_path, lines):
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), encoding="utf-8")
    return path


def test_preview_prints_the_prompt(tmp_path, tokenizer_dir, capsys):
    history = _write_history(
        tmp_path,
        [
            {"role": "user", "name": "준", "content": "안녕?"},
            {"role": "assistant", "name": "민지", "content": "어서 와요!"},
            {"role": "user", "name": "준", "content": "커피 한 잔 주세요."},
        ],
    )
    args = _args(
        "--card",
        str(_write_card(tmp_path)),
        "--history",
        str(history),
        "--user-name",
        "준",
        "--persona",
        "{{user}}는 단골손님이다.",
        "--tokenizer",
        str(tokenizer_dir),
    )
    assert run_preview(args, default_model_id="unused/model") == 0
    out = capsys.readouterr().out
    # As the bot lays it out: the persona just before the player's first message.
    persona = "<|im_start|>system\n### 준\n준은 단골손님이다.<|im_end|>\n"
    assert persona + "<|im_start|>user\n준: 안녕?<|im_end|>" in out
    assert "단골손님" not in out.split("<|im_end|>")[0]
    assert "<|im_start|>user\n준: 커피 한 잔 주세요.<|im_end|>" in out
    assert out.rstrip("\n").endswith("<|im_start|>assistant")


def test_preview_json_has_the_documented_keys(tmp_path, tokenizer_dir, capsys):
    card_path = tmp_path / "minji.png"
    card_path.write_bytes(card_to_png(parse_card(json.dumps(v2_card()).encode())))
    history = _write_history(
        tmp_path,
        [{"role": "user", "name": "준", "content": f"{i}번째 메시지 " * 20} for i in range(80)],
    )
    args = _args(
        "--card",
        str(card_path),
        "--history",
        str(history),
        "--context",
        "1024",
        "--max-new-tokens",
        "200",
        "--tokenizer",
        str(tokenizer_dir),
        "--json",
    )
    assert run_preview(args, default_model_id="unused/model") == 0
    data = json.loads(capsys.readouterr().out)
    assert {"prompt", "input_ids", "token_count", "budget", "blocks", "dropped_messages"} <= set(
        data
    )
    assert data["budget"] == 1024 - 200 - 16
    assert data["token_count"] == len(data["input_ids"]) <= data["budget"]
    assert data["dropped_messages"] > 0
    assert data["blocks"][1] == {"name": "system", "tokens": data["blocks"][1]["tokens"]}


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_bad_card_exits_2_with_one_line(tmp_path, tokenizer_dir, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": ""}', encoding="utf-8")
    args = _args("--card", str(bad), "--tokenizer", str(tokenizer_dir))
    assert run_preview(args, default_model_id="unused/model") == 2
    assert "no name" in _error_line(capsys)


def test_missing_card_and_bad_history_exit_2(tmp_path, tokenizer_dir, capsys):
    args = _args("--card", str(tmp_path / "nope.png"), "--tokenizer", str(tokenizer_dir))
    assert run_preview(args, default_model_id="unused/model") == 2
    assert "nope.png" in _error_line(capsys)
    history = tmp_path / "h.jsonl"
    history.write_text('{"role": "narrator", "content": "x"}\n', encoding="utf-8")
    args = _args(
        "--card",
        str(_write_card(tmp_path)),
        "--history",
        str(history),
        "--tokenizer",
        str(tokenizer_dir),
    )
    assert run_preview(args, default_model_id="unused/model") == 2
    assert "role" in _error_line(capsys)


def test_bad_context_and_bad_tokenizer_exit_2(tmp_path, tokenizer_dir, capsys):
    card = str(_write_card(tmp_path))
    args = _args("--card", card, "--context", "100", "--tokenizer", str(tokenizer_dir))
    assert run_preview(args, default_model_id="unused/model") == 2
    assert "--context" in _error_line(capsys)
    args = _args("--card", card, "--tokenizer", str(tmp_path / "missing-tokenizer"))
    assert run_preview(args, default_model_id="unused/model") == 2
    assert "tokenizer" in _error_line(capsys)


def test_sheet_too_large_exits_2(tmp_path, tokenizer_dir, capsys):
    path = tmp_path / "big.json"
    path.write_text(json.dumps(v2_card(description="긴 설정 " * 3000)), encoding="utf-8")
    args = _args("--card", str(path), "--tokenizer", str(tokenizer_dir))
    assert run_preview(args, default_model_id="unused/model") == 2
    assert "tokens" in _error_line(capsys)


@pytest.mark.parametrize("size", [511, 512, 32768, 32769])
def test_context_flag_and_setting_accept_the_same_numbers_and_say_so_the_same_way(
    tmp_path, tokenizer_dir, capsys, size
):
    from synatra_bot.errors import ConfigError
    from synatra_bot.settings import settings_from_env

    card = str(_write_card(tmp_path))
    flags = ["--context", str(size), "--max-new-tokens", "64"]
    args = _args("--card", card, *flags, "--tokenizer", str(tokenizer_dir))
    code = run_preview(args, default_model_id="unused/model")
    try:
        settings_from_env({"DISCORD_TOKEN": "x", "CONTEXT_SIZE": str(size), "MAX_NEW_TOKENS": "64"})
    except ConfigError as error:
        assert code == 2
        flag = _error_line(capsys)
        assert flag == f"synatra-bot: --context: {error.problem}"
        assert str(error) == f"CONTEXT_SIZE: must be between 512 and 32768, got {size}"
    else:
        assert code == 0


WORLD_INFO = {
    "name": "마을",
    "entries": {
        "0": {
            "uid": 0,
            "key": ["시계탑"],
            "content": "시계탑은 자정마다 열세 번 울린다.",
            "position": 4,
            "depth": 1,
            "role": 0,
            "order": 100,
        },
        "1": {"uid": 1, "key": ["빵집"], "content": "빵집은 새벽에 문을 연다.", "position": 0},
        "2": {
            "uid": 2,
            "constant": True,
            "content": "마을 이름은 {{random:하늘,바다}}골이다.",
            "position": 1,
        },
    },
}


def test_preview_shows_a_lorebook_the_author_note_and_a_fixed_seed(tmp_path, tokenizer_dir, capsys):
    card = _write_card(tmp_path)
    history = _write_history(
        tmp_path,
        [
            {"role": "assistant", "name": "민지", "content": "안녕!"},
            {"role": "user", "name": "준", "content": "시계탑 소리 들었어?"},
        ],
    )
    book = tmp_path / "마을.json"
    book.write_text(json.dumps(WORLD_INFO, ensure_ascii=False), encoding="utf-8")
    argv = [
        "--card",
        str(card),
        "--history",
        str(history),
        "--tokenizer",
        str(tokenizer_dir),
        "--lorebook",
        str(book),
        "--author-note",
        "비가 온다.",
        "--author-note-depth",
        "1",
        "--seed",
        "7",
        "--json",
    ]
    assert run_preview(_args(*argv), default_model_id="unused/model") == 0
    first = json.loads(capsys.readouterr().out)
    prompt = first["prompt"]
    # The keyed entry at depth 1 goes before the last message; the unmatched one stays out.
    assert prompt.index("열세 번 울린다") < prompt.index("시계탑 소리 들었어?")
    assert "새벽에 문을 연다" not in prompt
    assert "비가 온다." in prompt
    assert "하늘골" in prompt or "바다골" in prompt
    fired = [n for n in first["report"]["lorebook"] if n["status"] == "fired"]
    assert sorted(n["book"] for n in fired) == ["channel", "channel"]
    assert any("depth 1" in n["where"] for n in fired)
    assert run_preview(_args(*argv), default_model_id="unused/model") == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == prompt

    none = [*argv[:-1], "--lorebook-budget", "0", "--json"]
    assert run_preview(_args(*none), default_model_id="unused/model") == 0
    assert "열세 번 울린다" not in json.loads(capsys.readouterr().out)["prompt"]


def test_preview_refuses_a_bad_lorebook_and_bad_numbers_in_one_line(
    tmp_path, tokenizer_dir, capsys
):
    card = _write_card(tmp_path)
    bad = tmp_path / "깨짐.json"
    bad.write_text('{"entries": {"0": 3}}', encoding="utf-8")
    base = ["--card", str(card), "--tokenizer", str(tokenizer_dir)]
    assert run_preview(_args(*base, "--lorebook", str(bad)), default_model_id="x") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "깨짐.json" in err and "must be an object" in err
    assert run_preview(_args(*base, "--lorebook-budget", "-1"), default_model_id="x") == 2
    assert "--lorebook-budget" in capsys.readouterr().err
    assert run_preview(_args(*base, "--author-note-depth", "99"), default_model_id="x") == 2
    assert "--author-note-depth" in capsys.readouterr().err


def test_preview_scans_a_recursive_world_info_file_as_the_bot_does(tmp_path, tokenizer_dir, capsys):
    card = _write_card(tmp_path)
    history = _write_history(tmp_path, [{"role": "user", "name": "준", "content": "시계탑 가자"}])
    entries = {
        "0": {"uid": 0, "key": ["시계탑"], "content": "시계탑 아래에는 비밀 통로가 있다."},
        "1": {"uid": 1, "key": ["비밀 통로"], "content": "비밀 통로는 왕궁으로 이어진다."},
    }
    book = tmp_path / "재귀.json"
    book.write_text(
        json.dumps({"entries": entries, "recursive_scanning": True}, ensure_ascii=False),
        encoding="utf-8",
    )
    argv = ["--card", str(card), "--history", str(history), "--tokenizer", str(tokenizer_dir)]
    code = run_preview(_args(*argv, "--lorebook", str(book), "--json"), default_model_id="x")
    assert code == 0
    assert "왕궁으로 이어진다" in json.loads(capsys.readouterr().out)["prompt"]


def test_errors_and_the_report_are_in_korean_for_a_korean_command_line(
    tmp_path, tokenizer_dir, capsys
):
    card = str(_write_card(tmp_path))
    broken = tmp_path / "기록.jsonl"
    broken.write_text('{"role": "user", "content": "안녕"}\n{깨진 줄\n', encoding="utf-8")
    args = _args("--card", card, "--history", str(broken), "--tokenizer", str(tokenizer_dir))
    args.lang = "ko"
    assert run_preview(args, default_model_id="unused/model") == 2
    line = _error_line(capsys)
    assert line.startswith("synatra-bot: 프롬프트를 만들 수 없어요: ")
    assert "기록.jsonl:2: 올바른 JSON이 아니에요" in line

    args = _args("--card", card, "--tokenizer", str(tokenizer_dir))
    args.lang = "ko"
    assert run_preview(args, default_model_id="unused/model") == 0
    report = capsys.readouterr().err
    assert "토큰" in report and "tokens" not in report
