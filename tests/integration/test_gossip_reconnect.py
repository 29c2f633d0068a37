"""Real processes: serf's reconnect loop heals a partition with no manual join, and serf's reaper
forgets a member (and the leader deregisters its node) after its reconnect timeout.

The partition tests run a server and a client agent inside a private network namespace the test
creates (it re-runs itself under ``unshare --net``), where ``nft`` rules drop the gossip traffic
(UDP and TCP on the serf port) between the two addresses; nothing touches the host's ruleset.
``reconnect_interval`` (a hidden test-only knob, serf's 30 s) is shortened to 1 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster_helpers import agent_json, free_subnet, member_statuses, serf_health
from helpers import REPO, AgentProcess, wait_for
from proconsul.gossip.config import GossipConfig

IN_NETNS = "PROCONSUL_TEST_PRIVATE_NETNS"
SERVER_IP, CLIENT_IP = "127.0.0.2", "127.0.0.3"
SERF_LAN_PORT, SERF_WAN_PORT = 8301, 8302
ALIVE, FAILED = 1, 4
FAST = 'reconnect_interval = "1s"\nperformance { raft_multiplier = 1 }'


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert found, f"{name} is missing: run scripts/setup-env test (it installs iproute2 and nftables)"
    return found


def _rerun_in_private_netns(request: pytest.FixtureRequest) -> bool:
    """Outside the private namespace: run this one test again in a new network namespace, where
    only our agents live, assert it passed there and return True (the caller is done); inside
    it: False (the caller runs the test)."""
    if os.environ.get(IN_NETNS) == "1":
        return False
    command = [_tool("unshare"), "--net"]
    if os.geteuid() != 0:
        command.append("--map-root-user")  # a user namespace grants the CAP_NET_ADMIN nft needs
    command += [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid]
    run = subprocess.run(command, cwd=REPO, env=dict(os.environ, **{IN_NETNS: "1"}),
                         capture_output=True, text=True, timeout=280)
    assert run.returncode == 0 and "1 passed" in run.stdout, f"in the private namespace:\n{run.stdout}\n{run.stderr}"
    return True


def _inside_private_netns() -> None:
    assert os.environ.get(IN_NETNS) == "1"
    links = subprocess.run([_tool("ip"), "-o", "link"], capture_output=True, text=True, check=True).stdout
    # Our own namespace has nothing but loopback: never partition a shared network.
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"], links
    subprocess.run([_tool("ip"), "link", "set", "lo", "up"], check=True)


def _nft(script: str) -> None:
    subprocess.run([_tool("nft"), "-f", "-"], input=script, text=True, check=True)


def _partition(a: str, b: str, port: int) -> None:
    """Drop gossip (UDP and TCP) to and from the serf port of `a` and of `b`.

    Matched on the serf end alone: an agent's outgoing TCP streams are not bound to its gossip
    address (memberlist's are not either), so on loopback they leave from 127.0.0.1. Only our two
    agents live in this namespace, so this cuts exactly the gossip between them."""
    rules = []
    for addr in (a, b):
        rules.append(f"ip daddr {addr} meta l4proto {{ tcp, udp }} th dport {port} drop")
        rules.append(f"ip saddr {addr} meta l4proto {{ tcp, udp }} th sport {port} drop")
    body = "\n".join(f"    {r}" for r in rules)
    _nft(f"table inet partition {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n"
         f"{body}\n  }}\n}}\n")


def _heal() -> None:
    _nft("delete table inet partition\n")


def _logs(*agents: AgentProcess) -> str:
    return "\n".join(f"--- {a.node} ---\n{a.log()}" for a in agents)


def _lan_pair(tmp_path: Path) -> tuple[AgentProcess, AgentProcess]:
    server = AgentProcess("-server", "-bootstrap", "-hcl", FAST, dev=False, ip=SERVER_IP, node="srv",
                          data_dir=str(tmp_path / "srv"))
    client = AgentProcess(f"-retry-join={SERVER_IP}", "-retry-interval=1s", "-hcl", FAST, dev=False,
                          ip=CLIENT_IP, node="c1", data_dir=str(tmp_path / "c1"))
    client.wait_for_leader = False
    return server, client


def _partition_heals(tmp_path: Path, hold_past_gossip_memory: bool) -> None:
    """A LAN partition that outlasts the failure detector, then heals.

    Healed right after the failure, the peers may still find each other through memberlist's
    gossip to the recently dead; held past ``gossip_to_the_dead_time`` they can only come back
    through serf's reconnect loop (without it they stay failed for good)."""
    _inside_private_netns()
    server, client = _lan_pair(tmp_path)
    running: list[AgentProcess] = []
    try:
        running.append(server.start())
        running.append(client.start())
        wait_for(lambda: member_statuses(server) == {"srv": ALIVE, "c1": ALIVE} == member_statuses(client), timeout=60,
                 what=lambda: _logs(server, client))
        wait_for(lambda: serf_health(server, "c1") == "passing", timeout=60, what=lambda: _logs(server))

        _partition(SERVER_IP, CLIENT_IP, SERF_LAN_PORT)
        wait_for(lambda: member_statuses(server).get("c1") == FAILED and member_statuses(client).get("srv") == FAILED,
                 timeout=90, what=lambda: f"both sides failed\n{_logs(server, client)}")
        failed_at = time.monotonic()
        wait_for(lambda: serf_health(server, "c1") == "critical", timeout=60, what=lambda: _logs(server))
        # Both keep retrying while the cut lasts (and fail): the loop does not give up.
        wait_for(lambda: "attempting reconnect to c1" in server.log() and "attempting reconnect to srv" in client.log(),
                 timeout=60, what=lambda: _logs(server, client))
        if hold_past_gossip_memory:
            # Long enough for both gossip cores to forget each other entirely (memberlist's
            # GossipToTheDeadTime): only serf's table remembers where the peer was.
            forgotten_at = failed_at + GossipConfig.lan().gossip_to_the_dead_time_s + 5
            wait_for(lambda: time.monotonic() > forgotten_at, timeout=forgotten_at - time.monotonic() + 30)
            assert member_statuses(server).get("c1") == FAILED and member_statuses(client).get("srv") == FAILED

        _heal()
        # No join by hand: the reconnect loop on either side brings both back.
        wait_for(lambda: member_statuses(server) == {"srv": ALIVE, "c1": ALIVE} == member_statuses(client), timeout=90,
                 what=lambda: f"both sides alive again\n{_logs(server, client)}")
        wait_for(lambda: serf_health(server, "c1") == "passing", timeout=60, what=lambda: _logs(server))
    finally:
        for agent in running:
            agent.stop()


def test_partition_longer_than_the_suspicion_timeout_heals_by_itself(tmp_path: Path,
                                                                      request: pytest.FixtureRequest) -> None:
    if _rerun_in_private_netns(request):
        return
    _partition_heals(tmp_path, hold_past_gossip_memory=False)


def test_partition_outlasting_gossips_memory_of_the_dead_heals_by_itself(tmp_path: Path,
                                                                         request: pytest.FixtureRequest) -> None:
    if _rerun_in_private_netns(request):
        return
    _partition_heals(tmp_path, hold_past_gossip_memory=True)


def test_wan_partition_outlasting_gossips_memory_of_the_dead_heals_by_itself(tmp_path: Path,
                                                                             request: pytest.FixtureRequest) -> None:
    if _rerun_in_private_netns(request):
        return
    _inside_private_netns()
    # -dev servers gossip with the local profile on both pools, so the WAN pool fails fast.
    dc1 = AgentProcess("-datacenter=dc1", "-hcl", FAST, ip=SERVER_IP, node="s1")
    dc2 = AgentProcess("-datacenter=dc2", f"-retry-join-wan={SERVER_IP}", "-retry-interval-wan=1s", "-hcl", FAST,
                       ip=CLIENT_IP, node="s2")
    both_alive = {"s1.dc1": ALIVE, "s2.dc2": ALIVE}
    running: list[AgentProcess] = []
    try:
        running.append(dc1.start())
        running.append(dc2.start())
        wait_for(lambda: member_statuses(dc1, wan=True) == both_alive == member_statuses(dc2, wan=True), timeout=60,
                 what=lambda: _logs(dc1, dc2))

        _partition(SERVER_IP, CLIENT_IP, SERF_WAN_PORT)
        wait_for(lambda: member_statuses(dc1, wan=True).get("s2.dc2") == FAILED == member_statuses(dc2, wan=True).get("s1.dc1"),
                 timeout=90, what=lambda: f"both sides failed\n{_logs(dc1, dc2)}")
        forgotten_at = time.monotonic() + GossipConfig.local().gossip_to_the_dead_time_s + 5
        wait_for(lambda: time.monotonic() > forgotten_at, timeout=forgotten_at - time.monotonic() + 30)
        assert "attempting reconnect to s2.dc2" in dc1.log() or "attempting reconnect to s1.dc1" in dc2.log()

        _heal()
        wait_for(lambda: member_statuses(dc1, wan=True) == both_alive == member_statuses(dc2, wan=True), timeout=90,
                 what=lambda: f"both sides alive again\n{_logs(dc1, dc2)}")
    finally:
        for agent in running:
            agent.stop()


def test_client_advertising_a_short_reconnect_timeout_is_reaped_and_deregistered(tmp_path: Path) -> None:
    prefix = free_subnet(2)
    sip, cip = f"{prefix}.1", f"{prefix}.2"
    server = AgentProcess("-server", "-bootstrap", "-hcl", FAST, dev=False, ip=sip, node="srv",
                          data_dir=str(tmp_path / "srv"))
    client = AgentProcess(f"-retry-join={sip}", "-retry-interval=1s", "-hcl",
                          'advertise_reconnect_timeout = "5s"', dev=False, ip=cip, node="c1",
                          data_dir=str(tmp_path / "c1"))
    client.wait_for_leader = False
    running: list[AgentProcess] = []
    try:
        running.append(server.start())
        running.append(client.start())
        wait_for(lambda: member_statuses(server) == {"srv": ALIVE, "c1": ALIVE}, timeout=60, what=lambda: _logs(server, client))
        tags = {m["Name"]: m["Tags"] for m in agent_json(server, "GET", "/v1/agent/members")}
        assert tags["c1"]["rc_tm"] == "5s" and "rc_tm" not in tags["srv"]
        wait_for(lambda: agent_json(server, "GET", "/v1/catalog/node/c1") is not None, timeout=60, what=lambda: _logs(server))

        client.kill()
        wait_for(lambda: member_statuses(server).get("c1") == FAILED, timeout=60, what=lambda: _logs(server))
        # Reaped after 5 s rather than the server's 72 h (the reaper runs every 15 s) ...
        wait_for(lambda: "c1" not in member_statuses(server), timeout=90, what=lambda: _logs(server))
        # ... and the leader takes the node out of the catalog, as Consul's reap does.
        wait_for(lambda: agent_json(server, "GET", "/v1/catalog/node/c1") is None, timeout=60, what=lambda: _logs(server))
        assert "serf: EventMemberReap: c1" in server.log()
    finally:
        for agent in running:
            agent.stop()
