"""Reads from a one-server cluster with `http_workers` = 1 and = 2 (issue 21 item 3), by wrk.

Run by hand (needs `wrk`):

    .venv/bin/python bench/http_workers.py                       # 10 s per run, c16 and c64
    .venv/bin/python bench/http_workers.py --workers 1,2 --repeat 3 --json /tmp/w.json

For each `http_workers` value it starts a real server agent (`-server -bootstrap-expect=1`,
durable, default raft_multiplier) on 127.0.0.1 free ports, writes one 64-byte key, and runs wrk
(after a warm-up) on the default-mode GET and the `?stale` GET of that key at each concurrency,
the settings alternating run by run (order flipped each round) so a neighbour's load on a shared
box falls on all of them alike.
It prints req/s and p50/p99, the CPU the agent and its workers used together (cores), req/s per
core used, and the load average before each run (what else was running: the box is shared). Everything it started
is stopped by pid in a `finally` (the workers exit with their agent).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HOST, PROCONSUL, Procs, family_cpu_seconds, free_port, http_put, wait_http  # noqa: E402
from kv_http import parse_wrk, run_wrk  # noqa: E402


def start_agent(workers: int, procs: Procs, tmp: Path) -> tuple[Any, str]:
    http_port, dns, lan, wan, srv = (free_port() for _ in range(5))
    data = tmp / f"data{workers}"
    script = PROCONSUL if PROCONSUL.exists() else Path(sys.executable).parent / "proconsul"
    cmd = [str(script), "agent", "-server", "-bootstrap-expect=1", f"-data-dir={data}", f"-bind={HOST}",
           f"-client={HOST}", f"-http-port={http_port}", f"-dns-port={dns}", f"-serf-lan-port={lan}",
           f"-serf-wan-port={wan}", f"-server-port={srv}", f"-node=bench{workers}", "-hcl", f"http_workers = {workers}"]
    log = tmp / f"agent{workers}.log"
    proc = procs.start(f"agent(http_workers={workers})", cmd, log)
    base = f"http://{HOST}:{http_port}"
    wait_http(f"{base}/v1/status/leader", proc, log, timeout_s=120)
    http_put(f"{base}/v1/kv/bench/key", b"v" * 64)
    # The workers serve once their replica is bootstrapped: wait until a read names a worker.
    deadline = time.monotonic() + 120
    while workers > 1 and time.monotonic() < deadline:
        conn = http.client.HTTPConnection(HOST, http_port, timeout=10)
        conn.request("GET", "/v1/kv/bench/key")
        resp = conn.getresponse()
        resp.read()
        conn.close()
        if resp.getheader("X-Proconsul-Worker"):
            break
        time.sleep(0.05)
    return proc, base


def measure(workers: int, proc: Any, base: str, conc: int, mode: str, query: str,
            args: argparse.Namespace) -> dict[str, object]:
    url = f"{base}/v1/kv/bench/key{query}"
    run_wrk(url, conc, args.warmup, None, None, args.threads)
    load = os.getloadavg()[0]
    c0, t0 = family_cpu_seconds(proc.pid), time.monotonic()
    out, _ = run_wrk(url, conc, args.duration, None, None, args.threads)
    cpu = (family_cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
    rps, p50, p99, errors = parse_wrk(out)
    return {"workers": workers, "mode": mode, "conc": conc, "rps": rps, "p50_ms": p50, "p99_ms": p99,
            "errors": errors, "cpu": cpu, "rps_per_core": rps / cpu if cpu else 0.0, "load1_before": load}


def main() -> int:
    parser = argparse.ArgumentParser(description="KV GET with http_workers 1 vs 2 (wrk)")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--conc", default="16,64")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    procs = Procs()
    rows: list[dict[str, object]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
            # Every agent runs from the start (an idle one costs nothing measurable) and the
            # settings alternate run by run, their order flipped each round, so a neighbour's
            # load on the shared box falls on both alike rather than on whichever ran last.
            counts = [int(w) for w in args.workers.split(",")]
            agents = {w: start_agent(w, procs, Path(tmp)) for w in counts}
            for rnd in range(args.repeat):
                for conc in [int(c) for c in args.conc.split(",")]:
                    for mode, query in (("default", ""), ("stale", "?stale")):
                        for w in (counts if rnd % 2 == 0 else counts[::-1]):
                            row = measure(w, *agents[w], conc, mode, query, args)
                            rows.append(row)
                            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        procs.stop_all()
    print(f"{'workers':>7} {'mode':8} {'conc':>4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'cpu':>5} {'rps/core':>8} "
          f"{'load1':>5} {'err':>4}")
    groups: dict[tuple[object, object, object], list[dict[str, object]]] = {}
    for r in rows:
        groups.setdefault((r["workers"], r["mode"], r["conc"]), []).append(r)
    for (w, mode, conc), rs in groups.items():
        med = {k: statistics.median(float(r[k]) for r in rs)  # type: ignore[arg-type]
               for k in ("rps", "p50_ms", "p99_ms", "cpu", "rps_per_core", "load1_before")}
        print(f"{w:>7} {mode:8} {conc:>4} {med['rps']:>8.0f} {med['p50_ms']:>7.2f} {med['p99_ms']:>7.2f} "
              f"{med['cpu']:>5.2f} {med['rps_per_core']:>8.0f} {med['load1_before']:>5.2f} {sum(int(r['errors']) for r in rs):>4}")  # type: ignore[call-overload]
    if args.json:
        Path(args.json).write_text(json.dumps({"nproc": os.cpu_count(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
