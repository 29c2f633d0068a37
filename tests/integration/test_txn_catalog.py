"""`/v1/txn` Node, Service, Check and Session operations on a real `proconsul agent -dev`,
driven by py-consul's `txn.put` and raw HTTP: Consul's result objects, the catalog they change
(seen through `/v1/catalog` and `/v1/health`), per-index errors with a 409 and nothing applied,
read-only catalog transactions served as reads, and 400s for malformed operations."""

from __future__ import annotations

import json

import consul
import pytest
from helpers import AgentProcess


@pytest.fixture()
def c(dev_agent: AgentProcess) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=dev_agent.http_port)


def _put(agent: AgentProcess, ops: list) -> tuple[int, dict, bytes]:
    status, headers, raw = agent.http("PUT", "/v1/txn", json.dumps(ops).encode())
    return status, headers, raw


def test_catalog_writes_in_one_transaction(c: consul.Consul, dev_agent: AgentProcess) -> None:
    answer = c.txn.put([
        {"Node": {"Verb": "set", "Node": {"Node": "txn-n1", "Address": "10.8.0.1", "Meta": {"rack": "r1"}}}},
        {"Service": {"Verb": "set", "Node": "txn-n1",
                     "Service": {"ID": "db-1", "Service": "db", "Port": 5432, "Tags": ["primary"]}}},
        {"Check": {"Verb": "set", "Check": {"Node": "txn-n1", "CheckID": "db-ok", "Name": "db ok",
                                            "Status": "passing", "ServiceID": "db-1"}}},
        {"KV": {"Verb": "set", "Key": "txn/db", "Value": "MQ=="}},
    ])
    assert answer["Errors"] is None
    node, service, check, kv = answer["Results"]
    assert set(node) == {"Node"} and node["Node"]["Node"] == "txn-n1" and node["Node"]["Meta"] == {"rack": "r1"}
    assert node["Node"]["CreateIndex"] == node["Node"]["ModifyIndex"] > 0
    assert service["Service"]["ID"] == "db-1" and service["Service"]["Port"] == 5432
    assert check["Check"]["CheckID"] == "db-ok" and check["Check"]["ServiceName"] == "db"
    assert kv["KV"]["Key"] == "txn/db" and kv["KV"]["Value"] is None
    _, entries = c.health.service("db", passing=True)
    assert [(e["Node"]["Node"], e["Service"]["ID"]) for e in entries] == [("txn-n1", "db-1")]

    # Read-only: served as a read, the untagged QueryMeta fields in the body.
    status, headers, raw = _put(dev_agent, [
        {"Node": {"Verb": "get", "Node": {"Node": "txn-n1"}}},
        {"Service": {"Verb": "get", "Node": "txn-n1", "Service": {"ID": "db-1"}}},
        {"Check": {"Verb": "get", "Check": {"Node": "txn-n1", "CheckID": "db-ok"}}},
    ])
    assert status == 200, raw
    body = json.loads(raw)
    assert [list(r) for r in body["Results"]] == [["Node"], ["Service"], ["Check"]]
    assert body["Errors"] is None and "KnownLeader" in body and "X-Consul-KnownLeader" in headers

    # CAS on the node with its ModifyIndex, then delete-cas of the service, in one transaction.
    index = body["Results"][0]["Node"]["ModifyIndex"]
    svc_index = body["Results"][1]["Service"]["ModifyIndex"]
    answer = c.txn.put([
        {"Node": {"Verb": "cas", "Node": {"Node": "txn-n1", "Address": "10.8.0.2", "ModifyIndex": index}}},
        {"Service": {"Verb": "delete-cas", "Node": "txn-n1", "Service": {"ID": "db-1", "ModifyIndex": svc_index}}},
    ])
    assert answer["Results"][0]["Node"]["Address"] == "10.8.0.2" and len(answer["Results"]) == 1
    assert c.catalog.service("db")[1] == []
    assert c.txn.put([{"Node": {"Verb": "delete", "Node": {"Node": "txn-n1"}}}]) == {"Results": [], "Errors": None}
    assert c.catalog.node("txn-n1")[1] is None


def test_errors_per_operation_index_and_rollback(dev_agent: AgentProcess) -> None:
    status, headers, raw = _put(dev_agent, [
        {"KV": {"Verb": "set", "Key": "txn/rolled-back", "Value": "MQ=="}},
        {"Node": {"Verb": "cas", "Node": {"Node": "txn-n2", "Address": "10.8.0.3", "ModifyIndex": 99}}},
        {"Service": {"Verb": "set", "Node": "nowhere", "Service": {"ID": "x", "Service": "x"}}},
        {"Check": {"Verb": "delete-cas", "Check": {"Node": "nowhere", "CheckID": "c", "ModifyIndex": 1}}},
    ])
    assert status == 409, raw
    assert json.loads(raw) == {"Results": None, "Errors": [
        {"OpIndex": 1, "What": 'failed to set node "txn-n2", index is stale'},
        {"OpIndex": 2, "What": "Missing node registration"},
        {"OpIndex": 3, "What": 'failed to delete check "c" on node "nowhere", index is stale'},
    ]}
    assert dev_agent.http("GET", "/v1/kv/txn/rolled-back")[0] == 404
    assert dev_agent.http("GET", "/v1/catalog/node/txn-n2")[2] == b"null"


@pytest.mark.parametrize(("ops", "reason"), [
    ([{"Node": {"Verb": "frobnicate", "Node": {"Node": "n"}}}], "Invalid Node verb 'frobnicate' in operation 0"),
    ([{"Service": {"Verb": "get", "Node": "n", "Service": "web"}}], "Operation 0: Service.Service must be an object"),
    ([{"Session": {"Verb": "renew", "Session": {"ID": "x"}}}], "Invalid Session verb 'renew' in operation 0"),
    ([{"KV": {"Verb": "get", "Key": "a"}, "Node": {"Verb": "get", "Node": {"Node": "n"}}}], "expected exactly one of"),
    ([{"Check": {"Verb": "set", "Check": {"Node": "n"}}}], "Missing check ID"),
])
def test_malformed_operations_are_400(dev_agent: AgentProcess, ops: list, reason: str) -> None:
    status, _, raw = _put(dev_agent, ops)
    assert status == 400 and reason in raw.decode(), raw


def test_session_delete_in_a_transaction(c: consul.Consul, dev_agent: AgentProcess) -> None:
    session = c.session.create()
    assert c.kv.put("txn/locked", "x", acquire=session) is True
    answer = c.txn.put([{"Session": {"Verb": "delete", "Session": {"ID": session}}}])
    assert answer == {"Results": [], "Errors": None}
    assert c.session.info(session)[1] is None
    assert "Session" not in c.kv.get("txn/locked")[1]
