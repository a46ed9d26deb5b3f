"""The load test's short form: nothing is lost, stored twice or posted twice under load."""

from benchmarks.load import LoadConfig, run_load

SHORT = LoadConfig(channels=5, members=20, rate=30.0, seconds=2.0, drain_timeout_s=30.0)


async def test_under_load_every_message_is_stored_once_and_answered_once():
    (ours,) = await run_load(SHORT, bots=["synatra"])
    assert ours.sent == 60
    assert ours.problems == []
    assert ours.handled == ours.sent
    assert ours.replies_posted == ours.sent and ours.replies_failed == 0
    # One greeting per channel, then one user turn and one reply per message.
    assert ours.stored_rows == SHORT.channels + 2 * ours.sent


async def test_bare_echo_baseline_answers_every_message_once():
    (bare,) = await run_load(SHORT, bots=["bare"])
    assert bare.problems == []
    assert bare.handled == bare.sent == bare.replies_posted == 60


def test_repeated_pairs_report_each_ratio_and_the_median():
    from benchmarks.load import RunResult, format_repeats

    def pair(ours_ms: float, bare_ms: float) -> list[RunResult]:
        ours = RunResult(bot="synatra", engine="scripted")
        bare = RunResult(bot="bare", engine="-")
        ours.overhead_ms, bare.overhead_ms = [ours_ms] * 100, [bare_ms] * 100
        return [ours, bare]

    line = format_repeats([pair(3.0, 1.0), pair(2.0, 1.0), pair(5.0, 1.0)])
    assert "p99 ratios 3.00x, 2.00x, 5.00x" in line
    assert "median p99 3.00x" in line and "median p50 3.00x" in line
    assert format_repeats([]) == "no pair had both bots"


def test_the_bot_under_load_on_uvloop_loses_nothing():
    # The loop a deployed bot runs on by default (synatra_bot/eventloop.py).
    from synatra_bot import eventloop

    (ours,) = eventloop.run(run_load(SHORT, bots=["synatra"]), kind="uvloop")
    assert ours.problems == []
    assert ours.handled == ours.sent == ours.replies_posted == 60
    assert ours.stored_rows == SHORT.channels + 2 * ours.sent
