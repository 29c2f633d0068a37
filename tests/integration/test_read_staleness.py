"""Bounded staleness on real agents: `?max_stale`, `discovery_max_stale`, `?leader`, DNS
`dns_config.max_stale`, and an `X-Consul-LastContact` that tells how old a follower's data is."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

from cluster_helpers import Cluster, put
from helpers import AgentProcess, wait_for


def _get(agent: AgentProcess, path: str) -> tuple[int, dict[str, str], bytes]:
    return agent.http("GET", path)


def test_max_stale_and_discovery_max_stale_on_a_dev_agent() -> None:
    agent = AgentProcess("-hcl", 'discovery_max_stale = "5s"').start()
    try:
        assert put(agent, "k", "v")
        status, headers, _ = _get(agent, "/v1/catalog/nodes")
        assert status == 200 and headers["X-Consul-Effective-Consistency"] == "stale"
        status, headers, _ = _get(agent, "/v1/health/service/consul")
        assert status == 200 and headers["X-Consul-Effective-Consistency"] == "stale"
        # ?leader names the default mode; other endpoints are not discovery reads.
        assert _get(agent, "/v1/catalog/nodes?leader")[1]["X-Consul-Effective-Consistency"] == "leader"
        assert _get(agent, "/v1/kv/k")[1]["X-Consul-Effective-Consistency"] == "leader"
        assert _get(agent, "/v1/catalog/nodes?consistent")[1]["X-Consul-Effective-Consistency"] == "consistent"
        # A positive ?max_stale is a (bounded) stale read on any read endpoint.
        status, headers, body = _get(agent, "/v1/kv/k?max_stale=1s")
        assert status == 200 and headers["X-Consul-Effective-Consistency"] == "stale"
        assert base64.b64decode(json.loads(body)[0]["Value"]) == b"v"
        assert _get(agent, "/v1/kv/k?max_stale=0s")[1]["X-Consul-Effective-Consistency"] == "leader"
        status, _, body = _get(agent, "/v1/kv/k?max_stale=abc")
        assert status == 400 and body.decode() == 'Invalid max_stale value "abc"'
        status, _, body = _get(agent, "/v1/kv/k?max_stale=1s&consistent")
        assert status == 400 and b"conflicting semantics" in body
    finally:
        agent.stop()


def _dig_status(agent: AgentProcess, name: str) -> tuple[str, str]:
    binary = shutil.which("dig")
    assert binary, "dig is missing: scripts/setup-env test installs bind9-dnsutils"
    out = subprocess.run([binary, f"@{agent.ip}", "-p", "8600", "+tries=1", "+time=20", name],
                         capture_output=True, text=True, timeout=60).stdout
    status = next((line.split("status:")[1].split(",")[0].strip() for line in out.splitlines() if "status:" in line), "")
    return status, out


def test_a_follower_cut_off_from_its_leader_bounds_its_staleness(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, hcl='dns_config { max_stale = "3s" }')
    try:
        cluster.start()
        leader_ip = cluster.leader_ip(cluster.nodes[cluster.ips[0]])
        follower_ip = next(ip for ip in cluster.ips if ip != leader_ip)
        f = cluster.nodes[follower_ip]
        assert put(f, "k", "v")
        wait_for(lambda: _get(f, "/v1/kv/k?stale")[0] == 200, timeout=30, what="the write on the follower")
        assert _dig_status(f, "consul.service.consul")[0] == "NOERROR"
        for ip in cluster.ips:
            if ip != follower_ip:
                cluster.nodes[ip].kill()  # no quorum left: the follower hears from no leader

        def contact_ms() -> int:
            status, headers, _ = _get(f, "/v1/kv/k?stale")
            assert status == 200
            return int(headers["X-Consul-LastContact"])

        # The header grows with the time since the leader was last heard from.
        wait_for(lambda: contact_ms() > 4000, timeout=60, what="X-Consul-LastContact past 4s")
        status, headers, body = _get(f, "/v1/kv/k?max_stale=1h")
        assert status == 200 and headers["X-Consul-Effective-Consistency"] == "stale"
        assert base64.b64decode(json.loads(body)[0]["Value"]) == b"v"
        # Past the bound the leader must answer, and there is none.
        status, _, body = _get(f, "/v1/kv/k?max_stale=2s")
        assert status == 500 and b"No cluster leader" in body, body
        # DNS with dns_config.max_stale = 3s likewise refuses to answer from stale data.
        status, out = _dig_status(f, "consul.service.consul")
        assert status == "SERVFAIL", out
    finally:
        cluster.stop()
