"""`/v1/operator/autopilot/*` and `proconsul operator autopilot ...` on a real three-server cluster.

- configuration: the agent's `autopilot { }` block until set (indexes 0), then the replicated one,
  the same on every server; `?cas=` check-and-set; `set-config` merges flags; 400 on bad input;
- health and state in Consul's shapes; the `autopilot.healthy` / `autopilot.failure_tolerance`
  gauges in the Prometheus scrape; health answers 429 while a server is down;
- dead-server cleanup honours the replicated `ServerStabilizationTime`: a killed follower marked
  failed by gossip stays a voter under a long stabilization time, and is removed once an operator
  shortens it; restarted, it is added back and the cluster is healthy again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import Cluster, cli, member_statuses
from helpers import AgentProcess, wait_for
from prometheus_client.parser import text_string_to_metric_families

TIMEOUT = 120  # gossip failure detection and an autopilot pass on a loaded 2-core box


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, hcl='telemetry { disable_hostname = true prometheus_retention_time = "60s" }')
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _json(agent: AgentProcess, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, Any]:
    status, _, raw = agent.http(method, path, body)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def _gauges(agent: AgentProcess) -> dict[str, float]:
    status, _, body = agent.http("GET", "/v1/agent/metrics?format=prometheus")
    assert status == 200, body
    return {s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
            if s.name.startswith("consul_autopilot_")}


def _voters(agent: AgentProcess) -> list[str]:
    _, conf = _json(agent, "/v1/operator/raft/configuration?stale")
    return sorted(s["ID"] for s in conf["Servers"] if s["Voter"])


def _healthy(agent: AgentProcess, tolerance: int, servers: int) -> bool:
    status, h = _json(agent, "/v1/operator/autopilot/health")
    return status == 200 and h["Healthy"] is True and h["FailureTolerance"] == tolerance and len(h["Servers"]) == servers


def test_configuration_health_state_and_cleanup(cluster: Cluster) -> None:
    s1, s2, s3 = (cluster.nodes[ip] for ip in cluster.ips)
    # Every agent starts with the gauges declared, before anything is computed.
    assert set(_gauges(s2)) >= {"consul_autopilot_healthy", "consul_autopilot_failure_tolerance"}

    # The configuration file's values (defaults) until an operator sets it.
    status, conf = _json(s2, "/v1/operator/autopilot/configuration")
    assert status == 200
    assert conf == {"CleanupDeadServers": True, "LastContactThreshold": "200ms", "MaxTrailingLogs": 250,
                    "MinQuorum": 0, "ServerStabilizationTime": "10s", "RedundancyZoneTag": "",
                    "DisableUpgradeMigration": False, "UpgradeVersionTag": "", "CreateIndex": 0, "ModifyIndex": 0}
    out = cli("operator", "autopilot", "get-config", f"-http-addr={s3.addr}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "CleanupDeadServers = true", "LastContactThreshold = 200ms", "MaxTrailingLogs = 250", "MinQuorum = 0",
        "ServerStabilizationTime = 10s", 'RedundancyZoneTag = ""', "DisableUpgradeMigration = false",
        'UpgradeVersionTag = ""',
    ]

    # set-config merges the flags given and writes with CAS; every server sees the result.
    out = cli("operator", "autopilot", "set-config", "-server-stabilization-time=10m",
              "-last-contact-threshold=300ms", "-max-trailing-logs=400", f"-http-addr={s3.addr}")
    assert out.returncode == 0 and out.stdout.strip() == "Configuration updated!", out.stderr
    for agent in (s1, s2, s3):
        _, conf = _json(agent, "/v1/operator/autopilot/configuration?stale")
        assert (conf["ServerStabilizationTime"], conf["LastContactThreshold"], conf["MaxTrailingLogs"]) == \
            ("10m0s", "300ms", 400)
        assert conf["CleanupDeadServers"] is True and conf["ModifyIndex"] > 0
    index = conf["ModifyIndex"]
    stale_write = json.dumps({**conf, "MinQuorum": 2}).encode()
    assert _json(s1, "/v1/operator/autopilot/configuration?cas=0", "PUT", stale_write) == (200, False)
    assert _json(s1, f"/v1/operator/autopilot/configuration?cas={index}", "PUT", stale_write) == (200, True)
    assert _json(s1, f"/v1/operator/autopilot/configuration?cas={index}", "PUT", stale_write) == (200, False)
    assert _json(s2, "/v1/operator/autopilot/configuration")[1]["MinQuorum"] == 2
    for bad in (b'{"LastContactThreshold": "soon"}', b'{"MaxTrailingLogs": -1}', b"[1]", b"{"):
        status, reason = _json(s1, "/v1/operator/autopilot/configuration", "PUT", bad)
        assert status == 400 and isinstance(reason, str) and reason, (bad, reason)
    assert _json(s1, "/v1/operator/autopilot/configuration?cas=x", "PUT", stale_write)[0] == 400
    current = _json(s1, "/v1/operator/autopilot/configuration")[1]["ModifyIndex"]
    assert current > index
    assert _json(s1, f"/v1/operator/autopilot/configuration?cas={current}", "PUT",
                 json.dumps({**conf, "MinQuorum": 0}).encode()) == (200, True)

    # Health and state, Consul's shapes; the leader's gauges follow.
    wait_for(lambda: _healthy(s2, 1, 3), timeout=60, what="a healthy cluster")
    _, health = _json(s2, "/v1/operator/autopilot/health")
    leader_ip = cluster.leader_ip(s1)
    leader_id = cluster.node_id(leader_ip)
    by_id = {s["ID"]: s for s in health["Servers"]}
    assert sorted(by_id) == sorted(cluster.node_id(ip) for ip in cluster.ips)
    for ip in cluster.ips:
        s = by_id[cluster.node_id(ip)]
        assert set(s) == {"ID", "Name", "Address", "SerfStatus", "Version", "Leader", "LastContact", "LastTerm",
                          "LastIndex", "Healthy", "Voter", "StableSince"}
        assert (s["Name"], s["Address"], s["SerfStatus"], s["Voter"], s["Healthy"]) == \
            (cluster.name(ip), f"{ip}:8300", "alive", True, True)
        assert s["Leader"] is (ip == leader_ip) and s["LastIndex"] > 0 and s["LastTerm"] > 0
        assert s["StableSince"].endswith("Z")
    leader = cluster.nodes[leader_ip]
    wait_for(lambda: _gauges(leader) == {"consul_autopilot_healthy": 1.0, "consul_autopilot_failure_tolerance": 1.0},
             timeout=30, what=lambda: f"leader gauges {_gauges(leader)}")

    status, state = _json(s3, "/v1/operator/autopilot/state")
    assert status == 200 and state["Leader"] == leader_id and state["Healthy"] is True
    assert state["FailureTolerance"] == 1 and sorted(state["Voters"]) == sorted(by_id)
    assert state["Servers"][leader_id]["Status"] == "leader" and state["Servers"][leader_id]["NodeType"] == "voter"
    out = cli("operator", "autopilot", "state", f"-http-addr={s3.addr}")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["Healthy:", "true"] and lines[1].split() == ["Failure", "Tolerance:", "1"]
    assert lines[3].split() == ["Leader:", leader_id]
    assert f"      Name:            {cluster.name(leader_ip)}" in lines
    out = cli("operator", "autopilot", "state", "-format=json", f"-http-addr={s3.addr}")
    assert out.returncode == 0 and json.loads(out.stdout)["Leader"] == leader_id

    # Kill a follower: unhealthy (429), no failure tolerance left, but under the 10-minute
    # stabilization time it keeps its vote even once gossip marks it failed.
    victim_ip = next(ip for ip in cluster.ips if ip != leader_ip)
    victim_id, victim_name = cluster.node_id(victim_ip), cluster.name(victim_ip)
    cluster.nodes[victim_ip].kill()
    survivors = [cluster.nodes[ip] for ip in cluster.ips if ip != victim_ip]

    def unhealthy() -> bool:
        status, h = _json(survivors[0], "/v1/operator/autopilot/health")
        return status == 429 and h["Healthy"] is False and h["FailureTolerance"] == 0 and \
            [s["Healthy"] for s in h["Servers"] if s["ID"] == victim_id] == [False]

    wait_for(unhealthy, timeout=TIMEOUT, what="health 429 with the victim unhealthy")
    wait_for(lambda: _gauges(leader)["consul_autopilot_healthy"] == 0.0, timeout=30, what="healthy gauge 0")
    assert _gauges(leader)["consul_autopilot_failure_tolerance"] == 0.0
    wait_for(lambda: member_statuses(survivors[0]).get(victim_name) == 4, timeout=TIMEOUT, what="victim failed")
    assert victim_id in _voters(survivors[0])  # failed for far less than ServerStabilizationTime

    # Shortened through the API, the replicated setting is honoured: it is removed.
    out = cli("operator", "autopilot", "set-config", "-server-stabilization-time=2s", f"-http-addr={survivors[1].addr}")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: victim_id not in _voters(survivors[0]), timeout=TIMEOUT,
             what=lambda: f"victim removed\n{leader.log()}")
    assert "Attempting removal of failed server node " + victim_name in leader.log()
    wait_for(lambda: _healthy(survivors[0], 0, 2), timeout=60, what="two healthy servers")

    # Restarted, it is alive again, added back after the stabilization time, and all is healthy.
    cluster.nodes[victim_ip] = cluster.server(victim_ip).start()
    wait_for(lambda: _healthy(survivors[0], 1, 3), timeout=TIMEOUT,
             what=lambda: f"three healthy servers again: {_json(survivors[0], '/v1/operator/autopilot/health')}")
    wait_for(lambda: _gauges(leader) == {"consul_autopilot_healthy": 1.0, "consul_autopilot_failure_tolerance": 1.0},
             timeout=30, what="gauges recovered")
