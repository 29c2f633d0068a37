"""Per-stage timestamps of Raft writes across a cluster's processes, and their analysis.

Installed by bench/raft_server_wrapper.py when `RAFT_TRACE=<prefix>` is in the environment:
without touching daemon code it wraps the functions one write passes through and stamps
`time.perf_counter_ns()` (CLOCK_MONOTONIC, the same clock in every process on a machine) on
entry/exit; each process writes `<prefix>.<pid>.json` when it stops. Then

    .venv/bin/python bench/raft_trace.py <prefix>

lines the processes' stamps up write by write and prints the median of each stage of a
concurrency-1 PUT. Alignment assumes one write in flight at a time (c1): each stage is the first
matching stamp after the previous stage's, so run it with `--conc 1` only.
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import sys
import time
from bisect import bisect_left, bisect_right
from typing import Any

EVENTS: list[tuple[str, int]] = []


def install() -> None:
    from proconsul.http import conn_guard
    from proconsul.raft import node, storage

    now = time.perf_counter_ns
    add = EVENTS.append

    def around(cls: Any, name: str, tag: str, end: bool = False) -> None:
        fn = getattr(cls, name)

        def wrapped(*a: Any, **k: Any) -> Any:
            add((tag, now()))
            try:
                return fn(*a, **k)
            finally:
                if end:
                    add((tag + "_end", now()))

        setattr(cls, name, wrapped)

    around(conn_guard.GuardedRequestHandler, "data_received", "http_in")
    around(node.RaftServer, "propose_now", "propose")
    around(node._PeerLink, "flush", "flush")
    # The peer protocol: the class defining data_received at the top of raft/node.py.
    for obj in vars(node).values():
        if isinstance(obj, type) and "data_received" in vars(obj) and obj.__module__ == node.__name__:
            around(obj, "data_received", "peer_in")
    around(storage.DurableLog, "write_db", "wdb", end=True)
    around(node._LogWriter, "submit", "submit")
    if hasattr(node._LogWriter, "submit_then"):  # the driver's writes, with a callback
        around(node._LogWriter, "submit_then", "submit")
    from proconsul.raft import core

    around(core.RaftNode, "step", "step")
    around(core.RaftNode, "ready", "ready", end=True)
    around(node.RaftServer, "_apply", "apply", end=True)
    around(node._Settlements, "_run", "settle", end=True)
    # The durable write's system calls: pwritev then fdatasync, or one pwritev on an O_DSYNC fd.
    def io(fn: Any) -> Any:
        def traced(*a: Any) -> Any:
            add(("io", now()))
            try:
                return fn(*a)
            finally:
                add(("io_end", now()))

        return traced

    os.pwritev = io(os.pwritev)
    os.fdatasync = io(os.fdatasync)
    resolve = node._resolve

    def traced_resolve(*a: Any) -> None:
        add(("resolved", now()))
        resolve(*a)

    node._resolve = traced_resolve
    if hasattr(node.RaftServer, "_written"):  # trees whose driver takes a write's outcome by callback
        around(node.RaftServer, "_written", "resolved")


def dump(prefix: str) -> None:
    by: dict[str, list[int]] = {}
    for tag, t in list(EVENTS):
        by.setdefault(tag, []).append(t)
    with open(f"{prefix}.{os.getpid()}.json", "w", encoding="utf-8") as fh:
        json.dump(by, fh)


def _after(ts: list[int], t: int, limit: int) -> int | None:
    i = bisect_right(ts, t)
    return ts[i] if i < len(ts) and ts[i] < limit else None


def _before(ts: list[int], t: int) -> int | None:
    i = bisect_left(ts, t)
    return ts[i - 1] if i else None


def analyse(prefix: str) -> None:
    procs = []
    for path in sorted(glob.glob(prefix + ".*.json")):
        with open(path, encoding="utf-8") as fh:
            procs.append({k: sorted(v) for k, v in json.load(fh).items()})
    leader = max(procs, key=lambda p: len(p.get("propose", ())))
    followers = [p for p in procs if p is not leader]
    props = leader["propose"]
    stages: dict[str, list[float]] = {}

    def get(p: dict[str, list[int]], tag: str) -> list[int]:
        return p.get(tag, [])

    for k, tp in enumerate(props[1:-1], 1):
        limit = props[k + 1]
        s: dict[str, int | None] = {}
        s["http_in"] = _before(get(leader, "http_in"), tp)
        s["propose"] = tp
        s["app_sent"] = _after(get(leader, "flush"), tp, limit)
        s["L.ready_end"] = _after(get(leader, "ready_end"), tp, limit)
        s["L.submit"] = _after(get(leader, "submit"), tp, limit)
        s["L.wdb"] = _after(get(leader, "wdb"), tp, limit)
        s["L.fsync"] = _after(get(leader, "io"), tp, limit)
        s["L.wdb_end"] = _after(get(leader, "wdb_end"), tp, limit)
        s["L.fsync_end"] = _before(get(leader, "io_end"), s["L.wdb_end"]) if s["L.wdb_end"] else None
        s["L.resolved"] = _after(get(leader, "resolved"), tp, limit)
        if None in s.values():
            continue
        best = None
        for f in followers:
            a = s["app_sent"]
            fs: dict[str, int | None] = {}
            fs["F.peer_in"] = _after(get(f, "peer_in"), a, limit)
            if fs["F.peer_in"] is None:
                continue
            fs["F.step"] = _after(get(f, "step"), fs["F.peer_in"], limit)
            fs["F.ready_end"] = _after(get(f, "ready_end"), fs["F.peer_in"], limit)
            fs["F.submit"] = _after(get(f, "submit"), fs["F.peer_in"], limit)
            fs["F.wdb"] = _after(get(f, "wdb"), fs["F.peer_in"], limit)
            if fs["F.wdb"] is None:
                continue
            fs["F.fsync"] = _after(get(f, "io"), fs["F.wdb"], limit)
            fs["F.wdb_end"] = _after(get(f, "wdb_end"), fs["F.wdb"], limit)
            fs["F.fsync_end"] = _before(get(f, "io_end"), fs["F.wdb_end"]) if fs["F.wdb_end"] else None
            fs["F.resolved"] = _after(get(f, "resolved"), fs["F.wdb"], limit)
            if fs["F.resolved"] is None:
                continue
            fs["F.resp_sent"] = _after(get(f, "flush"), fs["F.resolved"], limit)
            if None in fs.values():
                continue
            if best is None or fs["F.resp_sent"] < best["F.resp_sent"]:  # type: ignore[operator]
                best = fs
        if best is None:
            continue
        s.update(best)
        s["L.resp_in"] = _after(get(leader, "peer_in"), best["F.resp_sent"], limit)  # type: ignore[arg-type]
        if s["L.resp_in"] is None:
            continue
        s["L.resp_step"] = _after(get(leader, "step"), s["L.resp_in"], limit)  # type: ignore[arg-type]
        ready = max(s["L.resp_in"], s["L.resolved"])  # type: ignore[type-var]
        s["L.apply"] = _after(get(leader, "apply"), ready, limit)
        s["L.apply_end"] = _after(get(leader, "apply_end"), ready, limit)
        s["L.settle"] = _after(get(leader, "settle"), ready, limit)
        s["L.settle_end"] = _after(get(leader, "settle_end"), ready, limit)
        if None in s.values():
            continue
        for name, t in s.items():
            stages.setdefault(name, []).append((t - s["http_in"]) / 1000.0)  # type: ignore[operator]
    n = len(stages.get("http_in", []))
    print(f"{n} writes aligned (of {len(props)} proposals); median us since the leader read the request")
    names = list(stages)
    for name in sorted(names, key=lambda x: statistics.median(stages[x])):
        print(f"  {name:14s} {statistics.median(stages[name]):8.1f}")
    deltas = [
        ("http_in -> propose", "http_in", "propose"),
        ("propose -> app_sent", "propose", "app_sent"),
        ("app_sent -> F.peer_in", "app_sent", "F.peer_in"),
        ("F.peer_in -> F.step", "F.peer_in", "F.step"),
        ("F.step -> F.ready_end", "F.step", "F.ready_end"),
        ("F.ready_end -> F.submit", "F.ready_end", "F.submit"),
        ("F.submit -> F.wdb (thread)", "F.submit", "F.wdb"),
        ("F.wdb -> F.fsync", "F.wdb", "F.fsync"),
        ("F.io (pwritev[+fdatasync])", "F.fsync", "F.fsync_end"),
        ("F.fsync_end -> F.wdb_end", "F.fsync_end", "F.wdb_end"),
        ("F.wdb_end -> F.resolved", "F.wdb_end", "F.resolved"),
        ("F.resolved -> F.resp_sent", "F.resolved", "F.resp_sent"),
        ("F.resp_sent -> L.resp_in", "F.resp_sent", "L.resp_in"),
        ("L: propose -> ready_end", "propose", "L.ready_end"),
        ("L: app_sent -> submit", "app_sent", "L.submit"),
        ("L: submit -> wdb (thread)", "L.submit", "L.wdb"),
        ("L.wdb (whole)", "L.wdb", "L.wdb_end"),
        ("L.io (pwritev[+fdatasync])", "L.fsync", "L.fsync_end"),
        ("L.wdb_end -> L.resolved", "L.wdb_end", "L.resolved"),
        ("L.resp_in -> L.resp_step", "L.resp_in", "L.resp_step"),
        ("L.resp_step -> L.apply", "L.resp_step", "L.apply"),
        ("L.resolved -> L.apply", "L.resolved", "L.apply"),
        ("L.apply (fsm)", "L.apply", "L.apply_end"),
        ("L.apply_end -> settle", "L.apply_end", "L.settle"),
        ("settle (answer written)", "L.settle", "L.settle_end"),
        ("http_in -> answer", "http_in", "L.settle_end"),
    ]
    print("stage deltas (median of per-write differences, us)")
    for label, a, b in deltas:
        if a in stages and b in stages:
            d = [y - x for x, y in zip(stages[a], stages[b])]
            print(f"  {label:28s} {statistics.median(d):8.1f}")
    follower_last = sum(1 for r, w in zip(stages["L.resp_in"], stages["L.resolved"]) if r > w)
    print(f"  follower's answer arrived after the leader's own write in {follower_last}/{n} writes")


if __name__ == "__main__":
    analyse(sys.argv[1])
