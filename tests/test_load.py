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
