"""The agent's garbage-collector policy: full collections that do not stall the event loop.

Owns when CPython's cyclic collector scans the agent's long-lived heap. By default every full
(generation 2) collection walks every tracked object: the modules and code loaded at startup, the
state store, the Raft log, the watches. On a leader under write load one such collection took
60-340 ms (bench/loop_stalls.py, docs/PERFORMANCE.md "Issue 21 items 2 and 4"), which is the
agent's p99.9 latency.

The policy, installed once the agent has started:
1. one collection, then `gc.freeze()`: the startup heap moves to the permanent generation and no
   later collection scans it again;
2. after each generation-1 or full collection, the objects it promoted are frozen the same way:
   they were just found live, so a full collection scans only what was promoted since (short,
   whatever the heap size). Objects that die later are still freed by reference counting as
   always; only garbage cycles among frozen objects wait for step 3;
3. once the frozen heap has grown by half since the last complete scan (checked whenever the
   objects frozen since could have doubled it), a complete collection runs on the event loop:
   unfreeze, collect everything (reclaiming such cycles), freeze again. A long pause at most once
   per such growth of the frozen heap, so memory stays bounded (to about twice the live heap).
   Freezing resets CPython's own trigger for full collections, so without this step none would
   run. The size of the frozen heap is never asked for on every collection: CPython counts it
   by walking it.
4. a complete scan that is due waits for a quiet moment: the loop checks every `QUIET_WINDOW_S`
   how many collections ran since the last check (the collector runs on allocations, so under
   load it usually runs hundreds of times a second, and idle a few times) and how much CPU the
   process used meanwhile, and scans once a window saw at most `QUIET_COLLECTIONS` and at most
   `QUIET_CPU_SHARE` of a core, or `MAX_DEFER_S` after it fell due whatever the load. The CPU
   share is what tells load from idle on a leader serving forwarded writes: a batch costs it
   few net allocations (its requests' objects die young, and freed objects do not count towards
   the collector's trigger), so it saw fewer than ten collections in half a second while 40 %
   busy, and ran a 165 ms scan in the middle of a benchmark's run (docs/PERFORMANCE.md, "Issue
   21: the forwarded write at c16 and its first-round p99 (follfwd)"). A fresh
   server's heap grows under its first load (the Raft log held in memory, connections, the
   store) past the first threshold, so its first scan (60-120 ms on a 200,000-object heap) used
   to land in the middle of that load: the p99 of a benchmark's first round (docs/PERFORMANCE.md,
   "Issue 21: the forwarded write's first round"). The bound keeps the memory argument of step
   3: the heap may grow for `MAX_DEFER_S` longer, no more.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

# Below this many frozen objects a complete scan is cheap (a few ms) and not worth postponing.
_MIN_FULL_SCAN_OBJECTS = 200_000
# A due complete scan runs once a window of this length saw at most this many collections (of
# any generation), or this long after it fell due.
QUIET_WINDOW_S = 0.5
QUIET_COLLECTIONS = 10
# ... and the process (every thread) used at most this share of one core in it. An idle server
# (heartbeats, gossip) uses a few %; a Raft member under PUT load at c16 20-80 %.
QUIET_CPU_SHARE = 0.10
MAX_DEFER_S = 60.0


class GCPolicy:
    def __init__(self) -> None:
        self.installed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scanned_size = 0  # frozen objects after the last complete scan
        # Objects frozen so far, added up as they are frozen: an upper bound, since a frozen object
        # that dies leaves the frozen list without telling us. `gc.get_freeze_count()` is exact
        # but walks the whole frozen list (57 ms for 3 million objects); called after every
        # collection it was the very stall this policy exists to remove (a server with 5,000
        # watchers under cProfile: 0.15-0.19 s per call, 23 calls in 30 s; docs/PERFORMANCE.md,
        # issue 16). It now runs only when the bound says the heap may have doubled.
        self._frozen = 0
        self._scan_pending = False
        self._collections = 0  # collections of any generation so far (the load, for step 4)
        self._window_start = 0  # `_collections` when the current quiet window began
        self._scan_due_at = 0.0  # loop time when the pending scan fell due
        # The process's CPU seconds (all threads) and the loop's time when the current quiet
        # window began.
        self.cpu_clock = time.process_time
        self._window_cpu = 0.0
        self._window_at = 0.0
        self.last_window_cpu_share = 0.0  # in the window that let the last deferred scan run
        self.max_defer_s = MAX_DEFER_S
        self.freezes = 0
        self.full_scans = 0
        self.last_full_scan_ms = 0.0
        # What the last complete scan reclaimed (unreachable objects): near 0 when the frozen heap
        # grew with live objects (connections arriving), large when it held dead cycles (closed
        # connections). Logged with the pause, so a benchmark's scans can be told apart.
        self.last_full_scan_collected = 0

    def install(self) -> None:
        """From the event loop's thread, once the agent has started."""
        if self.installed:
            return
        self._loop = asyncio.get_running_loop()
        gc.collect()
        gc.freeze()
        self._scanned_size = self._frozen = gc.get_freeze_count()  # once, at startup
        gc.callbacks.append(self._on_gc)
        self.installed = True
        logger.debug("gc: froze %d startup objects", self._scanned_size)

    def uninstall(self) -> None:
        if self.installed:
            gc.callbacks.remove(self._on_gc)
            gc.unfreeze()
            self._scan_pending = False  # (a deferred scan's check sees it and stops)
            self.installed = False

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector, in whichever thread allocated: only list moves and a flag.
        if phase != "stop":
            return
        self._collections += 1
        if info.get("generation", 0) == 0:
            return
        # The generations this collection covered are empty: the oldest holds only what just
        # survived (live), and freezing it takes nothing younger along.
        if self._scan_pending:  # the complete scan on its way counts everything afresh
            gc.freeze()
            self.freezes += 1
            return
        # Counting that generation walks only the survivors, never the frozen heap.
        self._frozen += len(gc.get_objects(generation=2))
        gc.freeze()
        self.freezes += 1
        threshold = max(2 * self._scanned_size, _MIN_FULL_SCAN_OBJECTS)
        if self._frozen <= threshold:
            return
        # The bound says the heap may have doubled: check it against the true size. A complete
        # scan is due from three quarters of the way, so when the true size is below that, at
        # least a quarter of the threshold must be frozen again before the next walk.
        self._frozen = gc.get_freeze_count()
        if self._frozen > threshold * 3 // 4:
            # Freezing resets the collector's own trigger for full collections, so the complete
            # scan is this policy's to start; on the loop, where it is one bounded pause.
            self._scan_pending = True
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._scan_when_quiet)

    def _scan_when_quiet(self) -> None:
        loop = self._loop
        if loop is None or self.max_defer_s <= 0:
            self._full_scan()
            return
        self._scan_due_at = loop.time()
        self._start_window(loop)

    def _start_window(self, loop: asyncio.AbstractEventLoop) -> None:
        self._window_start = self._collections
        self._window_cpu = self.cpu_clock()
        self._window_at = loop.time()
        loop.call_later(QUIET_WINDOW_S, self._quiet_check)

    def _quiet_check(self) -> None:
        if not self.installed or not self._scan_pending:
            return
        loop = self._loop
        assert loop is not None
        now = loop.time()
        collections = self._collections - self._window_start
        share = (self.cpu_clock() - self._window_cpu) / max(now - self._window_at, QUIET_WINDOW_S)
        quiet = collections <= QUIET_COLLECTIONS and share <= QUIET_CPU_SHARE
        if quiet or now - self._scan_due_at >= self.max_defer_s:
            self.last_window_cpu_share = share
            self._full_scan()
            return
        self._start_window(loop)

    def _full_scan(self) -> None:
        started = time.perf_counter()
        gc.unfreeze()
        collected = gc.collect()  # (its callback freezes the survivors; _scan_pending keeps it from rescheduling)
        gc.freeze()
        # One walk of the frozen list per complete scan, which has just walked all of it anyway.
        self._scanned_size = self._frozen = gc.get_freeze_count()
        self._scan_pending = False
        self.full_scans += 1
        self.last_full_scan_ms = (time.perf_counter() - started) * 1000.0
        self.last_full_scan_collected = collected
        # At info: a scan is a pause of the whole loop, rare (once per growth of the frozen heap
        # by half), and a benchmark must be able to place it (bench/catalog_scale.py reads it).
        logger.info(
            "gc: complete scan: %d objects live, %d reclaimed, %.1f ms, ended at %.3f "
            "(due for %.1f s; CPU in the last window %.0f %% of a core)",
            self._scanned_size, collected, self.last_full_scan_ms, time.time(),
            self._loop.time() - self._scan_due_at if self._loop is not None and self._scan_due_at else 0.0,
            self.last_window_cpu_share * 100.0,
        )  # fmt: skip
        self._scan_due_at = 0.0
        self.last_window_cpu_share = 0.0


POLICY = GCPolicy()
