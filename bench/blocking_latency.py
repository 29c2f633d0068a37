"""How long after a KV write does a blocking `GET /v1/kv/x?index=N&wait=30s` return?

Run by hand:

    .venv/bin/python bench/blocking_latency.py                   # starts its own dev agent
    .venv/bin/python bench/blocking_latency.py --samples 500 --watchers 1,100
    .venv/bin/python bench/blocking_latency.py --addr 127.0.0.1:8500   # an agent already running

Each sample: `--watchers` clients park a blocking GET on `bench/blocking` at the key's current
index; after `--park-ms` (so the GETs are parked on the store's watch) one client PUTs a new
value. Measured per watcher, with `time.perf_counter` in this process:
- `after_put_start`: from just before the PUT is sent to the blocking GET's answer being read;
- `after_put_ack`: from the PUT's `true` being read to the GET's answer (negative when the
  blocking GET was answered before the PUT's own response).
Prints p50/p99/max in ms of each; the target is "returns within 100 ms of a write".
A blocking GET that returns without a newer index, or with a stale value, counts as an error.
The agent (if started here) is stopped by pid in a `finally`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kv_http import HOST, Procs, agent_command, free_port, wait_http  # noqa: E402

KEY = "bench/blocking"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


async def blocking_get(session: aiohttp.ClientSession, base: str, index: int) -> tuple[float, int, bytes]:
    async with session.get(f"{base}/v1/kv/{KEY}", params={"index": str(index), "wait": "30s"}) as resp:
        body = await resp.read()
        done = time.perf_counter()
        if resp.status != 200:
            raise RuntimeError(f"blocking GET answered {resp.status}: {body[:200]!r}")
        return done, int(resp.headers["X-Consul-Index"]), body


async def put(session: aiohttp.ClientSession, base: str, value: bytes) -> int:
    async with session.put(f"{base}/v1/kv/{KEY}", data=value) as resp:
        body = await resp.read()
        if body.strip() != b"true":
            raise RuntimeError(f"PUT answered {resp.status}: {body[:200]!r}")
        return int(resp.headers["X-Consul-Index"])


async def run(base: str, samples: int, watchers: int, park_s: float) -> dict[str, object]:
    # One connection per watcher plus one for writes, so no request queues behind another.
    conn = aiohttp.TCPConnector(limit=watchers + 1)
    timeout = aiohttp.ClientTimeout(total=60)
    after_start: list[float] = []
    after_ack: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        index = await put(session, base, b"v0")
        for i in range(samples):
            value = f"v{i + 1}".encode()
            tasks = [asyncio.create_task(blocking_get(session, base, index)) for _ in range(watchers)]
            await asyncio.sleep(park_s)
            if any(t.done() for t in tasks):
                errors += sum(1 for t in tasks if t.done())  # returned before any write: broken blocking
            t_start = time.perf_counter()
            new_index = await put(session, base, value)
            t_ack = time.perf_counter()
            for done, got_index, body in await asyncio.gather(*tasks):
                entry = json.loads(body)[0]
                if got_index <= index or base64.b64decode(entry["Value"]) != value:
                    errors += 1
                    continue
                after_start.append((done - t_start) * 1000)
                after_ack.append((done - t_ack) * 1000)
            index = new_index
    return {
        "watchers": watchers,
        "samples": len(after_start),
        "errors": errors,
        "after_put_start_ms": summary(after_start),
        "after_put_ack_ms": summary(after_ack),
    }


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": statistics.median(values),
        "p99": pct(values, 0.99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="blocking-query wake-up latency after a KV write")
    parser.add_argument("--addr", help="host:port of a running agent (default: start a dev agent)")
    parser.add_argument("--samples", type=int, default=300, help="writes per watcher count")
    parser.add_argument("--watchers", default="1,100", help="comma list of parked blocking GETs per write")
    parser.add_argument("--park-ms", type=float, default=20.0, help="wait between parking the GETs and the PUT")
    parser.add_argument("--agent-arg", action="append", default=[], help="extra agent flag (repeatable)")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)

    procs = Procs()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results = []
    try:
        if args.addr:
            base = f"http://{args.addr}"
        else:
            tmp = Path(tempfile.mkdtemp(prefix="blocking."))
            port, dns = free_port(), free_port()
            cmd = agent_command(port, dns, args.agent_arg)
            agent = procs.start("agent", cmd, tmp / "agent.log", None)
            print(f"# agent pid {agent.pid}: {' '.join(cmd)}", flush=True)
            base = f"http://{HOST}:{port}"
            wait_http(f"{base}/v1/status/leader", agent, tmp / "agent.log")
        for watchers in (int(w) for w in args.watchers.split(",")):
            res = asyncio.run(run(base, args.samples, watchers, args.park_ms / 1000))
            results.append(res)
            s, a = res["after_put_start_ms"], res["after_put_ack_ms"]
            print(
                f"watchers={watchers:<4} samples={res['samples']:<6} errors={res['errors']}  "
                f"after PUT sent: p50 {s['p50']:.2f} p99 {s['p99']:.2f} max {s['max']:.2f} ms  |  "
                f"after PUT ack: p50 {a['p50']:.2f} p99 {a['p99']:.2f} max {a['max']:.2f} ms",
                flush=True,
            )
    finally:
        procs.stop_all()
    worst = max(r["after_put_start_ms"]["max"] for r in results)  # type: ignore[index]
    verdict = "meets" if worst <= 100 else "MISSES"
    print(f"# target: blocking GET returns within 100 ms of a write -> {verdict} (worst {worst:.1f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
