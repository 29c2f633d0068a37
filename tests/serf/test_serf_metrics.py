"""serf's metrics of a pool: member events (flaps included), user events and queries by name,
and the event and query queue depths, each labelled with the pool's network."""

from __future__ import annotations

import asyncio
import time

from helpers import wait_until
from proconsul.gossip.core import (
    Member,
    MemberEvent,
    MemberEventKind,
    MemberState,
    QueryReceived,
    QueryResponseReceived,
    UserEventReceived,
)
from proconsul.metrics import Metrics
from proconsul.serf.member import STATUS_ALIVE, STATUS_FAILED, MemberRecord
from proconsul.serf.metrics import MAX_NAMED, SerfMetrics

FAMILIES = ("serf.member.join", "serf.member.left", "serf.member.failed", "serf.member.update",
            "serf.member.flap", "serf.events", "serf.queries", "serf.query_responses", "serf.queue.Event",
            "serf.queue.Query")


def _series(m: Metrics, name: str, *labels: str) -> object:
    return m.series.get((f"consul.{name}", labels))


def _total(m: Metrics, name: str, network: str = "lan") -> float:
    s = _series(m, name, network)
    return 0.0 if s is None else s.total  # type: ignore[attr-defined]


def _member(name: str = "n1") -> Member:
    return Member(name, ("127.0.0.1", 8301), {}, 1, MemberState.ALIVE, 0.0)


def test_families_are_declared_at_start_up() -> None:
    m = Metrics()
    SerfMetrics(m, "lan")
    for name in FAMILIES:
        family = m.families[f"consul.{name}"]
        assert family.label_names == ("network",)
        assert _series(m, name) is not None  # the unlabelled definition, at 0


def test_member_events_count_by_kind_and_a_quick_rejoin_is_a_flap() -> None:
    m = Metrics()
    serf = SerfMetrics(m, "lan")
    n1 = _member()
    serf.record(MemberEvent(MemberEventKind.JOIN, n1), None)
    serf.record(MemberEvent(MemberEventKind.UPDATE, n1), MemberRecord(n1, STATUS_ALIVE, time.time()))
    serf.record(MemberEvent(MemberEventKind.FAIL, n1), MemberRecord(n1, STATUS_ALIVE, time.time()))
    serf.record(MemberEvent(MemberEventKind.JOIN, n1), MemberRecord(n1, STATUS_FAILED, time.time()))
    assert _total(m, "serf.member.flap") == 1
    # Failed long ago: a rejoin, not a flap.
    serf.record(MemberEvent(MemberEventKind.JOIN, n1), MemberRecord(n1, STATUS_FAILED, time.time() - 600))
    serf.record(MemberEvent(MemberEventKind.LEAVE, n1), MemberRecord(n1, STATUS_ALIVE, time.time()))
    serf.record(MemberEvent(MemberEventKind.REAP, n1), None)  # serf counts nothing
    assert _total(m, "serf.member.join") == 3
    assert _total(m, "serf.member.update") == 1
    assert _total(m, "serf.member.failed") == 1
    assert _total(m, "serf.member.left") == 1
    assert _total(m, "serf.member.flap") == 1
    assert _total(m, "serf.member.join", "wan") == 0


def test_user_events_and_queries_count_in_total_and_by_name() -> None:
    m = Metrics()
    serf = SerfMetrics(m, "wan")
    for _ in range(2):
        serf.record(UserEventReceived(1, "deploy", b""), None)
    serf.record(UserEventReceived(2, "odd name/+", b""), None)
    serf.record(QueryReceived(1, 7, "_serf_ping", b"", "n1", ("127.0.0.1", 1), 0.0), None)
    serf.record(QueryResponseReceived(1, 7, "n2", b""), None)
    assert _total(m, "serf.events", "wan") == 3
    assert _total(m, "serf.events.deploy", "wan") == 2
    assert _total(m, "serf.events.odd_name__", "wan") == 1  # what no metric name may hold becomes "_"
    assert _total(m, "serf.queries", "wan") == 1
    assert _total(m, "serf.queries._serf_ping", "wan") == 1
    assert _total(m, "serf.query_responses", "wan") == 1


def test_distinct_names_past_the_bound_count_only_in_the_total() -> None:
    m = Metrics()
    serf = SerfMetrics(m, "lan")
    for i in range(MAX_NAMED + 5):
        serf.record(UserEventReceived(i, f"e{i}", b""), None)
    assert _total(m, "serf.events") == MAX_NAMED + 5
    assert _series(m, f"serf.events.e{MAX_NAMED + 1}", "lan") is None
    assert _total(m, "serf.events.e0") == 1


async def test_queue_depths_are_sampled_periodically() -> None:
    m = Metrics()
    serf = SerfMetrics(m, "lan", queue_check_interval_s=0.01)
    depths = {"event": 3, "query": 1, "memberlist": 9}
    task = asyncio.get_running_loop().create_task(serf.run_queue_checks(depths.__getitem__))
    try:
        await wait_until(lambda: _series(m, "serf.queue.Event", "lan") is not None
                         and _series(m, "serf.queue.Event", "lan").count >= 2, timeout=10.0)  # type: ignore[union-attr]
        event = _series(m, "serf.queue.Event", "lan")
        query = _series(m, "serf.queue.Query", "lan")
        assert event.total == 3 * event.count  # type: ignore[union-attr]
        assert query.total == query.count  # type: ignore[union-attr]
    finally:
        task.cancel()
