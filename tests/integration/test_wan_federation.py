"""Two datacenters federated over the WAN gossip pool, as an operator sets them up.

One server per datacenter (`-server -bootstrap-expect=1 -datacenter=dc1|dc2`) on its own
127.a.b.N address with the standard ports, joined with `-retry-join-wan`, plus a client agent in
dc1. Driven by py-consul, raw HTTP, `dig` and the CLI: WAN members and their names and tags,
`/v1/catalog/datacenters`, `?dc=` reads and writes from the server and from the client agent,
`<name>.service.dc2.consul` over DNS, the error for an unknown datacenter, and what a request
for dc2 answers once dc2's only server is gone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator

import consul
import pytest
from cluster_helpers import Federation, federation
from helpers import AgentProcess, proconsul_command, wait_for

WAN_TIMEOUT = 90  # WAN gossip probes every 5 s and suspects for 30 s before declaring a failure


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with federation(tmp_path_factory.mktemp("wan")) as started:
        yield started


def _wan_members(agent: AgentProcess) -> dict[str, dict]:
    status, _, body = agent.http("GET", "/v1/agent/members?wan=1")
    assert status == 200, body
    return {m["Name"]: m for m in json.loads(body)}


def _both_alive(agent: AgentProcess) -> bool:
    members = _wan_members(agent)
    return all(members.get(n, {}).get("Status") == 1 for n in ("srv-dc1.dc1", "srv-dc2.dc2"))


def test_wan_members_named_node_dot_dc_with_server_tags(fed: Federation) -> None:
    for agent in (fed.dc1, fed.dc2):
        wait_for(lambda a=agent: _both_alive(a), timeout=WAN_TIMEOUT, what=lambda a=agent: a.log())
    members = _wan_members(fed.dc1)
    assert sorted(members) == ["srv-dc1.dc1", "srv-dc2.dc2"]
    remote = members["srv-dc2.dc2"]
    assert remote["Addr"] == fed.dc2.ip and remote["Port"] == 8302
    tags = remote["Tags"]
    assert tags["role"] == "consul" and tags["dc"] == "dc2" and tags["port"] == "8300"
    # -bootstrap-expect=1 is bootstrap mode (Consul turns it into -bootstrap).
    assert tags.get("bootstrap") == "1" and tags["id"] and tags["vsn"] == "2"
    # The LAN pool keeps plain node names; a client agent is in no WAN pool.
    lan = {m["Name"] for m in fed.py(fed.dc1).agent.members()}
    assert "srv-dc1" in lan and "client-dc1" in lan
    assert _wan_members(fed.client) == {}


def test_members_wan_cli(fed: Federation) -> None:
    wait_for(lambda: _both_alive(fed.dc1), timeout=WAN_TIMEOUT)
    out = subprocess.run(
        [proconsul_command(), "members", "-wan", f"-http-addr={fed.dc1.addr}"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["Node", "Address", "Status", "Type", "Build", "Protocol", "DC", "Partition", "Segment"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["srv-dc2.dc2"][1:4] == [f"{fed.dc2.ip}:8302", "alive", "server"]
    assert rows["srv-dc2.dc2"][6] == "dc2" and rows["srv-dc1.dc1"][6] == "dc1"


def test_datacenters_listed_local_first(fed: Federation) -> None:
    wait_for(lambda: _both_alive(fed.dc1), timeout=WAN_TIMEOUT)
    assert fed.py(fed.dc1).catalog.datacenters() == ["dc1", "dc2"]
    assert fed.py(fed.dc2).catalog.datacenters() == ["dc2", "dc1"]
    # A client agent asks its server.
    assert fed.py(fed.client).catalog.datacenters() == ["dc1", "dc2"]
    out = subprocess.run([proconsul_command(), "catalog", "datacenters", f"-http-addr={fed.dc1.addr}"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["dc1", "dc2"], out.stderr


def test_service_in_dc2_seen_from_dc1(fed: Federation) -> None:
    wait_for(lambda: _both_alive(fed.dc1), timeout=WAN_TIMEOUT)
    c2 = fed.py(fed.dc2)
    assert c2.agent.service.register("web", service_id="web-1", address="10.2.0.7", port=8080, tags=["v1"])
    wait_for(lambda: c2.catalog.service("web")[1], timeout=30)
    for via in (fed.dc1, fed.client):
        c = fed.py(via)
        _, nodes = c.catalog.service("web", dc="dc2")
        assert [(n["Node"], n["ServiceAddress"], n["ServicePort"], n["Datacenter"]) for n in nodes] == [
            ("srv-dc2", "10.2.0.7", 8080, "dc2")
        ]
        _, entries = c.health.service("web", dc="dc2", passing=True)
        assert [e["Service"]["ID"] for e in entries] == ["web-1"]
        assert entries[0]["Node"]["Datacenter"] == "dc2"
        # Nothing of it in dc1.
        assert c.catalog.service("web")[1] == []


def test_kv_write_with_dc_lands_in_that_datacenter(fed: Federation) -> None:
    wait_for(lambda: _both_alive(fed.dc1), timeout=WAN_TIMEOUT)
    c1, c2, cc = fed.py(fed.dc1), fed.py(fed.dc2), fed.py(fed.client)
    assert c1.kv.put("federated/from-server", "s", dc="dc2") is True
    assert cc.kv.put("federated/from-client", "c", dc="dc2") is True
    for key, value in (("federated/from-server", b"s"), ("federated/from-client", b"c")):
        assert c2.kv.get(key)[1]["Value"] == value
        assert c1.kv.get(key)[1] is None  # KV is per datacenter
        assert c1.kv.get(key, dc="dc2")[1]["Value"] == value
    # A blocking read in dc2 through dc1 wakes on a write made in dc2.
    index, _ = c1.kv.get("federated/from-server", dc="dc2")
    assert c2.kv.put("federated/from-server", "s2")
    index2, entry = c1.kv.get("federated/from-server", dc="dc2", index=index, wait="20s")
    assert int(index2) > int(index) and entry["Value"] == b"s2"
    # Deletes and catalog writes are forwarded too.
    assert c1.kv.delete("federated/from-client", dc="dc2")
    assert c2.kv.get("federated/from-client")[1] is None
    assert c1.catalog.register("ext-dc2", "10.2.9.9", service={"Service": "ext", "Port": 1}, dc="dc2")
    assert [n["Node"] for n in c2.catalog.service("ext")[1]] == ["ext-dc2"]
    assert c2.catalog.node("ext-dc2")[1]["Node"]["Datacenter"] == "dc2"


def test_event_with_dc_is_fired_in_that_datacenter(fed: Federation) -> None:
    """Fired at a dc1 client with ?dc=dc2: a dc1 server forwards Internal.EventFire over the
    WAN and dc2's LAN pool delivers it; dc1's agents never see it."""
    wait_for(lambda: _both_alive(fed.dc1), timeout=WAN_TIMEOUT)
    assert fed.py(fed.client).event.fire("cross-dc", "hello", dc="dc2")

    def names(agent: AgentProcess) -> list[str]:
        return [e["Name"] for e in fed.py(agent).event.list(name="cross-dc")[1]]

    wait_for(lambda: names(fed.dc2) == ["cross-dc"], timeout=30, what=lambda: f"cross-dc in dc2\n{fed.dc2.log()}")
    assert fed.py(fed.dc1).event.fire("local-marker", "x")  # dc1's own events still flow
    wait_for(lambda: [e["Name"] for e in fed.py(fed.client).event.list(name="local-marker")[1]] == ["local-marker"],
             timeout=30, what="local-marker on the dc1 client")
    assert names(fed.dc1) == [] and names(fed.client) == []
    status, _, body = fed.client.http("PUT", "/v1/event/fire/x?dc=nosuch", b"")
    assert status == 500 and b"No path to datacenter" in body


def test_dns_answers_for_another_datacenter(fed: Federation) -> None:
    wait_for(lambda: _both_alive(fed.dc1), timeout=WAN_TIMEOUT)
    c2 = fed.py(fed.dc2)
    c2.agent.service.register("api", service_id="api-1", address="10.2.0.8", port=9090)
    wait_for(lambda: c2.catalog.service("api")[1], timeout=30)
    dig = shutil.which("dig")
    assert dig, "dig is missing: scripts/setup-env test installs bind9-dnsutils"

    def ask(*args: str) -> str:
        return subprocess.run([dig, f"@{fed.dc1.ip}", "-p", "8600", "+tries=1", "+time=5", *args],
                              capture_output=True, text=True, timeout=30).stdout

    def short(*args: str) -> list[str]:
        return sorted(line for line in ask("+short", *args).splitlines() if line and not line.startswith(";"))

    assert short("api.service.dc2.consul", "A") == ["10.2.0.8"]
    assert short("api.service.dc2.dc.consul", "A") == ["10.2.0.8"]
    # The service address is not the node's, so the SRV target is its .addr name in dc2.
    assert short("api.service.dc2.consul", "SRV") == ["1 1 9090 0a020008.addr.dc2.consul."]
    assert short("srv-dc2.node.dc2.consul", "A") == [fed.dc2.ip]
    assert "status: NXDOMAIN" in ask("api.service.consul", "A")  # not in dc1
    assert "status: NXDOMAIN" in ask("nothere.service.dc2.consul", "A")
    assert "status: NXDOMAIN" in ask("api.service.dc3.consul", "A")  # no path to dc3


def test_unknown_datacenter_is_no_path(fed: Federation) -> None:
    for via in (fed.dc1, fed.client):
        for method, path in (("GET", "/v1/catalog/services?dc=dc3"), ("GET", "/v1/kv/x?dc=dc3"),
                             ("PUT", "/v1/kv/x?dc=dc3")):
            status, _, body = via.http(method, path, b"v" if method == "PUT" else None)
            assert (status, body) == (500, b"No path to datacenter"), (via.ip, path)
    with pytest.raises(consul.ConsulException, match="No path to datacenter"):
        fed.py(fed.dc1).catalog.nodes(dc="dc3")


def test_join_wan_over_http_and_cli(fed: Federation) -> None:
    # Joining an already-known member again succeeds; a client agent cannot join the WAN.
    out = subprocess.run([proconsul_command(), "join", "-wan", f"-http-addr={fed.dc1.addr}", fed.dc2.ip],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Successfully joined cluster by contacting 1 nodes." in out.stdout, out.stderr
    status, _, body = fed.client.http("PUT", f"/v1/agent/join/{fed.dc2.ip}?wan=1")
    assert status == 500 and b"Must be a server to join WAN cluster" in body


def test_dc2_server_gone_fails_cleanly(fed: Federation) -> None:
    wait_for(lambda: _both_alive(fed.dc1), timeout=WAN_TIMEOUT)
    fed.dc2.kill()
    # Until the WAN pool notices, the request fails on the connection; either way it is a 500.
    status, _, body = fed.dc1.http("GET", "/v1/catalog/services?dc=dc2")
    assert status == 500, body

    def failed() -> bool:
        return _wan_members(fed.dc1)["srv-dc2.dc2"]["Status"] == 4

    wait_for(failed, timeout=WAN_TIMEOUT, what=lambda: fed.dc1.log())
    # The datacenter is still known (serf lists failed members) but unreachable.
    assert fed.py(fed.dc1).catalog.datacenters() == ["dc1", "dc2"]
    for via in (fed.dc1, fed.client):
        status, _, body = via.http("GET", "/v1/kv/federated/from-server?dc=dc2")
        assert (status, body) == (500, b"Remote DC has no server currently reachable")
        status, _, body = via.http("PUT", "/v1/kv/x?dc=dc2", b"v")
        assert (status, body) == (500, b"Remote DC has no server currently reachable")
    # dc1 itself is unaffected.
    assert fed.py(fed.dc1).kv.put("still/here", "yes") is True
    out = subprocess.run([proconsul_command(), "members", "-wan", "-status=failed", f"-http-addr={fed.dc1.addr}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "srv-dc2.dc2" in out.stdout and "srv-dc1.dc1" not in out.stdout
