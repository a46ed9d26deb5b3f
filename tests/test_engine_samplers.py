"""The roleplay samplers: DRY and XTC on hand-built scores, parameter validation, and min-p,
DRY and XTC through the embedded engine with the tiny model."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from synatra_bot.engine.base import DRY_SEQUENCE_BREAKERS, SamplingParams
from synatra_bot.engine.samplers import (
    DRYLogitsProcessor,
    XTCLogitsWarper,
    breaker_ids,
    sampler_processors,
    xtc_generator,
)
from synatra_bot.engine.transformers_engine import TransformersEngine
from synatra_bot.tokenizer import IM_END, IM_START

PROMPT = (
    f"{IM_START}system\n너는 숲속 마을의 여관 주인이야.{IM_END}\n"
    f"{IM_START}user\n오늘 밤 묵을 방이 있나요?{IM_END}\n{IM_START}assistant\n"
)
VOCAB = 40


def dry(**kwargs) -> DRYLogitsProcessor:
    options = {"multiplier": 1.0, "base": 2.0, "allowed_length": 2, "breaker_ids": ()}
    return DRYLogitsProcessor(**(options | kwargs))


def apply(processor, context: list[list[int]], scores: torch.Tensor | None = None) -> torch.Tensor:
    if scores is None:
        scores = torch.zeros(len(context), VOCAB)
    return processor(torch.tensor(context), scores)


def penalties(result: torch.Tensor) -> dict[int, float]:
    """The tokens whose score DRY lowered from 0, and by how much."""
    return {i: -float(v) for i, v in enumerate(result[0]) if v != 0}


# ---------------------------------------------------------------------------- DRY


def test_dry_penalises_the_token_that_would_extend_a_repeat() -> None:
    # "5 6 7" ends the context and was followed by 8 before: 8 would make the repeat 4 long.
    result = apply(dry(), [[5, 6, 7, 8, 9, 5, 6, 7]])
    assert penalties(result) == {8: 1.0 * 2.0 ** (3 - 2)}


def test_dry_penalty_grows_exponentially_with_the_repeat_length() -> None:
    short = penalties(apply(dry(), [[1, 2, 3, 20, 9, 1, 2, 3]]))[20]
    long = penalties(apply(dry(), [[1, 2, 3, 4, 5, 20, 9, 1, 2, 3, 4, 5]]))[20]
    assert (short, long) == (2.0, 8.0)


def test_dry_leaves_repeats_up_to_the_allowed_length_alone() -> None:
    assert penalties(apply(dry(allowed_length=3), [[5, 6, 8, 9, 5, 6]])) == {}
    assert penalties(apply(dry(allowed_length=2), [[5, 6, 8, 9, 5, 6]])) == {8: 1.0}


def test_dry_sequence_breakers_stop_the_match() -> None:
    context = [[5, 6, 7, 8, 9, 5, 6, 7]]
    # 6 is a breaker: the repeat that ends the context is only "7", too short.
    assert penalties(apply(dry(breaker_ids={6}), context)) == {}
    # A context that ends in a breaker starts a fresh match: nothing to penalise.
    assert penalties(apply(dry(breaker_ids={7}), context)) == {}
    # A breaker that followed the repeat before is never penalised itself.
    assert penalties(apply(dry(breaker_ids={8}), context)) == {}


def test_dry_takes_the_longest_repeat_per_token_and_penalises_every_follower() -> None:
    context = [[1, 2, 30, 7, 1, 2, 31, 8, 0, 1, 2, 30, 9, 4, 1, 2]]
    result = penalties(apply(dry(), context))
    assert result == {30: 1.0, 31: 1.0}
    # A longer earlier copy followed by 30 raises only 30's penalty.
    context = [[3, 1, 2, 30, 7, 1, 2, 31, 8, 3, 1, 2]]
    assert penalties(apply(dry(), context)) == {30: 2.0, 31: 1.0}


def test_dry_only_looks_back_penalty_last_n_tokens() -> None:
    context = [[5, 6, 8, 0, 0, 0, 9, 5, 6]]
    assert penalties(apply(dry(), context)) == {8: 1.0}
    assert penalties(apply(dry(penalty_last_n=5), context)) == {}


def test_dry_rows_of_a_batch_are_independent() -> None:
    result = apply(dry(), [[5, 6, 8, 9, 5, 6], [1, 2, 3, 4, 5, 6]])
    assert float(result[0, 8]) == -1.0
    assert torch.count_nonzero(result[1]) == 0


def test_dry_penalty_is_bounded_for_very_long_repeats() -> None:
    loop = list(range(1, 11)) * 30
    result = apply(dry(base=1.75, multiplier=0.8), [loop])
    assert math.isfinite(float(result[0].min()))
    assert float(result[0, 1]) < -1e6


def test_dry_sees_a_repeated_korean_phrase_in_real_tokens(tokenizer) -> None:
    phrase = tokenizer.encode("오늘 날씨가", add_special_tokens=False)
    ids = tokenizer.encode("오늘 날씨가 좋네요. 오늘 날씨가", add_special_tokens=False)
    assert ids[-len(phrase) :] == phrase
    follower = ids[len(phrase)]  # what came after the phrase the first time
    breakers = breaker_ids(tokenizer, DRY_SEQUENCE_BREAKERS)
    processor = dry(multiplier=0.8, base=1.75, breaker_ids=breakers)
    scores = processor(torch.tensor([ids]), torch.zeros(1, len(tokenizer)))
    lowered = torch.nonzero(scores[0]).flatten().tolist()
    assert lowered == [follower]
    assert float(scores[0, follower]) == pytest.approx(-0.8 * 1.75 ** (len(phrase) - 2))


def test_dry_does_not_penalise_closing_a_repeated_action(tokenizer) -> None:
    ids = tokenizer.encode("*웃으며* 안녕! *웃으며", add_special_tokens=False)
    close = tokenizer.convert_tokens_to_ids("*")
    breakers = breaker_ids(tokenizer, DRY_SEQUENCE_BREAKERS)
    without_breakers = dry(allowed_length=6).match_lengths(ids)
    assert close in without_breakers
    assert dry(allowed_length=6, breaker_ids=breakers).match_lengths(ids) == {}


def test_breaker_strings_become_the_token_ids_that_spell_them(tokenizer) -> None:
    def pieces(text: str) -> set[str]:
        return set(tokenizer.convert_ids_to_tokens(sorted(breaker_ids(tokenizer, [text]))))

    assert pieces("\n") == {"<0x0A>"}  # not the lone "▁" SentencePiece puts before it
    assert pieces(":") == {"▁:", ":"}
    assert pieces('"') == {'▁"', '"'}
    assert pieces("*") == {"▁*", "*"}


# ---------------------------------------------------------------------------- XTC


def logits(probs: list[float]) -> torch.Tensor:
    return torch.tensor([probs]).log()


def xtc(probability: float = 1.0, threshold: float = 0.15, **kwargs) -> XTCLogitsWarper:
    return XTCLogitsWarper(
        threshold=threshold, probability=probability, generator=xtc_generator(0), **kwargs
    )


def kept(result: torch.Tensor) -> list[int]:
    return torch.nonzero(torch.isfinite(result[0])).flatten().tolist()


def test_xtc_removes_every_top_choice_but_the_least_likely_when_it_fires() -> None:
    scores = logits([0.35, 0.25, 0.2, 0.1, 0.06, 0.04])
    result = xtc()(torch.zeros(1, 1, dtype=torch.long), scores)
    assert kept(result) == [2, 3, 4, 5]
    assert torch.equal(result[0, 2:], scores[0, 2:])


def test_xtc_does_nothing_with_a_single_top_choice() -> None:
    scores = logits([0.6, 0.1, 0.1, 0.1, 0.1])
    assert torch.equal(xtc()(torch.zeros(1, 1, dtype=torch.long), scores), scores)


def test_xtc_with_probability_zero_never_fires() -> None:
    scores = logits([0.35, 0.25, 0.2, 0.1, 0.06, 0.04])
    processor = xtc(probability=0.0)
    for _ in range(20):
        assert torch.equal(processor(torch.zeros(1, 1, dtype=torch.long), scores), scores)


def test_xtc_leaves_the_choice_to_stop_alone() -> None:
    scores = logits([0.35, 0.25, 0.2, 0.1, 0.06, 0.04])
    processor = xtc(protected_ids={1})
    assert torch.equal(processor(torch.zeros(1, 1, dtype=torch.long), scores), scores)


def test_xtc_fires_at_its_probability_reproducibly_from_a_seed() -> None:
    scores = logits([0.35, 0.25, 0.2, 0.1, 0.06, 0.04])

    def pattern(seed: int) -> list[bool]:
        processor = XTCLogitsWarper(threshold=0.15, probability=0.5, generator=xtc_generator(seed))
        ids = torch.zeros(1, 1, dtype=torch.long)
        return [not torch.isfinite(processor(ids, scores)[0, 0]) for _ in range(64)]

    first = pattern(3)
    assert first == pattern(3)
    assert 10 < sum(first) < 54  # it fires on some tokens, not all


# ---------------------------------------------------------------------------- parameters


def test_default_params_turn_every_roleplay_sampler_off(tokenizer) -> None:
    params = SamplingParams()
    assert (params.min_p, params.dry_on, params.xtc_on) == (0.0, False, False)
    assert len(sampler_processors(params, tokenizer)) == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_p", -0.1),
        ("min_p", 1.5),
        ("min_p", float("nan")),
        ("dry_multiplier", -1.0),
        ("dry_base", 0.9),
        ("dry_allowed_length", 0),
        ("dry_penalty_last_n", -1),
        ("dry_sequence_breakers", ("\n", "")),
        ("xtc_threshold", 0.0),
        ("xtc_threshold", 1.2),
        ("xtc_probability", -0.5),
        ("xtc_probability", 2.0),
    ],
)
def test_out_of_range_sampler_values_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be"):
        SamplingParams(**{field: value})  # type: ignore[arg-type]


def test_breakers_given_as_a_list_are_stored_as_a_tuple() -> None:
    params = SamplingParams(dry_sequence_breakers=["\n", "「"])  # type: ignore[arg-type]
    assert params.dry_sequence_breakers == ("\n", "「")
    hash(params)


def test_sampler_processors_follow_the_params(tokenizer) -> None:
    params = SamplingParams(dry_multiplier=0.8, xtc_probability=0.5, seed=1)
    dry_processor, xtc_processor = sampler_processors(params, tokenizer)
    assert isinstance(dry_processor, DRYLogitsProcessor)
    assert isinstance(xtc_processor, XTCLogitsWarper)
    # The stop ids break DRY matches and XTC never removes them.
    assert set(params.stop_ids) <= dry_processor.breakers
    assert xtc_processor.protected == set(params.stop_ids)


# ---------------------------------------------------------------------------- embedded engine


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    engine = TransformersEngine(str(tiny_model_dir), context_size=1024)
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


async def reply(engine: TransformersEngine, params: SamplingParams, request_id: str) -> str:
    return "".join([d async for d in engine.stream(PROMPT, params, request_id=request_id)])


async def test_a_reply_with_min_p_dry_and_xtc_on(engine) -> None:
    params = SamplingParams(
        max_new_tokens=12, min_p=0.05, dry_multiplier=0.8, xtc_probability=0.5, xtc_threshold=0.1
    )
    text = await reply(engine, params, "samplers")
    assert text
    assert IM_END not in text and IM_START not in text
    assert engine.health().ok


async def test_min_p_one_keeps_only_the_top_token_so_any_seed_gives_the_greedy_reply(
    engine,
) -> None:
    greedy = await reply(engine, SamplingParams(max_new_tokens=10, temperature=0, seed=1), "g")
    for seed in (None, 2, 3):
        params = SamplingParams(max_new_tokens=10, temperature=1.5, min_p=1.0, seed=seed)
        assert await reply(engine, params, f"min-p-{seed}") == greedy
    # Without min-p those seeds sample something else.
    params = SamplingParams(max_new_tokens=10, temperature=1.5, seed=2)
    assert await reply(engine, params, "no-min-p") != greedy


async def test_a_seeded_dry_and_xtc_reply_repeats_exactly(engine) -> None:
    # The tiny random model is nearly uniform (about 3e-5 a token): at 5e-5 a few dozen tokens
    # are top choices and the stop ids are not, so XTC acts whenever it fires and the reply
    # depends on XTC's own random source.
    params = SamplingParams(
        max_new_tokens=16,
        seed=11,
        dry_multiplier=0.8,
        xtc_threshold=5e-5,
        xtc_probability=0.5,
    )
    first = await reply(engine, params, "seeded-1")
    second = await reply(engine, params, "seeded-2")
    assert first and first == second
    plain = SamplingParams(max_new_tokens=16, seed=11, dry_multiplier=0.8)
    assert await reply(engine, plain, "seeded-plain") != first


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=400, min_p=0.05),
        SamplingParams(max_new_tokens=400, dry_multiplier=0.8),
        SamplingParams(max_new_tokens=400, xtc_probability=0.5),
    ],
    ids=["min_p", "dry", "xtc"],
)
async def test_roleplay_samplers_take_the_single_stream_lane(engine, params) -> None:
    # Continuous batching would silently ignore them; the single-stream lane applies them.
    stream = engine.stream(PROMPT, params, request_id="lane")
    assert await anext(stream)
    assert "lane" not in engine.busy_request_ids()
    await stream.aclose()


def test_dry_keeps_each_rows_ids_from_step_to_step_and_starts_over_on_other_ids() -> None:
    processor = dry(multiplier=0.8, base=1.75)
    loop = [5, 6, 7, 8, 5, 6, 7]
    stepwise = [processor(torch.tensor([loop[:n]]), torch.zeros(1, 10)) for n in range(2, 8)]
    for n, scores in zip(range(2, 8), stepwise, strict=True):
        assert torch.equal(
            scores, dry(multiplier=0.8, base=1.75)(torch.tensor([loop[:n]]), torch.zeros(1, 10))
        )
    # Other ids of the same shape are read afresh, not taken for the previous call's.
    other = [9, 9, 9, 9, 9, 9, 9, 5]
    assert torch.equal(
        processor(torch.tensor([other]), torch.zeros(1, 10)),
        dry(multiplier=0.8, base=1.75)(torch.tensor([other]), torch.zeros(1, 10)),
    )
