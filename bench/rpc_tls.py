"""The cost of TLS on server RPC: the same 3-server cluster with and without verified TLS.

Starts two clusters of `proconsul agent -server` processes on loopback (127.a.b.1-3), one in
plaintext, one with certificates from `proconsul tls` and verify_incoming, verify_outgoing and
verify_server_hostname, and drives each with the same asyncio HTTP load (plain HTTP to the
agents, so only server RPC and Raft change):

- PUT to the leader: replication to the followers over the Raft links;
- PUT to a follower: the follower forwards each write to the leader over server RPC, then Raft;
- default GET through a follower: forwarded to the leader over server RPC.

Rounds alternate the order of the two clusters; the report gives medians of req/s and latency.
Results go to docs/PERFORMANCE.md ("TLS on server RPC").

    .venv/bin/python bench/rpc_tls.py --rounds 3 --duration 8 --conc 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROCONSUL, Procs, cpu_seconds  # noqa: E402


def free_prefix() -> str:
    for _ in range(50):
        prefix = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}"
        try:
            for i in (1, 2, 3):
                for port in (8300, 8500):
                    with socket.socket() as s:
                        s.bind((f"{prefix}.{i}", port))
            return prefix
        except OSError:
            continue
    raise RuntimeError("no free loopback subnet")


def make_certs(root: Path) -> tuple[Path, list[tuple[Path, Path]]]:
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(PROCONSUL), "tls", "ca", "create"], cwd=root, check=True, capture_output=True)
    pairs = []
    for n in range(3):
        subprocess.run([str(PROCONSUL), "tls", "cert", "create", "-server", "-dc", "dc1"], cwd=root, check=True,
                       capture_output=True)
        pairs.append((root / f"dc1-server-consul-{n}.pem", root / f"dc1-server-consul-{n}-key.pem"))
    return root / "consul-agent-ca.pem", pairs


def leader_of(ips: list[str]) -> str:
    seen = set()
    for ip in ips:
        try:
            with urllib.request.urlopen(f"http://{ip}:8500/v1/status/leader", timeout=2) as resp:
                addr = json.loads(resp.read())
        except OSError:
            return ""
        if not addr:
            return ""
        seen.add(addr.rsplit(":", 1)[0])
    return seen.pop() if len(seen) == 1 else ""


def start_cluster(procs: Procs, root: Path, tls: bool) -> tuple[list[str], list[int]]:
    root.mkdir(parents=True, exist_ok=True)
    pids: list[int] = []
    prefix = free_prefix()
    ips = [f"{prefix}.{i}" for i in (1, 2, 3)]
    hcl = ["performance { raft_multiplier = 1 }"]
    pairs: list[tuple[Path, Path]] = []
    ca = Path()
    if tls:
        ca, pairs = make_certs(root / "certs")
    for n, ip in enumerate(ips):
        extra = ""
        if tls:
            extra = (f'ca_file = "{ca}"\ncert_file = "{pairs[n][0]}"\nkey_file = "{pairs[n][1]}"\n'
                     "verify_incoming = true\nverify_outgoing = true\nverify_server_hostname = true\n")
        cmd = [str(PROCONSUL), "agent", "-server", "-bootstrap-expect=3",
               *(f"-retry-join={o}" for o in ips if o != ip), "-hcl", hcl[0], "-hcl", extra or "log_level = \"INFO\"",
               f"-data-dir={root / f's{n}'}", "-http-port=8500", "-dns-port=8600",
               f"-client={ip}", f"-bind={ip}", f"-node=s{n}"]
        pids.append(procs.start(f"{'tls' if tls else 'plain'}-s{n}", cmd, root / f"s{n}.log").pid)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if leader := leader_of(ips):
            return [leader, *(ip for ip in ips if ip != leader)], pids
        time.sleep(0.2)
    raise RuntimeError(f"no leader in {root}")


async def load(url_of: callable, method: str, conc: int, duration: float, warmup: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + warmup + duration
    measure_from = time.monotonic() + warmup

    async def worker(w: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        i = 0
        while (now := time.monotonic()) < stop_at:
            i += 1
            url = url_of(w, i)
            t0 = time.perf_counter()
            async with session.request(method, url, data=b"v" * 64 if method == "PUT" else None) as resp:
                await resp.read()
                ok = resp.status == 200
            if now >= measure_from:
                latencies.append(time.perf_counter() - t0)
                errors += not ok

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:
        await asyncio.gather(*(worker(w, session) for w in range(conc)))
    latencies.sort()
    return {
        "rps": len(latencies) / duration,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "errors": errors,
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="server RPC: TLS vs plaintext")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-rpc-tls-"))
    procs = Procs()
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        started = {"plain": start_cluster(procs, root / "plain", False), "tls": start_cluster(procs, root / "tls", True)}
        clusters = {name: ips for name, (ips, _) in started.items()}
        for ips in clusters.values():  # keys for the reads
            for k in range(100):
                urllib.request.urlopen(urllib.request.Request(f"http://{ips[0]}:8500/v1/kv/r/{k}", b"x", method="PUT"))
        cases = {
            "PUT to the leader": lambda ips: ("PUT", lambda w, i: f"http://{ips[0]}:8500/v1/kv/b/{w}/{i % 50}"),
            "PUT to a follower (forwarded)": lambda ips: ("PUT", lambda w, i: f"http://{ips[1]}:8500/v1/kv/b/{w}/{i % 50}"),
            "GET via a follower (forwarded)": lambda ips: ("GET", lambda w, i: f"http://{ips[1]}:8500/v1/kv/r/{i % 100}"),
        }
        for rnd in range(args.rounds):
            order = ["plain", "tls"] if rnd % 2 == 0 else ["tls", "plain"]
            for case, make in cases.items():
                for name in order:
                    method, url_of = make(clusters[name])
                    pids = started[name][1]
                    asyncio.run(load(url_of, method, args.conc, args.warmup, 0.0))  # warm-up, not measured
                    # CPU of the three servers (utime + stime) during the measured run, per request.
                    cpu0 = sum(cpu_seconds(pid) for pid in pids)
                    r = asyncio.run(load(url_of, method, args.conc, args.duration, 0.0))
                    r["cpu_ms_per_req"] = (sum(cpu_seconds(pid) for pid in pids) - cpu0) * 1000 / (
                        r["rps"] * args.duration)
                    results.setdefault(case, {}).setdefault(name, []).append(r)
                    print(f"round {rnd + 1} {case:32s} {name:5s} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                          f"p99 {r['p99_ms']:7.2f} ms  cpu {r['cpu_ms_per_req']:.2f} ms/req  errors {r['errors']}",
                          flush=True)
            for name, ips in clusters.items():
                if leader_of(ips) != ips[0]:
                    print(f"warning: the {name} cluster's leader moved", flush=True)
        print("\nmedians:")
        for case, by in results.items():
            med = {n: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req")}
                   for n, rs in by.items()}
            ratio = statistics.median(t["rps"] / p["rps"] for t, p in zip(by["tls"], by["plain"]))
            print(f"| {case} | {args.conc} | {med['plain']['rps']:.0f} | {med['plain']['p50_ms']:.2f} | "
                  f"{med['plain']['p99_ms']:.1f} | {med['tls']['rps']:.0f} | {med['tls']['p50_ms']:.2f} | "
                  f"{med['tls']['p99_ms']:.1f} | {ratio:.2f} | {med['plain']['cpu_ms_per_req']:.2f} | "
                  f"{med['tls']['cpu_ms_per_req']:.2f} |")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        procs.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
