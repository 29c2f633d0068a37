"""One Raft log write, in process: the SQLite log (before issue 21) against the segment log.

Run by hand: `flock /tmp/bench.lock .venv/bin/python bench/raft_log_write.py [--calls 1500]
[--rounds 3] [--old-storage PATH]`. Each call is what the log-writer thread does per Ready:
`DurableLog.write_db(hard_state, batch, None)` (entries of 150 bytes, the commit index moved)
then `apply_memory`, for batches of 1, 10 and 30 entries. Reported per implementation and batch
size: wall-clock p50/p90 of a call and the CPU time it spent (thread_time, p50), the cost a
write adds to the critical path and to the process's CPU budget. The old implementation is main's
`raft/storage.py` before issue 21, loaded from `--old-storage` (default: `git show b6f418a:`, the
last commit before the change). Rounds alternate the order. Results: docs/PERFORMANCE.md (issue 21).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "daemon"))

from proconsul.raft import storage as new_storage  # noqa: E402

PAYLOAD = b"v" * 150


def load_old(path: str | None) -> Any:
    if path is None:
        source = subprocess.run(["git", "show", "b6f418a:daemon/proconsul/raft/storage.py"], check=True,
                                capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout
        fd, path = tempfile.mkstemp(suffix="_old_storage.py")
        with os.fdopen(fd, "w") as fh:
            fh.write(source)
    spec = importlib.util.spec_from_file_location("old_storage", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_storage"] = module
    spec.loader.exec_module(module)
    return module


def run(impl: str, mod: Any, directory: str, batch: int, calls: int) -> tuple[list[float], list[float]]:
    log = mod.DurableLog(os.path.join(directory, "raft.db")) if impl == "sqlite" else mod.raft_log(directory)
    log.open()
    walls: list[float] = []
    cpus: list[float] = []
    index = 1
    try:
        for i in range(calls + 50):
            entries = [mod.LogRecord(index + k, 1, 0, PAYLOAD) for k in range(batch)]
            hs = mod.HardState(1, "me", index - 1)
            w, c = time.perf_counter(), time.thread_time()
            log.write_db(hs, entries, None)
            log.apply_memory(hs, entries, None)
            c, w = time.thread_time() - c, time.perf_counter() - w
            index += batch
            if i >= 50:  # warm-up (page cache, the first segment's extents)
                walls.append(w)
                cpus.append(c)
    finally:
        log.close()
    return walls, cpus


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--old-storage", default=None, help="path of the pre-issue-21 raft/storage.py")
    ap.add_argument("--dir", default="/tmp", help="where the logs are written (the data disk)")
    args = ap.parse_args()
    impls = {"sqlite": load_old(args.old_storage), "segments": new_storage}
    results: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
    for r in range(args.rounds):
        order = list(impls) if r % 2 == 0 else list(impls)[::-1]
        for batch in (1, 10, 30):
            for impl in order:
                directory = tempfile.mkdtemp(prefix="raft_log_write_", dir=args.dir)
                try:
                    walls, cpus = run(impl, impls[impl], directory, batch, args.calls)
                finally:
                    shutil.rmtree(directory)
                acc = results.setdefault((impl, batch), ([], []))
                acc[0].extend(walls)
                acc[1].extend(cpus)
    print(f"{'impl':9s} {'batch':>5s} {'wall p50 ms':>12s} {'wall p90 ms':>12s} {'cpu p50 us':>11s} {'cpu mean us':>12s}")
    for batch in (1, 10, 30):
        for impl in impls:
            walls, cpus = results[(impl, batch)]
            print(f"{impl:9s} {batch:5d} {pct(walls, .5) * 1e3:12.3f} {pct(walls, .9) * 1e3:12.3f} "
                  f"{pct(cpus, .5) * 1e6:11.0f} {sum(cpus) / len(cpus) * 1e6:12.0f}")


if __name__ == "__main__":
    main()
