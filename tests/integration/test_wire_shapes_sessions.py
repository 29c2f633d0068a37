"""Golden shapes of Consul's session, user event and prepared query answers, checked on a real
dev agent: exact key sets, types, null versus [] versus omitted, status codes and error texts,
index headers (issue 15, item 4). The Consul source each shape comes from is cited at its test;
docs/COMPATIBILITY.md ("Wire shapes verified") lists what is verified.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from helpers import AgentProcess, wait_for

# structs.Session (agent/structs/structs.go) as website/content/api-docs/session.mdx shows it:
# the deprecated Checks is omitempty (the server moves it into NodeChecks), the OSS
# EnterpriseMeta adds nothing, LockDelay is a time.Duration (integer nanoseconds).
SESSION_KEYS = {
    "ID", "Name", "Node", "LockDelay", "Behavior", "TTL", "NodeChecks", "ServiceChecks", "CreateIndex",
    "ModifyIndex",
}
# agent/user_event.go UserEvent: no json tags, so every field, Payload []byte as base64 or null.
EVENT_KEYS = {"ID", "Name", "Payload", "NodeFilter", "ServiceFilter", "TagFilter", "Version", "LTime"}
# agent/structs/prepared_query.go.
QUERY_KEYS = {"ID", "Name", "Session", "Token", "Template", "Service", "DNS", "CreateIndex", "ModifyIndex"}
SERVICE_QUERY_KEYS = {
    "Service", "SamenessGroup", "Failover", "OnlyPassing", "IgnoreCheckIDs", "Near", "Tags", "NodeMeta",
    "ServiceMeta", "Peer", "Connect",
}
# structs.QueryMeta, embedded untagged in PreparedQueryExecuteResponse and ...ExplainResponse.
QUERY_META_KEYS = {"Index", "LastContact", "KnownLeader", "ConsistencyLevel", "NotModified", "Backend",
                   "ResultsFilteredByACLs"}
QUERY_META_HEADERS = {"X-Consul-Index", "X-Consul-KnownLeader", "X-Consul-LastContact"}
NO_SESSION = "00000000-0000-0000-0000-000000000000"


def _json(agent: AgentProcess, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    status, headers, answer = agent.http(method, path, raw)
    return status, headers, json.loads(answer) if answer else None


def _text(agent: AgentProcess, method: str, path: str, body: Any = None) -> tuple[int, str]:
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    status, _, answer = agent.http(method, path, raw)
    return status, answer.decode()


def _consul_headers(headers: dict[str, str]) -> set[str]:
    return {h for h in headers if h.startswith("X-Consul-") and h != "X-Consul-Default-Acl-Policy"}


@pytest.fixture(scope="module")
def node(dev_agent: AgentProcess) -> str:
    """A passing service on the dev agent, synced; returns the agent's node name."""
    status, _, _ = _json(dev_agent, "PUT", "/v1/agent/service/register",
                         {"ID": "sess-web-1", "Name": "sess-web", "Port": 8080, "Tags": ["v1"],
                          "Check": {"CheckID": "sess-web-ttl", "TTL": "300s", "Status": "passing"}})
    assert status == 200
    wait_for(lambda: _json(dev_agent, "GET", "/v1/health/service/sess-web?passing")[2], what="anti-entropy sync")
    return str(_json(dev_agent, "GET", "/v1/agent/self")[2]["Config"]["NodeName"])


# ------------------------------------------------------------------------------------ sessions
# agent/session_endpoint.go: create answers {"ID"} and destroy `true`, neither with query
# metadata; info/node/list answer IndexedSessions.Sessions with setMeta, nil -> []; renew answers
# the list without metadata, or 404 "Session id '<id>' not found"; an empty ID or node is a 400.


def test_session_create_read_renew_destroy(dev_agent: AgentProcess, node: str) -> None:
    status, headers, created = _json(dev_agent, "PUT", "/v1/session/create", {"Name": "shape", "TTL": "30s"})
    assert status == 200 and set(created) == {"ID"} and _consul_headers(headers) == set()
    sid = created["ID"]
    for path in (f"/v1/session/info/{sid}", f"/v1/session/node/{node}", "/v1/session/list"):
        status, headers, sessions = _json(dev_agent, "GET", path)
        assert status == 200 and QUERY_META_HEADERS <= set(headers), path
        [session] = [s for s in sessions if s["ID"] == sid]
        assert set(session) == SESSION_KEYS, sorted(set(session) ^ SESSION_KEYS)
        assert (session["Name"], session["Node"], session["Behavior"], session["TTL"]) == ("shape", node, "release", "30s")
        assert session["LockDelay"] == 15_000_000_000 and session["NodeChecks"] == ["serfHealth"]
        assert session["ServiceChecks"] is None and isinstance(session["CreateIndex"], int)
    status, headers, renewed = _json(dev_agent, "PUT", f"/v1/session/renew/{sid}")
    assert status == 200 and _consul_headers(headers) == set()
    assert [set(s) for s in renewed] == [SESSION_KEYS] and renewed[0]["ID"] == sid
    status, headers, destroyed = _json(dev_agent, "PUT", f"/v1/session/destroy/{sid}")
    assert (status, destroyed) == (200, True) and _consul_headers(headers) == set()


def test_session_with_service_checks_and_no_node_checks(dev_agent: AgentProcess, node: str) -> None:
    body = {"Checks": [], "ServiceChecks": [{"ID": "sess-web-ttl"}], "Behavior": "delete", "LockDelay": "5s"}
    status, _, created = _json(dev_agent, "PUT", "/v1/session/create", body)
    assert status == 200, created
    _, _, [session] = _json(dev_agent, "GET", f"/v1/session/info/{created['ID']}")
    assert set(session) == SESSION_KEYS and session["Behavior"] == "delete" and session["LockDelay"] == 5_000_000_000
    # "Checks": [] drops the default serfHealth (session_endpoint.go FixupChecks). Whether Consul
    # then shows null or [] rests on its msgpack round trip through Raft: not pinned here.
    assert not session["NodeChecks"] and [c["ID"] for c in session["ServiceChecks"]] == ["sess-web-ttl"]
    assert session["TTL"] == ""
    _json(dev_agent, "PUT", f"/v1/session/destroy/{created['ID']}")


def test_session_reads_of_nothing_are_empty_lists(dev_agent: AgentProcess, node: str) -> None:
    for path in (f"/v1/session/info/{NO_SESSION}", "/v1/session/node/no-such-node"):
        status, headers, body = _json(dev_agent, "GET", path)
        assert (status, body) == (200, []) and int(headers["X-Consul-Index"]) >= 1, path


def test_session_errors(dev_agent: AgentProcess, node: str) -> None:
    assert _text(dev_agent, "PUT", f"/v1/session/renew/{NO_SESSION}") == (404, f"Session id '{NO_SESSION}' not found")
    # Destroying an unknown session is not an error (state/session.go deleteSessionTxn).
    assert _json(dev_agent, "PUT", f"/v1/session/destroy/{NO_SESSION}")[::2] == (200, True)
    for method, path, text in (("PUT", "/v1/session/destroy/", "Missing session"),
                               ("PUT", "/v1/session/renew/", "Missing session"),
                               ("GET", "/v1/session/info/", "Missing session"),
                               ("GET", "/v1/session/node/", "Missing node name")):
        assert _text(dev_agent, method, path) == (400, text), path
    # state/session.go sessionCreateTxn: ErrMissingNode; session_oss.go validateSessionChecksTxn.
    assert _text(dev_agent, "PUT", "/v1/session/create", {"Node": "no-such-node"}) == (
        500, "Missing node registration")
    assert _text(dev_agent, "PUT", "/v1/session/create", {"Checks": ["nope"]}) == (
        500, "Missing check 'nope' registration")
    status, text = _text(dev_agent, "PUT", "/v1/session/create", b"{bad")
    assert status == 400 and text.startswith("Request decode failed")


# ------------------------------------------------------------------------------------ events
# agent/event_endpoint.go: fire answers the UserEvent (no metadata), 400 "Missing name" for an
# empty name, 500 with the validation error; list answers the agent's ring buffer with only
# X-Consul-Index (the last event ID folded into 64 bits; 1 when the list is empty).


def test_event_fire_and_list(dev_agent: AgentProcess, node: str) -> None:
    status, headers, event = _json(dev_agent, "PUT", "/v1/event/fire/shape-deploy?service=sess-web", b"v2")
    assert status == 200 and set(event) == EVENT_KEYS and _consul_headers(headers) == set()
    assert (event["Name"], event["Payload"], event["ServiceFilter"], event["NodeFilter"], event["Version"]) == (
        "shape-deploy", base64.b64encode(b"v2").decode(), "sess-web", "", 1)
    assert isinstance(event["LTime"], int)
    _, _, empty = _json(dev_agent, "PUT", "/v1/event/fire/shape-empty")
    assert empty["Payload"] is None  # a nil []byte

    def listed() -> Any:
        _, headers, events = _json(dev_agent, "GET", "/v1/event/list?name=shape-deploy")
        return (headers, events) if events else None

    headers, [seen] = wait_for(listed, what="the fired event in the agent's buffer")
    assert set(seen) == EVENT_KEYS and seen["ID"] == event["ID"] and seen["LTime"] >= 1
    assert _consul_headers(headers) == {"X-Consul-Index"} and int(headers["X-Consul-Index"]) > 1
    status, headers, none = _json(dev_agent, "GET", "/v1/event/list?name=no-such-event")
    assert (status, none, headers["X-Consul-Index"]) == (200, [], "1")


def test_event_fire_errors(dev_agent: AgentProcess) -> None:
    assert _text(dev_agent, "PUT", "/v1/event/fire/") == (400, "Missing name")
    assert _text(dev_agent, "PUT", "/v1/event/fire/x?tag=a") == (500, "Cannot provide tag filter without service filter")


# ------------------------------------------------------------------------------------ prepared queries
# agent/prepared_query_endpoint.go: create answers {"ID"} without metadata; get/list answer
# PreparedQueries with setMeta (list nil -> []); execute and explain answer their response
# structs, whose untagged QueryMeta lands in the body too; an unknown query is 404 "Query not found".


@pytest.fixture(scope="module")
def query_id(dev_agent: AgentProcess, node: str) -> str:
    status, headers, created = _json(dev_agent, "POST", "/v1/query",
                                     {"Name": "shape-q", "Service": {"Service": "sess-web", "Tags": ["v1"]}})
    assert status == 200 and set(created) == {"ID"} and _consul_headers(headers) == set()
    return str(created["ID"])


def _assert_query(query: dict[str, Any]) -> None:
    assert set(query) == QUERY_KEYS, sorted(set(query) ^ QUERY_KEYS)
    assert query["Template"] == {"Type": "", "Regexp": "", "RemoveEmptyTags": False}
    assert set(query["Service"]) == SERVICE_QUERY_KEYS, sorted(set(query["Service"]) ^ SERVICE_QUERY_KEYS)
    # Unset slices and maps are Go nils: null, not [] or {}.
    assert query["Service"]["Failover"] == {"NearestN": 0, "Datacenters": None, "Targets": None}
    assert (query["Service"]["IgnoreCheckIDs"], query["Service"]["NodeMeta"], query["Service"]["ServiceMeta"]) == (
        None, None, None)
    assert query["DNS"] == {"TTL": ""}


def test_prepared_query_get_and_list(dev_agent: AgentProcess, query_id: str) -> None:
    status, headers, [query] = _json(dev_agent, "GET", f"/v1/query/{query_id}")
    assert status == 200 and QUERY_META_HEADERS <= set(headers)
    _assert_query(query)
    assert (query["ID"], query["Name"], query["Service"]["Tags"]) == (query_id, "shape-q", ["v1"])
    status, headers, listed = _json(dev_agent, "GET", "/v1/query")
    assert status == 200 and QUERY_META_HEADERS <= set(headers)
    for entry in listed:
        _assert_query(entry)


def test_prepared_query_execute(dev_agent: AgentProcess, node: str, query_id: str) -> None:
    for ref in (query_id, "shape-q"):
        status, headers, answer = _json(dev_agent, "GET", f"/v1/query/{ref}/execute")
        assert status == 200 and QUERY_META_HEADERS <= set(headers)
        assert set(answer) == {"Service", "Nodes", "DNS", "Datacenter", "PeerName", "Failovers"} | QUERY_META_KEYS
        assert (answer["Service"], answer["Datacenter"], answer["Failovers"], answer["DNS"]) == (
            "sess-web", "dc1", 0, {"TTL": ""})
        [entry] = answer["Nodes"]
        assert set(entry) == {"Node", "Service", "Checks"} and entry["Node"]["Node"] == node
        assert entry["Service"]["ID"] == "sess-web-1"
        assert isinstance(answer["Index"], int) and answer["KnownLeader"] is True


def test_prepared_query_explain(dev_agent: AgentProcess, query_id: str) -> None:
    status, headers, answer = _json(dev_agent, "GET", "/v1/query/shape-q/explain")
    assert status == 200 and set(answer) == {"Query"} | QUERY_META_KEYS and QUERY_META_HEADERS <= set(headers)
    _assert_query(answer["Query"])
    assert answer["Query"]["ID"] == query_id


def test_prepared_query_not_found(dev_agent: AgentProcess) -> None:
    for path in (f"/v1/query/{NO_SESSION}", "/v1/query/no-such-query/execute", "/v1/query/no-such-query/explain"):
        assert _text(dev_agent, "GET", path) == (404, "Query not found"), path
    # agent/consul/prepared_query_endpoint.go Apply: a plain RPC error, hence a 500.
    assert _text(dev_agent, "DELETE", f"/v1/query/{NO_SESSION}") == (
        500, f"Cannot modify non-existent prepared query: '{NO_SESSION}'")
