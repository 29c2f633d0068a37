"""agent/gc_policy.py on a real collector: survivors are frozen (full collections stop rescanning
the long-lived heap), and garbage cycles among frozen objects are still reclaimed by the complete
scans the policy schedules on the loop, so the frozen heap stays bounded."""

from __future__ import annotations

import asyncio
import collections
import gc

import pytest
from proconsul.agent import gc_policy


def _count_freeze_walks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """CPython counts the frozen heap by walking it: from now on every `gc.get_freeze_count()`
    call adds one to the returned counter, so a test can check the policy does not ask on every
    collection."""
    real_freeze_count = gc.get_freeze_count
    walks = [0]

    def counting_freeze_count() -> int:
        walks[0] += 1
        return real_freeze_count()

    monkeypatch.setattr(gc, "get_freeze_count", counting_freeze_count)
    return walks


async def _churn_cycles(count: int, stop: list[bool] | None = None) -> None:
    """Dead cycles that live long enough to be frozen (what a complete scan is for), allocated
    fast enough that the collector runs many times in every quiet window."""
    window: collections.deque[dict[str, object]] = collections.deque()
    for i in range(count):
        a: dict[str, object] = {"i": i}
        a["self"] = [a]
        window.append(a)
        if len(window) > 5_000:
            window.popleft()
        if i % 1_000 == 0:
            await asyncio.sleep(0)
            if stop and stop[0]:
                return


async def test_survivors_are_frozen_and_dead_cycles_still_reclaimed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc_policy, "_MIN_FULL_SCAN_OBJECTS", 20_000)
    policy = gc_policy.GCPolicy()
    policy.max_defer_s = 0.0  # every scan as soon as it is due (waiting for quiet: below)
    policy.install()
    try:
        startup = gc.get_freeze_count()
        walks = _count_freeze_walks(monkeypatch)
        assert startup > 0  # the startup heap (in a full test run, everything pytest imported)
        # Enough churn to more than double the frozen heap whatever the startup heap's size:
        # every cycle lives long enough to be frozen, then becomes garbage that only a complete
        # scan can reclaim, so the doubling rule must fire.
        cycles = max(300_000, startup + 100_000)  # (so that 2 * startup + 100_000 < 2 * cycles)
        await _churn_cycles(cycles)  # (it yields to the loop, which runs the scheduled scans)
        await asyncio.sleep(0)
        assert policy.freezes > 0
        assert policy.full_scans > 0
        assert policy.last_full_scan_collected > 0  # the dead cycles it was scheduled for
        assert walks[0] <= 2 * policy.full_scans + 2 and 2 * walks[0] <= policy.freezes, (walks, policy.freezes)
        monkeypatch.undo()
        # `cycles` dead cycles (twice as many objects) went through; what stays frozen is bounded
        # by the doubling rule (twice the live heap after a complete scan), not by the churn.
        assert gc.get_freeze_count() < 2 * startup + 100_000 < 2 * cycles, (gc.get_freeze_count(), startup)
    finally:
        policy.uninstall()
    assert gc.get_freeze_count() == 0


async def test_frozen_objects_freed_by_reference_counting_never_cost_a_complete_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Connection churn without cycles: every object lives long enough to be frozen, then dies by
    # reference counting, which takes it off the frozen list. The policy's running total of what
    # it froze grows past the threshold again and again, but the frozen heap itself does not:
    # the exact count it then takes must keep it from scheduling a complete scan (a long pause on
    # a server's loop, docs/PERFORMANCE.md "The collector's complete scans", issue 16).
    monkeypatch.setattr(gc_policy, "_MIN_FULL_SCAN_OBJECTS", 20_000)
    policy = gc_policy.GCPolicy()
    policy.install()
    try:
        startup = gc.get_freeze_count()
        walks = _count_freeze_walks(monkeypatch)
        window: collections.deque[dict[str, object]] = collections.deque()
        # Each entry outlives a generation-1 collection (so it is frozen) and is two objects: three
        # times the startup heap goes through, and the running total must cross its threshold.
        churned = max(300_000, 3 * startup // 2)
        for i in range(churned):
            window.append({"i": i, "parts": [i]})  # two tracked objects, no cycle
            # Young garbage, as a server's requests leave: it keeps the collector running (freed
            # objects do not count towards its trigger) and dies before it is ever frozen.
            young: list[object] = [[]]
            young[0].append(young)  # (two objects: a window entry outlives two collections of generation 1)
            if len(window) > 5_000:
                window.popleft()
            if i % 1_000 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert policy.freezes > 0
        # What went through the frozen heap was several times its size: the running total crossed
        # the threshold (so the policy took the exact count) and the count said no.
        assert walks[0] > 0, (policy._frozen, policy.freezes, startup, gc.get_threshold())
        assert policy.full_scans == 0, (policy.full_scans, walks, startup, churned)
        monkeypatch.undo()
        assert gc.get_freeze_count() < startup + 50_000
    finally:
        policy.uninstall()
    assert gc.get_freeze_count() == 0


async def _one_scan_once_quiet(policy: gc_policy.GCPolicy) -> None:
    """Idle the loop (up to 10 s) until the pending scan has run, once."""
    for _ in range(200):
        await asyncio.sleep(0.05)
        if policy.full_scans:
            break
    assert policy.full_scans == 1 and not policy._scan_pending


async def test_a_due_complete_scan_waits_for_a_quiet_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 4: a complete scan that falls due under load (the collector running all the time)
    runs once a window sees few collections, not in the middle of the load."""
    monkeypatch.setattr(gc_policy, "_MIN_FULL_SCAN_OBJECTS", 20_000)
    monkeypatch.setattr(gc_policy, "QUIET_WINDOW_S", 0.05)
    policy = gc_policy.GCPolicy()
    policy.max_defer_s = 3600.0
    policy.install()
    try:
        startup = gc.get_freeze_count()
        await _churn_cycles(max(300_000, startup + 100_000))
        assert policy._scan_pending and policy.full_scans == 0  # due, and held back by the load
        await _one_scan_once_quiet(policy)  # the loop idles: the next quiet window runs it
        assert policy.last_full_scan_collected > 0
    finally:
        policy.uninstall()
    assert gc.get_freeze_count() == 0


async def test_a_due_complete_scan_runs_under_load_once_deferred_long_enough(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The memory bound holds under load that never stops: the scan runs `max_defer_s` after it
    fell due, busy or not."""
    monkeypatch.setattr(gc_policy, "_MIN_FULL_SCAN_OBJECTS", 20_000)
    monkeypatch.setattr(gc_policy, "QUIET_WINDOW_S", 0.01)
    policy = gc_policy.GCPolicy()
    policy.max_defer_s = 0.05
    policy.install()
    try:
        startup = gc.get_freeze_count()
        stop = [False]
        # Only the deadline can start it: every window sees the load (no quiet one).
        monkeypatch.setattr(gc_policy, "QUIET_COLLECTIONS", -1)
        await _churn_cycles(max(600_000, 2 * startup + 200_000), stop)
        assert policy.full_scans > 0
    finally:
        policy.uninstall()
    assert gc.get_freeze_count() == 0


async def test_a_due_complete_scan_waits_while_the_process_is_busy_with_few_collections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A leader serving forwarded writes is busy (40 % of a core) yet runs the collector only a
    few times a second: a window with few collections is not quiet while the process's CPU
    says it is working, and the scan runs once the CPU goes idle too."""
    monkeypatch.setattr(gc_policy, "_MIN_FULL_SCAN_OBJECTS", 20_000)
    monkeypatch.setattr(gc_policy, "QUIET_WINDOW_S", 0.05)
    policy = gc_policy.GCPolicy()
    policy.max_defer_s = 3600.0
    busy = [True]
    cpu = [0.0]

    def fake_cpu() -> float:
        # Each reading while busy: half a core over the window since the last one.
        if busy[0]:
            cpu[0] += 0.5 * gc_policy.QUIET_WINDOW_S
        return cpu[0]

    policy.cpu_clock = fake_cpu
    policy.install()
    try:
        startup = gc.get_freeze_count()
        await _churn_cycles(max(300_000, startup + 100_000))
        assert policy._scan_pending and policy.full_scans == 0
        # No allocation now (no collections), but the process is busy: every window stays loud.
        for _ in range(20):
            await asyncio.sleep(0.05)
        assert policy.full_scans == 0 and policy._scan_pending
        busy[0] = False
        await _one_scan_once_quiet(policy)
        assert policy.last_full_scan_collected > 0
    finally:
        policy.uninstall()
    assert gc.get_freeze_count() == 0
