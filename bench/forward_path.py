"""The forwarded-write path alone: a follower `Server` forwarding writes to a leader `Server` in
another process, over the real RPC transport, without Raft or HTTP.

    PYTHONPATH=<tree>/daemon .venv/bin/python bench/forward_path.py --conc 16 --duration 5 \
        --commit-ms 3 --rounds 3

The leader is a one-voter in-memory log (`SingleNodeLog`) that waits `--commit-ms` before
applying each batch it is handed (standing in for Raft's commit, which a write sent to the
leader pays too), served by `rpc_stream_handler` as the agent serves it. This process is the
follower: `--conc` coroutines each send KV sets through `Server.write` back to back, as wrk's
connections do through the HTTP fast path. Reported per round: writes/s, latency p50/p99 (ms,
`Server.write` call to return), the latency over the commit wait (what forwarding adds), and the
CPU ms per write of the follower (this process) and of the leader (`/proc/<pid>/stat`). CPU time
counts only each process's own cycles, so it is the figure that a busy box disturbs least.
Both processes run on uvloop, as the agent does. Compare trees by running this file with each
tree's `daemon` on PYTHONPATH.

`--now`: the task-less paths where the tree has them, as the agent wires them: the follower
starts each write with `Server.write_now` (the HTTP fast path's PUT) and the coroutine waits on
a future its callback settles (one wake-up the fast path does not pay); the leader serves
`Raft.ApplyBatch` from the connection's reader (`Server.handle_rpc_now`, with a
`propose_batch_now` that applies after the same `--commit-ms`). A tree without them runs the
task paths.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CLK_TCK, HOST, free_port  # noqa: E402


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def run_leader(port: int, commit_ms: float, now: bool) -> None:
    from proconsul.server.rpc import Server
    from proconsul.server.single import SingleNodeLog
    from proconsul.state.fsm import FSM
    from proconsul.state.store import Store
    from proconsul.transport import Listener, rpc_stream_handler
    from proconsul.wire import ConnType

    class DelayedLog(SingleNodeLog):
        async def apply_batch(self, batch: list[Any]) -> list[Any]:
            await asyncio.sleep(commit_ms / 1000.0)
            return await super().apply_batch(batch)

        def propose_batch_now(self, batch: list[Any], done: Any) -> bool:
            def apply() -> None:
                out = []
                for command, _ in batch:
                    result = self._append(command)
                    out.append((self.fsm.store_index(self.commit_index), result))
                done(out, None)

            asyncio.get_running_loop().call_later(commit_ms / 1000.0, apply)
            return True

    store = Store()
    addr = f"{HOST}:{port}"
    log = DelayedLog(FSM(store), addr, "id-leader", "leader")
    if now and hasattr(Server, "handle_rpc_now"):
        leader = Server(store, log, "dc1", propose_batch_now=log.propose_batch_now)
        handler = rpc_stream_handler(leader.handle_rpc, dispatch_now=leader.handle_rpc_now)
    else:
        leader = Server(store, log, "dc1")
        handler = rpc_stream_handler(leader.handle_rpc)
    listener = Listener(HOST, port, {ConnType.RPC: handler})
    await listener.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def run_follower(port: int, conc: int, duration_s: float, warmup_s: float, leader_pid: int,
                       commit_ms: float, now: bool) -> dict[str, Any]:
    from proconsul.server.remote import ClientConsensus
    from proconsul.server.rpc import Server
    from proconsul.state import commands
    from proconsul.state.records import DirEntry
    from proconsul.state.store import Store
    from proconsul.transport import ConnectionPool

    view = ClientConsensus()
    view.learn(f"{HOST}:{port}")
    pool = ConnectionPool()
    follower = Server(Store(), view, "dc1", pool=pool, rpc_hold_timeout_s=30.0)
    latencies: list[float] = []
    measuring = False
    stop = False

    loop = asyncio.get_running_loop()
    write_now = getattr(follower, "write_now", None) if now else None

    async def write(command: Any) -> None:
        fut = loop.create_future()
        if write_now is None or not write_now(command, lambda *out: fut.set_result(out)):
            await follower.write(command)
            return
        meta, _, exc = await fut
        if exc is not None:
            raise exc

    async def writer(i: int) -> None:
        n = 0
        while not stop:
            command = commands.KVS(commands.KVOp.SET, DirEntry(f"bench/{i}/{n % 100}", b"x" * 64))
            t0 = time.perf_counter()
            await write(command)
            if measuring:
                latencies.append(time.perf_counter() - t0)
            n += 1

    tasks = [asyncio.create_task(writer(i)) for i in range(conc)]
    await asyncio.sleep(warmup_s)
    measuring = True
    cpu0, lcpu0, t0 = time.process_time(), proc_cpu_s(leader_pid), time.perf_counter()
    await asyncio.sleep(duration_s)
    measuring = False
    cpu1, lcpu1, t1 = time.process_time(), proc_cpu_s(leader_pid), time.perf_counter()
    stop = True
    await asyncio.gather(*tasks)
    await pool.close()
    n = len(latencies)
    lat = sorted(latencies)
    p50 = lat[n // 2] * 1000
    return {
        "writes": n, "rps": n / (t1 - t0), "p50_ms": p50, "p99_ms": lat[int(n * 0.99)] * 1000,
        "over_commit_p50_ms": p50 - commit_ms,
        "follower_cpu_ms": (cpu1 - cpu0) * 1000 / n, "leader_cpu_ms": (lcpu1 - lcpu0) * 1000 / n,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--commit-ms", type=float, default=3.0, help="the leader's wait before applying a batch")
    ap.add_argument("--now", action="store_true", help="the task-less paths (see the module docstring)")
    ap.add_argument("--json", default="")
    ap.add_argument("--leader-port", type=int, default=0, help=argparse.SUPPRESS)  # the leader's own process
    args = ap.parse_args()
    import uvloop

    if args.leader_port:
        uvloop.run(run_leader(args.leader_port, args.commit_ms, args.now))
        return 0
    rows = []
    for rnd in range(1, args.rounds + 1):
        port = free_port()
        leader = subprocess.Popen([sys.executable, __file__, "--leader-port", str(port), "--commit-ms",
                                   str(args.commit_ms), *(["--now"] if args.now else [])], stdout=subprocess.PIPE, env=os.environ.copy())
        try:
            assert leader.stdout is not None and leader.stdout.readline().strip() == b"ready"
            row = uvloop.run(run_follower(port, args.conc, args.duration, args.warmup, leader.pid, args.commit_ms,
                                             args.now))
        finally:
            leader.terminate()
            leader.wait()
        with open("/proc/loadavg") as fh:
            row["loadavg"] = fh.read().split()[0]
        row["round"] = rnd
        rows.append(row)
        print(f"round {rnd}: {row['rps']:8.0f} writes/s  p50 {row['p50_ms']:.2f}  p99 {row['p99_ms']:.2f} ms  "
              f"over commit p50 {row['over_commit_p50_ms']:.2f} ms  cpu ms/write follower "
              f"{row['follower_cpu_ms']:.3f} leader {row['leader_cpu_ms']:.3f}  load {row['loadavg']}", flush=True)
    for key in ("rps", "p50_ms", "p99_ms", "over_commit_p50_ms", "follower_cpu_ms", "leader_cpu_ms"):
        print(f"median {key}: {statistics.median(r[key] for r in rows):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
