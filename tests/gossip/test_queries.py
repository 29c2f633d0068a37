"""Serf-style queries in the sans-I/O core: gossiped once to everyone, answered to the asker,
answers de-duplicated and bounded by the deadline; the wire format round-trips."""

from __future__ import annotations

import random

import pytest
from proconsul.gossip.config import GossipConfig
from proconsul.gossip.core import GossipCore, Output, QueryReceived, QueryResponseReceived
from proconsul.gossip.messages import Address, Alive, Query, QueryResponse, decode, decode_packet, encode

LAN = GossipConfig.lan()


def addr(i: int) -> Address:
    return (f"10.0.0.{i}", 8301)


def core(name: str, i: int, now: float = 0.0) -> GossipCore:
    c = GossipCore(name, addr(i), LAN, random.Random(i), now)
    c.tick(now)
    return c


def deliver(src: GossipCore, dst: GossipCore, out: Output, now: float) -> Output:
    """Hand every packet of ``out`` addressed to ``dst`` to it."""
    merged = Output()
    for p in out.packets:
        if p.addr == dst.addr:
            o = dst.handle_packet(p.data, src.addr, now)
            merged.packets += o.packets
            merged.events += o.events
    return merged


def received(out: Output) -> list[QueryReceived]:
    return [e for e in out.events if isinstance(e, QueryReceived)]


def answers(out: Output) -> list[QueryResponseReceived]:
    return [e for e in out.events if isinstance(e, QueryResponseReceived)]


def test_query_messages_round_trip() -> None:
    q = Query(7, 123456, "a", ("10.0.0.1", 8301), "_serf_list-keys", b"\x00x", 3200)
    r = QueryResponse(7, 123456, "b", b"answer")
    assert decode(encode(q)) == q
    assert decode(encode(r)) == r


def test_default_timeout_scales_with_members() -> None:
    a = core("a", 1)
    # One member: 0.2 s * 16 * ceil(log10(2)) = 3.2 s.
    assert a.default_query_timeout() == pytest.approx(3.2)
    for i in range(2, 12):
        a.handle_packet(encode(Alive(1, f"n{i}", addr(i))), addr(i), 0.0)
    # Eleven members: ceil(log10(12)) = 2.
    assert a.default_query_timeout() == pytest.approx(6.4)


def test_query_reaches_peers_once_and_answers_come_back_once() -> None:
    a, b = core("a", 1), core("b", 2)
    a.handle_packet(encode(Alive(1, "b", addr(2))), addr(2), 0.0)
    handle, out = a.send_query("_serf_ping", b"hi", 0.0, timeout_s=5.0)
    assert handle.deadline == 5.0
    # The asker handles its own query like everyone else.
    mine = received(out)
    assert [(q.name, q.payload, q.source_name) for q in mine] == [("_serf_ping", b"hi", "a")]
    out = a.respond(mine[0], b"from-a", 0.1)
    assert [(r.from_name, r.payload) for r in answers(out)] == [("a", b"from-a")]

    # Gossip carries it to b, which sees it once even when it arrives twice.
    now = 0.0
    got: list[QueryReceived] = []
    for _ in range(20):
        now += LAN.gossip_interval_s
        pkts = a.tick(now)
        got += received(deliver(a, b, pkts, now))
        if got:
            break
    assert [q.name for q in got] == ["_serf_ping"]
    q = got[0]
    assert received(b.handle_packet(encode(Query(q.ltime, q.id, "a", addr(1), q.name, q.payload, 5000)),
                                    addr(1), now)) == []

    # b answers straight to a; a duplicate answer is dropped.
    out_b = b.respond(q, b"from-b", now)
    replies = [p for p in out_b.packets if p.addr == a.addr]
    assert replies and any(isinstance(m, QueryResponse) for m in decode_packet(replies[0].data))
    first = a.handle_packet(replies[0].data, b.addr, now)
    assert [(r.from_name, r.payload) for r in answers(first)] == [("b", b"from-b")]
    again = a.handle_packet(encode(QueryResponse(q.ltime, q.id, "b", b"from-b")), b.addr, now)
    assert answers(again) == []


def test_answers_after_the_deadline_are_dropped() -> None:
    a = core("a", 1)
    handle, out = a.send_query("_serf_ping", b"", 0.0, timeout_s=1.0)
    late = a.handle_packet(encode(QueryResponse(handle.ltime, handle.id, "b", b"x")), addr(2), 2.0)
    assert answers(late) == []
    # Answering a query whose deadline passed sends nothing.
    q = received(out)[0]
    assert a.respond(q, b"x", 5.0).packets == [] and answers(a.respond(q, b"x", 5.0)) == []


def test_unknown_answers_are_ignored_and_oversized_queries_refused() -> None:
    a = core("a", 1)
    assert answers(a.handle_packet(encode(QueryResponse(0, 99, "b", b"x")), addr(2), 0.0)) == []
    with pytest.raises(ValueError):
        a.send_query("big", b"x" * 2000, 0.0)


def test_restored_query_clock_skips_queries_handled_before_a_restart() -> None:
    a = core("a", 1)
    a.restore_clocks(event_ltime=0, query_ltime=7)
    old = a.handle_packet(encode(Query(7, 1, "b", addr(2), "_serf_ping", b"", 5000)), addr(2), 0.1)
    assert received(old) == []
    new = a.handle_packet(encode(Query(8, 2, "b", addr(2), "_serf_ping", b"", 5000)), addr(2), 0.2)
    assert [q.ltime for q in received(new)] == [8]
    handle, _ = a.send_query("_serf_ping", b"", 0.3, timeout_s=5.0)
    assert handle.ltime == 9  # our own continue past what we saw
