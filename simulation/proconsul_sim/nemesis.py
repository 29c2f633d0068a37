"""Seeded fault schedules and the thread that carries them out against a running cluster.

A schedule is a list of `Fault`s (kind, start, duration, params) generated from the scenario's
seed alone: the same seed gives the same schedule. Targets that only exist at run time ("the
leader") are resolved when the fault starts, and the resolved nodes are recorded in the
nemesis timeline of the report.

Fault kinds:
  partition-halves   servers split into a minority and a majority (clients with either), cut both ways
  partition-minority one random server cut from every other node
  isolate-leader     the current leader cut from every other node
  isolate-client     one client agent cut from every other node (service discovery check)
  bridge             five servers as A A | B | C C where B still talks to both sides
  one-way            one random server cannot dial the others, or the others cannot dial it
  latency            latency + jitter toxics on every RPC link (both directions of each stream)
  bandwidth          bandwidth limit toxics on every RPC link
  reset-peer         reset_peer toxics on every RPC link (connections reset after a timeout)
  udp-loss           a percentage of gossip UDP packets between every pair dropped (nftables)
  kill-leader        kill -9 the leader, restart it at the end of the window
  kill-random        kill -9 a random server, restart it at the end of the window
  pause-leader       SIGSTOP the leader, SIGCONT at the end of the window
  pause-random       SIGSTOP a random server, SIGCONT at the end of the window
  leave-rejoin       a random non-leader server leaves gracefully, restarts at the end
  isolate-follower   a random non-leader server cut from every other node

A cut is both: the proxies of the cut RPC links are disabled (their listeners and open
connections closed) and nftables drops gossip between the two node addresses.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .launcher import Cluster, Node
from .netns import Firewall
from .proxies import Links

KINDS = (
    "partition-halves", "partition-minority", "isolate-leader", "isolate-client", "bridge", "one-way",
    "latency", "bandwidth", "reset-peer", "udp-loss", "kill-leader", "kill-random", "pause-leader",
    "pause-random", "leave-rejoin", "isolate-follower",
)


@dataclass
class Fault:
    kind: str
    start: float  # seconds after the workload started
    duration: float
    params: dict[str, Any] = field(default_factory=dict)


def generate_schedule(seed: int, kinds: list[str], time_limit_s: float, servers: list[str], clients: list[str],
                      fault_s: tuple[float, float], quiet_s: tuple[float, float], first_at_s: float,
                      tail_s: float, toxic: dict[str, Any] | None = None) -> list[Fault]:
    """Alternate quiet gaps and faults until `tail_s` before the end (the tail stays quiet so
    the cluster can recover before the final reads)."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown nemesis kind(s) {unknown}; known: {', '.join(KINDS)}")
    rng = random.Random(seed)
    toxic = toxic or {}
    schedule: list[Fault] = []
    t = first_at_s
    while True:
        duration = round(rng.uniform(*fault_s), 2)
        if t + duration > time_limit_s - tail_s:
            break
        kind = rng.choice(kinds)
        params = _params(kind, rng, servers, clients, toxic)
        schedule.append(Fault(kind, round(t, 2), duration, params))
        t += duration + rng.uniform(*quiet_s)
    return schedule


def _params(kind: str, rng: random.Random, servers: list[str], clients: list[str], toxic: dict[str, Any]) -> dict[str, Any]:
    if kind == "partition-halves":
        shuffled = rng.sample(servers, len(servers))
        minority = sorted(shuffled[: len(servers) // 2])
        with_minority = sorted(c for c in clients if rng.random() < 0.5)
        return {"minority": minority + with_minority}
    if kind == "partition-minority":
        return {"node": rng.choice(servers)}
    if kind == "isolate-client":
        if not clients:
            raise ValueError("isolate-client needs client agents in the scenario")
        return {"node": rng.choice(clients)}
    if kind == "bridge":
        if len(servers) != 5:
            raise ValueError("bridge needs exactly 5 servers")
        order = rng.sample(servers, 5)
        return {"side_a": sorted(order[:2]), "bridge": order[2], "side_b": sorted(order[3:])}
    if kind == "one-way":
        return {"node": rng.choice(servers), "direction": rng.choice(["outbound", "inbound"])}
    if kind == "latency":
        return {"latency_ms": toxic.get("latency_ms", 150), "jitter_ms": toxic.get("jitter_ms", 100)}
    if kind == "bandwidth":
        return {"rate_kb_s": toxic.get("rate_kb_s", 16)}
    if kind == "reset-peer":
        return {"timeout_ms": toxic.get("reset_timeout_ms", 500)}
    if kind == "udp-loss":
        return {"percent": toxic.get("udp_loss_percent", 40)}
    if kind in ("kill-random", "pause-random"):
        return {"node": rng.choice(servers)}
    if kind in ("leave-rejoin", "isolate-follower"):
        return {"pick": rng.random()}  # which non-leader, chosen when the leader is known
    return {}


class Nemesis(threading.Thread):
    """Carries out a schedule; records `{"name","start","end","params"}` per fault."""

    def __init__(self, cluster: Cluster, links: Links, firewall: Firewall, schedule: list[Fault],
                 clock: Callable[[], float], on_node_event: Callable[[str, str, float], None]) -> None:
        super().__init__(name="nemesis", daemon=True)
        self.cluster = cluster
        self.links = links
        self.firewall = firewall
        self.schedule = schedule
        self.clock = clock
        self.on_node_event = on_node_event  # (fault|heal, node, time): service discovery bookkeeping
        self.timeline: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.stop_event = threading.Event()
        self.offset = 0.0  # clock time at which the schedule's t=0 is

    def run(self) -> None:
        for fault in self.schedule:
            if self.stop_event.wait(max(0.0, self.offset + fault.start - self.clock())):
                return
            entry = {"name": fault.kind, "start": self.clock(), "end": None, "params": dict(fault.params)}
            self.timeline.append(entry)
            try:
                heal = self.inject(fault, entry["params"])
            except Exception as exc:
                self.errors.append(f"{fault.kind} at {entry['start']:.1f}s: {exc!r}")
                entry["end"] = self.clock()
                entry["params"]["error"] = repr(exc)
                self.heal_everything()
                continue
            self.stop_event.wait(fault.duration)
            try:
                heal()
            except Exception as exc:
                self.errors.append(f"healing {fault.kind}: {exc!r}")
                self.heal_everything()
            entry["end"] = self.clock()

    # ------------------------------------------------------------------------------- faults

    def inject(self, fault: Fault, params: dict[str, Any]) -> Callable[[], None]:
        """Start `fault`; return the function that heals it. Resolved targets go into params."""
        kind = fault.kind
        names = list(self.cluster.nodes)
        if kind == "partition-halves":
            return self.partition([set(params["minority"]), set(names) - set(params["minority"])])
        if kind in ("partition-minority", "isolate-client"):
            return self.partition([{params["node"]}, set(names) - {params["node"]}])
        if kind == "isolate-leader":
            leader = self.cluster.leader().name
            params["node"] = leader
            return self.partition([{leader}, set(names) - {leader}])
        if kind == "isolate-follower":
            node = self._pick_follower(params)
            return self.partition([{node.name}, set(names) - {node.name}])
        if kind == "bridge":
            # The bridge node (and the clients) keep talking to both sides.
            return self.partition([set(params["side_a"]), set(params["side_b"])])
        if kind == "one-way":
            node, others = params["node"], set(names) - {params["node"]}
            if params["direction"] == "outbound":
                return self.cut_pairs([(node, o) for o in sorted(others)])
            return self.cut_pairs([(o, node) for o in sorted(others)])
        if kind == "latency":
            return self.toxic("latency", {"latency": params["latency_ms"], "jitter": params["jitter_ms"]})
        if kind == "bandwidth":
            return self.toxic("bandwidth", {"rate": params["rate_kb_s"]})
        if kind == "reset-peer":
            return self.toxic("reset_peer", {"timeout": params["timeout_ms"]})
        if kind == "udp-loss":
            ips = [n.ip for n in self.cluster.nodes.values()]
            loss = {(a, b): int(params["percent"]) for a in ips for b in ips if a != b}
            self.firewall.set_udp_loss(loss)
            return lambda: self.firewall.clear_udp_loss(list(loss))
        if kind in ("kill-leader", "kill-random", "pause-leader", "pause-random"):
            node = self.cluster.leader() if kind.endswith("leader") else self.cluster.nodes[params["node"]]
            params["node"] = node.name
            if kind.startswith("kill"):
                node.kill9()
                self._node_event("fault", node)
                return lambda: (node.start(), self._node_event("heal", node))
            node.pause()
            self._node_event("fault", node)
            return lambda: (node.resume(), self._node_event("heal", node))
        if kind == "leave-rejoin":
            node = self._pick_follower(params)
            node.leave()
            self._node_event("fault", node)
            return lambda: (node.start(), self._node_event("heal", node))
        raise ValueError(f"unknown fault kind {kind}")

    def _pick_follower(self, params: dict[str, Any]) -> Node:
        """The non-leader server the seeded `pick` in [0, 1) points at; recorded in params."""
        leader = self.cluster.leader()
        others = [s for s in self.cluster.servers if s is not leader and s.running]
        node = others[int(params["pick"] * len(others))]
        params["node"] = node.name
        return node

    def _node_event(self, event: str, node: Node) -> None:
        self.on_node_event(event, node.name, self.clock())

    def partition(self, groups: list[set[str]]) -> Callable[[], None]:
        pairs = [(a, b) for i, g in enumerate(groups) for h in groups[i + 1:] for x, y in ((g, h), (h, g))
                 for a in sorted(x) for b in sorted(y)]
        return self.cut_pairs(pairs)

    def cut_pairs(self, pairs: list[tuple[str, str]]) -> Callable[[], None]:
        """Cut directed node pairs: RPC proxies down and gossip dropped, in that direction."""
        pairs = sorted(set(pairs))
        link_pairs = [p for p in pairs if p in self.links.links]
        ips = [(self.cluster.nodes[a].ip, self.cluster.nodes[b].ip) for a, b in pairs]
        self.firewall.cut(ips)
        self.links.disable(link_pairs)
        # A client cut from every server is a discovery fault for that client.
        servers = {s.name for s in self.cluster.servers}
        isolated = [c.name for c in self.cluster.clients
                    if servers <= {b for a, b in pairs if a == c.name} | {a for a, b in pairs if b == c.name}]
        for name in isolated:
            self.on_node_event("fault", name, self.clock())

        def heal() -> None:
            self.links.enable(link_pairs)
            self.firewall.uncut(ips)
            for name in isolated:
                self.on_node_event("heal", name, self.clock())

        return heal

    def toxic(self, toxic_type: str, attributes: dict[str, Any]) -> Callable[[], None]:
        pairs = sorted(self.links.links)
        for stream in ("downstream", "upstream"):
            self.links.add_toxic(pairs, f"sim_{toxic_type}_{stream}", toxic_type, attributes, stream=stream)

        def heal() -> None:
            for stream in ("downstream", "upstream"):
                self.links.remove_toxic(pairs, f"sim_{toxic_type}_{stream}")

        return heal

    def heal_everything(self) -> None:
        """Every proxy up without toxics, no nftables rule, every node running and resumed."""
        self.links.reset()
        self.firewall.heal_all()
        for node in self.cluster.nodes.values():
            if node.paused:
                node.resume()
                self._node_event("heal", node)
            elif not node.running:
                node.start()
                self._node_event("heal", node)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(60)
