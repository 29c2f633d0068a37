"""serf's metrics for one pool: member changes, user events, queries and queue depths.

Owns serf's metric names as Consul records them, each labelled with the pool's ``network``
("lan" or "wan", the label Consul gives every serf metric):
- ``serf.member.join``, ``.left``, ``.failed``, ``.update`` (counters): member events as the pool
  takes them in; ``serf.member.flap`` (counter): a member failed less than 60 s ago (serf's
  FlapTimeout) joining again;
- ``serf.events`` and ``serf.events.<name>`` (counters): user events delivered (once each, ours
  included); ``serf.queries`` and ``serf.queries.<name>`` (counters): queries received (ours
  included); ``serf.query_responses`` (counter): answers to our queries;
- ``serf.queue.Event`` and ``serf.queue.Query`` (samples): user events and queries waiting to be
  gossiped, sampled every 30 s (serf's QueueCheckInterval).

The fixed families are declared when the pool is built, so they exist from start-up; the
per-name ones appear with their first event, as in Consul (at most ``MAX_NAMED`` names per
pool, so a stream of distinct event names cannot grow the registry without bound; past it only
the totals count). serf's ``queue.Intent`` has no counterpart: joins and leaves travel as the
gossip layer's member-state broadcasts (``memberlist.queue.broadcasts``).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from proconsul.gossip.broadcast import EVENT, QUERY
from proconsul.gossip.core import (
    Event,
    MemberEvent,
    MemberEventKind,
    QueryReceived,
    QueryResponseReceived,
    UserEventReceived,
)
from proconsul.metrics import Metrics
from proconsul.serf.member import STATUS_FAILED, MemberRecord

# serf's FlapTimeout: a failed member back within this is a flap.
FLAP_TIMEOUT_S = 60.0
# serf's QueueCheckInterval.
QUEUE_CHECK_INTERVAL_S = 30.0
# Distinct event (and query) names given their own family, per pool.
MAX_NAMED = 256
# Characters kept in a name part; others (which no metric name may hold) become "_".
_UNSAFE = re.compile(r"[^A-Za-z0-9_:.\-]")

_MEMBER_KINDS = {
    MemberEventKind.JOIN: "join",
    MemberEventKind.LEAVE: "left",
    MemberEventKind.FAIL: "failed",
    MemberEventKind.UPDATE: "update",
}


class SerfMetrics:
    """The serf metrics of one pool (`network`: "lan" or "wan")."""

    def __init__(self, metrics: Metrics | None, network: str,
                 queue_check_interval_s: float = QUEUE_CHECK_INTERVAL_S) -> None:
        m = metrics or Metrics()  # without a registry (tests): a private one nobody reads
        self._registry = m
        self.network = network
        self.queue_check_interval_s = queue_check_interval_s
        net = ("network",)

        def counter(*parts: str, help: str) -> Any:
            return m.counter("serf", *parts, labels=net, help=help).with_labels(network)

        self._members = {
            kind: counter("member", name, help=f"member {name} events") for kind, name in _MEMBER_KINDS.items()
        }
        self._flap = counter("member", "flap", help="failed members joining again within 60 s")
        self._events = counter("events", help="user events delivered")
        self._queries = counter("queries", help="queries received")
        self._responses = counter("query_responses", help="answers received to this agent's queries")
        self._queues = {
            kind: m.sample("serf", "queue", label, labels=net,
                           help=f"{label.lower()}s queued to gossip, sampled every 30 s").with_labels(network)
            for kind, label in ((EVENT, "Event"), (QUERY, "Query"))
        }
        self._named: dict[tuple[str, str], Any] = {}

    def record(self, event: Event, previous: MemberRecord | None) -> None:
        """Count one gossip event; `previous`: the member's record before it (member events)."""
        if isinstance(event, MemberEvent):
            counter = self._members.get(event.kind)
            if counter is None:
                return  # a reap: serf counts nothing
            if (event.kind is MemberEventKind.JOIN and previous is not None and previous.status == STATUS_FAILED
                    and time.time() - previous.since < FLAP_TIMEOUT_S):
                self._flap.incr()
            counter.incr()
        elif isinstance(event, UserEventReceived):
            self._events.incr()
            self._count_named("events", event.name)
        elif isinstance(event, QueryReceived):
            self._queries.incr()
            self._count_named("queries", event.name)
        elif isinstance(event, QueryResponseReceived):
            self._responses.incr()

    def _count_named(self, what: str, name: str) -> None:
        counter = self._named.get((what, name))
        if counter is None:
            if len(self._named) >= MAX_NAMED:
                return
            part = _UNSAFE.sub("_", name) or "_"
            counter = self._named[(what, name)] = self._registry.counter(
                "serf", what, part, labels=("network",), help=f"{what} named {part}").with_labels(self.network)
        counter.incr()

    async def run_queue_checks(self, depth: Any) -> None:
        """serf's checkQueueDepth for its event and query queues; `depth(kind)` reads one."""
        while True:
            await asyncio.sleep(self.queue_check_interval_s)
            for kind, sample in self._queues.items():
                sample.observe(float(depth(kind)))
