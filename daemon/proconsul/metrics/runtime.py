"""Process gauges under go-metrics' `runtime.*` names, sampled once a second as go-metrics does.

Owns the mapping of Go's runtime figures onto what a Python process can report cheaply:
`num_goroutines` is the number of asyncio tasks alive in the process, read in O(1) from the
sizes of asyncio's own task sets (walking `asyncio.all_tasks()` every second cost time in
proportion to the open connections, on the loop that serves them; counting tasks in and out
with a task factory cost ~3 us on every task created, and servers create one per RPC);
`alloc_bytes` and `sys_bytes` are the resident and virtual sizes from /proc (Python has no
cheap live-heap figure); `total_gc_runs` and `total_gc_pause_ns` come from the `gc` module (a
callback times each collection; `gc_pause_ns` is a sample per collection). Go's
`heap_objects`, `malloc_count` and `free_count` have no cheap equivalent and are not reported.
`loop_lag` (ms) is proconsul's own: how late the sampler's one-second sleep woke, i.e. how long
the event loop was busy.

A collection pause or a loop lag of `LONG_STALL_MS` or more is also logged (info), with the wall
time it ended: a metric keeps only each interval's maximum, and a benchmark needs to know whether
a stall fell inside its measured window (bench/catalog_scale.py reads these lines).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
import weakref
from typing import Any

from proconsul.metrics.registry import Metrics

__all__ = ["RuntimeSampler"]

logger = logging.getLogger(__name__)

LONG_STALL_MS = 100.0

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _memory() -> tuple[float, float]:
    """(resident bytes, virtual bytes) of this process; zeros where /proc is absent."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            size, resident = fh.read().split()[:2]
        return float(int(resident) * _PAGE), float(int(size) * _PAGE)
    except (OSError, ValueError):
        return 0.0, 0.0


def _task_registry() -> list[Any] | None:
    """asyncio's own sets of live tasks, whose sizes are read in O(1); None where there are none.

    A task enters one when created and leaves when freed (the sets are weak, or emptied as eager
    tasks finish): a finished task still referenced somewhere, or waiting in a reference cycle
    for the collector, is still counted. 3.11 keeps `_all_tasks`, 3.12 and 3.13
    `_scheduled_tasks` and `_eager_tasks`; 3.14 keeps tasks per thread in C, not in these sets.
    """
    if sys.version_info >= (3, 14):
        return None
    names = ("_all_tasks",) if sys.version_info < (3, 12) else ("_scheduled_tasks", "_eager_tasks")
    sets = [getattr(asyncio.tasks, name, None) for name in names]
    if not all(isinstance(s, (set, weakref.WeakSet)) for s in sets):
        return None
    return sets


# Without a registry, the tasks are walked once per this many samples (a minute at 1 s).
_WALK_EVERY = 60


class RuntimeSampler:
    """Declares the runtime gauges at construction; `run()` updates them until cancelled."""

    def __init__(self, metrics: Metrics, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.goroutines = metrics.gauge(
            "runtime", "num_goroutines", help="asyncio tasks alive in the process (created and not yet freed)"
        )
        self.alloc = metrics.gauge("runtime", "alloc_bytes", help="resident set size in bytes")
        self.sys = metrics.gauge("runtime", "sys_bytes", help="virtual memory size in bytes")
        self.gc_runs = metrics.gauge("runtime", "total_gc_runs", help="garbage collections since start")
        self.gc_pause_total = metrics.gauge("runtime", "total_gc_pause_ns", help="time spent collecting since start, ns")
        self.gc_pause = metrics.sample("runtime", "gc_pause_ns", help="one garbage collection's pause, ns")
        self.loop_lag = metrics.sample("runtime", "loop_lag", help="how late a 1 s timer fired on the event loop, ms")
        self._gc_started = 0.0
        self._gc_pause_ns = 0
        self._pending_pauses: list[int] = []
        self._long_pauses: list[tuple[float, int, int, int]] = []  # ended (wall clock), generation, collected, ns
        self._registry = _task_registry()
        self._samples = 0
        self._walked = 0
        # As go-metrics emits its runtime stats when it is set up: the interval open now holds
        # them too, although `run()` starts only once the agent is up (other metrics recorded
        # before that would otherwise make a first interval without them).
        self.sample()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector; keep it to two clock reads and an add.
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            pause = int((time.perf_counter() - self._gc_started) * 1e9)
            self._gc_started = 0.0
            self._gc_pause_ns += pause
            self._pending_pauses.append(pause)
            if pause >= LONG_STALL_MS * 1e6:
                self._long_pauses.append((time.time(), info.get("generation", -1), info.get("collected", 0), pause))

    def _task_count(self) -> int:
        # Not len(asyncio.all_tasks()) each second: that walks every task (one per open
        # connection and more), on the loop that serves them (issue 21 item 4).
        if self._registry is not None:
            return sum(len(s) for s in self._registry)
        if self._samples % _WALK_EVERY == 0:
            try:
                self._walked = len(asyncio.all_tasks())
            except RuntimeError:
                return self._walked  # no loop running yet (the sample at construction): walk at the next
        self._samples += 1
        return self._walked

    def sample(self) -> None:
        """Set every gauge once (also called at start so they hold real values from the first scrape)."""
        self.goroutines.set(float(self._task_count()))
        resident, virtual = _memory()
        self.alloc.set(resident)
        self.sys.set(virtual)
        self.gc_runs.set(float(sum(s["collections"] for s in gc.get_stats())))
        self.gc_pause_total.set(float(self._gc_pause_ns))
        # Pauses are recorded here, not in the GC callback: the callback may run in any thread
        # that triggers a collection, and the registry is the loop thread's alone.
        pauses, self._pending_pauses = self._pending_pauses, []
        for pause in pauses:
            self.gc_pause.observe(float(pause))
        if self._long_pauses:
            long_pauses, self._long_pauses = self._long_pauses, []
            for ended, generation, collected, ns in long_pauses:
                logger.info(
                    "runtime: gc pause %.0f ms (generation %d, %d reclaimed), ended at %.3f",
                    ns / 1e6, generation, collected, ended,
                )  # fmt: skip

    async def run(self) -> None:
        gc.callbacks.append(self._on_gc)
        loop = asyncio.get_running_loop()
        try:
            self.sample()
            while True:
                due = loop.time() + self.interval_s
                await asyncio.sleep(self.interval_s)
                lag_ms = max(0.0, loop.time() - due) * 1000.0
                self.loop_lag.observe(lag_ms)
                if lag_ms >= LONG_STALL_MS:
                    logger.info("runtime: loop lag %.0f ms, ended at %.3f", lag_ms, time.time())
                self.sample()
        finally:
            gc.callbacks.remove(self._on_gc)
