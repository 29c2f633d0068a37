"""The gossip driver records memberlist's metrics into the registry it is handed: messages
processed, probes, bytes and streams, and the Lifeguard health score."""

from __future__ import annotations

import dataclasses

from helpers import wait_until
from proconsul.gossip.config import GossipConfig
from proconsul.gossip.node import GossipNode
from proconsul.metrics import Metrics

FAST = dataclasses.replace(GossipConfig.local(), probe_interval_s=0.05, gossip_interval_s=0.02)


def _value(m: Metrics, name: str) -> float:
    series = m.series[(f"consul.{name}", ())]
    return series.count if series.family.kind == "sample" else (series.value if series.family.kind == "gauge" else series.total)


async def test_two_nodes_record_memberlist_metrics() -> None:
    metrics = Metrics()
    a = GossipNode("a", ("127.0.0.1", 0), FAST, metrics=metrics)
    b = GossipNode("b", ("127.0.0.1", 0), FAST, metrics=metrics)
    # Declared before anything happened.
    for name in ("memberlist.msg.alive", "memberlist.probeNode", "memberlist.udp.sent", "memberlist.tcp.accept"):
        assert _value(metrics, name) == 0
    await a.start()
    await b.start()
    try:
        assert await b.join([f"{a.address[0]}:{a.address[1]}"]) == 1
        await wait_until(lambda: _value(metrics, "memberlist.msg.alive") >= 1, timeout=20.0)
        await wait_until(lambda: _value(metrics, "memberlist.probeNode") >= 2, timeout=20.0)
        assert _value(metrics, "memberlist.tcp.connect") >= 1  # b's push-pull join
        assert _value(metrics, "memberlist.tcp.accept") >= 1
        assert _value(metrics, "memberlist.udp.sent") > 0
        assert _value(metrics, "memberlist.udp.received") > 0
        assert _value(metrics, "memberlist.health.score") == 0
        assert a._timer is not None and not a._timer.done()  # recording never stops the timer loop
    finally:
        await a.stop()
        await b.stop()


def _labelled(m: Metrics, name: str, *labels: str) -> object:
    return m.series.get((f"consul.{name}", labels))


async def test_queue_depth_push_pull_and_member_states_are_labelled_by_network() -> None:
    metrics = Metrics()
    a = GossipNode("a", ("127.0.0.1", 0), FAST, metrics=metrics, network="wan", queue_check_interval_s=0.05)
    b = GossipNode("b", ("127.0.0.1", 0), FAST, metrics=metrics, network="wan", queue_check_interval_s=0.05)
    for name in ("memberlist.queue.broadcasts", "memberlist.pushPullNode", "memberlist.degraded.probe",
                 "memberlist.node.instances"):
        assert _value(metrics, name) == 0  # declared before anything happened
    await a.start()
    await b.start()
    try:
        assert await b.join([f"{a.address[0]}:{a.address[1]}"]) == 1
        queue = _labelled(metrics, "memberlist.queue.broadcasts", "wan")
        await wait_until(lambda: queue is not None and queue.count >= 2, timeout=20.0)  # type: ignore[attr-defined]
        push_pull = _labelled(metrics, "memberlist.pushPullNode", "wan")
        assert push_pull is not None and push_pull.count >= 1  # type: ignore[attr-defined]
        alive = _labelled(metrics, "memberlist.node.instances", "wan", "alive")
        assert alive is not None and alive.value >= 1  # type: ignore[attr-defined]
        assert _labelled(metrics, "memberlist.node.instances", "wan", "dead").value == 0  # type: ignore[union-attr]
        assert _labelled(metrics, "memberlist.queue.broadcasts", "lan") is None
    finally:
        await a.stop()
        await b.stop()
