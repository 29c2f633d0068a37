"""Autopilot's dead-server cleanup on real server processes, read through
`/v1/operator/raft/configuration` as an operator would.

Three servers (`-bootstrap-expect=3`, `autopilot { min_quorum = 3 }`) and a fourth joined later:
- the fourth is `kill -9`'d: the LAN pool marks it failed and the leader removes it from the Raft
  configuration (back to three voters), force-leaving it (members: left; catalog: gone);
- restarted from its data dir, it is alive again and the leader adds it back as a voter; it
  catches up on what was written without it;
- a follower killed with four voters is removed (three remain); the next failed server would take
  the cluster below min_quorum, so it stays a voter, the refusal is logged, and the cluster keeps
  serving writes with two of its three voters.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import Cluster, get, put
from helpers import AgentProcess, wait_for

TIMEOUT = 120  # LAN failure detection plus an autopilot pass (10 s) on a loaded 2-core box


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, hcl="autopilot { min_quorum = 3 }")
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _voters(agent: AgentProcess) -> list[str]:
    status, _, body = agent.http("GET", "/v1/operator/raft/configuration?stale")
    assert status == 200, body
    return sorted(s["ID"] for s in json.loads(body)["Servers"] if s["Voter"])


def _member_status(agent: AgentProcess, name: str) -> int | None:
    status, _, body = agent.http("GET", "/v1/agent/members")
    assert status == 200, body
    return next((m["Status"] for m in json.loads(body) if m["Name"] == name), None)


def _fourth(cluster: Cluster) -> AgentProcess:
    ip = f"{cluster.prefix}.4"
    agent = cluster.server(ip, f"-retry-join={cluster.ips[0]}", "-retry-interval=1s", expect=False)
    cluster.nodes[ip] = agent
    return agent


def test_failed_server_removed_re_added_and_min_quorum_kept(cluster: Cluster) -> None:
    s1 = cluster.nodes[cluster.ips[0]]
    three = sorted(cluster.node_id(ip) for ip in cluster.ips)
    assert _voters(s1) == three

    s4 = _fourth(cluster).start()
    ip4 = s4.ip
    wait_for(lambda: len(_voters(s1)) == 4, timeout=TIMEOUT, what=lambda: f"s4 a voter\n{s4.log()}")
    s4_id = cluster.node_id(ip4)
    assert _voters(s1) == sorted([*three, s4_id])

    # kill -9: failed in the LAN pool, then removed; the peer set is the original three again.
    s4.kill()
    for ip in cluster.ips:
        wait_for(lambda a=cluster.nodes[ip]: _voters(a) == three, timeout=TIMEOUT,
                 what=lambda: f"s4 removed\n{cluster.nodes[cluster.leader_ip(s1)].log()}")
    # The leader that removed it may have lost leadership since, on a loaded machine: any server.
    assert any("Attempting removal of failed server node s4" in cluster.nodes[ip].log() for ip in cluster.ips)
    wait_for(lambda: _member_status(s1, "s4") == 3, timeout=60, what="s4 force-left (status left)")
    wait_for(lambda: s1.http("GET", "/v1/catalog/node/s4")[2] == b"null", timeout=60, what="s4 out of the catalog")
    assert put(s1, "while/s4/away", "yes")

    # Restarted from its data dir: alive again, added back, and it catches up.
    s4 = _fourth(cluster).start()
    wait_for(lambda: _voters(s1) == sorted([*three, s4_id]), timeout=TIMEOUT,
             what=lambda: f"s4 added back\n{s4.log()}")
    wait_for(lambda: get(s4, "while/s4/away", "?stale") == "yes", timeout=TIMEOUT, what=lambda: s4.log())
    # Who adds it back is a race between two paths that both do it: the restarted server asks
    # (Raft.Join, as after a graceful leave) and the leader's autopilot re-adds alive servers.
    # The voter set above is the behaviour; the log line is not asserted.

    # With four voters a failed follower may go (three remain, the minimum)...
    leader_ip = cluster.leader_ip(s1)
    follower_ip = next(ip for ip in cluster.ips if ip != leader_ip)
    follower_id = cluster.node_id(follower_ip)
    cluster.nodes[follower_ip].kill()
    survivor = cluster.nodes[leader_ip]
    wait_for(lambda: follower_id not in _voters(survivor), timeout=TIMEOUT,
             what=lambda: f"the follower removed\n{survivor.log()}")
    assert len(_voters(survivor)) == 3

    # ...but the next one would leave two, below min_quorum = 3: it stays, and it is said why.
    s4.kill()
    wait_for(lambda: "not removing failed server s4: it would leave fewer voters than the minimum of 3"
             in cluster.nodes[cluster.leader_ip(survivor)].log(), timeout=TIMEOUT,
             what=lambda: cluster.nodes[cluster.leader_ip(survivor)].log())
    assert s4_id in _voters(survivor) and len(_voters(survivor)) == 3
    assert _member_status(survivor, "s4") == 4  # failed, not force-left
    assert put(survivor, "two/of/three", "ok")  # two of three voters still make a quorum
