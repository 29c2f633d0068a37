"""Deterministic in-process gossip cluster: real GossipCores on a seeded simulated network.

Owns a virtual clock (an event heap), a UDP model (loss, delay, directed partitions, crashes)
and a TCP model (reliable but blocked by partitions in either direction, as a handshake needs
both), plus the checkers the scenarios use. It counts every byte offered to the network (UDP datagrams,
and stream requests and replies), per sender and in total, for the bandwidth figures. Everything random comes from one seed, so a
failing seed replays exactly (``PROCONSUL_SEED=n``).

This stands in for ``gossip/node.py``: it does what the asyncio driver does (send datagrams,
run streams, arm the ``next_deadline`` timer, record events) with no real I/O.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from proconsul.gossip.config import GossipConfig
from proconsul.gossip.core import (
    Address,
    Event,
    GossipCore,
    MemberEvent,
    MemberEventKind,
    MemberState,
    Output,
    StreamRequest,
    install_converged_view,
)


@dataclass
class SimNode:
    name: str
    addr: Address
    core: GossipCore
    crashed: bool = False
    timer_at: float = float("inf")
    events: list[tuple[float, Event]] = field(default_factory=list)
    ticks_at_same_time: int = 0
    last_tick: float = -1.0
    # Bytes this node put on the network: datagrams (lost ones too) and TCP (requests it opened
    # and replies it served).
    udp_bytes: int = 0
    tcp_bytes: int = 0


class SimNetwork:
    """Seeded UDP: each datagram is lost with ``loss`` or delayed uniformly in ``delay``."""

    def __init__(self, rng: random.Random, loss: float = 0.0, delay: tuple[float, float] = (0.001, 0.01)) -> None:
        self.rng = rng
        self.loss = loss
        self.delay_range = delay
        # Directed (src, dst) pairs that cannot carry packets; one-way partitions are single pairs.
        self.blocked: set[tuple[Address, Address]] = set()
        self.sent = 0
        self.dropped = 0
        self.udp_bytes = 0
        self.tcp_bytes = 0

    def partition(self, a: Iterable[Address], b: Iterable[Address], one_way: bool = False) -> None:
        """Block a -> b (and b -> a unless ``one_way``)."""
        bl = list(b)
        for x in a:
            for y in bl:
                self.blocked.add((x, y))
                if not one_way:
                    self.blocked.add((y, x))

    def heal(self) -> None:
        self.blocked.clear()

    def delay(self) -> float:
        return self.rng.uniform(*self.delay_range)

    def drops(self, src: Address, dst: Address) -> bool:
        if (src, dst) in self.blocked:
            return True
        return self.loss > 0 and self.rng.random() < self.loss


class Cluster:
    """N gossip cores on one virtual clock.

    Args:
        seed: the one seed for network, per-node RNGs and scenario choices.
        config: the gossip profile every node uses.
        loss, delay: UDP behaviour (see :class:`SimNetwork`).
    """

    def __init__(self, seed: int, config: GossipConfig | None = None, loss: float = 0.0,
                 delay: tuple[float, float] = (0.001, 0.01)) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = config or GossipConfig.lan()
        self.net = SimNetwork(random.Random(self.rng.getrandbits(64)), loss, delay)
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._counter = itertools.count()
        self.nodes: dict[str, SimNode] = {}
        self.by_addr: dict[Address, SimNode] = {}
        self.trace: list[str] = []

    # --- building ---------------------------------------------------------------------------

    def add_node(self, name: str, tags: dict[str, str] | None = None) -> SimNode:
        addr = (f"10.0.{len(self.nodes) // 250}.{len(self.nodes) % 250 + 1}", 8301)
        core = GossipCore(name, addr, self.config, random.Random(self.rng.getrandbits(64)), self.now,
                          tags=tags or {"role": "node", "dc": "dc1"})
        node = SimNode(name, addr, core)
        self.nodes[name] = node
        self.by_addr[addr] = node
        self._apply(node, Output())
        return node

    def start_converged(self, n: int, prefix: str = "n") -> list[SimNode]:
        """Add ``n`` nodes that already know each other alive, as a settled cluster does.

        Skips the O(N²) join phase; the tables share their member records
        (:func:`install_converged_view`), so this scales to thousands of members.
        """
        nodes = [self.add_node(f"{prefix}{i}") for i in range(n)]
        install_converged_view([x.core for x in nodes], self.now)
        for node in nodes:
            self._arm(node)
        return nodes

    def start(self, n: int, join_within: float = 2.0, prefix: str = "n") -> list[SimNode]:
        """Add ``n`` nodes; every node but the first joins the first at a random time."""
        nodes = [self.add_node(f"{prefix}{i}") for i in range(n)]
        seed_addr = nodes[0].addr
        for node in nodes[1:]:
            self.at(self.now + self.rng.uniform(0.0, join_within), self.join, node.name, [seed_addr])
        return nodes

    # --- scheduling -------------------------------------------------------------------------

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._heap, (t, next(self._counter), fn, args))

    def run_until(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            when, _, fn, args = heapq.heappop(self._heap)
            self.now = max(self.now, when)
            fn(*args)
        self.now = max(self.now, t)

    def run_until_true(self, pred: Callable[[], bool], limit: float, step: float = 0.1) -> float | None:
        """Advance in ``step`` slices until ``pred()``; returns the time, or None at ``limit``."""
        while self.now < limit:
            if pred():
                return self.now
            self.run_until(min(limit, self.now + step))
        return self.now if pred() else None

    # --- driver behaviour -------------------------------------------------------------------

    def _apply(self, node: SimNode, out: Output) -> None:
        for ev in out.events:
            node.events.append((self.now, ev))
        if node.crashed:
            return
        for pkt in out.packets:
            self.net.sent += 1
            self.net.udp_bytes += len(pkt.data)
            node.udp_bytes += len(pkt.data)
            if self.net.drops(node.addr, pkt.addr):
                self.net.dropped += 1
                continue
            self.at(self.now + self.net.delay(), self._deliver, pkt.addr, pkt.data, node.addr)
        for req in out.streams:
            self._stream(node, req)
        self._arm(node)

    def _arm(self, node: SimNode) -> None:
        d = node.core.next_deadline()
        if d == float("inf"):
            node.timer_at = d
            return
        d = max(d, self.now)
        if d != node.timer_at:
            node.timer_at = d
            self.at(d, self._timer, node.name, d)

    def _timer(self, name: str, when: float) -> None:
        node = self.nodes[name]
        if node.crashed or node.timer_at != when:
            return  # superseded by a later arming
        if self.now == node.last_tick:
            node.ticks_at_same_time += 1
            assert node.ticks_at_same_time < 1000, f"{name} busy-loops at t={self.now} (seed {self.seed})"
        else:
            node.ticks_at_same_time = 0
        node.last_tick = self.now
        node.timer_at = float("inf")
        self._apply(node, node.core.tick(self.now))

    def _deliver(self, dst: Address, data: bytes, src: Address) -> None:
        node = self.by_addr.get(dst)
        if node is None or node.crashed:
            return
        self._apply(node, node.core.handle_packet(data, src, self.now))

    def _stream(self, node: SimNode, req: StreamRequest) -> None:
        self.net.tcp_bytes += len(req.data)
        node.tcp_bytes += len(req.data)
        target = self.by_addr.get(req.addr)
        blocked = (node.addr, req.addr) in self.net.blocked or (req.addr, node.addr) in self.net.blocked
        if target is None or target.crashed or blocked:
            # A dead or unreachable peer: the connection attempt runs into the deadline.
            self.at(req.deadline, self._stream_result, node.name, req.id, None)
            return
        self.at(self.now + self.net.delay(), self._stream_serve, node.name, target.name, req)

    def _stream_serve(self, client: str, server: str, req: StreamRequest) -> None:
        target = self.nodes[server]
        if target.crashed:
            self.at(max(self.now, req.deadline), self._stream_result, client, req.id, None)
            return
        out = target.core.handle_stream(req.data, self.nodes[client].addr, self.now)
        self._apply(target, out)
        if out.reply is not None:
            self.net.tcp_bytes += len(out.reply)
            target.tcp_bytes += len(out.reply)
        back = self.now + self.net.delay()
        if back > req.deadline:
            self.at(req.deadline, self._stream_result, client, req.id, None)
        else:
            self.at(back, self._stream_result, client, req.id, out.reply)

    def _stream_result(self, name: str, sid: int, reply: bytes | None) -> None:
        node = self.nodes[name]
        if node.crashed:
            return
        self._apply(node, node.core.handle_stream_result(sid, reply, self.now))

    # --- actions ----------------------------------------------------------------------------

    def join(self, name: str, addrs: list[Address], ignore_old: bool = False) -> None:
        node = self.nodes[name]
        self.trace.append(f"{self.now:9.3f} {name} joins {addrs}{' ignoring old events' if ignore_old else ''}")
        self._apply(node, node.core.join(addrs, self.now, ignore_old=ignore_old))

    def crash(self, name: str) -> None:
        self.trace.append(f"{self.now:9.3f} {name} crashes")
        self.nodes[name].crashed = True

    def leave(self, name: str, poll: float = 0.05) -> None:
        """Graceful leave: announce, wait for propagation, then stop the node."""
        node = self.nodes[name]
        self.trace.append(f"{self.now:9.3f} {name} leaves")
        self._apply(node, node.core.leave(self.now))

        def check() -> None:
            if node.core.leave_propagated(self.now):
                self.trace.append(f"{self.now:9.3f} {name} leave propagated, stopping")
                node.crashed = True
            else:
                self.at(self.now + poll, check)

        check()

    def user_event(self, name: str, event: str, payload: bytes) -> None:
        node = self.nodes[name]
        self._apply(node, node.core.send_user_event(event, payload, self.now))

    # --- checkers ---------------------------------------------------------------------------

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if not n.crashed]

    def state_seen(self, observer: str, subject: str) -> MemberState | None:
        m = self.nodes[observer].core.member(subject)
        return m.state if m else None

    def converged(self, names: Iterable[str] | None = None) -> bool:
        """Every live node sees every name in ``names`` (default: all live nodes) alive."""
        want = list(names) if names is not None else [n.name for n in self.live()]
        return all(self.state_seen(o.name, s) == MemberState.ALIVE for o in self.live() for s in want)

    def all_see(self, subject: str, states: tuple[MemberState, ...], allow_reaped: bool = True) -> bool:
        """Every live node other than ``subject`` sees it in one of ``states`` (or reaped it)."""
        for o in self.live():
            if o.name == subject:
                continue
            st = self.state_seen(o.name, subject)
            if st is None and allow_reaped and self._ever(o, subject, {MemberEventKind.REAP}):
                continue
            if st not in states:
                return False
        return True

    def _ever(self, node: SimNode, subject: str, kinds: set[MemberEventKind]) -> bool:
        return any(isinstance(e, MemberEvent) and e.kind in kinds and e.member.name == subject
                   for _, e in node.events)

    def failures_of(self, subjects: Iterable[str]) -> list[str]:
        """Every FAIL event (by any node) about one of ``subjects``, formatted for a message."""
        want = set(subjects)
        return [f"t={t:.2f} {n.name} declared {e.member.name} failed"
                for n in self.nodes.values() for t, e in n.events
                if isinstance(e, MemberEvent) and e.kind is MemberEventKind.FAIL and e.member.name in want]

    def describe(self) -> str:
        """One line per node: its view of everyone (for failure messages)."""
        lines = []
        for n in self.nodes.values():
            view = " ".join(f"{m.name}:{m.state.name[0]}{m.incarnation}" for m in n.core.members())
            lines.append(f"{n.name}{' (down)' if n.crashed else ''} h={n.core.health_score}: {view}")
        return "\n".join(lines)
