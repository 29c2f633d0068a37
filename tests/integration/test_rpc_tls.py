"""TLS on server RPC with real processes (issue 18 items 3, 5, 6): three servers and a client agent
with verify_incoming, verify_outgoing and verify_server_hostname, certificates made by
`proconsul tls`; elections, replication and py-consul over HTTPS; the refusals (plaintext on the
server port, a server with another CA's certificate, a server with a client certificate); and
certificate rotation with SIGHUP, seen by `openssl s_client` while the cluster keeps its leader."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import consul
import pytest
from cluster_helpers import Cluster, agent_json, free_subnet, get
from cryptography import x509
from helpers import AgentProcess, proconsul_command, wait_for

HTTPS_PORT = 8501


def _tls(cwd: Path, *args: str) -> None:
    done = subprocess.run([proconsul_command(), "tls", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _newest_pair(cwd: Path, prefix: str) -> tuple[Path, Path]:
    """The files `proconsul tls cert create` wrote last for `prefix` (dc1-server-consul-N)."""
    numbers = [int(m.group(1)) for p in cwd.iterdir() if (m := re.fullmatch(rf"{prefix}-(\d+)\.pem", p.name))]
    n = max(numbers)
    return cwd / f"{prefix}-{n}.pem", cwd / f"{prefix}-{n}-key.pem"


def _tls_config(ca: Path, pair: tuple[Path, Path]) -> str:
    # Consul's legacy top-level keys, as most deployments write them.
    return (
        f'ca_file = "{ca}"\ncert_file = "{pair[0]}"\nkey_file = "{pair[1]}"\n'
        "verify_incoming = true\nverify_outgoing = true\nverify_server_hostname = true\n"
        f"ports {{ https = {HTTPS_PORT} }}\n"
        # Leadership must survive the test's SIGHUPs on a loaded machine: Consul's default timing.
        "performance { raft_multiplier = 5 }\n"
    )


class TLSCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.certs = root / "certs"
        self.certs.mkdir()
        self.cluster = Cluster(root)
        self.cluster.prefix = free_subnet(hosts=6)
        self.cluster.ips = [f"{self.cluster.prefix}.{i}" for i in (1, 2, 3)]
        self.ca = self.certs / "consul-agent-ca.pem"
        _tls(self.certs, "ca", "create")
        self.pairs: dict[str, tuple[Path, Path]] = {}
        for ip in self.cluster.ips:
            _tls(self.certs, "cert", "create", "-server", "-dc", "dc1", f"-additional-ipaddress={ip}")
            self.pairs[ip] = self._own_copy(ip, _newest_pair(self.certs, "dc1-server-consul"))
        self.client_ip = f"{self.cluster.prefix}.4"
        _tls(self.certs, "cert", "create", "-client", f"-additional-ipaddress={self.client_ip}")
        self.client_pair = _newest_pair(self.certs, "dc1-client-consul")
        _tls(self.certs, "cert", "create", "-cli")
        self.cli_pair = _newest_pair(self.certs, "dc1-cli-consul")
        self.client: AgentProcess | None = None
        self.extra: list[AgentProcess] = []

    def _own_copy(self, ip: str, pair: tuple[Path, Path]) -> tuple[Path, Path]:
        """Each server's files at a path of its own, which rotation overwrites in place."""
        own = (self.certs / f"{ip}.pem", self.certs / f"{ip}-key.pem")
        shutil.copyfile(pair[0], own[0])
        shutil.copyfile(pair[1], own[1])
        return own

    def start(self) -> None:
        for ip in self.cluster.ips:
            node = self.cluster.server(ip, "-hcl", _tls_config(self.ca, self.pairs[ip]))
            self.cluster.nodes[ip] = node.start()
        for node in self.cluster.nodes.values():
            wait_for(node._leader_known, timeout=120, what=f"a leader seen by {node.ip}\n{node.log()}")
        self.client = AgentProcess(
            *(f"-retry-join={ip}" for ip in self.cluster.ips), "-retry-interval=1s",
            "-hcl", _tls_config(self.ca, self.client_pair),
            dev=False, ip=self.client_ip, node="c4", data_dir=str(self.root / "c4"),
        )
        self.client.wait_for_leader = False
        self.client.start()
        wait_for(self.client._leader_known, timeout=120, what=f"the client agent to know the leader\n{self.client.log()}")

    def stop(self) -> None:
        for agent in [*self.extra, *([self.client] if self.client else [])]:
            agent.stop()
        self.cluster.stop()

    def leader_and_term(self) -> tuple[str, str]:
        node = next(iter(self.cluster.nodes.values()))
        leader = self.cluster.leader_ip(node)
        stats = agent_json(self.cluster.nodes[leader], "GET", "/v1/agent/self")["Stats"]["raft"]
        return leader, stats["term"]

    def voters(self) -> list[str]:
        node = next(iter(self.cluster.nodes.values()))
        config = agent_json(node, "GET", "/v1/operator/raft/configuration")
        return sorted(s["Address"] for s in config["Servers"])


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSCluster]:
    c = TLSCluster(tmp_path_factory.mktemp("rpc-tls"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _py_consul(c: TLSCluster, host: str) -> consul.Consul:
    return consul.Consul(host=host, port=HTTPS_PORT, scheme="https", verify=str(c.ca),
                         cert=(str(c.cli_pair[0]), str(c.cli_pair[1])))


def test_cluster_elects_replicates_and_serves_py_consul_over_https(tls_cluster: TLSCluster) -> None:
    c = tls_cluster
    assert len(c.voters()) == 3
    api = _py_consul(c, c.client_ip)
    # A write through the client agent: HTTPS in, TLS RPC to a server, forwarded to the leader,
    # replicated over TLS Raft links.
    assert api.kv.put("tls/greeting", "hello over tls") is True
    for ip, node in c.cluster.nodes.items():
        wait_for(lambda n=node: get(n, "tls/greeting", "?stale") == "hello over tls", timeout=60,
                 what=f"the write replicated to {ip}")
    _, entry = api.kv.get("tls/greeting")
    assert entry["Value"] == b"hello over tls"
    nodes = {n["Node"] for n in api.catalog.nodes()[1]}
    assert {"s1", "s2", "s3", "c4"} <= nodes
    # The servers' HTTPS answers too, with the same client certificate.
    assert _py_consul(c, c.cluster.ips[0]).status.leader()


def test_a_plaintext_client_on_the_server_port_is_refused(tls_cluster: TLSCluster) -> None:
    ip = tls_cluster.cluster.ips[0]
    node = tls_cluster.cluster.nodes[ip]
    with socket.create_connection((ip, 8300), timeout=30) as sock:
        # ConnType.RPC followed by a request frame, as a client without TLS would send.
        sock.sendall(b"\x01" + b"\x00\x00\x00\x10" + b"x" * 16)
        try:
            answer = sock.recv(1024)
        except ConnectionResetError:  # closed with our bytes unread
            answer = b""
        assert answer == b""  # closed without an answer
    wait_for(lambda: "non-TLS connection from" in node.log() and "verify_incoming requires TLS" in node.log(),
             timeout=30, what=f"the refusal logged\n{node.log()}")
    # A TLS client without a certificate gets no answer either (TLS 1.2 fails the handshake;
    # TLS 1.3 finishes it on the client side, then the server refuses and closes).
    ctx = ssl.create_default_context(cafile=str(tls_cluster.ca))
    ctx.check_hostname = False
    with socket.create_connection((ip, 8300), timeout=30) as raw:
        raw.sendall(b"\x04")
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"\x01\x00\x00\x00\x10" + b"x" * 16)
                answer = tls.recv(1)
        except (ssl.SSLError, ConnectionError):
            answer = b""
        assert answer == b""


def _intruder(c: TLSCluster, host: int, name: str, ca: Path, pair: tuple[Path, Path]) -> AgentProcess:
    ip = f"{c.cluster.prefix}.{host}"
    agent = AgentProcess(
        "-server", *(f"-retry-join={other}" for other in c.cluster.ips), "-retry-interval=1s",
        "-hcl", _tls_config(ca, pair),
        dev=False, ip=ip, node=name, data_dir=str(c.root / name),
    )
    agent.wait_for_leader = False
    c.extra.append(agent)
    return agent.start()


def test_servers_without_a_server_certificate_of_our_ca_cannot_join(tls_cluster: TLSCluster) -> None:
    c = tls_cluster
    before = c.voters()
    # One with a server certificate from another CA (and trusting that CA)...
    foreign = c.root / "foreign"
    foreign.mkdir()
    _tls(foreign, "ca", "create")
    _tls(foreign, "cert", "create", "-server", "-dc", "dc1")
    # (Loopback connections leave from 127.0.0.1 whatever the agent binds: count lines, not peers.)
    def logged(text: str) -> int:
        return sum(n.log().count(text) for n in c.cluster.nodes.values())

    handshakes, joins = logged("TLS handshake with"), logged("refused Raft.Join from")
    stranger = _intruder(c, 5, "stranger", foreign / "consul-agent-ca.pem", _newest_pair(foreign, "dc1-server-consul"))
    wait_for(lambda: logged("TLS handshake with") > handshakes, timeout=90,
             what=f"the servers refusing the foreign certificate\n{stranger.log()}")
    # ...and one with a client certificate of our CA (a client agent restarted as a server).
    impostor = _intruder(c, 6, "impostor", c.ca, c.client_pair)
    wait_for(lambda: "Raft.Join is for servers only" in impostor.log(), timeout=90,
             what=f"the impostor's join refused\n{impostor.log()}")
    assert logged("refused Raft.Join from") > joins
    # Neither became a voter, and nothing was replicated to them.
    assert c.voters() == before
    for agent in (stranger, impostor):
        stats = agent_json(agent, "GET", "/v1/agent/self")["Stats"]["raft"]
        assert stats.get("last_log_index", "0") == "0", stats
        assert agent.http("GET", "/v1/status/leader")[2] in (b'""', b"")
    for agent in (stranger, impostor):
        agent.stop()


def _served_serial(ip: str, port: int, c: TLSCluster, rpc: bool = False) -> int:
    """The serial number of the certificate a new connection is shown."""
    if rpc:
        ctx = ssl.create_default_context(cafile=str(c.ca))
        ctx.check_hostname = False
        ctx.load_cert_chain(str(c.cli_pair[0]), str(c.cli_pair[1]))
        with socket.create_connection((ip, port), timeout=30) as raw:
            raw.sendall(b"\x04")
            with ctx.wrap_socket(raw) as tls:
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                return x509.load_der_x509_certificate(der).serial_number
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"{ip}:{port}", "-CAfile", str(c.ca),
         "-cert", str(c.cli_pair[0]), "-key", str(c.cli_pair[1])],
        input="", capture_output=True, text=True, timeout=60,
    )
    pem = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", done.stdout, re.S)
    assert pem, done.stdout + done.stderr
    return x509.load_pem_x509_certificate(pem.group(0).encode()).serial_number


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_sighup_rotates_certificates_for_new_connections_and_keeps_the_leader(tls_cluster: TLSCluster) -> None:
    c = tls_cluster
    leader, term = c.leader_and_term()
    ip = c.cluster.ips[0]
    node = c.cluster.nodes[ip]
    old = _serial(c.pairs[ip][0])
    assert _served_serial(ip, HTTPS_PORT, c) == old
    assert _served_serial(ip, 8300, c, rpc=True) == old
    # A client connection opened before the rotation, kept across it.
    api = _py_consul(c, ip)
    assert api.kv.put("tls/before", "1") is True

    _tls(c.certs, "cert", "create", "-server", "-dc", "dc1", f"-additional-ipaddress={ip}")
    fresh = _newest_pair(c.certs, "dc1-server-consul")
    shutil.copyfile(fresh[0], c.pairs[ip][0])
    shutil.copyfile(fresh[1], c.pairs[ip][1])
    new = _serial(c.pairs[ip][0])
    assert new != old
    seen = node.log().count("TLS certificates re-read")
    node.signal(signal.SIGHUP)
    wait_for(lambda: node.log().count("TLS certificates re-read") > seen, timeout=60, what=f"the reload\n{node.log()}")
    assert _served_serial(ip, HTTPS_PORT, c) == new
    assert _served_serial(ip, 8300, c, rpc=True) == new
    assert api.kv.put("tls/after", "1") is True
    for other in c.cluster.nodes.values():
        wait_for(lambda o=other: get(o, "tls/after", "?stale") == "1", timeout=60, what="replication after rotation")

    # A broken pair (the key of another certificate) is refused with a log line; the new
    # certificate stays in use.
    shutil.copyfile(c.client_pair[1], c.pairs[ip][1])
    failed = node.log().count("reload failed")
    node.signal(signal.SIGHUP)
    wait_for(lambda: node.log().count("reload failed") > failed, timeout=60, what=f"the refused reload\n{node.log()}")
    assert "is not the key of cert_file" in node.log()
    assert _served_serial(ip, HTTPS_PORT, c) == new
    assert _served_serial(ip, 8300, c, rpc=True) == new
    shutil.copyfile(fresh[1], c.pairs[ip][1])  # repaired for whatever runs next

    # The cluster never lost its leader: same leader, same term.
    assert c.leader_and_term() == (leader, term)
    assert json.loads(c.cluster.nodes[leader].http("GET", "/v1/status/leader")[2])
