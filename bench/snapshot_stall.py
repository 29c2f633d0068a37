"""Event-loop stall of a server while it takes snapshots of a large catalog (issue 16).

Run by hand (about 2-4 minutes, most of it loading the catalog):

    .venv/bin/python bench/snapshot_stall.py                      # 10,000 nodes, 50,000 instances
    .venv/bin/python bench/snapshot_stall.py --nodes 2000 --per-node 5 --json /tmp/snap.json
    PYTHONPATH=/tmp/old/daemon .venv/bin/python bench/snapshot_stall.py   # another checkout's code

What it does, all on 127.0.0.1:
1. starts one durable server (`proconsul agent -server -bootstrap -data-dir=<tmp>`, with
   `raft_snapshot_threshold = --threshold` and `raft_snapshot_interval = "1s"`) through
   `check_loop_lag.py`'s `_agent` wrapper, which runs `run_agent` unchanged plus a **lag monitor**
   task on the agent's own loop (sleeps 10 ms again and again, records how late each wake-up is);
2. loads the catalog through `/v1/txn` as agents' registrations arrive: `--nodes` nodes, each
   with a node check (not `serfHealth`: the leader would reap nodes gossip does not know) and
   `--per-node` service instances (spread over `--services` names), each
   with a service check; 4 concurrent writers, up to 128 operations per transaction;
3. **save** phase: `GET /v1/snapshot` (what `proconsul snapshot save` sends) `--saves` times, one
   after the other; the loop lag inside each request's window and the archive size and time;
4. **auto** phase: a stream of KV PUTs (1 writer) for `--duration` s, during which the Raft
   snapshots come due every `--threshold` entries; the lag over the whole phase and the number
   of snapshots the server logged;
5. **restore** phase: `PUT /v1/snapshot` with the last saved archive, the lag in its window.
Prints the loop lag (max, p99.9, p99) per phase and the write throughput in the auto phase.
Everything it started is stopped by pid in a `finally`; its temporary directory is removed
unless `--keep`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_loop_lag import agent_wrapper, machine, read_samples  # noqa: E402
from common import HOST, Procs, free_port, python_exe, wait_http  # noqa: E402


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 120) -> bytes:
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", data=body, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return bytes(resp.read())


def load(port: int, nodes: int, per_node: int, services: int) -> float:
    """Register the catalog through /v1/txn; returns the seconds it took."""
    ops_per_node = 2 + 2 * per_node
    per_txn = max(1, 128 // ops_per_node)

    def txn(first: int) -> None:
        ops: list[dict[str, Any]] = []
        for n in range(first, min(first + per_txn, nodes)):
            node = f"node-{n:05d}"
            ops.append({"Node": {"Verb": "set", "Node": {"Node": node, "Address": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"}}})
            ops.append({"Check": {"Verb": "set", "Check": {"Node": node, "CheckID": "node-alive", "Name": "node alive", "Status": "passing"}}})
            for k in range(per_node):
                name = f"svc-{(n * per_node + k) % services:03d}"
                sid = f"{name}-{n}-{k}"
                ops.append({"Service": {"Verb": "set", "Node": node, "Service": {"ID": sid, "Service": name, "Port": 20000 + k, "Tags": ["v1"]}}})
                ops.append({"Check": {"Verb": "set", "Check": {"Node": node, "CheckID": f"service:{sid}", "Name": "svc", "Status": "passing", "ServiceID": sid}}})
        request(port, "PUT", "/v1/txn", json.dumps(ops).encode())

    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(txn, range(0, nodes, per_txn)))
    return time.monotonic() - t0


def lag_stats(vals: list[float]) -> dict[str, float]:
    if not vals:
        return {"n": 0}
    vals = sorted(vals)

    def q(p: float) -> float:
        return round(vals[min(len(vals) - 1, int(p * len(vals)))], 1)

    return {"n": len(vals), "p50": q(0.5), "p99": q(0.99), "p99.9": q(0.999), "max": round(vals[-1], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description="event-loop stall while snapshotting a large catalog")
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--per-node", type=int, default=5)
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--threshold", type=int, default=2048, help="raft_snapshot_threshold (entries)")
    parser.add_argument("--saves", type=int, default=3)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of KV writes in the auto phase")
    parser.add_argument("--json", default="")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="snapshot_stall."))
    procs = Procs()
    result: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    try:
        ports = {k: free_port() for k in ("http", "dns", "lan", "wan", "server")}
        lag_file = tmp / "lag.txt"
        agent_log = tmp / "agent.log"
        hcl = f'raft_snapshot_threshold = {args.threshold}\nraft_snapshot_interval = "1s"\nports {{ server = {ports["server"]} }}'
        agent_args = [
            "agent", "-server", "-bootstrap", f"-data-dir={tmp / 'data'}", "-node=bench", f"-bind={HOST}",
            f"-client={HOST}", f"-http-port={ports['http']}", f"-dns-port={ports['dns']}",
            f"-serf-lan-port={ports['lan']}", f"-serf-wan-port={ports['wan']}", "-hcl", hcl,
        ]
        agent = procs.start("agent", [python_exe(), __file__, "_agent", str(lag_file), *agent_args[1:]], agent_log)
        wait_http(f"http://{HOST}:{ports['http']}/v1/status/leader", agent, agent_log, timeout_s=60)
        print(f"# agent pid {agent.pid}, data in {tmp}; code from {os.environ.get('PYTHONPATH') or 'the venv'}", flush=True)
        port = ports["http"]
        secs = load(port, args.nodes, args.per_node, args.services)
        n_inst = args.nodes * args.per_node
        print(f"loaded {args.nodes} nodes, {n_inst} instances, {args.nodes + n_inst} checks in {secs:.1f} s", flush=True)
        result["load_s"] = round(secs, 1)
        time.sleep(3)  # let the snapshots the load made finish (not a measurement)

        saves = []
        archive = b""
        for i in range(args.saves):
            t0 = time.monotonic()
            archive = request(port, "GET", "/v1/snapshot")
            t1 = time.monotonic()
            time.sleep(1)  # the monitor flushes its samples every 0.5 s
            lag = lag_stats(read_samples(lag_file, t0, t1 + 0.05))
            saves.append({"s": round(t1 - t0, 2), "bytes": len(archive), "lag_ms": lag})
            print(f"save {i + 1}: {t1 - t0:.2f} s, {len(archive) / 1e3:.0f} kB gzipped; loop lag {lag}", flush=True)
        result["save"] = saves

        log_off = agent_log.stat().st_size
        stop = threading.Event()
        writes = [0]

        def writer() -> None:
            i = 0
            while not stop.is_set():
                request(port, "PUT", f"/v1/kv/bench/{i % 5000}", b"x" * 64)
                writes[0] += 1
                i += 1

        t0 = time.monotonic()
        th = threading.Thread(target=writer)
        th.start()
        time.sleep(args.duration)
        stop.set()
        th.join()
        t1 = time.monotonic()
        time.sleep(1)  # the monitor flushes its samples every 0.5 s
        snaps = agent_log.read_bytes()[log_off:].decode("utf-8", "replace").count("raft: snapshot at index")
        lag = lag_stats(read_samples(lag_file, t0, t1))
        result["auto"] = {"s": round(t1 - t0, 1), "writes_per_s": round(writes[0] / (t1 - t0)), "snapshots": snaps, "lag_ms": lag}
        print(f"auto: {writes[0] / (t1 - t0):.0f} PUT/s for {t1 - t0:.0f} s, {snaps} raft snapshots; loop lag {lag}", flush=True)

        t0 = time.monotonic()
        request(port, "PUT", "/v1/snapshot", archive)
        t1 = time.monotonic()
        time.sleep(1)  # the monitor flushes its samples every 0.5 s
        lag = lag_stats(read_samples(lag_file, t0, t1 + 0.05))
        result["restore"] = {"s": round(t1 - t0, 2), "lag_ms": lag}
        print(f"restore: {t1 - t0:.2f} s; loop lag {lag}", flush=True)
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_agent":
        sys.exit(agent_wrapper(sys.argv[2], sys.argv[3:]))
    sys.exit(main())
