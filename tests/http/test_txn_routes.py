"""http/txn.py in process: `/v1/txn` answers (read-write, read-only, rolled back) and bad input."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]


def _kv(verb: str, key: str, **fields: Any) -> dict[str, Any]:
    return {"KV": {"Verb": verb, "Key": key, **fields}}


async def test_a_write_transaction_answers_every_result(api: Client) -> None:
    resp = await api.put("/v1/txn", json=[_kv("set", "a", Value="aGk="), _kv("get", "a")])
    assert resp.status == 200
    body = await resp.json()
    assert list(body) == ["Results", "Errors"] and body["Errors"] is None
    set_result, get_result = (r["KV"] for r in body["Results"])
    assert (set_result["Key"], set_result["Value"]) == ("a", None)  # a set answers no value
    assert (get_result["Key"], get_result["Value"]) == ("a", "aGk=")
    assert set_result["ModifyIndex"] == get_result["ModifyIndex"] > 0
    resp = await api.get("/v1/kv/a?raw")
    assert await resp.read() == b"hi"


async def test_a_read_only_transaction_carries_the_read_headers(api: Client) -> None:
    assert (await api.put("/v1/kv/a", data=b"hi")).status == 200
    resp = await api.put("/v1/txn", json=[_kv("get", "a")])
    assert resp.status == 200
    assert (resp.headers["X-Consul-KnownLeader"], resp.headers["X-Consul-LastContact"]) == ("true", "0")
    body = await resp.json()
    assert body["Errors"] is None and body["KnownLeader"] is True
    assert [r["KV"]["Value"] for r in body["Results"]] == ["aGk="]


async def test_a_failed_operation_rolls_back_with_409(api: Client) -> None:
    resp = await api.put("/v1/txn", json=[_kv("set", "b", Value="eA=="), _kv("cas", "a", Value="aGk=", Index=1)])
    assert resp.status == 409
    assert await resp.json() == {"Results": None, "Errors": [{"OpIndex": 1, "What": 'failed to set key "a", index is stale'}]}
    assert (await api.get("/v1/kv/b")).status == 404  # nothing of it applied


async def test_bad_transactions_are_4xx_with_their_texts(api: Client) -> None:
    cases: list[tuple[Any, int, str]] = [
        ({}, 400, "Failed to parse body: expected a JSON array of operations"),
        ([1], 400, "Failed to parse body: operation 0 is not an object"),
        ([_kv("bogus", "a")], 400, "Invalid KV verb 'bogus' in operation 0"),
        ([_kv("set", "a", Value="!!")], 400, "Operation 0: Value is not valid base64"),
        ([{**_kv("set", "a"), "Node": {}}], 400,
         "Operation 0: expected exactly one of KV, Node, Service, Check, Session (got KV, Node)"),
        ([_kv("get", "a")] * 129, 413, "Transaction contains too many operations (129 > 128)"),
    ]
    for body, status, text in cases:
        resp = await api.put("/v1/txn", json=body)
        assert (resp.status, await resp.text()) == (status, text), text
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    resp = await api.put("/v1/txn", data=b"[")
    assert resp.status == 400 and (await resp.text()).startswith("Failed to parse body: ")
