"""Does a server keep committing writes while thousands of blocking KV reads are parked on it?

Issue 16's target: the leader keeps at least half its idle write rate with 10,000 watchers
parked. Run by hand (needs `wrk`):

    PYTHONPATH=daemon .venv/bin/python bench/parked_writes.py --parked 0,1000,10000 --rounds 3

Starts one durable server agent (`-server -bootstrap-expect=1`, default `raft_multiplier`, Raft
log fsynced as in a cluster) on 127.62.<subnet>.1, then for each count, in rounds alternating
the order: parks that many blocking `GET /v1/kv/parked/pNNNN/?recurse&index=..&wait=10m` reads
(one raw keep-alive connection each, 100 prefixes, held by `--procs` processes), checks the
agent reports them parked (`rpc.queries_blocking`), runs wrk PUT at `-c --conc` on a key outside
every watched prefix for `--duration` s, then hangs the watchers up. Reported per count: req/s,
p50/p99, the agent's CPU per write, and the ratio to the run with none parked in the same
round. The watchers must all still be parked after the writes (none woken: the writes touch no
watched prefix). The agent is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalog_scale import _RawConnection  # noqa: E402
from common import Procs, cpu_seconds, python_exe  # noqa: E402
from kv_http import parse_wrk, run_wrk  # noqa: E402

PREFIXES = 100
PUT_LUA = 'wrk.method = "PUT"\nwrk.body = "0123456789abcdef0123456789abcdef"\n'


def _hold(base: str, count: int, offset: int, ready: Any, stop: Any) -> None:
    """In a child process: `count` parked reads until `stop` is set."""
    async def main() -> None:
        conns = [_RawConnection(base) for _ in range(count)]

        async def park(k: int, conn: _RawConnection) -> None:
            prefix = f"parked/p{(offset + k) % PREFIXES:04d}/"
            _, idx, _ = await conn.get(f"/v1/kv/{prefix}?recurse")
            while not stop.is_set():
                await conn.get(f"/v1/kv/{prefix}?recurse&index={max(idx, 1)}&wait=10m")

        tasks = [asyncio.ensure_future(park(k, c)) for k, c in enumerate(conns)]
        ready.release()
        while not stop.is_set():
            await asyncio.sleep(0.2)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in conns:
            c.close()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def blocking_now(base: str) -> int:
    data = json.loads(urllib.request.urlopen(f"{base}/v1/agent/metrics").read())
    return sum(int(g["Value"]) for g in data.get("Gauges", []) if g["Name"].endswith("rpc.queries_blocking"))


def measure(base: str, pid: int, parked: int, args: argparse.Namespace, lua: Path) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Semaphore(0)
    procs = []
    per = -(-parked // args.procs) if parked else 0
    for p in range(args.procs if parked else 0):
        n = min(per, parked - p * per)
        proc = ctx.Process(target=_hold, args=(base, n, p * per, ready, stop), daemon=True)
        proc.start()
        procs.append(proc)
    try:
        deadline = time.monotonic() + 120 + parked / 50
        while blocking_now(base) != parked:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {blocking_now(base)} of {parked} reads parked")
            time.sleep(0.5)
        run_wrk(f"{base}/v1/kv/bench/put", args.conc, args.warmup, lua, None, 1)
        c0, t0 = cpu_seconds(pid), time.monotonic()
        out, _ = run_wrk(f"{base}/v1/kv/bench/put", args.conc, args.duration, lua, None, 1)
        cpu, wall = cpu_seconds(pid) - c0, time.monotonic() - t0
        still = blocking_now(base)
        rps, p50, p99, errors = parse_wrk(out)
        return {"parked": parked, "rps": round(rps), "p50_ms": p50, "p99_ms": p99, "errors": errors,
                "cpu_ms_per_write": round(cpu / max(1.0, rps * wall) * 1000, 3), "still_parked": still}
    finally:
        stop.set()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
        # The agent ends the hung-up reads as it notices: the next count starts from none.
        deadline = time.monotonic() + 120
        while blocking_now(base) and time.monotonic() < deadline:
            time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parked", default="0,1000,10000", help="comma list of parked read counts (0 first)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--procs", type=int, default=2, help="processes holding the parked reads")
    ap.add_argument("--subnet", type=int, default=7)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    counts = [int(x) for x in args.parked.split(",")]
    ip = f"127.62.{args.subnet}.1"
    base = f"http://{ip}:8500"
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="parked-writes-") as tmp:
        lua = Path(tmp) / "put.lua"
        lua.write_text(PUT_LUA)
        code = "import sys; from proconsul.agent.agent import run_agent; sys.exit(run_agent(sys.argv[1:]))"
        agent = procs.start("server", [python_exe(), "-c", code, "-server", "-bootstrap-expect=1", f"-bind={ip}",
                                       f"-client={ip}", f"-data-dir={tmp}/data", "-node=parked", "-log-level=warn",
                                       "-hcl", "limits { http_max_conns_per_client = 100000 }"], Path(tmp) / "agent.log")
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if urllib.request.urlopen(f"{base}/v1/status/leader").read() not in (b'""', b""):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("no leader")
                time.sleep(0.2)
            results: list[dict[str, Any]] = []
            for r in range(args.rounds):
                order = counts if r % 2 == 0 else [counts[0], *reversed(counts[1:])]
                idle = None
                for n in order:
                    row = measure(base, agent.pid, n, args, lua)
                    idle = row["rps"] if n == 0 else idle
                    row["round"] = r + 1
                    row["ratio_to_idle"] = round(row["rps"] / idle, 2) if idle else None
                    results.append(row)
                    print(json.dumps(row), flush=True)
            for n in counts:
                rows = sorted((x for x in results if x["parked"] == n), key=lambda x: x["rps"])
                mid = rows[len(rows) // 2]
                print(f"parked {n:>6}: median {mid['rps']} req/s, p50 {mid['p50_ms']} ms, p99 {mid['p99_ms']} ms, "
                      f"{mid['cpu_ms_per_write']} ms CPU/write, ratio to idle {mid['ratio_to_idle']}, "
                      f"still parked after the writes {mid['still_parked']}")
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
        finally:
            procs.stop_all()


if __name__ == "__main__":
    main()
