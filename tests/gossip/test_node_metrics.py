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
