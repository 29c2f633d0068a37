"""http/kv.py in process: `/v1/kv/...` reads and writes, check-and-set, and the 4xx of bad input."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from inprocess_agent import api_client

Client = TestClient[Any, Any]
MAX_VALUE = 64


@pytest.fixture
async def kv() -> AsyncIterator[Client]:
    async with api_client(f"limits {{ kv_max_value_size = {MAX_VALUE} }}") as (_, client):
        yield client


async def _put(kv: Client, path: str, value: bytes = b"") -> tuple[int, str]:
    resp = await kv.put(path, data=value)
    return resp.status, await resp.text()


async def test_put_then_get_in_each_form(kv: Client) -> None:
    resp = await kv.put("/v1/kv/app/a?flags=42", data=b"hello")
    assert (resp.status, await resp.text()) == (200, "true")
    written = int(resp.headers["X-Consul-Index"])
    resp = await kv.get("/v1/kv/app/a")
    assert resp.status == 200
    assert (resp.headers["X-Consul-Index"], resp.headers["X-Consul-KnownLeader"]) == (str(written), "true")
    assert await resp.json() == [{"LockIndex": 0, "Key": "app/a", "Flags": 42,
                                  "Value": base64.b64encode(b"hello").decode(), "CreateIndex": written,
                                  "ModifyIndex": written}]
    resp = await kv.get("/v1/kv/app/a?raw")
    assert (resp.status, await resp.read()) == (200, b"hello")
    assert resp.headers["X-Consul-Index"] == str(written)
    assert await _put(kv, "/v1/kv/app/b", b"") == (200, "true")
    assert await (await kv.get("/v1/kv/app/?keys")).json() == ["app/a", "app/b"]
    assert await (await kv.get("/v1/kv/?keys&separator=/")).json() == ["app/"]
    entries = await (await kv.get("/v1/kv/app?recurse")).json()
    assert [(e["Key"], e["Value"]) for e in entries] == [("app/a", "aGVsbG8="), ("app/b", None)]


async def test_a_missing_key_is_a_404_that_still_carries_the_index(kv: Client) -> None:
    assert await _put(kv, "/v1/kv/there", b"x") == (200, "true")
    resp = await kv.get("/v1/kv/missing")
    assert (resp.status, await resp.read()) == (404, b"")
    assert int(resp.headers["X-Consul-Index"]) > 0
    assert resp.headers["X-Consul-KnownLeader"] == "true"


async def test_check_and_set_and_delete(kv: Client) -> None:
    assert await _put(kv, "/v1/kv/k", b"1") == (200, "true")
    assert await _put(kv, "/v1/kv/k?cas=0", b"2") == (200, "false")  # cas=0: only if absent
    [entry] = await (await kv.get("/v1/kv/k")).json()
    assert await _put(kv, f"/v1/kv/k?cas={entry['ModifyIndex'] + 1}", b"2") == (200, "false")
    assert await _put(kv, f"/v1/kv/k?cas={entry['ModifyIndex']}", b"2") == (200, "true")
    assert await (await kv.get("/v1/kv/k?raw")).read() == b"2"
    resp = await kv.delete("/v1/kv/k?cas=1")
    assert (resp.status, await resp.text()) == (200, "false")
    resp = await kv.delete("/v1/kv/k")
    assert (resp.status, await resp.text()) == (200, "true")
    assert (await kv.get("/v1/kv/k")).status == 404


async def test_bad_writes_are_4xx_with_consuls_texts(kv: Client) -> None:
    assert await _put(kv, "/v1/kv/a?cas=x", b"1") == (400, "Invalid cas")
    assert await _put(kv, "/v1/kv/a?flags=-1", b"1") == (400, "Invalid flags")
    assert await _put(kv, "/v1/kv/", b"1") == (400, "Missing key name")
    assert await _put(kv, "/v1/kv/a?recurse", b"1") == (400, "Cannot set recurse with PUT")
    resp = await kv.delete("/v1/kv/a?recurse&cas=1")
    assert (resp.status, await resp.text()) == (400, "Conflicting flags: cas=true, recurse=true")
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert await _put(kv, "/v1/kv/a", b"x" * (MAX_VALUE + 1)) == (
        413, f"Request body(+{MAX_VALUE + 1} bytes) too large, max size: {MAX_VALUE} bytes. See "
        "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.")
    assert await _put(kv, "/v1/kv/a", b"x" * MAX_VALUE) == (200, "true")  # the limit itself is allowed
    resp = await kv.get("/v1/kv/a?stale&consistent")
    assert (resp.status, await resp.text()) == (400, "Cannot specify ?stale with ?consistent, conflicting semantics.")


async def test_consistency_modes_are_reported(kv: Client) -> None:
    assert await _put(kv, "/v1/kv/a", b"1") == (200, "true")
    for query, mode in (("", "leader"), ("?stale", "stale"), ("?consistent", "consistent")):
        resp = await kv.get(f"/v1/kv/a{query}")
        assert (resp.status, resp.headers["X-Consul-Effective-Consistency"]) == (200, mode), query
