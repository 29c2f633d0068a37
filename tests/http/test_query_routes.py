"""http/query.py in process: prepared queries created, read, executed and deleted, and bad input."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]


async def test_create_get_execute_and_delete(api: Client) -> None:
    body = {"Node": "n2", "Address": "10.0.0.2", "Service": {"Service": "web", "Port": 80}}
    assert (await api.put("/v1/catalog/register", json=body)).status == 200
    resp = await api.post("/v1/query", json={"Name": "q", "Service": {"Service": "web"}})
    assert resp.status == 200
    query_id = (await resp.json())["ID"]
    resp = await api.get(f"/v1/query/{query_id}")
    assert (resp.status, resp.headers["X-Consul-KnownLeader"]) == (200, "true")
    [query] = await resp.json()
    assert (query["ID"], query["Name"], query["Service"]["Service"]) == (query_id, "q", "web")
    assert [q["ID"] for q in await (await api.get("/v1/query")).json()] == [query_id]
    for ref in (query_id, "q"):  # by ID and by name
        resp = await api.get(f"/v1/query/{ref}/execute")
        assert resp.status == 200, ref
        answer = await resp.json()
        assert (answer["Service"], answer["Datacenter"]) == ("web", "dc1")
        assert [n["Node"]["Node"] for n in answer["Nodes"]] == ["n2"]
    resp = await api.delete(f"/v1/query/{query_id}")
    assert resp.status == 200
    resp = await api.get(f"/v1/query/{query_id}")
    assert (resp.status, await resp.text()) == (404, "Query not found")


async def test_bad_queries(api: Client) -> None:
    resp = await api.post("/v1/query", data=b"{")
    assert resp.status == 400 and (await resp.text()).startswith("Request decode failed: ")
    resp = await api.get("/v1/query/nope")
    assert (resp.status, await resp.text()) == (404, "Query not found")
    resp = await api.get("/v1/query/nope/execute")
    assert (resp.status, await resp.text()) == (404, "Query not found")
