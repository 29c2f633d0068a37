"""Real processes: node-name and node-ID conflicts in the LAN pool are refused and reported as
memberlist, serf and Consul's merge delegate do, and the cluster keeps the original member."""

from __future__ import annotations

import json
from pathlib import Path

from cluster_helpers import free_subnet
from helpers import AgentProcess, wait_for


def _members(agent: AgentProcess) -> dict[str, tuple[str, int]]:
    status, _, raw = agent.http("GET", "/v1/agent/members")
    assert status == 200, raw
    return {m["Name"]: (m["Addr"], m["Status"]) for m in json.loads(raw)}


def test_name_and_node_id_conflicts_are_refused(tmp_path: Path) -> None:
    prefix = free_subnet(4)
    sip, c1ip, dupip, idip = (f"{prefix}.{i}" for i in (1, 2, 3, 4))
    server = AgentProcess("-server", "-bootstrap", "-hcl", "performance { raft_multiplier = 1 }", dev=False,
                          ip=sip, node="srv", data_dir=str(tmp_path / "srv"))
    c1 = AgentProcess(f"-retry-join={sip}", "-retry-interval=1s", dev=False, ip=c1ip, node="c1",
                      data_dir=str(tmp_path / "c1"))
    running: list[AgentProcess] = []
    try:
        running.append(server.start())
        running.append(c1.start())
        wait_for(lambda: _members(server) == {"srv": (sip, 1), "c1": (c1ip, 1)}, timeout=60, what=lambda: c1.log())

        # Same name from another address: the pool keeps the live c1; the newcomer is outvoted.
        dup = AgentProcess(f"-retry-join={sip}", "-retry-interval=1s", dev=False, ip=dupip, node="c1",
                           data_dir=str(tmp_path / "dup"))
        dup.wait_for_leader = False
        running.append(dup.start())
        wait_for(lambda: f"memberlist: Conflicting address for c1. Mine: {c1ip}:8301 Theirs: {dupip}:8301"
                 in server.log(), timeout=60, what=lambda: f"conflict logged\n{server.log()}")
        wait_for(lambda: "serf: minority in name conflict resolution, quiting [0 / 1]" in dup.log(), timeout=60,
                 what=lambda: f"newcomer outvoted\n{dup.log()}")
        assert "Node name conflicts with another node" in dup.log()
        assert _members(server)["c1"] == (c1ip, 1)
        assert dup.proc is not None and dup.proc.poll() is None  # reported, not crashed

        # Another name with c1's node ID: refused on both sides with Consul's merge-delegate error.
        c1_id = (tmp_path / "c1" / "node-id").read_text().strip()
        same_id = AgentProcess(f"-retry-join={sip}", "-retry-interval=1s", f"-node-id={c1_id}", dev=False,
                               ip=idip, node="c9", data_dir=str(tmp_path / "c9"))
        same_id.wait_for_leader = False
        running.append(same_id.start())
        refusal = f"Member 'c1' has conflicting node ID '{c1_id}' with this agent's ID"
        wait_for(lambda: refusal in same_id.log(), timeout=60, what=lambda: f"joiner refuses\n{same_id.log()}")
        wait_for(lambda: f"Member 'c9' has conflicting node ID '{c1_id}' with member 'c1'" in server.log(),
                 timeout=60, what=lambda: f"server refuses\n{server.log()}")
        wait_for(lambda: "join LAN failed" in same_id.log(), timeout=60, what=lambda: same_id.log())
        assert "c9" not in _members(server)
        assert _members(server)["c1"] == (c1ip, 1)
        for agent in (server, c1, same_id):
            assert agent.proc is not None and agent.proc.poll() is None, agent.log()
    finally:
        for agent in running:
            agent.stop()
