"""The runtime sampler (metrics/runtime.py): `num_goroutines` counts unfinished tasks without
walking them (issue 21 item 4: the walk cost time per open connection, once a second, on the
loop serving those connections)."""

from __future__ import annotations

import asyncio

import pytest
from proconsul.metrics.registry import Metrics
from proconsul.metrics.runtime import RuntimeSampler


def _gauge(m: Metrics, name: str) -> float:
    (value,) = [g["Value"] for g in m.summary()["Gauges"] if g["Name"] == name]
    return float(value)


async def test_the_task_gauge_follows_tasks_without_walking_them(monkeypatch: pytest.MonkeyPatch) -> None:
    m = Metrics(hostname="")
    sampler = RuntimeSampler(m)
    sampler.sample()  # the first sample on a loop may look at the tasks already there, once
    before = _gauge(m, "consul.runtime.num_goroutines")
    assert before >= 1  # this test's own task

    def walked(*_args: object) -> set[asyncio.Task[object]]:
        raise AssertionError("asyncio.all_tasks() walked every task")

    monkeypatch.setattr(asyncio, "all_tasks", walked)
    release = asyncio.Event()
    parked = [asyncio.create_task(release.wait()) for _ in range(50)]
    finished = asyncio.create_task(asyncio.sleep(0))
    await finished
    sampler.sample()
    assert _gauge(m, "consul.runtime.num_goroutines") == before + 50
    release.set()
    await asyncio.gather(*parked)
    sampler.sample()
    assert _gauge(m, "consul.runtime.num_goroutines") == before
