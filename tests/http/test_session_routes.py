"""http/session.py in process: create, read, renew and destroy sessions, and the errors of bad input."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]


async def _node(api: Client) -> None:
    body = {"Node": "n2", "Address": "10.0.0.2",
            "Checks": [{"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"}]}
    resp = await api.put("/v1/catalog/register", json=body)
    assert (resp.status, await resp.text()) == (200, "true")


async def test_create_list_info_and_destroy(api: Client) -> None:
    await _node(api)
    resp = await api.put("/v1/session/create", json={"Node": "n2", "Name": "lock", "TTL": "30s"})
    assert resp.status == 200
    assert "X-Consul-Index" not in resp.headers  # Consul sets no query metadata on a create
    body = await resp.json()
    assert list(body) == ["ID"]
    sid = body["ID"]
    resp = await api.get(f"/v1/session/info/{sid}")
    assert (resp.status, resp.headers["X-Consul-KnownLeader"]) == (200, "true")
    [session] = await resp.json()
    created = int(resp.headers["X-Consul-Index"])
    assert session == {"ID": sid, "Name": "lock", "Node": "n2", "LockDelay": 15_000_000_000, "Behavior": "release",
                       "TTL": "30s", "NodeChecks": ["serfHealth"], "ServiceChecks": None,
                       "CreateIndex": created, "ModifyIndex": created}
    assert [s["ID"] for s in await (await api.get("/v1/session/list")).json()] == [sid]
    assert [s["ID"] for s in await (await api.get("/v1/session/node/n2")).json()] == [sid]
    resp = await api.put(f"/v1/session/renew/{sid}")
    assert resp.status == 200
    assert [s["ID"] for s in await resp.json()] == [sid]
    # A lock held by the session, released when it is destroyed (Behavior release).
    resp = await api.put(f"/v1/kv/lock?acquire={sid}", data=b"me")
    assert (resp.status, await resp.text()) == (200, "true")
    [entry] = await (await api.get("/v1/kv/lock")).json()
    assert (entry["Session"], entry["LockIndex"]) == (sid, 1)
    resp = await api.put(f"/v1/session/destroy/{sid}")
    assert (resp.status, await resp.text()) == (200, "true")
    assert await (await api.get(f"/v1/session/info/{sid}")).json() == []
    [entry] = await (await api.get("/v1/kv/lock")).json()
    assert "Session" not in entry


async def test_unknown_sessions_and_nodes(api: Client) -> None:
    unknown = "00000000-0000-0000-0000-000000000000"
    resp = await api.put(f"/v1/session/renew/{unknown}")
    assert (resp.status, await resp.text()) == (404, f"Session id '{unknown}' not found")
    resp = await api.get(f"/v1/session/info/{unknown}")
    assert (resp.status, await resp.json()) == (200, [])
    assert "X-Consul-Index" in resp.headers
    resp = await api.put("/v1/session/create", json={"Node": "nope"})
    assert (resp.status, await resp.text()) == (500, "Missing node registration")


async def test_bad_session_bodies_are_400s(api: Client) -> None:
    await _node(api)
    cases = [
        (b"[]", "Request decode failed: expected a JSON object"),
        (b'{"Node": "n2", "TTL": "x"}', "Request decode failed: invalid TTL 'x'"),
        (b'{"Node": "n2", "TTL": "1s"}', "Invalid Session TTL '1s', must be between [10s=24h0m0s]"),
        (b'{"Node": "n2", "LockDelay": "2m"}', "Invalid LockDelay: must be between 0s and 60s"),
        (b'{"Node": "n2", "Behavior": "bogus"}', "Invalid Behavior setting 'bogus'"),
    ]
    for body, text in cases:
        resp = await api.put("/v1/session/create", data=body)
        assert (resp.status, await resp.text()) == (400, text), body
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    resp = await api.put("/v1/session/create", data=b"{")
    assert resp.status == 400 and (await resp.text()).startswith("Request decode failed: ")
    assert await (await api.get("/v1/session/list")).json() == []
