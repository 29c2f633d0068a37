"""DNS against a real agent process, with the real `dig` and dnspython as resolvers.

Covers the query forms, health filtering through TTL checks, UDP truncation and the TCP full
set with 1,000 instances (a 64 KiB TCP answer), forwarding to a local test recursor (and a slow
one not blocking other queries), and fuzzed packets after which the agent still answers. Only
127.0.0.1 gets traffic.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import QTYPE, RR, A
from dnslib import server as dnslib_server
from helpers import AgentProcess, free_port, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

LOCAL = "127.0.0.1"


def dig(agent: AgentProcess, *args: str) -> str:
    binary = shutil.which("dig")
    assert binary, "dig is missing: scripts/setup-env test installs bind9-dnsutils"
    out = subprocess.run(
        [binary, f"@{LOCAL}", "-p", str(agent.dns_port), "+tries=1", "+time=5", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout


def dig_short(agent: AgentProcess, *args: str) -> list[str]:
    return sorted(
        line for line in dig(agent, "+short", *args).splitlines() if line and not line.startswith(";")
    )


def status(output: str) -> str:
    for line in output.splitlines():
        if "status:" in line:
            return line.split("status:")[1].split(",")[0].strip()
    raise AssertionError(f"no status in dig output:\n{output}")


def query(
    agent: AgentProcess, name: str, rdtype: str = "A", tcp: bool = False, **kw: object
) -> dns.message.Message:
    msg = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    if tcp:
        return dns.query.tcp(msg, LOCAL, port=agent.dns_port, timeout=10)
    return dns.query.udp(msg, LOCAL, port=agent.dns_port, timeout=10, ignore_trailing=True)


def put(agent: AgentProcess, path: str, body: object | None = None) -> None:
    code, _, text = agent.http("PUT", path, json.dumps(body).encode() if body is not None else None)
    assert code == 200, text


def register(
    agent: AgentProcess,
    sid: str,
    port: int,
    address: str = "",
    tags: list[str] | None = None,
    ttl_check: bool = False,
) -> None:
    body: dict[str, object] = {"Name": "web", "ID": sid, "Port": port, "Address": address, "Tags": tags or []}
    if ttl_check:
        body["Check"] = {"TTL": "600s"}
    put(agent, "/v1/agent/service/register", body)


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    a = AgentProcess("-node-meta=rack:r1").start()
    try:
        register(a, "web-1", 8001, tags=["primary"])
        register(a, "web-2", 8002, address="10.1.2.3", tags=["replica"])
        wait_for(lambda: len(query(a, "web.service.consul", "SRV").answer[0]) == 2, what="web in DNS")
        yield a
    finally:
        a.stop()


# ------------------------------------------------------------------------------ query forms


def test_srv_with_dig(agent: AgentProcess) -> None:
    out = dig(agent, "web.service.consul", "SRV")
    assert status(out) == "NOERROR" and " aa" in out
    records = dig_short(agent, "web.service.consul", "SRV")
    assert records == ["1 1 8001 test-node.node.dc1.consul.", "1 1 8002 0a010203.addr.dc1.consul."]
    additional = out.split("ADDITIONAL SECTION:")[1]
    assert "test-node.node.dc1.consul. 0\tIN\tA\t127.0.0.1" in additional
    assert "0a010203.addr.dc1.consul. 0\tIN\tA\t10.1.2.3" in additional


def test_forms_with_dig(agent: AgentProcess) -> None:
    assert dig_short(agent, "web.service.consul") == ["10.1.2.3", "127.0.0.1"]
    assert dig_short(agent, "primary.web.service.consul") == ["127.0.0.1"]
    assert dig_short(agent, "web.service.dc1.consul") == ["10.1.2.3", "127.0.0.1"]
    assert dig_short(agent, "_web._tcp.service.consul", "SRV") == [
        "1 1 8001 test-node.node.dc1.consul.",
        "1 1 8002 0a010203.addr.dc1.consul.",
    ]
    assert dig_short(agent, "_web._replica.service.consul", "SRV") == ["1 1 8002 0a010203.addr.dc1.consul."]
    assert dig_short(agent, "test-node.node.consul") == ["127.0.0.1"]
    assert dig_short(agent, "test-node.node.dc1.dc.consul") == ["127.0.0.1"]
    assert '"rack=r1"' in dig_short(agent, "test-node.node.consul", "TXT")
    assert dig_short(agent, "0a010203.addr.dc1.consul") == ["10.1.2.3"]
    assert dig_short(agent, "consul.service.consul") == ["127.0.0.1"]
    assert dig_short(agent, "-x", "127.0.0.1") == ["test-node.node.dc1.consul."]
    assert dig_short(agent, "consul", "NS") == ["test-node.node.dc1.consul."]
    soa = dig_short(agent, "consul", "SOA")
    assert len(soa) == 1 and soa[0].startswith("ns.consul. hostmaster.consul. ")
    anyq = dig(agent, "test-node.node.consul", "ANY")
    assert "\tA\t127.0.0.1" in anyq and "\tTXT\t" in anyq


def test_negative_answers(agent: AgentProcess) -> None:
    out = dig(agent, "missing.service.consul")
    assert status(out) == "NXDOMAIN"
    assert "AUTHORITY SECTION:\nconsul.\t\t\t0\tIN\tSOA\tns.consul. hostmaster.consul." in out
    assert status(dig(agent, "web.service.dc2.consul")) == "NXDOMAIN"
    nodata = dig(agent, "test-node.node.consul", "MX")
    assert status(nodata) == "NOERROR" and "ANSWER: 0" in nodata and "SOA" in nodata
    refused = dig(agent, "example.org")
    assert status(refused) == "REFUSED" and " ra" not in refused.split("flags:")[1].split(";")[0]


def test_python_resolver(agent: AgentProcess) -> None:
    r = query(agent, "web.service.consul", "SRV")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert sorted(rd.port for rd in r.answer[0]) == [8001, 8002]
    tcp = query(agent, "web.service.consul", "SRV", tcp=True)
    assert sorted(rd.port for rd in tcp.answer[0]) == [8001, 8002]
    aaaa = query(agent, "test-node.node.consul", "AAAA")
    assert aaaa.rcode() == dns.rcode.NOERROR and not aaaa.answer and aaaa.authority
    edns = query(agent, "web.service.consul", "A", use_edns=0, payload=4096)
    assert edns.edns == 0 and edns.payload == 4096  # the OPT is echoed


# ------------------------------------------------------------------------------- health


def test_health_filtering_with_ttl_checks() -> None:
    a = AgentProcess().start()
    try:
        register(a, "api-1", 9001, address="10.9.0.1", ttl_check=True)
        register(a, "api-2", 9002, address="10.9.0.2", ttl_check=True)
        # TTL checks start critical: nothing is served yet.
        assert status(dig(a, "web.service.consul")) == "NXDOMAIN"
        put(a, "/v1/agent/check/pass/service:api-1")
        put(a, "/v1/agent/check/pass/service:api-2")
        wait_for(lambda: dig_short(a, "web.service.consul") == ["10.9.0.1", "10.9.0.2"], what="both healthy")
        put(a, "/v1/agent/check/fail/service:api-2")
        wait_for(lambda: dig_short(a, "web.service.consul") == ["10.9.0.1"], what="api-2 to vanish")
        put(a, "/v1/agent/check/warn/service:api-2")
        wait_for(
            lambda: dig_short(a, "web.service.consul") == ["10.9.0.1", "10.9.0.2"], what="warning serves"
        )
    finally:
        a.stop()


def test_only_passing_drops_warning() -> None:
    a = AgentProcess("-hcl", "dns_config { only_passing = true }").start()
    try:
        register(a, "api-1", 9001, address="10.9.0.1", ttl_check=True)
        register(a, "api-2", 9002, address="10.9.0.2", ttl_check=True)
        put(a, "/v1/agent/check/pass/service:api-1")
        put(a, "/v1/agent/check/warn/service:api-2")
        wait_for(lambda: dig_short(a, "web.service.consul") == ["10.9.0.1"], what="only the passing one")
    finally:
        a.stop()


def _catalog_register(a: AgentProcess, i: int, status_: str = "passing") -> None:
    """Instance `cache-<i>` of `cached` on its own node, with a service check, written straight
    to the catalog (applied before the PUT returns; the agent's anti-entropy leaves it alone)."""
    put(a, "/v1/catalog/register", {
        "Node": f"cache-node-{i}", "Address": f"10.6.0.{i}",
        "Service": {"ID": f"cache-{i}", "Service": "cached", "Port": 7000 + i},
        "Check": {"CheckID": f"svc:cache-{i}", "Name": "c", "Status": status_, "ServiceID": f"cache-{i}"},
    })


def test_repeated_queries_from_the_reply_cache_follow_health_at_once() -> None:
    # Repeated questions are answered from the reply cache: after each catalog write the very
    # next answer must show it (dnspython checks every reply's ID against its query's).
    a = AgentProcess().start()
    try:
        for i in range(1, 7):
            _catalog_register(a, i)

        def udp_ports(rounds: int = 12) -> tuple[set[int], set[int]]:
            seen: set[int] = set()
            firsts: set[int] = set()
            for _ in range(rounds):
                r = query(a, "cached.service.consul", "SRV", use_edns=False)
                assert r.flags & dns.flags.TC and len(r.answer[0]) == 3  # udp_answer_limit
                ports = [rd.port for rd in r.answer[0]]
                seen.update(ports)
                firsts.add(ports[0])
            return seen, firsts

        def tcp_ports() -> set[int]:
            return {rd.port for rd in query(a, "cached.service.consul", "SRV", tcp=True).answer[0]}

        seen, firsts = udp_ports(30)
        assert seen <= set(range(7001, 7007)) and len(firsts) > 1  # shuffled per query
        assert tcp_ports() == tcp_ports() == set(range(7001, 7007))
        _catalog_register(a, 3, "critical")
        assert 7003 not in udp_ports(20)[0] and tcp_ports() == {7001, 7002, 7004, 7005, 7006}
        put(a, "/v1/catalog/deregister", {"Node": "cache-node-5"})
        assert tcp_ports() == {7001, 7002, 7004, 7006} and udp_ports(6)[0] <= {7001, 7002, 7004, 7006}
        _catalog_register(a, 3, "passing")
        assert tcp_ports() == {7001, 7002, 7003, 7004, 7006}
        # Addresses, and the question's own spelling in the answer (as Consul), twice over.
        for _ in range(2):
            assert dig_short(a, "cached.service.consul") == [f"10.6.0.{i}" for i in (1, 2, 3, 4, 6)]
            out = dig(a, "CaChEd.SeRvIcE.consul", "SRV")
            answers = out.split("ANSWER SECTION:")[1].split("\n\n")[0].strip().splitlines()
            assert len(answers) == 5 and all(line.startswith("CaChEd.SeRvIcE.consul.\t") for line in answers)
    finally:
        a.stop()


# -------------------------------------------------------------------------------- sizes


def _register_many(a: AgentProcess, count: int) -> None:
    """`count` instances of `web`, each on its own node (so each SRV target has its own glue
    name), written as agents' registrations are, 64 to a transaction."""
    for first in range(0, count, 64):
        ops: list[dict[str, object]] = []
        for i in range(first, min(first + 64, count)):
            node = f"web-node-{i:04d}"
            ops.append(
                {"Node": {"Verb": "set", "Node": {"Node": node, "Address": f"10.2.{i // 250}.{i % 250 + 1}"}}}
            )
            ops.append(
                {
                    "Service": {
                        "Verb": "set",
                        "Node": node,
                        "Service": {"ID": f"web-{i}", "Service": "web", "Port": 20000 + i},
                    }
                }
            )
        put(a, "/v1/txn", ops)


def _check_srv_and_glue(msg: dns.message.Message) -> None:
    """Every SRV target is its instance's node, with that node's address as glue."""
    glue = {str(rrset.name): rrset[0].address for rrset in msg.additional}
    for r in msg.answer[0]:
        i = r.port - 20000
        assert str(r.target) == f"web-node-{i:04d}.node.dc1.consul."
        assert glue[str(r.target)] == f"10.2.{i // 250}.{i % 250 + 1}"


def test_truncation_and_a_64k_tcp_answer_with_1000_instances() -> None:
    a = AgentProcess().start()  # enable_truncate is on by default in proconsul
    try:
        _register_many(a, 1000)
        wait_for(
            lambda: len(query(a, "web.service.consul", "SRV", tcp=True).answer[0]) > 700, what="web in DNS"
        )
        # TCP: as many whole SRV+glue groups as 64 KiB holds (about 765), no TC. Names written
        # past byte 16,383 must not become compression targets (a pointer holds 14 bits):
        # dnspython follows and checks every pointer, and each target must have its own glue.
        msg = dns.message.make_query("web.service.consul", "SRV")
        wire = dns.query.tcp(msg, LOCAL, port=a.dns_port, timeout=30).to_wire()
        full = dns.message.from_wire(wire)
        assert 60_000 < len(wire) <= 65_535
        (srv,) = full.answer
        assert 700 < len(srv) < 1000 and not full.flags & dns.flags.TC
        _check_srv_and_glue(full)
        # dig +tcp reads such an answer too (its instances are shuffled per query).
        out = dig(a, "+tcp", "web.service.consul", "SRV")
        assert status(out) == "NOERROR" and " tc" not in out.split("flags:")[1].split(";")[0]
        answer, additional = out.split("ANSWER SECTION:")[1].split("ADDITIONAL SECTION:")
        dug = [line.split() for line in answer.splitlines() if "\tSRV\t" in line]
        dug_glue = {f[0]: f[4] for f in (line.split() for line in additional.splitlines() if "\tA\t" in line)}
        assert len(dug) > 700
        for f in dug:
            i = int(f[6]) - 20000
            assert (
                f[7] == f"web-node-{i:04d}.node.dc1.consul."
                and dug_glue[f[7]] == f"10.2.{i // 250}.{i % 250 + 1}"
            )
        # Plain UDP (no EDNS): fits 512 bytes, at most udp_answer_limit (3) groups, TC set.
        msg = dns.message.make_query("web.service.consul", "SRV", use_edns=False)
        with _send_udp(a, msg.to_wire()) as sock:
            wire = sock.recv(65535)
        assert len(wire) <= 512
        plain = dns.message.from_wire(wire, ignore_trailing=True)
        assert plain.flags & dns.flags.TC and 0 < len(plain.answer[0]) <= 3
        # EDNS 1232: fits the buffer, still cut, TC set.
        edns = query(a, "web.service.consul", "SRV", use_edns=0, payload=1232)
        assert edns.flags & dns.flags.TC and 3 < len(edns.answer[0]) < 1000
        assert len(edns.to_wire()) <= 1232
        # EDNS 65000 over UDP: a big datagram, cut to the buffer, compressed correctly too.
        big = query(a, "web.service.consul", "SRV", use_edns=0, payload=65000)
        assert big.flags & dns.flags.TC and len(big.answer[0]) > 700 and len(big.to_wire()) <= 65_000
        _check_srv_and_glue(big)
        # dig with +ignore shows the cut answer; without it dig retries over TCP and gets it all.
        assert (
            " tc"
            in dig(a, "+ignore", "+noedns", "web.service.consul", "SRV").split("flags:")[1].split(";")[0]
        )
        assert len(dig_short(a, "web.service.consul", "SRV")) == len(srv)
    finally:
        a.stop()


def _send_udp(a: AgentProcess, wire: bytes) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(10)
    sock.connect((LOCAL, a.dns_port))
    sock.send(wire)
    return sock


def test_enable_truncate_false_trims_silently_like_consul() -> None:
    a = AgentProcess("-hcl", "dns_config { enable_truncate = false }").start()
    try:
        for i in range(10):
            register(a, f"web-{i}", 8000 + i, address=f"10.3.0.{i + 1}")
        wait_for(lambda: len(query(a, "web.service.consul", "A", tcp=True).answer[0]) == 10, what="10 in DNS")
        plain = query(a, "web.service.consul", "A", use_edns=False)
        assert len(plain.answer[0]) == 3 and not plain.flags & dns.flags.TC  # udp_answer_limit
    finally:
        a.stop()


# ----------------------------------------------------------------------------- recursors


class _Upstream(dnslib_server.BaseResolver):  # type: ignore[misc]
    """A test recursor: `*.test.` answers 192.0.2.1, `slow.test.` first waits for a release."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.slow_started = threading.Event()

    def resolve(self, request, handler):  # type: ignore[no-untyped-def]
        reply = request.reply()
        name = str(request.q.qname)
        if name == "slow.test.":
            self.slow_started.set()
            self.release.wait(30)
        reply.add_answer(RR(name, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
        return reply


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[int, _Upstream]]:
    port = free_port()
    resolver = _Upstream()
    udp = dnslib_server.DNSServer(resolver, port=port, address=LOCAL)
    tcp = dnslib_server.DNSServer(resolver, port=port, address=LOCAL, tcp=True)
    udp.start_thread()
    tcp.start_thread()
    try:
        yield port, resolver
    finally:
        resolver.release.set()
        udp.stop()
        tcp.stop()


def test_recursor_forwarding(upstream: tuple[int, _Upstream]) -> None:
    port, _ = upstream
    a = AgentProcess(f"-recursor=127.0.0.1:{port}").start()
    try:
        out = dig(a, "www.example.test")
        assert status(out) == "NOERROR" and "192.0.2.1" in out
        assert " ra" in out.split("flags:")[1].split(";")[0]
        assert dig_short(a, "+tcp", "www.example.test") == ["192.0.2.1"]
        # Our own domain still answers locally, now with RA set.
        local = query(a, "test-node.node.consul")
        assert local.flags & dns.flags.RA and local.answer
    finally:
        a.stop()


def test_dead_recursor_gives_servfail() -> None:
    dead = free_port()  # nothing listens there: ICMP refusal or timeout
    a = AgentProcess(f"-recursor=127.0.0.1:{dead}", "-hcl", 'dns_config { recursor_timeout = "1s" }').start()
    try:
        assert status(dig(a, "www.example.test")) == "SERVFAIL"
    finally:
        a.stop()


def test_slow_recursor_does_not_block_other_queries(upstream: tuple[int, _Upstream]) -> None:
    port, resolver = upstream
    resolver.release.clear()
    a = AgentProcess(f"-recursor=127.0.0.1:{port}", "-hcl", 'dns_config { recursor_timeout = "20s" }').start()
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            slow = pool.submit(query, a, "slow.test")
            assert resolver.slow_started.wait(30)
            # While the slow exchange is parked upstream, other queries are answered.
            for _ in range(5):
                assert query(a, "test-node.node.consul").answer
                assert [rd.address for rd in query(a, "fast.test").answer[0]] == ["192.0.2.1"]
            assert not slow.done()
            resolver.release.set()
            assert [rd.address for rd in slow.result(timeout=20).answer[0]] == ["192.0.2.1"]
    finally:
        resolver.release.set()
        a.stop()


# ------------------------------------------------------------------------------ robustness


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(packets=st.lists(st.binary(max_size=700), min_size=1, max_size=5))
def test_fuzzed_packets_leave_the_server_answering(agent: AgentProcess, packets: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for packet in packets:
            sock.sendto(packet, (LOCAL, agent.dns_port))
    with socket.create_connection((LOCAL, agent.dns_port), timeout=5) as conn:
        conn.sendall(struct.pack("!H", len(packets[0])) + packets[0])
    assert query(agent, "test-node.node.consul").answer


def test_server_alive_after_fuzzing(agent: AgentProcess) -> None:
    assert agent.proc is not None and agent.proc.poll() is None
    assert dig_short(agent, "web.service.consul", "SRV")
    assert "Traceback" not in agent.log()
