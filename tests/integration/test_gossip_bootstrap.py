"""Real processes: `-bootstrap-expect` counts the servers the LAN pool reports, so servers joined
in a chain (only s2 knows s1, only s3 knows s2) still bootstrap one cluster of three; a server
expecting another number is reported and does not bootstrap (Consul's maybeBootstrap)."""

from __future__ import annotations

import json
from pathlib import Path

from cluster_helpers import free_subnet
from helpers import AgentProcess, wait_for


def _server(ip: str, name: str, root: Path, *extra: str) -> AgentProcess:
    agent = AgentProcess("-server", "-hcl", "performance { raft_multiplier = 1 }", "-retry-interval=1s", *extra,
                         dev=False, ip=ip, node=name, data_dir=str(root / name))
    agent.wait_for_leader = False
    return agent


def _voters(agent: AgentProcess) -> list[str]:
    status, _, raw = agent.http("GET", "/v1/operator/raft/configuration")
    assert status == 200, raw
    return sorted(s["Node"] for s in json.loads(raw)["Servers"] if s["Voter"])


def test_chain_of_joins_bootstraps_through_gossip(tmp_path: Path) -> None:
    prefix = free_subnet(4)
    ips = [f"{prefix}.{i}" for i in (1, 2, 3, 4)]
    s1 = _server(ips[0], "s1", tmp_path, "-bootstrap-expect=3")
    s2 = _server(ips[1], "s2", tmp_path, "-bootstrap-expect=3", f"-retry-join={ips[0]}")
    s3 = _server(ips[2], "s3", tmp_path, "-bootstrap-expect=3", f"-retry-join={ips[1]}")
    running: list[AgentProcess] = []
    try:
        for agent in (s1, s2, s3):
            running.append(agent.start())
        for agent in (s1, s2, s3):
            wait_for(agent._leader_known, timeout=90, what=lambda a=agent: f"leader on {a.node}\n{a.log()}")
        for agent in (s1, s2, s3):
            wait_for(lambda a=agent: _voters(a) == ["s1", "s2", "s3"], timeout=60, what="three voters")
        # s1 was given no address at all: everything it knew came from gossip.
        assert "found 3 servers, bootstrapping" in s1.log(), s1.log()

        # A server expecting five is told the others expect three, and stays out.
        odd = _server(ips[3], "s4", tmp_path, "-bootstrap-expect=5", f"-retry-join={ips[0]}")
        running.append(odd.start())
        wait_for(lambda: "has a conflicting expect value. All nodes should expect the same number." in odd.log(),
                 timeout=60, what=lambda: odd.log())
        assert "servers, bootstrapping" not in odd.log()
        assert _voters(s1) == ["s1", "s2", "s3"]
    finally:
        for agent in running:
            agent.stop()
