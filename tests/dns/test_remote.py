"""DNS on client agents (`dns_remote.answer_on_client`): answers built from a server's catalog slice.

For every query form, a DNS server that fetches the slice a question needs through the named
query (over a msgpack round trip, as on the wire) must answer exactly as a server answering from
its whole store, with the same seeded RNG.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import msgpack
import pytest
from dnslib import DNSRecord
from proconsul.config import RuntimeConfig
from proconsul.dns.answer import Question
from proconsul.dns.remote import catalog_need
from proconsul.dns.server import DNSServer
from proconsul.rpc_api import QueryMeta, QueryOptions
from proconsul.server.rpc import Server
from proconsul.server.single import SingleNodeLog
from proconsul.state import prepared_query as pq
from proconsul.state.fsm import FSM
from proconsul.state.records import HealthCheck, Node, PreparedQuery, ServiceInstance
from proconsul.state.store import Store


class WireServer:
    """A client agent's view of `server`: named queries only, results through msgpack."""

    catalog_is_remote = True

    def __init__(self, server: Server) -> None:
        self.server = server
        self.queries: list[tuple[str, dict[str, Any]]] = []
        # Anything reading the local store would find it empty, as on a real client.
        self.store = Store()

    async def query(self, name: str, args: dict[str, Any], opts: QueryOptions) -> tuple[QueryMeta, Any]:
        self.queries.append((name, args))
        meta, result = await self.server.query(name, msgpack.unpackb(msgpack.packb(args)), opts)
        return meta, msgpack.unpackb(msgpack.packb(result, use_bin_type=True), raw=False)

    async def read(self, *args: object, **kwargs: object) -> Any:
        raise AssertionError("a client agent's DNS must not read its own store")

    async def list_datacenters(self) -> list[str]:
        return await self.server.list_datacenters()


def catalog() -> Server:
    store = Store()
    server = Server(store, SingleNodeLog(FSM(store), "127.0.0.1:8300", "id-1", "srv1"), "dc1")
    store.ensure_registration(1, Node("srv1", address="127.0.0.1", meta={"rack": "r1"}),
                              ServiceInstance("srv1", "consul", "consul", port=8300),
                              (HealthCheck("srv1", "serfHealth", status="passing"),), False)
    for i, (status, tags) in enumerate((("passing", ("v1",)), ("passing", ("v2",)), ("critical", ("v1",)),
                                        ("warning", ())), start=1):
        node = Node(f"Node{i}", address=f"10.0.0.{i}")
        svc = ServiceInstance(node.node, f"web-{i}", "Web" if i == 2 else "web", tags=tags, port=8000 + i)
        check = HealthCheck(node.node, f"service:web-{i}", status=status, service_id=f"web-{i}")
        store.ensure_registration(10 + i, node, svc, (check, HealthCheck(node.node, "serfHealth", status="passing")),
                                  False)
    # A node whose own health is critical takes its services out of DNS.
    store.ensure_registration(20, Node("down", address="10.0.1.1"), ServiceInstance("down", "web-d", "web", port=1),
                              (HealthCheck("down", "serfHealth", status="critical"),), False)
    store.ensure_registration(21, Node("named", address="db.example.com"),
                              ServiceInstance("named", "db", "db", address="10.9.9.9", port=5432), (), False)
    # Prepared queries: a static one and a template ("v1-web" asks for tag v1 of web).
    static = pq.normalize({"Name": "webq", "Service": {"Service": "web"}, "DNS": {"TTL": "3s"}})
    store.prepared_query_set(30, PreparedQuery("11111111-1111-1111-1111-111111111111", "webq", "", static))
    template = pq.normalize({"Name": "v", "Template": {"Type": "name_prefix_match", "Regexp": "^(v[0-9])-(.*)$"},
                             "Service": {"Service": "${match(2)}", "Tags": ["${match(1)}"]}})
    store.prepared_query_set(31, PreparedQuery("22222222-2222-2222-2222-222222222222", "v", "", template))
    return server


QUESTIONS = [
    ("web.service.consul", "A"), ("web.service.consul", "SRV"), ("WEB.service.consul", "ANY"),
    ("_web._tcp.service.consul", "SRV"), ("_web._v1.service.consul", "SRV"), ("v2.web.service.consul", "A"),
    ("web.service.dc1.consul", "A"), ("web.service.dc2.consul", "A"), ("web.service.consul", "TXT"),
    ("db.service.consul", "A"), ("db.service.consul", "SRV"), ("nosuch.service.consul", "A"),
    ("node1.node.consul", "A"), ("node1.node.consul", "TXT"), ("srv1.node.consul", "ANY"),
    ("named.node.consul", "A"), ("srv1.node.consul", "MX"), ("ghost.node.consul", "A"),
    ("consul.service.consul", "SRV"), ("consul", "SOA"), ("consul", "NS"), ("web.service.consul", "NS"),
    ("1.0.0.10.in-addr.arpa", "PTR"), ("9.9.9.10.in-addr.arpa", "PTR"), ("7f000001.addr.consul", "A"),
    ("foo.query.consul", "A"), ("consul", "A"), ("bar.consul", "A"),
    ("webq.query.consul", "A"), ("_webq._tcp.query.consul", "SRV"), ("v1-web.query.consul", "SRV"),
    ("webq.query.consul", "TXT"),
]


@pytest.mark.parametrize(("name", "qtype"), QUESTIONS)
def test_client_answer_equals_server_answer(name: str, qtype: str) -> None:
    cfg = RuntimeConfig()
    server = catalog()
    local = DNSServer(server, lambda: cfg, rng=random.Random(7))
    remote_server = WireServer(server)
    remote = DNSServer(remote_server, lambda: cfg, rng=random.Random(7))  # type: ignore[arg-type]
    q = DNSRecord.question(name, qtype)
    q.header.id = 4242
    for _ in range(3):  # the same RNG draws on both sides, query after query
        want = asyncio.run(local.handle(q.pack(), False))
        got = asyncio.run(remote.handle(q.pack(), False))
        assert want is not None and got is not None
        # The SOA serial is the wall clock: compare records, not bytes, for SOA-bearing answers.
        w, g = DNSRecord.parse(want), DNSRecord.parse(got)
        assert (w.header.rcode, [str(r) for r in w.rr], [str(r) for r in w.ar]) == (
            g.header.rcode, [str(r) for r in g.rr], [str(r) for r in g.ar]), (name, qtype)
        assert [r.rtype for r in w.auth] == [r.rtype for r in g.auth]


def test_prepared_query_answers_from_the_execution() -> None:
    cfg = RuntimeConfig()
    dns = DNSServer(catalog(), lambda: cfg, rng=random.Random(3))

    def ask(name: str, qtype: str) -> DNSRecord:
        raw = asyncio.run(dns.handle(DNSRecord.question(name, qtype).pack(), False))
        assert raw is not None
        return DNSRecord.parse(raw)

    r = ask("webq.query.consul", "A")
    # Healthy instances of web in any case (Web on Node2 too), warning included; the query's TTL.
    assert sorted(str(x.rdata) for x in r.rr) == ["10.0.0.1", "10.0.0.2", "10.0.0.4"]
    assert {x.ttl for x in r.rr} == {3}
    srv = ask("v1-web.query.consul", "SRV")
    assert [(x.rdata.port, str(x.rdata.target)) for x in srv.rr] == [(8001, "node1.node.dc1.consul.")]
    assert srv.rr[0].ttl == 0  # no DNS.TTL on the template and no service_ttl: node_ttl (0)
    assert ask("nope.query.consul", "A").header.rcode == 3  # NXDOMAIN
    assert ask("webq.query.dc9.consul", "A").header.rcode == 3  # no path to dc9


def test_catalog_need_names_the_slice() -> None:
    def need(name: str, qtype: int) -> dict[str, object]:
        return catalog_need(Question(name, qtype, "consul."), "dc1")

    from dnslib import QTYPE

    assert need("web.service.consul.", QTYPE.A) == {"service": "web"}
    assert need("v1.web.service.dc1.consul.", QTYPE.SRV) == {"service": "web"}
    assert need("_web._tcp.consul.", QTYPE.SRV) == {"service": "web"}
    assert need("n1.node.consul.", QTYPE.A) == {"node": "n1"}
    assert need("consul.", QTYPE.SOA) == {"service": "consul"}
    assert need("1.0.0.10.in-addr.arpa.", QTYPE.PTR) == {"all": True}
    assert need("web.service.dc2.consul.", QTYPE.A) == {}
    assert need("7f000001.addr.consul.", QTYPE.A) == {}
