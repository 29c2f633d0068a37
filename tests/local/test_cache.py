"""The agent cache core (`proconsul.local.cache`), driven deterministically: a fake monotonic
clock, a fake back-off sleep that only advances it, and a scripted fetcher whose every call the
test answers (or fails) by hand. Consul's rules, one test each: hits and misses, shared fetches,
the token and datacenter partitions, background refresh with blocking gets, lost contact and its
age, back-off, `max-age` / `must-revalidate` / `stale-if-error` on simple types (and not on
background ones), TTL expiry, and close.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from proconsul.http.cached import cache_control
from proconsul.http.common import HTTPError
from proconsul.local.cache import (
    CONNECTED_AFTER_S,
    AgentCache,
    CacheType,
    RequestInfo,
)
from proconsul.rpc_api import QueryMeta, RPCError

REFRESH = CacheType("health-services", refresh=True, blocking=True)
SIMPLE = CacheType("prepared-query", refresh=False, blocking=False)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Script:
    """A fetcher whose calls wait until the test answers them, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float, asyncio.Future[tuple[QueryMeta, Any]]]] = []

    async def __call__(self, min_index: int, wait_s: float) -> tuple[QueryMeta, Any]:
        future: asyncio.Future[tuple[QueryMeta, Any]] = asyncio.get_running_loop().create_future()
        self.calls.append((min_index, wait_s, future))
        return await future

    def pending(self) -> list[int]:
        return [i for i, (_, _, f) in enumerate(self.calls) if not f.done()]

    def answer(self, index: int, value: Any, call: int = -1) -> None:
        self.calls[call][2].set_result((QueryMeta(index, True, 0, "stale"), value))

    def fail(self, message: str = "rpc error: no server answered", call: int = -1) -> None:
        self.calls[call][2].set_exception(RPCError(message))


async def settle() -> None:
    """Let every task that can run, run (no timers involved)."""
    for _ in range(20):
        await asyncio.sleep(0)


def make() -> tuple[AgentCache, Clock, list[float]]:
    clock = Clock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds
        await asyncio.sleep(0)

    return AgentCache(clock=clock, sleep=sleep, rng=random.Random(7)), clock, slept


async def first_get(cache: AgentCache, ctype: CacheType, info: RequestInfo, script: Script,
                    index: int, value: Any) -> Any:
    task = asyncio.ensure_future(cache.get(ctype, info, script))
    await settle()
    script.answer(index, value, call=len(script.calls) - 1 if ctype.refresh else -1)
    result = await task
    await settle()
    return result


async def test_simple_miss_then_hit_with_growing_age() -> None:
    cache, clock, _ = make()
    script = Script()
    info = RequestInfo(key="q1")
    miss = await first_get(cache, SIMPLE, info, script, 7, ["a"])
    assert (miss.hit, miss.value, miss.meta.index) == (False, ["a"], 7)
    assert script.calls[0][:2] == (0, 0.0)  # a simple type never blocks
    clock.now += 12.4
    hit = await cache.get(SIMPLE, info, script)
    assert (hit.hit, hit.value, round(hit.age_s, 1)) == (True, ["a"], 12.4)
    clock.now += 30
    assert (await cache.get(SIMPLE, info, script)).age_s == pytest.approx(42.4)
    assert len(script.calls) == 1


async def test_concurrent_gets_share_one_fetch() -> None:
    cache, _, _ = make()
    script = Script()
    gets = [asyncio.ensure_future(cache.get(SIMPLE, RequestInfo(key="q"), script)) for _ in range(5)]
    await settle()
    assert len(script.calls) == 1
    script.answer(3, "v")
    results = await asyncio.gather(*gets)
    assert [r.value for r in results] == ["v"] * 5
    assert not any(r.hit for r in results)


async def test_token_and_datacenter_partition_the_cache() -> None:
    cache, _, _ = make()
    script = Script()
    await first_get(cache, SIMPLE, RequestInfo(key="q", token="alpha"), script, 5, "for alpha")
    other = asyncio.ensure_future(cache.get(SIMPLE, RequestInfo(key="q", token="beta"), script))
    await settle()
    assert len(script.calls) == 2, "another token's request fetched on its own"
    script.answer(5, "for beta")
    assert (await other).value == "for beta"
    assert (await cache.get(SIMPLE, RequestInfo(key="q", token="alpha"), script)).value == "for alpha"
    dc2 = asyncio.ensure_future(cache.get(SIMPLE, RequestInfo(key="q", token="alpha", datacenter="dc2"), script))
    await settle()
    assert len(script.calls) == 3
    script.answer(9, "dc2")
    assert (await dc2).value == "dc2"
    assert len(cache) == 3


async def test_background_refresh_keeps_a_blocking_query_and_hits_see_updates() -> None:
    cache, clock, _ = make()
    script = Script()
    info = RequestInfo(key="web")
    miss = await first_get(cache, REFRESH, info, script, 10, "v10")
    assert not miss.hit
    # The entry's background query is running: blocking on index 10 for the type's timeout.
    assert script.pending() == [1] and script.calls[1][:2] == (10, 600.0)
    clock.now += 500
    hit = await cache.get(REFRESH, info, script)
    assert (hit.hit, hit.value, hit.age_s) == (True, "v10", 0.0)  # fresh while connected
    script.answer(11, "v11")
    await settle()
    assert script.pending() == [2] and script.calls[2][0] == 11
    hit = await cache.get(REFRESH, info, script)
    assert (hit.hit, hit.value, hit.meta.index) == (True, "v11", 11)
    assert len(script.calls) == 3  # gets never fetched themselves


async def test_blocking_get_waits_for_the_background_query() -> None:
    cache, _, _ = make()
    script = Script()
    await first_get(cache, REFRESH, RequestInfo(key="web"), script, 10, "v10")
    # An older index is answered at once, from the cache.
    older = await cache.get(REFRESH, RequestInfo(key="web", min_index=9, timeout_s=60), script)
    assert (older.hit, older.value) == (True, "v10")
    parked = asyncio.ensure_future(cache.get(REFRESH, RequestInfo(key="web", min_index=10, timeout_s=60), script))
    await settle()
    assert not parked.done() and len(script.calls) == 2  # waiting on the one background query
    script.answer(10, "v10")  # the background query timed out with no change: keep waiting
    await settle()
    assert not parked.done() and script.pending() == [2]
    script.answer(12, "v12")
    woken = await parked
    assert (woken.hit, woken.value, woken.meta.index) == (False, "v12", 12)


async def test_blocking_get_answers_the_old_value_at_its_timeout() -> None:
    cache, _, _ = make()
    script = Script()
    await first_get(cache, REFRESH, RequestInfo(key="web"), script, 10, "v10")
    timed_out = await cache.get(REFRESH, RequestInfo(key="web", min_index=10, timeout_s=0.01), script)
    assert (timed_out.hit, timed_out.value, timed_out.meta.index) == (False, "v10", 10)


async def test_lost_contact_age_backoff_and_recovery() -> None:
    cache, clock, slept = make()
    script = Script()
    info = RequestInfo(key="web")
    await first_get(cache, REFRESH, info, script, 10, "v10")
    clock.now += 5
    script.fail()
    await settle()
    clock.now += 20
    hit = await cache.get(REFRESH, info, script)
    assert (hit.hit, hit.value, hit.age_s) == (True, "v10", 20.0)  # still served, age since the loss
    # Three failures are retried at once, then the waits grow (2 s, 4 s, ... plus a stagger).
    script.fail()
    await settle()
    script.fail()
    await settle()
    assert slept == []
    script.fail()
    await settle()
    assert len(slept) == 1 and 2.0 <= slept[0] <= 4.0
    script.fail()
    await settle()
    assert len(slept) == 2 and 4.0 <= slept[1] <= 8.0
    assert cache.backoff(40) <= 120.0  # capped at a minute plus the stagger
    age = (await cache.get(REFRESH, info, script)).age_s
    assert age == pytest.approx(20 + slept[0] + slept[1])
    script.answer(13, "v13")
    await settle()
    back = await cache.get(REFRESH, info, script)
    assert (back.value, back.age_s) == ("v13", 0.0)


async def test_a_long_blocking_query_after_a_loss_means_contact_is_back() -> None:
    cache, clock, _ = make()
    script = Script()
    info = RequestInfo(key="web")
    await first_get(cache, REFRESH, info, script, 10, "v10")
    script.fail()
    await settle()
    assert script.pending() == [2]  # the retry started at once and is blocking on the servers
    clock.now += 3
    assert (await cache.get(REFRESH, info, script)).age_s == 3.0
    clock.now += CONNECTED_AFTER_S - 4
    assert (await cache.get(REFRESH, info, script)).age_s == CONNECTED_AFTER_S - 1  # not yet
    clock.now += 1
    assert (await cache.get(REFRESH, info, script)).age_s == 0.0


async def test_a_failed_blocking_wait_reports_the_error() -> None:
    cache, _, _ = make()
    script = Script()
    await first_get(cache, REFRESH, RequestInfo(key="web"), script, 10, "v10")
    parked = asyncio.ensure_future(cache.get(REFRESH, RequestInfo(key="web", min_index=10, timeout_s=60), script))
    await settle()
    script.fail("No cluster leader")
    with pytest.raises(RPCError, match="No cluster leader"):
        await parked


async def test_first_fetch_error_is_raised_and_the_next_get_retries() -> None:
    cache, _, _ = make()
    script = Script()
    task = asyncio.ensure_future(cache.get(SIMPLE, RequestInfo(key="q"), script))
    await settle()
    script.fail()
    with pytest.raises(RPCError):
        await task
    retried = await first_get(cache, SIMPLE, RequestInfo(key="q"), script, 4, "ok")
    assert retried.value == "ok" and len(script.calls) == 2


async def test_a_background_entry_that_never_fetched_keeps_no_query_until_a_get_succeeds() -> None:
    cache, _, slept = make()
    script = Script()
    task = asyncio.ensure_future(cache.get(REFRESH, RequestInfo(key="web", datacenter="nowhere"), script))
    await settle()
    script.fail("No path to datacenter")
    with pytest.raises(RPCError, match="No path to datacenter"):
        await task
    await settle()
    assert script.pending() == [] and slept == [], "no background retries for an entry without a value"
    again = await first_get(cache, REFRESH, RequestInfo(key="web", datacenter="nowhere"), script, 3, "v3")
    assert (again.hit, again.value) == (False, "v3")
    assert script.pending() == [2] and script.calls[2][0] == 3  # now it is kept fresh


async def test_max_age_and_must_revalidate_refetch_a_simple_entry() -> None:
    cache, clock, _ = make()
    script = Script()
    await first_get(cache, SIMPLE, RequestInfo(key="q"), script, 4, "old")
    clock.now += 30
    young = await cache.get(SIMPLE, RequestInfo(key="q", max_age_s=60), script)
    assert young.hit and young.value == "old" and len(script.calls) == 1
    refetched = await first_get(cache, SIMPLE, RequestInfo(key="q", max_age_s=10), script, 5, "new")
    assert (refetched.hit, refetched.value) == (False, "new")
    assert len(script.calls) == 2
    revalidated = await first_get(cache, SIMPLE, RequestInfo(key="q", must_revalidate=True), script, 6, "newer")
    assert (revalidated.hit, revalidated.value) == (False, "newer")
    hit = await cache.get(SIMPLE, RequestInfo(key="q"), script)
    assert (hit.hit, hit.value, hit.age_s) == (True, "newer", 0.0)


async def test_stale_if_error_falls_back_to_the_kept_value() -> None:
    cache, clock, _ = make()
    script = Script()
    await first_get(cache, SIMPLE, RequestInfo(key="q"), script, 4, "kept")
    clock.now += 65

    async def refetch_failing(info: RequestInfo) -> Any:
        task = asyncio.ensure_future(cache.get(SIMPLE, info, script))
        await settle()
        script.fail()
        return await task

    # Docs' example: a 65 s old entry, servers down. max-age=30 alone is a 500 ...
    with pytest.raises(RPCError):
        await refetch_failing(RequestInfo(key="q", max_age_s=30))
    # ... with stale-if-error=259200 the cached answer, its Age saying how old it is ...
    stale = await refetch_failing(RequestInfo(key="q", max_age_s=30, stale_if_error_s=259200))
    assert (stale.hit, stale.value, stale.age_s) == (True, "kept", 65.0)
    # ... and not when it is older than stale-if-error allows.
    with pytest.raises(RPCError):
        await refetch_failing(RequestInfo(key="q", must_revalidate=True, stale_if_error_s=60))


async def test_cache_control_does_not_apply_to_background_types() -> None:
    cache, clock, _ = make()
    script = Script()
    await first_get(cache, REFRESH, RequestInfo(key="web"), script, 10, "v10")
    clock.now += 100
    hit = await cache.get(REFRESH, RequestInfo(key="web", max_age_s=1, must_revalidate=True), script)
    assert hit.hit and len(script.calls) == 2  # the background query only


async def test_zero_index_becomes_one() -> None:
    cache, _, _ = make()
    script = Script()
    miss = await first_get(cache, REFRESH, RequestInfo(key="none"), script, 0, [])
    assert miss.meta.index == 1
    assert script.calls[1][0] == 1  # the background query blocks instead of spinning


async def test_unused_entries_expire_and_their_background_query_ends() -> None:
    cache, clock, _ = make()
    script = Script()
    short = CacheType("health-services", refresh=True, blocking=True, last_get_ttl_s=100)
    await first_get(cache, short, RequestInfo(key="a"), script, 3, "a")
    await first_get(cache, short, RequestInfo(key="b"), script, 3, "b")
    background_a = script.calls[1][2]
    clock.now += 60
    await cache.get(short, RequestInfo(key="b"), script)  # b is used, a is not
    clock.now += 50
    assert cache.expire() == 1
    await settle()
    assert background_a.cancelled() and len(cache) == 1
    assert (await cache.get(short, RequestInfo(key="b"), script)).hit
    again = asyncio.ensure_future(cache.get(short, RequestInfo(key="a"), script))
    await settle()
    assert not again.done(), "an expired entry is fetched afresh"
    script.answer(4, "a2")
    assert (await again).value == "a2"


async def test_close_ends_every_background_query() -> None:
    cache, _, _ = make()
    script = Script()
    await first_get(cache, REFRESH, RequestInfo(key="web"), script, 10, "v10")
    running = script.calls[-1][2]
    parked = asyncio.ensure_future(cache.get(REFRESH, RequestInfo(key="web", min_index=10, timeout_s=60), script))
    await settle()
    await cache.close()
    assert running.cancelled() and len(cache) == 0
    with pytest.raises(RuntimeError):
        await parked  # woken, and not by a new fetch on the closed cache
    assert len(script.calls) == 2
    with pytest.raises(RuntimeError):
        await cache.get(REFRESH, RequestInfo(key="web"), script)


def test_cache_control_directives() -> None:
    c = cache_control("max-age=30, stale-if-error=259200")
    assert (c.max_age_s, c.must_revalidate, c.stale_if_error_s) == (30, False, 259200)
    c = cache_control("MUST-REVALIDATE")
    assert (c.max_age_s, c.must_revalidate, c.stale_if_error_s) == (None, True, None)
    c = cache_control("max-age=0")
    assert c.must_revalidate
    c = cache_control("no-cache, private")
    assert c == cache_control("")
    assert cache_control("max-age=-5").max_age_s is None  # Consul: a negative age bounds nothing
    assert cache_control("max-age=0009223372036854775807").max_age_s == float(2**63 - 1)
    for bad in ("max-age=x", "max-age=1.5", "stale-if-error=", "max-age=٣", "max-age=9223372036854775808",
                "stale-if-error=" + "9" * 5000):
        with pytest.raises(HTTPError) as exc:
            cache_control(bad)
        assert (exc.value.status, exc.value.message) == (400, "Invalid Cache-Control header.")
