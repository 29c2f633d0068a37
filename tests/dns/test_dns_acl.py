"""DNS with ACLs on (`dns.acl`): the DNS token sees an instance only when it may read both its
node and its service (Consul's filterCheckServiceNodes), for service answers, node answers and
prepared-query answers (filtered by the query's own token when it has one), in-process without
sockets against a real `Store` and `Server` over the dev log."""

from __future__ import annotations

import asyncio
import random

from dnslib import QTYPE, RCODE, DNSRecord
from proconsul.acl.authorizer import Authorizer
from proconsul.acl.rules import parse
from proconsul.config import RuntimeConfig
from proconsul.dns.server import DNSServer
from proconsul.server.rpc import Server
from proconsul.server.single import SingleNodeLog
from proconsul.state import prepared_query as pq
from proconsul.state.fsm import FSM
from proconsul.state.records import HealthCheck, Node, PreparedQuery, ServiceInstance
from proconsul.state.store import Store

QUERY_TOKEN = "q-token"


def authz(rules: str) -> Authorizer:
    return Authorizer(parse(rules), default_allow=False)


def setup() -> tuple[DNSServer, list[Authorizer]]:
    """Web on node1 and node2 (10.0.0.1, .2), a prepared query `webq` for it without a token and
    `tokq` with one that may read node2 only; DNS answers with `holder[0]`."""
    store = Store()
    server = Server(store, SingleNodeLog(FSM(store), "127.0.0.1:8300", "id-1", "srv1"), "dc1")
    store.ensure_registration(1, Node("srv1", address="127.0.0.1"), ServiceInstance("srv1", "consul", "consul", port=8300),
                              (HealthCheck("srv1", "serfHealth", status="passing"),), False)
    for i in (1, 2):
        node = Node(f"node{i}", address=f"10.0.0.{i}")
        store.ensure_registration(10 + i, node, ServiceInstance(node.node, f"web-{i}", "web", port=8000 + i),
                                  (HealthCheck(node.node, "serfHealth", status="passing"),), False)
    store.prepared_query_set(20, PreparedQuery("11111111-1111-1111-1111-111111111111", "webq", "",
                                               pq.normalize({"Name": "webq", "Service": {"Service": "web"}})))
    store.prepared_query_set(21, PreparedQuery("22222222-2222-2222-2222-222222222222", "tokq", "", pq.normalize(
        {"Name": "tokq", "Token": QUERY_TOKEN, "Service": {"Service": "web"}})))
    holder = [authz("")]
    tokens = {QUERY_TOKEN: authz('node "node2" { policy = "read" } service "web" { policy = "read" }')}

    async def current() -> Authorizer:
        return holder[0]

    async def resolve(secret: str) -> Authorizer:
        return tokens[secret]

    cfg = RuntimeConfig()
    dns = DNSServer(server, lambda: cfg, rng=random.Random(1), acl=current, resolve=resolve)
    return dns, holder


def ask(dns: DNSServer, name: str, qtype: str) -> DNSRecord:
    raw = asyncio.run(dns.handle(DNSRecord.question(name, qtype).pack(), True))
    assert raw is not None
    return DNSRecord.parse(raw)


def addresses(reply: DNSRecord) -> list[str]:
    return sorted(str(r.rdata) for r in reply.rr if r.rtype == QTYPE.A)


def srv_targets(reply: DNSRecord) -> list[str]:
    return sorted(str(r.rdata.target) for r in reply.rr if r.rtype == QTYPE.SRV)


def test_service_answers_need_node_read_on_each_instance() -> None:
    dns, holder = setup()
    # Service read alone: every instance is on a node the token cannot read, so there is none.
    holder[0] = authz('service "web" { policy = "read" }')
    for qtype in ("A", "SRV", "TXT"):
        assert ask(dns, "web.service.consul", qtype).header.rcode == RCODE.NXDOMAIN, qtype
    assert ask(dns, "_web._tcp.service.consul", "SRV").header.rcode == RCODE.NXDOMAIN
    # Node read on node1 only: node1's instance, not node2's.
    holder[0] = authz('service "web" { policy = "read" } node "node1" { policy = "read" }')
    assert addresses(ask(dns, "web.service.consul", "A")) == ["10.0.0.1"]
    assert srv_targets(ask(dns, "web.service.consul", "SRV")) == ["node1.node.dc1.consul."]
    # node_prefix "": both (a new Authorizer: the answer cache made for the last one is not reused).
    holder[0] = authz('service "web" { policy = "read" } node_prefix "" { policy = "read" }')
    assert addresses(ask(dns, "web.service.consul", "A")) == ["10.0.0.1", "10.0.0.2"]
    # ... and the narrower token again, whose answer is not the wider one's cache entry.
    holder[0] = authz('service "web" { policy = "read" } node "node2" { policy = "read" }')
    assert addresses(ask(dns, "web.service.consul", "A")) == ["10.0.0.2"]
    # A node read without the service's read: the question itself is refused.
    holder[0] = authz('node_prefix "" { policy = "read" }')
    assert ask(dns, "web.service.consul", "A").header.rcode == RCODE.NXDOMAIN


def test_node_answers_need_node_read() -> None:
    dns, holder = setup()
    holder[0] = authz('node "node1" { policy = "read" }')
    assert addresses(ask(dns, "node1.node.consul", "A")) == ["10.0.0.1"]
    assert ask(dns, "node2.node.consul", "A").header.rcode == RCODE.NXDOMAIN


def test_prepared_query_answers_filtered_by_the_query_token_else_the_dns_token() -> None:
    dns, holder = setup()
    # No token on the query: the DNS token's rights, node by node.
    holder[0] = authz('service "web" { policy = "read" } node "node1" { policy = "read" }')
    assert addresses(ask(dns, "webq.query.consul", "A")) == ["10.0.0.1"]
    holder[0] = authz('service "web" { policy = "read" }')
    assert ask(dns, "webq.query.consul", "A").header.rcode == RCODE.NXDOMAIN
    holder[0] = authz('service_prefix "" { policy = "read" } node_prefix "" { policy = "read" }')
    assert addresses(ask(dns, "webq.query.consul", "A")) == ["10.0.0.1", "10.0.0.2"]
    # The query's own token decides for it, whatever the DNS token may read.
    assert addresses(ask(dns, "tokq.query.consul", "A")) == ["10.0.0.2"]
    holder[0] = authz("")
    assert srv_targets(ask(dns, "tokq.query.consul", "SRV")) == ["node2.node.dc1.consul."]
