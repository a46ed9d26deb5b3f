"""The batched static-cache lane: replies decoded together write exactly what generate() writes
alone, whenever they join; cancelling one leaves the others alone; a failed step fails only the
lane's replies; more replies than rows go to continuous batching. On the CPU with the tiny
model; the top-k/top-p sampler against transformers' warpers."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from synatra_bot.engine.base import SamplingParams
from synatra_bot.engine.batched_lane import BatchedLane, LaneJob
from synatra_bot.engine.samplers import TopKTopPWarper, pick_token, top_k_top_p
from synatra_bot.engine.transformers_engine import (
    DEFAULT_BATCH_SLOTS,
    TransformersEngine,
    batched_lane_slots,
)
from synatra_bot.errors import GenerationInterrupted
from tests.engine_helpers import wait_until
from tests.model_fixtures import FailingSteps
from tests.test_engine_transformers import PROMPT, _engine_from_env, collect

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=16, stop_ids=())


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    engine = TransformersEngine(str(tiny_model_dir), context_size=1024, recovery_backoff_s=0.01)
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


def _generated(model, ids: list[int], new_tokens: int) -> list[int]:
    """What plain greedy generate() writes after `ids`."""
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
        )
    return out[0, len(ids) :].tolist()


def _prompts(engine: TransformersEngine, count: int) -> list[list[int]]:
    """Prompts of different lengths, so that rows sit at different positions."""
    return [engine.tokenizer.encode(PROMPT + "안녕 " * (3 * n)) for n in range(count)]


class _Batches:
    """A forward hook noting how many rows each forward pass had."""

    def __init__(self, model) -> None:
        self.sizes: list[int] = []
        self._handle = model.register_forward_hook(self)

    def __call__(self, module, args, output) -> None:
        self.sizes.append(int(output.logits.shape[0]))

    def remove(self) -> None:
        self._handle.remove()


def test_rows_joining_at_different_steps_write_what_generate_writes(engine) -> None:
    """Each reply joins the lane from inside the previous one's delivery (on the lane's thread),
    so the step it joins at is fixed: the second after the first's 3rd token, the third after
    the second's 2nd."""
    model = engine.model
    prompts = _prompts(engine, 3)
    budgets = [16, 12, 9]
    lane = BatchedLane(model, slots=3, context=1024)
    tokens: list[list[int]] = [[], [], []]
    done = [threading.Event() for _ in prompts]
    batches = _Batches(model)

    def job(index: int) -> LaneJob:
        def deliver(new_ids: list[int], finished: bool) -> None:
            tokens[index].extend(new_ids)
            if index < 2 and len(tokens[index]) == 3 - index:
                assert lane.try_submit(job(index + 1))
            if finished:
                done[index].set()

        return LaneJob(
            request_id=f"r{index}",
            prompt=prompts[index],
            max_new_tokens=budgets[index],
            stop_ids=frozenset(),
            temperature=0.0,
            top_k=0,
            top_p=1.0,
            deliver=deliver,
            fail=lambda: done[index].set(),
            cancelled=threading.Event(),
        )

    try:
        assert lane.try_submit(job(0))
        for event in done:
            assert event.wait(60)
    finally:
        batches.remove()
        lane.close()
    for index, prompt in enumerate(prompts):
        assert tokens[index] == _generated(model, prompt, budgets[index])
    assert max(batches.sizes) == 3  # all three decoded in one forward at some step
    assert 2 in batches.sizes


async def test_concurrent_replies_through_the_engine_are_exactly_what_generate_writes(
    engine,
) -> None:
    prompts = _prompts(engine, 4)
    replies = await asyncio.gather(
        *(collect(engine, prompt, GREEDY, f"함께{n}") for n, prompt in enumerate(prompts))
    )
    for prompt, deltas in zip(prompts, replies, strict=True):
        want = engine.tokenizer.decode(_generated(engine.model, prompt, GREEDY.max_new_tokens))
        assert "".join(deltas) == want
    assert engine.busy_request_ids() == set()


async def test_cancelling_one_reply_mid_stream_leaves_the_others_whole(engine) -> None:
    prompts = _prompts(engine, 2)
    long = SamplingParams(temperature=0.0, max_new_tokens=400, stop_ids=())
    doomed = engine.stream(prompts[0], long, request_id="그만")
    await anext(doomed)
    kept = asyncio.create_task(collect(engine, prompts[1], GREEDY, "계속"))
    await wait_until(lambda: "계속" in engine.busy_request_ids())
    await engine.cancel("그만")
    with pytest.raises(GenerationInterrupted):
        async for _ in doomed:
            pass
    want = engine.tokenizer.decode(_generated(engine.model, prompts[1], GREEDY.max_new_tokens))
    assert "".join(await kept) == want
    await wait_until(lambda: engine.busy_request_ids() == set())


async def test_replies_beyond_the_lanes_rows_go_to_continuous_batching(tiny_model_dir) -> None:
    engine = TransformersEngine(str(tiny_model_dir), context_size=1024, batch_slots=1)
    await engine.start()
    try:
        assert engine.batched_lane_slots == 1
        prompts = _prompts(engine, 2)
        first = engine.stream(prompts[0], GREEDY, request_id="줄")
        opening = await anext(first)  # it holds the lane's only row
        second = asyncio.create_task(collect(engine, prompts[1], GREEDY, "넘침"))
        await wait_until(lambda: "넘침" in engine._requests)
        assert engine._requests["줄"].batched_lane
        assert not engine._requests["넘침"].batched_lane
        assert engine._requests["넘침"].manager is not None
        rest = [d async for d in first]
        # Both run at once on two threads, so their float sums may split differently from a
        # lone generate(): only that both replies are whole is checked here.
        assert opening + "".join(rest) and await second
    finally:
        await engine.close()


async def test_a_failed_lane_step_fails_its_replies_and_the_next_reply_works(engine) -> None:
    steps = FailingSteps(engine.model, times=1)
    try:
        with pytest.raises(GenerationInterrupted) as caught:
            await collect(engine, PROMPT, SamplingParams(max_new_tokens=8), "깨짐")
        assert caught.value.key == "engine.model_failed"
        health = engine.health()
        assert health.ok and health.failures == 1 and health.state == "degraded"
        assert await collect(engine, PROMPT, SamplingParams(max_new_tokens=8), "다시")
        assert engine.health().failures == 0 and engine.health().state == "ok"
    finally:
        steps.remove()


@pytest.mark.parametrize("rows", [0, 3])
async def test_batch_slots_sets_the_lanes_rows(tiny_model_dir, rows) -> None:
    """BATCH_SLOTS reaches the engine; 0 turns the lane off, so a reply goes to CB."""
    engine = _engine_from_env(tiny_model_dir, BATCH_SLOTS=str(rows))
    await engine.start()
    try:
        assert engine.batched_lane_slots == rows
        reply = engine.stream(PROMPT, GREEDY, request_id="행")
        assert await anext(reply)
        assert engine._requests["행"].batched_lane is bool(rows)
        async for _ in reply:  # to its end
            pass
    finally:
        await engine.close()


def test_the_lane_serves_with_sdpa_and_a_context_only() -> None:
    assert batched_lane_slots(None, "sdpa", 4096) == DEFAULT_BATCH_SLOTS
    assert batched_lane_slots(3, "sdpa", 4096) == 3
    assert batched_lane_slots(None, "sdpa", None) == 0
    assert batched_lane_slots(None, "flash_attention_2", 4096) == 0
    assert batched_lane_slots(None, "paged|eager", 4096) == 0
    windowed = SimpleNamespace(sliding_window=4096, layer_types=None)
    assert batched_lane_slots(None, "sdpa", 4096, windowed) == DEFAULT_BATCH_SLOTS
    assert batched_lane_slots(None, "sdpa", 8192, windowed) == 0
    mixed = SimpleNamespace(
        sliding_window=None, layer_types=["full_attention", "sliding_attention"]
    )
    assert batched_lane_slots(None, "sdpa", 4096, mixed) == 0


# --- top-k / top-p -----------------------------------------------------------------------------


def _warped(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """What transformers' warpers leave of one row, as generate() applies them."""
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers(None, logits[None].clone())[0]


SETTINGS = [
    (0.8, 40, 0.95),
    (1.0, 0, 0.9),
    (0.7, 0, 0.5),
    (1.2, 100, 1.0),
    (0.5, 5, 0.3),
    (1.0, 0, 1.0),
    (1.0, 0, 0.0),
]


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), SETTINGS)
def test_top_k_top_p_keeps_exactly_what_transformers_warpers_keep(
    temperature: float, top_k: int, top_p: float
) -> None:
    for seed in range(40):
        torch.manual_seed(seed)
        logits = torch.randn(32002) * (1 + seed % 5)
        ours = top_k_top_p(logits / temperature, top_k=top_k, top_p=top_p)
        assert torch.equal(ours, _warped(logits, temperature, top_k, top_p))


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), SETTINGS)
def test_the_warper_draws_what_generate_draws_for_the_same_seed(
    temperature: float, top_k: int, top_p: float
) -> None:
    warper = TopKTopPWarper(temperature=temperature, top_k=top_k, top_p=top_p)
    for seed in range(20):
        torch.manual_seed(seed)
        logits = torch.randn(2, 32002) * (1 + seed % 5)
        ours = warper(None, logits.clone())
        theirs = torch.stack([_warped(row, temperature, top_k, top_p) for row in logits])
        draws = [
            torch.multinomial(
                scores.softmax(dim=-1), 1, generator=torch.Generator().manual_seed(seed)
            )
            for scores in (ours, theirs)
        ]
        assert torch.equal(draws[0], draws[1])


def test_a_lane_draw_is_among_the_kept_tokens_as_often_as_their_probability() -> None:
    torch.manual_seed(0)
    logits = torch.randn(32002) * 3
    kept = _warped(logits, 0.8, 40, 0.9)
    probs = kept.softmax(dim=-1)
    generator = torch.Generator().manual_seed(1)
    draws = [
        pick_token(logits, temperature=0.8, top_k=40, top_p=0.9, generator=generator)
        for _ in range(4000)
    ]
    assert set(draws) <= set(torch.nonzero(probs).flatten().tolist())
    best = int(probs.argmax())
    assert abs(draws.count(best) / len(draws) - float(probs[best])) < 0.03


def test_top_k_keeps_ties_with_the_kth_token_as_transformers_does() -> None:
    logits = torch.full((100,), -10.0)
    logits[[3, 7, 9]] = 5.0  # a three-way tie for the best two places
    generator = torch.Generator().manual_seed(0)
    seen = {
        pick_token(logits, temperature=1.0, top_k=2, top_p=1.0, generator=generator)
        for _ in range(60)
    }
    assert seen == {3, 7, 9}


def test_temperature_zero_is_the_argmax() -> None:
    logits = torch.randn(500)
    assert pick_token(logits, temperature=0.0, top_k=40, top_p=0.9) == int(logits.argmax())


@pytest.mark.parametrize(("top_k", "top_p"), [(40, 0.9), (0, 0.5)])
async def test_a_seeded_reply_draws_what_generates_own_warpers_draw(engine, top_k, top_p) -> None:
    """A seed sends a reply to the single-stream lane, whose generate() samples through
    TopKTopPWarper instead of transformers' three warpers: the same seed gives the same reply."""
    ids = engine.tokenizer.encode(PROMPT)
    params = SamplingParams(
        temperature=0.9, top_k=top_k, top_p=top_p, max_new_tokens=12, stop_ids=(), seed=7
    )
    text = "".join(await collect(engine, ids, params, f"씨앗{top_k}"))
    torch.manual_seed(7)
    prompt = torch.tensor([ids])
    with torch.inference_mode():
        out = engine.model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=True,
            temperature=0.9,
            top_k=top_k,
            top_p=top_p,
            max_new_tokens=12,
            min_new_tokens=12,
            eos_token_id=[],
            pad_token_id=2,
        )
    assert text == engine.tokenizer.decode(out[0, len(ids) :].tolist())


# --- prefix reuse ------------------------------------------------------------------------------


class _Run:
    """Lane jobs whose tokens are collected, and an event per job for its end."""

    def __init__(self, lane: BatchedLane) -> None:
        self.lane = lane
        self.tokens: dict[str, list[int]] = {}
        self.ended: dict[str, threading.Event] = {}

    def submit(self, name: str, prompt: list[int], budget: int) -> None:
        tokens = self.tokens.setdefault(name, [])
        ended = self.ended.setdefault(name, threading.Event())

        def deliver(new_ids: list[int], finished: bool) -> None:
            tokens.extend(new_ids)
            if finished:
                ended.set()

        assert self.lane.try_submit(
            LaneJob(
                request_id=name,
                prompt=prompt,
                max_new_tokens=budget,
                stop_ids=frozenset(),
                temperature=0.0,
                top_k=0,
                top_p=1.0,
                deliver=deliver,
                fail=ended.set,
                cancelled=threading.Event(),
            )
        )

    def finish(self, name: str, prompt: list[int], budget: int) -> list[int]:
        """Submit one job and wait for its end; its tokens."""
        self.submit(name, prompt, budget)
        return self.wait(name)

    def wait(self, name: str) -> list[int]:
        assert self.ended[name].wait(60)
        return self.tokens[name]


def _turn(engine: TransformersEngine, opening: str, turns: int) -> list[int]:
    """A roleplay-like prompt: `opening` and `turns` lines of history."""
    history = "".join(f"{IM}user\n{n}번째 이야기를 들려줘.\n" for n in range(turns))
    return engine.tokenizer.encode(opening + history)


IM = "<|im_start|>"
OPENING_A = f"{IM}system\n너는 바다의 이야기꾼이야. 파도와 등대에 대해 말해.\n"
OPENING_B = f"{IM}system\nYou narrate a mountain village: snow, bells and bread.\n"


def test_a_second_turn_prefills_only_past_the_first_turns_cache(engine) -> None:
    """The next turn's prompt is the first's prompt, its reply and a new line: it is prefilled
    only past what the kept row holds (the prompt and the reply but its last token), and writes
    exactly what generate() writes for the whole prompt."""
    model = engine.model
    first = _turn(engine, OPENING_A, 6)
    lane = BatchedLane(model, slots=2, context=1024)
    run = _Run(lane)
    inputs: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: inputs.append(int(kwargs["input_ids"].shape[1])),
        with_kwargs=True,
    )
    try:
        reply = run.finish("1턴", first, 10)
        second = first + reply + engine.tokenizer.encode(f"{IM}user\n계속해.\n")
        inputs.clear()
        answer = run.finish("2턴", second, 10)
    finally:
        hook.remove()
        lane.close()
    assert reply == _generated(model, first, 10)
    assert answer == _generated(model, second, 10)
    kept = len(first) + len(reply) - 1  # the reply's last token was never fed back
    assert lane.reused_tokens == kept
    assert inputs[0] == len(second) - kept  # the prefill fed only the rest
    assert all(length == 1 for length in inputs[1:])
    assert len(first) >= 64


def test_a_prompt_that_diverges_midway_reuses_up_to_where_it_parts(engine) -> None:
    model = engine.model
    first = _turn(engine, OPENING_A, 8)
    parted = _turn(engine, OPENING_A, 4) + engine.tokenizer.encode("갑자기 다른 이야기를 하자.")
    shared = next(i for i, (a, b) in enumerate(zip(first, parted, strict=False)) if a != b)
    assert shared >= 64
    lane = BatchedLane(model, slots=2, context=1024)
    run = _Run(lane)
    try:
        run.finish("처음", first, 6)
        answer = run.finish("갈림", parted, 12)
    finally:
        lane.close()
    assert lane.reused_tokens == shared
    assert answer == _generated(model, parted, 12)


def test_a_short_common_prefix_is_prefilled_whole(engine) -> None:
    model = engine.model
    first = _turn(engine, OPENING_A, 8)
    lane = BatchedLane(model, slots=2, context=1024, min_reuse=len(first) + 10)
    run = _Run(lane)
    try:
        reply = run.finish("처음", first, 6)
        answer = run.finish("다음", first + reply, 6)
    finally:
        lane.close()
    assert lane.reused_tokens == 0
    assert answer == _generated(model, first + reply, 6)


def test_a_reply_that_ends_while_another_decodes_is_kept_and_reused(engine) -> None:
    """Two replies decode together; the one in the first row ends first, so the rows swap
    (the other keeps decoding from its new row) and the ended one is kept; its next turn reuses
    it while the other still decodes."""
    model = engine.model
    a, b = _turn(engine, OPENING_A, 5), _turn(engine, OPENING_B, 5)
    lane = BatchedLane(model, slots=3, context=1024)
    run = _Run(lane)
    try:
        run.submit("a", a, 4)
        run.submit("b", b, 40)
        reply_a = run.wait("a")
        follow = a + reply_a + engine.tokenizer.encode("그리고?")
        answer = run.finish("a2", follow, 12)
        reply_b = run.wait("b")
    finally:
        lane.close()
    assert reply_a == _generated(model, a, 4)
    assert reply_b == _generated(model, b, 40)
    assert answer == _generated(model, follow, 12)
    assert lane.reused_tokens == len(a) + len(reply_a) - 1


async def test_a_channels_next_turn_through_the_engine_reuses_its_last_prompt(engine) -> None:
    """Through the engine: turn 2 (turn 1's prompt, its reply and a new line) is prefilled only
    past turn 1's kept row, and its text is what generate() writes for the whole prompt."""
    lane = engine._batched_lane
    first = _turn(engine, f"{IM}system\n너는 숲의 정령이야. 나무와 바람을 노래해.\n", 6)
    reply_text = "".join(await collect(engine, first, GREEDY, "숲1"))
    reply = _generated(engine.model, first, GREEDY.max_new_tokens)
    assert reply_text == engine.tokenizer.decode(reply)
    second = first + reply + engine.tokenizer.encode(f"{IM}user\n더 들려줘.\n")
    before = lane.reused_tokens
    text = "".join(await collect(engine, second, GREEDY, "숲2"))
    assert lane.reused_tokens - before == len(first) + len(reply) - 1
    assert text == engine.tokenizer.decode(_generated(engine.model, second, GREEDY.max_new_tokens))


def test_a_cancelled_reply_keeps_what_it_wrote_for_the_next_turn(engine) -> None:
    """A reply cancelled at its 3rd token leaves its row with the prompt and the tokens fed back
    (all but the last delivered); the next turn reuses exactly that."""
    model = engine.model
    first = _turn(engine, OPENING_B, 6)
    lane = BatchedLane(model, slots=2, context=1024)
    delivered: list[int] = []
    gone = threading.Event()
    cancelled = threading.Event()

    def deliver(new_ids: list[int], finished: bool) -> None:
        delivered.extend(new_ids)
        if len(delivered) == 3:
            cancelled.set()
            gone.set()

    run = _Run(lane)
    try:
        assert lane.try_submit(
            LaneJob(
                request_id="그만",
                prompt=first,
                max_new_tokens=400,
                stop_ids=frozenset(),
                temperature=0.0,
                top_k=0,
                top_p=1.0,
                deliver=deliver,
                fail=gone.set,
                cancelled=cancelled,
            )
        )
        assert gone.wait(60)
        second = first + delivered + engine.tokenizer.encode("그래서?")
        answer = run.finish("다음", second, 8)
    finally:
        lane.close()
    assert delivered == _generated(model, first, 3)
    assert lane.reused_tokens == len(first) + 2
    assert answer == _generated(model, second, 8)


def test_the_least_recently_kept_row_is_evicted_first(engine) -> None:
    """Two rows: A, B and C end in turn, so C takes the place of A (the least recently kept).
    B's next turn reuses B's row, which makes C the least recently kept: A's next turn (prefilled
    whole) takes C's place, and B's third turn still reuses B's row."""
    model = engine.model
    opening_c = f"{IM}system\n사막의 상인이 되어 낙타와 별을 이야기해.\n"
    a, b, c = (_turn(engine, opening, 5) for opening in (OPENING_A, OPENING_B, opening_c))
    lane = BatchedLane(model, slots=2, context=1024)
    run = _Run(lane)
    try:
        reply_a = run.finish("a", a, 4)
        run.finish("b", b, 4)
        run.finish("c", c, 4)
        assert lane.reused_tokens == 0
        run.finish("b2", b, 4)
        assert lane.reused_tokens == len(b) - 1
        again_a = run.finish("a2", a + reply_a, 8)
        assert lane.reused_tokens == len(b) - 1  # A's row was evicted
        again_b = run.finish("b3", b, 8)
        assert lane.reused_tokens == 2 * (len(b) - 1)
        again_c = run.finish("c2", c, 8)
        assert lane.reused_tokens == 2 * (len(b) - 1)  # C's row was evicted
    finally:
        lane.close()
    assert again_a == _generated(model, a + reply_a, 8)
    assert again_b == _generated(model, b, 8)
    assert again_c == _generated(model, c, 8)


def test_a_failed_prefill_on_a_kept_row_drops_the_kept_rows(engine) -> None:
    model = engine.model
    first = _turn(engine, OPENING_A, 6)
    failures: list[int] = []
    lane = BatchedLane(model, slots=2, context=1024, on_failure=lambda: failures.append(1))
    run = _Run(lane)
    try:
        reply = run.finish("처음", first, 5)
        second = first + reply + engine.tokenizer.encode("다음은?")
        steps = FailingSteps(model, times=1)
        try:
            run.finish("깨짐", second, 5)
        finally:
            steps.remove()
        assert failures == [1] and run.tokens["깨짐"] == []
        reused = lane.reused_tokens
        answer = run.finish("다시", second, 5)
        assert lane.reused_tokens == reused  # nothing kept survived the failure
    finally:
        lane.close()
    assert answer == _generated(model, second, 5)


def test_the_lane_prefix_benchmark_reports_turn_two_with_and_without_reuse(
    monkeypatch, capsys
) -> None:
    import json
    import sys

    from benchmarks import lane_prefix

    monkeypatch.setattr(
        sys,
        "argv",
        ["lane_prefix", "--shape", "tiny", "--rounds", "1", "--prompt-tokens", "100"],
    )
    threads = torch.get_num_threads()
    try:
        lane_prefix.main()
    finally:
        torch.set_num_threads(threads)
    report = json.loads(capsys.readouterr().out)
    assert report["turn2_prefilled_tokens"] == {"reuse": 60, "whole": 160}
    assert report["same_greedy_tokens"] == "1/1"
    assert report["turn2_first_token_ms"]["reuse"] > 0
