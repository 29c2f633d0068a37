"""Event-loop stalls of a dev agent under KV GET load: wrk's p99.9 next to what stalled the loop.

Run by hand (needs `wrk`):

    .venv/bin/python bench/loop_stalls.py                                  # 20k keys, PUT 8 s, GET c16 10 s
    .venv/bin/python bench/loop_stalls.py --keys 50000 --rounds 3 --duration 10

What it does, all on 127.0.0.1:
1. starts a dev agent through this file's `_agent` wrapper: `run_agent` unchanged, plus a lag
   monitor task on the agent's own loop (sleeps 10 ms again and again and records how late each
   wake-up was) and a `gc.callbacks` hook that records every collection (generation, ms). Both
   write to files the bench reads; no daemon code is changed.
2. writes `--keys` keys of `--value-size` bytes (a heap the size of a small real store), then
   runs a PUT load (`--put-seconds`, c16) as the leader in `bench/raft_vs_etcd.py` sees before its
   GET runs: the Raft log and the store grow, and with them what a full collection scans.
3. for each round: wrk GET of one key at `--conc` for `--duration` s, with a Lua `done()` that
   prints p50/p99/p99.9/max from wrk's histogram; prints them with the loop lag (p99, p99.9, max)
   and the collections seen during the run (count per generation, longest per generation).
Everything it started is stopped by pid in a `finally`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HOST, Procs, free_port, http_put, install_loop_lag_monitor, python_exe, wait_http  # noqa: E402

TICK_S = 0.010

LUA_DONE = (
    "done = function(summary, latency, requests)\n"
    '  io.write(string.format("p50 %d\\n", latency:percentile(50)))\n'
    '  io.write(string.format("p99 %d\\n", latency:percentile(99)))\n'
    '  io.write(string.format("p99.9 %d\\n", latency:percentile(99.9)))\n'
    '  io.write(string.format("max %d\\n", latency.max))\n'
    "end\n"
)


def agent_wrapper(lag_file: str, gc_file: str, argv: list[str]) -> int:
    """run_agent(argv) with a lag monitor on its loop and a GC hook; samples go to the files."""
    from proconsul.agent.agent import run_agent

    gc_out = open(gc_file, "a", buffering=1)
    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            now = time.perf_counter()
            gc_out.write(f"{time.monotonic():.6f} {info['generation']} {(now - started[0]) * 1000:.3f}\n")

    gc.callbacks.append(on_gc)
    install_loop_lag_monitor(lag_file, TICK_S)
    return int(run_agent(argv) or 0)


def read_series(path: Path, t0: float, t1: float) -> list[list[float]]:
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and t0 <= float(parts[0]) <= t1:
            rows.append([float(p) for p in parts[1:]])
    return rows


def pct(vals: list[float], q: float) -> float:
    if not vals:
        return float("nan")
    s = sorted(vals)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def run_wrk(url: str, conc: int, duration: float, lua: Path) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{conc}", f"-d{duration:g}s", "--timeout", "5s", "-s", str(lua), url],
                         capture_output=True, text=True, check=True).stdout
    res: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            res["rps"] = float(parts[1])
        elif parts and parts[0] in ("p50", "p99", "p99.9", "max") and len(parts) == 2:
            res[parts[0]] = int(parts[1]) / 1000.0
    return res


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_agent":
        return agent_wrapper(sys.argv[2], sys.argv[3], sys.argv[4:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=20000)
    ap.add_argument("--value-size", type=int, default=64)
    ap.add_argument("--put-seconds", type=float, default=8.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--agent-arg", action="append", default=[])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="loop_stalls."))
    lag_file, gc_file = tmp / "lag.txt", tmp / "gc.txt"
    lua_get = tmp / "get.lua"
    lua_get.write_text(LUA_DONE)
    lua_put = tmp / "put.lua"
    lua_put.write_text(f'wrk.method = "PUT"\nwrk.body = "{"x" * args.value_size}"\n' + LUA_DONE)
    procs = Procs()
    http_port, dns_port = free_port(), free_port()
    results: list[dict[str, Any]] = []
    try:
        cmd = [python_exe(), __file__, "_agent", str(lag_file), str(gc_file), "-dev", f"-http-port={http_port}",
               f"-dns-port={dns_port}", f"-serf-lan-port={free_port()}", f"-serf-wan-port={free_port()}",
               f"-bind={HOST}", f"-client={HOST}", "-node=stalls", "-log-level=warn", *args.agent_arg]
        agent = procs.start("agent", cmd, tmp / "agent.log", env=dict(os.environ))
        base = f"http://{HOST}:{http_port}"
        wait_http(f"{base}/v1/status/leader", agent, tmp / "agent.log", timeout_s=60)
        # Keys through one transaction per 64 (fast to load, the same store shape as single PUTs).
        value = "x" * args.value_size
        import base64

        b64 = base64.b64encode(value.encode()).decode()
        for start in range(0, args.keys, 64):
            ops = [{"KV": {"Verb": "set", "Key": f"bench/key{i:06d}", "Value": b64}}
                   for i in range(start, min(start + 64, args.keys))]
            http_put(f"{base}/v1/txn", json.dumps(ops).encode())
        http_put(f"{base}/v1/kv/bench/get", value.encode())
        if args.put_seconds > 0:
            put = run_wrk(f"{base}/v1/kv/bench/put", args.conc, args.put_seconds, lua_put)
            print(f"# PUT c{args.conc} {put.get('rps', 0):.0f} req/s  p99.9 {put.get('p99.9', 0):.1f} ms", flush=True)
        print(f"# load {os.getloadavg()}", flush=True)
        for rnd in range(1, args.rounds + 1):
            t0 = time.monotonic()
            r = run_wrk(f"{base}/v1/kv/bench/get", args.conc, args.duration, lua_get)
            t1 = time.monotonic()
            time.sleep(0.6)  # the monitor flushes every 0.5 s
            lags = [row[0] for row in read_series(lag_file, t0, t1)]
            gcs = read_series(gc_file, t0, t1)
            by_gen: dict[int, list[float]] = {}
            for gen, ms in gcs:
                by_gen.setdefault(int(gen), []).append(ms)
            gc_text = "  ".join(f"gen{g} n={len(v)} max={max(v):.1f}ms" for g, v in sorted(by_gen.items()))
            row = {"round": rnd, **r, "lag_p99": pct(lags, 99), "lag_p999": pct(lags, 99.9),
                   "lag_max": max(lags) if lags else float("nan"), "gc": {g: (len(v), max(v)) for g, v in by_gen.items()},
                   "load": os.getloadavg()[0]}
            results.append(row)
            print(f"round {rnd} GET c{args.conc} {r.get('rps', 0):7.0f} req/s  p50 {r.get('p50', 0):5.2f}  "
                  f"p99 {r.get('p99', 0):6.2f}  p99.9 {r.get('p99.9', 0):6.2f}  max {r.get('max', 0):6.1f} ms | "
                  f"loop lag p99 {row['lag_p99']:.1f} p99.9 {row['lag_p999']:.1f} max {row['lag_max']:.1f} ms | "
                  f"{gc_text} | load {row['load']:.1f}", flush=True)
        # Every collection since the agent started (loading and the PUT phase included): what a
        # full collection costs is the question, wherever it happened to fall.
        whole: dict[int, list[float]] = {}
        for gen, ms in read_series(gc_file, 0.0, float("inf")):
            whole.setdefault(int(gen), []).append(ms)
        print("collections, whole run: " + "  ".join(
            f"gen{g} n={len(v)} max={max(v):.1f}ms sum={sum(v):.0f}ms" for g, v in sorted(whole.items())), flush=True)
        if len(results) > 1:
            print(f"median p99.9 {statistics.median(r.get('p99.9', 0) for r in results):.2f} ms", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
