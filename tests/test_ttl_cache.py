"""The cache of channels' roleplays and players' personas: expiry, bounds, and drops that race
a load."""

import asyncio

from synatra_bot.roleplay.ttl_cache import TtlCache
from tests.fakes import FakeClock


def loader(values: dict[str, str], calls: list[str], key: str):
    async def load() -> str:
        calls.append(key)
        return values[key]

    return load


async def test_values_are_kept_until_they_expire():
    clock, calls = FakeClock(0.0), []
    values = {"채널": "민지"}
    cache: TtlCache[str, str] = TtlCache(ttl_s=60, limit=10, clock=clock)
    assert await cache.get("채널", loader(values, calls, "채널")) == "민지"
    values["채널"] = "서윤"
    clock.now += 59
    assert await cache.get("채널", loader(values, calls, "채널")) == "민지"
    clock.now += 2
    assert await cache.get("채널", loader(values, calls, "채널")) == "서윤"
    assert calls == ["채널", "채널"]


async def test_a_drop_reads_again_and_a_full_cache_starts_over():
    clock, calls = FakeClock(0.0), []
    values = {f"채널{n}": f"값{n}" for n in range(5)}
    cache: TtlCache[str, str] = TtlCache(ttl_s=60, limit=3, clock=clock)
    for n in range(3):
        await cache.get(f"채널{n}", loader(values, calls, f"채널{n}"))
    cache.drop("채널0")
    await cache.get("채널0", loader(values, calls, "채널0"))
    await cache.get("채널1", loader(values, calls, "채널1"))  # still kept
    await cache.get("채널3", loader(values, calls, "채널3"))  # full: everything goes
    await cache.get("채널1", loader(values, calls, "채널1"))
    assert calls == ["채널0", "채널1", "채널2", "채널0", "채널3", "채널1"]


async def test_a_load_that_raced_a_change_is_returned_but_not_kept():
    clock, calls = FakeClock(0.0), []
    cache: TtlCache[str, str] = TtlCache(ttl_s=60, limit=10, clock=clock)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_old_read() -> str:
        started.set()
        await release.wait()
        return "예전 설정"

    pending = asyncio.create_task(cache.get("채널", slow_old_read))
    await started.wait()
    cache.clear()  # a moderator changed the settings while the read was in flight
    release.set()
    assert await pending == "예전 설정"  # asked before the change
    values = {"채널": "새 설정"}
    assert await cache.get("채널", loader(values, calls, "채널")) == "새 설정"
    assert calls == ["채널"]
