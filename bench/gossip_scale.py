"""Gossip at 100 to 10,000 members: the real SWIM + Lifeguard core on the simulated network.

Each size runs in its own process (so its memory is measured alone): a settled cluster of N
real ``GossipCore``s (``Cluster.start_converged`` in ``tests/sim/gossip_sim.py``: everyone knows
everyone alive, member records shared between the tables) runs under UDP loss, and the run
reports, in *virtual* seconds and counted bytes (a busy machine stretches the wall time only):

- memory: RSS of the process before and after building the cluster, per member and per
  (member, member) pair, and its peak;
- steady load: bytes each member puts on the network per second (UDP and TCP apart), over a
  window with nothing happening but probes, gossip and push-pull;
- false positives: healthy members declared dead (FAIL) during the whole run;
- dissemination to 99.9 % (and 100 %) of members of a user event (pure gossip), of a new
  member's join, and of a crashed member's failure (detection plus spread).

Push-pull (the TCP full-state sync) is O(N) per exchange, and at N = 10,000 its Python encode
and merge would dominate the run; ``--push-pull-max N`` turns it off above N members and
reports its byte rate instead from a real encoded full state of that size and the core's
scaled interval (exact, as every member sends and answers one exchange per interval on average).

Usage (figures, machine and commands in docs/PERFORMANCE.md):
    python bench/gossip_scale.py --sizes 100,1000,3000 --json /tmp/gossip_scale.json
    python bench/gossip_scale.py --sizes 10000 --push-pull-max 3000 --steady 10
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import math
import platform
import random
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "sim"))
sys.path.insert(0, str(ROOT / "daemon"))

from gossip_sim import Cluster, SimNode  # noqa: E402
from proconsul.gossip.config import GossipConfig  # noqa: E402
from proconsul.gossip.core import (  # noqa: E402
    MemberEvent,
    MemberEventKind,
    MemberState,
    UserEventReceived,
    push_pull_scale,
)
from proconsul.gossip.messages import encode  # noqa: E402

QUANTILE = 0.999


def _status(field: str) -> int:
    """A VmRSS/VmHWM line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class EventWatch:
    """Incremental scan of every node's event list (rescanning them all is O(N²))."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.seen = {name: len(node.events) for name, node in cluster.nodes.items()}

    def new_events(self) -> list[tuple[SimNode, float, Any]]:
        out = []
        for name, node in self.cluster.nodes.items():
            start = self.seen.get(name, 0)
            if len(node.events) > start:
                out.extend((node, t, ev) for t, ev in node.events[start:])
                self.seen[name] = len(node.events)
        return out


def _spread(c: Cluster, trigger: Any, match: Any, population: int, limit: float,
            exclude: str = "") -> dict[str, float | None]:
    """Fire ``trigger()``; seconds until ``match`` reached 99.9 % / 100 % of ``population``."""
    watch = EventWatch(c)
    start = c.now
    trigger()
    times: dict[str, float] = {}

    def done() -> bool:
        for node, t, ev in watch.new_events():
            if node.name not in times and node.name != exclude and match(ev):
                times[node.name] = t - start
        return len(times) >= population

    c.run_until_true(done, start + limit, step=0.05)
    ordered = sorted(times.values())
    need = math.ceil(QUANTILE * population)
    return {
        "t999": round(ordered[need - 1], 3) if len(ordered) >= need else None,
        "t100": round(ordered[-1], 3) if len(ordered) >= population else None,
        "reached": len(ordered),
    }


def serf_simulator(n: int, loss: float, interval: float = 0.2, fanout: int = 3,
                   target: float = QUANTILE) -> dict[str, float]:
    """Serf's published convergence simulator (serf.io/docs/internals/simulator): the logistic
    epidemic model in whole rounds, with an effective contact rate of half the fan-out, and its
    bandwidth estimate of full 1,400-byte packets to ``fanout`` peers every round, sent and
    received."""
    rate = fanout * (1.0 - loss) * 0.5
    rounds = math.ceil(math.log((n + 1) * target / (1.0 - target)) / rate)
    return {"t999": round(rounds * interval, 2), "max_bytes_per_s": 1400 * fanout / interval * 2}


def run_one(n: int, seed: int, loss: float, steady: float, push_pull: bool) -> dict[str, Any]:
    logging.disable(logging.WARNING)  # per-probe warnings under loss would drown the output
    cfg = GossipConfig.lan()
    if not push_pull:
        cfg = dataclasses.replace(cfg, push_pull_interval_s=0.0)
    wall0 = time.monotonic()
    gc.collect()
    rss0 = _status("VmRSS")
    c = Cluster(seed, cfg, loss=loss)
    c.start_converged(n)
    gc.collect()
    # The tables live for the whole run: keep the collector from walking N² references on every
    # full collection (it finds nothing there, and at 10,000 members each walk takes seconds).
    gc.freeze()
    rss_built = _status("VmRSS")
    result: dict[str, Any] = {
        "n": n, "seed": seed, "loss": loss, "push_pull": push_pull,
        "rss_base_mb": round(rss0 / 1e6, 1),
        "cluster_mb": round((rss_built - rss0) / 1e6, 1),
        "bytes_per_member": round((rss_built - rss0) / n),
        "bytes_per_pair": round((rss_built - rss0) / n / n, 1),
        "build_wall_s": round(time.monotonic() - wall0, 1),
    }
    rng = random.Random(seed)
    crashed: set[str] = set()
    fails = EventWatch(c)  # every FAIL from here on; those about live members are false positives

    # Warm-up: the first probes and push-pulls.
    c.run_until(c.now + 5.0)
    # Steady window: only the protocol's own traffic.
    udp0, tcp0, t0, w0 = c.net.udp_bytes, c.net.tcp_bytes, c.now, time.monotonic()
    c.run_until(c.now + steady)
    span = c.now - t0
    result["steady_s"] = span
    result["udp_bytes_per_member_s"] = round((c.net.udp_bytes - udp0) / n / span, 1)
    result["tcp_bytes_per_member_s"] = round((c.net.tcp_bytes - tcp0) / n / span, 1)
    result["wall_per_virtual_s"] = round((time.monotonic() - w0) / span, 2)

    # Push-pull bytes when it is off: one full state of N members, each way, per member and
    # scaled interval (the exchange a member starts plus, on average, one it answers).
    if not push_pull:
        state = len(encode(c.nodes["n0"].core._local_state(join=False)))
        interval = push_pull_scale(GossipConfig.lan().push_pull_interval_s, n)
        result["push_pull_state_bytes"] = state
        result["tcp_bytes_per_member_s_computed"] = round(2 * state / interval, 1)

    sent0, udp_run0, t_run0 = c.net.sent, c.net.udp_bytes, c.now
    # 1. A user event from a random member: pure piggyback/gossip dissemination.
    origin = f"n{rng.randrange(n)}"
    result["user_event"] = _spread(
        c, lambda: c.user_event(origin, "bench", b"x"),
        lambda ev: isinstance(ev, UserEventReceived) and ev.name == "bench", n, 60.0)
    # 2. A join: the new member push-pulls with one member, then its alive message spreads.
    c.run_until(c.now + 2.0)
    joiner = c.add_node("joiner")
    contact = c.nodes[f"n{rng.randrange(n)}"].addr
    result["join"] = _spread(
        c, lambda: c.join(joiner.name, [contact]),
        lambda ev: isinstance(ev, MemberEvent) and ev.kind is MemberEventKind.JOIN and ev.member.name == "joiner",
        n, 120.0, exclude="joiner")
    # 3. A crash: probe, indirect probes, TCP fallback, Lifeguard suspicion, then the death spreads.
    c.run_until(c.now + 2.0)
    victim = f"n{rng.randrange(1, n)}"
    crashed.add(victim)
    result["failure"] = _spread(
        c, lambda: c.crash(victim),
        lambda ev: isinstance(ev, MemberEvent) and ev.kind is MemberEventKind.FAIL and ev.member.name == victim,
        n, 300.0)  # the N others: N - 1 originals plus the joiner
    # The same over the busy part (event, join, failure and its spread), for comparison.
    result["udp_packets_per_member_s"] = round((c.net.sent - sent0) / (n + 1) / (c.now - t_run0), 2)
    result["udp_bytes_per_member_s_busy"] = round((c.net.udp_bytes - udp_run0) / (n + 1) / (c.now - t_run0), 1)

    wrongly: dict[str, int] = {}
    for _, _, ev in fails.new_events():
        if isinstance(ev, MemberEvent) and ev.kind is MemberEventKind.FAIL and ev.member.name not in crashed:
            wrongly[ev.member.name] = wrongly.get(ev.member.name, 0) + 1
    total = c.now  # virtual seconds since the cluster was built
    result["virtual_s"] = round(total, 1)
    result["false_positive_members"] = len(wrongly)
    result["false_positive_declarations"] = sum(wrongly.values())
    # Per member-hour: how often any given healthy member is wrongly declared dead.
    result["false_positives_per_member_hour"] = round(len(wrongly) / (n * total / 3600.0), 4)
    result["rss_peak_mb"] = round(_status("VmHWM") / 1e6, 1)
    result["wall_s"] = round(time.monotonic() - wall0, 1)
    result["serf_simulator"] = serf_simulator(n, loss)
    result["agent_table_bytes_per_member"] = round(agent_table_bytes(n))
    return result


def agent_table_bytes(n: int) -> float:
    """Bytes per member of one agent's own table (records not shared with anyone): a fresh core
    learns ``n`` members from one push-pull, under tracemalloc."""
    from proconsul.gossip.core import GossipCore
    from proconsul.gossip.messages import PushNodeState, PushPull

    tags = {"role": "node", "dc": "dc1"}
    state = PushPull(False, [PushNodeState(f"m{i}", (f"10.1.{i // 250}.{i % 250 + 1}", 8301), tags, 1,
                                           MemberState.ALIVE) for i in range(n)])
    data = encode(state)  # decoded inside the measurement, as a peer's bytes would be
    core = GossipCore("agent", ("10.2.0.1", 8301), GossipConfig.lan(), random.Random(0), 0.0, tags=tags)
    gc.collect()
    tracemalloc.start()
    try:
        core.handle_stream(data, ("10.1.0.1", 8301), 0.0)
        core._queue.reset()  # the N alive broadcasts a merge queues leave within seconds
        gc.collect()
        used = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return used / n


def _fmt(x: Any) -> str:
    return "-" if x is None else str(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000,3000")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--loss", type=float, default=0.01, help="UDP loss (default 1 %%)")
    ap.add_argument("--steady", type=float, default=20.0, help="virtual seconds of the steady window")
    ap.add_argument("--push-pull-max", type=int, default=1_000_000,
                    help="turn push-pull off above this many members (its bytes are then computed)")
    ap.add_argument("--json", help="append the raw results (one JSON object per line) here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: run this size, print JSON
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        r = run_one(args.one, args.seed, args.loss, args.steady, args.one <= args.push_pull_max)
        print(json.dumps(r), flush=True)
        return 0
    print(f"# {platform.python_implementation()} {platform.python_version()} on {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}", flush=True)
    for size in (int(s) for s in args.sizes.split(",")):
        for seed in range(args.seeds):
            cmd = [sys.executable, __file__, "--one", str(size), "--seed", str(seed), "--loss", str(args.loss),
                   "--steady", str(args.steady), "--push-pull-max", str(args.push_pull_max)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(f"N={size} seed={seed} failed:\n{proc.stderr}", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(r) + "\n")
            tcp = r["tcp_bytes_per_member_s"] if r["push_pull"] else f"{r['tcp_bytes_per_member_s_computed']} (computed)"
            print(f"N={size} seed={seed}: cluster {r['cluster_mb']} MB ({r['bytes_per_pair']} B/pair), "
                  f"peak RSS {r['rss_peak_mb']} MB; UDP {r['udp_bytes_per_member_s']} B/member/s, TCP {tcp}; "
                  f"event 99.9% {_fmt(r['user_event']['t999'])} s, join {_fmt(r['join']['t999'])} s, "
                  f"failure {_fmt(r['failure']['t999'])} s (100%: {_fmt(r['failure']['t100'])}); "
                  f"false positives {r['false_positive_members']} in {r['virtual_s']} virtual s; "
                  f"wall {r['wall_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
