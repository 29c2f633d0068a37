"""Gossip scales: a few hundred real cores cost what a few dozen do, per member and per pair.

The small-N twin of ``bench/gossip_scale.py`` (which goes to 10,000 members): a settled cluster
of 30 and one of 300 members run the same scenario under 1 % UDP loss, and per-member traffic,
memory per (member, member) pair and dissemination times at 300 must stay within a generous
factor of the 30-member figures. Times are virtual seconds and traffic counted bytes, so a busy
machine cannot fail it.
"""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

from gossip_sim import Cluster
from proconsul.gossip.config import GossipConfig
from proconsul.gossip.core import MemberEvent, MemberEventKind, UserEventReceived

SEED = 11


@dataclass
class Figures:
    bytes_per_pair: float
    distinct_records: int
    udp_per_member_s: float
    tcp_per_member_s: float
    event_all: float  # seconds until every member delivered a user event
    failure_all: float  # seconds until every other member declared a crashed member failed
    false_positives: list[str]


def _first(c: Cluster, pred: Callable[[], bool], limit: float) -> float:
    start = c.now
    t = c.run_until_true(pred, start + limit, step=0.05)
    assert t is not None, f"not within {limit} virtual s (N={len(c.nodes)}, seed {c.seed})"
    return t - start


def _run(n: int) -> Figures:
    c = Cluster(SEED, GossipConfig.lan(), loss=0.01)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        c.start_converged(n)
        built = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()

    c.run_until(c.now + 5.0)
    udp0, tcp0, t0 = c.net.udp_bytes, c.net.tcp_bytes, c.now
    c.run_until(c.now + 10.0)
    udp = (c.net.udp_bytes - udp0) / n / (c.now - t0)
    tcp = (c.net.tcp_bytes - tcp0) / n / (c.now - t0)

    def delivered(name: str) -> bool:
        return any(isinstance(e, UserEventReceived) and e.name == "scale" for _, e in c.nodes[name].events)

    c.user_event("n1", "scale", b"x")
    event_all = _first(c, lambda: all(delivered(x) for x in c.nodes), 10.0)

    victim = f"n{n // 2}"
    c.crash(victim)
    failure_all = _first(c, lambda: all(
        any(isinstance(e, MemberEvent) and e.kind is MemberEventKind.FAIL and e.member.name == victim
            for _, e in x.events) for x in c.live()), 90.0)

    records = {id(rec) for x in c.nodes.values() for rec in x.core._members.values()}
    return Figures(built / n / n, len(records), udp, tcp, event_all, failure_all,
                   c.failures_of(x.name for x in c.live()))


def test_per_member_cost_stays_flat_from_30_to_300_members() -> None:
    small, big = _run(30), _run(300)
    for f, n in ((small, 30), (big, 300)):
        assert not f.false_positives, f"N={n}: healthy members declared dead under 1% loss: {f.false_positives}"
        # Records are shared between the simulated tables, copied only when a member changes
        # (here: the crash's suspect and dead states, refutations of lossy probes).
        assert f.distinct_records < n + 3 * n, f"N={n}: {f.distinct_records} distinct member records"
    # Memory per (member, member) pair: a dict slot and a probe-list slot (~45 bytes at 300;
    # unshared per-table records cost 1.4 KB). At 30 the cores' fixed cost weighs in more.
    assert big.bytes_per_pair < 120, f"{big.bytes_per_pair:.0f} bytes per pair at N=300"
    assert big.bytes_per_pair < small.bytes_per_pair, (big.bytes_per_pair, small.bytes_per_pair)
    # UDP per member is one probe round trip a second, whatever N: constant, not growing with N.
    assert big.udp_per_member_s < 2.0 * small.udp_per_member_s + 20, (big.udp_per_member_s, small.udp_per_member_s)
    assert big.udp_per_member_s < 200, big.udp_per_member_s
    # TCP is push-pull: a full state (O(N)) per scaled interval (O(log N)); bounded by that model.
    state_300 = 300 * 60  # ~40-60 bytes per member entry
    assert big.tcp_per_member_s < 2 * 2 * state_300 / 150.0, big.tcp_per_member_s
    # Dissemination grows with log N: 300 members within a generous multiple of 30.
    assert big.event_all <= 3 * small.event_all + 1.0, (big.event_all, small.event_all)
    # Failure: Lifeguard's minimum suspicion grows with log10(N) (4 s x 1.48 -> x 2.48), plus a
    # probe round to notice it and the spread; its maximum is 6x the minimum.
    scale = math.log10(300) / max(1.0, math.log10(30))
    assert big.failure_all <= 3 * scale * small.failure_all + 5.0, (big.failure_all, small.failure_all)
