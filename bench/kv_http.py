"""KV over HTTP against a dev agent, next to the ceiling of a trivial aiohttp server.

Run by hand (needs `wrk`: `apt-get install -y wrk`):

    .venv/bin/python bench/kv_http.py                      # 10 s per run, 3 s warm-up, c=16,64
    .venv/bin/python bench/kv_http.py --duration 5 --repeat 3 --json /tmp/kv.json

What it does, all on 127.0.0.1:
1. starts `bench/trivial_server.py` (the ceiling: one handler, fixed JSON body) and a dev agent
   (`proconsul agent -dev`, or `run_agent` through `python -c` when the console script is
   missing) as separate processes on free ports;
2. writes `--keys` keys `bench/keyNNNN` with `--value-size`-byte values;
3. for each concurrency: `wrk` GET on the trivial server (baseline), GET of one KV key, PUT of
   one KV key (a static wrk Lua script sets method and body), each after a warm-up run;
4. prints requests/s, p50/p99 latency, the ratio to the baseline of the same round, and the CPU
   the server process used during the run (from /proc/<pid>/stat), from which it derives the
   request rate at which the server would saturate one core.

With `--pin` wrk is pinned to CPU 0 and both servers to CPU 1 with `taskset`. Not the default:
on a shared 2-core box a pinned process cannot move away from another busy process, and pinned
runs were slower and less steady (docs/PERFORMANCE.md). The `other` column reports how many cores
something else kept busy during each run, so noisy runs can be recognised.
Everything it started is stopped by pid in a `finally`, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    HOST,
    Procs,
    agent_command,
    cpu_seconds,
    free_port,
    http_put,
    python_exe,
    wait_http,
)

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------ processes


def cpu_busy(core: int | None) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU from /proc/stat, or of the whole machine if None."""
    name = "cpu" if core is None else f"cpu{core}"
    for line in Path("/proc/stat").read_text().splitlines():
        parts = line.split()
        if parts[0] == name:
            vals = [int(v) for v in parts[1:9]]
            idle = vals[3] + vals[4]
            return sum(vals) - idle, sum(vals)
    raise RuntimeError(f"{name} not in /proc/stat")


def server_pid(proc: subprocess.Popen[bytes]) -> int:
    # `taskset -c N cmd` execs cmd, so the Popen pid is the server's pid.
    return proc.pid


# ------------------------------------------------------------------------------------ wrk


@dataclass
class Result:
    target: str  # trivial | agent
    op: str  # GET | PUT
    conc: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors + non-2xx
    cpu: float  # server CPU used during the run, in cores (1.0 = one core busy)
    wrk_cpu: float  # CPU wrk itself used, in cores
    other: float  # cores busy with anything but the server and wrk (other processes, irqs): noise

    @property
    def per_core(self) -> float:
        return self.rps / self.cpu if self.cpu > 0 else float("nan")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"bad wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> tuple[float, float, float, int]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return rps, p50, p99, errors


def run_wrk(
    url: str, conc: int, duration_s: float, script: Path | None, cpu: int | None, threads: int
) -> tuple[str, float]:
    """wrk's stdout and the CPU seconds wrk itself used."""
    cmd = ["wrk", f"-t{threads}", f"-c{conc}", f"-d{duration_s:g}s", "--latency", "--timeout", "5s"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stderr or stdout}")
    return stdout, usage.ru_utime + usage.ru_stime


def measure(
    target: str,
    op: str,
    url: str,
    pid: int,
    conc: int,
    args: argparse.Namespace,
    script: Path | None,
    wrk_cpu: int | None,
) -> Result:
    if args.warmup > 0:
        run_wrk(url, conc, args.warmup, script, wrk_cpu, args.threads)
    c0, t0, b0 = cpu_seconds(pid), time.monotonic(), cpu_busy(None)
    out, wrk_cpu_s = run_wrk(url, conc, args.duration, script, wrk_cpu, args.threads)
    c1, t1, b1 = cpu_seconds(pid), time.monotonic(), cpu_busy(None)
    if args.verbose:
        print(out, file=sys.stderr)
    rps, p50, p99, errors = parse_wrk(out)
    wall = t1 - t0
    busy = (b1[0] - b0[0]) / max(1, b1[1] - b0[1]) * (os.cpu_count() or 1)
    server, wrk = (c1 - c0) / wall, wrk_cpu_s / wall
    return Result(target, op, conc, rps, p50, p99, errors, server, wrk, max(0.0, busy - server - wrk))


# ------------------------------------------------------------------------------------ main


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    probe = (
        "import sys, importlib.util as u, aiohttp; "
        "print(sys.version.split()[0], aiohttp.__version__, "
        "bool(u.find_spec('uvloop')), bool(u.find_spec('orjson')))"
    )
    py, aiohttp_v, uv, orj = subprocess.run(
        [python_exe(), "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": py,
        "aiohttp": aiohttp_v,
        "uvloop": uv == "True",
        "orjson": orj == "True",
        "wrk": wrk_v.strip(),
    }


def summarise(results: list[Result], repeat: int) -> list[dict[str, Any]]:
    """Median over repeats of each (target, op, conc), with the ratio to the trivial GET."""
    groups: dict[tuple[str, str, int], list[Result]] = {}
    for r in results:
        groups.setdefault((r.target, r.op, r.conc), []).append(r)
    rows = []
    for (target, op, conc), rs in groups.items():
        base = groups[("trivial", "GET", conc)]
        # ratio per round (same round = measured minutes apart at most), then the median
        ratios = [r.rps / b.rps for r, b in zip(rs, base, strict=True)]
        rows.append(
            {
                "target": target,
                "op": op,
                "conc": conc,
                "rps": statistics.median(r.rps for r in rs),
                "rps_all": [round(r.rps) for r in rs],
                "p50_ms": statistics.median(r.p50_ms for r in rs),
                "p99_ms": statistics.median(r.p99_ms for r in rs),
                "ratio_rps": statistics.median(ratios),
                "ratio_p50": statistics.median(r.p50_ms for r in rs) / statistics.median(b.p50_ms for b in base),
                "ratio_p99": statistics.median(r.p99_ms for r in rs) / statistics.median(b.p99_ms for b in base),
                "cpu": statistics.median(r.cpu for r in rs),
                "per_core": statistics.median(r.per_core for r in rs),
                "wrk_cpu": statistics.median(r.wrk_cpu for r in rs),
                "other": statistics.median(r.other for r in rs),
                "errors": sum(r.errors for r in rs),
            }
        )
    order = {("trivial", "GET"): 0, ("agent", "GET"): 1, ("agent", "PUT"): 2}
    rows.sort(key=lambda row: (row["conc"], order[(row["target"], row["op"])]))
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'server':8} {'op':4} {'conc':>4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'x rps':>6} {'x p50':>6} {'x p99':>6} {'cpu':>5} {'req/s/core':>10} {'wrk':>5} {'other':>5} {'err':>4}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['target']:8} {r['op']:4} {r['conc']:>4} {r['rps']:>8.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
            f"{r['ratio_rps']:>6.2f} {r['ratio_p50']:>6.2f} {r['ratio_p99']:>6.2f} {r['cpu']:>5.2f} "
            f"{r['per_core']:>10.0f} {r['wrk_cpu']:>5.2f} {r['other']:>5.2f} {r['errors']:>4}"
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="KV over HTTP vs a trivial aiohttp server (wrk)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up before each run")
    parser.add_argument("--conc", default="16,64", help="comma-separated wrk connection counts")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the table shows medians")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--keys", type=int, default=100, help="keys written before the runs")
    parser.add_argument("--value-size", type=int, default=64, help="bytes per value")
    parser.add_argument("--pin", action="store_true", help="taskset: wrk on CPU 0, servers on CPU 1")
    parser.add_argument("--agent-arg", action="append", default=[], help="extra agent flag (repeatable)")
    parser.add_argument("--only", default="", help="comma list of trivial-GET,agent-GET,agent-PUT")
    parser.add_argument("--hold", type=float, default=0.0, help="keep servers up N s after (for profiling)")
    parser.add_argument("--json", help="write machine info and results here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print raw wrk output")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    concs = [int(c) for c in args.conc.split(",")]
    wanted = set(args.only.split(",")) if args.only else {"trivial-GET", "agent-GET", "agent-PUT"}
    wanted.add("trivial-GET")  # the baseline is always measured
    wrk_cpu, server_cpu = (0, 1) if args.pin else (None, None)

    info = machine()
    print("# " + json.dumps(info), flush=True)
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="kv_http."))
    # SIGTERM -> KeyboardInterrupt, so the finally below runs and stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results: list[Result] = []
    try:
        tport = free_port()
        trivial = procs.start(
            "trivial",
            [python_exe(), str(HERE / "trivial_server.py"), "--port", str(tport)],
            tmp / "trivial.log",
            server_cpu,
        )
        aport, dport = free_port(), free_port()
        agent_cmd = agent_command(aport, dport, args.agent_arg)
        agent = procs.start("agent", agent_cmd, tmp / "agent.log", server_cpu)
        print(f"# trivial pid {trivial.pid} port {tport}; agent pid {agent.pid} port {aport}", flush=True)
        print(f"# agent: {' '.join(agent_cmd)}", flush=True)
        print(f"# pinning: {'wrk on CPU 0, servers on CPU 1' if args.pin else 'none'}", flush=True)
        wait_http(f"http://{HOST}:{tport}/", trivial, tmp / "trivial.log")
        wait_http(f"http://{HOST}:{aport}/v1/status/leader", agent, tmp / "agent.log")

        value = (b"x" * args.value_size)
        for i in range(args.keys):
            assert http_put(f"http://{HOST}:{aport}/v1/kv/bench/key{i:04d}", value).strip() == b"true"
        get_key = f"bench/key{args.keys // 2:04d}"
        got = json.loads(urllib.request.urlopen(f"http://{HOST}:{aport}/v1/kv/{get_key}").read())
        assert got[0]["Key"] == get_key, got

        put_lua = tmp / "put.lua"
        put_lua.write_text(f'wrk.method = "PUT"\nwrk.body = "{"y" * args.value_size}"\n')
        cases = [
            ("trivial", "GET", f"http://{HOST}:{tport}/v1/kv/{get_key}", trivial, None),
            ("agent", "GET", f"http://{HOST}:{aport}/v1/kv/{get_key}", agent, None),
            ("agent", "PUT", f"http://{HOST}:{aport}/v1/kv/bench/put", agent, put_lua),
        ]
        for rnd in range(args.repeat):
            for conc in concs:
                for target, op, url, proc, script in cases:
                    if f"{target}-{op}" not in wanted:
                        continue
                    r = measure(target, op, url, server_pid(proc), conc, args, script, wrk_cpu)
                    results.append(r)
                    print(
                        f"# round {rnd + 1} {target:7} {op} c={conc:<3} {r.rps:8.0f} req/s  "
                        f"p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  cpu {r.cpu:4.2f}  wrk {r.wrk_cpu:4.2f}  "
                        f"other {r.other:4.2f}  err {r.errors}",
                        flush=True,
                    )
        # the agent must still answer correctly after the load (the PUT runs wrote this key)
        if any(r.target == "agent" and r.op == "PUT" for r in results):
            got = json.loads(urllib.request.urlopen(f"http://{HOST}:{aport}/v1/kv/bench/put").read())
            assert got[0]["Key"] == "bench/put", got
        if args.hold > 0:
            print(f"# holding servers for {args.hold:g}s", flush=True)
            time.sleep(args.hold)
    finally:
        procs.stop_all()
    rows = summarise(results, args.repeat)
    print()
    print_table(rows)
    print(
        "\nx rps/p50/p99 = agent value / trivial value at the same concurrency; cpu = server cores "
        "used during the run; req/s/core = req/s / cpu (rate that would saturate one core); wrk = cores "
        "wrk used; other = cores busy with anything else during the run (noise)"
    )
    agent_log = tmp / "agent.log"
    print(f"# logs in {tmp} (agent log {agent_log.stat().st_size} bytes)")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": info, "args": vars(args), "rows": rows,
                        "runs": [asdict(r) for r in results]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
