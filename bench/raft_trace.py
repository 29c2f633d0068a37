"""Per-stage timestamps of Raft writes across a cluster's processes, and their analysis.

Installed by bench/raft_server_wrapper.py when `RAFT_TRACE=<prefix>` is in the environment:
without touching daemon code it wraps the functions one write passes through and stamps
`time.perf_counter_ns()` (CLOCK_MONOTONIC, the same clock in every process on a machine) on
entry/exit; each process writes `<prefix>.<pid>.json` when it stops. Then

    .venv/bin/python bench/raft_trace.py <prefix>

lines the processes' stamps up write by write and prints the median of each stage of a
concurrency-1 PUT. Alignment assumes one write in flight at a time (c1): each stage is the first
matching stamp after the previous stage's, so run it with `--conc 1` only.

    .venv/bin/python bench/raft_trace.py <prefix> forwarded

does the same for a c1 write sent to a follower (`--only "PUT follower"`), hop by hop: the
follower's HTTP read, its forwarder, the batch frame, the leader's RPC read, proposal, apply
and answer frame, and the follower's read of it and HTTP answer (`analyse_forwarded`).
"""

from __future__ import annotations

import collections
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
    around(node.RaftServer, "propose_batch", "propose")  # a follower's forwarded batch
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

    _install_forwarding(around)
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


def _install_forwarding(around: Any) -> None:
    """Stamps of a write forwarded by a follower (`PUT follower`): its hand-over to the
    forwarder, the batch's dispatch, every RPC connection's reads (the StreamReaderProtocol
    of the pool's and the listener's RPC streams: neither HTTP nor Raft uses one), the leader's
    task-less offer, the corks' writes and flushes on both sides, and the write's settling
    (which writes the HTTP answer, so its `_end` is the answer sent)."""
    import asyncio

    from proconsul import transport
    from proconsul.server import forwarding

    around(forwarding.WriteForwarder, "submit_now", "fwd_submit")
    around(forwarding.WriteForwarder, "_dispatch", "fwd_dispatch")
    around(forwarding._CallbackWrite, "_fire", "fwd_settle", end=True)
    around(asyncio.StreamReaderProtocol, "data_received", "rpc_in")
    if hasattr(transport, "_DirectReads"):  # a pool connection's answers, read without a task
        around(transport._DirectReads, "data_received", "rpc_in")
    around(transport._Cork, "write", "cork_write")
    around(transport._Cork, "_flush", "cork_flush", end=True)
    if hasattr(transport._Cork, "write_now"):  # a frame written at once, past the cork's flush
        around(transport._Cork, "write_now", "cork_now", end=True)
    offer = transport._offer

    def traced_offer(*a: Any) -> Any:
        EVENTS.append(("rpc_offer", time.perf_counter_ns()))
        return offer(*a)

    transport._offer = traced_offer


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


def analyse_forwarded(prefix: str) -> None:
    """The stages of a c1 write sent to a follower (`PUT follower`), hop by hop: on the
    receiving follower (F), the leader (L) and the other follower (O)."""
    procs = []
    for path in sorted(glob.glob(prefix + ".*.json")):
        with open(path, encoding="utf-8") as fh:
            procs.append({k: sorted(v) for k, v in json.load(fh).items()})
    leader = max(procs, key=lambda p: len(p.get("rpc_offer", ())))
    rf = max(procs, key=lambda p: len(p.get("fwd_submit", ())))
    # The other follower (its file may be missing: a process killed before it dumped).
    other = next((p for p in procs if p is not leader and p is not rf), {})
    offers = leader["rpc_offer"]  # one per forwarded batch: one write each at c1
    missing: collections.Counter[str] = collections.Counter()
    rows: list[dict[str, int]] = []
    busy: list[int] = []

    def g(p: dict[str, list[int]], tag: str) -> list[int]:
        return p.get(tag, [])

    for p in procs:  # a frame leaves by the cork's flush or at once (`write_now`)
        for tag in ("cork_write", "cork_flush", "cork_flush_end"):
            p[tag + "+now"] = sorted(g(p, tag) + g(p, "cork_now_end" if tag.endswith("_end") else "cork_now"))

    for k, to in enumerate(offers[1:-1], 1):
        limit = offers[k + 1]
        s: dict[str, int | None] = {}
        s["L.offer"] = to
        s["F.http_in"] = _before(g(rf, "http_in"), to)
        if s["F.http_in"] is None or to - s["F.http_in"] > 5_000_000:
            missing["early"] += 1
            continue
        s["F.submit"] = _after(g(rf, "fwd_submit"), s["F.http_in"], to)
        s["F.dispatch"] = _after(g(rf, "fwd_dispatch"), s["F.http_in"], to)
        s["F.send"] = _after(g(rf, "cork_flush+now"), s["F.http_in"], to)  # its end may follow L's read
        s["L.rpc_in"] = _before(g(leader, "rpc_in"), to)
        tp = _after(g(leader, "propose"), to, limit) if "propose" in leader else to  # older traces: no stamp
        if tp is None:
            missing["early"] += 1
            continue
        s["L.propose"] = tp
        s["L.app_sent"] = _after(g(leader, "flush"), tp, limit)
        s["F.peer_in"] = _after(g(rf, "peer_in"), tp, limit)
        if other:
            s["O.peer_in"] = _after(g(other, "peer_in"), tp, limit)
        s["F.wdb_end"] = _after(g(rf, "wdb_end"), tp, limit)
        if other:
            s["O.wdb_end"] = _after(g(other, "wdb_end"), tp, limit)
        s["L.wdb_end"] = _after(g(leader, "wdb_end"), tp, limit)
        s["L.apply"] = _after(g(leader, "apply"), tp, limit)
        if s["L.apply"] is None:
            missing["early"] += 1
            continue
        s["L.apply_end"] = _after(g(leader, "apply_end"), s["L.apply"], limit)
        s["L.ans_write"] = _after(g(leader, "cork_write+now"), s["L.apply"], limit)
        if s["L.ans_write"] is None:
            missing["early"] += 1
            continue
        s["L.ans_flush"] = _after(g(leader, "cork_flush+now"), s["L.ans_write"] - 1, limit)
        s["L.ans_sent"] = _after(g(leader, "cork_flush_end+now"), s["L.ans_write"], limit)
        if s["L.ans_sent"] is None:
            missing["early"] += 1
            continue
        # The follower may read the answer before the leader's send returns: after its start.
        s["F.rpc_in"] = _after(g(rf, "rpc_in"), s["L.ans_flush"], limit)
        s["F.settle"] = _after(g(rf, "fwd_settle"), s["L.ans_flush"], limit)
        s["F.answered"] = _after(g(rf, "fwd_settle_end"), s["L.ans_flush"], limit)
        if None in s.values():
            missing[next(n for n, t in s.items() if t is None)] += 1
            continue
        rows.append(s)  # type: ignore[arg-type]
        # The receiving follower's Raft reads between the leader's answer leaving and its read.
        busy.append(sum(1 for t in g(rf, "peer_in") if s["L.ans_flush"] <= t <= s["F.settle"]))  # type: ignore[operator]
    print(f"{len(rows)} forwarded writes aligned (of {len(offers)} batches); median us since F.http_in")
    if missing:
        print(f"  not aligned, by first missing stage: {dict(missing)}")
    if not rows:
        return
    for name in sorted(rows[0], key=lambda x: statistics.median(r[x] - r["F.http_in"] for r in rows)):
        print(f"  {name:14s} {statistics.median(r[name] - r['F.http_in'] for r in rows) / 1000:8.1f}")
    pairs = [("F.http_in", "F.submit"), ("F.submit", "F.dispatch"), ("F.dispatch", "F.send"),
             ("F.send", "L.rpc_in"), ("L.rpc_in", "L.offer"), ("L.offer", "L.propose"),
             ("L.propose", "L.app_sent"), ("L.app_sent", "F.peer_in"), ("L.app_sent", "O.peer_in"),
             ("L.propose", "L.wdb_end"), ("L.apply", "L.apply_end"), ("L.apply_end", "L.ans_write"), ("L.ans_write", "L.ans_flush"),
             ("L.ans_flush", "L.ans_sent"), ("L.ans_flush", "F.rpc_in"), ("F.rpc_in", "F.settle"),
             ("F.settle", "F.answered"), ("F.http_in", "F.answered"), ("L.offer", "L.ans_sent")]
    print("stage deltas (median of per-write differences, us)")
    for a, b in pairs:
        if a not in rows[0] or b not in rows[0]:
            continue
        print(f"  {a + ' -> ' + b:28s} {statistics.median(r[b] - r[a] for r in rows) / 1000:8.1f}")
    print(f"  F's Raft reads between the answer leaving and its settling: median {statistics.median(busy)}, "
          f"writes with any {sum(1 for b in busy if b)}/{len(busy)}")
    late = sum(1 for r in rows if r["F.wdb_end"] > r["L.ans_sent"])
    print(f"  F's own log write ended after the leader's answer left in {late}/{len(rows)} writes")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "forwarded":
        analyse_forwarded(sys.argv[1])
    else:
        analyse(sys.argv[1])
