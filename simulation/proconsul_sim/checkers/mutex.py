"""Lock mutual exclusion: no two processes ever hold the same lock at the same time.

Workloads record, per process and lock key, `acquire` (Consul: `PUT /v1/kv/<lock>?acquire=<session>`)
and `release` operations. A process *holds* the lock over a window that we can be sure of:

- it starts when an acquire completed `ok` (the client learnt it holds the lock then; the
  acquire took effect somewhere inside its interval, but the client only uses the lock after);
- it ends when the process invokes its release, whatever the release's outcome: from then on
  the client no longer uses the lock. An acquire that completed `info` or `fail` opens no
  window: the client did not learn it holds the lock, so it never used it.

Two windows of different processes that overlap are then a violation for sure, with no false
alarm from timing: each process knew it held the lock throughout its window.

Why an indeterminate release does not extend the window to the release's end (or beyond): it
may have taken effect any time after it was invoked, so another process's acquire that
succeeded meanwhile may have come after it; counting that as an overlap would be a false
alarm. The same holds for an `ok` release (it took effect somewhere in its interval). What the
client-side windows cannot see is a lock that stays taken in the store after a release that
failed or never happened: the next acquire then simply fails, which is not a safety problem.

A holder whose session is invalidated (its node was partitioned or killed) loses the lock in
the store while it may still believe it holds it; Consul's lock-delay (15 s by default) keeps
others from taking it for that long, so a workload that holds locks briefly stays checkable.
A window with no release at all (the history ended, or the workload gave up on the process)
is open-ended: a workload that abandons a lock should record a release for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..history import OK, History, Op
from .base import CheckResult

ACQUIRE = "acquire"
RELEASE = "release"
MAX_REPORTED = 20


@dataclass
class _Window:
    process: int
    acquire: tuple[int, Op]
    release: tuple[int, Op] | None

    @property
    def start(self) -> float:
        end = self.acquire[1].end
        assert end is not None
        return end

    @property
    def end(self) -> float:
        return math.inf if self.release is None else self.release[1].start

    def describe(self) -> dict[str, Any]:
        (ai, a), rel = self.acquire, self.release
        return {"process": self.process, "held_from": self.start,
                "held_until": None if rel is None else self.end,
                "acquire": {"index": ai, "start": a.start, "end": a.end, "extra": a.extra},
                "release": None if rel is None else {"index": rel[0], "type": rel[1].type,
                                                     "start": rel[1].start, "end": rel[1].end}}


def _windows(ops: list[tuple[int, Op]]) -> tuple[list[_Window], int]:
    """Each process's hold windows over one lock, and how many releases had nothing to release."""
    open_by_process: dict[int, _Window] = {}
    windows: list[_Window] = []
    stray_releases = 0
    for i, op in sorted(ops, key=lambda io: (io[1].start, io[0])):
        if op.f == ACQUIRE:
            # A repeated acquire while holding is Consul's re-entrant acquire by the same session.
            if op.type == OK and op.process not in open_by_process:
                w = _Window(op.process, (i, op), None)
                open_by_process[op.process] = w
                windows.append(w)
        elif op.f == RELEASE:
            w = open_by_process.pop(op.process, None)
            if w is None:
                stray_releases += 1
            else:
                w.release = (i, op)
    return windows, stray_releases


def check_mutex(history: History) -> CheckResult:
    by_lock: dict[str, list[tuple[int, Op]]] = {}
    for i, op in enumerate(history.ops):
        if op.f in (ACQUIRE, RELEASE):
            by_lock.setdefault(str(op.key), []).append((i, op))
    per_lock: dict[str, dict[str, Any]] = {}
    overlaps: list[dict[str, Any]] = []
    n_overlaps = 0
    for lock in sorted(by_lock):
        windows, stray = _windows(by_lock[lock])
        windows.sort(key=lambda w: (w.start, w.process))
        found = 0
        active: list[_Window] = []  # windows that started earlier and may still be open
        for w in windows:
            active = [a for a in active if a.end > w.start]
            for a in active:
                if a.process != w.process:
                    found += 1
                    if len(overlaps) < MAX_REPORTED:
                        both_until = min(a.end, w.end)
                        overlaps.append({"lock": lock, "first": a.describe(), "second": w.describe(),
                                         "overlap_s": None if both_until == math.inf
                                         else both_until - w.start})
            active.append(w)
        n_overlaps += found
        ops = [op for _, op in by_lock[lock]]
        per_lock[lock] = {
            "acquires": sum(op.f == ACQUIRE for op in ops),
            "acquired": len(windows),
            "acquires_indeterminate": sum(op.f == ACQUIRE and op.type == "info" for op in ops),
            "releases": sum(op.f == RELEASE for op in ops),
            "open_windows": sum(w.release is None for w in windows),
            "stray_releases": stray,
            "overlaps": found,
        }
    return CheckResult("mutex", n_overlaps == 0,
                       {"locks": per_lock, "overlaps": n_overlaps, "overlapping_pairs": overlaps})
