"""The runtime sampler (metrics/runtime.py): `num_goroutines` counts live tasks without walking
them (issue 21 item 4: the walk cost time per open connection, once a second, on the loop
serving those connections)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from proconsul.metrics import runtime
from proconsul.metrics.registry import Metrics
from proconsul.metrics.runtime import RuntimeSampler


def _gauge(m: Metrics, name: str) -> float:
    (value,) = [g["Value"] for g in m.summary()["Gauges"] if g["Name"] == name]
    return float(value)


async def test_the_task_gauge_follows_tasks_without_walking_them(monkeypatch: pytest.MonkeyPatch) -> None:
    m = Metrics(hostname="")
    sampler = RuntimeSampler(m)
    # Finished tasks of earlier tests in this process count until they are freed: free them now,
    # so the collection below frees only this test's tasks.
    gc.collect()
    sampler.sample()
    before = _gauge(m, "consul.runtime.num_goroutines")
    assert before >= 1  # this test's own task

    def walked(*_args: object) -> set[asyncio.Task[object]]:
        raise AssertionError("asyncio.all_tasks() walked every task")

    monkeypatch.setattr(asyncio, "all_tasks", walked)
    release = asyncio.Event()
    parked = [asyncio.create_task(release.wait()) for _ in range(50)]
    sampler.sample()
    assert _gauge(m, "consul.runtime.num_goroutines") == before + 50
    release.set()
    for task in parked:
        await task
    # A finished task counts until it is freed: drop the references (this task's last wake-up
    # holds the last task it awaited until its next step) and collect.
    del parked, task
    await asyncio.sleep(0)
    gc.collect()
    sampler.sample()
    assert _gauge(m, "consul.runtime.num_goroutines") == before


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
    sampler = RuntimeSampler(m)
    for _ in range(120):  # two minutes of samples at the default 1 s
        sampler.sample()
    assert len(walks) == 2
    assert _gauge(m, "consul.runtime.num_goroutines") >= 1
