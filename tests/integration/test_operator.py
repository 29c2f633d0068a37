"""Operator surface on real server clusters: raft list-peers/remove-peer, snapshots, peers.json.

Clusters come from `cluster_helpers` (own loopback subnet, standard ports, raft_multiplier 1).
"""

from __future__ import annotations

import json
from pathlib import Path

from cluster_helpers import Cluster, cli, free_subnet, get, put
from helpers import AgentProcess, wait_for


def configuration(agent: AgentProcess, query: str = "") -> dict:  # type: ignore[type-arg]
    status, _, body = agent.http("GET", f"/v1/operator/raft/configuration{query}")
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def _names_known(cluster: Cluster, agent: AgentProcess) -> bool:
    return sorted(s["Node"] for s in configuration(agent)["Servers"]) == ["s1", "s2", "s3"]


def test_list_peers_and_snapshot_restore_into_a_fresh_server(cluster: Cluster, tmp_path: Path) -> None:
    a, b, c = (cluster.nodes[ip] for ip in cluster.ips)
    leader_ip = cluster.leader_ip(a)
    follower = next(x for x in (a, b, c) if x.ip != leader_ip)
    # Node names come from the catalog, where every server registers itself.
    wait_for(lambda: _names_known(cluster, follower), timeout=60, what="server names in the configuration")
    conf = configuration(follower)
    assert isinstance(conf["Index"], int)  # the log index of the configuration (0: the bootstrap one)
    by_name = {s["Node"]: s for s in conf["Servers"]}
    for ip in cluster.ips:
        s = by_name[cluster.name(ip)]
        assert s["ID"] == cluster.node_id(ip) and s["Address"] == f"{ip}:8300"
        assert s["Voter"] is True and s["ProtocolVersion"] == "3"
        assert s["Leader"] is (ip == leader_ip)
        assert s["LastIndex"] > 0  # answered by the leader, which knows every match index
    stale = configuration(follower, "?stale")
    assert sorted(s["ID"] for s in stale["Servers"]) == sorted(s["ID"] for s in conf["Servers"])

    out = cli("operator", "raft", "list-peers", f"-http-addr={follower.addr}")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["Node", "ID", "Address", "State", "Voter", "RaftProtocol"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert sorted(rows) == ["s1", "s2", "s3"]
    leader_row = rows[cluster.name(leader_ip)]
    assert leader_row[1:] == [cluster.node_id(leader_ip), f"{leader_ip}:8300", "leader", "true", "3"]
    assert cli("operator", "raft", "list-peers", "-stale", f"-http-addr={follower.addr}").returncode == 0

    # Data to carry over: KV and a catalog service.
    for i in range(10):
        assert put(follower, f"snap/{i}", f"v{i}")
    reg = {"Node": "ext-node", "Address": "10.9.9.9", "Service": {"Service": "web", "Port": 8080}}
    assert follower.http("PUT", "/v1/catalog/register", json.dumps(reg).encode())[0] == 200

    path = tmp_path / "backup.snap"
    out = cli("snapshot", "save", f"-http-addr={follower.addr}", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Saved and verified snapshot to index ")
    assert int(out.stdout.split()[-1]) > 10
    assert not Path(str(path) + ".unverified").exists()
    status, headers, body = a.http("GET", "/v1/snapshot?stale")
    assert status == 200 and int(headers["X-Consul-Index"]) > 0 and body[:2] == b"\x1f\x8b"

    out = cli("snapshot", "inspect", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split()[0] == "ID" and "KVS" in out.stdout and "Total" in out.stdout

    # A fresh single-server cluster (-bootstrap) gets everything back.
    fresh = AgentProcess("-server", "-bootstrap", "-hcl", "performance { raft_multiplier = 1 }",
                         dev=False, ip=f"{free_subnet(1)}.1", node="fresh", data_dir=str(tmp_path / "fresh"))
    fresh.start()
    try:
        assert put(fresh, "only-in-fresh", "x")
        corrupt = tmp_path / "corrupt.snap"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        corrupt.write_bytes(bytes(data))
        out = cli("snapshot", "restore", f"-http-addr={fresh.addr}", str(corrupt))
        assert out.returncode == 1 and "Error restoring snapshot" in out.stderr and "400" in out.stderr
        assert fresh.http("PUT", "/v1/snapshot", bytes(data))[0] == 400
        assert get(fresh, "only-in-fresh") == "x"  # nothing changed

        _, before, _ = fresh.http("GET", "/v1/kv/only-in-fresh")
        out = cli("snapshot", "restore", f"-http-addr={fresh.addr}", str(path))
        assert out.returncode == 0 and out.stdout.strip() == "Restored snapshot", out.stderr
        for i in range(10):
            assert get(fresh, f"snap/{i}") == f"v{i}"
        assert get(fresh, "only-in-fresh") is None
        nodes = json.loads(fresh.http("GET", "/v1/catalog/service/web")[2])
        assert [(n["Node"], n["ServicePort"]) for n in nodes] == [("ext-node", 8080)]
        # Writes go on, with indexes above everything restored.
        assert put(fresh, "after-restore", "y")
        _, headers, _ = fresh.http("GET", "/v1/kv/after-restore")
        assert int(headers["X-Consul-Index"]) > int(out_index(path))
    finally:
        fresh.stop()


def out_index(path: Path) -> int:
    from proconsul.server import snapshot as archive

    return int(archive.read(path.read_bytes()).meta["Index"])


def test_remove_peer_of_a_killed_server(tmp_path: Path) -> None:
    # Autopilot would remove the dead server by itself (cleanup_dead_servers); turned off here so
    # the operator's remove-peer is what removes it, whatever the timing.
    cluster = Cluster(tmp_path, hcl="autopilot { cleanup_dead_servers = false }")
    try:
        cluster.start()
        _remove_peer_of_a_killed_server(cluster)
    finally:
        cluster.stop()


def _remove_peer_of_a_killed_server(cluster: Cluster) -> None:
    a = cluster.nodes[cluster.ips[0]]
    leader_ip = cluster.leader_ip(a)
    victim_ip = next(ip for ip in cluster.ips if ip != leader_ip)
    survivor = next(agent for ip, agent in cluster.nodes.items() if ip != victim_ip)
    cluster.nodes[victim_ip].kill()
    victim_id = cluster.node_id(victim_ip)

    status, _, body = survivor.http("DELETE", "/v1/operator/raft/peer")
    assert status == 400
    out = cli("operator", "raft", "remove-peer", f"-http-addr={survivor.addr}", "-id=no-such-id")
    assert out.returncode == 1 and 'id "no-such-id" was not found' in out.stderr
    out = cli("operator", "raft", "remove-peer", f"-http-addr={survivor.addr}", f"-address={victim_ip}:8300")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f'Removed peer with address "{victim_ip}:8300"'
    for agent in (x for ip, x in cluster.nodes.items() if ip != victim_ip):
        wait_for(lambda agent=agent: victim_id not in [s["ID"] for s in configuration(agent, "?stale")["Servers"]],
                 what="the removed server gone from every configuration")
    assert len(configuration(survivor)["Servers"]) == 2
    peers = json.loads(survivor.http("GET", "/v1/status/peers")[2])
    assert f"{victim_ip}:8300" not in peers and len(peers) == 2
    for i in range(10):
        assert put(survivor, f"two/{i}", str(i))
    assert get(survivor, "two/9") == "9"


def test_peers_json_recovery_after_losing_quorum(cluster: Cluster) -> None:
    a = cluster.nodes[cluster.ips[0]]
    for i in range(10):
        assert put(a, f"keep/{i}", str(i))
    cluster.stop()
    keep_ip = cluster.ips[1]
    peers_file = cluster.data_dir(keep_ip) / "raft" / "peers.json"
    peers_file.write_text(json.dumps([{"id": cluster.node_id(keep_ip), "address": f"{keep_ip}:8300",
                                       "non_voter": False}]))
    # Started alone, with its usual flags: the other two never come back.
    alone = cluster.server(keep_ip)
    alone.wait_for_leader = True
    cluster.nodes = {keep_ip: alone.start()}
    assert cluster.leader_ip(alone) == keep_ip
    assert not peers_file.exists()
    assert "recovered the configuration" in alone.log()
    for i in range(10):
        assert get(alone, f"keep/{i}") == str(i)
    assert put(alone, "after-recovery", "ok")
    conf = configuration(alone)
    assert [(s["ID"], s["Leader"]) for s in conf["Servers"]] == [(cluster.node_id(keep_ip), True)]
