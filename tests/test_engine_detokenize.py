"""Streamed text is whole characters even where Mistral's tokenizer falls back to bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synatra_bot.engine.detokenize import IncrementalDetokenizer, StopStringFilter, reply_so_far
from synatra_bot.prompt.builder import HistoryMessage, PromptBuilder, PromptOptions
from synatra_bot.prompt.cards import CharacterCard
from synatra_bot.tokenizer import EOS_ID, IM_END_ID, IM_START_ID


@pytest.fixture
def builder(tokenizer) -> PromptBuilder:
    return PromptBuilder(tokenizer)


KOREAN = "안녕하세요! 오늘 날씨가 정말 좋네요. 뷁 꽦 똠방각하 🙂 *웃으며 손을 흔든다*"


def stream_one_by_one(tokenizer, ids: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.add([token_id]) for token_id in ids]
    deltas.append(detokenizer.flush())
    return [d for d in deltas if d]


def test_hangul_byte_fallback_is_really_exercised(tokenizer) -> None:
    pieces = tokenizer.convert_ids_to_tokens(
        tokenizer.encode("안녕하세요", add_special_tokens=False)
    )
    assert "<0xEB>" in pieces


def test_deltas_are_whole_characters_with_korean_byte_fallback(tokenizer) -> None:
    ids = tokenizer.encode(KOREAN, add_special_tokens=False)
    deltas = stream_one_by_one(tokenizer, ids)
    assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(deltas) == KOREAN


@settings(max_examples=60, deadline=None)
@given(
    st.text(
        alphabet=st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3)
        | st.sampled_from(" .!?가a🙂"),
        min_size=1,
        max_size=30,
    )
)
def test_any_korean_text_streams_without_broken_syllables(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    deltas = stream_one_by_one(tokenizer, ids)
    assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)


def test_stop_ids_never_reach_the_text(tokenizer) -> None:
    ids = tokenizer.encode("좋아요", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer)
    text = detokenizer.add([*ids, IM_END_ID, IM_START_ID, EOS_ID]) + detokenizer.flush()
    assert text == "좋아요"
    assert "<|im_end|>" not in text and "</s>" not in text


def test_a_lone_invalid_byte_is_released_at_the_end(tokenizer) -> None:
    byte_id = tokenizer.convert_tokens_to_ids("<0xEB>")
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.add([byte_id]) == ""
    assert detokenizer.flush() == "\ufffd"


def test_stop_string_split_across_deltas_is_cut() -> None:
    stops = StopStringFilter(["<|im_end|>"])
    shown = [stops.feed(d) for d in ["안녕", "하세요<|im", "_end|>", "이건 안 보임"]]
    assert "".join(shown) + stops.flush() == "안녕하세요"
    assert stops.stopped


def test_text_resembling_a_stop_string_prefix_is_released() -> None:
    stops = StopStringFilter(["<|im_end|>"])
    shown = stops.feed("a <|im") + stops.feed(" 아님")
    assert shown + stops.flush() == "a <|im 아님"
    assert not stops.stopped


def continued(tokenizer, before: str, after: str) -> str:
    """The text a reply going on from `before` shows for `after`'s ids."""
    context = tokenizer.encode(before, add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer, context=context)
    new_ids = tokenizer.encode(before + after, add_special_tokens=False)[len(context) :]
    deltas = [detokenizer.add([token_id]) for token_id in new_ids]
    deltas.append(detokenizer.flush())
    assert detokenizer.token_count == len(new_ids)
    return "".join(deltas)


def test_a_continuations_first_space_survives(tokenizer) -> None:
    first = tokenizer.convert_ids_to_tokens(tokenizer.encode(" è", add_special_tokens=False))
    assert first == ["▁è"]
    assert continued(tokenizer, "message", " è") == " è"
    # Alone, SentencePiece drops the space of the first piece it decodes.
    assert stream_one_by_one(tokenizer, tokenizer.encode(" è", add_special_tokens=False)) == ["è"]


def test_a_korean_continuation_keeps_its_space_and_whole_syllables(tokenizer) -> None:
    after = " 반가워요. 안녕하세요!"
    ids = tokenizer.encode("안녕하세요" + after, add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(ids)[8] == "▁"
    assert continued(tokenizer, "안녕하세요", after) == after
    # The text before ends in byte-fallback ids: the window still decodes whole characters.
    assert continued(tokenizer, "뷁", " 꽦똠") == " 꽦똠"


def test_reply_so_far_is_the_open_blocks_content(builder, tokenizer) -> None:
    history = [
        HistoryMessage("user", "준", "안녕!", message_id=1),
        HistoryMessage("assistant", "민지", "그러니까 제 message", message_id=2),
    ]
    card = CharacterCard(name="민지", description="", personality="", scenario="")
    options = PromptOptions()
    built = builder.build(
        card=card, history=history, user_name="준", options=options, continue_last=True
    )
    so_far = reply_so_far(tokenizer, built.input_ids)
    assert so_far == list(built.input_ids[-len(so_far) :])
    assert tokenizer.decode(so_far) == "그러니까 제 message"
    fresh = builder.build(card=card, history=history, user_name="준", options=options)
    assert reply_so_far(tokenizer, fresh.input_ids) == []
    assert reply_so_far(tokenizer, [*fresh.input_ids, IM_END_ID]) == []
