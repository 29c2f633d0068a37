"""`/v1/health/service/:s` with and without `?cached`, on a client agent and on its server.

Run by hand (needs `wrk`: `apt-get install -y wrk`):

    .venv/bin/python bench/agent_cache.py                     # 8 s per run after 3 s warm-up, c=16
    .venv/bin/python bench/agent_cache.py --duration 5 --connections 64

What it does, all on 127.0.0.1 with free ports: starts a `-server -bootstrap` agent and a client
agent joined to it (separate processes), registers `--instances` instances of `web` in the
catalog, then runs `wrk` on the client's and the server's `/v1/health/service/web`, plain and with
`?cached`, each after a warm-up, and prints requests/s with p50/p99 latency. A plain read on the
client is one RPC to the server; a cached one is answered by the client from its cache (kept
fresh by one background blocking query). Everything it started is stopped by pid in a `finally`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import PROCONSUL, Procs, free_port, http_put, python_exe, wait_http


def _agent(extra: list[str]) -> list[str]:
    if PROCONSUL.exists():
        return [str(PROCONSUL), "agent", *extra]
    code = "import sys; from proconsul.agent.agent import run_agent; sys.exit(run_agent(sys.argv[1:]))"
    return [python_exe(), "-c", code, *extra]


def _ports(prefix: str) -> tuple[list[str], int]:
    http = free_port()
    flags = [f"-http-port={http}", f"-dns-port={free_port()}", f"-serf-lan-port={free_port()}",
             f"-serf-wan-port={free_port()}", "-bind=127.0.0.1", "-client=127.0.0.1", f"-node={prefix}"]
    return flags, http


def _wrk(url: str, args: argparse.Namespace) -> dict[str, str]:
    base = ["wrk", "-t1", f"-c{args.connections}", "--latency"]
    subprocess.run([*base, "-d3s", url], capture_output=True, check=True)
    out = subprocess.run([*base, f"-d{args.duration}s", url], capture_output=True, text=True, check=True).stdout
    found = {"rps": re.search(r"Requests/sec:\s+([\d.]+)", out), "p50": re.search(r"\s50%\s+(\S+)", out),
             "p99": re.search(r"\s99%\s+(\S+)", out)}
    return {k: m.group(1) if m else "?" for k, m in found.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="agent cache: cached vs uncached health reads")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--instances", type=int, default=10)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install -y wrk", file=sys.stderr)
        return 2
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        server_flags, server_http = _ports("srv")
        serf = server_flags[2].split("=")[1]
        server = procs.start("server", _agent(["-server", "-bootstrap", f"-data-dir={tmp / 'srv'}",
                                               f"-server-port={free_port()}", *server_flags,
                                               "-hcl", "performance { raft_multiplier = 1 }"]), tmp / "srv.log")
        wait_http(f"http://127.0.0.1:{server_http}/v1/status/leader", server, tmp / "srv.log", 60)
        client_flags, client_http = _ports("c1")
        client = procs.start("client", _agent([f"-data-dir={tmp / 'c1'}", f"-retry-join=127.0.0.1:{serf}",
                                               "-retry-interval=1s", *client_flags]), tmp / "c1.log")
        wait_http(f"http://127.0.0.1:{client_http}/v1/status/leader", client, tmp / "c1.log", 60)
        for i in range(args.instances):
            body = {"Node": f"n{i}", "Address": f"10.0.0.{i + 1}", "Service": {"Service": "web", "Port": 80},
                    "Check": {"CheckID": "web", "Name": "web", "Status": "passing", "ServiceID": "web"}}
            http_put(f"http://127.0.0.1:{server_http}/v1/catalog/register", json.dumps(body).encode())
        print(f"# {args.instances} instances, c={args.connections}, {args.duration} s runs")
        print(f"{'agent':8} {'query':10} {'req/s':>9} {'p50':>9} {'p99':>9}")
        for name, port in (("client", client_http), ("server", server_http)):
            for query in ("", "?cached"):
                r = _wrk(f"http://127.0.0.1:{port}/v1/health/service/web{query}", args)
                print(f"{name:8} {query or 'plain':10} {r['rps']:>9} {r['p50']:>9} {r['p99']:>9}")
        print(f"# load average: {Path('/proc/loadavg').read_text().split()[:3]}")
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
