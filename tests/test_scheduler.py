"""The scheduler: one reply per channel, a global cap, rate limits, restart, timeouts, shutdown."""

from __future__ import annotations

import asyncio

import pytest

from synatra_bot.engine.base import SamplingParams
from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.errors import EngineUnavailable, GenerationInterrupted, RateLimited, TurnCancelled
from synatra_bot.roleplay.scheduler import (
    PREEMPTED,
    QueueTicket,
    Scheduler,
    TurnOutcome,
    TurnSlot,
)
from tests.engine_helpers import wait_until
from tests.fakes import FakeClock

REPLY = "안녕하세요, 모험가님. 오늘은 어디로 떠나 볼까요?"
PARAMS = SamplingParams()


async def started(engine: ScriptedEngine) -> ScriptedEngine:
    await engine.start()
    return engine


async def run_turn(scheduler: Scheduler, channel: str, user: str = "u1", **kwargs):
    tickets: list[QueueTicket] = []
    async with scheduler.turn(
        channel_id=channel, user_id=user, on_queued=tickets.append, **kwargs
    ) as slot:
        assert all(ticket.position == 0 for ticket in tickets)  # admitted: out of the queue
        async for _ in slot.stream(f"{channel} 프롬프트", PARAMS):
            pass
    return slot, tickets


async def test_a_turn_streams_and_finishes() -> None:
    engine = await started(ScriptedEngine(REPLY))
    scheduler = Scheduler(engine, max_concurrent=4, turn_timeout_s=60)
    slot, tickets = await run_turn(scheduler, "채널")
    assert slot.outcome is TurnOutcome.FINISHED
    assert slot.text == REPLY
    assert tickets == []  # admitted at once: never queued


async def test_second_turn_in_a_channel_waits_for_the_first() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=0.01))
    scheduler = Scheduler(engine, max_concurrent=4, turn_timeout_s=60)
    first = asyncio.create_task(run_turn(scheduler, "채널"))
    await wait_until(lambda: scheduler.running == 1)
    queued: list[QueueTicket] = []

    async def second_turn():
        async with scheduler.turn(channel_id="채널", user_id="u2", on_queued=queued.append) as slot:
            async for _ in slot.stream("채널 프롬프트", PARAMS):
                pass
        return slot, queued

    second = asyncio.create_task(second_turn())
    await wait_until(lambda: scheduler.waiting == 1)
    assert len(engine.running) == 1
    assert [ticket.position for ticket in queued] == [1]
    (slot1, _), (slot2, _) = await asyncio.gather(first, second)
    assert [ticket.position for ticket in queued] == [0]
    assert slot1.outcome is slot2.outcome is TurnOutcome.FINISHED
    assert engine.finished == ["turn-1-0", "turn-2-0"]


async def test_global_cap_queues_other_channels_with_positions() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=0.01))
    scheduler = Scheduler(engine, max_concurrent=1, turn_timeout_s=60)
    queued: list[QueueTicket] = []
    first = asyncio.create_task(run_turn(scheduler, "채널0", user="u0"))
    await wait_until(lambda: scheduler.running == 1)
    rest = [
        asyncio.create_task(run_turn_queued(scheduler, f"채널{i}", f"u{i}", queued)) for i in (1, 2)
    ]
    await wait_until(lambda: scheduler.waiting == 2)
    assert [ticket.position for ticket in queued] == [1, 2]
    assert [ticket.channel_id for ticket in queued] == ["채널1", "채널2"]
    await first
    await wait_until(lambda: scheduler.waiting == 1)
    assert [ticket.position for ticket in queued] == [0, 1]  # admitted, then next in line
    results = await asyncio.gather(*rest)
    assert [ticket.position for ticket in queued] == [0, 0]
    assert all(slot.outcome is TurnOutcome.FINISHED for slot in results)


async def run_turn_queued(
    scheduler: Scheduler, channel: str, user: str, queued: list[QueueTicket]
) -> TurnSlot:
    async with scheduler.turn(channel_id=channel, user_id=user, on_queued=queued.append) as slot:
        async for _ in slot.stream(f"{channel} 프롬프트", PARAMS):
            pass
    return slot


async def test_the_longest_waiting_turn_of_a_free_channel_goes_first() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=0.01))
    scheduler = Scheduler(engine, max_concurrent=1, turn_timeout_s=60)
    order: list[str] = []

    async def turn(channel: str, user: str) -> None:
        async with scheduler.turn(channel_id=channel, user_id=user) as slot:
            order.append(f"{channel}:{user}")
            async for _ in slot.stream("프롬프트", PARAMS):
                pass

    tasks = [asyncio.create_task(turn("가", "u0"))]
    await wait_until(lambda: scheduler.running == 1)
    for channel, user in (("가", "u1"), ("나", "u2"), ("가", "u3"), ("다", "u4")):
        tasks.append(asyncio.create_task(turn(channel, user)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["가:u0", "가:u1", "나:u2", "가:u3", "다:u4"]


async def test_restart_policy_cancels_the_running_reply_and_its_engine_request() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=0.05))
    scheduler = Scheduler(engine, max_concurrent=4, turn_timeout_s=60)
    first = asyncio.create_task(run_turn(scheduler, "채널"))
    await wait_until(lambda: "turn-1-0" in engine.running)
    slot2, _ = await run_turn(scheduler, "채널", user="u2", policy="restart")
    slot1, _ = await first
    assert slot1.outcome is TurnOutcome.CANCELLED
    assert slot1.cancel_reason == "superseded by a newer message"
    assert engine.cancelled == ["turn-1-0"]
    assert slot2.outcome is TurnOutcome.FINISHED and slot2.text == REPLY


async def test_cancel_channel_stops_the_engine_request_and_drops_waiting_turns() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=0.05))
    scheduler = Scheduler(engine, max_concurrent=4, turn_timeout_s=60)
    first = asyncio.create_task(run_turn(scheduler, "채널"))
    await wait_until(lambda: "turn-1-0" in engine.running)
    waiting = asyncio.create_task(run_turn(scheduler, "채널", user="u2"))
    await wait_until(lambda: scheduler.waiting == 1)
    assert await scheduler.cancel_channel("채널") == 2
    slot1, _ = await first
    assert slot1.outcome is TurnOutcome.CANCELLED
    assert REPLY.startswith(slot1.text) and slot1.text != REPLY
    assert engine.cancelled == ["turn-1-0"]
    with pytest.raises(TurnCancelled):
        await waiting
    assert not scheduler.is_busy("채널")


async def test_per_user_rate_limit_reports_retry_after() -> None:
    clock = FakeClock()
    engine = await started(ScriptedEngine(REPLY))
    scheduler = Scheduler(
        engine, max_concurrent=4, turn_timeout_s=60, user_turns=2, rate_window_s=60, clock=clock
    )
    await run_turn(scheduler, "채널1")
    clock.now += 10
    await run_turn(scheduler, "채널2")
    with pytest.raises(RateLimited) as caught:
        await run_turn(scheduler, "채널3")
    assert caught.value.params["retry_after"] == 50
    await run_turn(scheduler, "채널3", user="다른사람")
    clock.now += 51
    slot, _ = await run_turn(scheduler, "채널3")
    assert slot.outcome is TurnOutcome.FINISHED


async def test_a_scheduler_without_rate_limits_counts_no_turns() -> None:
    engine = await started(ScriptedEngine(REPLY))
    scheduler = Scheduler(
        engine, max_concurrent=4, turn_timeout_s=60, user_turns=1, rate_limited=False
    )
    for n in range(5):
        scheduler.charge("u1", 1)  # a channel's own limit does not count either
        slot, _ = await run_turn(scheduler, f"채널{n}", user_turns=1)
        assert slot.outcome is TurnOutcome.FINISHED


async def test_turn_timeout_ends_the_reply_and_cancels_the_engine_request() -> None:
    clock = FakeClock()
    engine = await started(ScriptedEngine(REPLY))
    scheduler = Scheduler(engine, max_concurrent=4, turn_timeout_s=30, clock=clock)
    async with scheduler.turn(channel_id="채널", user_id="u1") as slot:
        async for _ in slot.stream("프롬프트", PARAMS):
            clock.now += 11
    assert slot.outcome is TurnOutcome.TIMED_OUT
    assert slot.text == REPLY[:6]  # three chunks (1, 2 and 3 characters) fit in 30 s
    assert not engine.running and engine.finished == []


async def test_engine_failure_is_reported_with_partial_text() -> None:
    engine = await started(ScriptedEngine(REPLY, fail_after=3))
    scheduler = Scheduler(engine, max_concurrent=4, turn_timeout_s=60)
    with pytest.raises(GenerationInterrupted):
        await run_turn(scheduler, "채널")
    async with scheduler.turn(channel_id="채널", user_id="u1") as slot:
        with pytest.raises(GenerationInterrupted):
            async for _ in slot.stream("프롬프트", PARAMS):
                pass
    assert slot.outcome is TurnOutcome.FAILED
    assert slot.text == REPLY[:6]
    assert scheduler.running == 0


async def test_leaving_the_stream_early_is_not_finished() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=0.01))
    scheduler = Scheduler(engine, max_concurrent=4, turn_timeout_s=60)
    async with scheduler.turn(channel_id="채널", user_id="u1") as slot:
        async for _ in slot.stream("프롬프트", PARAMS):
            break
    assert slot.outcome is TurnOutcome.CANCELLED
    assert not engine.running


async def test_shutdown_finishing_lets_running_turns_complete_and_refuses_new_ones() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=0.01))
    scheduler = Scheduler(engine, max_concurrent=1, turn_timeout_s=60)
    running = asyncio.create_task(run_turn(scheduler, "채널1"))
    await wait_until(lambda: scheduler.running == 1)
    waiting = asyncio.create_task(run_turn(scheduler, "채널2"))
    await wait_until(lambda: scheduler.waiting == 1)
    await scheduler.shutdown(finish=True)
    slot, _ = await running
    assert slot.outcome is TurnOutcome.FINISHED and slot.text == REPLY
    with pytest.raises(TurnCancelled):
        await waiting
    with pytest.raises(EngineUnavailable):
        await run_turn(scheduler, "채널3")


async def test_shutdown_without_finishing_cancels_running_turns() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=0.05))
    scheduler = Scheduler(engine, max_concurrent=4, turn_timeout_s=60)
    running = asyncio.create_task(run_turn(scheduler, "채널1"))
    await wait_until(lambda: "turn-1-0" in engine.running)
    await scheduler.shutdown(finish=False)
    slot, _ = await running
    assert slot.outcome is TurnOutcome.CANCELLED
    assert engine.cancelled == ["turn-1-0"]


async def test_a_waiting_task_cancelled_by_its_owner_leaves_the_queue() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=0.01))
    scheduler = Scheduler(engine, max_concurrent=1, turn_timeout_s=60)
    running = asyncio.create_task(run_turn(scheduler, "채널1"))
    await wait_until(lambda: scheduler.running == 1)
    waiting = asyncio.create_task(run_turn(scheduler, "채널2"))
    await wait_until(lambda: scheduler.waiting == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert scheduler.waiting == 0
    await running
    assert scheduler.running == 0


async def test_an_engine_that_hangs_is_timed_out_and_its_request_cancelled() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=30))  # each chunk takes 30 s
    scheduler = Scheduler(engine, max_concurrent=4, turn_timeout_s=0.2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with scheduler.turn(channel_id="채널", user_id="u1") as slot:
        async for _ in slot.stream("프롬프트", PARAMS):
            pass
    assert slot.outcome is TurnOutcome.TIMED_OUT
    assert loop.time() - start < 5
    await wait_until(lambda: not engine.running)
    assert engine.finished == []


async def test_cancelling_the_caller_mid_stream_is_not_taken_for_a_timeout() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=30))
    scheduler = Scheduler(engine, max_concurrent=4, turn_timeout_s=60)
    slots: list[TurnSlot] = []

    async def listen() -> None:
        async with scheduler.turn(channel_id="채널", user_id="u1") as slot:
            slots.append(slot)
            async for _ in slot.stream("프롬프트", PARAMS):
                pass

    task = asyncio.create_task(listen())
    await wait_until(lambda: bool(engine.running))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slots[0].outcome is TurnOutcome.CANCELLED
    await wait_until(lambda: not engine.running)
    assert scheduler.running == 0


async def test_users_who_went_quiet_are_forgotten_so_memory_stays_bounded() -> None:
    clock = FakeClock()
    engine = await started(ScriptedEngine(REPLY))
    scheduler = Scheduler(
        engine, max_concurrent=4, turn_timeout_s=60, user_turns=2, rate_window_s=60, clock=clock
    )
    for n in range(300):
        await run_turn(scheduler, f"채널{n % 7}", user=f"손님{n}")
        clock.now += 0.1
    await run_turn(scheduler, "채널0", user="단골")
    with pytest.raises(RateLimited):  # limits still hold for who is active
        for _ in range(2):
            await run_turn(scheduler, "채널1", user="단골")
    clock.now += 61
    await run_turn(scheduler, "채널2", user="새 손님")
    assert list(scheduler._user_history) == ["새 손님"]  # the quiet ones are gone


# --- the background lane --------------------------------------------------------------------


async def background_work(scheduler: Scheduler, key: str, slots: list[TurnSlot]) -> None:
    """Generate once in the background lane, keeping the slot to look at afterwards."""
    async with scheduler.background(key) as slot:
        slots.append(slot)
        async for _ in slot.stream(f"{key} 요약 프롬프트", PARAMS):
            pass


async def test_a_players_turn_takes_the_slot_of_background_work_at_once() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=0.05))
    scheduler = Scheduler(engine, max_concurrent=1, turn_timeout_s=60)
    slots: list[TurnSlot] = []
    assert scheduler.spawn("요약", lambda: background_work(scheduler, "요약", slots))
    await wait_until(lambda: "background-1-0" in engine.running)
    assert scheduler.running == 0 and scheduler.background_running == 1

    slot, tickets = await run_turn(scheduler, "채널")
    assert tickets == []  # admitted at once: never queued behind background work
    assert slot.outcome is TurnOutcome.FINISHED and slot.text == REPLY
    await scheduler.background_idle()
    assert slots[0].outcome is TurnOutcome.CANCELLED and slots[0].cancel_reason == PREEMPTED
    assert engine.cancelled == ["background-1-0"]
    assert scheduler.background_running == scheduler.background_jobs == 0


async def test_background_work_waits_while_turns_wait_or_no_slot_is_free() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=0.01))
    scheduler = Scheduler(engine, max_concurrent=1, turn_timeout_s=60)
    first = asyncio.create_task(run_turn(scheduler, "채널1"))
    await wait_until(lambda: scheduler.running == 1)
    waiting = asyncio.create_task(run_turn(scheduler, "채널2"))
    await wait_until(lambda: scheduler.waiting == 1)
    slots: list[TurnSlot] = []
    scheduler.spawn("요약", lambda: background_work(scheduler, "요약", slots))
    await wait_until(lambda: scheduler.background_waiting == 1)
    await first
    # The waiting turn goes first; the background work only once nothing waits.
    await wait_until(lambda: scheduler.running == 1 and scheduler.waiting == 0)
    assert scheduler.background_running == 0 and slots == []
    await waiting
    await scheduler.background_idle()
    assert slots[0].outcome is TurnOutcome.FINISHED and slots[0].text == REPLY
    assert engine.finished == ["turn-1-0", "turn-2-0", "background-1-0"]


async def test_one_background_job_per_key_and_none_is_charged_to_anyone() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=0.01))
    scheduler = Scheduler(engine, max_concurrent=4, turn_timeout_s=60, user_turns=1)
    slots: list[TurnSlot] = []
    assert scheduler.spawn("장면1", lambda: background_work(scheduler, "장면1", slots))
    assert not scheduler.spawn("장면1", lambda: background_work(scheduler, "장면1", slots))
    assert scheduler.spawn("장면2", lambda: background_work(scheduler, "장면2", slots))
    assert scheduler.background_jobs == 2 and scheduler.has_job("장면1")
    await scheduler.background_idle()
    assert [slot.outcome for slot in slots] == [TurnOutcome.FINISHED] * 2
    assert not scheduler.has_job("장면1")
    assert scheduler.spawn("장면1", lambda: background_work(scheduler, "장면1", slots))
    await scheduler.background_idle()
    slot, _ = await run_turn(scheduler, "채널")  # the one turn a minute is still there
    assert slot.outcome is TurnOutcome.FINISHED


async def test_shutdown_cancels_background_work_and_waits_for_it() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=0.05))
    scheduler = Scheduler(engine, max_concurrent=1, turn_timeout_s=60)
    running = asyncio.create_task(run_turn(scheduler, "채널"))
    await wait_until(lambda: scheduler.running == 1)
    slots: list[TurnSlot] = []
    ended: list[str] = []

    async def waits_for_a_slot() -> None:
        try:
            await background_work(scheduler, "대기", slots)
        except TurnCancelled:
            ended.append("dropped")

    scheduler.spawn("대기", waits_for_a_slot)
    await wait_until(lambda: scheduler.background_waiting == 1)
    await scheduler.shutdown(finish=True)
    assert ended == ["dropped"] and scheduler.background_jobs == 0
    assert (await running)[0].outcome is TurnOutcome.FINISHED
    assert not scheduler.spawn("늦게", waits_for_a_slot)
    with pytest.raises(EngineUnavailable):
        await background_work(scheduler, "늦게", slots)


async def yielding_turn(scheduler: Scheduler, channel: str, slots: list[TurnSlot]) -> None:
    async with scheduler.turn(
        channel_id=channel, user_id="시작한 사람", charged=True, yielding=True
    ) as slot:
        slots.append(slot)
        async for _ in slot.stream(f"{channel} 먼저 말하기", PARAMS):
            pass


async def test_a_players_turn_in_the_channel_cancels_a_yielding_turn_and_goes_first() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=0.05))
    scheduler = Scheduler(engine, max_concurrent=4, turn_timeout_s=60)
    slots: list[TurnSlot] = []
    speaking = asyncio.create_task(yielding_turn(scheduler, "채널", slots))
    await wait_until(lambda: "turn-1-0" in engine.running)
    slot, _ = await run_turn(scheduler, "채널")
    await speaking
    assert slots[0].outcome is TurnOutcome.CANCELLED and slots[0].cancel_reason == PREEMPTED
    assert engine.cancelled == ["turn-1-0"]
    assert slot.outcome is TurnOutcome.FINISHED and slot.text == REPLY


async def test_a_yielding_turn_waits_behind_players_and_gives_its_slot_to_them() -> None:
    engine = await started(ScriptedEngine(REPLY, delay_s=0.01))
    scheduler = Scheduler(engine, max_concurrent=1, turn_timeout_s=60)
    first = asyncio.create_task(run_turn(scheduler, "채널1"))
    await wait_until(lambda: scheduler.running == 1)
    slots: list[TurnSlot] = []
    # Queued before the player's turn in its own channel, it still goes after it.
    speaking = asyncio.create_task(yielding_turn(scheduler, "채널2", slots))
    await wait_until(lambda: scheduler.waiting == 1)
    player = asyncio.create_task(run_turn(scheduler, "채널2"))
    await wait_until(lambda: scheduler.waiting == 2)
    await first
    (slot, _), _ = await asyncio.gather(player, speaking)
    assert engine.finished == ["turn-1-0", "turn-2-0", "turn-3-0"]
    assert slot.turn_id == 2 and slots[0].turn_id == 3

    # Running in the only slot, it is cancelled for a player's turn elsewhere.
    slots.clear()
    speaking = asyncio.create_task(yielding_turn(scheduler, "채널1", slots))
    await wait_until(lambda: "turn-4-0" in engine.running)
    slot, _ = await run_turn(scheduler, "채널3")
    await speaking
    assert slots[0].cancel_reason == PREEMPTED and "turn-4-0" in engine.cancelled
    assert slot.outcome is TurnOutcome.FINISHED
