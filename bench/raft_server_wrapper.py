"""Run a proconsul agent with a batch counter on the Raft log's fsync path, optionally under cProfile.

    .venv/bin/python bench/raft_server_wrapper.py --stats /tmp/s1.json [--prof /tmp/s1.prof] -- \
        -server -bootstrap-expect=3 -data-dir=... (the `proconsul agent` arguments)

Used by bench/raft_vs_etcd.py. Without touching daemon code it wraps
`proconsul.raft.storage.DurableLog.write_db` (one log write = one fdatasync) and counts,
cumulatively: calls, entries written, calls with no entries (hard state only), the seconds spent
inside (the fsync dominates) and a histogram of entries per call. A daemon thread rewrites
`--stats` (temporary file + rename) every 0.25 s, so a benchmark can take deltas around a run.
It also counts the writes the server forwarded to its leader (`fwd_writes`) and the
`Raft.ApplyBatch` calls that carried them (`fwd_calls`).
The wrapper costs one Python call and a few additions per batch (the batch itself costs ~1 ms).

With `GC_TRACE=<dir>` in the environment each agent also records its collector pauses and its
event loop's lag in `<dir>/<pid>.gc` and `<dir>/<pid>.lag` (CLOCK_MONOTONIC), to place a run's
p99 outliers. `<prefix>.snap` gets a line "<monotonic at the end> <stage> <ms>" for each stage of an
automatic Raft snapshot, timed by wrapping the functions that run them: `begin` (`_maybe_snapshot`
when it started one: the view, on the loop), `encode` (the returned encoder, in its thread; a
third field gives its start), `finish` (`_finish_snapshot`, on the loop), `compact`
(`DurableLog.compact_prefix`, inside `finish`; in trees that split it, `compact_memory` inside
`finish` and `compact_file`, `write_compaction` on the log writer thread), `segments` (the
segment deletions), `snapfile` (the snapshot's file written, in its thread) and, in trees that
delete compacted segments in pieces, each `delete_step`. `<prefix>.slow` gets the log writes and
forwarded batch round trips of 2 ms or more (see SLOW_OUT).

With `--prof` the agent runs under cProfile and the stats are dumped when it stops (SIGTERM);
cProfile slows Python-level calls, so read shares, not absolute times. With `PROF_WINDOW=1` in
the environment the profiler runs only between a SIGUSR1 and a SIGUSR2 (bench/catalog_scale.py
profiles its write stream that way).
"""

from __future__ import annotations

import cProfile
import json
import os
import signal
import sys
import threading
import time
from typing import Any

# The agent measured is this tree's (a shared venv's editable install may point at another
# checkout), unless PYTHONPATH names a daemon on purpose (another tree measured with this file).
if not any(os.path.isdir(os.path.join(p, "proconsul")) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "daemon"))

from proconsul import transport  # noqa: E402
from proconsul.agent.agent import run_agent  # noqa: E402
from proconsul.raft import storage  # noqa: E402
from proconsul.server import forwarding  # noqa: E402

STATS: dict[str, Any] = {"calls": 0, "entries": 0, "hs_only": 0, "busy_s": 0.0, "hist": {}}
_LOCK = threading.Lock()
# Under GC_TRACE: `<pid>.slow` gets "<monotonic at the end> <what> <ms> [n]" for each log write
# (`write_db`) and forwarded batch round trip (`fwd_rtt`) of at least SLOW_S, to place a run's
# p99 outliers against the snapshots' stages.
SLOW_OUT: list[Any] = []
SLOW_S = 0.002


def _install_counter() -> None:
    original = storage.DurableLog.write_db

    def write_db(self: storage.DurableLog, hard_state: Any, batch: list[Any], truncate_from: Any) -> None:
        t0 = time.perf_counter()
        try:
            original(self, hard_state, batch, truncate_from)
        finally:
            dt = time.perf_counter() - t0
            n = len(batch)
            if SLOW_OUT and dt >= SLOW_S:
                SLOW_OUT[0].write(f"{time.monotonic():.6f} write_db {dt * 1000.0:.3f} {n}\n")
            with _LOCK:
                STATS["calls"] += 1
                STATS["entries"] += n
                STATS["busy_s"] += dt
                if n == 0:
                    STATS["hs_only"] += 1
                bucket = str(n if n <= 8 else 16 if n <= 16 else 32 if n <= 32 else 64 if n <= 64 else 65)
                STATS["hist"][bucket] = STATS["hist"].get(bucket, 0) + 1

    storage.DurableLog.write_db = write_db  # type: ignore[method-assign]

    # Writes this server forwarded to its leader, and in how many Raft.ApplyBatch calls: counted
    # where the pool sends them (`call`, or `send_call` when it sent), whichever way the
    # forwarder sends a batch.
    def count(method: str, body: Any) -> None:
        if method == forwarding.BATCH_METHOD and isinstance(body, dict):
            with _LOCK:
                STATS["fwd_calls"] = STATS.get("fwd_calls", 0) + 1
                STATS["fwd_writes"] = STATS.get("fwd_writes", 0) + len(body.get("commands") or ())

    call = transport.ConnectionPool.call

    async def counted_call(self: transport.ConnectionPool, address: str, method: str, body: Any,
                           *args: Any, **kwargs: Any) -> Any:
        count(method, body)
        return await call(self, address, method, body, *args, **kwargs)

    transport.ConnectionPool.call = counted_call  # type: ignore[method-assign]

    def _timed(done: Any) -> Any:
        # `fwd_rtt_s`: the summed round trips of the batches sent with send_call (sent -> answer
        # read), `fwd_rtt_hist`: their count by millisecond.
        t0 = time.perf_counter()

        def answered(*a: Any) -> Any:
            dt = time.perf_counter() - t0
            if SLOW_OUT and dt >= SLOW_S:
                SLOW_OUT[0].write(f"{time.monotonic():.6f} fwd_rtt {dt * 1000.0:.3f}\n")
            with _LOCK:
                STATS["fwd_rtt_s"] = STATS.get("fwd_rtt_s", 0.0) + dt
                hist = STATS.setdefault("fwd_rtt_hist", {})
                key = str(min(int(dt * 1000), 50))
                hist[key] = hist.get(key, 0) + 1
            return done(*a)

        return answered
    send_call = getattr(transport.ConnectionPool, "send_call", None)
    if send_call is not None:  # trees before it send every batch through `call`
        def counted_send_call(self: transport.ConnectionPool, address: str, method: str, body: Any,
                              *args: Any, **kwargs: Any) -> bool:
            if method == forwarding.BATCH_METHOD and args:
                args = (_timed(args[0]), *args[1:])  # the batch's round trip, from here to its answer
            sent = bool(send_call(self, address, method, body, *args, **kwargs))
            if sent:
                count(method, body)
            return sent

        transport.ConnectionPool.send_call = counted_send_call  # type: ignore[method-assign]


def _install_gc_trace(prefix: str) -> None:
    """GC_TRACE=<dir>, prefix <dir>/<pid>. `<prefix>.gc`: "<monotonic> <generation> <pause ms> <collected>" for every collection of
    generation 1 or 2 and any other over 1 ms; `<prefix>.lag`: the loop's wake-up lag every 10 ms
    (bench/common.py). CLOCK_MONOTONIC, comparable with the bench's own time stamps."""
    import gc

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import install_loop_lag_monitor

    install_loop_lag_monitor(prefix + ".lag", 0.01)
    out = open(prefix + ".gc", "a", buffering=1)  # noqa: SIM115 (open for the process's life)
    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000.0
        gen = info.get("generation", 0)
        if gen > 0 or ms > 1.0:
            out.write(f"{time.monotonic():.6f} {gen} {ms:.3f} {info.get('collected', 0)}\n")

    gc.callbacks.append(on_gc)


def _install_snapshot_stamps(path: str) -> None:
    """Time each stage of an automatic snapshot (see the module docstring) without changing daemon code."""
    from proconsul.raft import node
    from proconsul.state import store

    out = open(path, "a", buffering=1)  # noqa: SIM115 (open for the process's life)

    def stamp(stage: str, t0: float, extra: str = "") -> None:
        ms = (time.perf_counter() - t0) * 1000.0
        with _LOCK:
            out.write(f"{time.monotonic():.6f} {stage} {ms:.3f}{extra}\n")

    def timed(owner: Any, name: str, stage: str, only_if: Any = None) -> None:
        original = getattr(owner, name)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            before = only_if(self) if only_if else None
            t0 = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                if only_if is None or (before is None and only_if(self) is not None):
                    stamp(stage, t0)

        setattr(owner, name, wrapper)

    timed(node.RaftServer, "_maybe_snapshot", "begin", only_if=lambda srv: srv._snapshot_job)
    timed(node.RaftServer, "_finish_snapshot", "finish")
    if hasattr(storage.DurableLog, "compact_memory"):  # the loop's half; the file half on the log writer
        timed(storage.DurableLog, "compact_memory", "compact")
        timed(storage.DurableLog, "write_compaction", "compact_file")
    else:
        timed(storage.DurableLog, "compact_prefix", "compact")
    timed(node.DiskStorage, "write_snapshot_file", "snapfile")  # the snapshot's file: write, fsync, rename
    if hasattr(storage.DurableLog, "_drop_segments_below"):
        timed(storage.DurableLog, "_drop_segments_below", "segments")
    if hasattr(storage.DurableLog, "delete_step"):  # a renamed segment's deletion, piece by piece
        step = storage.DurableLog.delete_step

        def delete_step(self: storage.DurableLog) -> bool:
            if not self._doomed:
                return False
            t0 = time.perf_counter()
            try:
                return step(self)
            finally:
                stamp("delete_step", t0)

        storage.DurableLog.delete_step = delete_step  # type: ignore[method-assign]
    view = store.Store.snapshot_view

    def snapshot_view(self: store.Store) -> Any:
        encode = view(self)

        def timed_encode() -> bytes:
            t0 = time.perf_counter()
            started = time.monotonic()
            try:
                return encode()
            finally:
                stamp("encode", t0, f" {started:.6f}")

        return timed_encode

    store.Store.snapshot_view = snapshot_view  # type: ignore[method-assign]


def _dump(path: str) -> None:
    with _LOCK:
        text = json.dumps(STATS)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _dumper(path: str) -> None:
    while True:
        try:
            _dump(path)
        except OSError:
            pass
        time.sleep(0.25)


def main(argv: list[str]) -> int:
    stats_path = prof_path = None
    while argv and argv[0] != "--":
        opt = argv.pop(0)
        if opt == "--stats":
            stats_path = argv.pop(0)
        elif opt == "--prof":
            prof_path = argv.pop(0)
        else:
            raise SystemExit(f"unknown option {opt}")
    if argv and argv[0] == "--":
        argv.pop(0)
    _install_counter()
    trace = os.environ.get("RAFT_TRACE")
    if trace:  # per-stage timestamps of each write (bench/raft_trace.py)
        import raft_trace

        raft_trace.install()
    gc_trace = os.environ.get("GC_TRACE")
    if gc_trace:  # every collector pause and the event loop's lag, for placing p99 outliers
        _install_gc_trace(os.path.join(gc_trace, str(os.getpid())))
        _install_snapshot_stamps(os.path.join(gc_trace, str(os.getpid())) + ".snap")
        SLOW_OUT.append(open(os.path.join(gc_trace, str(os.getpid())) + ".slow", "a", buffering=1))  # noqa: SIM115
    if stats_path:
        threading.Thread(target=_dumper, args=(stats_path,), daemon=True, name="batch-stats").start()
    prof = cProfile.Profile() if prof_path else None
    if prof is not None:
        if os.environ.get("PROF_WINDOW"):
            # Only between SIGUSR1 (start) and SIGUSR2 (stop): a benchmark profiles one phase.
            signal.signal(signal.SIGUSR1, lambda *_: prof.enable())
            signal.signal(signal.SIGUSR2, lambda *_: prof.disable())
        else:
            prof.enable()
    try:
        return run_agent(argv)
    finally:
        if prof is not None:
            prof.disable()
            prof.dump_stats(prof_path)
        if stats_path:
            _dump(stats_path)
        if trace:
            raft_trace.dump(trace)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
