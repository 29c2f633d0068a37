"""Sans-I/O SWIM + Lifeguard gossip core: membership state and every protocol decision.

Owns the member table (name, address, tags, incarnation, state), the probe cycle (direct ping,
indirect ping-req through k members, TCP fallback request), suspicion with Lifeguard's dynamic
timeout, refutation, dead/left handling and reaping, the piggyback/gossip schedule, periodic
push-pull, leave, serf-style user events with Lamport clocks and tag updates.

It never touches a socket or a clock. The driver (``gossip/node.py``) calls in with ``now``
(monotonic float seconds) and gets back an :class:`Output`: datagrams to send, stream
requests to carry out over TCP (push-pull and fallback pings; the driver reports the reply
with :meth:`GossipCore.handle_stream_result`), and events for the agent. The driver arms one
timer for :meth:`GossipCore.next_deadline` and calls :meth:`GossipCore.tick` when it fires.
Randomness comes from the injected ``random.Random``, so a seed replays a whole cluster.

The design follows hashicorp/memberlist's mechanisms (state.go, suspicion.go, awareness.go)
and the SWIM and Lifeguard papers, rebuilt around returned values instead of goroutines.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from proconsul.gossip.broadcast import EVENT, QUERY, TransmitLimitedQueue
from proconsul.gossip.config import GossipConfig
from proconsul.gossip.messages import (
    COMPOUND_OVERHEAD,
    COMPOUND_PART_OVERHEAD,
    Ack,
    Address,
    Alive,
    Dead,
    IndirectPing,
    Message,
    Nack,
    NodeStateCode,
    Ping,
    ProtocolError,
    PushNodeState,
    PushPull,
    Query,
    QueryResponse,
    Suspect,
    UserEvent,
    decode,
    decode_packet,
    encode,
    encode_compound,
)
from proconsul.malformed_log import MALFORMED

__all__ = [
    "Address", "Event", "GossipCore", "Member", "MemberEvent", "MemberEventKind", "MemberState", "MergeCheck",
    "NameConflict", "Output", "Packet", "PingComplete", "QueryHandle", "QueryReceived", "QueryResponseReceived",
    "StreamKind", "StreamRequest", "UserEventReceived",
    "install_converged_view", "push_pull_scale", "remaining_suspicion_time", "suspicion_timeout",
]

# Member states share their numbers with the wire (push-pull carries them).
MemberState = NodeStateCode

# Below this many members push-pull keeps its base interval (memberlist pushPullScaleThreshold).
PUSH_PULL_SCALE_THRESHOLD = 32


# --- pure scaling formulas (tested on their own) -------------------------------------------


def suspicion_timeout(suspicion_mult: int, num_nodes: int, probe_interval_s: float) -> float:
    """Lifeguard's minimum suspicion time: ``mult * max(1, log10(max(1, n))) * interval``.

    The floor of 1 on the log keeps small clusters from suspecting for (almost) no time at all.
    """
    node_scale = max(1.0, math.log10(max(1.0, float(num_nodes))))
    return suspicion_mult * node_scale * probe_interval_s


def remaining_suspicion_time(confirmations: int, k: int, elapsed_s: float, min_s: float, max_s: float) -> float:
    """Time left on a suspicion after ``confirmations`` independent confirmations.

    The timeout falls from ``max_s`` towards ``min_s`` as ``log(c + 1) / log(k + 1)``: the first
    confirmations count most, and k of them bring it down to ``min_s`` (Lifeguard, section IV-B).
    """
    if k < 1:
        return min_s - elapsed_s
    frac = math.log(confirmations + 1.0) / math.log(k + 1.0)
    raw = max_s - frac * (max_s - min_s)
    # Whole milliseconds, as memberlist does, so golden traces do not depend on float noise.
    timeout = math.floor(raw * 1000.0) / 1000.0
    return max(timeout, min_s) - elapsed_s


def push_pull_scale(interval_s: float, num_nodes: int) -> float:
    """Push-pull period grows with ``ceil(log2(n) - log2(32)) + 1`` past 32 members, so the
    total TCP sync load of a big cluster stays bounded."""
    if num_nodes <= PUSH_PULL_SCALE_THRESHOLD:
        return interval_s
    mult = math.ceil(math.log2(num_nodes) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1.0
    return mult * interval_s


# --- public value types --------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """A snapshot of one member as this node sees it."""

    name: str
    addr: Address
    tags: Mapping[str, str]
    incarnation: int
    state: MemberState
    state_change: float  # monotonic seconds of the last state transition


class MemberEventKind(Enum):
    JOIN = "join"  # first seen, or alive again after dead/left
    UPDATE = "update"  # tags or address changed
    LEAVE = "leave"  # graceful leave (dead message sent by the member itself)
    FAIL = "fail"  # declared dead by the failure detector
    REAP = "reap"  # dead/left member forgotten after gossip_to_the_dead_time


@dataclass(frozen=True)
class MemberEvent:
    kind: MemberEventKind
    member: Member


@dataclass(frozen=True)
class UserEventReceived:
    """A user event delivered once (our own included), in arrival order."""

    ltime: int
    name: str
    payload: bytes


@dataclass(frozen=True)
class NameConflict:
    """Someone announces ``name`` from another address than the one we hold for it.

    ``name`` may be our own node name. The core keeps its view (no flapping); the agent decides
    what to do, as Consul reports node-name conflicts.
    """

    name: str
    ours: Address
    theirs: Address


@dataclass(frozen=True)
class QueryHandle:
    """Names one query we asked: answers carry ``(ltime, id)``; they count until ``deadline``."""

    ltime: int
    id: int
    deadline: float


@dataclass(frozen=True)
class QueryReceived:
    """A query reached us (ours included), once; answer it with :meth:`GossipCore.respond`
    before ``deadline`` (monotonic seconds)."""

    ltime: int
    id: int
    name: str
    payload: bytes
    source_name: str
    source: Address
    deadline: float


@dataclass(frozen=True)
class QueryResponseReceived:
    """One member's answer to a query we asked, at most once per member."""

    ltime: int
    id: int
    from_name: str
    payload: bytes


Event = MemberEvent | UserEventReceived | NameConflict | QueryReceived | QueryResponseReceived


@dataclass(frozen=True)
class Packet:
    """One UDP datagram (possibly compound, never above ``udp_buffer_size``) for ``addr``."""

    addr: Address
    data: bytes


class StreamKind(Enum):
    PUSH_PULL = "push_pull"  # full state exchange; reply is the peer's PushPull
    PING = "ping"  # TCP fallback probe; reply is an Ack


@dataclass(frozen=True)
class StreamRequest:
    """Ask the driver to open a TCP stream to ``addr``, send ``data``, read one reply message and
    call ``handle_stream_result(id, reply_or_None, now)`` no later than ``deadline``."""

    id: int
    kind: StreamKind
    addr: Address
    data: bytes
    deadline: float


@dataclass(frozen=True)
class PingComplete:
    """A direct probe of ``name`` was acked after ``rtt_s`` seconds; ``payload`` is what the
    peer attached to its ack (its network coordinate, see ``proconsul.coordinate``)."""

    name: str
    rtt_s: float
    payload: bytes


@dataclass
class Output:
    """Everything one call into the core produced, in the order it happened."""

    packets: list[Packet] = field(default_factory=list)
    streams: list[StreamRequest] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # Only from handle_stream: the bytes to write back on that stream (None: close it).
    reply: bytes | None = None
    # Completed direct probes, for the driver's network coordinates (kept apart from events).
    pings: list[PingComplete] = field(default_factory=list)
    # Only from handle_stream_result: why the peer's push-pull state was refused (a failed join).
    refused: str | None = None


# --- internal state ------------------------------------------------------------------------


class _Node:
    """One member as this node sees it: a record that is never changed in place.

    A change builds a new record and puts it in the table (:meth:`GossipCore._put`), reusing the
    old record's name, address and tags objects when they did not change. Nothing else holds a
    record across a change, so one record may sit in many tables at once: a simulation of N
    cores in one process (``install_converged_view``) then keeps N records and N² references
    instead of N² records, which is what lets it reach 10,000 members. Slots keep each record at
    about 80 bytes.
    """

    __slots__ = ("name", "addr", "tags", "incarnation", "state", "state_change")

    def __init__(self, name: str, addr: Address, tags: dict[str, str], incarnation: int,
                 state: MemberState, state_change: float) -> None:
        self.name = name
        self.addr = addr
        self.tags = tags  # never mutated: a tag change brings a new dict
        self.incarnation = incarnation
        self.state = state
        self.state_change = state_change

    def changed(self, incarnation: int, state: MemberState, state_change: float) -> _Node:
        """A copy with a new incarnation and state (name, address and tags shared)."""
        return _Node(self.name, self.addr, self.tags, incarnation, state, state_change)

    def snapshot(self) -> Member:
        return Member(self.name, self.addr, dict(self.tags), self.incarnation, self.state, self.state_change)


@dataclass
class _Suspicion:
    """Lifeguard suspicion timer: starts at max, shrinks with each independent confirmation."""

    incarnation: int
    start: float
    k: int
    min_s: float
    max_s: float
    deadline: float
    # Membership test only (never iterated into an output), so a set is safe.
    confirmers: set[str]
    confirmations: int = 0

    def confirm(self, source: str, now: float) -> bool:
        if self.confirmations >= self.k or source in self.confirmers:
            return False
        self.confirmers.add(source)
        self.confirmations += 1
        remaining = remaining_suspicion_time(self.confirmations, self.k, now - self.start, self.min_s, self.max_s)
        self.deadline = now + max(0.0, remaining)
        return True


@dataclass
class _Probe:
    seq: int
    target: str
    addr: Address
    started: float
    timeout_at: float  # no ack by then: indirect probes + TCP fallback
    deadline: float  # no ack by then: suspect
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    tcp_ok: bool = False


@dataclass
class _Relay:
    """A ping we send on behalf of an indirect-ping requester."""

    orig_seq: int
    requester: Address
    nack: bool
    deadline: float


@dataclass
class _Stream:
    kind: StreamKind
    seq: int  # the probe's seq for PING streams
    deadline: float


@dataclass
class _QuerySlot:
    ltime: int
    ids: list[int] = field(default_factory=list)


@dataclass
class _AskedQuery:
    deadline: float
    # Membership test only (never iterated into an output).
    responders: set[str] = field(default_factory=set)


@dataclass
class _EventSlot:
    ltime: int
    keys: list[tuple[str, bytes]] = field(default_factory=list)
    events: list[UserEvent] = field(default_factory=list)


_INF = math.inf

# Above this many members, random peers are drawn by rejection sampling from the probe list
# (a few draws per pick, as memberlist's kRandomNodes) instead of filtering the whole table: a
# filter costs O(n) on every gossip round, which at 10,000 members would dominate the core.
_SCAN_LIMIT = 128
# Draws before giving up on rejection sampling (few eligible members, say after a mass failure)
# and filtering the whole table after all, so the pick stays uniform over the eligible ones.
_SAMPLE_TRIES = 16

# Serf's merge delegate: given members (name, tags) about to be merged, an error refuses them.
MergeCheck = Callable[[Sequence[tuple[str, Mapping[str, str]]]], "str | None"]


class GossipCore:
    """One member of one gossip pool (LAN or WAN).

    Args:
        name: our node name, unique in the pool.
        addr: the (host, port) others reach us on, UDP and TCP alike.
        config: timing profile (:meth:`GossipConfig.lan` etc.).
        rng: the only source of randomness (probe order, peer picks, start stagger).
        now: monotonic seconds at start; timers are staggered from it.
        tags: our tags (role, dc, port, build, vsn, id ...).
        logger: where decisions are logged; defaults to this module's logger.

    The first returned :class:`Output` carries a JOIN event for ourselves.
    """

    def __init__(
        self,
        name: str,
        addr: Address,
        config: GossipConfig,
        rng: random.Random,
        now: float,
        tags: Mapping[str, str] | None = None,
        logger: logging.Logger | None = None,
        merge_check: MergeCheck | None = None,
    ) -> None:
        self.name = name
        self._merge_check = merge_check
        self.addr = addr
        self.config = config
        self._rng = rng
        self._log = logger or logging.getLogger(__name__)
        self._members: dict[str, _Node] = {}
        # Other members that are dead or left, in the order they became so: the only ones with
        # a reap deadline, so timers and reaping never walk the whole table.
        self._gone: dict[str, None] = {}
        me = self._put(_Node(name, addr, dict(tags or {}), 0, MemberState.ALIVE, now))
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._seq = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, _Suspicion] = {}
        self._streams: dict[int, _Stream] = {}
        self._next_stream = 1
        self._awareness = 0
        # alive/suspect/dead messages processed (memberlist's msg.* counters); the driver
        # reports the growth to its metrics registry.
        self.msg_counts: dict[str, int] = {"alive": 0, "suspect": 0, "dead": 0}
        # Probes started while Lifeguard stretched the probe interval (memberlist's
        # degraded.probe), reported the same way.
        self.degraded_probes = 0
        self._queue = TransmitLimitedQueue(config.retransmit_mult)
        self._conflicts: dict[str, Address] = {}
        # Random first firing within one interval so a cluster started at once does not beat in step.
        self._next_probe = now + rng.random() * config.probe_interval_s
        self._next_gossip = now + rng.random() * config.gossip_interval_s
        self._next_push_pull = (
            now + rng.random() * config.push_pull_interval_s if config.push_pull_interval_s > 0 else _INF
        )
        self._leaving = False
        self._leave_handle = 0
        self._leave_deadline = _INF
        # serf starts its event clock at 1: LTime 0 means "never stamped" to its users.
        self._event_clock = 1
        # Streams of a first join that ignores old events (serf's Join(addrs, ignoreOld=true)):
        # the events their replies carry are taken as seen, not delivered.
        self._ignore_old_streams: set[int] = set()
        self._event_buffer: list[_EventSlot | None] = [None] * config.event_buffer_size
        self._query_clock = 0
        # Events and queries stamped before these times were seen before a restart (serf's
        # eventMinTime / queryMinTime, from the snapshot's clocks): never delivered again.
        self._event_min_time = 0
        self._query_min_time = 0
        self._query_buffer: list[_QuerySlot | None] = [None] * config.query_buffer_size
        self._asked: dict[tuple[int, int], _AskedQuery] = {}
        self._out = Output()
        # Attached to every ack we send (the driver keeps our coordinate in it; empty: none).
        self._ack_payload = b""
        # Announce ourselves: once a join gives us peers, this is what tells the cluster we exist
        # beyond the one member we pushed our state to.
        self._broadcast_alive(me)
        self._emit(MemberEvent(MemberEventKind.JOIN, me.snapshot()))

    # --- queries ---------------------------------------------------------------------------

    def members(self) -> list[Member]:
        """Every known member (ourselves included, reaped ones not), sorted by name."""
        return [self._members[n].snapshot() for n in sorted(self._members)]

    def member(self, name: str) -> Member | None:
        node = self._members.get(name)
        return node.snapshot() if node else None

    def queue_depth(self, kind: str) -> int:
        """Broadcasts of ``kind`` (``gossip.broadcast.KINDS``) waiting to be piggybacked."""
        return self._queue.depth(kind)

    @property
    def health_score(self) -> int:
        """Lifeguard awareness: 0 is healthy, ``awareness_max_multiplier - 1`` the worst."""
        return self._awareness

    @property
    def incarnation(self) -> int:
        return self._members[self.name].incarnation

    @property
    def event_ltime(self) -> int:
        """The user-event Lamport clock (the next event we send gets this time)."""
        return self._event_clock

    @property
    def query_ltime(self) -> int:
        """The query Lamport clock (the next query we send gets this time)."""
        return self._query_clock

    def restore_clocks(self, event_ltime: int, query_ltime: int) -> None:
        """Resume after a restart: `event_ltime` / `query_ltime` are the highest Lamport times of
        an event / a query handled before it (0: none). Those and older ones that the cluster
        still gossips are ignored, so a restarted agent does not run its handlers for them again,
        and our clocks continue past them."""
        if event_ltime:
            self._witness(event_ltime)
            self._event_min_time = max(self._event_min_time, event_ltime + 1)
        if query_ltime:
            self._query_clock = max(self._query_clock, query_ltime + 1)
            self._query_min_time = max(self._query_min_time, query_ltime + 1)

    @property
    def ack_payload(self) -> bytes:
        """What every ack we send carries (our coordinate, set by the driver; empty: none)."""
        return self._ack_payload

    def set_ack_payload(self, payload: bytes) -> None:
        self._ack_payload = payload

    @property
    def leaving(self) -> bool:
        return self._leaving

    def num_members(self) -> int:
        """Members counted for the scaling formulas: every known, not yet reaped (memberlist's estNumNodes)."""
        return len(self._members)

    def next_deadline(self) -> float:
        """The earliest time :meth:`tick` has something to do (``inf`` if never)."""
        times = [self._next_probe if not self._leaving else _INF]
        if len(self._queue):
            times.append(self._next_gossip)
        if not self._leaving:
            times.append(self._next_push_pull)
        p = self._probe
        if p is not None:
            times.append(p.deadline if p.indirect_sent else p.timeout_at)
        times.extend(r.deadline for r in self._relays.values())
        times.extend(s.deadline for s in self._suspicions.values())
        gtd = self.config.gossip_to_the_dead_time_s
        times.extend(self._members[n].state_change + gtd for n in self._gone)
        if self._leaving and self._leave_deadline != _INF:
            times.append(self._leave_deadline)
        return min(times)

    # --- inputs ----------------------------------------------------------------------------

    def tick(self, now: float) -> Output:
        """Run whatever is due at ``now``: probe steps, relay nacks, suspicion expiry, reaping,
        gossip and push-pull."""
        p = self._probe
        if p is not None and not p.indirect_sent and now >= p.timeout_at:
            self._probe_indirect(p, now)
        if p is not None and self._probe is p and now >= p.deadline:
            self._probe_fail(p, now)
        if now >= self._next_probe:
            self._start_probe(now)
        for seq, relay in list(self._relays.items()):
            if now >= relay.deadline:
                del self._relays[seq]
                if relay.nack:
                    # We reached no one: tell the requester, so it knows its own path is fine.
                    self._send(relay.requester, [encode(Nack(relay.orig_seq))])
        for name, sus in list(self._suspicions.items()):
            if now >= sus.deadline:
                self._suspicion_expired(name, sus, now)
        self._reap(now)
        for sid, stream in list(self._streams.items()):
            # The driver promised an answer by the deadline; don't leak if it forgot.
            if now >= stream.deadline + self.config.tcp_timeout_s:
                del self._streams[sid]
        if now >= self._next_gossip:
            if len(self._queue):
                self._gossip(now)
            # Stay on the interval grid even if the driver woke late.
            steps = math.floor((now - self._next_gossip) / self.config.gossip_interval_s) + 1
            self._next_gossip += steps * self.config.gossip_interval_s
        if now >= self._next_push_pull:
            if not self._leaving:
                self._start_push_pull(now)
            interval = push_pull_scale(self.config.push_pull_interval_s, self.num_members())
            self._next_push_pull = now + interval
        return self._drain()

    def handle_packet(self, data: bytes, src: Address, now: float) -> Output:
        """A datagram arrived from ``src``. Malformed input is logged and dropped."""
        try:
            msgs = decode_packet(data)
        except ProtocolError as exc:
            self._log.warning("gossip: dropping packet from %s:%d: %s", src[0], src[1], exc, extra=MALFORMED)
            return self._drain()
        # Membership news first, then pings and acks: a refutation triggered by a piggybacked
        # suspicion (the buddy system) then rides back on the very ack we send.
        for msg in sorted(msgs, key=lambda m: isinstance(m, Ping | IndirectPing | Ack | Nack)):
            self._dispatch(msg, src, now)
        return self._drain()

    def handle_stream(self, data: bytes, src: Address, now: float) -> Output:
        """A peer opened a TCP stream and sent ``data``; ``Output.reply`` is what to answer."""
        try:
            msg = decode(data)
        except ProtocolError as exc:
            self._log.warning("gossip: dropping stream from %s:%d: %s", src[0], src[1], exc, extra=MALFORMED)
            return self._drain()
        reply: bytes | None = None
        if isinstance(msg, PushPull):
            # Our state as it was before theirs is merged, as memberlist sends first and merges after.
            reply = encode(self._local_state(join=False))
            self._merge_remote(msg, now)
        elif isinstance(msg, Ping):
            if msg.target == self.name:
                reply = encode(Ack(msg.seq))
        else:
            self._log.warning("gossip: unexpected %s on a stream from %s:%d", type(msg).__name__, *src)
        out = self._drain()
        out.reply = reply
        return out

    def handle_stream_result(self, stream_id: int, reply: bytes | None, now: float) -> Output:
        """The driver finished a :class:`StreamRequest`: ``reply`` is the peer's answer, or None
        if it could not connect, timed out or the peer closed without answering."""
        stream = self._streams.pop(stream_id, None)
        ignore_old = stream_id in self._ignore_old_streams
        self._ignore_old_streams.discard(stream_id)
        if stream is None:
            return self._drain()
        msg: Message | None = None
        if reply is not None:
            try:
                msg = decode(reply)
            except ProtocolError as exc:
                self._log.warning("gossip: bad stream reply: %s", exc)
        if stream.kind is StreamKind.PING:
            p = self._probe
            if isinstance(msg, Ack) and p is not None and msg.seq == stream.seq == p.seq:
                # Settled at the probe deadline, so a UDP ack can still win and we can warn
                # that only TCP got through.
                p.tcp_ok = True
        elif stream.kind is StreamKind.PUSH_PULL:
            if isinstance(msg, PushPull):
                refused = self._merge_remote(msg, now, old_events=ignore_old)
                if refused is not None:
                    out = self._drain()
                    out.refused = refused
                    return out
            else:
                self._log.info("gossip: push-pull got no state back")
        return self._drain()

    def join(self, addrs: Iterable[Address], now: float, ignore_old: bool = False) -> Output:
        """Start a join: one push-pull (join=True) per address. Count successes by the replies.

        ``ignore_old``: user events the cluster sent before this join are not delivered to us
        (serf's ignoreOld, which Consul agents use so a (re)joining agent does not replay them):
        those the peers' replies carry (every event they still remember) are taken as seen.
        Unlike serf, no Lamport time is taken as a floor: members' clocks differ, so an event a
        lagging member stamps after the join can be below another peer's clock, and dropping it
        would lose it for good (every later push-pull would be refused it too). It applies only
        to a first contact: a member others already joined (whose own retry-join comes later)
        has been receiving events all along, and its pending ones must still arrive.
        """
        state = encode(self._local_state(join=True))
        if ignore_old and any(n.name != self.name and n.state in (MemberState.ALIVE, MemberState.SUSPECT)
                              for n in self._members.values()):
            ignore_old = False
        for addr in addrs:
            if ignore_old:
                self._ignore_old_streams.add(self._next_stream)
            self._request_stream(StreamKind.PUSH_PULL, addr, state, now + self.config.tcp_timeout_s, 0)
        return self._drain()

    def leave(self, now: float) -> Output:
        """Announce a graceful leave (a dead message about ourselves from ourselves).

        Probing and push-pull stop; gossip continues so the message spreads. Poll
        :meth:`leave_propagated` before shutting the driver down.
        """
        if self._leaving:
            return self._drain()
        others_alive = any(n.state in (MemberState.ALIVE, MemberState.SUSPECT)
                           for n in self._members.values() if n.name != self.name)
        self._leaving = True
        self._probe = None
        me = self._members[self.name]
        self._on_dead(Dead(me.incarnation, self.name, self.name), now)
        # Nobody to tell: done at once (memberlist skips the wait when no one else is alive).
        self._leave_deadline = now + self.config.leave_timeout_s if others_alive else now
        return self._drain()

    def leave_propagated(self, now: float) -> bool:
        """True once our leave was sent its full transmit count, or the leave timeout passed."""
        if not self._leaving:
            return False
        return now >= self._leave_deadline or not self._queue.pending(self._leave_handle)

    def force_leave(self, name: str, now: float) -> Output:
        """Consul's force-leave: a failed (or suspect) member is marked left and the leave is
        gossiped for it, so every member stops waiting for it to come back. An alive member is
        left alone (it would refute at once)."""
        node = self._members.get(name)
        if node is not None and name != self.name and node.state in (MemberState.DEAD, MemberState.SUSPECT):
            self._suspicions.pop(name, None)
            if node.state == MemberState.SUSPECT:
                node = self._put(node.changed(node.incarnation, MemberState.DEAD, node.state_change))
            self._on_dead(Dead(node.incarnation, name, name), now)
        return self._drain()

    def send_user_event(self, name: str, payload: bytes, now: float) -> Output:
        """Broadcast a user event stamped with our Lamport time; it is delivered to us too.

        Raises:
            ValueError: name plus payload exceed ``user_event_size_limit`` (caller's misuse).
        """
        if len(name.encode()) + len(payload) > self.config.user_event_size_limit:
            raise ValueError(f"user event exceeds {self.config.user_event_size_limit} bytes")
        ltime = self._event_clock
        self._event_clock += 1
        self._handle_user_event(UserEvent(ltime, name, bytes(payload)))
        return self._drain()

    def update_tags(self, tags: Mapping[str, str], now: float) -> Output:
        """Replace our tags and re-announce ourselves alive with a new incarnation."""
        old = self._members[self.name]
        me = self._put(_Node(old.name, old.addr, dict(tags), old.incarnation + 1, old.state, old.state_change))
        self._broadcast_alive(me)
        self._emit(MemberEvent(MemberEventKind.UPDATE, me.snapshot()))
        return self._drain()

    def default_query_timeout(self) -> float:
        """Serf's default: ``gossip_interval * query_timeout_mult * ceil(log10(n + 1))`` over the
        members that are not dead or left, long enough for the query to reach everyone."""
        alive = sum(1 for n in self._members.values() if n.state in (MemberState.ALIVE, MemberState.SUSPECT))
        scale = math.ceil(math.log10(alive + 1))
        return self.config.gossip_interval_s * self.config.query_timeout_mult * max(1, scale)

    def send_query(self, name: str, payload: bytes, now: float,
                   timeout_s: float | None = None) -> tuple[QueryHandle, Output]:
        """Gossip a query to every member (us included); answers come back as
        :class:`QueryResponseReceived` events until the handle's deadline.

        Raises:
            ValueError: the encoded query exceeds ``query_size_limit`` (caller's misuse).
        """
        timeout = self.default_query_timeout() if timeout_s is None else timeout_s
        ltime = self._query_clock
        self._query_clock += 1
        q = Query(ltime, self._rng.getrandbits(32), self.name, self.addr, name, bytes(payload),
                  int(timeout * 1000))
        if len(encode(q)) > self.config.query_size_limit:
            raise ValueError(f"query exceeds limit of {self.config.query_size_limit} bytes")
        handle = QueryHandle(ltime, q.id, now + timeout)
        self._asked[(ltime, q.id)] = _AskedQuery(handle.deadline)
        self._handle_query(q, now)
        return handle, self._drain()

    def respond(self, query: QueryReceived, payload: bytes, now: float) -> Output:
        """Answer ``query`` straight to its asker; too late (past its deadline) is dropped.

        Raises:
            ValueError: the answer exceeds ``query_size_limit`` (caller's misuse).
        """
        resp = QueryResponse(query.ltime, query.id, self.name, bytes(payload))
        data = encode(resp)
        if len(data) > self.config.query_size_limit:
            raise ValueError(f"query response exceeds limit of {self.config.query_size_limit} bytes")
        if now > query.deadline:
            self._log.debug("gossip: not answering query %s, its deadline passed", query.name)
        elif query.source_name == self.name and query.source == self.addr:
            self._handle_query_response(resp, now)
        else:
            self._send(query.source, [data])
        return self._drain()

    # --- dispatch --------------------------------------------------------------------------

    def _dispatch(self, msg: Message, src: Address, now: float) -> None:
        if isinstance(msg, Ping):
            if msg.target != self.name:
                # Meant for whoever held this address before us; acking would mislead the prober.
                self._log.debug("gossip: ping for %s reached %s", msg.target, self.name)
                return
            self._send(msg.source, [encode(Ack(msg.seq, self._ack_payload))])
        elif isinstance(msg, IndirectPing):
            self._seq += 1
            seq = self._seq
            self._relays[seq] = _Relay(msg.seq, msg.source, msg.nack, now + self.config.probe_timeout_s)
            self._send(msg.target_addr, [encode(Ping(seq, msg.target, self.name, self.addr))])
        elif isinstance(msg, Ack):
            self._on_ack(msg, now)
        elif isinstance(msg, Nack):
            p = self._probe
            if p is not None and msg.seq == p.seq:
                p.nacks += 1
        elif isinstance(msg, Alive):
            self._on_alive(msg, now)
        elif isinstance(msg, Suspect):
            self._on_suspect(msg, now)
        elif isinstance(msg, Dead):
            self._on_dead(msg, now)
        elif isinstance(msg, UserEvent):
            self._handle_user_event(msg)
        elif isinstance(msg, Query):
            self._handle_query(msg, now)
        elif isinstance(msg, QueryResponse):
            self._handle_query_response(msg, now)
        else:
            # PushPull belongs on streams; Compound was flattened by decode_packet.
            self._log.warning("gossip: unexpected %s in a datagram", type(msg).__name__, extra=MALFORMED)

    def _on_ack(self, ack: Ack, now: float) -> None:
        p = self._probe
        if p is not None and ack.seq == p.seq:
            self._probe = None
            self._apply_awareness(-1)  # a probe that got an answer is evidence we are healthy
            if not p.indirect_sent:
                # Only a direct answer measures the path between us (as memberlist reports it).
                self._out.pings.append(PingComplete(p.target, now - p.started, ack.payload))
            return
        relay = self._relays.pop(ack.seq, None)
        if relay is not None:
            self._send(relay.requester, [encode(Ack(relay.orig_seq, ack.payload))])

    # --- probing ---------------------------------------------------------------------------

    def _scaled(self, seconds: float) -> float:
        # Lifeguard local health: the less healthy we are, the longer we wait for others.
        return seconds * (self._awareness + 1)

    def _start_probe(self, now: float) -> None:
        interval = self._scaled(self.config.probe_interval_s)
        self._next_probe = now + interval
        if self._leaving:
            return
        target = self._next_target()
        if target is None:
            return
        if self._awareness:
            self.degraded_probes += 1
        self._seq += 1
        p = _Probe(self._seq, target.name, target.addr, now, now + self._scaled(self.config.probe_timeout_s),
                   now + interval)
        self._probe = p
        msgs = [encode(Ping(p.seq, target.name, self.name, self.addr))]
        if target.state == MemberState.SUSPECT:
            # Buddy system: tell a suspect directly so it can refute at once rather than wait
            # for the rumour to reach it.
            msgs.append(encode(Suspect(target.incarnation, target.name, self.name)))
        self._send(target.addr, msgs)

    def _next_target(self) -> _Node | None:
        checked = 0
        while checked <= len(self._probe_order):
            if self._probe_index >= len(self._probe_order):
                self._reset_probe_order()
                if not self._probe_order:
                    return None
            # Lazy Fisher-Yates: the next member of the round is drawn from those not yet probed
            # in it, so each round is a uniformly random permutation without shuffling the whole
            # list up front (O(1) per probe rather than O(n) at the start of each round).
            order, i = self._probe_order, self._probe_index
            j = self._rng.randrange(i, len(order))
            order[i], order[j] = order[j], order[i]
            name = order[i]
            self._probe_index += 1
            checked += 1
            node = self._members.get(name)
            if node is None or node.state in (MemberState.DEAD, MemberState.LEFT):
                continue
            return node
        return None

    def _reset_probe_order(self) -> None:
        # A fresh random permutation each round (drawn as it goes, see _next_target): every
        # member is probed once per round (SWIM's time-bounded completeness) yet the order is
        # not predictable.
        self._probe_order = [n for n in self._members if n != self.name]
        self._probe_index = 0

    def _probe_indirect(self, p: _Probe, now: float) -> None:
        p.indirect_sent = True
        peers = self._random_nodes(
            self.config.indirect_checks,
            lambda n: n.name not in (self.name, p.target) and n.state == MemberState.ALIVE,
        )
        req = encode(IndirectPing(p.seq, p.target, p.addr, True, self.name, self.addr))
        for peer in peers:
            p.expected_nacks += 1
            self._send(peer.addr, [req])
        if not self.config.disable_tcp_pings:
            # UDP may be broken while TCP works; a TCP answer prevents a false suspicion.
            self._request_stream(StreamKind.PING, p.addr, encode(Ping(p.seq, p.target, self.name, self.addr)),
                                 p.deadline, p.seq)

    def _probe_fail(self, p: _Probe, now: float) -> None:
        self._probe = None
        if p.tcp_ok:
            self._log.warning("gossip: %s answered over TCP but not UDP; network may be misconfigured", p.target)
            self._apply_awareness(-1)
            return
        # Lifeguard: missing nacks mean the indirect probers could not reach us either, which
        # points at our own network; with no one to ask, any failed probe counts once.
        if p.expected_nacks > 0:
            self._apply_awareness(max(0, p.expected_nacks - p.nacks))
        else:
            self._apply_awareness(1)
        node = self._members.get(p.target)
        if node is None:
            return
        self._log.info("gossip: suspect %s has failed, no acks received", p.target)
        self._on_suspect(Suspect(node.incarnation, node.name, self.name), now)

    def _apply_awareness(self, delta: int) -> None:
        before = self._awareness
        self._awareness = min(max(0, self._awareness + delta), self.config.awareness_max_multiplier - 1)
        if self._awareness != before:
            self._log.debug("gossip: health score %d -> %d", before, self._awareness)

    # --- state transitions -----------------------------------------------------------------

    def _on_alive(self, a: Alive, now: float) -> None:
        self.msg_counts["alive"] += 1
        node = self._members.get(a.node)
        if a.node == self.name:
            assert node is not None
            if a.addr != node.addr:
                self._conflict(a.node, node.addr, a.addr)
                return
            if a.incarnation < node.incarnation or (
                a.incarnation == node.incarnation and dict(a.tags) == node.tags
            ):
                return
            if self._leaving:
                return
            # A peer holds a newer or different picture of us (say from before a restart):
            # out-vote it rather than let it spread.
            self._refute(node, a.incarnation)
            return
        if node is None:
            refused = self._merge_check([(a.node, a.tags)]) if self._merge_check is not None else None
            if refused is not None:
                self._log.warning("memberlist: ignoring alive message for '%s': %s", a.node, refused)
                return
            node = self._put(_Node(a.node, a.addr, dict(a.tags), a.incarnation, MemberState.ALIVE, now))
            self._add_to_probe_order(a.node)
            self._broadcast_alive(node)
            self._emit(MemberEvent(MemberEventKind.JOIN, node.snapshot()))
            return
        updates_addr = False
        if a.addr != node.addr:
            # A left member's name is free to be reused from a new address; an alive, suspect
            # or dead one is not (dead ones become free once reaped).
            if node.state != MemberState.LEFT:
                self._conflict(a.node, node.addr, a.addr)
                return
            updates_addr = True
        if a.incarnation <= node.incarnation and not updates_addr:
            return
        self._suspicions.pop(a.node, None)
        old = node
        tags = dict(a.tags)
        node = self._put(_Node(
            old.name,
            old.addr if a.addr == old.addr else a.addr,
            old.tags if tags == old.tags else tags,  # unchanged tags stay shared
            a.incarnation,
            MemberState.ALIVE,
            old.state_change if old.state == MemberState.ALIVE else now,
        ))
        self._conflicts.pop(a.node, None)
        self._broadcast_alive(node)
        if old.state in (MemberState.DEAD, MemberState.LEFT):
            self._emit(MemberEvent(MemberEventKind.JOIN, node.snapshot()))
        elif old.addr != node.addr or old.tags != node.tags:
            self._emit(MemberEvent(MemberEventKind.UPDATE, node.snapshot()))

    def _on_suspect(self, s: Suspect, now: float) -> None:
        self.msg_counts["suspect"] += 1
        node = self._members.get(s.node)
        if node is None:
            return
        if s.incarnation < node.incarnation:
            self._reassert_if_self(node)
            return  # stale news
        sus = self._suspicions.get(s.node)
        if sus is not None:
            if s.incarnation == sus.incarnation and sus.confirm(s.source, now):
                # Re-gossip so others count this independent confirmation too.
                self._queue.queue(encode(s), key=s.node)
            return
        if node.state != MemberState.ALIVE:
            return
        if s.node == self.name:
            if not self._leaving:
                self._refute(node, s.incarnation)
            return
        self._queue.queue(encode(s), key=s.node)
        self._put(node.changed(s.incarnation, MemberState.SUSPECT, now))
        n = self.num_members()
        # k confirmations bring the timeout to its minimum; in tiny clusters there are not
        # enough independent members to confirm, so start at the minimum instead.
        k = self.config.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        min_s = suspicion_timeout(self.config.suspicion_mult, n, self.config.probe_interval_s)
        max_s = self.config.suspicion_max_timeout_mult * min_s
        self._suspicions[s.node] = _Suspicion(
            incarnation=s.incarnation, start=now, k=k, min_s=min_s, max_s=max_s,
            deadline=now + (max_s if k >= 1 else min_s), confirmers={s.source},
        )

    def _suspicion_expired(self, name: str, sus: _Suspicion, now: float) -> None:
        del self._suspicions[name]
        node = self._members.get(name)
        if node is None or node.state != MemberState.SUSPECT or node.incarnation != sus.incarnation:
            return
        self._log.info("gossip: marking %s as failed, suspect timeout reached (%d confirmations)",
                       name, sus.confirmations)
        self._on_dead(Dead(node.incarnation, name, self.name), now)

    def _on_dead(self, d: Dead, now: float) -> None:
        self.msg_counts["dead"] += 1
        node = self._members.get(d.node)
        if node is None:
            return
        if d.incarnation < node.incarnation:
            self._reassert_if_self(node)
            return
        if node.state == MemberState.LEFT:
            return
        # A leave may still upgrade "dead": the member told us it went away on purpose.
        if node.state == MemberState.DEAD and not d.is_leave:
            return
        if d.node == self.name and not self._leaving:
            self._refute(node, d.incarnation)
            return
        self._suspicions.pop(d.node, None)
        handle = self._queue.queue(encode(d), key=d.node)
        if d.node == self.name:
            self._leave_handle = handle
        node = self._put(node.changed(d.incarnation, MemberState.LEFT if d.is_leave else MemberState.DEAD, now))
        kind = MemberEventKind.LEAVE if d.is_leave else MemberEventKind.FAIL
        self._emit(MemberEvent(kind, node.snapshot()))

    def _refute(self, me: _Node, accused: int) -> None:
        # Beat the accusation's incarnation so every member prefers our alive message.
        me = self._put(me.changed(max(me.incarnation, accused) + 1, me.state, me.state_change))
        # Lifeguard: being suspected suggests we are slow to answer; back off a little.
        self._apply_awareness(1)
        self._log.info("gossip: refuting suspicion of %s at incarnation %d", me.name, me.incarnation)
        self._broadcast_alive(me)

    def _reassert_if_self(self, node: _Node) -> None:
        # Someone accuses an older incarnation of us: they missed our refutation (an epidemic
        # miss), and their suspicion timer is still running. Re-send our current alive without a
        # new incarnation; on a buddy-system ping it rides straight back on the ack.
        if node.name == self.name and not self._leaving:
            self._broadcast_alive(node)

    def _conflict(self, name: str, ours: Address, theirs: Address) -> None:
        # Report each distinct claimant once; repeating it every packet would flood the agent.
        if self._conflicts.get(name) == theirs:
            return
        self._conflicts[name] = theirs
        held = self._members.get(name)
        self._log.error("memberlist: Conflicting address for %s. Mine: %s:%d Theirs: %s:%d Old state: %s",
                        name, *ours, *theirs, held.state.name.lower() if held else "unknown")
        self._emit(NameConflict(name, ours, theirs))

    def _reap(self, now: float) -> None:
        gtd = self.config.gossip_to_the_dead_time_s
        for name in [n for n in self._gone if now >= self._members[n].state_change + gtd]:
            node = self._members.pop(name)
            del self._gone[name]
            self._suspicions.pop(name, None)
            if name in self._probe_order:
                pos = self._probe_order.index(name)
                del self._probe_order[pos]
                if pos < self._probe_index:
                    self._probe_index -= 1
            self._emit(MemberEvent(MemberEventKind.REAP, node.snapshot()))

    def _add_to_probe_order(self, name: str) -> None:
        # Random position, so a newcomer is probed within about one round, not always last.
        pos = self._rng.randint(0, len(self._probe_order))
        self._probe_order.insert(pos, name)
        if pos < self._probe_index:
            self._probe_index += 1

    # --- gossip and push-pull --------------------------------------------------------------

    def _gossip(self, now: float) -> None:
        gtd = self.config.gossip_to_the_dead_time_s

        def eligible(n: _Node) -> bool:
            if n.name == self.name:
                return False
            if n.state in (MemberState.ALIVE, MemberState.SUSPECT):
                return True
            # Recently dead members still hear gossip, so one that was wrongly declared dead
            # learns it and refutes.
            return n.state == MemberState.DEAD and now - n.state_change <= gtd

        room = self.config.udp_buffer_size - COMPOUND_OVERHEAD
        for peer in self._random_nodes(self.config.gossip_nodes, eligible):
            msgs = self._queue.get(COMPOUND_PART_OVERHEAD, room, self.num_members())
            if not msgs:
                return
            self._out.packets.append(Packet(peer.addr, encode_compound(msgs)))

    def _start_push_pull(self, now: float) -> None:
        peers = self._random_nodes(1, lambda n: n.name != self.name and n.state == MemberState.ALIVE)
        if not peers:
            return
        self._request_stream(StreamKind.PUSH_PULL, peers[0].addr, encode(self._local_state(join=False)),
                             now + self.config.tcp_timeout_s, 0)

    def _local_state(self, join: bool) -> PushPull:
        nodes = [PushNodeState(n.name, n.addr, n.tags, n.incarnation, n.state) for n in self._members.values()]
        events = sorted((e for slot in self._event_buffer if slot is not None for e in slot.events),
                        key=lambda e: e.ltime)
        return PushPull(join, nodes, self._event_clock, events)

    def _merge_remote(self, pp: PushPull, now: float, old_events: bool = False) -> str | None:
        """Merge a peer's full state; returns why it was refused (nothing merged) or None.
        ``old_events``: its events predate us (a first join's reply): seen, not delivered."""
        if self._merge_check is not None:
            live = [(ns.name, ns.tags) for ns in pp.nodes if ns.state in (MemberState.ALIVE, MemberState.SUSPECT)]
            refused = self._merge_check(live)
            if refused is not None:
                self._log.error("memberlist: Failed push/pull merge: %s", refused)
                return refused
        members = self._members
        for ns in pp.nodes:
            if ns.state == MemberState.ALIVE:
                node = members.get(ns.name)
                if (node is not None and ns.name != self.name and ns.incarnation <= node.incarnation
                        and ns.addr == node.addr):
                    # Old news about a member we hold at that address: exactly what _on_alive
                    # would conclude, without building a message for each of N entries.
                    self.msg_counts["alive"] += 1
                    continue
                self._on_alive(Alive(ns.incarnation, ns.name, ns.addr, ns.tags), now)
            elif ns.state == MemberState.LEFT:
                self._on_dead(Dead(ns.incarnation, ns.name, ns.name), now)
            else:
                # Their "dead" is second-hand news: suspect instead, so the member gets a
                # chance to refute before we declare it dead ourselves.
                self._on_suspect(Suspect(ns.incarnation, ns.name, self.name), now)
        self._witness(pp.event_ltime)
        for e in pp.events:
            self._handle_user_event(e, deliver=not old_events)
        return None

    # --- user events -----------------------------------------------------------------------

    def _witness(self, ltime: int) -> None:
        # Lamport rule: our clock moves past anything we have seen.
        if ltime >= self._event_clock:
            self._event_clock = ltime + 1

    def _handle_user_event(self, e: UserEvent, deliver: bool = True) -> bool:
        """Take in an event: True if new. `deliver` False only records it as seen (an event
        from before our first join), so it is neither delivered nor gossiped on."""
        self._witness(e.ltime)
        if e.ltime < self._event_min_time:
            return False  # handled before our restart
        size = len(self._event_buffer)
        if self._event_clock > size and e.ltime < self._event_clock - size:
            return False  # older than the buffer remembers: can't tell if seen, so drop
        idx = e.ltime % size
        slot = self._event_buffer[idx]
        key = (e.name, hashlib.sha256(e.payload).digest())
        if slot is not None and slot.ltime == e.ltime:
            if key in slot.keys:
                return False
        else:
            slot = _EventSlot(e.ltime)
            self._event_buffer[idx] = slot
        slot.keys.append(key)
        slot.events.append(e)
        if deliver:
            self._queue.queue(encode(e), kind=EVENT)
            self._emit(UserEventReceived(e.ltime, e.name, e.payload))
        return True

    # --- queries ---------------------------------------------------------------------------

    def _handle_query(self, q: Query, now: float) -> None:
        # Lamport rule on the query clock, as for user events.
        if q.ltime >= self._query_clock:
            self._query_clock = q.ltime + 1
        if q.ltime < self._query_min_time:
            return  # handled before our restart
        size = len(self._query_buffer)
        if self._query_clock > size and q.ltime < self._query_clock - size:
            return  # older than the buffer remembers: can't tell if seen, so drop
        idx = q.ltime % size
        slot = self._query_buffer[idx]
        if slot is not None and slot.ltime == q.ltime:
            if q.id in slot.ids:
                return
        else:
            slot = _QuerySlot(q.ltime)
            self._query_buffer[idx] = slot
        slot.ids.append(q.id)
        self._queue.queue(encode(q), kind=QUERY)
        self._emit(QueryReceived(q.ltime, q.id, q.name, q.payload, q.source_name, q.source,
                                 now + q.timeout_ms / 1000.0))

    def _handle_query_response(self, r: QueryResponse, now: float) -> None:
        for key in [k for k, a in self._asked.items() if now > a.deadline]:
            del self._asked[key]
        asked = self._asked.get((r.ltime, r.id))
        if asked is None or r.from_name in asked.responders:
            return  # not ours, too late, or a duplicate
        asked.responders.add(r.from_name)
        self._emit(QueryResponseReceived(r.ltime, r.id, r.from_name, r.payload))

    # --- output helpers --------------------------------------------------------------------

    def _broadcast_alive(self, node: _Node) -> None:
        self._queue.queue(encode(Alive(node.incarnation, node.name, node.addr, node.tags)), key=node.name)

    def _send(self, addr: Address, msgs: Sequence[bytes]) -> None:
        """Send ``msgs`` in one datagram, filling the rest of it with queued broadcasts."""
        used = COMPOUND_OVERHEAD + sum(len(m) + COMPOUND_PART_OVERHEAD for m in msgs)
        extra = self._queue.get(COMPOUND_PART_OVERHEAD, self.config.udp_buffer_size - used, self.num_members())
        self._out.packets.append(Packet(addr, encode_compound([*msgs, *extra])))

    def _request_stream(self, kind: StreamKind, addr: Address, data: bytes, deadline: float, seq: int) -> None:
        sid = self._next_stream
        self._next_stream += 1
        self._streams[sid] = _Stream(kind, seq, deadline)
        self._out.streams.append(StreamRequest(sid, kind, addr, data, deadline))

    def _random_nodes(self, k: int, accept: Callable[[_Node], bool]) -> list[_Node]:
        # The probe list holds every other member (see _add_to_probe_order and _reap), so a
        # uniform draw from it with rejection of the ineligible and the already picked gives a
        # uniform k-subset of the eligible ones.
        names = self._probe_order
        if len(names) > _SCAN_LIMIT:
            picked: dict[str, _Node] = {}
            for _ in range(_SAMPLE_TRIES + 4 * k):
                node = self._members.get(names[self._rng.randrange(len(names))])
                if node is not None and node.name not in picked and accept(node):
                    picked[node.name] = node
                    if len(picked) == k:
                        return list(picked.values())
        candidates = [n for n in self._members.values() if accept(n)]
        if len(candidates) <= k:
            self._rng.shuffle(candidates)
            return candidates
        return self._rng.sample(candidates, k)

    def _put(self, node: _Node) -> _Node:
        """Store a new or changed record (the only way the table changes, besides reaping)."""
        self._members[node.name] = node
        if node.name != self.name:
            if node.state in (MemberState.DEAD, MemberState.LEFT):
                self._gone[node.name] = None
            else:
                self._gone.pop(node.name, None)
        return node

    def _emit(self, event: Event) -> None:
        self._out.events.append(event)

    def _drain(self) -> Output:
        out, self._out = self._out, Output()
        return out

    # --- install_converged_view's two halves -----------------------------------------------

    def own_record(self) -> _Node:
        """This member's own record, as the other cores of a converged view share it."""
        return self._members[self.name]

    def adopt_converged_view(self, table: Mapping[str, _Node], now: float) -> None:
        """Take `table` (every member's own record) as the settled view; see install_converged_view."""
        self._members = dict(table)
        self._gone = {}
        self._suspicions.clear()
        self._queue.reset()
        self._probe_order = list(table)  # everyone but us, as _reset_probe_order makes it
        self._probe_order.remove(self.name)
        self._probe_index = 0
        if self.config.push_pull_interval_s > 0:
            self._next_push_pull = now + self._rng.random() * push_pull_scale(self.config.push_pull_interval_s,
                                                                              len(table))


def install_converged_view(cores: Sequence[GossipCore], now: float) -> None:
    """Give every core the settled view a cluster of exactly these cores reaches after joining.

    For simulations and benchmarks, which would otherwise spend O(N²) work (every join's
    push-pull and N broadcasts of N alive messages) reaching the state a long-running cluster
    is in anyway: everyone knows everyone alive at the incarnation each core holds for itself,
    no broadcast is left to send, and push-pull runs on its scaled interval from a random
    phase. The records are shared between the tables (they are never changed in place), so N
    cores cost N records plus one reference per (member, member) pair.
    """
    table = {c.name: c.own_record() for c in cores}
    for c in cores:
        c.adopt_converged_view(table, now)
