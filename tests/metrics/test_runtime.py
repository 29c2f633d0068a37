"""The runtime sampler (metrics/runtime.py): `num_goroutines` counts live tasks without walking
them (issue 21 item 4: the walk cost time per open connection, once a second, on the loop
serving those connections)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest
from proconsul.metrics import runtime
from proconsul.metrics.registry import Metrics
from proconsul.metrics.runtime import RuntimeSampler


def _gauge(m: Metrics, name: str) -> float:
    (value,) = [g["Value"] for g in m.summary()["Gauges"] if g["Name"] == name]
    return float(value)


# Run in a fresh interpreter: the gauge counts every task alive in the process, and in the suite's
# process earlier tests leave tasks, threads and frozen objects behind (`collector_paused` and the
# GC policy call `gc.freeze()`, after which a finished task caught in a cycle is never collected),
# so exact counts there depend on what ran before (a CI run once saw 50 tasks outlive their
# release: a freeze landed between their creation and the collection below).
_TASK_GAUGE_SCRIPT = r"""
import asyncio, gc

from proconsul.metrics.registry import Metrics
from proconsul.metrics.runtime import RuntimeSampler


def gauge(m):
    (value,) = [g["Value"] for g in m.summary()["Gauges"] if g["Name"] == "consul.runtime.num_goroutines"]
    return float(value)


def walked(*_args):
    raise AssertionError("asyncio.all_tasks() walked every task")


async def main():
    m = Metrics(hostname="")
    sampler = RuntimeSampler(m)
    gc.collect()
    sampler.sample()
    before = gauge(m)
    assert before >= 1, before  # this coroutine's own task
    asyncio.all_tasks = walked
    release = asyncio.Event()
    parked = [asyncio.create_task(release.wait()) for _ in range(50)]
    sampler.sample()
    assert gauge(m) == before + 50, (gauge(m), before)
    release.set()
    for task in parked:
        await task
    # A finished task counts until it is freed: drop the references (this task's last wake-up
    # holds the last task it awaited until its next step) and collect.
    del parked, task
    await asyncio.sleep(0)
    gc.collect()
    sampler.sample()
    assert gauge(m) == before, (gauge(m), before)
    print("ok")


asyncio.run(main())
"""


def test_the_task_gauge_follows_tasks_without_walking_them() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run(
        [sys.executable, "-c", _TASK_GAUGE_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


def test_the_interval_open_at_set_up_holds_the_runtime_gauges() -> None:
    """As go-metrics emits runtime stats when set up: an agent records other metrics before its
    sampler's `run()` starts, and a first interval without the runtime gauges would be the one
    `/v1/agent/metrics` shows until the next ends (a CI run saw exactly that)."""
    m = Metrics(hostname="")
    m.gauge("autopilot", "healthy").set(1.0)
    RuntimeSampler(m)
    gauges = {g["Name"] for g in m.summary()["Gauges"]}
    assert {"consul.runtime.alloc_bytes", "consul.runtime.num_goroutines", "consul.autopilot.healthy"} <= gauges


async def test_without_asyncio_task_sets_the_tasks_are_walked_once_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    # (Python 3.14 keeps no task sets in asyncio.tasks.)
    monkeypatch.setattr(runtime, "_task_registry", lambda: None)
    walks: list[int] = []
    real_all_tasks = asyncio.all_tasks

    def counted(*args: Any) -> set[asyncio.Task[Any]]:
        walks.append(1)
        return real_all_tasks(*args)

    monkeypatch.setattr(asyncio, "all_tasks", counted)
    m = Metrics(hostname="")
    sampler = RuntimeSampler(m)  # its first sample walks
    assert len(walks) == 1
    walks.clear()
    for _ in range(120):  # two minutes of samples at the default 1 s
        sampler.sample()
    assert len(walks) == 2
    assert _gauge(m, "consul.runtime.num_goroutines") >= 1


async def test_long_pauses_and_loop_lags_are_logged_with_when_they_ended(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    """A benchmark must place each stall against its measured window: a collection pause or a
    loop lag of `LONG_STALL_MS` or more is logged (info) with the wall time it ended, in the
    form bench/catalog_scale.py's `stalls_in` reads back."""
    import time

    from catalog_scale import stalls_in

    monkeypatch.setattr(runtime, "LONG_STALL_MS", 20.0)
    caplog.set_level("INFO", logger=runtime.__name__)
    m = Metrics(hostname="")
    sampler = RuntimeSampler(m, interval_s=0.05)
    started = time.time()
    # A collection shorter than the threshold is not logged; one at or above it is.
    sampler._on_gc("start", {"generation": 2})
    sampler._on_gc("stop", {"generation": 2, "collected": 0})
    sampler.sample()
    assert not caplog.records
    monkeypatch.setattr(runtime, "LONG_STALL_MS", 0.0)
    sampler._on_gc("start", {"generation": 1})
    sampler._on_gc("stop", {"generation": 1, "collected": 7})
    monkeypatch.setattr(runtime, "LONG_STALL_MS", 20.0)
    sampler.sample()
    task = asyncio.ensure_future(sampler.run())
    try:
        await asyncio.sleep(0)  # the sampler's first timer is armed
        time.sleep(0.2)  # the stimulus: the loop is held for 200 ms while that timer is due
        deadline = time.monotonic() + 30
        while not any("loop lag" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    ended = time.time()
    log = tmp_path / "agent.log"
    log.write_text("".join(f"2026-12-04 02:00:00,000 [INFO] {r.name}: {r.getMessage()}\n" for r in caplog.records))
    stalls = stalls_in(log, started - 0.01, ended + 0.01)  # (the times are logged to the ms)
    kinds = [s["kind"] for s in stalls]
    assert kinds.count("gc_pause") == 1 and "loop_lag" in kinds, stalls
    (pause,) = [s for s in stalls if s["kind"] == "gc_pause"]
    assert pause["generation"] == 1 and pause["reclaimed"] == 7, pause
    (lag,) = [s for s in stalls if s["kind"] == "loop_lag"][:1]
    assert lag["ms"] >= 100 and 0 <= lag["at"] <= ended - started + 0.02, lag
    assert stalls_in(log, ended + 1, ended + 2) == []  # outside the window: none
