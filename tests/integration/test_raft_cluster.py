"""Real three-server clusters: bootstrap, forwarding, failover, restart from disk, kill -9.

Clusters come from `tests/cluster_helpers.py`: each gets its own loopback addresses
(127.a.b.1-3, standard ports), so the servers find each other through `-retry-join` exactly as an
operator configures them.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import consul
from cluster_helpers import Cluster, get, put
from helpers import AgentProcess, wait_for


def test_bootstrap_forwarding_and_consistency_modes(cluster: Cluster) -> None:
    a, b, c = (cluster.nodes[ip] for ip in cluster.ips)
    leader = cluster.leader_ip(a)
    assert leader in cluster.ips and all(cluster.leader_ip(x) == leader for x in (b, c))
    peers = json.loads(a.http("GET", "/v1/status/peers")[2])
    assert sorted(p.rsplit(":", 1)[0] for p in peers) == sorted(cluster.ips)
    follower = next(x for x in (a, b, c) if x.ip != leader)
    assert put(follower, "fwd/key", "via-follower")  # forwarded to the leader once
    for agent in (a, b, c):
        # Default-mode reads are answered by the leader, wherever they arrive.
        assert get(agent, "fwd/key") == "via-follower"
        _, headers, _ = agent.http("GET", "/v1/kv/fwd/key")
        assert headers["X-Consul-KnownLeader"] == "true"
        assert headers["X-Consul-Effective-Consistency"] == "leader"
    status, headers, _ = follower.http("GET", "/v1/kv/fwd/key?consistent")
    assert status == 200 and headers["X-Consul-Effective-Consistency"] == "consistent"
    _consistent_reads_on_the_leader_see_every_acknowledged_write(cluster.nodes[leader], follower)
    _concurrent_writes_through_a_follower(follower, cluster.nodes[leader])
    # Stale reads are local: they converge on every server.
    for agent in (a, b, c):
        wait_for(lambda agent=agent: get(agent, "fwd/key", "?stale") == "via-follower", what="stale read")
    # Every server registered itself with serfHealth and the consul service.
    # (Each registers asynchronously, retrying until the leader accepts it.)
    def registered() -> bool:
        nodes = json.loads(a.http("GET", "/v1/health/service/consul?passing")[2])
        return sorted(n["Node"]["Node"] for n in nodes) == ["s1", "s2", "s3"]

    wait_for(registered, timeout=60, what="all three servers in the catalog with serfHealth")


def _consistent_reads_on_the_leader_see_every_acknowledged_write(leader: AgentProcess, follower: AgentProcess) -> None:
    """py-consul `?consistent` reads on the leader (kept-alive connections: the HTTP fast path,
    parked on shared ReadIndex rounds) while a writer goes through the follower: every read
    returns at least the last write acknowledged before it began, and says `consistent`."""
    writer = consul.Consul(host=follower.ip, port=follower.http_port)
    acked = [-1]
    stop = threading.Event()
    errors: list[str] = []

    def write() -> None:
        i = 0
        while not stop.is_set():
            assert writer.kv.put("lin/k", str(i)) is True
            acked[0] = i
            i += 1

    def read() -> None:
        reader = consul.Consul(host=leader.ip, port=leader.http_port)
        for _ in range(150):
            floor = acked[0]
            _, entry = reader.kv.get("lin/k", consistency="consistent")
            seen = -1 if entry is None else int(entry["Value"])
            if seen < floor:
                errors.append(f"read {seen} after the write of {floor} was acknowledged")
        raw = reader.http.session.get(f"http://{leader.ip}:{leader.http_port}/v1/kv/lin/k?consistent")
        if raw.headers["X-Consul-Effective-Consistency"] != "consistent":
            errors.append(f"headers {dict(raw.headers)}")

    w = threading.Thread(target=write)
    w.start()
    readers = [threading.Thread(target=read) for _ in range(6)]
    try:
        for t in readers:
            t.start()
        for t in readers:
            t.join(120)
    finally:
        stop.set()
        w.join(60)
    assert acked[0] > 0 and not errors, errors[:5]


def _concurrent_writes_through_a_follower(follower: Any, leader: Any) -> None:
    """16 clients write through one follower at once, which forwards their writes to the leader
    in batches (server/forwarding.py): every write is acknowledged once, each with its own
    index, and a default-mode read through the same follower right after the acknowledgement
    sees it (read-your-writes); the leader holds exactly these keys."""
    def client(n: int) -> list[int]:
        c = consul.Consul(host=follower.ip, port=follower.http_port, connections_timeout=60)
        indexes = []
        for i in range(12):
            key = f"many/{n}/{i}"
            assert c.kv.put(key, f"{n}-{i}") is True
            _, entry = c.kv.get(key)
            assert entry is not None and entry["Value"] == f"{n}-{i}".encode(), (key, entry)
            indexes.append(entry["ModifyIndex"])
        return indexes

    with ThreadPoolExecutor(16) as pool:
        indexes = [i for got in pool.map(client, range(16)) for i in got]
    assert len(set(indexes)) == 16 * 12  # one apply each: no write applied twice or merged
    keys = json.loads(leader.http("GET", "/v1/kv/many/?keys")[2])
    assert sorted(keys) == sorted(f"many/{n}/{i}" for n in range(16) for i in range(12))


def test_leader_kill_9_failover_and_restart_from_disk(cluster: Cluster) -> None:
    a = cluster.nodes[cluster.ips[0]]
    for i in range(20):
        assert put(a, f"before/{i}", str(i))
    old_leader_ip = cluster.leader_ip(a)
    cluster.nodes[old_leader_ip].kill()
    survivors = [agent for ip, agent in cluster.nodes.items() if ip != old_leader_ip]

    def new_leader() -> str | None:
        try:
            ip = cluster.leader_ip(survivors[0])
        except (AssertionError, OSError):
            return None
        return ip if ip and ip != old_leader_ip else None

    wait_for(new_leader, timeout=60, what="a new leader among the survivors")
    for i in range(20):
        assert put(survivors[1], f"after/{i}", str(i))
    for i in range(20):
        assert get(survivors[0], f"before/{i}") == str(i)
    # The killed server restarts with nothing but its config and data_dir, and catches up.
    restarted = cluster.server(old_leader_ip).start()
    cluster.nodes[old_leader_ip] = restarted
    def caught_up() -> bool:
        assert restarted.proc is not None and restarted.proc.poll() is None, f"restart died:\n{restarted.log()}"
        return get(restarted, "after/19", "?stale") == "19"

    wait_for(caught_up, timeout=60,
             what=lambda: f"restarted server caught up\n{restarted.log()}")
    assert get(restarted, "before/0", "?stale") == "0"


def test_acknowledged_writes_survive_kill_9_of_a_minority(cluster: Cluster) -> None:
    """Writers record every acknowledged write; the leader is killed mid-stream; none is lost."""
    acked: list[str] = []
    failures: list[str] = []
    stop = threading.Event()
    entry = [agent for agent in cluster.nodes.values()]

    def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"w{n}/{i}"
            target = entry[(n + i) % len(entry)]
            try:
                client = consul.Consul(host=target.ip, port=target.http_port, connections_timeout=30)
                if client.kv.put(key, "v") is True:
                    acked.append(key)
            except Exception as exc:  # refused, 500 "unknown outcome", timeout: not acknowledged
                failures.append(f"{key}: {exc}")
            i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 50, timeout=60, what="writes flowing")
    leader_ip = cluster.leader_ip(cluster.nodes[cluster.ips[0]])
    cluster.nodes[leader_ip].kill()
    killed_at = time.monotonic()
    entry[:] = [agent for ip, agent in cluster.nodes.items() if ip != leader_ip]

    def new_leader() -> bool:
        try:
            return cluster.leader_ip(entry[0]) not in ("", leader_ip)
        except (AssertionError, OSError):
            return False

    wait_for(new_leader, timeout=60, what="a new leader")
    # Reported, not asserted (timings on a loaded 2-core box are not a test's business):
    # the election timeout is 1-2s at raft_multiplier 1, so 3 timeouts is 3-6s.
    print(f"new leader {time.monotonic() - killed_at:.2f}s after kill -9 of the old one")
    count = len(acked)
    wait_for(lambda: len(acked) >= count + 50, timeout=90, what="writes acknowledged after failover")
    stop.set()
    for t in threads:
        t.join(60)
    survivor = entry[0]
    status, _, body = survivor.http("GET", "/v1/kv/?recurse&consistent")
    assert status == 200
    present = {e["Key"] for e in json.loads(body)}
    lost = [k for k in acked if k not in present]
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"


def test_far_behind_follower_catches_up_through_a_snapshot(tmp_path: Path) -> None:
    """A follower down while the leader compacted past its log gets InstallSnapshot on restart."""
    cluster = Cluster(tmp_path, hcl="raft_snapshot_threshold = 32\nraft_trailing_logs = 8\n"
                                    'raft_snapshot_interval = "1s"')
    try:
        cluster.start()
        first = cluster.nodes[cluster.ips[0]]
        leader_ip = cluster.leader_ip(first)
        follower_ip = next(ip for ip in cluster.ips if ip != leader_ip)
        cluster.nodes[follower_ip].kill()
        leader = cluster.nodes[leader_ip]
        for i in range(200):
            assert put(leader, f"bulk/{i:03d}", str(i))
        wait_for(lambda: any((cluster.root / f"s{leader_ip.rsplit('.', 1)[1]}" / "raft" / "snapshots").glob("*.snap")),
                 timeout=60, what="the leader took a snapshot")
        restarted = cluster.server(follower_ip).start()
        cluster.nodes[follower_ip] = restarted

        def caught_up() -> bool:
            assert restarted.proc is not None and restarted.proc.poll() is None, restarted.log()
            return get(restarted, "bulk/199", "?stale") == "199"

        wait_for(caught_up, timeout=90, what=lambda: "follower caught up\n" + "\n".join(
            f"--- {ip}\n{agent.log()}" for ip, agent in cluster.nodes.items()))
        assert get(restarted, "bulk/000", "?stale") == "0"
        snaps = cluster.root / f"s{follower_ip.rsplit('.', 1)[1]}" / "raft" / "snapshots"
        assert any(snaps.glob("*.snap")), "the follower installed a snapshot from the leader"
    finally:
        cluster.stop()
