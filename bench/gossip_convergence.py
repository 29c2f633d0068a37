"""Gossip at scale on the real SWIM + Lifeguard core, in one process, on the simulated network.

Two measurements, both in *virtual* seconds of the seeded simulation (`tests/sim/gossip_sim.py`),
so the machine's speed and load change the wall time of a run, never its results:

- ``convergence``: how long a broadcast takes to reach 99.9 % of N members, for a user event
  (pure dissemination, what Serf's convergence simulator models), a join (the new member's
  alive message) and a failure (a crashed member: detection plus the spread of its death).
- ``false-positives``: how often healthy members are declared dead under 1 % packet loss while
  one member is slowed (its inbound messages handled seconds late), with Lifeguard and without it.

Usage (results and the machine go to docs/PERFORMANCE.md):
    .venv/bin/python bench/gossip_convergence.py convergence --sizes 100,1000 --seeds 3
    .venv/bin/python bench/gossip_convergence.py false-positives --members 100 --seeds 5 --duration 600
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "sim"))

import tree_daemon  # noqa: E402,F401  (this tree's proconsul, not the venv's)
from gossip_sim import Cluster, SimNode  # noqa: E402
from proconsul.gossip.config import GossipConfig  # noqa: E402
from proconsul.gossip.core import MemberEvent, MemberEventKind, UserEventReceived  # noqa: E402

QUANTILE = 0.999


class EventWatch:
    """Incremental scan of every node's event list (re-scanning N lists of N events is O(N^2))."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.seen: dict[str, int] = {name: len(node.events) for name, node in cluster.nodes.items()}

    def new_events(self) -> list[tuple[SimNode, float, Any]]:
        out = []
        for name, node in self.cluster.nodes.items():
            start = self.seen.get(name, 0)
            for t, ev in node.events[start:]:
                out.append((node, t, ev))
            self.seen[name] = len(node.events)
        return out


def _build(seed: int, n: int, config: GossipConfig, loss: float) -> Cluster:
    """A converged cluster of ``n`` members (everyone knows everyone alive)."""
    c = Cluster(seed, config, loss=loss)
    # Stagger the joins over a window that grows with N so the seed is not hit by all at once.
    c.start(n, join_within=max(2.0, n / 100.0))
    known = {name: 1 for name in c.nodes}  # each node knows itself
    watch = EventWatch(c)

    def converged() -> bool:
        for node, _, ev in watch.new_events():
            if isinstance(ev, MemberEvent) and ev.kind is MemberEventKind.JOIN and ev.member.name != node.name:
                known[node.name] += 1
        return all(v >= n for v in known.values())

    if c.run_until_true(converged, c.now + 600.0, step=0.5) is None:
        raise RuntimeError(f"N={n} seed={seed}: cluster did not converge within 600 virtual s")
    return c


def _quantile_time(times: list[float], population: int, q: float = QUANTILE) -> float | None:
    """Time by which ``q`` of ``population`` had it (None if never)."""
    need = math.ceil(q * population)
    if len(times) < need:
        return None
    return sorted(times)[need - 1]


def _spread(c: Cluster, trigger: Any, match: Any, population: int, limit: float,
            exclude: str = "") -> tuple[float | None, float | None]:
    """Run ``trigger()``, then until ``match`` events reached ``QUANTILE`` of ``population``.

    Returns (t99.9, t100) in seconds after the trigger; ``exclude`` is a member not counted.
    """
    watch = EventWatch(c)
    start = c.now
    trigger()
    times: dict[str, float] = {}

    def done() -> bool:
        for node, t, ev in watch.new_events():
            if node.name not in times and node.name != exclude and match(node, ev):
                times[node.name] = t - start
        return len(times) >= population

    c.run_until_true(done, start + limit, step=0.05)
    t999 = _quantile_time(list(times.values()), population)
    t100 = max(times.values()) if len(times) >= population else None
    return t999, t100


def convergence(size: int, seed: int, config: GossipConfig, loss: float) -> dict[str, Any]:
    wall = time.monotonic()
    c = _build(seed, size, config, loss)
    built = time.monotonic() - wall
    rng = random.Random(seed)
    c.run_until(c.now + 5.0)
    result: dict[str, Any] = {"n": size, "seed": seed, "build_wall_s": round(built, 1)}

    # 1. A user event from a random member: pure piggyback/gossip dissemination.
    origin = f"n{rng.randrange(size)}"
    result["user_event"] = _spread(
        c, lambda: c.user_event(origin, "bench", b"x"), lambda node, ev: isinstance(ev, UserEventReceived) and ev.name == "bench", size, 60.0
    )

    # 2. A join: the new member's alive message spreads (the joiner push-pulls with one member).
    c.run_until(c.now + 5.0)
    joiner = c.add_node(f"j{seed}")
    contact = c.nodes[f"n{rng.randrange(size)}"].addr
    result["join"] = _spread(
        c,
        lambda: c.join(joiner.name, [contact]),
        lambda node, ev: isinstance(ev, MemberEvent) and ev.kind is MemberEventKind.JOIN
        and ev.member.name == joiner.name,
        size,  # the N existing members
        120.0,
        exclude=joiner.name,
    )

    # 3. A crash: detection (probe, indirect probes, suspicion) and then the death's spread.
    c.run_until(c.now + 5.0)
    victim = f"n{rng.randrange(1, size)}"
    population = size  # the N other members (N existing + joiner - victim)
    t999, t100 = _spread(
        c,
        lambda: c.crash(victim),
        lambda node, ev: isinstance(ev, MemberEvent) and ev.kind is MemberEventKind.FAIL and ev.member.name == victim,
        population,
        600.0,
    )
    result["failure"] = (t999, t100)
    result["wall_s"] = round(time.monotonic() - wall, 1)
    return result


class SlowMemberCluster(Cluster):
    """A cluster where one member, now and then, reads its socket seconds late.

    This is the anomaly Lifeguard targets: a member starved of CPU whose timers still fire but
    whose inbound messages (acks, nacks, refutations) wait in a backlog. During a slow episode
    every packet and stream reaching the member is handled ``backlog`` seconds late.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slow: str | None = None
        self.windows: list[tuple[float, float]] = []
        self.backlog: tuple[float, float] = (0.0, 0.0)
        self.slow_rng = random.Random(0)

    def slow_schedule(self, name: str, start: float, end: float, rng: random.Random,
                      episode: tuple[float, float], normal: tuple[float, float],
                      backlog: tuple[float, float]) -> None:
        self.slow, self.backlog, self.slow_rng = name, backlog, rng
        t = start
        while t < end:
            length = rng.uniform(*episode)
            self.windows.append((t, t + length))
            t += length + rng.uniform(*normal)

    def _lag(self, name: str) -> float:
        if name != self.slow or not any(a <= self.now < b for a, b in self.windows):
            return 0.0
        return self.slow_rng.uniform(*self.backlog)

    def _deliver(self, dst: Any, data: bytes, src: Any) -> None:
        node = self.by_addr.get(dst)
        lag = self._lag(node.name) if node is not None else 0.0
        if lag:
            self.at(self.now + lag, super()._deliver, dst, data, src)
            return
        super()._deliver(dst, data, src)

    def _stream_serve(self, client: str, server: str, req: Any) -> None:
        lag = self._lag(server)
        if lag:
            self.at(self.now + lag, super()._stream_serve, client, server, req)
            return
        super()._stream_serve(client, server, req)

    def _stream_result(self, name: str, sid: int, reply: bytes | None) -> None:
        lag = self._lag(name)  # a TCP fallback's answer also waits in the slow member's backlog
        if lag:
            self.at(self.now + lag, super()._stream_result, name, sid, reply)
            return
        super()._stream_result(name, sid, reply)


def without_lifeguard(config: GossipConfig) -> GossipConfig:
    """SWIM as before Lifeguard: no local health multiplier, a fixed (minimum) suspicion time.

    Our core always keeps the buddy system (a suspect is told at once); it only speeds refutation.
    """
    return dataclasses.replace(config, awareness_max_multiplier=1, suspicion_max_timeout_mult=1)


def false_positives(members: int, seed: int, config: GossipConfig, loss: float, duration: float,
                    episode: tuple[float, float], normal: tuple[float, float],
                    backlog: tuple[float, float]) -> dict[str, Any]:
    wall = time.monotonic()
    c = SlowMemberCluster(seed, config, loss=loss)
    c.start(members, join_within=2.0)
    known = c.run_until_true(c.converged, 120.0, step=0.5)
    if known is None:
        raise RuntimeError(f"seed={seed}: no convergence")
    slow = f"n{members - 1}"
    start = c.now
    c.slow_schedule(slow, start, start + duration, random.Random(seed ^ 0x5EED), episode, normal, backlog)
    watch = EventWatch(c)
    watch.new_events()  # forget the join phase
    c.run_until(start + duration)
    # A false positive: a healthy member (nobody crashes here) declared dead. Count episodes per
    # subject (the first FAIL seen anywhere; more FAILs within 30 s are the same episode spreading).
    fails: dict[str, list[float]] = {}
    for _, t, ev in watch.new_events():
        if isinstance(ev, MemberEvent) and ev.kind is MemberEventKind.FAIL:
            fails.setdefault(ev.member.name, []).append(t)
    episodes: dict[str, int] = {}
    for subject, times in fails.items():
        times.sort()
        count, last = 0, -1e9
        for t in times:
            if t - last > 30.0:
                count += 1
            last = t
        episodes[subject] = count
    slowed = sum(min(b, start + duration) - a for a, b in c.windows if a < start + duration)
    return {
        "seed": seed,
        "slow_member_slowed_fraction": round(slowed / duration, 3),
        "false_positives_healthy": sum(v for k, v in episodes.items() if k != slow),
        "false_positives_slow_member": episodes.get(slow, 0),
        "wall_s": round(time.monotonic() - wall, 1),
    }


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    conv = sub.add_parser("convergence")
    conv.add_argument("--sizes", default="100,1000")
    conv.add_argument("--seeds", type=int, default=3)
    conv.add_argument("--loss", type=float, default=0.0)
    fp = sub.add_parser("false-positives")
    fp.add_argument("--members", type=int, default=100)
    fp.add_argument("--seeds", type=int, default=5)
    fp.add_argument("--loss", type=float, default=0.01)
    fp.add_argument("--duration", type=float, default=600.0, help="virtual seconds per run")
    fp.add_argument("--episode", default="20,60", help="length of a slow episode, seconds (range)")
    fp.add_argument("--normal", default="20,60", help="normal time between slow episodes, seconds (range)")
    fp.add_argument("--backlog", default="2,15", help="inbound processing delay while slow, seconds (range)")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # the core's per-probe warnings would drown the table
    lan = GossipConfig.lan()
    results: list[dict[str, Any]] = []
    if args.cmd == "convergence":
        print(f"{'N':>6} {'seed':>4} {'event 99.9%':>12} {'event 100%':>11} {'join 99.9%':>11} "
              f"{'fail 99.9%':>11} {'fail 100%':>10} {'wall s':>7}")
        for size in (int(s) for s in args.sizes.split(",")):
            for seed in range(args.seeds):
                r = convergence(size, seed, lan, args.loss)
                results.append(r)
                print(f"{size:>6} {seed:>4} {_fmt(r['user_event'][0]):>12} {_fmt(r['user_event'][1]):>11} "
                      f"{_fmt(r['join'][0]):>11} {_fmt(r['failure'][0]):>11} {_fmt(r['failure'][1]):>10} "
                      f"{r['wall_s']:>7}", flush=True)
            rows = [r for r in results if r["n"] == size]
            for key in ("user_event", "join", "failure"):
                vals = [r[key][0] for r in rows if r[key][0] is not None]
                if vals:
                    print(f"{size:>6} median {key} 99.9%: {statistics.median(vals):.2f} s "
                          f"(max {max(vals):.2f}, {len(vals)}/{len(rows)} runs reached it)")
    else:
        def pair(text: str) -> tuple[float, float]:
            lo, hi = (float(x) for x in text.split(","))
            return lo, hi

        episode, normal, backlog = pair(args.episode), pair(args.normal), pair(args.backlog)
        for label, cfg in (("lifeguard", lan), ("no-lifeguard", without_lifeguard(lan))):
            total_h = total_s = 0
            for seed in range(args.seeds):
                r = false_positives(args.members, seed, cfg, args.loss, args.duration, episode, normal, backlog)
                r["config"] = label
                results.append(r)
                total_h += r["false_positives_healthy"]
                total_s += r["false_positives_slow_member"]
                print(f"{label:>13} seed={seed} healthy FP={r['false_positives_healthy']} "
                      f"slow-member FP={r['false_positives_slow_member']} "
                      f"slowed={r['slow_member_slowed_fraction']} wall={r['wall_s']}s", flush=True)
            minutes = args.seeds * args.duration / 60.0
            print(f"{label:>13} total: {total_h} healthy-member false positives, {total_s} of the slow member, "
                  f"over {minutes:.0f} virtual minutes ({total_h / minutes:.2f}/min healthy)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
