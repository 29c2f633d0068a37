"""Network coordinates on the gossip path: acks carry the responder's coordinate, the prober
measures the RTT of direct probes (core, sans-I/O, exact times), and the driver keeps a
coordinate cache on real loopback sockets."""

from __future__ import annotations

import dataclasses
import random

from helpers import wait_until
from proconsul.coordinate import Coordinate, encode_ack_payload
from proconsul.gossip.config import GossipConfig
from proconsul.gossip.core import GossipCore, MemberEvent, MemberEventKind, Output, PingComplete
from proconsul.gossip.messages import Ack, Alive, Ping, decode, decode_packet, encode
from proconsul.gossip.node import GossipNode

LAN = GossipConfig.lan()


def _core(name: str, host: str) -> GossipCore:
    c = GossipCore(name, (host, 8301), LAN, random.Random(1), 0.0)
    c.tick(0.0)
    return c


def _probe(a: GossipCore) -> tuple[float, Ping]:
    while True:
        t = a.next_deadline()
        assert t < 20.0
        out = a.tick(t)
        pings = [m for p in out.packets for m in decode_packet(p.data) if isinstance(m, Ping)]
        if pings:
            return t, pings[0]


def test_ack_carries_the_responder_payload_and_the_prober_measures_rtt() -> None:
    a, b = _core("a", "10.0.0.1"), _core("b", "10.0.0.2")
    a.handle_packet(encode(Alive(0, "b", ("10.0.0.2", 8301))), ("10.0.0.9", 1), 0.0)
    coord = Coordinate((0.001,) * 8, 0.4, 0.0, 1e-5)
    b.set_ack_payload(encode_ack_payload(coord))
    sent_at, ping = _probe(a)
    answer = b.handle_packet(encode(ping), ("10.0.0.1", 8301), sent_at + 0.002)
    acks = [m for p in answer.packets for m in decode_packet(p.data) if isinstance(m, Ack)]
    assert acks == [Ack(ping.seq, b.ack_payload)]
    out = a.handle_packet(answer.packets[0].data, ("10.0.0.2", 8301), sent_at + 0.004)
    assert out.pings == [PingComplete("b", out.pings[0].rtt_s, b.ack_payload)]
    assert abs(out.pings[0].rtt_s - 0.004) < 1e-9
    # Pings never leak into the events the agent sees.
    assert not any(isinstance(e, PingComplete) for e in out.events)


def test_an_ack_after_the_indirect_phase_is_not_a_measurement() -> None:
    a = _core("a", "10.0.0.1")
    for i, n in enumerate(("b", "c"), start=2):
        a.handle_packet(encode(Alive(0, n, (f"10.0.0.{i}", 8301))), ("10.0.0.9", 1), 0.0)
    sent_at, ping = _probe(a)
    # No direct answer within the probe timeout: indirect probes go out.
    a.tick(sent_at + LAN.probe_timeout_s)
    late = encode(Ack(ping.seq, b"\x01"))
    out = a.handle_packet(late, ("10.0.0.3", 8301), sent_at + LAN.probe_timeout_s + 0.01)
    assert out.pings == []


def test_old_acks_without_payload_still_decode() -> None:
    # An ack as encoded before coordinates existed (payload field empty) is still an Ack.
    assert decode(encode(Ack(7))) == Ack(7, b"")


FAST = dataclasses.replace(
    GossipConfig.local(), probe_interval_s=0.2, probe_timeout_s=0.1, gossip_interval_s=0.05,
    push_pull_interval_s=2.0,
)


async def test_nodes_learn_each_others_coordinates_over_loopback() -> None:
    nodes = [GossipNode(f"n{i}", ("127.0.0.1", 0), FAST) for i in range(3)]
    quiet = GossipNode("quiet", ("127.0.0.1", 0), FAST, disable_coordinates=True)
    for node in [*nodes, quiet]:
        await node.start()
    try:
        first = f"{nodes[0].address[0]}:{nodes[0].address[1]}"
        for node in [*nodes[1:], quiet]:
            assert await node.join([first]) == 1
        names = {"n0", "n1", "n2"}

        def cached(node: GossipNode) -> set[str]:
            assert node.coordinates is not None
            return {n for n in names if node.coordinates.get(n) is not None
                    and node.coordinates.get(n) != Coordinate.origin()}

        # Every node moved off the origin and holds the others' moved coordinates.
        await wait_until(lambda: all(cached(n) == names for n in nodes), timeout=20.0)
        for node in nodes:
            assert node.coordinates is not None and node.coordinates.rejected == 0
            mine = node.coordinates.coordinate
            assert mine.is_valid() and mine.error < 1.5
        # A member with coordinates disabled sends none, so nobody caches one for it.
        assert quiet.coordinates is None
        assert all(n.coordinates is not None and n.coordinates.get("quiet") is None for n in nodes)
        # A reaped member is forgotten (the driver acts on the core's REAP event).
        assert nodes[0].core is not None
        gone = nodes[0].core.member("n2")
        assert gone is not None
        nodes[0]._apply(Output(events=[MemberEvent(MemberEventKind.REAP, gone)]))
        assert nodes[0].coordinates is not None and nodes[0].coordinates.get("n2") is None
    finally:
        for node in [*nodes, quiet]:
            await node.stop()
