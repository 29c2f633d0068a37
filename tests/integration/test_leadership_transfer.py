"""`proconsul operator raft transfer-leader` on a real three-server cluster, with writers running.

Two py-consul writers (one through the leader's HTTP API, one through a follower's, which
forwards) keep writing while leadership is moved to a named server and then, without `-id`, to
whichever voter is most up to date; not one write may fail, and every acknowledged value reads
back afterwards.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import consul
import pytest
from cluster_helpers import Cluster, cli, get
from helpers import AgentProcess, wait_for


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.stop()


class Writer(threading.Thread):
    def __init__(self, agent: AgentProcess, name: str) -> None:
        super().__init__(daemon=True)
        self.client = consul.Consul(host=agent.ip, port=8500, connections_timeout=60)
        self.name_ = name
        self.stop_flag = threading.Event()
        self.acked: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.stop_flag.is_set():
            key = f"transfer/{self.name_}/{i}"
            try:
                if self.client.kv.put(key, str(i)):
                    self.acked.append(key)
                else:
                    self.failures.append(f"{key}: put answered false")
            except Exception as exc:  # any failure is what the test is about
                self.failures.append(f"{key}: {type(exc).__name__}: {exc}")
            i += 1


def _leader_id(cluster: Cluster, via: AgentProcess) -> str:
    return cluster.node_id(cluster.leader_ip(via))


def test_transfer_leader_to_named_server_fails_no_concurrent_write(cluster: Cluster) -> None:
    a = cluster.nodes[cluster.ips[0]]
    leader_ip = cluster.leader_ip(a)
    followers = [ip for ip in cluster.ips if ip != leader_ip]
    leader, follower = cluster.nodes[leader_ip], cluster.nodes[followers[0]]
    target_ip = followers[1]
    target_id = cluster.node_id(target_ip)

    writers = [Writer(leader, "via-leader"), Writer(follower, "via-follower")]
    for w in writers:
        w.start()
    try:
        wait_for(lambda: all(len(w.acked) >= 20 for w in writers), timeout=60, what="writes flowing")
        out = cli("operator", "raft", "transfer-leader", f"-id={target_id}", f"-http-addr={follower.addr}")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "Success"
        for ip in cluster.ips:
            wait_for(lambda n=cluster.nodes[ip]: cluster.leader_ip(n) == target_ip, timeout=30,
                     what=f"{ip} sees {target_ip} as leader")
        conf = json.loads(a.http("GET", "/v1/operator/raft/configuration")[2])
        assert [s["ID"] for s in conf["Servers"] if s["Leader"]] == [target_id]
        counts = [len(w.acked) for w in writers]
        wait_for(lambda: all(len(w.acked) >= c + 20 for w, c in zip(writers, counts, strict=True)),
                 timeout=60, what="writes flowing under the new leader")

        # Without -id, through the HTTP API: any other voter takes over.
        status, _, body = leader.http("POST", "/v1/operator/raft/transfer-leader")
        assert status == 200 and json.loads(body) == {"Success": True}, body
        wait_for(lambda: cluster.leader_ip(a) != target_ip, timeout=30, what="leadership moved again")
        counts = [len(w.acked) for w in writers]
        wait_for(lambda: all(len(w.acked) >= c + 20 for w, c in zip(writers, counts, strict=True)),
                 timeout=60, what="writes flowing after the second transfer")
    finally:
        for w in writers:
            w.stop_flag.set()
        for w in writers:
            w.join(timeout=90)
    assert [f for w in writers for f in w.failures] == []
    for w in writers:
        for key in w.acked[-50:]:
            assert get(a, key) == key.rsplit("/", 1)[1]
    logs = "".join(n.log() for n in cluster.nodes.values())
    assert "raft leadership transferred to" in logs


def test_transfer_leader_refusals(cluster: Cluster) -> None:
    a = cluster.nodes[cluster.ips[0]]
    leader_id = _leader_id(cluster, a)
    out = cli("operator", "raft", "transfer-leader", "-id=no-such-server", f"-http-addr={a.addr}")
    assert out.returncode == 1
    assert 'Error transfering leadership' in out.stderr and "no-such-server" in out.stderr
    status, _, body = a.http("POST", f"/v1/operator/raft/transfer-leader?id={leader_id}")
    assert status == 500 and b"itself" in body
    assert _leader_id(cluster, a) == leader_id
