"""A snapshot restored from another cluster leaves no ghost server (issue 15, item 2).

The restored catalog carries the other cluster's server node with a passing `serfHealth`; the
leader's reconcile deregisters it because it is not a member of this LAN pool.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cluster_helpers import Cluster, free_subnet
from helpers import AgentProcess, wait_for


def _names(agent: AgentProcess, path: str, key: str) -> list[str]:
    status, _, body = agent.http("GET", path)
    assert status == 200, body
    return sorted(entry[key] for entry in json.loads(body))


def test_a_restored_foreign_server_is_reaped() -> None:
    source = AgentProcess(node="foreign-server").start()
    target = AgentProcess(node="target-server").start()
    try:
        status, _, snapshot = source.http("GET", "/v1/snapshot")
        assert status == 200
        status, _, body = target.http("PUT", "/v1/snapshot", snapshot)
        assert status == 200, body

        def reaped() -> bool:
            return (
                _names(target, "/v1/catalog/nodes", "Node") == ["target-server"]
                and _names(target, "/v1/catalog/service/consul", "Node") == ["target-server"]
            )

        wait_for(reaped, timeout=30, what=lambda: f"the foreign server to be reaped\n{target.log()}")
    finally:
        target.stop()
        source.stop()


def _read(agent: AgentProcess, path: str) -> Any:
    """A JSON answer; a non-200 (no leader for a moment around the restore, say) raises an
    error that `wait_for` retries, unlike an assertion."""
    status, _, body = agent.http("GET", path)
    if status != 200:
        raise RuntimeError(f"{path}: {status} {body!r}")
    return json.loads(body)


def _peer_names(agent: AgentProcess, query: str = "") -> list[str]:
    return sorted(s["Node"] for s in _read(agent, f"/v1/operator/raft/configuration{query}")["Servers"])


def _passing(agent: AgentProcess, service: str) -> list[str]:
    return sorted(e["Node"]["Node"] for e in _read(agent, f"/v1/health/service/{service}?passing"))


def _dns_servers(agent: AgentProcess) -> list[str]:
    """The A records of consul.service.consul as `agent` answers them."""
    import dns.message
    import dns.query
    import dns.rdatatype

    msg = dns.message.make_query("consul.service.consul", "A")
    answer = dns.query.udp(msg, agent.ip, port=agent.dns_port, timeout=10, ignore_trailing=True)
    return sorted(rr.address for rrset in answer.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset)


def test_another_raft_clusters_snapshot_leaves_no_ghost(tmp_path: Path) -> None:
    """Cluster A (one server) is saved and restored into cluster B (three servers): A's server
    is reaped from B's catalog, DNS and `?passing`, and `operator raft list-peers` (the raft
    configuration) names B's servers, alike on B's leader and a follower, right after."""
    source = AgentProcess("-server", "-bootstrap", "-hcl", "performance { raft_multiplier = 1 }",
                          dev=False, ip=f"{free_subnet(1)}.1", node="a1", data_dir=str(tmp_path / "a1"))
    source.start()
    cluster = Cluster(tmp_path / "b")
    try:
        cluster.start()
        names = sorted(cluster.name(ip) for ip in cluster.ips)
        wait_for(lambda: _passing(source, "consul") == ["a1"], timeout=60, what="a1 registered in A")
        status, _, snapshot = source.http("GET", "/v1/snapshot")
        assert status == 200
        leader = cluster.nodes[cluster.leader_ip(cluster.nodes[cluster.ips[0]])]
        follower = next(agent for ip, agent in cluster.nodes.items() if ip != leader.ip)
        wait_for(lambda: _peer_names(leader) == names, timeout=60, what="B's server names before the restore")
        status, _, body = leader.http("PUT", "/v1/snapshot", snapshot)
        assert status == 200, body

        # The first answers after the restore already name B's servers, on the leader and on a
        # follower (its own ?stale view too), although the restored catalog is A's: names come
        # from the LAN pool, as Consul's. A non-200 while the restore settles is retried.
        first = wait_for(lambda: (_peer_names(leader), _peer_names(follower), _peer_names(follower, "?stale")),
                         timeout=30, what="the raft configuration after the restore")
        assert first == (names, names, names)

        def reaped() -> bool:
            nodes = sorted(n["Node"] for n in _read(follower, "/v1/catalog/nodes"))
            return (nodes == names and _passing(follower, "consul") == names
                    and _dns_servers(follower) == sorted(cluster.ips))

        wait_for(reaped, timeout=90, what=lambda: f"a1 to be reaped from B\n{leader.log()[-4000:]}")
        assert _peer_names(leader) == names and _peer_names(follower) == names
    finally:
        cluster.stop()
        source.stop()
