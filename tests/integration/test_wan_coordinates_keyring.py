"""Three federated datacenters with gossip encryption: WAN coordinates, RTT order, WAN keyring.

One server per datacenter (dc1, dc2, dc3; `-retry-join-wan` to dc1, all with key K1) and a
client agent in dc1, on their own 127.a.b.N addresses with the standard ports. Driven over raw
HTTP, py-consul and the CLI as an operator would:

- `/v1/coordinate/datacenters` lists every datacenter's server with the coordinate the WAN
  pool's probes moved (area `wan`, names without `.dc`), on servers and on the client agent;
  `proconsul rtt -wan` estimates between servers of two datacenters;
- `/v1/catalog/datacenters` is ordered by the median RTT those coordinates give;
- `/v1/operator/keyring` reaches the WAN pool and every datacenter's LAN pool: a WAN entry next
  to the LAN ones, and a K1 -> K2 rotation started on the dc1 client reaches dc2's and dc3's
  servers (their keyring files too), after which the WAN pool still works.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import consul
import pytest
from cluster_helpers import cli, free_subnet
from helpers import AgentProcess, wait_for
from proconsul.coordinate import Coordinate

WAN_TIMEOUT = 120  # WAN gossip probes every 5 s; coordinates need a few probes to move
DCS = ("dc1", "dc2", "dc3")
K1 = base64.b64encode(b"1" * 32).decode()
K2 = base64.b64encode(b"2" * 32).decode()


@dataclass
class Federation:
    servers: dict[str, AgentProcess]
    client: AgentProcess
    root: Path


def _server(ip: str, dc: str, join_wan: str, root: Path) -> AgentProcess:
    name = f"srv-{dc}"
    return AgentProcess(
        "-server", "-bootstrap-expect=1", f"-datacenter={dc}", f"-retry-join-wan={join_wan}",
        "-retry-interval-wan=1s", f"-encrypt={K1}", "-hcl", "performance { raft_multiplier = 1 }",
        dev=False, ip=ip, node=name, data_dir=str(root / name),
    )


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("wan-keyring")
    prefix = free_subnet(hosts=4)
    ips = [f"{prefix}.{i}" for i in (1, 2, 3, 4)]
    servers = {dc: _server(ip, dc, ips[0] if dc != "dc1" else ips[1], root) for dc, ip in zip(DCS, ips, strict=False)}
    client = AgentProcess("-datacenter=dc1", f"-retry-join={ips[0]}", "-retry-interval=1s", f"-encrypt={K1}",
                          dev=False, ip=ips[3], node="client-dc1", data_dir=str(root / "client"))
    started: list[AgentProcess] = []
    try:
        for agent in (*servers.values(), client):
            started.append(agent.start())
        fed = Federation(servers, client, root)
        for agent in servers.values():
            wait_for(lambda a=agent: _all_wan_alive(a), timeout=WAN_TIMEOUT, what=lambda a=agent: a.log())
        wait_for(lambda: _lan_alive(servers["dc1"]) == {"srv-dc1", "client-dc1"}, timeout=60,
                 what=lambda: client.log())
        yield fed
    finally:
        for agent in started:
            agent.stop()


def _get(agent: AgentProcess, path: str) -> object:
    status, _, body = agent.http("GET", path)
    assert status == 200, body
    return json.loads(body)


def _all_wan_alive(agent: AgentProcess) -> bool:
    members = {m["Name"]: m["Status"] for m in _get(agent, "/v1/agent/members?wan=1")}  # type: ignore[attr-defined]
    return all(members.get(f"srv-{dc}.{dc}") == 1 for dc in DCS)


def _lan_alive(agent: AgentProcess) -> set[str]:
    return {m["Name"] for m in _get(agent, "/v1/agent/members") if m["Status"] == 1}  # type: ignore[attr-defined]


def _wan_maps(agent: AgentProcess) -> dict[str, dict[str, Coordinate]]:
    out: dict[str, dict[str, Coordinate]] = {}
    for dc in _get(agent, "/v1/coordinate/datacenters"):  # type: ignore[attr-defined]
        assert dc["AreaID"] == "wan", dc
        out[dc["Datacenter"]] = {e["Node"]: Coordinate.from_json(e["Coord"]) for e in dc["Coordinates"]}
    return out


def _moved(maps: dict[str, dict[str, Coordinate]]) -> bool:
    origin = Coordinate.origin()
    return sorted(maps) == list(DCS) and all(
        len(nodes) == 1 and next(iter(nodes.values())).vec != origin.vec for nodes in maps.values()
    )


def test_coordinate_datacenters_lists_every_datacenter_with_wan_coordinates(fed: Federation) -> None:
    dc1 = fed.servers["dc1"]
    wait_for(lambda: _moved(_wan_maps(dc1)), timeout=WAN_TIMEOUT,
             what=lambda: f"WAN coordinates of all three servers moved by probes\n{_wan_maps(dc1)}")
    maps = _wan_maps(dc1)
    assert {dc: sorted(nodes) for dc, nodes in maps.items()} == {dc: [f"srv-{dc}"] for dc in DCS}
    # The client agent asks a server; another datacenter's server has its own WAN view of the same
    # three servers.
    for via in (fed.client, fed.servers["dc2"]):
        wait_for(lambda v=via: _moved(_wan_maps(v)), timeout=WAN_TIMEOUT, what=lambda v=via: v.log())
    # The WAN coordinates are not the LAN ones: /v1/coordinate/nodes holds the LAN pool's.
    status, _, raw = dc1.http("GET", "/v1/coordinate/nodes")
    assert status == 200
    lan_nodes = {e["Node"] for e in json.loads(raw)}
    assert lan_nodes <= {"srv-dc1", "client-dc1"}
    # The CLI: an estimate between two datacenters' servers, and the agent's own as the default.
    run = cli("rtt", "-wan", f"-http-addr={dc1.addr}", "srv-dc2.dc2", "srv-dc3.dc3")
    assert run.returncode == 0, run
    assert re.fullmatch(r"Estimated srv-dc2\.dc2 <-> srv-dc3\.dc3 rtt: \d+\.\d{3} ms \(using WAN coordinates\)\n",
                        run.stdout), run.stdout
    run = cli("rtt", "-wan", f"-http-addr={dc1.addr}", "srv-dc3.dc3")
    assert run.returncode == 0 and "srv-dc3.dc3 <-> srv-dc1.dc1" in run.stdout, run
    run = cli("rtt", "-wan", f"-http-addr={dc1.addr}", "srv-dc9.dc9")
    assert run.returncode == 1 and 'Could not find a coordinate for node "srv-dc9.dc9"' in run.stderr, run


def _rtt_order(agent: AgentProcess, me: str) -> list[str] | None:
    """The datacenter order the agent's WAN coordinates imply, or None while they move."""
    before = _wan_maps(agent)
    listed = consul.Consul(host=agent.ip, port=agent.http_port).catalog.datacenters()
    after = _wan_maps(agent)
    if before != after or not _moved(before):
        return None
    mine = before[me][f"srv-{me}"]
    rtt = {dc: (0.0 if dc == me else mine.distance_to(next(iter(nodes.values())))) for dc, nodes in before.items()}
    expected = sorted(rtt, key=lambda dc: (rtt[dc], dc))
    return listed if listed == expected else None


def test_catalog_datacenters_sorted_by_wan_rtt(fed: Federation) -> None:
    for dc, agent in fed.servers.items():
        wait_for(lambda a=agent, d=dc: _rtt_order(a, d) is not None, timeout=WAN_TIMEOUT,
                 what=lambda a=agent: f"datacenters in RTT order\n{_wan_maps(a)}")
        order = _rtt_order(agent, dc) or [dc]
        assert order[0] == dc and sorted(order) == list(DCS)


def _keyring(agent: AgentProcess, query: str = "") -> list[dict[str, object]]:
    return _get(agent, "/v1/operator/keyring" + query)  # type: ignore[return-value]


def _pools(entries: list[dict[str, object]]) -> list[tuple[bool, str, object, object]]:
    """(WAN, Datacenter, Keys, NumNodes) per pool: the asking server's WAN and LAN entries
    first, the other datacenters' LAN entries after them in any order (name order here)."""
    rows = [(bool(e["WAN"]), str(e["Datacenter"]), e["Keys"], e["NumNodes"]) for e in entries]
    return rows[:2] + sorted(rows[2:], key=lambda r: r[1])


def test_keyring_covers_the_wan_pool_and_every_datacenter(fed: Federation) -> None:
    dc1 = fed.servers["dc1"]
    wait_for(lambda: _keyring(fed.client)[0]["NumNodes"] == 3, timeout=60, what="the WAN pool counted")
    # WAN first (every server of every datacenter), then the asked datacenter's LAN, then the others'.
    assert _pools(_keyring(fed.client)) == [
        (True, "dc1", {K1: 3}, 3), (False, "dc1", {K1: 2}, 2), (False, "dc2", {K1: 1}, 1), (False, "dc3", {K1: 1}, 1),
    ]
    assert all(e["Segment"] == "" and e["Messages"] == {} for e in _keyring(dc1))
    # ?local-only: this datacenter's LAN pool alone.
    assert _pools(_keyring(dc1, "?local-only=true")) == [(False, "dc1", {K1: 2}, 2)]
    run = cli("keyring", "-list", f"-http-addr={fed.client.addr}")
    assert run.returncode == 0, run
    assert run.stdout.startswith(f"==> Gathering installed encryption keys...\n\nWAN:\n  {K1} [3/3]\n\n"
                                 f"dc1 (LAN):\n  {K1} [2/2]\n"), run.stdout
    for dc in ("dc2", "dc3"):
        assert f"\n{dc} (LAN):\n  {K1} [1/1]\n" in run.stdout, run.stdout

    # Rotate from the dc1 client agent: install K2, use it, remove K1.
    run = cli("keyring", f"-install={K2}", f"-http-addr={fed.client.addr}")
    assert run.returncode == 0, run
    assert _pools(_keyring(fed.servers["dc3"])) == [
        (True, "dc3", {K1: 3, K2: 3}, 3), (False, "dc3", {K1: 1, K2: 1}, 1),
        (False, "dc1", {K1: 2, K2: 2}, 2), (False, "dc2", {K1: 1, K2: 1}, 1),
    ]
    status, _, raw = fed.client.http("PUT", "/v1/operator/keyring", json.dumps({"Key": K2}).encode())
    assert status == 200, raw
    run = cli("keyring", "-list-primary", f"-http-addr={dc1.addr}")
    assert run.returncode == 0, run
    assert f"WAN:\n  {K2} [3/3]\n" in run.stdout and f"dc2 (LAN):\n  {K2} [1/1]\n" in run.stdout, run.stdout
    # K1 is no longer primary anywhere, so every member may drop it.
    status, _, raw = dc1.http("DELETE", "/v1/operator/keyring", json.dumps({"Key": K1}).encode())
    assert status == 200, raw
    assert all(e["Keys"] == {K2: e["NumNodes"]} for e in _keyring(dc1))
    for dc in DCS:
        ring = json.loads((fed.root / f"srv-{dc}" / "serf" / "local.keyring").read_text())
        assert ring == [K2], dc
    assert json.loads((fed.root / "client" / "serf" / "local.keyring").read_text()) == [K2]
    # The pools keep working on K2 alone: WAN and LAN members stay alive, and a read for dc3
    # still crosses the WAN.
    for agent in fed.servers.values():
        assert _all_wan_alive(agent)
    assert _lan_alive(dc1) == {"srv-dc1", "client-dc1"}
    assert consul.Consul(host=fed.client.ip, port=fed.client.http_port).kv.put("after/rotation", "v", dc="dc3")
    status, _, raw = fed.servers["dc3"].http("GET", "/v1/kv/after/rotation")
    assert status == 200, raw
    # An unknown key cannot be made primary: every pool's members refuse, a 500 naming the pools.
    status, _, raw = fed.client.http("PUT", "/v1/operator/keyring", json.dumps({"Key": K1}).encode())
    assert status == 500 and b"WAN error: 3/3 nodes reported failure" in raw, raw
    assert b"dc1 (LAN) error: 2/2 nodes reported failure" in raw and b"dc3 (LAN) error" in raw, raw
