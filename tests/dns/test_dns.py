"""DNS unit tests: query forms, health, sizes and malformed input, in-process without sockets.

The pipeline (`DNSServer.handle`) runs against a real `Store` and `Server` over the dev log, so
these tests cover dns_answer and dns_wire together with a seeded RNG (deterministic shuffles).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import struct
import time

import dns.message as dns_pymessage
import pytest
from dnslib import AAAA, CNAME, EDNS0, MX, NS, PTR, QTYPE, RCODE, RR, SOA, SRV, TXT, A, DNSRecord, EDNSOption
from hypothesis import HealthCheck as HypothesisHealthCheck
from hypothesis import given, settings
from hypothesis import strategies as st
from proconsul.config import DNSConfig, RuntimeConfig
from proconsul.dns import wire as dns_wire
from proconsul.dns.answer import Answer, Group, encode_rfc1464, ip_from_arpa, service_ttl
from proconsul.dns.server import DNSServer
from proconsul.server.rpc import Server
from proconsul.server.single import SingleNodeLog
from proconsul.state.fsm import FSM
from proconsul.state.records import HealthCheck, Node, ServiceInstance
from proconsul.state.store import Store


def make_server(
    cfg: RuntimeConfig | None = None, seed: int = 1
) -> tuple[DNSServer, Store, list[RuntimeConfig]]:
    store = Store()
    log = SingleNodeLog(FSM(store), "127.0.0.1:8300", "id-1", "srv1")
    server = Server(store, log, "dc1")
    holder = [cfg or RuntimeConfig()]
    store.ensure_registration(
        1,
        Node("srv1", address="127.0.0.1", meta={"rack": "r1", "rfc1035-raw": "plain"}),
        ServiceInstance("srv1", "consul", "consul", port=8300),
        (HealthCheck("srv1", "serfHealth", status="passing"),),
        False,
    )
    return DNSServer(server, lambda: holder[0], rng=random.Random(seed)), store, holder


def add_instance(
    store: Store, i: int, status: str = "passing", tags: tuple[str, ...] = (), **svc: object
) -> None:
    node = Node(f"node{i}", address=f"10.0.{i // 256}.{i % 256}")
    service = ServiceInstance(node.node, f"web-{i}", "web", tags=tags, port=8000 + i, **svc)  # type: ignore[arg-type]
    check = HealthCheck(
        node.node, f"service:web-{i}", status=status, service_id=f"web-{i}", service_name="web"
    )
    store.ensure_registration(10 + i, node, service, (check,), False)


def ask(dns: DNSServer, name: str, qtype: str = "A", tcp: bool = False, edns: int | None = None) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    raw = asyncio.run(dns.handle(q.pack(), tcp))
    assert raw is not None
    reply = DNSRecord.parse(raw)
    assert reply.header.id == q.header.id
    return reply


def rtypes(records: list) -> list[str]:
    return [QTYPE[r.rtype] for r in records]


# ------------------------------------------------------------------------------- query forms


def test_node_lookup_a_and_txt_from_meta() -> None:
    dns, _, _ = make_server()
    r = ask(dns, "srv1.node.consul", "A")
    assert r.header.aa == 1 and r.header.rcode == RCODE.NOERROR
    assert [str(x.rdata) for x in r.rr] == ["127.0.0.1"]
    # enable_additional_node_meta_txt (default on) puts the meta in the additional section.
    assert sorted(str(x.rdata) for x in r.ar) == ['"plain"', '"rack=r1"']
    txt = ask(dns, "srv1.node.dc1.consul", "TXT")
    assert rtypes(txt.rr) == ["TXT", "TXT"] and not txt.ar
    anyq = ask(dns, "SRV1.node.dc1.dc.consul", "ANY")
    assert sorted(rtypes(anyq.rr)) == ["A", "TXT", "TXT"]


def test_unknown_names_are_nxdomain_with_soa() -> None:
    dns, _, _ = make_server()
    for name in ("nope.node.consul", "nope.service.consul", "foo.bar.consul", "consul", "x.query.consul"):
        r = ask(dns, name)
        assert r.header.rcode == RCODE.NXDOMAIN, name
        assert rtypes(r.auth) == ["SOA"]
        soa = r.auth[0].rdata
        assert str(soa.mname) == "ns.consul." and str(soa.rname) == "hostmaster.consul."


def test_other_datacenter_is_nxdomain_until_wan_forwarding() -> None:
    dns, _, _ = make_server()
    assert ask(dns, "consul.service.dc2.consul").header.rcode == RCODE.NXDOMAIN
    assert ask(dns, "consul.service.dc1.consul").header.rcode == RCODE.NOERROR


def test_nodata_for_a_known_name_of_another_type() -> None:
    dns, _, _ = make_server()
    r = ask(dns, "srv1.node.consul", "MX")
    assert r.header.rcode == RCODE.NOERROR and not r.rr and rtypes(r.auth) == ["SOA"]


def test_service_srv_targets_and_glue() -> None:
    dns, store, _ = make_server()
    add_instance(store, 1)
    add_instance(store, 2, address="192.168.1.9")
    r = ask(dns, "web.service.consul", "SRV")
    targets = sorted(str(x.rdata.target) for x in r.rr)
    assert targets == ["c0a80109.addr.dc1.consul.", "node1.node.dc1.consul."]
    assert all(x.rdata.priority == 1 and x.rdata.weight == 1 for x in r.rr)
    glue = {str(x.rname): str(x.rdata) for x in r.ar if x.rtype == QTYPE.A}
    assert glue == {"c0a80109.addr.dc1.consul.": "192.168.1.9", "node1.node.dc1.consul.": "10.0.0.1"}
    # The addr form resolves the SRV target.
    assert str(ask(dns, "c0a80109.addr.dc1.consul").rr[0].rdata) == "192.168.1.9"


def test_rfc2782_and_tags() -> None:
    dns, store, _ = make_server()
    add_instance(store, 1, tags=("primary",))
    add_instance(store, 2, tags=("replica",))
    assert len(ask(dns, "_web._tcp.service.consul", "SRV").rr) == 2  # _tcp: no tag filter
    assert len(ask(dns, "_web._tcp.consul", "SRV").rr) == 2  # `.service` optional for SRV
    assert [x.rdata.port for x in ask(dns, "_web._primary.service.consul", "SRV").rr] == [8001]
    assert [str(x.rdata) for x in ask(dns, "replica.web.service.consul").rr] == ["10.0.0.2"]
    assert ask(dns, "other.web.service.consul").header.rcode == RCODE.NXDOMAIN


def test_health_filtering_and_only_passing_and_weights() -> None:
    dns, store, holder = make_server()
    add_instance(store, 1)
    add_instance(store, 2, status="warning", weights=(10, 3))
    add_instance(store, 3, status="critical")
    r = ask(dns, "web.service.consul", "SRV")
    assert sorted((x.rdata.port, x.rdata.weight) for x in r.rr) == [(8001, 1), (8002, 3)]
    holder[0] = dataclasses.replace(holder[0], dns_config=DNSConfig(only_passing=True))
    assert [x.rdata.port for x in ask(dns, "web.service.consul", "SRV").rr] == [8001]


def test_ptr_and_zone_records() -> None:
    dns, _, _ = make_server()
    r = ask(dns, "1.0.0.127.in-addr.arpa", "PTR")
    assert [str(x.rdata) for x in r.rr] == ["srv1.node.dc1.consul."]
    ns = ask(dns, "consul", "NS")
    assert [str(x.rdata) for x in ns.rr] == ["srv1.node.dc1.consul."] and rtypes(ns.ar) == ["A"]
    soa = ask(dns, "consul", "SOA")
    assert rtypes(soa.rr) == ["SOA"] and rtypes(soa.auth) == ["NS"]
    assert ask(dns, "9.9.9.9.in-addr.arpa", "PTR").header.rcode == RCODE.NXDOMAIN


def test_alt_domain_echoes_the_query_domain() -> None:
    dns, _, _ = make_server(RuntimeConfig(alt_domain="example."))
    r = ask(dns, "srv1.node.example", "A")
    assert str(r.rr[0].rname) == "srv1.node.example."
    assert str(ask(dns, "nope.example").auth[0].rname) == "example."


def test_outside_domain_without_recursors_is_refused() -> None:
    dns, _, _ = make_server()
    r = ask(dns, "example.com")
    assert r.header.rcode == RCODE.REFUSED and r.header.ra == 0


def test_ttls_from_config() -> None:
    cfg = RuntimeConfig(dns_config=DNSConfig(node_ttl_s=7, service_ttl_s={"*": 5, "we*": 9, "db": 11}))
    assert (service_ttl(cfg, "web"), service_ttl(cfg, "db"), service_ttl(cfg, "api")) == (9, 11, 5)
    dns, store, _ = make_server(cfg)
    add_instance(store, 1)
    assert ask(dns, "web.service.consul").rr[0].ttl == 9
    assert ask(dns, "srv1.node.consul").rr[0].ttl == 7


def test_helpers() -> None:
    assert encode_rfc1464("a=b", "c`d") == "a`=b=c``d"
    assert str(ip_from_arpa("4.3.2.1.in-addr.arpa.")) == "1.2.3.4"
    assert ip_from_arpa("3.2.1.in-addr.arpa.") is None


# ------------------------------------------------------------------------------ sizes


def test_udp_truncation_and_tcp_full_set() -> None:
    dns, store, holder = make_server()
    for i in range(30):
        add_instance(store, i + 1)
    holder[0] = dataclasses.replace(holder[0], dns_config=DNSConfig(enable_truncate=False))
    plain = ask(dns, "web.service.consul", "SRV")
    assert len(plain.rr) == 3 and plain.header.tc == 0  # udp_answer_limit, Consul's silent trim
    holder[0] = dataclasses.replace(holder[0], dns_config=DNSConfig())  # proconsul default: TC on
    q = DNSRecord.question("web.service.consul", "SRV")
    raw = asyncio.run(dns.handle(q.pack(), False))
    assert raw is not None and len(raw) <= 512
    assert DNSRecord.parse(raw).header.tc == 1
    big = ask(dns, "web.service.consul", "SRV", edns=1232)
    assert 3 < len(big.rr) < 30 and big.header.tc == 1 and rtypes(big.ar)[-1] == "OPT"
    full = ask(dns, "web.service.consul", "SRV", tcp=True)
    assert len(full.rr) == 30 and full.header.tc == 0
    # Each SRV kept its glue.
    assert {str(x.rdata.target) for x in big.rr} == {str(x.rname) for x in big.ar if x.rtype == QTYPE.A}


def test_a_record_limit() -> None:
    dns, store, _ = make_server(RuntimeConfig(dns_config=DNSConfig(a_record_limit=2)))
    for i in range(5):
        add_instance(store, i + 1)
    assert len(ask(dns, "web.service.consul", "A", tcp=True).rr) == 2


def test_disable_compression_makes_bigger_messages() -> None:
    dns, store, holder = make_server()
    for i in range(5):
        add_instance(store, i + 1)
    q = DNSRecord.question("web.service.consul", "SRV").pack()
    small = asyncio.run(dns.handle(q, True))
    holder[0] = dataclasses.replace(holder[0], dns_config=DNSConfig(disable_compression=True))
    large = asyncio.run(dns.handle(q, True))
    assert small is not None and large is not None and len(large) > len(small)
    assert len(DNSRecord.parse(large).rr) == 5


def test_shuffle_is_deterministic_for_a_seed() -> None:
    answers = []
    for _ in range(2):
        dns, store, _ = make_server(seed=42)
        for i in range(10):
            add_instance(store, i + 1)
        answers.append([str(x.rdata) for x in ask(dns, "web.service.consul", "A", tcp=True).rr])
    assert answers[0] == answers[1] and len(set(answers[0])) == 10


# --------------------------------------------------------------------------- robustness


def _header(
    qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def handle(data: bytes) -> bytes | None:
    dns, _, _ = make_server()
    return asyncio.run(dns.handle(data, False))


def test_malformed_inputs() -> None:
    assert handle(b"") is None and handle(b"\x00" * 5) is None  # no header: dropped
    truncated = handle(_header() + b"\x03abc")
    assert truncated is not None and DNSRecord.parse(truncated).header.rcode == RCODE.FORMERR
    # A compression pointer to itself (a loop).
    loop = handle(_header() + b"\xc0\x0c\x00\x01\x00\x01")
    assert loop is not None and DNSRecord.parse(loop).header.rcode == RCODE.FORMERR
    # A 64-byte label (length byte 0x40 is not a valid label length).
    long_label = handle(_header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01")
    assert long_label is not None and DNSRecord.parse(long_label).header.rcode == RCODE.FORMERR
    # A response is never answered.
    assert handle(_header(flags=0x8100) + b"\x00\x00\x01\x00\x01") is None
    # Wrong class (CHAOS).
    chaos = handle(_header() + b"\x07version\x04bind\x00\x00\x10\x00\x03")
    assert chaos is not None and DNSRecord.parse(chaos).header.rcode == RCODE.FORMERR
    # No question: refused, as Consul.
    empty = handle(_header(qd=0))
    assert empty is not None and DNSRecord.parse(empty).header.rcode == RCODE.REFUSED
    # Unsupported opcode (NOTIFY).
    notify = handle(_header(flags=0x2000) + b"\x00\x00\x06\x00\x01")
    assert notify is not None and DNSRecord.parse(notify).header.rcode == RCODE.NOTIMP


def test_deep_pointer_chain_does_not_crash() -> None:
    # Each record's owner is "a" + a pointer to the previous owner: decoding the last one
    # follows thousands of pointers, deeper than Python's recursion limit.
    n = 3000
    body = bytearray(b"\x00\x00\x01\x00\x01")  # the question: root, A, IN (offset 12)
    previous = 12
    for _ in range(n):
        offset = 12 + len(body)
        body += (
            b"\x01a"
            + struct.pack("!H", 0xC000 | previous)
            + struct.pack("!HHIH", 1, 1, 0, 4)
            + b"\x01\x02\x03\x04"
        )
        previous = offset
    reply = handle(_header(an=n) + bytes(body))
    assert reply is not None and DNSRecord.parse(reply).header.rcode == RCODE.FORMERR


@settings(max_examples=300, deadline=None, suppress_health_check=[HypothesisHealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzzed_packets_never_raise(data: bytes) -> None:
    dns, _, _ = make_server()
    reply = asyncio.run(dns.handle(data, False))
    if reply is not None:
        DNSRecord.parse(reply)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(0, 11))
def test_mutated_queries_never_raise(noise: bytes, where: int) -> None:
    base = bytearray(DNSRecord.question("web.service.consul", "SRV").pack())
    pos = (where * 7) % len(base)
    mutated = bytes(base[:pos]) + noise + bytes(base[pos:])
    dns, _, _ = make_server()
    reply = asyncio.run(dns.handle(mutated, False))
    if reply is not None:
        DNSRecord.parse(reply)


@pytest.mark.parametrize("qtype", ["A", "AAAA", "SRV", "TXT", "ANY", "MX", "PTR", "CNAME"])
def test_every_type_answers(qtype: str) -> None:
    dns, store, _ = make_server()
    add_instance(store, 1)
    for name in ("web.service.consul", "srv1.node.consul", "0a000001.addr.consul", "consul"):
        assert ask(dns, name, qtype).header.rcode in (RCODE.NOERROR, RCODE.NXDOMAIN)


# ------------------------------------------------------------------ answer cache and encoder


def srv_ports(dns: DNSServer, tcp: bool = True) -> list[int]:
    return sorted(x.rdata.port for x in ask(dns, "web.service.consul", "SRV", tcp=tcp).rr)


def test_cache_check_turning_critical_drops_the_instance_on_the_next_query() -> None:
    dns, store, _ = make_server()
    for i in range(1, 6):
        add_instance(store, i)
    assert srv_ports(dns) == [8001, 8002, 8003, 8004, 8005]
    assert srv_ports(dns) == [8001, 8002, 8003, 8004, 8005]  # served from the cache
    a_before = sorted(str(x.rdata) for x in ask(dns, "web.service.consul", "A", tcp=True).rr)
    assert len(a_before) == 5 and dns.cache.entries
    check = HealthCheck("node3", "service:web-3", status="critical", service_id="web-3", service_name="web")
    store.ensure_registration(100, store.nodes["node3"], None, (check,), True)
    assert srv_ports(dns) == [8001, 8002, 8004, 8005]
    assert "10.0.0.3" not in {str(x.rdata) for x in ask(dns, "web.service.consul", "A", tcp=True).rr}
    # Plain UDP (3 of 4 sent, built lazily) never shows it either, whatever the shuffle.
    for _ in range(20):
        assert 8003 not in srv_ports(dns, tcp=False)
    # A node-level check is the node's health for every service on it.
    store.ensure_registration(
        101, store.nodes["node1"], None, (HealthCheck("node1", "serf", status="critical"),), True
    )
    assert srv_ports(dns) == [8002, 8004, 8005]
    # Back to passing: back in the answer.
    store.ensure_registration(
        102, store.nodes["node3"], None, (dataclasses.replace(check, status="passing"),), True
    )
    assert srv_ports(dns) == [8002, 8003, 8004, 8005]


def test_cache_new_instance_appears_on_the_next_query() -> None:
    dns, store, _ = make_server()
    add_instance(store, 1)
    assert srv_ports(dns) == [8001]
    assert [str(x.rdata) for x in ask(dns, "web.service.consul", "A").rr] == ["10.0.0.1"]
    add_instance(store, 2)
    assert srv_ports(dns) == [8001, 8002]
    assert sorted(str(x.rdata) for x in ask(dns, "web.service.consul", "A").rr) == ["10.0.0.1", "10.0.0.2"]
    # Another spelling of the name is the same service in DNS (case-insensitive).
    node = Node("node9", address="10.0.0.9")
    store.ensure_registration(50, node, ServiceInstance("node9", "Web-9", "Web", port=8009), (), False)
    assert srv_ports(dns) == [8001, 8002, 8009]
    # Deregistering and changing a node's address are seen at once as well.
    store.deregister(51, "node1")
    assert srv_ports(dns) == [8002, 8009]
    store.ensure_registration(52, Node("node2", address="10.9.9.9"), None, (), False)
    glue = {str(x.rdata) for x in ask(dns, "web.service.consul", "SRV", tcp=True).ar if x.rtype == QTYPE.A}
    assert glue == {"10.9.9.9", "10.0.0.9"}


def test_cache_is_dropped_by_a_snapshot_restore_and_a_config_reload() -> None:
    dns, store, holder = make_server()
    add_instance(store, 1)
    add_instance(store, 2, status="warning")
    blob = store.snapshot()
    add_instance(store, 3)
    assert srv_ports(dns) == [8001, 8002, 8003]
    store.restore(blob)
    assert srv_ports(dns) == [8001, 8002]
    holder[0] = dataclasses.replace(holder[0], dns_config=DNSConfig(only_passing=True))
    assert srv_ports(dns) == [8001]


def test_plain_udp_builds_only_the_groups_it_sends() -> None:
    dns, store, _ = make_server()
    for i in range(1, 11):
        add_instance(store, i)
    r = ask(dns, "web.service.consul", "SRV")
    assert len(r.rr) == 3 and r.header.tc == 1
    (entry,) = [e for key, e in dns.cache.entries.items() if key[2] == QTYPE.SRV]
    assert sum(item.group is not None for item in entry.items) == 3


def _reference_pack(req: dns_wire.Request, answer: Answer, count: int, compress: bool) -> bytes:
    """The reply as dnslib's DNSRecord.pack writes it (the encoder must give the same bytes)."""
    msg = DNSRecord(dns_wire.reply_header(req, answer.rcode, True, False), questions=req.record.questions)
    seen = set()
    for group in answer.groups[:count]:
        msg.rr.extend(group.answer)
        for rr in group.extra:
            key = (str(rr.rname).lower(), rr.rtype, str(rr.rdata))
            if key not in seen:
                seen.add(key)
                msg.ar.append(rr)
    msg.auth.extend(answer.authority)
    if req.edns:
        msg.ar.append(EDNS0(udp_len=req.udp_size))
    return dns_wire.pack(msg, compress)


_RECORDS = [
    RR("web.service.consul.", QTYPE.SRV, rdata=SRV(1, 1, 8000, "node1.node.dc1.consul."), ttl=5),
    RR("node1.node.dc1.consul.", QTYPE.A, rdata=A("10.0.0.1")),
    RR("Node1.node.dc1.consul.", QTYPE.A, rdata=A("10.0.0.1")),
    RR("web.service.consul.", QTYPE.AAAA, rdata=AAAA("fd00::1")),
    RR("web.service.consul.", QTYPE.CNAME, rdata=CNAME("host.example.com.")),
    RR("node1.node.dc1.consul.", QTYPE.TXT, rdata=TXT([b"a=b", b"c" * 255])),
    RR("consul.", QTYPE.NS, rdata=NS("node1.node.dc1.consul.")),
    RR("1.0.0.10.in-addr.arpa.", QTYPE.PTR, rdata=PTR("node1.node.dc1.consul.")),
    RR("web.service.consul.", QTYPE.MX, rdata=MX("mail.service.consul.", 10)),
]
_SOA = RR("consul.", QTYPE.SOA, rdata=SOA("ns.consul.", "hostmaster.consul.", (1, 2, 3, 4, 5)), ttl=5)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(st.integers(0, 8), max_size=2), st.lists(st.integers(0, 8), max_size=3)),
        max_size=6,
    ),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["web.service.consul", "WEB.Service.Consul", "x.consul", "1.0.0.10.in-addr.arpa"]),
)
def test_encoder_writes_what_dnslib_writes(
    groups: list[tuple[list[int], list[int]]], compress: bool, edns: bool, soa: bool, qname: str
) -> None:
    q = DNSRecord.question(qname, "SRV")
    if edns:
        q.add_ar(EDNS0(udp_len=4096))
    req = dns_wire.decode(q.pack())
    assert isinstance(req, dns_wire.Request)
    answer = Answer(
        groups=[Group(answer=[_RECORDS[i] for i in a], extra=[_RECORDS[i] for i in x]) for a, x in groups],
        authority=[_SOA] if soa else [],
    )
    limits = dns_wire.Limits(
        tcp=True, enable_truncate=True, compress=compress, udp_answer_limit=3, a_record_limit=0
    )
    for _ in range(2):  # the second time from the groups' memoised encodings
        got = dns_wire.encode_answer(req, answer, False, limits)
        assert got == _reference_pack(req, answer, len(groups), compress)


def test_answer_beyond_16k_over_tcp_has_pointers_only_to_reachable_names() -> None:
    # A compression pointer holds 14 bits: a name first written after byte 16,383 must not be
    # pointed at (dnslib's buffer masked such offsets, pointing into unrelated bytes).
    dns, store, _ = make_server()
    for i in range(1, 1001):
        add_instance(store, i)
    q = DNSRecord.question("web.service.consul", "SRV")
    raw = asyncio.run(dns.handle(q.pack(), True))
    assert raw is not None and 60_000 < len(raw) <= dns_wire.MAX_TCP_SIZE
    reply = dns_pymessage.from_wire(raw)  # dnspython follows every pointer and checks it
    (srv,) = reply.answer
    assert 700 < len(srv) < 1000  # cut to 64 KiB, whole groups
    targets = {str(r.target) for r in srv}
    glue = {str(rrset.name): str(rrset[0]) for rrset in reply.additional}
    assert targets == set(glue)
    for r in srv:
        i = r.port - 8000
        assert (
            str(r.target) == f"node{i}.node.dc1.consul."
            and glue[str(r.target)] == f"10.0.{i // 256}.{i % 256}"
        )
    # The reference packer (dnslib's DNSRecord.pack over the fixed buffer) agrees byte for byte.
    req = dns_wire.decode(q.pack())
    assert isinstance(req, dns_wire.Request)
    answer = Answer(groups=[Group(answer=[rr], extra=[]) for rr in DNSRecord.parse(raw).rr])
    limits = dns_wire.Limits(
        tcp=True, enable_truncate=True, compress=True, udp_answer_limit=3, a_record_limit=0
    )
    assert dns_wire.encode_answer(req, answer, False, limits) == _reference_pack(
        req, answer, len(answer.groups), True
    )


# ------------------------------------------------------------------------ reply cache


def _via_transport(dns: DNSServer, wire: bytes, tcp: bool) -> tuple[bytes, bool]:
    """What a listener sends for `wire`: the reply cache's answer, else the full path's; and
    whether the reply came from the cache."""
    fast = dns.fast_reply(wire, tcp)
    if fast is not None:
        return fast, True
    raw = asyncio.run(dns.handle(wire, tcp))
    assert raw is not None
    return raw, False


def _query_wire(name: str, qtype: str, edns: int | None, qid: int) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    return bytes(q.pack())


# (name, type, EDNS0 buffer or None, TCP)
_TABLE = [
    ("web.service.consul", "SRV", None, False),
    ("web.service.consul", "SRV", 4096, False),
    ("web.service.consul", "SRV", None, True),
    ("web.service.consul", "A", None, False),
    ("web.service.consul", "A", 4096, False),
    ("web.service.consul", "AAAA", None, False),
    ("web.service.consul", "ANY", None, True),
    ("WeB.SeRvIcE.consul", "SRV", None, False),
    ("_web._tcp.service.consul", "SRV", None, False),
    ("primary.web.service.dc1.consul", "SRV", None, False),
    ("web.service.consul", "TXT", None, False),
    ("nope.service.consul", "SRV", None, False),
]


def test_reply_cache_gives_the_full_paths_bytes_through_health_and_config_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Negative answers carry an SOA whose serial is the unix time: one clock for both servers.
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)
    # Two servers over equal stores and equally seeded RNGs, one answering through the reply
    # cache as its listeners do and one always on the full path: every reply must be the same
    # bytes, also right after each change (a stale cached reply is the failure looked for).
    pairs = [make_server(seed=7), make_server(seed=7)]
    cached, plain = pairs[0][0], pairs[1][0]
    plain.fast = False
    stores = [p[1] for p in pairs]
    holders = [p[2] for p in pairs]

    def each(fn) -> None:  # type: ignore[no-untyped-def]
        for store in stores:
            fn(store)

    for i in range(1, 11):
        each(lambda s, i=i: add_instance(s, i, tags=("primary",) if i % 2 else ()))
    each(lambda s: add_instance(s, 11, address="fd00::11"))
    each(lambda s: add_instance(s, 12, address="db.example.com"))
    hits = 0
    qid = 0

    def both(name: str, qtype: str, edns: int | None, tcp: bool) -> DNSRecord:
        nonlocal hits, qid
        qid += 1
        wire = _query_wire(name, qtype, edns, qid)
        got, fast = _via_transport(cached, wire, tcp)
        want = asyncio.run(plain.handle(wire, tcp))
        assert got == want, (name, qtype, edns, tcp)
        assert struct.unpack("!H", got[:2])[0] == qid  # the ID is the query's
        hits += fast
        return DNSRecord.parse(got)

    def sweep(rounds: int = 3) -> None:
        for _ in range(rounds):
            for row in _TABLE:
                both(*row)

    sweep()
    assert hits > 0 and fastpath_stats(cached)["replies"] > 0
    # A service check turning critical: gone from the very next answer.
    critical = HealthCheck("node3", "service:web-3", status="critical", service_id="web-3", service_name="web")
    each(lambda s: s.ensure_registration(100, s.nodes["node3"], None, (critical,), True))
    before = hits
    sweep(2)
    ports = {x.rdata.port for x in both("web.service.consul", "SRV", None, True).rr}
    assert 8003 not in ports and len(ports) == 11
    assert hits > before  # the new answers are cached again
    # A node check, a deregistration, a node address change, a new spelling of the service.
    each(lambda s: s.ensure_registration(
        101, s.nodes["node1"], None, (HealthCheck("node1", "serf", status="critical"),), True))
    sweep(2)
    each(lambda s: s.deregister(102, "node2"))
    sweep(2)
    each(lambda s: s.ensure_registration(103, Node("node4", address="10.9.9.9"), None, (), False))
    sweep(2)
    each(lambda s: s.ensure_registration(
        104, Node("node9x", address="10.0.9.9"), ServiceInstance("node9x", "Web-9", "Web", port=8099), (), False))
    sweep(2)
    # Config reloads: TTLs, only_passing, udp_answer_limit, enable_truncate.
    for dnscfg in (
        DNSConfig(service_ttl_s={"web": 30}),
        DNSConfig(only_passing=True),
        DNSConfig(udp_answer_limit=5, enable_truncate=False),
        DNSConfig(a_record_limit=2, disable_compression=True),
    ):
        for holder in holders:
            holder[0] = dataclasses.replace(holder[0], dns_config=dnscfg)
        sweep(2)
    # A snapshot restore replaces the tables.
    blob = stores[0].snapshot()
    each(lambda s: add_instance(s, 13))
    sweep(2)
    each(lambda s: s.restore(blob))
    sweep(2)
    assert 8013 not in {x.rdata.port for x in both("web.service.consul", "SRV", None, True).rr}


def fastpath_stats(dns: DNSServer) -> dict[str, int]:
    from proconsul.dns.fastpath import stats

    return stats(dns.replies)


def test_reply_cache_shuffles_truncates_and_keeps_the_question_case() -> None:
    dns, store, _ = make_server()
    for i in range(1, 11):
        add_instance(store, i)
    firsts = set()
    for qid in range(1, 61):
        raw, _ = _via_transport(dns, _query_wire("web.service.consul", "SRV", None, qid), False)
        r = DNSRecord.parse(raw)
        assert r.header.id == qid and r.header.tc == 1 and len(r.rr) == 3
        firsts.add(r.rr[0].rdata.port)
    assert len(firsts) > 3  # shuffled per query, not one reply replayed
    full = DNSRecord.parse(_via_transport(dns, _query_wire("web.service.consul", "SRV", 4096, 1), False)[0])
    assert len(full.rr) == 10 and full.header.tc == 0
    # Consul answers with the question's own spelling of the name.
    for _ in range(3):
        raw, _ = _via_transport(dns, _query_wire("WeB.SeRvIcE.cOnSuL", "SRV", None, 9), False)
        r = DNSRecord.parse(raw)
        assert {str(x.rname) for x in r.rr} == {"WeB.SeRvIcE.cOnSuL."} and str(r.q.qname) == "WeB.SeRvIcE.cOnSuL."
    raw, fast = _via_transport(dns, _query_wire("WeB.SeRvIcE.cOnSuL", "A", None, 9), False)
    assert {str(x.rname) for x in DNSRecord.parse(raw).rr} == {"WeB.SeRvIcE.cOnSuL."}


def test_reply_cache_respects_max_stale_leadership_acl_and_odd_requests() -> None:
    dns, store, holder = make_server(RuntimeConfig(dns_config=DNSConfig(max_stale_s=5)))
    add_instance(store, 1)
    wire = _query_wire("web.service.consul", "SRV", None, 5)
    _via_transport(dns, wire, False)
    assert dns.fast_reply(wire, False) is not None
    consensus = dns.server.consensus
    # Too stale for max_stale: the full path (which asks the leader) answers.
    consensus.last_contact_ms = lambda: 10**9  # type: ignore[method-assign]
    assert dns.fast_reply(wire, False) is None
    # allow_stale = false: only a leader answers from its own store.
    holder[0] = dataclasses.replace(holder[0], dns_config=DNSConfig(allow_stale=False))
    _via_transport(dns, wire, False)
    assert dns.fast_reply(wire, False) is not None
    consensus.is_leader = lambda: False  # type: ignore[method-assign]
    assert dns.fast_reply(wire, False) is None
    # An EDNS0 option (a cookie differs per query) is never remembered.
    consensus.is_leader = lambda: True  # type: ignore[method-assign]
    q = DNSRecord.question("web.service.consul", "SRV")
    q.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(10, b"\x01" * 8)]))
    cookie = bytes(q.pack())
    _via_transport(dns, cookie, False)
    assert dns.fast_reply(cookie, False) is None
    # With ACLs on, answers depend on the token: never from the cache.
    acl_dns, acl_store, _ = make_server()
    acl_dns.fast = False  # what DNSServer(acl=...) sets
    add_instance(acl_store, 1)
    _via_transport(acl_dns, wire, False)
    assert acl_dns.fast_reply(wire, False) is None
    assert DNSServer(dns.server, lambda: holder[0], acl=lambda: None).fast is False  # type: ignore[arg-type,return-value]


def test_reply_cache_stays_within_its_byte_budget() -> None:
    dns, store, _ = make_server()
    for i in range(1, 11):
        add_instance(store, i)
    dns.replies.max_bytes = 20_000
    for name in ("web.service.consul", "WEB.service.consul", "wEb.service.consul"):
        for qid in range(300):
            raw, _ = _via_transport(dns, _query_wire(name, "SRV", None, qid), False)
            assert DNSRecord.parse(raw).header.id == qid
        stats = fastpath_stats(dns)
        assert 0 < stats["bytes"] <= 20_000
        assert stats["bytes"] == sum(e.size for e in dns.replies.udp.values())
    # The newest question kept its replies; older ones were dropped to make room.
    assert dns.replies.get(_query_wire("wEb.service.consul", "SRV", None, 1), False) is not None
