"""Real servers refuse `Raft.Join` from anyone who is not a live server of their LAN pool.

Before the gate, any process that reached port 8300 could add a voter (or point a voter's ID at
its own address) with one RPC and take the quorum away. The cluster here forms as usual
(bootstrap-expect over gossip); then a stranger calls the leader's RPC port directly.
"""

from __future__ import annotations

import asyncio
import json

from cluster_helpers import Cluster
from helpers import wait_for
from proconsul.transport import ConnectionPool, RemoteError


def raft_join(address: str, node_id: str, addr: str) -> str:
    """The leader's answer to a Raft.Join call: "" on success, else the error text."""
    async def call() -> str:
        pool = ConnectionPool()
        try:
            await pool.call(address, "Raft.Join", {"id": node_id, "addr": addr}, timeout_s=30)
            return ""
        except RemoteError as exc:
            return str(exc)
        finally:
            await pool.close()

    return asyncio.run(call())


def servers(cluster: Cluster, ip: str) -> dict[str, str]:
    status, _, body = cluster.nodes[ip].http("GET", "/v1/operator/raft/configuration")
    assert status == 200, body
    return {s["ID"]: s["Address"] for s in json.loads(body)["Servers"]}


def test_a_stranger_cannot_add_or_redirect_a_voter(cluster: Cluster) -> None:
    first = cluster.nodes[cluster.ips[0]]
    leader_ip = cluster.leader_ip(first)
    before = servers(cluster, leader_ip)
    assert len(before) == 3

    refused = raft_join(f"{leader_ip}:8300", "11111111-2222-3333-4444-555555555555", "127.0.0.1:18300")
    assert "Raft.Join refused: no server with ID 11111111-2222-3333-4444-555555555555" in refused
    follower_ip = next(ip for ip in cluster.ips if ip != leader_ip)
    hijack = raft_join(f"{leader_ip}:8300", cluster.node_id(follower_ip), "127.0.0.1:18300")
    assert f"advertises {follower_ip}:8300, not 127.0.0.1:18300" in hijack

    # A member asking again at its own address changes nothing and is accepted.
    assert raft_join(f"{leader_ip}:8300", cluster.node_id(follower_ip), f"{follower_ip}:8300") == ""
    assert servers(cluster, leader_ip) == before
    wait_for(lambda: "refused to add" in cluster.nodes[leader_ip].log(), timeout=30, what="the refusal logged")
