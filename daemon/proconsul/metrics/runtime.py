"""Process gauges under go-metrics' `runtime.*` names, sampled once a second as go-metrics does.

Owns the mapping of Go's runtime figures onto what a Python process can report cheaply:
`num_goroutines` is the number of unfinished asyncio tasks on the agent's loop, kept by a task
factory that counts each task in and out (walking `asyncio.all_tasks()` every second cost time
in proportion to the open connections, on the loop that serves them); `alloc_bytes` and `sys_bytes` are the resident
and virtual sizes from /proc (Python has no cheap live-heap figure); `total_gc_runs` and
`total_gc_pause_ns` come from the `gc` module (a callback times each collection; `gc_pause_ns` is
a sample per collection). Go's `heap_objects`, `malloc_count` and `free_count` have no cheap
equivalent and are not reported. `loop_lag` (ms) is proconsul's own: how late the
sampler's one-second sleep woke, i.e. how long the event loop was busy.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
import weakref
from typing import Any

from proconsul.metrics.registry import Metrics

__all__ = ["RuntimeSampler"]

logger = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _memory() -> tuple[float, float]:
    """(resident bytes, virtual bytes) of this process; zeros where /proc is absent."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            size, resident = fh.read().split()[:2]
        return float(int(resident) * _PAGE), float(int(size) * _PAGE)
    except (OSError, ValueError):
        return 0.0, 0.0


class _LiveTasks:
    """Unfinished tasks of one loop: the task factory counts each new task in, its done callback
    counts it out. O(1) per task created and per read, whatever the number of connections."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Tasks that exist before the factory is installed: one walk, once per loop.
        running = [task for task in asyncio.all_tasks(loop) if not task.done()]
        self.count = len(running)
        for task in running:
            task.add_done_callback(self._done)
        inner = loop.get_task_factory()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
            task = inner(loop, coro, **kwargs) if inner is not None else asyncio.Task(coro, loop=loop, **kwargs)
            self.count += 1
            task.add_done_callback(self._done)
            return task

        loop.set_task_factory(factory)

    def _done(self, _task: asyncio.Future[Any]) -> None:
        self.count -= 1


# One counter per loop, installed by the first sampler on it and left for the loop's life (several
# in-process agents share a loop in tests; each reads the same count, as all_tasks() gave them).
_LIVE_TASKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LiveTasks] = weakref.WeakKeyDictionary()


def live_tasks() -> int:
    """Unfinished asyncio tasks on the running loop (counting starts at the first call)."""
    loop = asyncio.get_running_loop()
    counter = _LIVE_TASKS.get(loop)
    if counter is None:
        counter = _LIVE_TASKS[loop] = _LiveTasks(loop)
    return counter.count


class RuntimeSampler:
    """Declares the runtime gauges at construction; `run()` updates them until cancelled."""

    def __init__(self, metrics: Metrics, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.goroutines = metrics.gauge("runtime", "num_goroutines", help="unfinished asyncio tasks in the agent's loop")
        self.alloc = metrics.gauge("runtime", "alloc_bytes", help="resident set size in bytes")
        self.sys = metrics.gauge("runtime", "sys_bytes", help="virtual memory size in bytes")
        self.gc_runs = metrics.gauge("runtime", "total_gc_runs", help="garbage collections since start")
        self.gc_pause_total = metrics.gauge("runtime", "total_gc_pause_ns", help="time spent collecting since start, ns")
        self.gc_pause = metrics.sample("runtime", "gc_pause_ns", help="one garbage collection's pause, ns")
        self.loop_lag = metrics.sample("runtime", "loop_lag", help="how late a 1 s timer fired on the event loop, ms")
        self._gc_started = 0.0
        self._gc_pause_ns = 0
        self._pending_pauses: list[int] = []

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector; keep it to two clock reads and an add.
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            pause = int((time.perf_counter() - self._gc_started) * 1e9)
            self._gc_started = 0.0
            self._gc_pause_ns += pause
            self._pending_pauses.append(pause)

    def sample(self) -> None:
        """Set every gauge once (also called at start so they hold real values from the first scrape)."""
        self.goroutines.set(float(live_tasks()))
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

    async def run(self) -> None:
        gc.callbacks.append(self._on_gc)
        loop = asyncio.get_running_loop()
        try:
            self.sample()
            while True:
                due = loop.time() + self.interval_s
                await asyncio.sleep(self.interval_s)
                self.loop_lag.observe(max(0.0, loop.time() - due) * 1000.0)
                self.sample()
        finally:
            gc.callbacks.remove(self._on_gc)
