"""WAN flood-join with real processes: servers that meet on the LAN end up in the WAN pool.

A 3-server dc1 (`tests/cluster_helpers.Cluster`, joined only with `-retry-join` on the LAN) and a
client agent of dc1: with no `join -wan` anywhere, every server's `/v1/agent/members?wan=1` and
`proconsul members -wan` list all three servers (`<node>.dc1`), and never the client. Then a
2-server dc2, itself flood-joined, and one manual `proconsul join -wan` from one dc1 server to
one dc2 server: every server of both datacenters lists all five, and each side routes `?dc=`
to the other.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cluster_helpers import Cluster, agent_json, cli, free_subnet, member_statuses
from helpers import AgentProcess, wait_for

# Joins are push-pull exchanges (immediate), but WAN gossip spreads a member to the servers that
# did not take part in the join on 5 s probe rounds; a loaded CI box is slower still.
WAN_TIMEOUT = 90
ALIVE = 1
DC1_WAN = {"s1.dc1", "s2.dc1", "s3.dc1"}


@dataclass
class DC1:
    cluster: Cluster
    client: AgentProcess

    @property
    def servers(self) -> list[AgentProcess]:
        return list(self.cluster.nodes.values())


@pytest.fixture(scope="module")
def dc1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DC1]:
    root = tmp_path_factory.mktemp("flood-dc1")
    cluster = Cluster(root)
    client: AgentProcess | None = None
    try:
        cluster.start()
        # A client agent on the same subnet, in the LAN pool with the servers.
        client = AgentProcess(f"-retry-join={cluster.ips[0]}", "-retry-interval=1s", dev=False,
                              ip=f"{cluster.prefix}.4", node="c4", data_dir=str(root / "c4"))
        client.start()
        yield DC1(cluster, client)
    finally:
        if client is not None:
            client.stop()
        cluster.stop()


def _alive_wan(agent: AgentProcess) -> set[str]:
    return {name for name, status in member_statuses(agent, wan=True).items() if status == ALIVE}


def test_servers_of_a_datacenter_are_flood_joined_into_wan(dc1: DC1) -> None:
    for server in dc1.servers:
        wait_for(lambda s=server: _alive_wan(s) == DC1_WAN, timeout=WAN_TIMEOUT,
                 what=lambda s=server: f"{s.ip} WAN members {member_statuses(s, wan=True)}\n{s.log()}")
    # Flood-joined means joined in the WAN pool proper: each member is a dc1 server at its WAN port.
    for member in agent_json(dc1.servers[0], "GET", "/v1/agent/members?wan=1"):
        assert member["Port"] == 8302 and member["Tags"]["role"] == "consul" and member["Tags"]["dc"] == "dc1"
        assert "wan_join_port" not in member["Tags"]  # a LAN tag only
    # The LAN tag that tells the others where to join: on servers, not on the client.
    lan = {m["Name"]: m["Tags"] for m in agent_json(dc1.servers[0], "GET", "/v1/agent/members")}
    assert {n: lan[n].get("wan_join_port") for n in ("s1", "s2", "s3")} == {"s1": "8302", "s2": "8302", "s3": "8302"}
    assert lan["c4"]["role"] == "node" and "wan_join_port" not in lan["c4"]
    # The client agent is in no WAN pool, and no server's WAN pool holds it.
    assert member_statuses(dc1.client, wan=True) == {}
    for server in dc1.servers:
        assert all(not name.startswith("c4") for name in member_statuses(server, wan=True))


def test_members_wan_cli_lists_every_server(dc1: DC1) -> None:
    for server in dc1.servers:
        wait_for(lambda s=server: _alive_wan(s) == DC1_WAN, timeout=WAN_TIMEOUT)
        run = cli("members", "-wan", f"-http-addr={server.addr}")
        assert run.returncode == 0, run.stderr
        rows = {line.split()[0]: line.split() for line in run.stdout.splitlines()[1:]}
        assert set(rows) == DC1_WAN
        for ip in dc1.cluster.ips:
            name = f"{Cluster.name(ip)}.dc1"
            assert rows[name][1:4] == [f"{ip}:8302", "alive", "server"] and rows[name][6] == "dc1"


def _dc2_server(prefix: str, i: int, root: Path) -> AgentProcess:
    ip = f"{prefix}.{i}"
    others = [f"-retry-join={prefix}.{j}" for j in (1, 2) if j != i]
    agent = AgentProcess("-server", "-bootstrap-expect=2", "-datacenter=dc2", *others, "-retry-interval=1s",
                         "-hcl", "performance { raft_multiplier = 1 }",
                         dev=False, ip=ip, node=f"t{i}", data_dir=str(root / f"t{i}"))
    agent.wait_for_leader = False  # a lone server of an expect=2 datacenter has none yet
    return agent


def test_one_manual_wan_join_federates_every_server_of_both_datacenters(
    dc1: DC1, tmp_path: Path
) -> None:
    prefix = free_subnet(hosts=2)
    dc2 = [_dc2_server(prefix, i, tmp_path) for i in (1, 2)]
    started: list[AgentProcess] = []
    try:
        for agent in dc2:
            started.append(agent.start())
        dc2_wan = {"t1.dc2", "t2.dc2"}
        for agent in dc2:
            wait_for(agent._leader_known, timeout=60, what=lambda a=agent: a.log())
            wait_for(lambda a=agent: _alive_wan(a) == dc2_wan, timeout=WAN_TIMEOUT, what=lambda a=agent: a.log())
        for server in dc1.servers:
            wait_for(lambda s=server: _alive_wan(s) == DC1_WAN, timeout=WAN_TIMEOUT)

        # One join, between one server of each datacenter.
        run = cli("join", "-wan", f"-http-addr={dc1.servers[0].addr}", dc2[0].ip)
        assert run.returncode == 0, run.stdout + run.stderr

        everyone = DC1_WAN | dc2_wan
        for server in (*dc1.servers, *dc2):
            wait_for(lambda s=server: _alive_wan(s) == everyone, timeout=WAN_TIMEOUT,
                     what=lambda s=server: f"{s.ip} WAN members {member_statuses(s, wan=True)}")
        # Federated both ways: a write into dc2 from the dc1 server that took no part in the join,
        # read back in dc2 and from dc1 with ?dc=dc2.
        far = dc1.servers[2]
        status, _, body = far.http("PUT", "/v1/kv/flood/probe?dc=dc2", b"from-dc1")
        assert status == 200 and json.loads(body) is True, body
        status, _, body = dc2[1].http("GET", "/v1/kv/flood/probe?raw")
        assert status == 200 and body == b"from-dc1", body
        status, _, body = dc2[1].http("GET", "/v1/catalog/datacenters")
        assert status == 200 and sorted(json.loads(body)) == ["dc1", "dc2"], body
        # Clients stay out of it on both sides.
        assert member_statuses(dc1.client, wan=True) == {}
        assert not any(name.startswith("c4") for name in member_statuses(dc2[1], wan=True))
    finally:
        for agent in started:
            agent.stop()
