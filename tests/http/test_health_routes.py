"""http/health.py in process: `/v1/health/...` answers, `?passing`, `?filter` and bad states."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]

NODE = {
    "Node": "n2", "Address": "10.0.0.2",
    "Service": {"Service": "web", "Port": 80},
    "Checks": [
        {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"},
        {"CheckID": "web-check", "Name": "web", "Status": "critical", "ServiceID": "web"},
    ],
}


async def _setup(api: Client) -> int:
    resp = await api.put("/v1/catalog/register", json=NODE)
    assert (resp.status, await resp.text()) == (200, "true")
    resp = await api.get("/v1/catalog/nodes")
    return int(resp.headers["X-Consul-Index"])


async def test_service_health_has_node_service_and_checks(api: Client) -> None:
    index = await _setup(api)
    resp = await api.get("/v1/health/service/web")
    assert resp.status == 200
    assert (resp.headers["X-Consul-Index"], resp.headers["X-Consul-KnownLeader"]) == (str(index), "true")
    [entry] = await resp.json()
    assert list(entry) == ["Node", "Service", "Checks"]
    assert (entry["Node"]["Node"], entry["Service"]["Service"]) == ("n2", "web")
    assert sorted(c["CheckID"] for c in entry["Checks"]) == ["serfHealth", "web-check"]
    # ?passing: the critical service check drops the instance.
    resp = await api.get("/v1/health/service/web?passing")
    assert (resp.status, await resp.json()) == (200, [])
    assert resp.headers["X-Consul-Index"] == str(index)


async def test_checks_by_service_node_and_state(api: Client) -> None:
    await _setup(api)
    [check] = await (await api.get("/v1/health/checks/web")).json()
    assert (check["CheckID"], check["Status"], check["ServiceName"]) == ("web-check", "critical", "web")
    node_checks = await (await api.get("/v1/health/node/n2")).json()
    assert sorted(c["CheckID"] for c in node_checks) == ["serfHealth", "web-check"]
    critical = await (await api.get("/v1/health/state/critical")).json()
    assert [c["CheckID"] for c in critical] == ["web-check"]
    assert len(await (await api.get("/v1/health/state/any")).json()) == 2
    assert await (await api.get("/v1/health/node/nope")).json() == []


async def test_an_unknown_state_is_empty_and_a_bad_filter_is_400(api: Client) -> None:
    # Consul checks no state name: an unknown one matches no check.
    resp = await api.get("/v1/health/state/bogus")
    assert (resp.status, await resp.json()) == (200, [])
    resp = await api.get("/v1/health/service/web", params={"filter": "bad ="})
    assert resp.status == 400
    assert (await resp.text()).startswith("Failed to create boolean expression evaluator: ")


async def test_filter_selects_instances(api: Client) -> None:
    await _setup(api)
    resp = await api.get("/v1/health/service/web", params={"filter": 'Node.Node == "n2"'})
    assert [e["Node"]["Node"] for e in await resp.json()] == ["n2"]
    resp = await api.get("/v1/health/service/web", params={"filter": 'Node.Node == "n3"'})
    assert await resp.json() == []
