"""Event-loop lag of a dev agent running many health checks (issue 5: 1,000 checks at 1 s, p99 < 50 ms).

Run by hand:

    .venv/bin/python bench/check_loop_lag.py                          # 400 http + 400 tcp + 200 ttl
    .venv/bin/python bench/check_loop_lag.py --http 300 --tcp 300 --ttl 200 --script 200
    .venv/bin/python bench/check_loop_lag.py --asyncio-debug           # also count slow callbacks
    .venv/bin/python bench/check_loop_lag.py --duration 45 --json /tmp/lag.json

What it does, all on 127.0.0.1, each part in its own process:
1. starts a target process (an aiohttp HTTP server answering `GET /health` with 200 and a TCP
   listener that accepts and closes; it counts both, so the bench can show the checks ran) and a
   dev agent (`proconsul agent -dev -http-port=P -dns-port=Q -node=bench`, plus
   `-hcl 'enable_script_checks = true'` when `--script` > 0). The agent runs through this file's
   `_agent` wrapper, which calls `proconsul.agent.agent.run_agent` unchanged but wraps `asyncio.run` so
   one extra task, the **lag monitor**, runs on the agent's own loop: it sleeps 10 ms again and
   again and records by how much each wake-up was late (perf_counter), to a file. No daemon code
   is changed; the monitor is the direct measure, the HTTP probe below the outside view.
2. baseline phase (no checks): for `--duration` s a separate sampler process sends
   `GET /v1/status/leader` on one keep-alive connection every 10 ms and records each round trip;
   the lag monitor records at the same time; the agent's CPU (/proc/<pid>/stat) is read around it.
3. registers `--http` HTTP, `--tcp` TCP, `--ttl` TTL and `--script` script (`/bin/true`) checks,
   all with `Interval: 1s` (TTL checks: `TTL: 3s`, each renewed once a second by a separate
   renewer process with `PUT /v1/agent/check/pass/<id>`), waits `--settle` s, checks they pass.
4. loaded phase: the same sampling for `--duration` s with all checks running.
5. prints p50/p90/p99/p99.9/max for the HTTP round trip and for the loop lag in both phases, the
   CPU the agent / target / renewer used, and `other` = cores busy with anything else (noise).

With `--asyncio-debug` the agent runs with `PYTHONASYNCIODEBUG=1` (uvloop honours it): every
callback or task step slower than 100 ms is logged as "Executing ... took N seconds", and the
bench counts those lines per phase. Debug mode makes each callback dearer (source tracebacks), so
use its lag figures only next to a debug-mode baseline.
Everything it started is stopped by pid in a `finally`, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    HOST,
    Procs,
    cpu_seconds,
    free_port,
    install_loop_lag_monitor,
    python_exe,
    wait_http,
)

TICK_S = 0.010  # sampling period of both the HTTP probe and the lag monitor


# ------------------------------------------------------------------ subcommand: _agent (wrapper)


def agent_wrapper(lag_file: str, argv: list[str]) -> int:
    """run_agent(argv) with a lag monitor task on its loop; samples go to `lag_file`."""
    from proconsul.agent.agent import run_agent

    install_loop_lag_monitor(lag_file, TICK_S)
    return int(run_agent(argv) or 0)


# ------------------------------------------------------------------------ subcommand: _target


def target_main(http_port: int, tcp_port: int) -> int:
    from aiohttp import web

    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    counts = {"http": 0, "tcp": 0}

    async def health(_: web.Request) -> web.Response:
        counts["http"] += 1
        return web.Response(text="ok")

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(counts)

    async def on_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts["tcp"] += 1
        writer.close()

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, HOST, http_port, backlog=1024).start()
        server = await asyncio.start_server(on_tcp, HOST, tcp_port, backlog=1024)
        print(f"ready {http_port} {tcp_port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()
        await runner.cleanup()

    asyncio.run(main())
    return 0


# ----------------------------------------------------------------------- subcommand: _renewer


def renewer_main(agent_port: int, ids: list[str]) -> int:
    """PUT /v1/agent/check/pass/<id> for each TTL check once a second, evenly spread."""
    import aiohttp

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        conn = aiohttp.TCPConnector(limit=8)
        async with aiohttp.ClientSession(connector=conn) as session:
            sem = asyncio.Semaphore(8)

            async def one(cid: str) -> None:
                async with sem:
                    try:
                        async with session.put(f"http://{HOST}:{agent_port}/v1/agent/check/pass/{cid}") as r:
                            await r.read()
                    except aiohttp.ClientError:
                        pass

            n = max(1, len(ids))
            start = loop.time()
            i = 0
            pending: set[asyncio.Task[None]] = set()
            while not stop.is_set():
                due = start + i / n
                delay = due - loop.time()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                        break
                    except TimeoutError:
                        pass
                t = loop.create_task(one(ids[i % n]))
                pending.add(t)
                t.add_done_callback(pending.discard)
                i += 1
            for t in pending:
                t.cancel()

    asyncio.run(main())
    return 0


# ----------------------------------------------------------------------- subcommand: _sampler


def sampler_main(agent_port: int, duration_s: float, out_path: str) -> int:
    """GET /v1/status/leader every 10 ms on one keep-alive connection; write (t, ms) lines."""
    conn = http.client.HTTPConnection(HOST, agent_port, timeout=10)
    lines: list[str] = []
    errors = 0
    start = time.monotonic()
    nxt = start
    while True:
        now = time.monotonic()
        if now - start >= duration_s:
            break
        if nxt > now:
            time.sleep(nxt - now)
        scheduled = nxt
        t0 = time.perf_counter()
        try:
            conn.request("GET", "/v1/status/leader")
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection(HOST, agent_port, timeout=10)
        dt = (time.perf_counter() - t0) * 1000
        done = time.monotonic()
        if ok:
            # round trip, and time from the tick the request was due at (includes waiting behind
            # an earlier stalled request: the coordinated-omission-corrected figure)
            lines.append(f"{done:.6f} {dt:.3f} {max(dt, (done - scheduled) * 1000):.3f}\n")
        else:
            errors += 1
        # fixed schedule; a late request does not shift the following ones (no coordinated omission
        # of the ticks, but requests are sequential: a stall delays the queued ticks behind it)
        nxt += TICK_S
    Path(out_path).write_text("".join(lines) + f"# errors {errors}\n")
    return 0


# ---------------------------------------------------------------------------- the benchmark


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def cpu_busy() -> tuple[int, int]:
    parts = Path("/proc/stat").read_text().splitlines()[0].split()
    vals = [int(v) for v in parts[1:9]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def pct(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def stats(vals: list[float]) -> dict[str, float]:
    s = sorted(vals)
    return {
        "n": len(s),
        "p50": pct(s, 50),
        "p90": pct(s, 90),
        "p99": pct(s, 99),
        "p99.9": pct(s, 99.9),
        "max": s[-1] if s else float("nan"),
        "over50": sum(1 for v in s if v > 50),
    }


def read_samples(path: Path, t0: float, t1: float, col: int = 1) -> list[float]:
    vals: list[float] = []
    if not path.exists():
        return vals
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if t0 <= float(parts[0]) <= t1:
            vals.append(float(parts[col]))
    return vals


def expand_lag(vals: list[float]) -> list[float]:
    """Expected-interval correction for the monitor: a wake-up L ms late stands for the ticks it
    swallowed, which would have seen L-10, L-20, ... ms (HdrHistogram's recordValueWithExpectedInterval)."""
    tick = TICK_S * 1000
    out: list[float] = []
    for v in vals:
        out.append(v)
        v -= tick
        while v > 0:
            out.append(v)
            v -= tick
    return out


def count_slow(log: Path, start_offset: int, end_offset: int) -> tuple[int, float]:
    data = log.read_bytes()[start_offset:end_offset].decode("utf-8", "replace")
    worst = 0.0
    n = 0
    for line in data.splitlines():
        if "Executing" in line and " took " in line:
            n += 1
            try:
                worst = max(worst, float(line.rsplit(" took ", 1)[1].split()[0]))
            except (IndexError, ValueError):
                pass
    return n, worst


def register(aport: int, body: dict[str, Any]) -> None:
    req = urllib.request.Request(
        f"http://{HOST}:{aport}/v1/agent/check/register", data=json.dumps(body).encode(), method="PUT"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    probe = (
        "import sys, importlib.util as u, aiohttp; "
        "print(sys.version.split()[0], aiohttp.__version__, bool(u.find_spec('uvloop')))"
    )
    py, aiohttp_v, uv = subprocess.run([python_exe(), "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": py, "aiohttp": aiohttp_v, "uvloop": uv == "True",
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


def phase(name: str, args: argparse.Namespace, tmp: Path, aport: int, pids: dict[str, int],
          lag_file: Path, agent_log: Path) -> dict[str, Any]:
    out = tmp / f"sampler.{name}.txt"
    log_off0 = agent_log.stat().st_size
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    b0, w0 = cpu_busy(), time.monotonic()
    sampler = subprocess.Popen(
        [python_exe(), __file__, "_sampler", str(aport), str(args.duration), str(out)],
        stdin=subprocess.DEVNULL,
    )
    try:
        _, status, usage = os.wait4(sampler.pid, 0)
        sampler.returncode = os.waitstatus_to_exitcode(status)
    except BaseException:
        os.kill(sampler.pid, signal.SIGTERM)
        sampler.wait()
        raise
    w1, b1 = time.monotonic(), cpu_busy()
    cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
    time.sleep(0.7)  # let the monitor flush its last half-second
    log_off1 = agent_log.stat().st_size
    wall = w1 - w0
    cpu = {k: (cpu1[k] - cpu0[k]) / wall for k in pids}
    cpu["sampler"] = (usage.ru_utime + usage.ru_stime) / wall
    busy = (b1[0] - b0[0]) / max(1, b1[1] - b0[1]) * (os.cpu_count() or 1)
    cpu["other"] = max(0.0, busy - sum(cpu.values()))
    text = out.read_text()
    errors = int(text.rsplit("# errors ", 1)[1]) if "# errors " in text else -1
    res: dict[str, Any] = {
        "phase": name,
        "wall_s": wall,
        "http_ms": stats(read_samples(out, w0, w1 + 1)),
        "http_co_ms": stats(read_samples(out, w0, w1 + 1, col=2)),
        "http_errors": errors,
        "lag_ms": stats(read_samples(lag_file, w0, w1)),
        "lag_co_ms": stats(expand_lag(read_samples(lag_file, w0, w1))),
        "cpu": cpu,
    }
    if args.asyncio_debug:
        res["slow_callbacks"], res["slowest_s"] = count_slow(agent_log, log_off0, log_off1)
    return res


def print_phase(r: dict[str, Any]) -> None:
    labels = {
        "http_ms": "HTTP round trip",
        "http_co_ms": "HTTP from due tick",
        "lag_ms": "loop lag (monitor)",
        "lag_co_ms": "loop lag corrected",
    }
    for what, label in labels.items():
        s = r[what]
        print(
            f"{r['phase']:8} {label:19} n={s['n']:<5} p50 {s['p50']:6.2f}  p90 {s['p90']:6.2f}  "
            f"p99 {s['p99']:6.2f}  p99.9 {s['p99.9']:7.2f}  max {s['max']:7.2f} ms  >50ms {s['over50']}"
        )
    c = r["cpu"]
    extra = ""
    if "slow_callbacks" in r:
        extra = f"  slow callbacks (>100 ms) {r['slow_callbacks']} (worst {r['slowest_s']:.3f} s)"
    print(
        f"{r['phase']:8} cpu cores: agent {c['agent']:.2f}  target {c['target']:.2f}  "
        f"renewer {c.get('renewer', 0.0):.2f}  sampler {c['sampler']:.2f}  other {c['other']:.2f}"
        f"  http errors {r['http_errors']}{extra}"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="agent event-loop lag with many health checks")
    parser.add_argument("--http", type=int, default=400, help="HTTP checks")
    parser.add_argument("--tcp", type=int, default=400, help="TCP checks")
    parser.add_argument("--ttl", type=int, default=200, help="TTL checks (renewed once a second)")
    parser.add_argument("--script", type=int, default=0, help="script checks (/bin/true); enables scripts")
    parser.add_argument("--interval", default="1s", help="check interval")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds per measured phase")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds between registration and measuring")
    parser.add_argument("--asyncio-debug", action="store_true", help="PYTHONASYNCIODEBUG=1 in the agent")
    parser.add_argument("--agent-arg", action="append", default=[], help="extra agent flag (repeatable)")
    parser.add_argument("--json", help="write machine info and results here")
    args = parser.parse_args(argv)

    info = machine()
    print("# " + json.dumps(info), flush=True)
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="check_lag."))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results: list[dict[str, Any]] = []
    try:
        hport, tport = free_port(), free_port()
        target = procs.start("target", [python_exe(), __file__, "_target", str(hport), str(tport)], tmp / "target.log")
        aport, dport = free_port(), free_port()
        agent_args = ["-dev", f"-http-port={aport}", f"-dns-port={dport}", "-node=bench", *args.agent_arg]
        if args.script > 0:
            agent_args += ["-hcl", "enable_script_checks = true"]
        lag_file = tmp / "lag.txt"
        env = dict(os.environ)
        env.pop("PYTHONASYNCIODEBUG", None)
        if args.asyncio_debug:
            env["PYTHONASYNCIODEBUG"] = "1"
        agent_log = tmp / "agent.log"
        agent = procs.start("agent", [python_exe(), __file__, "_agent", str(lag_file), *agent_args], agent_log, env=env)
        print(f"# target pid {target.pid} http {hport} tcp {tport}; agent pid {agent.pid} http {aport}", flush=True)
        print(f"# agent: proconsul agent {' '.join(agent_args)} (via {Path(__file__).name} _agent)", flush=True)
        wait_http(f"http://{HOST}:{hport}/stats", target, tmp / "target.log")
        wait_http(f"http://{HOST}:{aport}/v1/status/leader", agent, agent_log)
        time.sleep(3)
        pids = {"agent": agent.pid, "target": target.pid}

        r = phase("baseline", args, tmp, aport, pids, lag_file, agent_log)
        results.append(r)
        print_phase(r)

        t0 = time.monotonic()
        common = {"Interval": args.interval, "Timeout": "5s"}
        ttl_ids = []
        for i in range(args.http):
            register(aport, {"ID": f"http{i}", "Name": f"http{i}", "HTTP": f"http://{HOST}:{hport}/health", **common})
        for i in range(args.tcp):
            register(aport, {"ID": f"tcp{i}", "Name": f"tcp{i}", "TCP": f"{HOST}:{tport}", **common})
        for i in range(args.ttl):
            register(aport, {"ID": f"ttl{i}", "Name": f"ttl{i}", "TTL": "3s"})
            ttl_ids.append(f"ttl{i}")
        for i in range(args.script):
            register(aport, {"ID": f"script{i}", "Name": f"script{i}", "Args": ["/bin/true"], **common})
        total = args.http + args.tcp + args.ttl + args.script
        reg_s = time.monotonic() - t0
        print(f"# registered {total} checks in {reg_s:.1f}s ({total / reg_s:.0f}/s)", flush=True)
        if ttl_ids:
            renewer = procs.start(
                "renewer", [python_exe(), __file__, "_renewer", str(aport), *ttl_ids], tmp / "renewer.log"
            )
            pids["renewer"] = renewer.pid
        time.sleep(args.settle)
        checks = get_json(f"http://{HOST}:{aport}/v1/agent/checks")
        by_status: dict[str, int] = {}
        for c in checks.values():
            by_status[c["Status"]] = by_status.get(c["Status"], 0) + 1
        print(f"# after {args.settle:g}s settle: {len(checks)} checks {by_status}", flush=True)

        hits0 = get_json(f"http://{HOST}:{hport}/stats")
        h0 = time.monotonic()
        r = phase("checks", args, tmp, aport, pids, lag_file, agent_log)
        hits1 = get_json(f"http://{HOST}:{hport}/stats")
        h1 = time.monotonic()
        r["target_rate"] = {k: (hits1[k] - hits0[k]) / (h1 - h0) for k in hits0}
        checks = get_json(f"http://{HOST}:{aport}/v1/agent/checks")
        by_status = {}
        for c in checks.values():
            by_status[c["Status"]] = by_status.get(c["Status"], 0) + 1
        r["status_after"] = by_status
        results.append(r)
        print_phase(r)
        rate = r["target_rate"]
        print(f"checks   probes seen by target: http {rate['http']:.0f}/s  tcp {rate['tcp']:.0f}/s; "
              f"statuses after: {by_status}", flush=True)
        info["registration_s"] = reg_s
    finally:
        procs.stop_all()
    print(f"# logs in {tmp}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "phases": results}, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_agent":
        sys.exit(agent_wrapper(sys.argv[2], sys.argv[3:]))
    if len(sys.argv) > 1 and sys.argv[1] == "_target":
        sys.exit(target_main(int(sys.argv[2]), int(sys.argv[3])))
    if len(sys.argv) > 1 and sys.argv[1] == "_renewer":
        sys.exit(renewer_main(int(sys.argv[2]), sys.argv[3:]))
    if len(sys.argv) > 1 and sys.argv[1] == "_sampler":
        sys.exit(sampler_main(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]))
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
