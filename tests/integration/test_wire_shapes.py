"""Golden shapes of Consul's JSON answers, checked on a real dev agent: exact key sets, types and
nullability, where Go's encoder (omitempty, nil slices, untagged embedded structs) decides them.

The expected shapes come from Consul's structs and handlers (agent/structs, api/agent.go,
agent/*_endpoint.go, agent/consul/state/txn.go); docs/COMPATIBILITY.md lists what is verified.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import consul
import pytest
from helpers import AgentProcess, wait_for

KV_KEYS = {"LockIndex", "Key", "Flags", "Value", "CreateIndex", "ModifyIndex"}
READ_TXN_KEYS = {
    "Results", "Errors", "Index", "LastContact", "KnownLeader", "ConsistencyLevel", "NotModified", "Backend",
    "ResultsFilteredByACLs",
}
AGENT_SERVICE_KEYS = {"ID", "Service", "Tags", "Meta", "Port", "Address", "Weights", "EnableTagOverride", "Datacenter"}
NODE_SERVICE_KEYS = {
    "ID", "Service", "Tags", "Address", "Meta", "Port", "Weights", "EnableTagOverride", "Proxy", "Connect", "PeerName",
    "CreateIndex", "ModifyIndex",
}
SERVICE_NODE_KEYS = {
    "ID", "Node", "Address", "Datacenter", "TaggedAddresses", "NodeMeta", "ServiceKind", "ServiceID", "ServiceName",
    "ServiceTags", "ServiceAddress", "ServiceWeights", "ServiceMeta", "ServicePort", "ServiceSocketPath",
    "ServiceEnableTagOverride", "ServiceProxy", "ServiceConnect", "ServiceLocality", "CreateIndex", "ModifyIndex",
}


def _json(agent: AgentProcess, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    status, headers, answer = agent.http(method, path, raw)
    return status, headers, json.loads(answer) if answer else None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# ------------------------------------------------------------------------------------ KV


def test_empty_value_reads_back_as_null_everywhere(dev_agent: AgentProcess) -> None:
    assert dev_agent.http("PUT", "/v1/kv/shape/empty", b"")[0] == 200
    _, _, [entry] = _json(dev_agent, "GET", "/v1/kv/shape/empty")
    assert set(entry) == KV_KEYS and entry["Value"] is None
    _, _, listed = _json(dev_agent, "GET", "/v1/kv/shape/?recurse")
    assert [e["Value"] for e in listed if e["Key"] == "shape/empty"] == [None]
    status, _, body = _json(dev_agent, "PUT", "/v1/txn", [{"KV": {"Verb": "get", "Key": "shape/empty"}}])
    assert status == 200 and body["Results"][0]["KV"]["Value"] is None
    assert dev_agent.http("GET", "/v1/kv/shape/empty?raw")[2] == b""


# ------------------------------------------------------------------------------------ txn


def test_write_txn_results_per_operation(dev_agent: AgentProcess) -> None:
    dev_agent.http("PUT", "/v1/kv/txnshape/old", b"x")
    ops = [
        {"KV": {"Verb": "set", "Key": "txnshape/a", "Value": _b64("1"), "Flags": 7}},
        {"KV": {"Verb": "delete", "Key": "txnshape/old"}},
        {"KV": {"Verb": "get", "Key": "txnshape/a"}},
        {"KV": {"Verb": "check-not-exists", "Key": "txnshape/old"}},
    ]
    status, headers, body = _json(dev_agent, "PUT", "/v1/txn", ops)
    assert status == 200 and set(body) == {"Results", "Errors"} and body["Errors"] is None
    # set answers its entry with the value blanked; delete and check-not-exists answer nothing.
    written, read = body["Results"]
    assert set(written) == {"KV"} and set(written["KV"]) == KV_KEYS
    assert written["KV"]["Value"] is None and written["KV"]["Flags"] == 7
    assert read["KV"]["Value"] == _b64("1")
    # Consul's txn handler sets no index header on a write.
    assert "X-Consul-Index" not in headers


def test_write_txn_without_results_is_an_empty_list(dev_agent: AgentProcess) -> None:
    dev_agent.http("PUT", "/v1/kv/txnshape/gone", b"x")
    status, _, body = _json(dev_agent, "PUT", "/v1/txn", [{"KV": {"Verb": "delete", "Key": "txnshape/gone"}}])
    assert status == 200 and body == {"Results": [], "Errors": None}


def test_failed_txn_is_409_with_errors_only(dev_agent: AgentProcess) -> None:
    ops = [
        {"KV": {"Verb": "set", "Key": "txnshape/never", "Value": _b64("1")}},
        {"KV": {"Verb": "cas", "Key": "txnshape/never-cas", "Value": _b64("1"), "Index": 999999}},
    ]
    status, _, body = _json(dev_agent, "PUT", "/v1/txn", ops)
    assert status == 409
    assert body == {"Results": None, "Errors": [{"OpIndex": 1, "What": body["Errors"][0]["What"]}]}
    assert "index is stale" in body["Errors"][0]["What"]
    assert dev_agent.http("GET", "/v1/kv/txnshape/never")[0] == 404


def test_read_only_txn_carries_query_meta_in_the_body(dev_agent: AgentProcess) -> None:
    dev_agent.http("PUT", "/v1/kv/txnshape/r", b"v")
    ops = [{"KV": {"Verb": "get", "Key": "txnshape/r"}}, {"KV": {"Verb": "get-tree", "Key": "txnshape/r"}}]
    status, headers, body = _json(dev_agent, "PUT", "/v1/txn", ops)
    assert status == 200 and set(body) == READ_TXN_KEYS
    assert [set(r) for r in body["Results"]] == [{"KV"}, {"KV"}]
    assert body["Results"][0]["KV"]["Value"] == _b64("v") and set(body["Results"][0]["KV"]) == KV_KEYS
    assert body["Errors"] is None and body["KnownLeader"] is True
    assert (body["Index"], body["LastContact"], body["ConsistencyLevel"], body["NotModified"], body["Backend"]) == (
        0, 0, "", False, 0
    )
    assert headers["X-Consul-KnownLeader"] == "true" and "X-Consul-Index" not in headers
    # A read of nothing is an empty list, as Consul's read transaction allocates its results.
    _, _, empty = _json(dev_agent, "PUT", "/v1/txn", [{"KV": {"Verb": "get-tree", "Key": "txnshape/none/"}}])
    assert empty["Results"] == []


def test_read_only_txn_failure_is_409(dev_agent: AgentProcess) -> None:
    status, _, body = _json(dev_agent, "PUT", "/v1/txn", [{"KV": {"Verb": "get", "Key": "txnshape/absent"}}])
    assert status == 409 and set(body) == READ_TXN_KEYS
    assert body["Results"] is None and body["Errors"] == [{"OpIndex": 0, "What": 'key "txnshape/absent" doesn\'t exist'}]


def test_get_or_empty_of_a_missing_key_answers_the_operation_entry(dev_agent: AgentProcess) -> None:
    op = {"KV": {"Verb": "get-or-empty", "Key": "txnshape/maybe", "Flags": 3}}
    status, _, body = _json(dev_agent, "PUT", "/v1/txn", [op])
    assert status == 200
    [result] = body["Results"]
    assert result["KV"]["Key"] == "txnshape/maybe" and result["KV"]["Value"] is None and result["KV"]["Flags"] == 3


# ------------------------------------------------------------------------------------ services


@pytest.fixture(scope="module")
def registered(dev_agent: AgentProcess) -> str:
    """Two plain services on the dev agent, synced to the catalog; returns the node name."""
    for sid, name, tags in (("shape-web-1", "shape-web", ["v1"]), ("shape-db-1", "shape-db", ["primary"])):
        status, _, _ = _json(dev_agent, "PUT", "/v1/agent/service/register",
                             {"ID": sid, "Name": name, "Port": 8080, "Tags": tags, "Check": {"TTL": "300s"}})
        assert status == 200
    wait_for(lambda: _json(dev_agent, "GET", "/v1/catalog/service/shape-db")[2], what="anti-entropy sync")
    _, _, self_info = _json(dev_agent, "GET", "/v1/agent/self")
    return str(self_info["Config"]["NodeName"])


def test_agent_service_fields_for_a_plain_service(dev_agent: AgentProcess, registered: str) -> None:
    _, _, services = _json(dev_agent, "GET", "/v1/agent/services")
    web = services["shape-web-1"]
    assert set(web) == AGENT_SERVICE_KEYS
    assert web["Tags"] == ["v1"] and web["Meta"] == {} and web["Weights"] == {"Passing": 1, "Warning": 1}
    _, headers, single = _json(dev_agent, "GET", "/v1/agent/service/shape-web-1")
    assert set(single) == AGENT_SERVICE_KEYS | {"ContentHash"}
    assert headers["X-Consul-ContentHash"] == single["ContentHash"]


def test_catalog_and_health_service_fields(dev_agent: AgentProcess, registered: str) -> None:
    _, _, [item] = _json(dev_agent, "GET", "/v1/catalog/service/shape-web")
    assert set(item) == SERVICE_NODE_KEYS and item["ServiceLocality"] is None
    _, _, [entry] = _json(dev_agent, "GET", "/v1/health/service/shape-web")
    assert set(entry) == {"Node", "Service", "Checks"}
    assert set(entry["Service"]) == NODE_SERVICE_KEYS and entry["Service"]["PeerName"] == ""
    _, _, node = _json(dev_agent, "GET", f"/v1/catalog/node/{registered}")
    assert set(node["Services"]["shape-web-1"]) == NODE_SERVICE_KEYS


# ------------------------------------------------------------------------------------ ?filter


def test_catalog_services_filter(dev_agent: AgentProcess, registered: str) -> None:
    status, _, body = _json(dev_agent, "GET", "/v1/catalog/services?filter=" + _q('ServiceName == "shape-web"'))
    assert status == 200 and body == {"shape-web": ["v1"]}
    status, _, body = _json(dev_agent, "GET", "/v1/catalog/services?filter=" + _q("primary in ServiceTags"))
    assert body == {"shape-db": ["primary"]}
    assert dev_agent.http("GET", "/v1/catalog/services?filter=" + _q("Nope == 1"))[0] == 400


def test_catalog_node_filter(dev_agent: AgentProcess, registered: str) -> None:
    status, _, body = _json(dev_agent, "GET", f"/v1/catalog/node/{registered}?filter=" + _q('Service == "shape-db"'))
    assert status == 200 and list(body["Services"]) == ["shape-db-1"]
    assert dev_agent.http("GET", f"/v1/catalog/node/{registered}?filter=" + _q("Nope == 1"))[0] == 400


def _q(expr: str) -> str:
    from urllib.parse import quote

    return quote(expr)


# ------------------------------------------------------------------------------------ absent features


@pytest.mark.parametrize(
    "path", ["/v1/health/connect/shape-web", "/v1/health/ingress/shape-web", "/v1/catalog/connect/shape-web"]
)
def test_connect_reads_are_empty_lists_with_query_meta(dev_agent: AgentProcess, registered: str, path: str) -> None:
    status, headers, body = _json(dev_agent, "GET", path)
    assert status == 200 and body == []
    assert int(headers["X-Consul-Index"]) >= 1 and headers["X-Consul-KnownLeader"] == "true"


def test_gateway_services_is_null(dev_agent: AgentProcess) -> None:
    status, headers, raw = dev_agent.http("GET", "/v1/catalog/gateway-services/some-gateway")
    assert status == 200 and raw == b"null" and int(headers["X-Consul-Index"]) >= 1


@pytest.mark.parametrize(
    ("path", "empty"),
    [
        ("/v1/catalog/nodes", []),
        ("/v1/catalog/services", {}),
        ("/v1/catalog/service/shape-web", []),
        ("/v1/health/service/shape-web", []),
        ("/v1/health/checks/shape-web", []),
        ("/v1/health/state/any", []),
        ("/v1/health/node/{node}", []),
        ("/v1/catalog/node/{node}", None),
        ("/v1/catalog/node-services/{node}", {"Node": None, "Services": None}),
    ],
)
def test_unknown_peer_reads_are_empty(dev_agent: AgentProcess, registered: str, path: str, empty: Any) -> None:
    path = path.format(node=registered)
    # The local answer is not empty, so an ignored ?peer would fail here.
    assert _json(dev_agent, "GET", path)[2]
    status, headers, body = _json(dev_agent, "GET", path + "?peer=elsewhere")
    assert status == 200 and body == empty and "X-Consul-Index" in headers


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/acl/bootstrap"),
        ("GET", "/v1/acl/tokens"),
        ("GET", "/v1/acl/token/self"),
        ("GET", "/v1/acl/policies"),
        ("PUT", "/v1/acl/policy"),
        ("DELETE", "/v1/acl/role/0b6e4e4e-0000-0000-0000-000000000000"),
        ("POST", "/v1/acl/login"),
        ("GET", "/v1/acl/replication"),
    ],
)
def test_acl_endpoints_answer_acl_disabled(dev_agent: AgentProcess, method: str, path: str) -> None:
    body = b"{}" if method in ("PUT", "POST") else None
    status, _, answer = dev_agent.http(method, path, body)
    assert (status, answer.strip()) == (401, b"ACL support disabled")


def test_acl_route_with_a_wrong_method_is_405(dev_agent: AgentProcess) -> None:
    assert dev_agent.http("GET", "/v1/acl/bootstrap")[0] == 405


def test_py_consul_sees_acl_disabled(dev_agent: AgentProcess) -> None:
    c = consul.Consul(host="127.0.0.1", port=dev_agent.http_port)
    with pytest.raises(consul.ACLDisabled):
        c.acl.token.list()


def test_agent_members_filter(dev_agent: AgentProcess, registered: str) -> None:
    _, _, everyone = _json(dev_agent, "GET", "/v1/agent/members")
    assert [m["Name"] for m in everyone] == [registered]
    _, _, kept = _json(dev_agent, "GET", "/v1/agent/members?filter=" + _q(f'Name == "{registered}"'))
    _, _, none = _json(dev_agent, "GET", "/v1/agent/members?filter=" + _q('Tags["role"] == "no-such-role"'))
    assert (kept, none) == (everyone, [])
    assert dev_agent.http("GET", "/v1/agent/members?filter=" + _q("Nope == 1"))[0] == 400


def test_node_services_of_an_unknown_node_is_a_zero_list_object(dev_agent: AgentProcess) -> None:
    status, headers, body = _json(dev_agent, "GET", "/v1/catalog/node-services/no-such-node")
    assert status == 200 and body == {"Node": None, "Services": None} and "X-Consul-Index" in headers
    # /v1/catalog/node/:n answers a nil pointer there: a bare null.
    assert dev_agent.http("GET", "/v1/catalog/node/no-such-node")[2] == b"null"
