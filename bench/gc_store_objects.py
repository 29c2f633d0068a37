"""Objects the cyclic collector tracks for a 10,000-node catalog, and what a full collection costs.

Run by hand, one process, no agent (deterministic apart from the timing):

    PYTHONPATH=daemon .venv/bin/python bench/gc_store_objects.py                    # bench/catalog_scale.py's catalog
    PYTHONPATH=daemon .venv/bin/python bench/gc_store_objects.py --nodes 2000 --instances 5000

Builds the catalog `bench/catalog_scale.py` registers (its `load_batches`: per node a Node op, a
node check, and per instance a Service op and a service check) the way a follower receives it:
the /v1/txn JSON decoded by the HTTP layer, encoded as a Raft command, decoded again and applied
through the FSM. Reports the tracked objects (`gc.get_objects()`) before and after, the new ones
per node / instance / check by type, and the median of 5 full `gc.collect()` runs over the heap
(the complete scan of `agent/gc_policy.py`, less the freeze and unfreeze).
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tree_daemon  # noqa: E402,F401  (this tree's proconsul, not the venv's)
from catalog_scale import Layout, check_op, load_batches  # noqa: E402
from proconsul.http.txn import decode_ops  # noqa: E402
from proconsul.state import commands  # noqa: E402
from proconsul.state.fsm import FSM  # noqa: E402
from proconsul.state.store import Store  # noqa: E402


def census() -> collections.Counter[str]:
    return collections.Counter(type(o).__name__ for o in gc.get_objects())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--instances", type=int, default=50_000)
    ap.add_argument("--services", type=int, default=500)
    ap.add_argument("--big", type=int, default=1000)
    ap.add_argument("--collects", type=int, default=5)
    a = ap.parse_args()
    layout = Layout(a.nodes, a.instances, a.services, a.big)
    fsm = FSM(Store())
    gc.collect()
    before = census()
    # Each batch's JSON body as the HTTP layer receives it, dropped once applied.
    for k, ops in enumerate(load_batches(layout)):
        raw = commands.encode(commands.Txn(tuple(decode_ops(json.loads(json.dumps(ops))))))
        result = fsm.apply(k + 1, commands.decode(raw))
        assert not getattr(result, "errors", ()), result
    del ops, raw, result
    gc.collect()
    gc.collect()  # tuples of atomic values are untracked at their first collection
    after = census()
    diff = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    checks = a.nodes + a.instances
    times = []
    for _ in range(a.collects):
        t = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - t) * 1000)
    added = sum(diff.values())
    print(f"catalog: {a.nodes} nodes, {a.instances} instances, {checks} checks")
    print(f"tracked objects: {sum(before.values()):,} before, {sum(after.values()):,} after (+{added:,})")
    print(f"per node (with its 5 instances and 6 checks): {added / a.nodes:.1f}")
    print("new tracked objects by type (count, per node):")
    for name, n in sorted(diff.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {name:24s} {n:>10,} {n / a.nodes:8.2f}")
    print(
        f"full gc.collect(): median {statistics.median(times):.0f} ms over {a.collects} "
        f"({', '.join(f'{t:.0f}' for t in times)})"
    )
    print(f"store alive: {len(fsm.store.nodes)} nodes")


# ------------------------------------------------------------- --parked: a dev agent in this process

# A child process that opens N connections, sends each one blocking read and holds them (also
# used by tests/http/test_fast_blocking.py).
HOLDER_SCRIPT = r"""
import socket, sys
host, port, n, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
socks = []
for i in range(n):
    s = socket.create_connection((host, port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    socks.append(s)
print("sent", flush=True)
sys.stdin.read()
"""


async def parked_census(a: argparse.Namespace) -> None:
    """Objects a dev agent's collector tracks per catalog node (loaded through /v1/txn, so the
    Raft log's share is in) and per parked blocking read (held by a child process)."""
    import asyncio
    import subprocess
    import tempfile
    import urllib.request

    from proconsul import config as configmod
    from proconsul.agent.agent import Agent

    def free_port() -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    port = free_port()
    tmp = tempfile.mkdtemp()
    conf = Path(tmp) / "limits.hcl"
    conf.write_text(f"limits {{ http_max_conns_per_client = {a.parked + 100} }}\n")
    flags = configmod.agent_flagset().parse([
        "-dev", f"-http-port={port}", "-dns-port=-1", f"-serf-lan-port={free_port()}",
        f"-serf-wan-port={free_port()}", "-client=127.0.0.1", "-bind=127.0.0.1", "-node=gcbench",
        f"-data-dir={tmp}", f"-config-file={conf}",
    ])  # fmt: skip
    agent = Agent(configmod.load_from(flags).config, flags)
    await agent.start()
    base = f"http://127.0.0.1:{port}"

    def put(ops: list) -> None:
        req = urllib.request.Request(f"{base}/v1/txn", data=json.dumps(ops).encode(), method="PUT")
        with urllib.request.urlopen(req) as resp:
            assert resp.status == 200

    def blocking_gauge() -> int:
        with urllib.request.urlopen(f"{base}/v1/agent/metrics") as resp:
            data = json.load(resp)
        return sum(
            int(g["Value"]) for g in data.get("Gauges", []) if g["Name"].endswith("rpc.queries_blocking")
        )

    layout = Layout(a.nodes, a.instances, a.services, a.big)
    try:
        gc.collect()
        c0 = census()
        for ops in load_batches(layout):
            await asyncio.to_thread(put, ops)
        gc.collect()
        gc.collect()
        c1 = census()
        index = agent.store.last_index
        path = f"/v1/health/service/svc-0001?index={index}&wait=10m"
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER_SCRIPT, "127.0.0.1", str(port), str(a.parked), path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            await asyncio.to_thread(holder.stdout.readline)
            deadline = time.monotonic() + 120
            parked = 0
            while parked < a.parked and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                parked = await asyncio.to_thread(blocking_gauge)
            gc.collect()
            gc.collect()
            c2 = census()
            times = []
            for _ in range(a.collects):
                t = time.perf_counter()
                gc.collect()
                times.append((time.perf_counter() - t) * 1000)
            # One write wakes every parked read (answered; the holder leaves the answers unread and
            # its connections open): what that leaves for the cyclic collector alone to free.
            i = layout.instances_of("svc-0001")[0]
            gc.disable()
            await asyncio.to_thread(put, [check_op(layout, i, "passing", "woken")])
            while await asyncio.to_thread(blocking_gauge) > 0 and time.monotonic() < deadline + 120:
                await asyncio.sleep(0.5)
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            garbage = collections.Counter(type(o).__name__ for o in gc.garbage)
            gc.set_debug(0)
            gc.garbage.clear()
            gc.collect()  # (saved cycles are still cycles: freed now)
            gc.enable()
            c3 = census()
            # The watchers hang up: what their closed connections leave for the cyclic collector.
            holder.stdin.close()
            holder.wait()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)
            closed: collections.Counter[str] = collections.Counter()
            quiet_until = time.monotonic() + 30
            while time.monotonic() < quiet_until:
                await asyncio.sleep(0.5)
                gc.collect()
                if gc.garbage:
                    closed.update(type(o).__name__ for o in gc.garbage)
                    gc.set_debug(0)
                    gc.garbage.clear()
                    gc.collect()  # (saved cycles are still cycles: freed now)
                    gc.set_debug(gc.DEBUG_SAVEALL)
                    quiet_until = min(quiet_until, time.monotonic() + 2)  # until a quiet 2 s
            gc.set_debug(0)
            gc.enable()
        finally:
            if holder.poll() is None:
                holder.stdin.close()
                holder.wait()
    finally:
        await agent.stop()

    def show(title: str, x: collections.Counter, y: collections.Counter, per: int) -> None:
        diff = {k: y[k] - x.get(k, 0) for k in y if y[k] != x.get(k, 0)}
        print(f"{title}: +{sum(diff.values()):,} tracked ({sum(diff.values()) / per:.1f} each)")
        for name, n in sorted(diff.items(), key=lambda kv: -kv[1])[:a.types]:
            print(f"  {name:28s} {n:>10,} {n / per:8.2f}")

    print(f"agent at start: {sum(c0.values()):,} tracked")
    show(f"catalog ({a.nodes} nodes via /v1/txn), per node", c0, c1, a.nodes)
    show(f"{parked} parked blocking reads, per read", c1, c2, max(parked, 1))
    n = sum(garbage.values())
    print(f"cyclic garbage after one write woke them: {n:,} ({n / max(parked, 1):.1f} per read)")
    for name, k in garbage.most_common(10):
        print(f"  {name:28s} {k:>10,} {k / max(parked, 1):8.2f}")
    show("still tracked after, per read (answered, connection idle)", c1, c3, max(parked, 1))
    n = sum(closed.values())
    print(
        f"cyclic garbage once the {parked} connections closed: {n:,} ({n / max(parked, 1):.1f} per connection)"
    )
    for name, k in closed.most_common(8):
        print(f"  {name:28s} {k:>10,} {k / max(parked, 1):8.2f}")
    print(
        f"total {sum(c2.values()):,}; full gc.collect(): median {statistics.median(times):.0f} ms "
        f"({', '.join(f'{t:.0f}' for t in times)})"
    )


if __name__ == "__main__":
    if "--parked" in sys.argv:
        import asyncio

        ap = argparse.ArgumentParser()
        ap.add_argument("--parked", type=int, required=True)
        ap.add_argument("--nodes", type=int, default=10_000)
        ap.add_argument("--instances", type=int, default=50_000)
        ap.add_argument("--services", type=int, default=500)
        ap.add_argument("--big", type=int, default=1000)
        ap.add_argument("--collects", type=int, default=5)
        ap.add_argument("--types", type=int, default=12, help="types listed per census diff")
        ap.add_argument(
            "--no-uvloop",
            action="store_true",
            help="asyncio's own loop (the agent uses uvloop when installed)",
        )
        args = ap.parse_args()
        if not args.no_uvloop:
            try:
                import uvloop

                uvloop.install()  # as `proconsul agent` does
            except ImportError:
                pass
        print(f"event loop: {asyncio.get_event_loop_policy().__class__.__module__}")
        asyncio.run(parked_census(args))
    else:
        main()
