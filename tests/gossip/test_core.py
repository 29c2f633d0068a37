"""GossipCore driven by hand: every protocol rule with exact times, no sleeps, no sockets."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable

import pytest
from proconsul.gossip.config import GossipConfig
from proconsul.gossip.core import (
    GossipCore,
    MemberEvent,
    MemberEventKind,
    MemberState,
    NameConflict,
    Output,
    StreamKind,
    StreamRequest,
    UserEventReceived,
    push_pull_scale,
    remaining_suspicion_time,
    suspicion_timeout,
)
from proconsul.gossip.messages import (
    Ack,
    Address,
    Alive,
    Dead,
    IndirectPing,
    Message,
    Nack,
    NodeStateCode,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    UserEvent,
    decode,
    decode_packet,
    encode,
    encode_compound,
)

LAN = GossipConfig.lan()


def addr(i: int) -> Address:
    return (f"10.0.0.{i}", 8301)


def core(name: str = "a", i: int = 1, cfg: GossipConfig = LAN, now: float = 0.0, seed: int = 1,
         tags: dict[str, str] | None = None) -> GossipCore:
    c = GossipCore(name, addr(i), cfg, random.Random(seed), now, tags=tags)
    c.tick(now)  # drain our own JOIN
    return c


def know(c: GossipCore, *names: str, now: float = 0.0, inc: int = 0) -> Output:
    """Teach ``c`` about alive members named b, c, ... at addresses 2, 3, ..."""
    data = encode_compound([encode(Alive(inc, n, addr(ord(n[0]) - ord("a") + 1 + int(n[1:] or 0) * 26)))
                            for n in names])
    return c.handle_packet(data, addr(99), now)


def msgs(out: Output) -> list[tuple[Address, Message]]:
    return [(p.addr, m) for p in out.packets for m in decode_packet(p.data)]


def of(out: Output, kind: type) -> list[tuple[Address, Message]]:
    return [(a, m) for a, m in msgs(out) if isinstance(m, kind)]


def member_events(out: Output) -> list[tuple[MemberEventKind, str]]:
    return [(e.kind, e.member.name) for e in out.events if isinstance(e, MemberEvent)]


def tick_until(c: GossipCore, pred: Callable[[Output], bool], after: float = 0.0,
               limit: float = 200.0) -> tuple[float, Output]:
    """Tick at each deadline (never before ``after``) until an output satisfies ``pred``."""
    while True:
        t = max(c.next_deadline(), after)
        assert t <= limit, "condition never met"
        out = c.tick(t)
        after = t
        if pred(out):
            return t, out


def has(kind: type) -> Callable[[Output], bool]:
    return lambda out: bool(of(out, kind))


def run_to_ping(c: GossipCore, limit: float = 20.0) -> tuple[float, Output, Ping, Address]:
    """Tick at each deadline until a probe ping goes out."""
    while True:
        t = c.next_deadline()
        assert t <= limit
        out = c.tick(t)
        pings = of(out, Ping)
        if pings:
            (to, ping), = pings
            assert isinstance(ping, Ping)
            return t, out, ping, to


# --- pure formulas -----------------------------------------------------------------------------


def test_suspicion_timeout_formula() -> None:
    assert suspicion_timeout(4, 1, 1.0) == 4.0  # log floor of 1 keeps tiny clusters sane
    assert suspicion_timeout(4, 10, 1.0) == 4.0
    assert suspicion_timeout(4, 100, 1.0) == pytest.approx(8.0)
    assert suspicion_timeout(6, 1000, 5.0) == pytest.approx(90.0)


def test_remaining_suspicion_time_shrinks_logarithmically() -> None:
    assert remaining_suspicion_time(0, 3, 0.0, 2.0, 30.0) == 30.0
    assert remaining_suspicion_time(1, 3, 0.0, 2.0, 30.0) == pytest.approx(16.0)
    assert remaining_suspicion_time(3, 3, 0.0, 2.0, 30.0) == 2.0
    assert remaining_suspicion_time(3, 3, 5.0, 2.0, 30.0) == -3.0  # already overdue
    assert remaining_suspicion_time(0, 0, 1.0, 2.0, 30.0) == 1.0  # no confirmations expected: min


def test_push_pull_scale() -> None:
    assert push_pull_scale(30.0, 32) == 30.0
    assert push_pull_scale(30.0, 33) == 60.0
    assert push_pull_scale(30.0, 64) == 60.0
    assert push_pull_scale(30.0, 65) == 90.0
    assert push_pull_scale(30.0, 10_000) == 30.0 * (math.ceil(math.log2(10_000) - 5) + 1)


# --- probing -----------------------------------------------------------------------------------


def test_first_output_announces_ourselves() -> None:
    c = GossipCore("a", addr(1), LAN, random.Random(1), 0.0, tags={"role": "server"})
    out = c.tick(0.0)
    assert member_events(out) == [(MemberEventKind.JOIN, "a")]
    assert c.member("a") is not None and c.member("a").tags == {"role": "server"}  # type: ignore[union-attr]


def test_probe_ack_keeps_member_alive_and_health_good() -> None:
    a, b = core("a", 1), core("b", 2, seed=2)
    know(a, "b")
    know(b, "a")
    t, out, ping, to = run_to_ping(a, limit=100)
    for _ in range(5):
        assert to == addr(2) and ping.target == "b"
        reply = b.handle_packet(encode(ping), addr(1), t)
        (back, ack), = of(reply, Ack)
        assert back == addr(1)
        out = a.handle_packet(next(p.data for p in reply.packets if p.addr == addr(1)), addr(2), t + 0.01)
        # acked: no indirect phase, no suspicion
        t2, out = tick_until(a, lambda o: bool(o.streams or of(o, Ping)), after=t + 0.01)
        assert not out.streams and t2 >= t + LAN.probe_interval_s
        ((to, ping),) = of(out, Ping)
        t = t2
        assert isinstance(ping, Ping)
    assert a.member("b").state == MemberState.ALIVE  # type: ignore[union-attr]
    assert a.health_score == 0


def test_ping_for_another_name_is_not_acked() -> None:
    b = core("b", 2)
    assert of(b.handle_packet(encode(Ping(1, "someone-else", "a", addr(1))), addr(1), 0.0), Ack) == []


def test_no_ack_goes_indirect_then_suspect_then_dead() -> None:
    a = core("a", 1)
    know(a, "b", "c")
    t0, _, ping, target = run_to_ping(a)
    other = "c" if ping.target == "b" else "b"
    # Direct timeout: ping-req through the other member, and a TCP fallback request.
    t, out = tick_until(a, has(IndirectPing), after=t0)
    assert t == pytest.approx(t0 + LAN.probe_timeout_s)
    (via, req), = of(out, IndirectPing)
    assert isinstance(req, IndirectPing)
    assert via == a.member(other).addr and req.target == ping.target and req.nack  # type: ignore[union-attr]
    (stream,) = out.streams
    assert stream.kind is StreamKind.PING and stream.addr == target
    assert stream.deadline == pytest.approx(t0 + LAN.probe_interval_s)
    assert a.handle_stream_result(stream.id, None, t0 + 0.9).packets == []
    # End of the probe interval without any ack: suspect, and our health gets worse (a nack was
    # expected from the indirect prober and none came).
    t1, out = tick_until(a, lambda o: a.member(ping.target).state == MemberState.SUSPECT,  # type: ignore[union-attr]
                         after=t0 + 0.9)
    assert t1 == pytest.approx(t0 + LAN.probe_interval_s)
    assert a.health_score == 1
    # n = 3 members: too few to confirm (k = 0), so the suspicion lasts exactly the minimum.
    smin = suspicion_timeout(LAN.suspicion_mult, 3, LAN.probe_interval_s)
    t = t1
    while a.member(ping.target).state != MemberState.DEAD:  # type: ignore[union-attr]
        t = a.next_deadline()
        out = a.tick(t)
        for _, m in of(out, Ping):
            if isinstance(m, Ping) and m.target == other:
                a.handle_packet(encode(Ack(m.seq)), a.member(other).addr, t)  # type: ignore[union-attr]
    assert t == pytest.approx(t1 + smin)
    assert (MemberEventKind.FAIL, ping.target) in member_events(out)


def test_indirect_ack_clears_the_probe() -> None:
    a = core("a", 1)
    know(a, "b", "c")
    t0, _, ping, _ = run_to_ping(a)
    tick_until(a, has(IndirectPing), after=t0)
    a.handle_packet(encode(Ack(ping.seq)), addr(9), t0 + 0.7)  # forwarded by the relay
    tick_until(a, lambda o: True, after=t0 + LAN.probe_interval_s)
    assert a.member(ping.target).state == MemberState.ALIVE  # type: ignore[union-attr]
    assert a.health_score == 0


def test_tcp_fallback_success_prevents_suspicion() -> None:
    a = core("a", 1)
    know(a, "b", "c")
    t0, _, ping, _ = run_to_ping(a)
    _, out = tick_until(a, has(IndirectPing), after=t0)
    (stream,) = out.streams
    b = core(ping.target, 2 if ping.target == "b" else 3)
    reply = b.handle_stream(stream.data, addr(1), t0 + 0.6).reply
    assert reply is not None and decode(reply) == Ack(ping.seq)
    a.handle_stream_result(stream.id, reply, t0 + 0.6)
    tick_until(a, lambda o: True, after=t0 + LAN.probe_interval_s)
    assert a.member(ping.target).state == MemberState.ALIVE  # type: ignore[union-attr]


def test_nacks_from_indirect_probers_spare_our_health() -> None:
    a = core("a", 1)
    know(a, "b", "c", "d")
    t0, _, ping, _ = run_to_ping(a)
    _, out = tick_until(a, has(IndirectPing), after=t0)
    relays = of(out, IndirectPing)
    assert len(relays) == 2
    for _ in relays:
        a.handle_packet(encode(Nack(ping.seq)), addr(9), t0 + 0.9)
    tick_until(a, lambda o: True, after=t0 + LAN.probe_interval_s)
    # Both probers answered "could not reach it": the target is the problem, not us.
    assert a.health_score == 0
    assert a.member(ping.target).state == MemberState.SUSPECT  # type: ignore[union-attr]


def test_relay_forwards_ack_or_sends_nack() -> None:
    b = core("b", 2, now=10.0)
    req = IndirectPing(41, "c", addr(3), True, "a", addr(1))
    out = b.handle_packet(encode(req), addr(1), 10.0)
    (to, ping), = of(out, Ping)
    assert isinstance(ping, Ping) and to == addr(3) and ping.target == "c"
    out = b.handle_packet(encode(Ack(ping.seq)), addr(3), 10.1)
    assert [(x, m) for x, m in of(out, Ack)] == [(addr(1), Ack(41))]
    # Second request, no ack from the target: nack after probe_timeout.
    out = b.handle_packet(encode(req), addr(1), 20.0)
    t, out = tick_until(b, has(Nack), after=20.0)
    assert t == pytest.approx(20.0 + LAN.probe_timeout_s)
    assert of(out, Nack) == [(addr(1), Nack(41))]


def test_buddy_system_piggybacks_suspicion_on_the_ping() -> None:
    a = core("a", 1)
    know(a, "b")
    a.handle_packet(encode(Suspect(0, "b", "x")), addr(9), 0.0)
    t, out, ping, to = run_to_ping(a)
    ping_packet = next(p for p in out.packets if p.addr == to)
    inside = decode_packet(ping_packet.data)
    assert Suspect(0, "b", "a") in inside and ping in inside
    # b learns of its suspicion from the ping itself and refutes at once.
    b = core("b", 2)
    know(b, "a")
    reply = b.handle_packet(ping_packet.data, addr(1), t)
    assert b.incarnation == 1
    assert Alive(1, "b", addr(2), {}) in [m for _, m in msgs(reply)]
    a.handle_packet(next(p.data for p in reply.packets if p.addr == addr(1)), addr(2), t + 0.01)
    assert a.member("b").state == MemberState.ALIVE and a.member("b").incarnation == 1  # type: ignore[union-attr]


# --- refutation and Lifeguard ------------------------------------------------------------------


def test_refutes_suspicion_and_death_of_itself() -> None:
    a = core("a", 1)
    know(a, "b")
    out = a.handle_packet(encode(Suspect(0, "a", "b")), addr(2), 1.0)
    assert a.incarnation == 1 and a.member("a").state == MemberState.ALIVE  # type: ignore[union-attr]
    assert a.health_score == 1
    a.handle_packet(encode(Dead(5, "a", "b")), addr(2), 2.0)
    assert a.incarnation == 6 and a.health_score == 2
    out = a.tick(a.next_deadline())
    assert Alive(6, "a", addr(1), {}) in [m for _, m in msgs(out)]
    # Stale accusations are ignored.
    a.handle_packet(encode(Suspect(3, "a", "b")), addr(2), 3.0)
    assert a.incarnation == 6


def test_awareness_stretches_probe_timeout_and_interval() -> None:
    a = core("a", 1)
    know(a, "b", "c")
    for _ in range(2):  # two refutations: health score 2, so everything waits 3x
        a.handle_packet(encode(Suspect(a.incarnation, "a", "b")), addr(2), 0.0)
    assert a.health_score == 2
    assert a.degraded_probes == 0
    t0, _, ping, _ = run_to_ping(a)
    assert a.degraded_probes == 1  # memberlist's degraded.probe: a probe with a stretched interval
    t, _ = tick_until(a, has(IndirectPing), after=t0)
    assert t == pytest.approx(t0 + 3 * LAN.probe_timeout_s)
    # A successful probe brings the score back down one step at a time.
    a.handle_packet(encode(Ack(ping.seq)), addr(2), t0 + 2.0)
    assert a.health_score == 1
    # ...and the next probe came 3 probe intervals after the previous one (scored at its start).
    t, _ = tick_until(a, has(Ping), after=t0 + 2.0)
    assert t == pytest.approx(t0 + 3 * LAN.probe_interval_s)


def test_queue_depth_counts_each_kind_of_broadcast() -> None:
    a = core("a", 1)
    know(a, "b", "c")
    assert a.queue_depth("memberlist") >= 1  # our own alive, and the learnt ones re-gossiped
    assert a.queue_depth("event") == 0 and a.queue_depth("query") == 0
    a.send_user_event("deploy", b"x", 1.0)
    a.send_query("ping", b"", 1.0)
    assert a.queue_depth("event") == 1 and a.queue_depth("query") == 1


def test_awareness_is_capped() -> None:
    a = core("a", 1)
    for _ in range(20):
        a.handle_packet(encode(Suspect(a.incarnation, "a", "b")), addr(2), 0.0)
    assert a.health_score == LAN.awareness_max_multiplier - 1


def suspicion_deadline(c: GossipCore, name: str) -> float:
    return c._suspicions[name].deadline  # white-box: the one timer this test is about


def test_dynamic_suspicion_shrinks_with_independent_confirmations() -> None:
    a = core("a", 1, now=100.0)
    know(a, *"bcdefghij")  # n = 10: k = suspicion_mult - 2 = 2 confirmations expected
    smin = suspicion_timeout(LAN.suspicion_mult, 10, LAN.probe_interval_s)
    smax = LAN.suspicion_max_timeout_mult * smin
    a.handle_packet(encode(Suspect(0, "j", "b")), addr(2), 100.0)
    assert suspicion_deadline(a, "j") == pytest.approx(100.0 + smax)
    a.handle_packet(encode(Suspect(0, "j", "b")), addr(2), 101.0)  # same accuser: not independent
    assert suspicion_deadline(a, "j") == pytest.approx(100.0 + smax)
    out = a.handle_packet(encode(Suspect(0, "j", "c")), addr(3), 102.0)
    assert suspicion_deadline(a, "j") == pytest.approx(100.0 + remaining_suspicion_time(1, 2, 0.0, smin, smax), abs=1e-6)
    assert suspicion_deadline(a, "j") == pytest.approx(100.0 + 11.381)
    assert out.packets == []  # the confirmation is re-gossiped (queued), not sent right away
    a.handle_packet(encode(Suspect(0, "j", "d")), addr(4), 103.0)
    assert suspicion_deadline(a, "j") == pytest.approx(100.0 + smin)
    a.handle_packet(encode(Suspect(0, "j", "e")), addr(5), 103.5)  # beyond k: no further effect
    assert suspicion_deadline(a, "j") == pytest.approx(100.0 + smin)
    t, out = tick_until(a, lambda o: (MemberEventKind.FAIL, "j") in member_events(o), after=103.5)
    assert t == pytest.approx(100.0 + smin)


def test_refuted_suspicion_does_not_expire_into_death() -> None:
    a = core("a", 1)
    know(a, "b", "c")
    a.handle_packet(encode(Suspect(0, "b", "c")), addr(3), 0.0)
    a.handle_packet(encode(Alive(1, "b", addr(2))), addr(2), 1.0)
    assert a.member("b").state == MemberState.ALIVE  # type: ignore[union-attr]
    out = a.tick(10.0)
    assert member_events(out) == []


def test_alive_with_same_incarnation_does_not_clear_suspicion() -> None:
    a = core("a", 1)
    know(a, "b", "c")
    a.handle_packet(encode(Suspect(0, "b", "c")), addr(3), 0.0)
    a.handle_packet(encode(Alive(0, "b", addr(2))), addr(2), 1.0)
    assert a.member("b").state == MemberState.SUSPECT  # type: ignore[union-attr]


# --- dead, left, reap --------------------------------------------------------------------------


def test_left_versus_dead() -> None:
    a = core("a", 1)
    know(a, "b", "c")
    out = a.handle_packet(encode(Dead(0, "b", "b")), addr(2), 1.0)
    assert member_events(out) == [(MemberEventKind.LEAVE, "b")]
    assert a.member("b").state == MemberState.LEFT  # type: ignore[union-attr]
    out = a.handle_packet(encode(Dead(0, "c", "a2")), addr(9), 1.0)
    assert member_events(out) == [(MemberEventKind.FAIL, "c")]
    assert a.member("c").state == MemberState.DEAD  # type: ignore[union-attr]
    # A late leave still turns "failed" into "left": the member meant to go.
    out = a.handle_packet(encode(Dead(0, "c", "c")), addr(3), 2.0)
    assert member_events(out) == [(MemberEventKind.LEAVE, "c")]
    # ...but a failure report never downgrades "left".
    out = a.handle_packet(encode(Dead(0, "b", "x")), addr(9), 2.0)
    assert member_events(out) == []
    # Same incarnation cannot resurrect; a higher one rejoins.
    assert member_events(a.handle_packet(encode(Alive(0, "b", addr(2))), addr(2), 3.0)) == []
    out = a.handle_packet(encode(Alive(1, "b", addr(2))), addr(2), 3.0)
    assert member_events(out) == [(MemberEventKind.JOIN, "b")]


def test_dead_members_are_reaped_after_gossip_to_the_dead_time() -> None:
    a = core("a", 1)
    know(a, "b")
    a.handle_packet(encode(Dead(0, "b", "x")), addr(9), 5.0)
    assert a.next_deadline() <= 5.0 + LAN.gossip_to_the_dead_time_s
    out = Output()
    while a.member("b") is not None:
        t = a.next_deadline()
        out = a.tick(t)
    assert t == pytest.approx(5.0 + LAN.gossip_to_the_dead_time_s)
    assert (MemberEventKind.REAP, "b") in member_events(out)


def test_leave_broadcasts_and_waits_for_propagation() -> None:
    a = core("a", 1)
    know(a, "b", "c")
    out = a.leave(10.0)
    assert member_events(out) == [(MemberEventKind.LEAVE, "a")]
    assert not a.leave_propagated(10.0)
    t = 10.0
    sent = 0
    while not a.leave_propagated(t):
        t = a.next_deadline()
        out = a.tick(t)
        sent += sum(1 for _, m in msgs(out) if m == Dead(0, "a", "a"))
        for _, m in msgs(out):
            assert not isinstance(m, Ping | IndirectPing)  # no more probing once leaving
    assert sent >= 4 and t < 10.0 + LAN.leave_timeout_s
    # Suspicions of a leaving member are not refuted.
    a.handle_packet(encode(Suspect(0, "a", "b")), addr(2), t)
    assert a.incarnation == 0


def test_leave_times_out_and_is_immediate_when_alone() -> None:
    alone = core("z", 26)
    alone.leave(0.0)
    assert alone.leave_propagated(0.0)
    a = core("a", 1)
    know(a, "b")
    a.leave(0.0)
    assert not a.leave_propagated(0.0)
    assert a.leave_propagated(LAN.leave_timeout_s)


# --- push-pull ---------------------------------------------------------------------------------


def pp(*nodes: tuple[str, int, int, NodeStateCode], ltime: int = 0, events: list[UserEvent] | None = None) -> bytes:
    return encode(PushPull(False, [PushNodeState(n, addr(i), {}, inc, st) for n, i, inc, st in nodes],
                           ltime, events or []))


def test_push_pull_merge_precedence() -> None:
    a = core("a", 1)
    know(a, "b", "c", "d", "e")
    a.handle_packet(encode(Suspect(3, "e", "x")), addr(9), 0.0)
    out = a.handle_stream(pp(
        ("b", 2, 2, NodeStateCode.ALIVE),    # newer alive: taken
        ("c", 3, 0, NodeStateCode.DEAD),     # their "dead": only a suspicion for us
        ("d", 4, 0, NodeStateCode.LEFT),     # left: taken as is
        ("e", 5, 1, NodeStateCode.ALIVE),    # older than our suspicion (3): ignored
        ("f", 6, 4, NodeStateCode.ALIVE),    # unknown alive: joins
        ("g", 7, 0, NodeStateCode.DEAD),     # unknown dead: ignored
    ), addr(2), 1.0)
    assert a.member("b").incarnation == 2  # type: ignore[union-attr]
    assert a.member("c").state == MemberState.SUSPECT  # type: ignore[union-attr]
    assert a.member("d").state == MemberState.LEFT  # type: ignore[union-attr]
    assert a.member("e").state == MemberState.SUSPECT and a.member("e").incarnation == 3  # type: ignore[union-attr]
    assert a.member("f").state == MemberState.ALIVE and a.member("g") is None  # type: ignore[union-attr]
    assert member_events(out) == [(MemberEventKind.LEAVE, "d"), (MemberEventKind.JOIN, "f")]
    # The reply is our state from before the merge.
    assert out.reply is not None
    reply = decode(out.reply)
    assert isinstance(reply, PushPull) and not reply.join
    assert {n.name: n.state for n in reply.nodes}["c"] == NodeStateCode.ALIVE


def test_push_pull_about_ourselves_refutes_and_dead_at_older_inc_ignored() -> None:
    a = core("a", 1)
    a.handle_stream(pp(("a", 1, 4, NodeStateCode.DEAD)), addr(2), 0.0)
    assert a.incarnation == 5  # e.g. we restarted and the cluster remembers us dead at 4


def test_join_and_periodic_push_pull_go_through_streams() -> None:
    a = core("a", 1)
    out = a.join([addr(2), addr(3)], 0.0)
    assert [(s.kind, s.addr) for s in out.streams] == [(StreamKind.PUSH_PULL, addr(2)),
                                                       (StreamKind.PUSH_PULL, addr(3))]
    req = decode(out.streams[0].data)
    assert isinstance(req, PushPull) and req.join
    b = core("b", 2)
    served = b.handle_stream(out.streams[0].data, addr(1), 0.1)
    assert [m.name for m in b.members()] == ["a", "b"]
    back = a.handle_stream_result(out.streams[0].id, served.reply, 0.2)
    assert member_events(back) == [(MemberEventKind.JOIN, "b")]
    assert member_events(a.handle_stream_result(out.streams[1].id, None, 10.0)) == []
    # Periodic push-pull with a random alive member within one (staggered) interval.
    t = 0.0
    found: list[StreamRequest] = []
    while t < LAN.push_pull_interval_s + 1 and not found:
        t = a.next_deadline()
        o = a.tick(t)
        found = [s for s in o.streams if s.kind is StreamKind.PUSH_PULL]
        for _, m in of(o, Ping):
            a.handle_packet(encode(Ack(m.seq)), addr(2), t)  # type: ignore[union-attr]
    assert found and found[0].addr == addr(2)
    assert found[0].deadline == pytest.approx(t + LAN.tcp_timeout_s)


# --- user events, tags, conflicts --------------------------------------------------------------


def test_user_events_use_lamport_clocks_and_dedup() -> None:
    a = core("a", 1)
    out = a.send_user_event("deploy", b"v1", 0.0)
    assert [e for e in out.events if isinstance(e, UserEventReceived)] == [UserEventReceived(1, "deploy", b"v1")]
    assert a.event_ltime == 2
    ev = encode(UserEvent(10, "restart", b"x"))
    out = a.handle_packet(ev, addr(2), 1.0)
    assert [e.name for e in out.events if isinstance(e, UserEventReceived)] == ["restart"]
    assert a.event_ltime == 11  # witnessed
    assert a.handle_packet(ev, addr(3), 1.1).events == []  # same (ltime, name, payload): duplicate
    out = a.handle_packet(encode(UserEvent(10, "restart", b"y")), addr(3), 1.2)
    assert len(out.events) == 1  # same ltime and name, other payload: a different event
    # Push-pull carries recent events; already-seen ones are not delivered again.
    out = a.handle_stream(pp(ltime=20, events=[UserEvent(10, "restart", b"x"), UserEvent(15, "new", b"")]),
                          addr(2), 2.0)
    assert [e.name for e in out.events if isinstance(e, UserEventReceived)] == ["new"]
    assert a.event_ltime == 21
    with pytest.raises(ValueError):
        a.send_user_event("big", b"x" * LAN.user_event_size_limit, 3.0)


def test_user_events_older_than_the_buffer_are_dropped() -> None:
    cfg = dataclasses.replace(LAN, event_buffer_size=4)
    a = core("a", 1, cfg=cfg)
    a.handle_packet(encode(UserEvent(100, "x", b"")), addr(2), 0.0)
    assert a.handle_packet(encode(UserEvent(90, "y", b"")), addr(2), 0.0).events == []


def test_join_ignoring_old_events_skips_what_the_peer_stamped_before() -> None:
    old = [UserEvent(3, "old", b""), UserEvent(7, "older", b"")]
    for ignore_old, delivered in ((True, []), (False, ["old", "older"])):
        a = core("a", 1)
        out = a.join([addr(2)], 0.0, ignore_old=ignore_old)
        (req,) = out.streams
        out = a.handle_stream_result(req.id, pp(("b", 2, 1, NodeStateCode.ALIVE), ltime=8, events=old), 0.1)
        assert [e.name for e in out.events if isinstance(e, UserEventReceived)] == delivered
        assert a.event_ltime == 9
        # What the peer stamps after the join (from its clock on) is delivered.
        out = a.handle_packet(encode(UserEvent(8, "new", b"")), addr(2), 0.2)
        assert [e.name for e in out.events if isinstance(e, UserEventReceived)] == ["new"]


def delivered(out: Output) -> list[str]:
    return [e.name for e in out.events if isinstance(e, UserEventReceived)]


def test_join_ignoring_old_events_keeps_events_a_lagging_peer_stamps_after_it() -> None:
    """Lamport clocks differ between members: joining b (clock 10) and c (clock 4) at once must
    not drop what c stamps next (5), though it is below b's clock. Once dropped, no push-pull
    could ever deliver it (the agent that fired it through c never saw its own event)."""
    a = core("a", 1)
    out = a.join([addr(2), addr(3)], 0.0, ignore_old=True)
    to_b, to_c = out.streams
    a.handle_stream_result(to_b.id, pp(("b", 2, 0, NodeStateCode.ALIVE), ("c", 3, 0, NodeStateCode.ALIVE),
                                       ltime=10, events=[UserEvent(9, "before", b"")]), 0.1)
    a.handle_stream_result(to_c.id, pp(("b", 2, 0, NodeStateCode.ALIVE), ("c", 3, 0, NodeStateCode.ALIVE),
                                       ltime=4, events=[UserEvent(9, "before", b"")]), 0.1)
    assert delivered(a.handle_packet(encode(UserEvent(5, "deploy", b"v2")), addr(3), 0.2)) == ["deploy"]
    # What the cluster held at the join stays undelivered, whichever way it comes back.
    assert delivered(a.handle_stream(pp(ltime=11, events=[UserEvent(9, "before", b""), UserEvent(5, "deploy", b"v2")]),
                                     addr(2), 30.0)) == []


def test_a_join_while_already_in_the_cluster_does_not_skip_events() -> None:
    """A member others joined retries its own -retry-join later (Consul's retry loop): that join
    is not a first contact, so an event it has not received yet (its datagrams were lost) still
    arrives, from the join's push-pull or a later one."""
    a = core("a", 1)
    know(a, "b")  # b joined us
    out = a.join([addr(2)], 1.0, ignore_old=True)
    (req,) = out.streams
    out = a.handle_stream_result(req.id, pp(("b", 2, 0, NodeStateCode.ALIVE), ltime=7,
                                            events=[UserEvent(6, "deploy", b"")]), 1.1)
    assert delivered(out) == ["deploy"]


def test_tag_update_rebroadcasts_alive_with_new_incarnation() -> None:
    a = core("a", 1, tags={"role": "client"})
    know(a, "b")
    out = a.update_tags({"role": "server", "port": "8300"}, 1.0)
    assert a.incarnation == 1
    assert member_events(out) == [(MemberEventKind.UPDATE, "a")]
    out = a.tick(a.next_deadline())
    alive = [m for _, m in msgs(out) if isinstance(m, Alive) and m.node == "a"]
    assert alive == [Alive(1, "a", addr(1), {"role": "server", "port": "8300"})]
    b = core("b", 2)
    know(b, "a")
    out = b.handle_packet(encode(alive[0]), addr(1), 1.1)
    assert member_events(out) == [(MemberEventKind.UPDATE, "a")]
    assert b.member("a").tags == {"role": "server", "port": "8300"}  # type: ignore[union-attr]


def test_stale_view_of_our_tags_is_refuted() -> None:
    a = core("a", 1, tags={"v": "2"})
    a.handle_packet(encode(Alive(0, "a", addr(1), {"v": "1"})), addr(2), 0.0)
    assert a.incarnation == 1


def test_name_conflict_is_reported_once_and_does_not_flap() -> None:
    a = core("a", 1)
    know(a, "b")
    intruder = encode(Alive(7, "a", addr(50)))
    out = a.handle_packet(intruder, addr(50), 1.0)
    assert out.events == [NameConflict("a", addr(1), addr(50))]
    assert a.incarnation == 0  # no refutation war
    assert a.handle_packet(intruder, addr(50), 2.0).events == []
    # Someone else's name claimed from a second address: reported, the known one kept.
    out = a.handle_packet(encode(Alive(9, "b", addr(51))), addr(51), 3.0)
    assert out.events == [NameConflict("b", addr(2), addr(51))]
    assert a.member("b").addr == addr(2)  # type: ignore[union-attr]


def test_left_member_may_come_back_from_a_new_address() -> None:
    a = core("a", 1)
    know(a, "b")
    a.handle_packet(encode(Dead(0, "b", "b")), addr(2), 1.0)
    out = a.handle_packet(encode(Alive(0, "b", addr(60))), addr(60), 2.0)
    assert member_events(out) == [(MemberEventKind.JOIN, "b")]
    assert a.member("b").addr == addr(60)  # type: ignore[union-attr]


# --- packets -----------------------------------------------------------------------------------


def test_piggybacked_packets_stay_within_udp_buffer() -> None:
    a = core("a", 1)
    know(a, *"bcdefghij")
    for i in range(60):
        a.send_user_event(f"e{i}", b"p" * 200, 0.0)
    t = 0.0
    sizes = []
    for _ in range(30):
        t = a.next_deadline()
        sizes += [len(p.data) for p in a.tick(t).packets]
    assert sizes and max(sizes) <= LAN.udp_buffer_size
    assert max(sizes) > LAN.udp_buffer_size - 250  # and the space is actually used


def test_garbage_is_dropped_without_raising() -> None:
    a = core("a", 1)
    assert a.handle_packet(b"\x07\x00garbage", addr(2), 0.0) == Output()
    assert a.handle_stream(b"", addr(2), 0.0).reply is None
    assert a.handle_stream_result(12345, b"junk", 0.0) == Output()


def test_config_profiles_and_validation() -> None:
    wan, local = GossipConfig.wan(), GossipConfig.local()
    assert (wan.probe_interval_s, wan.probe_timeout_s, wan.suspicion_mult, wan.gossip_nodes) == (5.0, 3.0, 6, 4)
    assert (local.indirect_checks, local.retransmit_mult, local.probe_timeout_s) == (1, 2, 0.2)
    assert LAN.validate() == [] and wan.validate() == [] and local.validate() == []
    bad = dataclasses.replace(LAN, probe_timeout_s=2.0, retransmit_mult=0, udp_buffer_size=10)
    assert len(bad.validate()) == 3


def test_stale_suspicion_of_ourselves_is_answered_with_our_current_alive() -> None:
    # The accuser missed our refutation; re-asserting (without a new incarnation) lets the ack of
    # its buddy-system ping carry the refutation straight back.
    b = core("b", 2)
    know(b, "a")
    b.handle_packet(encode(Suspect(0, "b", "x")), addr(9), 0.0)
    assert b.incarnation == 1
    b.tick(b.next_deadline())
    for _ in range(10):  # spend the refutation's transmits
        b.handle_packet(encode(Ping(1, "b", "a", addr(1))), addr(1), 0.1)
    buddy = encode_compound([encode(Ping(7, "b", "a", addr(1))), encode(Suspect(0, "b", "a"))])
    reply = b.handle_packet(buddy, addr(1), 1.0)
    assert b.incarnation == 1 and b.health_score == 1  # no new refutation, no health penalty
    inside = [m for _, m in msgs(reply)]
    assert Ack(7) in inside and Alive(1, "b", addr(2), {}) in inside


def test_restored_clocks_skip_events_handled_before_a_restart() -> None:
    """serf's eventMinTime: after a restart, the events the cluster still gossips that this agent
    handled before (up to the snapshot's event clock) are neither delivered nor passed on again;
    later ones are, and the clock continues past the restored time."""
    a = core("a", 1)
    a.restore_clocks(event_ltime=12, query_ltime=0)
    assert a.event_ltime == 13
    out = a.handle_stream(pp(ltime=15, events=[UserEvent(5, "old", b""), UserEvent(12, "last-seen", b""),
                                               UserEvent(13, "missed", b"")]), addr(2), 1.0)
    assert delivered(out) == ["missed"]
    assert delivered(a.handle_packet(encode(UserEvent(12, "last-seen", b"")), addr(2), 1.1)) == []
    assert delivered(a.send_user_event("mine", b"", 1.2)) == ["mine"]
    # Without a restored clock the same push-pull delivers everything.
    b = core("b", 2)
    out = b.handle_stream(pp(ltime=15, events=[UserEvent(5, "old", b""), UserEvent(13, "missed", b"")]), addr(1), 1.0)
    assert delivered(out) == ["old", "missed"]
