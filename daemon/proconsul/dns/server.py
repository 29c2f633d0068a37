"""The DNS server: UDP and TCP listeners on `ports.dns` and the per-query pipeline.

Owns the sockets and tasks of the DNS interface (asyncio datagram endpoint and stream server on
the same port, on each address of `addresses.dns` or `client_addr`), and the order of a query:
decode and check (`dns.wire`), pick the domain, answer names in the Consul domain from a stale
read of the state store (`dns.answer`, through `Server.read`; on client agents, from the catalog
slice a server sends, see `dns.remote`), forward other names to the recursors (`dns.recursor`),
and size the reply for the transport (`dns.wire`).

Hot path: a request that repeats a service question answered before (same bytes after the ID)
is answered by `fast_reply` from the reply cache (`dns.fastpath`), in the datagram callback or
the TCP loop, when the entry still holds (config object, the service's store index, a local read
allowed by `allow_stale`/`max_stale` or leadership); everything else takes the full pipeline.

Concurrency: each other UDP datagram and each TCP connection is served by its own task, owned by
the server and cancelled on stop, so a slow recursor delays only the query waiting for it. At most
`max_inflight` UDP queries run at once; datagrams beyond that are dropped (the client retries),
which bounds memory under a flood. TCP connections are closed after `tcp_idle_s` without a query.

Consul behaviours kept here: a name outside the domain with no recursors is REFUSED; when every
recursor fails the answer is SERVFAIL; RA is set only when recursors exist; read errors (no
leader with `allow_stale=false`) answer SERVFAIL. The config is read per query through a
callable, so a reload that replaces the agent's config applies to the next query.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from dnslib import RCODE, DNSLabel

from proconsul.acl.authorizer import Authorizer
from proconsul.config import RuntimeConfig
from proconsul.dns import acl as dns_acl
from proconsul.dns import fastpath
from proconsul.dns import recursor as dns_recursor
from proconsul.dns import wire as dns_wire
from proconsul.dns.answer import Answer, AnswerCache, Question, Resolver, Visibility, match_domain
from proconsul.dns.query import answer_prepared
from proconsul.dns.remote import answer_on_client, answer_remote
from proconsul.listen import listen_backlog
from proconsul.metrics import Metrics
from proconsul.rpc_api import QueryOptions, RPCError
from proconsul.server.rpc import Server
from proconsul.state import protection
from proconsul.state.prepared_query import REDACTED_TOKEN
from proconsul.state.store import Store

logger = logging.getLogger(__name__)

CATALOG_TABLES = ("nodes", "services", "checks")


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, owner: DNSServer) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        transport = self.transport
        if transport is None:
            return
        # A repeated service question is answered here, in the callback: no task, no parsing.
        reply = self.owner.fast_reply(data, False)
        if reply is not None:
            if not transport.is_closing():
                transport.sendto(reply, addr)
            return
        self.owner.spawn_udp(transport, data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from earlier replies (client went away) must not stop the listener.
        logger.debug("dns: udp error: %r", exc)


class DNSServer:
    """Serves the Consul domain; `handle` is the transport-independent pipeline."""

    def __init__(
        self,
        server: Server,
        config: Callable[[], RuntimeConfig],
        rng: random.Random | None = None,
        max_inflight: int = 1024,
        tcp_idle_s: float = 10.0,
        metrics: Metrics | None = None,
        node_name: str = "",
        acl: Callable[[], Awaitable[Authorizer]] | None = None,
        resolve: Callable[[str], Awaitable[Authorizer]] | None = None,
    ) -> None:
        self.server = server
        # With ACLs on: the Authorizer of the agent's DNS token (else its default token, else
        # anonymous), which every question and the instances of every answer are checked
        # against (dns.acl), as Consul's DNS uses that token; `resolve` turns a prepared query's
        # own token into its Authorizer (its execution is filtered by it instead).
        self.acl = acl
        self.resolve = resolve
        self.config = config
        self.rng = rng or random.Random()
        self.max_inflight = max_inflight
        self.tcp_idle_s = tcp_idle_s
        self.node_name = node_name  # `_agent` for prepared queries' Near
        # Service answers per question, invalidated by the store's per-service index.
        self.cache = AnswerCache()
        # Whole encoded replies to repeated service questions (dns.fastpath), checked against the
        # same index per query. Off with ACLs: an answer then depends on the token's Authorizer.
        self.replies = fastpath.ReplyCache()
        self.fast = acl is None
        self.protection_log = protection.ProtectionLog(logger, "dns")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.base_events.Server] = []
        # Consul's timers for questions in its domains, labelled with this agent's node name.
        m = metrics or Metrics()  # without a registry (tests): a private one nobody reads
        self._m_domain = m.sample(
            "dns", "domain_query", help="ms to answer a question in the Consul domain", labels=("node",)
        ).with_labels(node_name)
        self._m_ptr = m.sample(
            "dns", "ptr_query", help="ms to answer a reverse (PTR) lookup", labels=("node",)
        ).with_labels(node_name)

    # ------------------------------------------------------------------------- life cycle

    async def start(self, addresses: Iterable[str], port: int) -> None:
        loop = asyncio.get_running_loop()
        for host in addresses:
            transport, _ = await loop.create_datagram_endpoint(lambda: _UDP(self), local_addr=(host, port))
            self._udp.append(transport)
            self._tcp.append(await asyncio.start_server(self._serve_tcp, host, port, backlog=listen_backlog()))
            logger.info("dns: listening on %s:%d (udp, tcp)", host, port)

    async def stop(self) -> None:
        for transport in self._udp:
            transport.close()
        for srv in self._tcp:
            srv.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for srv in self._tcp:
            await srv.wait_closed()
        self._udp.clear()
        self._tcp.clear()

    def _own(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --------------------------------------------------------------------------- transports

    def spawn_udp(self, transport: asyncio.DatagramTransport, data: bytes, addr: Any) -> None:
        if len(self._tasks) >= self.max_inflight:
            return  # overloaded: drop, the client's retry comes later
        self._own(asyncio.get_running_loop().create_task(self._serve_udp(transport, data, addr)))

    async def _serve_udp(self, transport: asyncio.DatagramTransport, data: bytes, addr: Any) -> None:
        reply = await self.safe_handle(data, tcp=False, source_ip=str(addr[0]) if addr else "")
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source_ip = str(peer[0]) if peer else ""
        task = asyncio.current_task()
        if task is not None:
            self._own(task)
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: a stop's cancellation arriving with a query
                    # must end this loop, not be lost to it (CPython gh-86296).
                    async with asyncio.timeout(self.tcp_idle_s):
                        prefix = await reader.readexactly(2)
                    (length,) = struct.unpack("!H", prefix)
                    async with asyncio.timeout(self.tcp_idle_s):
                        data = await reader.readexactly(length)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                reply = self.fast_reply(data, True)
                if reply is None:
                    reply = await self.safe_handle(data, tcp=True, source_ip=source_ip)
                if reply is None:
                    return  # undecodable: the stream can no longer be trusted
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()

    # ---------------------------------------------------------------------------- fast path

    def fast_reply(self, data: bytes, tcp: bool) -> bytes | None:
        """The reply from the reply cache when `data` repeats a remembered question that still
        holds; None: take the full path. Never raises."""
        entry = self.replies.get(data, tcp)
        if entry is None:
            return None
        try:
            cfg = self.config()
            if entry.cfg is not cfg:
                return None
            server = self.server
            c = server.consensus
            dnscfg = cfg.dns_config
            if dnscfg.allow_stale:
                # The full path would re-ask the leader for a read this stale (max_stale).
                if c.last_contact_ms() > dnscfg.max_stale_s * 1000:
                    return None
            elif not (c.is_leader() and (c.ready_for_reads() or server.unsafe_reads_before_first_apply)):
                return None
            store = server.store
            if entry.tables is not store.table_index or self.cache.service_index(store, entry.service) != entry.index:
                return None
            start = time.perf_counter()
            reply = entry.reply(data, self.rng, self.replies)
            self._m_domain.since(start)
            return reply
        except Exception:
            logger.exception("dns: fast path failed; answering on the full path")
            self.replies.clear()
            return None

    def _remember(
        self, data: bytes, tcp: bool, req: dns_wire.Request, question: Question, answer: Answer,
        limits: dns_wire.Limits, recursion_available: bool,
    ) -> None:
        if not self.fast or answer.cached is None or self.server.catalog_is_remote:
            return
        entry, service = answer.cached
        self.replies.remember(
            data, tcp, fastpath.Entry(entry, service, question, req, limits, recursion_available)
        )

    # ----------------------------------------------------------------------------- pipeline

    async def safe_handle(self, data: bytes, tcp: bool, source_ip: str = "") -> bytes | None:
        try:
            return await self.handle(data, tcp, source_ip)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug in answering one query must not take the listener down; log and drop.
            logger.exception("dns: failed to answer a query")
            return None

    async def handle(self, data: bytes, tcp: bool, source_ip: str = "") -> bytes | None:
        """The reply to one request (None: send nothing)."""
        decoded = dns_wire.decode(data)
        if isinstance(decoded, dns_wire.Reject):
            return decoded.reply
        req = decoded
        cfg = self.config()
        dnscfg = cfg.dns_config
        compress = not dnscfg.disable_compression
        can_recurse = bool(cfg.recursors)
        domain = match_domain(req.name, cfg)
        if domain is None:
            if not can_recurse:
                return dns_wire.simple_reply(req, RCODE.REFUSED, False, False, compress)
            return await self._recurse(cfg, req, data, tcp)
        start = time.perf_counter()
        try:
            return await self._handle_domain(req, data, tcp, cfg, domain, source_ip)
        finally:
            reverse = req.name.endswith(("in-addr.arpa.", "ip6.arpa."))
            (self._m_ptr if reverse else self._m_domain).since(start)

    async def _handle_domain(
        self, req: dns_wire.Request, data: bytes, tcp: bool, cfg: RuntimeConfig, domain: str, source_ip: str = ""
    ) -> bytes | None:
        dnscfg = cfg.dns_config
        compress = not dnscfg.disable_compression
        can_recurse = bool(cfg.recursors)
        limits = dns_wire.Limits(
            tcp=tcp,
            enable_truncate=dnscfg.enable_truncate,
            compress=compress,
            udp_answer_limit=dnscfg.udp_answer_limit,
            a_record_limit=dnscfg.a_record_limit,
        )
        try:
            question = Question(req.name, req.qtype, domain, _spelled(req))
            authz: Authorizer | None = None
            if self.acl is not None:
                authz = await self.acl()
                if not dns_acl.allowed(authz, question):
                    return dns_wire.simple_reply(req, RCODE.NXDOMAIN, True, can_recurse, compress)
            visible = dns_acl.visibility(authz) if authz is not None else None
            answer = await self._answer(cfg, question, dns_wire.group_limit(req, limits), visible)
            if answer.prepared is not None:

                async def execution_visibility(query: dict[str, Any]) -> Visibility | None:
                    return await self._execution_visibility(authz, query)

                answer = await answer_prepared(
                    self.server, cfg, question, answer, self.rng, time.time(),
                    dns_wire.group_limit(req, limits), self.node_name, source_ip,
                    visibility=execution_visibility if authz is not None else None,
                )
        except RPCError as exc:
            logger.debug("dns: read failed: %s", exc)
            return dns_wire.simple_reply(req, RCODE.SERVFAIL, False, can_recurse, compress)
        if answer.recurse and can_recurse:
            return await self._recurse(cfg, req, data, tcp)
        reply = dns_wire.encode_answer(req, answer, can_recurse, limits)
        if answer.cached is not None:
            self._remember(data, tcp, req, question, answer, limits, can_recurse)
        return reply

    async def _execution_visibility(self, authz: Authorizer | None, query: dict[str, Any]) -> Visibility | None:
        """Which instances of an executed prepared query DNS may answer: those the query's own
        token may see, else the DNS token's. None: the server that ran it filtered them (it
        hides the query's token when it has one)."""
        token = str(query.get("Token") or "")
        if authz is None or token == REDACTED_TOKEN:
            return None
        if token and self.resolve is not None:
            try:
                authz = await self.resolve(token)
            except Exception as exc:  # a deleted token: Consul's execution fails; answer nothing
                logger.debug("dns: prepared query token not usable: %s", exc)
                return dns_acl.sees_nothing()
        return dns_acl.visibility(authz)

    async def _answer(self, cfg: RuntimeConfig, q: Question, max_groups: int = 0,
                      visible: Visibility | None = None) -> Answer:
        if self.server.catalog_is_remote:
            return await self._answer_on_client(cfg, q, max_groups, visible)
        resolver = Resolver(
            cfg, cfg.datacenter, self.rng, time.time(), self.cache, max_groups, protection_log=self.protection_log,
            visible=visible,
        )

        def run(store: Store) -> tuple[int, Answer]:
            return 0, resolver.resolve(store, q)

        stale = cfg.dns_config.allow_stale
        meta, answer = await self.server.read(QueryOptions(allow_stale=stale), run, CATALOG_TABLES)
        if stale and meta.last_contact_ms > cfg.dns_config.max_stale_s * 1000:
            # Too stale (Consul's max_stale): the leader answers, through the named read client
            # agents use (a follower cannot run a leader read itself).
            leader_cfg = dataclasses.replace(cfg, dns_config=dataclasses.replace(cfg.dns_config, allow_stale=False))
            return await answer_on_client(self.server, leader_cfg, q, self.rng, time.time(), max_groups, visible)
        result: Answer = answer
        if result.remote is not None:
            # A name in another datacenter: its records come over the WAN (dns.remote).
            result = await answer_remote(self.server, cfg, q, result, self.rng, resolver.now, max_groups)
        return result

    async def _answer_on_client(self, cfg: RuntimeConfig, q: Question, max_groups: int,
                                visible: Visibility | None = None) -> Answer:
        """A client agent: the catalog slice the question needs comes from a server (dns.remote)."""
        return await answer_on_client(self.server, cfg, q, self.rng, time.time(), max_groups, visible)

    async def _recurse(self, cfg: RuntimeConfig, req: dns_wire.Request, data: bytes, tcp: bool) -> bytes:
        dnscfg = cfg.dns_config
        reply = await dns_recursor.forward(
            data,
            list(cfg.recursors),
            tcp,
            dnscfg.recursor_timeout_s,
            dnscfg.recursor_strategy,
            self.rng,
        )
        if reply is None:
            return dns_wire.simple_reply(req, RCODE.SERVFAIL, False, True, not dnscfg.disable_compression)
        return reply


def _spelled(req: dns_wire.Request) -> str:
    """The question name as the client spelled it, when its case differs from `req.name` and it
    reads back to the same labels (else "": records use the lower-cased name)."""
    label = req.record.questions[0].qname
    text = str(label)
    if not text.endswith("."):
        text += "."
    if text == req.name:
        return ""
    try:
        if DNSLabel(text).label != label.label:
            return ""
    except Exception:
        return ""
    return text
