"""The HTTP API over a raw socket: Consul's headers, parameters and errors, byte for byte where it matters."""

from __future__ import annotations

import json
import threading
import time

import pytest
from helpers import AgentProcess


def test_kv_miss_is_404_with_index_and_leader_headers(dev_agent: AgentProcess) -> None:
    status, headers, body = dev_agent.http("GET", "/v1/kv/never/written")
    assert status == 404 and body == b""
    assert int(headers["X-Consul-Index"]) >= 1
    assert headers["X-Consul-KnownLeader"] == "true"
    assert headers["X-Consul-LastContact"] == "0"


def test_consistency_modes_reported(dev_agent: AgentProcess) -> None:
    dev_agent.http("PUT", "/v1/kv/mode", b"1")
    for query, expected in (("", "leader"), ("?stale", "stale"), ("?consistent", "consistent")):
        status, headers, _ = dev_agent.http("GET", f"/v1/kv/mode{query}")
        assert status == 200 and headers["X-Consul-Effective-Consistency"] == expected
    status, _, body = dev_agent.http("GET", "/v1/kv/mode?stale&consistent")
    assert status == 400 and b"conflicting" in body


def test_raw_value_and_pretty(dev_agent: AgentProcess) -> None:
    dev_agent.http("PUT", "/v1/kv/raw/html", b"<b>hi</b>")
    status, headers, body = dev_agent.http("GET", "/v1/kv/raw/html?raw")
    assert status == 200 and body == b"<b>hi</b>"
    assert headers["Content-Type"].startswith("text/plain")
    _, _, pretty = dev_agent.http("GET", "/v1/kv/raw/html?pretty")
    assert pretty.startswith(b"[\n    {")


def test_oversized_value_is_413_and_not_stored(dev_agent: AgentProcess) -> None:
    status, _, body = dev_agent.http("PUT", "/v1/kv/big", b"x" * (512 * 1024 + 1))
    assert status == 413 and b"too large" in body
    assert dev_agent.http("GET", "/v1/kv/big")[0] == 404
    status, _, _ = dev_agent.http("PUT", "/v1/kv/big", b"x" * (512 * 1024))
    assert status == 200


def test_encoded_newline_in_key_is_rejected(dev_agent: AgentProcess) -> None:
    status, _, body = dev_agent.http("PUT", "/v1/kv/bad%0Akey", b"x")
    assert status == 400 and body
    assert dev_agent.http("GET", "/v1/kv/bad?recurse")[0] == 404


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v1/agent/service/register", b"{not json", b"decode"),
        ("/v1/agent/service/register", b'{"Name": "x", "Port": "eighty"}', b"Port"),
        ("/v1/agent/service/register", b'{"Port": 80}', b"Missing service name"),
        ("/v1/agent/service/register", b'{"Name": "x", "Check": {"Interval": "10s"}}', b"check"),
        ("/v1/agent/service/register", b'{"Name": "x", "Check": {"HTTP": "http://a", "Interval": "soon"}}', b"Interval"),
        ("/v1/agent/check/register", b'{"Name": "c", "Bogus": "1"}', b"check"),
        ("/v1/catalog/register", b'{"Node": "n"}', b"address"),
        ("/v1/txn", b'[{"KV": {"Verb": "explode", "Key": "k"}}]', b"verb"),
        ("/v1/txn", b'[{"KV": {"Verb": "set", "Key": "k", "Value": "%%%"}}]', b"base64"),
    ],
)
def test_bad_input_is_400_with_a_reason_and_changes_nothing(
    dev_agent: AgentProcess, path: str, body: bytes, needle: bytes
) -> None:
    _, before, _ = dev_agent.http("GET", "/v1/catalog/services")
    status, _, answer = dev_agent.http("PUT", path, body)
    assert status == 400, answer
    assert needle.lower() in answer.lower() and b"\n" not in answer.strip()
    _, after, _ = dev_agent.http("GET", "/v1/catalog/services")
    assert after["X-Consul-Index"] == before["X-Consul-Index"]
    assert "x" not in json.loads(dev_agent.http("GET", "/v1/agent/services")[2])


def test_txn_with_too_many_operations_is_413(dev_agent: AgentProcess) -> None:
    ops = [{"KV": {"Verb": "get", "Key": f"k{i}"}} for i in range(129)]
    status, _, body = dev_agent.http("PUT", "/v1/txn", json.dumps(ops).encode())
    assert status == 413 and b"too many operations" in body


def test_unknown_datacenter(dev_agent: AgentProcess) -> None:
    status, _, body = dev_agent.http("GET", "/v1/catalog/nodes?dc=elsewhere")
    assert status == 500 and body == b"No path to datacenter"
    assert dev_agent.http("GET", "/v1/catalog/nodes?dc=dc1")[0] == 200


def test_wrong_method_is_405(dev_agent: AgentProcess) -> None:
    status, _, _ = dev_agent.http("POST", "/v1/agent/services")
    assert status == 405


def test_tokens_accepted_from_all_three_places(dev_agent: AgentProcess) -> None:
    import urllib.request

    for headers, query in (({"X-Consul-Token": "t"}, ""), ({"Authorization": "Bearer t"}, ""), ({}, "?token=t")):
        req = urllib.request.Request(f"{dev_agent.url}/v1/agent/self{query}", headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200


def test_blocking_catalog_query_wakes_on_service_registration(dev_agent: AgentProcess) -> None:
    _, headers, _ = dev_agent.http("GET", "/v1/catalog/service/late")
    index = int(headers["X-Consul-Index"])
    result: dict[str, object] = {}

    def block() -> None:
        result["r"] = dev_agent.http("GET", f"/v1/catalog/service/late?index={index}&wait=60s")

    thread = threading.Thread(target=block)
    thread.start()
    time.sleep(0.2)
    body = json.dumps({"Name": "late", "Port": 1}).encode()
    assert dev_agent.http("PUT", "/v1/agent/service/register", body)[0] == 200
    thread.join(30)
    assert not thread.is_alive()
    status, headers2, answer = result["r"]  # type: ignore[misc]
    assert status == 200 and int(headers2["X-Consul-Index"]) > index
    assert json.loads(answer)[0]["ServiceName"] == "late"
    dev_agent.http("PUT", "/v1/agent/service/deregister/late")


def test_health_agent_endpoints(dev_agent: AgentProcess) -> None:
    body = json.dumps({"Name": "svc-h", "ID": "svc-h", "Check": {"TTL": "60s", "Status": "passing"}}).encode()
    assert dev_agent.http("PUT", "/v1/agent/service/register", body)[0] == 200
    status, _, answer = dev_agent.http("GET", "/v1/agent/health/service/id/svc-h?format=text")
    assert (status, answer) == (200, b"passing")
    assert dev_agent.http("PUT", "/v1/agent/service/maintenance/svc-h?enable=true&reason=upgrade")[0] == 200
    status, _, answer = dev_agent.http("GET", "/v1/agent/health/service/name/svc-h?format=text")
    assert status == 503
    checks = json.loads(dev_agent.http("GET", "/v1/agent/checks")[2])
    assert checks["_service_maintenance:svc-h"]["Notes"] == "upgrade"
    assert dev_agent.http("PUT", "/v1/agent/service/maintenance/svc-h?enable=false")[0] == 200
    assert dev_agent.http("PUT", "/v1/agent/service/maintenance/svc-h")[0] == 400
    dev_agent.http("PUT", "/v1/agent/service/deregister/svc-h")
