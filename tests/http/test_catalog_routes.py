"""http/catalog.py in process: `/v1/catalog/...` answers, headers and the 400s of bad input."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]

WEB = {
    "Node": "n2", "Address": "10.0.0.2",
    "Service": {"Service": "web", "Port": 80, "Tags": ["v1"]},
    "Checks": [{"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"}],
}


async def _register(api: Client, body: Any) -> tuple[int, str]:
    resp = await api.put("/v1/catalog/register", json=body)
    return resp.status, await resp.text()


async def test_register_then_read_the_service_with_its_index_and_leader_headers(api: Client) -> None:
    assert await _register(api, WEB) == (200, "true")
    resp = await api.get("/v1/catalog/service/web")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["X-Consul-KnownLeader"] == "true"
    assert resp.headers["X-Consul-LastContact"] == "0"
    index = int(resp.headers["X-Consul-Index"])
    [entry] = await resp.json()
    assert (entry["Node"], entry["Address"], entry["Datacenter"]) == ("n2", "10.0.0.2", "dc1")
    assert (entry["ServiceID"], entry["ServiceName"], entry["ServicePort"], entry["ServiceTags"]) == ("web", "web", 80, ["v1"])
    assert entry["CreateIndex"] == entry["ModifyIndex"] == index
    # Every catalog read carries the same index: the catalog's last change.
    for path in ("/v1/catalog/services", "/v1/catalog/nodes", "/v1/catalog/node/n2"):
        resp = await api.get(path)
        assert (resp.status, resp.headers["X-Consul-Index"]) == (200, str(index)), path
    assert await (await api.get("/v1/catalog/services")).json() == {"web": ["v1"]}
    [node] = await (await api.get("/v1/catalog/nodes")).json()
    assert node["Node"] == "n2" and node["TaggedAddresses"]["lan"] == "10.0.0.2"
    detail = await (await api.get("/v1/catalog/node/n2")).json()
    assert detail["Node"]["Node"] == "n2" and list(detail["Services"]) == ["web"]


async def test_absent_things_are_empty_answers_not_errors(api: Client) -> None:
    resp = await api.get("/v1/catalog/node/nope")
    assert (resp.status, await resp.text()) == (200, "null")
    assert "X-Consul-Index" in resp.headers
    resp = await api.get("/v1/catalog/service/nope")
    assert (resp.status, await resp.json()) == (200, [])
    assert await (await api.get("/v1/catalog/datacenters")).json() == ["dc1"]


async def test_deregister_removes_the_service(api: Client) -> None:
    assert await _register(api, WEB) == (200, "true")
    resp = await api.put("/v1/catalog/deregister", json={"Node": "n2", "ServiceID": "web"})
    assert (resp.status, await resp.text()) == (200, "true")
    assert await (await api.get("/v1/catalog/service/web")).json() == []
    assert await (await api.get("/v1/catalog/services")).json() == {}


async def test_bad_registrations_are_400s_with_consuls_texts(api: Client) -> None:
    cases = [
        ([], "Request decode failed: expected a JSON object"),
        ({"Address": "10.0.0.2"}, "Must provide node"),
        ({"Node": "n2"}, "Must provide address if SkipNodeUpdate is not set"),
        ({"Node": "n2", "Address": "x", "Service": "web"}, "Request decode failed: Service must be an object"),
        ({"Node": "n2", "Address": "x", "Service": {"Port": 80}}, "Invalid service: name: missing service name"),
        ({"Node": "n2", "Address": "x", "Checks": [{"CheckID": "c", "Status": "bogus"}]},
         "Invalid check status: 'bogus'"),
    ]
    for body, text in cases:
        resp = await api.put("/v1/catalog/register", json=body)
        assert (resp.status, await resp.text()) == (400, text), body
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    resp = await api.put("/v1/catalog/deregister", json={"ServiceID": "web"})
    assert (resp.status, await resp.text()) == (400, "Must provide node")


async def test_conflicting_consistency_modes_and_unknown_datacenters(api: Client) -> None:
    resp = await api.get("/v1/catalog/service/web?stale&consistent")
    assert (resp.status, await resp.text()) == (400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
    resp = await api.get("/v1/catalog/service/web?dc=dc9")
    assert (resp.status, await resp.text()) == (500, "No path to datacenter")
