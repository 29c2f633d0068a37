"""WAN forwarding over TLS with real processes (issue 18 item 3): two datacenters whose servers run
`verify_incoming`, `verify_outgoing` and `verify_server_hostname` with certificates from one CA,
made by `proconsul tls`. A `?dc=dc2` write and read from dc1 travel over verified TLS to dc2's
server; a third "datacenter" whose server presents a valid certificate of the same CA, but one
issued to `server.dc1.consul`, gossips its way into the WAN pool and still receives no request:
dc1 checks the name `server.dc3.consul` when it dials it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from cluster_helpers import free_subnet
from helpers import AgentProcess, proconsul_command, wait_for


def _tls(cwd: Path, *args: str) -> tuple[Path, Path]:
    """Run `proconsul tls ARGS` in `cwd`; for `cert create`, the pair it wrote."""
    done = subprocess.run([proconsul_command(), "tls", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    written = re.findall(r"==> Saved (\S+\.pem)", done.stdout)
    certs = [cwd / name for name in written if not name.endswith("-key.pem")]
    keys = [cwd / name for name in written if name.endswith("-key.pem")]
    return (certs[0], keys[0]) if certs and keys else (Path(), Path())


def _server(ip: str, dc: str, join_wan: str, ca: Path, pair: tuple[Path, Path], root: Path) -> AgentProcess:
    tls = (
        f'ca_file = "{ca}"\ncert_file = "{pair[0]}"\nkey_file = "{pair[1]}"\n'
        "verify_incoming = true\nverify_outgoing = true\nverify_server_hostname = true\n"
    )
    agent = AgentProcess(
        "-server", "-bootstrap-expect=1", f"-datacenter={dc}", f"-retry-join-wan={join_wan}",
        "-retry-interval-wan=1s", "-hcl", "performance { raft_multiplier = 1 }", "-hcl", tls,
        dev=False, ip=ip, node=f"srv-{dc}", data_dir=str(root / dc),
    )
    return agent


def _datacenters(agent: AgentProcess) -> list[str]:
    status, _, body = agent.http("GET", "/v1/catalog/datacenters")
    assert status == 200, body
    return sorted(json.loads(body))


def test_wan_forwarding_is_verified_tls_to_the_named_datacenter(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    _tls(certs, "ca", "create")
    ca = certs / "consul-agent-ca.pem"
    prefix = free_subnet(hosts=3)
    ip1, ip2, ip3 = (f"{prefix}.{i}" for i in (1, 2, 3))
    dc1_pair = _tls(certs, "cert", "create", "-server", "-dc", "dc1", f"-additional-ipaddress={ip1}")
    dc2_pair = _tls(certs, "cert", "create", "-server", "-dc", "dc2", f"-additional-ipaddress={ip2}")
    # A certificate of our CA, but for another datacenter's servers than the one it serves.
    impostor_pair = _tls(certs, "cert", "create", "-server", "-dc", "dc1", f"-additional-ipaddress={ip3}")
    assert dc1_pair[0].is_file() and dc2_pair[0].is_file() and impostor_pair[0].is_file()

    started: list[AgentProcess] = []
    try:
        dc1 = _server(ip1, "dc1", ip2, ca, dc1_pair, tmp_path)
        dc2 = _server(ip2, "dc2", ip1, ca, dc2_pair, tmp_path)
        for agent in (dc1, dc2):
            started.append(agent.start())
        wait_for(lambda: _datacenters(dc1) == ["dc1", "dc2"], timeout=90, what=f"dc2 in dc1's WAN pool\n{dc1.log()}")

        def forwarded_write() -> bool:
            status, _, body = dc1.http("PUT", "/v1/kv/wan/tls?dc=dc2", b"over-tls")
            return status == 200 and body == b"true"

        wait_for(forwarded_write, timeout=60, what=f"a ?dc=dc2 write from dc1\n{dc1.log()}\n{dc2.log()}")
        status, _, body = dc2.http("GET", "/v1/kv/wan/tls?raw")
        assert (status, body) == (200, b"over-tls")
        status, _, body = dc1.http("GET", "/v1/kv/wan/tls?raw&dc=dc2")
        assert (status, body) == (200, b"over-tls")
        status, _, body = dc1.http("GET", "/v1/kv/wan/tls?raw")
        assert status == 404  # written in dc2 only

        impostor = _server(ip3, "dc3", ip1, ca, impostor_pair, tmp_path)
        started.append(impostor.start())
        wait_for(lambda: "dc3" in _datacenters(dc1), timeout=90, what=f"dc3 in dc1's WAN pool\n{dc1.log()}")
        status, _, body = dc1.http("GET", "/v1/kv/wan/tls?dc=dc3")
        assert status == 500 and b"not valid for 'server.dc3.consul'" in body, (status, body)
        status, _, body = dc1.http("PUT", "/v1/kv/wan/tls?dc=dc3", b"must-not-arrive")
        assert status == 500 and b"server.dc3.consul" in body, (status, body)
        status, _, body = impostor.http("GET", "/v1/kv/wan/tls")
        assert status == 404, body  # nothing reached the impostor's store
    finally:
        for agent in reversed(started):
            agent.stop()
