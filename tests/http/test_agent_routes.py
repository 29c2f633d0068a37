"""http/agent.py and http/agent_self.py in process: `/v1/agent/self` and `/version`, local service
and check registration, TTL updates and maintenance, and the errors of bad input."""

from __future__ import annotations

from typing import Any

import proconsul
from aiohttp.test_utils import TestClient
from inprocess_agent import api_client

Client = TestClient[Any, Any]


async def test_self_describes_this_agent() -> None:
    async with api_client('node_meta { rack = "r1" }', node="self-node") as (agent, api):
        resp = await api.get("/v1/agent/self")
        assert (resp.status, resp.headers["Content-Type"]) == (200, "application/json")
        body = await resp.json()
    assert list(body) == ["Config", "DebugConfig", "Coord", "Member", "Stats", "Meta", "xDS"]
    config = body["Config"]
    assert (config["NodeName"], config["NodeID"], config["Datacenter"], config["Server"]) == (
        "self-node", agent.node_id, "dc1", True)
    assert config["Version"] == proconsul.CONSUL_COMPAT_VERSION
    debug = body["DebugConfig"]
    assert (debug["DevMode"], debug["ServerMode"], debug["AdvertiseAddrLAN"], debug["ClientAddrs"]) == (
        True, True, "127.0.0.1", ["127.0.0.1"])
    assert body["Meta"] == {"rack": "r1"}
    assert body["Coord"]["Vec"] == [0.0] * 8  # no coordinate yet: the origin
    assert (body["Member"]["Name"], body["Member"]["Tags"]["role"]) == ("self-node", "consul")
    stats = body["Stats"]
    assert sorted(stats) == ["agent", "build", "consul", "raft", "runtime", "serf_lan", "serf_wan"]
    assert stats["agent"] == {"check_monitors": "0", "check_ttls": "0", "checks": "0", "services": "0"}
    assert (stats["consul"]["leader"], stats["consul"]["server"], stats["consul"]["known_datacenters"]) == (
        "true", "true", "1")
    # -dev's single voter: its commit count, as a leader with no peers.
    raft = stats["raft"]
    assert (raft["state"], raft["num_peers"]) == ("Leader", "0")
    assert raft["commit_index"] == raft["applied_index"] == str(agent.server.consensus.commit_index)
    assert body["xDS"] is None


async def test_version(api: Client) -> None:
    resp = await api.get("/v1/agent/version")
    assert resp.status == 200
    assert await resp.json() == {"SHA": "", "BuildDate": "", "HumanVersion": proconsul.CONSUL_COMPAT_VERSION,
                                 "FIPS": "", "ProconsulVersion": proconsul.__version__}


async def test_local_service_and_ttl_check(api: Client) -> None:
    resp = await api.put("/v1/agent/service/register", json={"Name": "web", "Port": 80, "Tags": ["v1"],
                                                             "Check": {"TTL": "30s"}})
    assert (resp.status, await resp.text()) == (200, "")
    services = await (await api.get("/v1/agent/services")).json()
    assert list(services) == ["web"]
    assert (services["web"]["Service"], services["web"]["Port"], services["web"]["Tags"]) == ("web", 80, ["v1"])
    checks = await (await api.get("/v1/agent/checks")).json()
    assert list(checks) == ["service:web"] and checks["service:web"]["Status"] == "critical"
    resp = await api.put("/v1/agent/check/pass/service:web?note=ok")
    assert resp.status == 200
    check = (await (await api.get("/v1/agent/checks")).json())["service:web"]
    assert (check["Status"], check["Output"]) == ("passing", "ok")
    resp = await api.get("/v1/agent/health/service/id/web")
    assert resp.status == 200 and (await resp.json())["AggregatedStatus"] == "passing"
    self_stats = (await (await api.get("/v1/agent/self")).json())["Stats"]["agent"]
    assert (self_stats["services"], self_stats["checks"], self_stats["check_ttls"]) == ("1", "1", "1")
    resp = await api.put("/v1/agent/service/deregister/web")
    assert resp.status == 200
    assert await (await api.get("/v1/agent/services")).json() == {}
    assert await (await api.get("/v1/agent/checks")).json() == {}


async def test_agent_errors(api: Client) -> None:
    resp = await api.put("/v1/agent/service/register", json={"Port": 80})
    assert (resp.status, await resp.text()) == (400, "Missing service name")
    resp = await api.put("/v1/agent/service/register", data=b"[]")
    assert (resp.status, await resp.text()) == (400, "Request decode failed: expected a JSON object")
    resp = await api.put("/v1/agent/check/pass/nope")
    assert (resp.status, await resp.text()) == (
        404, 'Unknown check ID "nope". Ensure that the check ID is passed, not the check name.')
    resp = await api.put("/v1/agent/maintenance")
    assert (resp.status, await resp.text()) == (400, "Missing value for enable")
    resp = await api.put("/v1/agent/maintenance?enable=maybe")
    assert (resp.status, await resp.text()) == (400, "Invalid value for enable: 'maybe'")
    resp = await api.get("/v1/agent/service/nope")
    assert resp.status == 404
