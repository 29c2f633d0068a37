"""A 3-server proconsul cluster under one long, unbroken PUT load: every server's RSS over time
and the collector's complete scans (agent/gc_policy.py), to check what a change to the policy
does to memory when the load never pauses (no quiet window, so every scan waits for its deadline).

    PYTHONPATH=<tree>/daemon .venv/bin/python bench/gc_long_load.py --seconds 120 --conc 64 \
        [--keys 100000] [--leader]

wrk PUTs to a follower (or `--leader`), to `--keys` distinct keys in turn (so the store, and the
heap, grow until every key exists); RSS (VmRSS) of each server is sampled every second. Prints
one line per 10 s and a summary: peak and final RSS per server, the scans each logged
("gc: complete scan" lines: objects live, ms, how long each was due).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import Procs
from kv_http import parse_wrk, run_wrk
from raft_vs_etcd import free_subnet, start_proconsul

VALUE = "x" * 64


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--conc", type=int, default=64)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--leader", action="store_true", help="send the PUTs to the leader")
    args = ap.parse_args(argv)
    procs = Procs()
    root = Path(tempfile.mkdtemp(prefix="gc_long_load."))
    stats = root / "stats"
    stats.mkdir()
    try:
        pc = start_proconsul(procs, root, free_subnet((8300, 8301, 8500, 8600)), None, stats)
        pids = pc.pids()
        target = pc.leader if args.leader else pc.follower()
        names = {pid: f"s{n}" + ("(L)" if ip == pc.leader else "(T)" if ip == target else "")
                 for n, (ip, pid) in enumerate(zip(pc.ips, pids), 1)}
        script = root / "put.lua"
        script.write_text(
            f'local n = 0\nrequest = function()\n  n = n + 1\n'
            f'  return wrk.format("PUT", "/v1/kv/long/k" .. (n % {args.keys}), nil, "{VALUE}")\nend\n')
        samples: dict[int, list[tuple[float, int]]] = {p: [] for p in pids}
        stop = threading.Event()
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                now = time.monotonic() - t0
                for p in pids:
                    samples[p].append((now, rss_kib(p)))
                stop.wait(1.0)

        before = {p: rss_kib(p) for p in pids}
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        out, _ = run_wrk(f"http://{target}:8500/v1/kv/long/k", args.conc, args.seconds, script, None, 1)
        time.sleep(2.0)  # an idle moment after the load: the scans held back run now
        stop.set()
        th.join()
        after = {p: rss_kib(p) for p in pids}
        rps, p50, p99, errors = parse_wrk(out)
        print(f"# {rps:.0f} req/s p50 {p50:.2f} p99 {p99:.2f} ms errors {errors}, {args.seconds:g} s at c{args.conc}")
        for i in range(0, len(samples[pids[0]]), 10):
            row = "  ".join(f"{names[p]} {samples[p][i][1] / 1024:6.1f}" for p in pids if i < len(samples[p]))
            print(f"t={samples[pids[0]][i][0]:5.0f}s  RSS MiB  {row}")
        for p in pids:
            peak = max(r for _, r in samples[p])
            print(f"# {names[p]}: RSS before {before[p] / 1024:.1f} MiB, peak {peak / 1024:.1f}, "
                  f"after {after[p] / 1024:.1f}")
        for n, (_, _, log) in enumerate(pc.procs, 1):
            for line in log.read_text(errors="replace").splitlines():
                m = re.search(r"gc: complete scan: (.*)", line)
                if m:
                    print(f"# s{n} {line[11:23]} {m.group(1)}")
    finally:
        procs.stop_all()
    print(f"# logs in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
