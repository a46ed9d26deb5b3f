"""Stop strings entered through the real discord.py client and the fake Discord: any text can be
one (one a line in a form, or `\\|` for a bar in the one-line option), and the model's own
control tokens are refused with a clear message instead of being split at their bars."""

from __future__ import annotations

import pytest

from synatra_bot.errors import UserFacingError
from synatra_bot.roleplay.config import (
    parse_stop_lines,
    parse_stop_strings,
    shown_stop_strings,
    stop_lines,
)
from tests.hostile_corpus import RecordingEngine
from tests.test_bot_commands import fill


def form_text(modal: dict) -> str:
    """The text the form's one input opened with."""
    for row in modal["components"]:
        for child in [row.get("component", {}), *row.get("components", [])]:
            if child.get("custom_id"):
                return child.get("value") or ""
    raise AssertionError("the form has no text input")


@pytest.mark.parametrize("token", ["<|im_end|>", "<|im_start|>", "</s>", "<s>"])
def test_control_tokens_are_refused_in_the_option_and_the_form(token):
    for parse, typed in (
        (parse_stop_strings, f"(끝) | {token}"),
        (parse_stop_lines, f"끝\n{token}"),
    ):
        with pytest.raises(UserFacingError) as refused:
            parse(typed)
        assert refused.value.key == "error.stop_string_control"
        assert refused.value.params == {"token": token}


def test_bars_and_backslashes_round_trip_through_option_and_form():
    stops = ["|끝|", "\n###", "a\\b", "[END]"]
    assert parse_stop_strings(shown_stop_strings(stops)) == stops
    assert parse_stop_lines(stop_lines(stops)) == stops
    assert shown_stop_strings(stops) == r"\|끝\| | \n### | a\\b | [END]"
    # Written before bars could be escaped, the old form still reads the same.
    assert parse_stop_strings(r"\n### | (끝) |준:") == ["\n###", "(끝)", "준:"]


async def test_a_control_token_typed_whole_is_refused_not_split(start_bot, tokenizer):
    engine = RecordingEngine("좋아 <3 다음에 또 보자.", tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        refused = await harness.slash(s.moderator, "config stop", strings="<|im_end|>")
        text = await harness.final_text(refused)
        assert refused.ephemeral and "<|im_end|>은(는) 모델의 제어 토큰이라" in text
        shown = await harness.final_text(await harness.slash(s.moderator, "config show"))
        assert "`stop_strings` -" in shown
        reply = await harness.reply_to(s.general, s.members[0], "잘 가!")
        assert reply.content == "좋아 <3 다음에 또 보자."
        assert harness.engine.params[-1].stop_strings == ()


async def test_the_form_takes_one_stop_string_a_line_bars_included(start_bot, tokenizer):
    engine = RecordingEngine("좋아 <3\n|끝| 뒷이야기", tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        opened = await harness.slash(s.moderator, "config stop")
        assert opened.modal is not None and form_text(opened.modal) == ""
        values = fill(opened.modal, **{"한 줄에": "|끝|\n\n(END)\n"})
        submitted = await fake.submit_modal(s.moderator, opened, values)
        await fake.wait_for_response(submitted)
        assert "저장했어요" in await harness.final_text(submitted)

        reply = await harness.reply_to(s.general, s.members[0], "어디로 갈까?")
        assert reply.content == "좋아 <3"
        assert harness.engine.params[-1].stop_strings == ("|끝|", "(END)")
        shown = await harness.final_text(await harness.slash(s.moderator, "config show"))
        assert r"`stop_strings` \|끝\| | (END)" in shown

        # Opened again, the form shows what is in force; a control token there is refused.
        again = await harness.slash(s.moderator, "config stop")
        assert form_text(again.modal) == "|끝|\n(END)"
        values = fill(again.modal, **{"한 줄에": "|끝|\n</s>"})
        refused = await fake.submit_modal(s.moderator, again, values)
        await fake.wait_for_response(refused)
        assert "</s>은(는) 모델의 제어 토큰이라" in await harness.final_text(refused)
        await harness.reply_to(s.general, s.members[0], "그다음은?")
        assert harness.engine.params[-1].stop_strings == ("|끝|", "(END)")


async def test_a_member_cannot_send_the_stop_strings_form(start_bot, tokenizer):
    async with start_bot(engine=RecordingEngine("좋아.", tokenizer=tokenizer)) as harness:
        fake, s = harness.fake, harness.scenario
        opened = await harness.slash(s.moderator, "config stop")
        values = fill(opened.modal, **{"한 줄에": "(끝)"})
        submitted = await fake.submit_modal(s.members[0], opened, values)
        await fake.wait_for_response(submitted)
        assert "관리자만 할 수 있어요" in await harness.final_text(submitted)
        shown = await harness.final_text(await harness.slash(s.moderator, "config show"))
        assert "`stop_strings` -" in shown
