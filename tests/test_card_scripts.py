"""Card scripts (SillyTavern regex scripts, RisuAI custom scripts): where they run, what they
change, and that a broken or hostile one is reported and never stalls the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from synatra_bot.prompt.report import PromptReport
from synatra_bot.prompt.scripts import (
    MAX_RESULT_CHARS,
    ScriptRun,
    Stage,
    apply_scripts,
    apply_scripts_async,
    apply_to_history,
    card_scripts,
    script_count,
)


def st(name: str, find: str, replace: str, placement: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "scriptName": name,
        "findRegex": find,
        "replaceString": replace,
        "placement": placement,
        "trimStrings": [],
        "disabled": False,
        "markdownOnly": False,
        "promptOnly": False,
        "runOnEdit": True,
        "substituteRegex": 0,
        "minDepth": None,
        "maxDepth": None,
        **extra,
    }


def risu(name: str, find: str, out: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"comment": name, "in": find, "out": out, "type": kind, **extra}


def run(ext: dict[str, Any], text: str, stage: Stage, role: str = "assistant", **kw: Any) -> str:
    return apply_scripts(card_scripts(ext), text, stage, role=role, char="민지", user="철수", **kw)


def test_output_script_rewrites_the_reply_with_a_capture_group() -> None:
    # SillyTavern's "trim" export: no slashes, so no flags (first match, `.` stops at newline).
    ext = {"regex_scripts": [st("trim", r"([.!?]|\.{3})(?!.*[.!?]|\.{3}).*$", "$1", [2])]}
    assert run(ext, "안녕. 좋아! 그런데 음", Stage.OUTPUT) == "안녕. 좋아!"
    assert run(ext, "안녕. 좋아! 그런데 음", Stage.INPUT, role="user") == "안녕. 좋아! 그런데 음"


def test_input_script_changes_the_players_line_only() -> None:
    ext = {"regex_scripts": [st("존댓말", "/반말/g", "존댓말", [1])]}
    assert run(ext, "반말 반말", Stage.INPUT, role="user") == "존댓말 존댓말"
    assert run(ext, "반말", Stage.OUTPUT) == "반말"


def test_display_only_script_runs_for_display_and_nowhere_else() -> None:
    ext = {
        "regex_scripts": [
            st("상태창", "/<status>(.*?)</status>/gs", "[상태: $1]", [2], markdownOnly=True)
        ]
    }
    text = "안녕<status>체력 10</status>"
    assert run(ext, text, Stage.DISPLAY, depth=0) == "안녕[상태: 체력 10]"
    assert run(ext, text, Stage.OUTPUT) == text
    assert run(ext, text, Stage.PROMPT, depth=0) == text


def test_prompt_only_script_respects_depth_bounds() -> None:
    ext = {
        "regex_scripts": [
            st("지우기", r"/<Analysis>[\s\S]*?<\/Analysis>/g", "", [2], promptOnly=True, minDepth=2)
        ]
    }
    text = "<Analysis>생각</Analysis>대답"
    assert run(ext, text, Stage.PROMPT, depth=0) == text
    assert run(ext, text, Stage.PROMPT, depth=1) == text
    assert run(ext, text, Stage.PROMPT, depth=5) == "대답"
    assert run(ext, text, Stage.OUTPUT) == text
    bounded = {"regex_scripts": [st("최근만", "/대답/g", "답", [2], promptOnly=True, maxDepth=0)]}
    assert run(bounded, "대답", Stage.PROMPT, depth=0) == "답"
    assert run(bounded, "대답", Stage.PROMPT, depth=1) == "대답"


def test_script_both_display_and_prompt_only_runs_in_both() -> None:
    ext = {"regex_scripts": [st("둘다", "/x/g", "y", [2], markdownOnly=True, promptOnly=True)]}
    assert run(ext, "x", Stage.DISPLAY, depth=0) == "y"
    assert run(ext, "x", Stage.PROMPT, depth=0) == "y"
    assert run(ext, "x", Stage.OUTPUT) == "x"


def test_named_groups_match_macro_and_trim_strings() -> None:
    ext = {
        "regex_scripts": [
            st(
                "체력",
                "/(?<hp>\\d+)HP/g",
                "{{char}}의 체력 $<hp> ({{match}}) {{user}}",
                [2],
                trimStrings=["0"],
            )
        ]
    }
    assert run(ext, "10HP", Stage.OUTPUT) == "민지의 체력 1 (1HP) 철수"


def test_substitute_regex_puts_names_in_the_pattern() -> None:
    ext = {"regex_scripts": [st("이름", "/{{char}}:/g", "", [2], substituteRegex=1)]}
    assert run(ext, "민지: 안녕", Stage.OUTPUT) == " 안녕"


def test_disabled_script_never_runs_but_is_counted() -> None:
    ext = {"regex_scripts": [st("꺼짐", "/a/g", "b", [2], disabled=True)]}
    assert run(ext, "a", Stage.OUTPUT) == "a"
    assert script_count(ext) == 1


def test_broken_pattern_is_reported_and_leaves_the_text() -> None:
    ext = {"regex_scripts": [st("깨짐", "/(unclosed/g", "x", [2]), st("멀쩡", "/a/g", "b", [2])]}
    report = ScriptRun()
    assert run(ext, "a(unclosed", Stage.OUTPUT, run=report) == "b(unclosed"
    assert report.changed == ["멀쩡"]
    assert report.failed[0][0] == "깨짐" and "invalid pattern" in report.failed[0][1]


def test_hostile_pattern_runs_out_of_time_and_is_reported(caplog) -> None:
    ext = {"regex_scripts": [st("폭주", "/(x+x+)+y/g", "", [2]), st("뒤", "/^x/", "z", [2])]}
    report = ScriptRun()
    out = run(ext, "x" * 5000, Stage.OUTPUT, run=report)
    assert out == "z" + "x" * 4999  # the scripts after it still ran
    assert report.failed == [("폭주", "ran out of time")]
    assert "card script '폭주' (output) left the text as it was: ran out of time" in caplog.text


def test_huge_replacement_and_huge_repeat_are_refused() -> None:
    grows = {"regex_scripts": [st("부풀기", "/./g", "가" * 1000, [2])]}
    report = ScriptRun()
    assert run(grows, "a" * (MAX_RESULT_CHARS // 100), Stage.OUTPUT, run=report) == "a" * (
        MAX_RESULT_CHARS // 100
    )
    assert report.failed == [("부풀기", "result too large")]
    costly = {"regex_scripts": [st("반복", "/a{4294967294}/g", "", [2])]}
    report = ScriptRun()
    run(costly, "a", Stage.OUTPUT, run=report)
    assert report.failed == [("반복", "pattern too large")]


def test_hostile_script_leaves_the_event_loop_free() -> None:
    scripts = card_scripts({"regex_scripts": [st("폭주", "/(x+x+)+y/g", "", [2])]})

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await apply_scripts_async(
            scripts, "x" * 5000, Stage.OUTPUT, role="assistant", char="c", user="u"
        )
        task.cancel()
        return ticks

    assert asyncio.run(main()) > 1


def test_risu_scripts_run_by_type_with_js_replacement_tokens() -> None:
    ext = {
        "risuai": {
            "customScripts": [
                risu("입력", "ㅋ+", "(웃음)", "editinput"),
                risu("출력", "(?<who>민지)는", "$<who>가 $1!$$", "editoutput"),
                risu("표시", "HP", "체력$n{{char}}", "editdisplay"),
                risu("프롬프트", "<img>", "", "editprocess"),
                risu("번역", "a", "b", "edittrans"),
                risu("구분선", "", "", "editoutput"),
            ]
        }
    }
    assert run(ext, "ㅋㅋㅋ 좋아", Stage.INPUT, role="user") == "(웃음) 좋아"
    assert run(ext, "민지는 웃었다", Stage.OUTPUT) == "민지가 민지!$ 웃었다"
    assert run(ext, "HP 5", Stage.DISPLAY, depth=0) == "체력\n민지 5"
    assert run(ext, "<img>안녕", Stage.PROMPT, depth=3) == "안녕"
    assert script_count(ext) == 6
    scripts = card_scripts(ext)
    assert [s.inactive != "" for s in scripts] == [False, False, False, False, True, True]


def test_risu_flags_and_order() -> None:
    ext = {
        "risuai": {
            "customScripts": [
                risu("첫째", "a", "b", "editoutput", ableFlag=True, flag="i"),
                risu("나중", "b", "c", "editoutput", ableFlag=True, flag="g<order 1>"),
                risu("먼저", "A", "x", "editoutput", ableFlag=True, flag="g<order 5>"),
            ]
        }
    }
    # Highest order first: A->x, then b->c, then (non-global, case-insensitive) a->b.
    assert run(ext, "AaAa", Stage.OUTPUT) == "xbxa"


def test_prompt_view_of_a_history_counts_depth_from_the_newest_message() -> None:
    ext = {
        "regex_scripts": [
            st("오래된 것 줄이기", "/[\\s\\S]+/", "(생략)", [1, 2], promptOnly=True, minDepth=2)
        ]
    }
    history = [
        ("user", "첫 말"),
        ("assistant", "첫 답"),
        ("user", "둘째 말"),
        ("assistant", "둘째 답"),
    ]
    seen = apply_to_history(card_scripts(ext), history, char="민지", user="철수")
    assert seen == ["(생략)", "(생략)", "둘째 말", "둘째 답"]


def test_a_hostile_script_fails_once_for_a_whole_history() -> None:
    scripts = card_scripts({"regex_scripts": [st("폭주", "/(x+x+)+y/g", "", [2], promptOnly=True)]})
    report = ScriptRun()
    history = [("assistant", "x" * 3000)] * 5
    assert apply_to_history(scripts, history, char="c", user="u", run=report) == ["x" * 3000] * 5
    assert report.failed == [("폭주", "ran out of time")]


def test_the_inspector_lists_scripts_that_ran_and_failed() -> None:
    report = PromptReport(budget=100, context_size=200, max_new_tokens=50)
    assert "card scripts" not in report.to_text()
    report.scripts_ran = ["상태창 숨기기"]
    report.scripts_failed = ["폭주: ran out of time"]
    assert "card scripts: 상태창 숨기기; failed: 폭주: ran out of time" in report.to_text()


@pytest.mark.parametrize("order", ["²", "--5", "9" * 5000, "1e3"])
def test_a_risu_order_that_is_no_number_leaves_the_script_unordered(order: str) -> None:
    ext = {
        "risuai": {
            "customScripts": [
                risu("첫째", "a", "b", "editoutput", ableFlag=True, flag=f"g<order {order}>"),
                risu("먼저", "b", "c", "editoutput", ableFlag=True, flag="g<order 5>"),
            ]
        }
    }
    assert run(ext, "ab", Stage.OUTPUT) == "bc"  # b->c first (order 5), then a->b
