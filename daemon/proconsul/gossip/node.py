"""The asyncio driver of one gossip pool: sockets, streams and the timer around ``GossipCore``.

Owns the only I/O of gossip: a UDP socket and a TCP listener on the same ``(host, port)``
(Consul's ``ports.serf_lan`` 8301 / ``serf_wan`` 8302), the outgoing TCP streams the core asks
for (push-pull and fallback pings), and one timer armed for ``core.next_deadline()``.

Streams carry exactly one request frame and one reply frame, each a 4-byte big-endian length
followed by the (possibly encrypted) message. With a keyring, every datagram and frame is
AES-GCM encrypted (``gossip/keyring.py``); anything that does not decrypt is logged and dropped,
never fatal.

Events from the core are handed, in order, to ``on_event``, synchronously, on the loop.

Network coordinates (Serf's Vivaldi, ``proconsul.coordinate``): our coordinate rides on every
ack we send, and each direct probe's RTT with the peer's coordinate moves ours; the last
coordinate of every member is cached in ``coordinates`` until the member is reaped.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from proconsul.coordinate import PeerCoordinates
from proconsul.gossip.broadcast import MEMBERLIST
from proconsul.gossip.config import GossipConfig
from proconsul.gossip.core import (
    Address,
    Event,
    GossipCore,
    Member,
    MemberEvent,
    MemberEventKind,
    MemberState,
    MergeCheck,
    Output,
    PingComplete,
    QueryHandle,
    QueryReceived,
    StreamKind,
    StreamRequest,
)
from proconsul.gossip.keyring import DecryptError, Keyring
from proconsul.listen import listen_backlog
from proconsul.malformed_log import MALFORMED
from proconsul.metrics import Metrics

logger = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
# A push-pull of 10,000 members with tags is a few MB; refuse anything far above that.
MAX_FRAME = 64 * 1024 * 1024
# How often the broadcast queue's depth is sampled (memberlist's QueueCheckInterval default).
QUEUE_CHECK_INTERVAL_S = 30.0
# memberlist's node_state label values of memberlist.node.instances.
_NODE_STATES = {MemberState.ALIVE: "alive", MemberState.SUSPECT: "suspect", MemberState.DEAD: "dead",
                MemberState.LEFT: "left"}


def parse_address(text: str, default_port: int) -> Address:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as a (host, port) pair."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


@functools.lru_cache(maxsize=1024)
def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _sendable(addr: Address) -> bool:
    host, port = addr
    return isinstance(host, str) and isinstance(port, int) and 0 < port <= 65535 and _ip_literal(host)


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        logger.debug("gossip: udp error: %s", exc)


class GossipNode:
    """One member of one pool, running on the current event loop.

    Args:
        name: node name (unique in the pool).
        bind: (host, port) to listen on, UDP and TCP.
        advertise: (host, port) others reach us on; defaults to ``bind`` (with port 0 resolved).
        config: the pool's timing profile.
        tags: our member tags.
        on_event: called with every core event (joins, failures, user events, conflicts).
        keyring: encrypt everything with it (None: plaintext).
        disable_coordinates: keep no network coordinates (Consul's ``disable_coordinates``).
        metrics: where memberlist's metrics go (None: a private registry nobody reads).
        network: the ``network`` label of the metrics Consul labels by pool ("lan" or "wan").
        queue_check_interval_s: how often the broadcast queue's depth is sampled.
    """

    def __init__(
        self,
        name: str,
        bind: Address,
        config: GossipConfig,
        tags: Mapping[str, str] | None = None,
        on_event: Callable[[Event], None] | None = None,
        advertise: Address | None = None,
        keyring: Keyring | None = None,
        rng: random.Random | None = None,
        disable_coordinates: bool = False,
        merge_check: MergeCheck | None = None,
        metrics: Metrics | None = None,
        network: str = "lan",
        queue_check_interval_s: float = QUEUE_CHECK_INTERVAL_S,
    ) -> None:
        self.merge_check = merge_check
        self.name = name
        self.bind = bind
        self.advertise = advertise
        self.config = config
        self.tags = dict(tags or {})
        self.on_event = on_event
        self.keyring = keyring
        self.rng = rng or random.Random()
        self.core: GossipCore | None = None
        self._restored_clocks = (0, 0)  # (event, query) Lamport times handled before a restart
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._stream_waiters: dict[int, asyncio.Future[bool]] = {}
        self._closed = False
        # Its own randomness, so coordinates never shift the core's seeded sequence.
        self.coordinates: PeerCoordinates | None = None if disable_coordinates else PeerCoordinates(name)
        # memberlist's metric names; the LAN and WAN pools record into the same series, as in
        # Consul. Without a registry (tests): a private one nobody reads.
        m = metrics or Metrics()
        self._m_udp_sent = m.counter("memberlist", "udp", "sent", help="bytes sent in gossip packets")
        self._m_udp_received = m.counter("memberlist", "udp", "received", help="bytes received in gossip packets")
        self._m_tcp_accept = m.counter("memberlist", "tcp", "accept", help="gossip streams accepted")
        self._m_tcp_connect = m.counter("memberlist", "tcp", "connect", help="gossip streams opened")
        self._m_probe = m.sample("memberlist", "probeNode", help="ms for a direct probe to be acked")
        self._m_health = m.gauge("memberlist", "health", "score", help="Lifeguard awareness: 0 is healthy")
        self._m_msgs = {
            kind: m.counter("memberlist", "msg", kind, help=f"{kind} messages processed")
            for kind in ("alive", "suspect", "dead")
        }
        self._msgs_reported = {kind: 0 for kind in self._m_msgs}
        # The families memberlist records since Consul labels them by pool (serf hands memberlist
        # its `network` label): one series per pool, looked up once.
        self.network = network
        self.queue_check_interval_s = queue_check_interval_s
        net = ("network",)
        self._m_queue = m.sample("memberlist", "queue", "broadcasts", labels=net,
                                 help="broadcasts queued, sampled every 30 s").with_labels(network)
        self._m_push_pull = m.sample("memberlist", "pushPullNode", labels=net,
                                     help="ms for a push-pull state exchange with a member").with_labels(network)
        self._m_degraded = m.counter("memberlist", "degraded", "probe", labels=net,
                                     help="probes started with the probe interval stretched by Lifeguard").with_labels(network)
        instances = m.gauge("memberlist", "node", "instances", labels=("network", "node_state"),
                            help="members by state, at each push-pull this agent starts")
        self._m_instances = {state: instances.with_labels(network, label) for state, label in _NODE_STATES.items()}
        self._degraded_reported = 0

    # --- life cycle --------------------------------------------------------------------------

    @property
    def address(self) -> Address:
        assert self.core is not None
        return self.core.addr

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.bind
        self._tcp = await asyncio.start_server(
            self._serve_stream, host, port, reuse_address=True, backlog=listen_backlog()
        )
        if port == 0:
            port = self._tcp.sockets[0].getsockname()[1]
        transport, _ = await loop.create_datagram_endpoint(lambda: _UDP(self._on_datagram), local_addr=(host, port))
        self._udp = transport
        adv = self.advertise or (host, port)
        if adv[1] == 0:
            adv = (adv[0], port)
        if adv[0] in ("0.0.0.0", "::", ""):
            adv = ("127.0.0.1", adv[1])
        self.core = GossipCore(self.name, adv, self.config, self.rng, loop.time(), tags=self.tags, logger=logger,
                               merge_check=self.merge_check)
        self.core.restore_clocks(*self._restored_clocks)
        if self.coordinates is not None:
            self.core.set_ack_payload(self.coordinates.ack_payload())
        # The core's first output carries our own JOIN event and alive broadcast.
        self._apply(self.core.tick(loop.time()))
        self._timer = loop.create_task(self._timer_loop(), name=f"gossip-timer-{self.name}")
        self._spawn(self._queue_depth_loop(), f"gossip-queue-depth-{self.name}")

    def restore_clocks(self, event_ltime: int, query_ltime: int) -> None:
        """Before `start`: the Lamport times of the last event and query handled before a
        restart (see `GossipCore.restore_clocks`)."""
        self._restored_clocks = (event_ltime, query_ltime)
        if self.core is not None:
            self.core.restore_clocks(event_ltime, query_ltime)

    def use_random_port(self, advertise_host: str) -> None:
        """Before `start`: listen, and advertise, on a port the OS picks (a dev agent whose
        configured port another agent on this host already holds)."""
        self.bind = (self.bind[0], 0)
        self.advertise = (self.advertise[0] if self.advertise else advertise_host, 0)

    async def stop(self) -> None:
        """Stop at once (no leave): sockets closed, tasks cancelled."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in [self._timer, *self._tasks]:
            if task is None:
                continue
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    # --- public operations -------------------------------------------------------------------

    def members(self) -> list[Member]:
        return self.core.members() if self.core is not None else []

    async def join(self, addrs: Iterable[str | Address], default_port: int | None = None,
                   ignore_old: bool = False) -> int:
        """Push-pull with every address; returns how many answered (Consul's join count).

        ``ignore_old``: do not deliver user events sent before the join (see ``GossipCore.join``).
        """
        assert self.core is not None
        port = default_port or self.bind[1]
        targets = [a if isinstance(a, tuple) else parse_address(a, port) for a in addrs]
        resolved: list[Address] = []
        for host, p in targets:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, p, type=2)  # SOCK_DGRAM
                resolved.append((infos[0][4][0], p))
            except OSError as exc:
                logger.warning("gossip: cannot resolve %s: %s", host, exc)
        if not resolved:
            return 0
        loop = asyncio.get_running_loop()
        out = self.core.join(resolved, loop.time(), ignore_old=ignore_old)
        waiters = []
        for req in out.streams:
            fut: asyncio.Future[bool] = loop.create_future()
            self._stream_waiters[req.id] = fut
            waiters.append(fut)
        self._apply(out)
        results = await asyncio.gather(*waiters)
        return sum(1 for ok in results if ok)

    async def leave(self, timeout_s: float | None = None) -> None:
        """Broadcast our leave and wait (bounded) until it was gossiped enough."""
        assert self.core is not None
        loop = asyncio.get_running_loop()
        self._apply(self.core.leave(loop.time()))
        deadline = loop.time() + (timeout_s if timeout_s is not None else self.config.leave_timeout_s)
        while not self.core.leave_propagated(loop.time()) and loop.time() < deadline:
            await asyncio.sleep(0.05)

    def update_tags(self, tags: Mapping[str, str]) -> None:
        assert self.core is not None
        self.tags = dict(tags)
        self._apply(self.core.update_tags(tags, asyncio.get_running_loop().time()))

    def send_user_event(self, name: str, payload: bytes) -> None:
        assert self.core is not None
        self._apply(self.core.send_user_event(name, payload, asyncio.get_running_loop().time()))

    def send_query(self, name: str, payload: bytes, timeout_s: float | None = None) -> QueryHandle:
        """Gossip a query; answers arrive through ``on_event`` as ``QueryResponseReceived``."""
        assert self.core is not None
        handle, out = self.core.send_query(name, payload, asyncio.get_running_loop().time(), timeout_s)
        self._apply(out)
        return handle

    def respond(self, query: QueryReceived, payload: bytes) -> None:
        assert self.core is not None
        self._apply(self.core.respond(query, payload, asyncio.get_running_loop().time()))

    def loop_time(self) -> float:
        """The clock query deadlines are on."""
        return asyncio.get_running_loop().time()

    def force_leave(self, name: str) -> bool:
        """Mark a failed member as left (Consul's force-leave); False if unknown."""
        assert self.core is not None
        out = self.core.force_leave(name, asyncio.get_running_loop().time())
        self._apply(out)
        return self.core.member(name) is not None

    # --- core plumbing -----------------------------------------------------------------------

    def _apply(self, out: Output) -> None:
        if self._closed:
            return
        for pkt in out.packets:
            self._send_packet(pkt.addr, pkt.data)
        for req in out.streams:
            self._spawn(self._run_stream(req), f"gossip-stream-{req.id}")
        for ping in out.pings:
            self._m_probe.observe(ping.rtt_s * 1000.0)
            self._on_ping(ping)
        for event in out.events:
            if (self.coordinates is not None and isinstance(event, MemberEvent)
                    and event.kind is MemberEventKind.REAP):
                self.coordinates.forget(event.member.name)
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception:
                    logger.exception("gossip: event handler failed for %r", event)
        self._wake.set()

    def _on_ping(self, ping: PingComplete) -> None:
        if self.coordinates is None or self.core is None:
            return
        if self.coordinates.observe(ping.name, ping.rtt_s, ping.payload) is None:
            if ping.payload:
                logger.debug("gossip: rejected coordinate from %s (rtt %.6fs)", ping.name, ping.rtt_s)
            return
        self.core.set_ack_payload(self.coordinates.ack_payload())

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send_packet(self, addr: Address, data: bytes) -> None:
        if self._udp is None:
            return
        if not _sendable(addr):
            # A peer-supplied address (a ping-req target, an alive message): a host name would be
            # resolved by a blocking lookup on the event loop, and a NUL or an impossible port
            # makes the datagram transport close itself, so it is dropped here.
            logger.debug("gossip: not sending to %r: not an IP address and port", addr)
            return
        if self.keyring is not None:
            data = self.keyring.encrypt(data)
        self._m_udp_sent.incr(len(data))
        try:
            self._udp.sendto(data, addr)
        except OSError as exc:
            logger.debug("gossip: send to %s:%d failed: %s", addr[0], addr[1], exc)

    def _open(self, data: bytes, src: Address, what: str) -> bytes | None:
        if self.keyring is None:
            return data
        try:
            return self.keyring.decrypt(data)
        except DecryptError as exc:
            logger.warning("gossip: dropping %s from %s:%d: %s", what, src[0], src[1], exc, extra=MALFORMED)
            return None

    def _on_datagram(self, data: bytes, src: Address) -> None:
        if self.core is None or self._closed:
            return
        self._m_udp_received.incr(len(data))
        plain = self._open(data, src, "packet")
        if plain is None:
            return
        self._apply(self.core.handle_packet(plain, src, asyncio.get_running_loop().time()))

    async def _timer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.core is not None
        while True:
            self._wake.clear()
            delay = self.core.next_deadline() - loop.time()
            if delay > 0:
                try:
                    async with asyncio.timeout(min(delay, 5.0)):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            now = loop.time()
            self._apply(self.core.tick(now))
            self._report_core_metrics()
            if self.core.next_deadline() <= now:
                # Something stays due that tick does not clear (a passed leave deadline): do not
                # spin the loop on it.
                await asyncio.sleep(0.01)

    async def _queue_depth_loop(self) -> None:
        """memberlist's checkBroadcastQueueDepth: sample the member-state queue's depth."""
        while True:
            await asyncio.sleep(self.queue_check_interval_s)
            if self.core is not None:
                self._m_queue.observe(self.core.queue_depth(MEMBERLIST))

    def queue_depth(self, kind: str) -> int:
        """Broadcasts of ``kind`` (``gossip.broadcast.KINDS``) queued now (0 before `start`)."""
        return self.core.queue_depth(kind) if self.core is not None else 0

    def _report_member_states(self) -> None:
        if self.core is None:
            return
        counts = dict.fromkeys(self._m_instances, 0)
        for member in self.core.members():
            counts[member.state] += 1
        for state, gauge in self._m_instances.items():
            gauge.set(float(counts[state]))

    def _report_core_metrics(self) -> None:
        assert self.core is not None
        self._m_health.set(float(self.core.health_score))
        degraded = self.core.degraded_probes
        if degraded != self._degraded_reported:
            self._m_degraded.incr(degraded - self._degraded_reported)
            self._degraded_reported = degraded
        counts = self.core.msg_counts
        for kind, counter in self._m_msgs.items():
            grown = counts[kind] - self._msgs_reported[kind]
            if grown:
                counter.incr(grown)
                self._msgs_reported[kind] = counts[kind]

    # --- streams -----------------------------------------------------------------------------

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes:
        (size,) = _LEN.unpack(await reader.readexactly(4))
        if size > MAX_FRAME:
            raise ConnectionError(f"frame of {size} bytes is too large")
        return await reader.readexactly(size)

    def _frame(self, data: bytes) -> bytes:
        if self.keyring is not None:
            data = self.keyring.encrypt(data)
        return _LEN.pack(len(data)) + data

    async def _run_stream(self, req: StreamRequest) -> None:
        loop = asyncio.get_running_loop()
        push_pull = req.kind is StreamKind.PUSH_PULL
        if push_pull:
            started = time.perf_counter()
            self._report_member_states()  # what memberlist reports as it sends its state
        reply: bytes | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout_at(req.deadline):
                self._m_tcp_connect.incr()
                reader, writer = await asyncio.open_connection(req.addr[0], req.addr[1])
                writer.write(self._frame(req.data))
                await writer.drain()
                reply = self._open(await self._read_frame(reader), req.addr, "stream reply")
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ConnectionError) as exc:
            logger.debug("gossip: %s stream to %s:%d failed: %s", req.kind.value, *req.addr, exc)
        finally:
            if writer is not None:
                writer.close()
        refused: str | None = None
        if self.core is not None:
            out = self.core.handle_stream_result(req.id, reply, loop.time())
            refused = out.refused
            self._apply(out)
        if push_pull:
            self._m_push_pull.since(started)
        waiter = self._stream_waiters.pop(req.id, None)
        if waiter is not None and not waiter.done():
            # A refused merge (conflicting node ID, wrong datacenter) is a failed join.
            waiter.set_result(reply is not None and refused is None)

    async def _serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        src: Address = (peer[0], peer[1])
        self._m_tcp_accept.incr()
        try:
            async with asyncio.timeout(self.config.tcp_timeout_s):
                data = self._open(await self._read_frame(reader), src, "stream")
                if data is None or self.core is None:
                    return
                out = self.core.handle_stream(data, src, asyncio.get_running_loop().time())
                reply = out.reply
                self._apply(out)
                if reply is not None:
                    writer.write(self._frame(reply))
                    await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ConnectionError) as exc:
            logger.debug("gossip: inbound stream from %s:%d failed: %s", src[0], src[1], exc)
        finally:
            writer.close()
