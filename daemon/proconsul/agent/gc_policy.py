"""The agent's garbage-collector policy: full collections that do not stall the event loop.

Owns when CPython's cyclic collector scans the agent's long-lived heap. By default every full
(generation 2) collection walks every tracked object: the modules and code loaded at startup, the
state store, the Raft log, the watches. On a leader under write load one such collection took
60-340 ms (bench/loop_stalls.py, docs/PERFORMANCE.md "Issue 21 items 2 and 4"), which is the
agent's p99.9 latency.

The policy, installed once the agent has started:
1. one collection, then `gc.freeze()`: the startup heap moves to the permanent generation and no
   later collection scans it again;
2. after each full collection, its survivors are frozen the same way: they were just found live,
   so the next full collection scans only what was promoted since (short, whatever the heap size).
   Objects that die later are still freed by reference counting as always; only garbage cycles
   among frozen objects wait for step 3;
3. once the frozen heap has doubled since the last complete scan, the next full collection
   unfreezes first and scans everything (reclaiming such cycles), then freezes again: a long
   pause at most once per doubling of the live heap, so memory stays bounded.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

logger = logging.getLogger(__name__)

# Below this many frozen objects a complete scan is cheap (a few ms) and not worth postponing.
_MIN_FULL_SCAN_OBJECTS = 200_000


class GCPolicy:
    def __init__(self) -> None:
        self.installed = False
        self._scanned_size = 0  # frozen objects after the last complete scan
        self.freezes = 0
        self.full_scans = 0

    def install(self) -> None:
        if self.installed:
            return
        gc.collect()
        gc.freeze()
        self._scanned_size = gc.get_freeze_count()
        gc.callbacks.append(self._on_gc)
        self.installed = True
        logger.debug("gc: froze %d startup objects", self._scanned_size)

    def uninstall(self) -> None:
        if self.installed:
            gc.callbacks.remove(self._on_gc)
            gc.unfreeze()
            self.installed = False

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            frozen = gc.get_freeze_count()
            if frozen > max(2 * self._scanned_size, _MIN_FULL_SCAN_OBJECTS):
                gc.unfreeze()  # this collection scans everything once
                self.full_scans += 1
                self._scanned_size = 0
            return
        # The collection is over: what survived it is live; freeze it.
        gc.freeze()
        self.freezes += 1
        if self._scanned_size == 0:
            self._scanned_size = gc.get_freeze_count()


POLICY = GCPolicy()
