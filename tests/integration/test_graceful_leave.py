"""Graceful leave on signals, driven as systemd and an operator would: real agent processes.

A client agent stopped with SIGTERM (`leave_on_terminate`, true on clients) is `left` (3) on the
server, not failed, and exits 0; one interrupted with SIGINT while `skip_leave_on_interrupt` is
set just stops and is seen as failed (4). A server with `leave_on_terminate = true` in a
three-server cluster takes itself out of the Raft configuration before it goes, so the peers
shrink and the rest keep a leader (the leader leaving, then a follower); restarted, a server
that left asks to be added back; the last server keeps its configuration. A second SIGTERM
during a slow leave (a long `leave_drain_time`) exits at once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from cluster_helpers import Cluster, cli, free_subnet, get, put
from helpers import AgentProcess, wait_for

FAST_RAFT = ("-hcl", "performance { raft_multiplier = 1 }")


def _members(agent: AgentProcess) -> dict[str, int]:
    status, _, body = agent.http("GET", "/v1/agent/members")
    if status != 200:  # not an assert: wait_for retries other errors while the cluster settles
        raise RuntimeError(body)
    return {m["Name"]: m["Status"] for m in json.loads(body)}


def _exit_code(agent: AgentProcess, timeout: float = 60) -> int:
    assert agent.proc is not None
    try:
        return agent.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"agent {agent.node} still running after {timeout}s:\n{agent.log()}") from None


def _raft_servers(agent: AgentProcess) -> list[str]:
    status, _, body = agent.http("GET", "/v1/operator/raft/configuration")
    if status != 200:  # e.g. forwarded to a leader that just went away; wait_for retries
        raise RuntimeError(body)
    return sorted(s["Node"] for s in json.loads(body)["Servers"])


def test_client_sigterm_leaves_and_sigint_with_skip_fails(tmp_path: Path) -> None:
    prefix = free_subnet(3)
    sip, c1ip, c2ip = (f"{prefix}.{i}" for i in (1, 2, 3))
    server = AgentProcess("-server", "-bootstrap", *FAST_RAFT, "-hcl", "leave_on_terminate = true",
                          dev=False, ip=sip, node="srv", data_dir=str(tmp_path / "srv"))
    # Client defaults: leave_on_terminate = true, skip_leave_on_interrupt = false.
    c1 = AgentProcess(f"-retry-join={sip}", "-retry-interval=1s", dev=False, ip=c1ip, node="c1",
                      data_dir=str(tmp_path / "c1"))
    c2 = AgentProcess(f"-retry-join={sip}", "-retry-interval=1s", "-hcl", "skip_leave_on_interrupt = true",
                      dev=False, ip=c2ip, node="c2", data_dir=str(tmp_path / "c2"))
    started: list[AgentProcess] = []
    try:
        started.append(server.start())
        for c in (c1, c2):
            c.wait_for_leader = False
            started.append(c.start())
        wait_for(lambda: _members(server) == {"srv": 1, "c1": 1, "c2": 1}, timeout=60,
                 what=lambda: f"3 alive members\n{server.log()}")
        wait_for(lambda: server.http("GET", "/v1/catalog/node/c1")[2] not in (b"null", b""), timeout=60,
                 what="c1 in the catalog")

        c1.signal(signal.SIGTERM)
        assert _exit_code(c1) == 0, c1.log()
        assert "graceful leave complete" in c1.log(), c1.log()
        # Left, not failed: the server never suspected it, and deregistered it at once.
        wait_for(lambda: _members(server).get("c1") == 3, timeout=30, what=lambda: f"c1 left\n{server.log()}")
        wait_for(lambda: server.http("GET", "/v1/catalog/node/c1")[2] == b"null", timeout=30,
                 what="c1 deregistered")

        c2.signal(signal.SIGINT)
        assert _exit_code(c2) == 0, c2.log()
        assert "shutting down without leaving" in c2.log() and "gracefully leaving" not in c2.log(), c2.log()
        wait_for(lambda: _members(server).get("c2") == 4, timeout=60, what=lambda: f"c2 failed\n{server.log()}")
        assert _members(server)["c1"] == 3

        # The only server keeps its Raft configuration when it leaves: nobody to hand over to.
        server.signal(signal.SIGTERM)
        assert _exit_code(server) == 0, server.log()
        assert "last server of the cluster" in server.log(), server.log()
    finally:
        for agent in started:
            agent.stop()


def test_servers_leaving_on_terminate_shrink_raft_and_keep_a_leader(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, hcl='leave_on_terminate = true\nperformance { leave_drain_time = "1s" }')
    try:
        cluster.start()
        a = cluster.nodes[cluster.ips[0]]
        wait_for(lambda: _raft_servers(a) == ["s1", "s2", "s3"], timeout=60, what="three named raft servers")
        assert put(a, "before", "1")

        # The leader leaves: it removes itself, a new leader is elected among the other two.
        old_leader_ip = cluster.leader_ip(a)
        old_leader = cluster.nodes[old_leader_ip]
        rest = [cluster.nodes[ip] for ip in cluster.ips if ip != old_leader_ip]
        old_leader.signal(signal.SIGTERM)
        assert _exit_code(old_leader) == 0, old_leader.log()
        assert "left the Raft configuration" in old_leader.log(), old_leader.log()
        # It hands leadership over first; on a loaded machine the transfer may time out, and then
        # it removes itself as leader instead. Either way the other two elect a leader below.
        assert ("transferred Raft leadership to" in old_leader.log()
                or "removing this server as the leader" in old_leader.log()), old_leader.log()
        remaining = sorted(cluster.name(x.ip) for x in rest)
        for agent in rest:
            wait_for(lambda agent=agent: _raft_servers(agent) == remaining, timeout=60,
                     what=lambda agent=agent: f"raft peers {remaining} on {agent.node}\n{agent.log()}")
            wait_for(lambda agent=agent: cluster.leader_ip(agent) in [x.ip for x in rest], timeout=60,
                     what=lambda agent=agent: f"a new leader seen by {agent.node}\n{agent.log()}")
            wait_for(lambda agent=agent: _members(agent).get(cluster.name(old_leader_ip)) == 3, timeout=30,
                     what=f"{old_leader.node} left in {agent.node}'s members")
        peers = json.loads(rest[0].http("GET", "/v1/status/peers")[2])
        assert len(peers) == 2, peers
        assert put(rest[0], "after-leader-left", "2") and get(rest[1], "before") == "1"

        # Restarted from its data, the server that left asks to be added back (Consul's leader
        # re-adds a server that rejoins): three voters again, and it is alive in gossip.
        old_leader.stop()
        restarted = cluster.server(old_leader_ip).start()
        cluster.nodes[old_leader_ip] = restarted
        everyone = sorted(cluster.name(ip) for ip in cluster.ips)
        for agent in (*rest, restarted):
            wait_for(lambda agent=agent: _raft_servers(agent) == everyone, timeout=90,
                     what=lambda agent=agent: f"raft peers {everyone} on {agent.node}\n{agent.log()}\n--- restarted:\n{restarted.log()}")
        wait_for(lambda: _members(rest[0]).get(restarted.node) == 1, timeout=60,
                 what=lambda: f"{restarted.node} alive again: {_members(rest[0])}")
        wait_for(lambda: get(restarted, "after-leader-left", "?stale") == "2", timeout=60,
                 what="the rejoined server caught up")

        # A follower leaves through the leader; the other two keep the leader.
        leader_ip = cluster.leader_ip(rest[0])
        follower = next(x for x in cluster.nodes.values() if x.ip != leader_ip)
        leader = cluster.nodes[leader_ip]
        follower.signal(signal.SIGTERM)
        assert _exit_code(follower) == 0, follower.log()
        remaining = sorted(cluster.name(ip) for ip in cluster.ips if ip != follower.ip)
        wait_for(lambda: _raft_servers(leader) == remaining, timeout=60,
                 what=lambda: f"raft peers {remaining}\n{leader.log()}")
        # The leader normally stays; a slow machine may re-elect, so wait for any leader of the two.
        wait_for(lambda: cluster.leader_ip(leader) in [ip for ip in cluster.ips if ip != follower.ip],
                 timeout=60, what=lambda: f"a leader after the follower left\n{leader.log()}")
        assert put(leader, "after-follower-left", "3")
        listing = cli("operator", "raft", "list-peers", f"-http-addr={leader.addr}")
        assert listing.returncode == 0 and len(listing.stdout.strip().splitlines()) == 3, listing  # header + 2
    finally:
        cluster.stop()


def test_second_sigterm_during_a_slow_leave_exits_at_once(tmp_path: Path) -> None:
    pid_file = tmp_path / "agent.pid"
    conf = tmp_path / "conf"
    conf.mkdir()
    base = f'pid_file = "{pid_file}"\nperformance {{ leave_drain_time = "300s" }}\n'
    (conf / "agent.hcl").write_text(base + "leave_on_terminate = false\n")
    agent = AgentProcess(f"-config-dir={conf}")
    try:
        agent.start()
        wait_for(pid_file.exists, timeout=30, what="the pid file")
        # leave_on_terminate is read when the signal arrives: a reload turns it on.
        (conf / "agent.hcl").write_text(base + "leave_on_terminate = true\n")
        agent.signal(signal.SIGHUP)
        wait_for(lambda: "reloaded configuration" in agent.log(), timeout=30, what=lambda: agent.log())
        assert "leave_on_terminate changed" not in agent.log(), agent.log()

        agent.signal(signal.SIGTERM)
        wait_for(lambda: "to drain RPC traffic" in agent.log(), timeout=30,
                 what=lambda: f"the drain to start\n{agent.log()}")
        assert agent.proc is not None and agent.proc.poll() is None  # the first signal leaves slowly
        sent = time.monotonic()
        agent.signal(signal.SIGTERM)
        assert _exit_code(agent, timeout=20) == 1, agent.log()
        assert time.monotonic() - sent < 20
        assert "caught second signal" in agent.log()
        assert not pid_file.exists()
    finally:
        agent.stop()
