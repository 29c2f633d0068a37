"""Golden shapes of Consul's health, agent, catalog-node, coordinate, status and operator answers,
checked on a real dev agent: exact key sets, types, null versus [] versus omitted, index headers
(issue 15, item 4). The Consul source each shape comes from is cited at its test;
docs/COMPATIBILITY.md ("Wire shapes verified") lists what is verified.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import AgentProcess, wait_for

# structs.HealthCheck (agent/structs/structs.go): PeerName is omitempty, the OSS EnterpriseMeta
# adds nothing, RaftIndex is embedded untagged.
HEALTH_CHECK_KEYS = {
    "Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "ServiceName", "ServiceTags", "Type",
    "Interval", "Timeout", "ExposedPort", "Definition", "CreateIndex", "ModifyIndex",
}
# structs.Node: Partition, PeerName and Locality are omitempty.
NODE_KEYS = {"ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta", "CreateIndex", "ModifyIndex"}
# serf.Member, as agent_endpoint.go AgentMembers returns it.
MEMBER_KEYS = {
    "Name", "Addr", "Port", "Tags", "Status", "ProtocolMin", "ProtocolMax", "ProtocolCur", "DelegateMin",
    "DelegateMax", "DelegateCur",
}
# structs.Coordinate (Partition omitempty) and serf's coordinate.Coordinate.
COORDINATE_KEYS = {"Node", "Segment", "Coord"}
COORD_KEYS = {"Vec", "Error", "Adjustment", "Height"}
QUERY_META_HEADERS = {"X-Consul-Index", "X-Consul-KnownLeader", "X-Consul-LastContact"}


def _json(agent: AgentProcess, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    status, headers, answer = agent.http(method, path, raw)
    return status, headers, json.loads(answer) if answer else None


def _consul_headers(headers: dict[str, str]) -> set[str]:
    """The X-Consul-* headers that carry query metadata (not the ACL policy one)."""
    return {h for h in headers if h.startswith("X-Consul-") and h != "X-Consul-Default-Acl-Policy"}


def _assert_check(check: dict[str, Any]) -> None:
    assert set(check) == HEALTH_CHECK_KEYS, sorted(set(check) ^ HEALTH_CHECK_KEYS)
    assert isinstance(check["ServiceTags"], list)  # never null: the handlers swap nil for []
    assert isinstance(check["ExposedPort"], int) and isinstance(check["Definition"], dict)
    assert all(isinstance(check[k], str) for k in ("Interval", "Timeout", "Type", "Notes", "Output"))


@pytest.fixture(scope="module")
def node(dev_agent: AgentProcess) -> str:
    """A service with a TTL check on the dev agent, synced; returns the agent's node name."""
    status, _, _ = _json(dev_agent, "PUT", "/v1/agent/service/register",
                         {"ID": "cat-shape-1", "Name": "cat-shape", "Port": 9000, "Check": {"TTL": "300s"}})
    assert status == 200
    wait_for(lambda: _json(dev_agent, "GET", "/v1/health/checks/cat-shape")[2], what="anti-entropy sync")
    return str(_json(dev_agent, "GET", "/v1/agent/self")[2]["Config"]["NodeName"])


# ------------------------------------------------------------------------------------ health
# agent/health_endpoint.go: HealthChecksInState, HealthNodeChecks and HealthServiceChecks answer
# IndexedHealthChecks.HealthChecks with setMeta, nil -> [] and nil ServiceTags -> [].


def test_health_checks_of_a_service(dev_agent: AgentProcess, node: str) -> None:
    status, headers, checks = _json(dev_agent, "GET", "/v1/health/checks/cat-shape")
    assert status == 200 and QUERY_META_HEADERS <= set(headers)
    [check] = checks
    _assert_check(check)
    assert (check["Node"], check["CheckID"], check["ServiceID"], check["ServiceName"]) == (
        node, "service:cat-shape-1", "cat-shape-1", "cat-shape")
    assert check["Type"] == "ttl" and check["Status"] == "critical" and check["ServiceTags"] == []
    status, headers, none = _json(dev_agent, "GET", "/v1/health/checks/no-such-service")
    assert (status, none) == (200, []) and int(headers["X-Consul-Index"]) >= 1


def test_health_node(dev_agent: AgentProcess, node: str) -> None:
    status, headers, checks = _json(dev_agent, "GET", f"/v1/health/node/{node}")
    assert status == 200 and QUERY_META_HEADERS <= set(headers)
    by_id = {c["CheckID"]: c for c in checks}
    assert {"serfHealth", "service:cat-shape-1"} <= set(by_id)
    for check in checks:
        _assert_check(check)
    serf = by_id["serfHealth"]
    # leader.go registers serfHealth without service fields; its nil ServiceTags reads as [].
    assert (serf["Name"], serf["Status"], serf["ServiceID"], serf["ServiceTags"]) == (
        "Serf Health Status", "passing", "", [])
    # A node that does not exist is not an error: an empty list, with the index headers.
    status, headers, none = _json(dev_agent, "GET", "/v1/health/node/no-such-node")
    assert (status, none) == (200, []) and int(headers["X-Consul-Index"]) >= 1


@pytest.mark.parametrize("state", ["any", "passing", "critical"])
def test_health_state(dev_agent: AgentProcess, node: str, state: str) -> None:
    status, headers, checks = _json(dev_agent, "GET", f"/v1/health/state/{state}")
    assert status == 200 and QUERY_META_HEADERS <= set(headers) and checks
    for check in checks:
        _assert_check(check)
        assert state == "any" or check["Status"] == state
    assert _json(dev_agent, "GET", "/v1/health/state/warning")[2] == []


def test_health_state_unknown_is_an_empty_list(dev_agent: AgentProcess, node: str) -> None:
    # Neither HealthChecksInState nor Health.ChecksInState (agent/consul/health_endpoint.go) nor
    # state/catalog.go checksInStateTxn validates the state: an unknown one matches no check.
    status, headers, checks = _json(dev_agent, "GET", "/v1/health/state/bogus")
    assert (status, checks) == (200, []) and QUERY_META_HEADERS <= set(headers)


# ------------------------------------------------------------------------------------ agent


def test_agent_checks(dev_agent: AgentProcess, node: str) -> None:
    # agent_endpoint.go AgentChecks: a map of check ID -> structs.HealthCheck from the local
    # state (raft indexes 0, nil ServiceTags -> []), no query metadata headers.
    status, headers, checks = _json(dev_agent, "GET", "/v1/agent/checks")
    assert status == 200 and _consul_headers(headers) == set()
    check = checks["service:cat-shape-1"]
    _assert_check(check)
    assert (check["Node"], check["CreateIndex"], check["ModifyIndex"], check["ServiceTags"]) == (node, 0, 0, [])


def test_agent_members(dev_agent: AgentProcess, node: str) -> None:
    # agent_endpoint.go AgentMembers returns serf's []Member as is: Addr is the IP's text, Port
    # and the protocol/delegate versions are integers, Status is serf.MemberStatus (1 alive).
    status, headers, members = _json(dev_agent, "GET", "/v1/agent/members")
    assert status == 200 and _consul_headers(headers) == set()
    [me] = members
    assert set(me) == MEMBER_KEYS and me["Name"] == node and me["Status"] == 1
    assert isinstance(me["Addr"], str) and isinstance(me["Port"], int)
    assert all(isinstance(me[k], int) for k in MEMBER_KEYS - {"Name", "Addr", "Tags"})
    assert me["Tags"]["role"] == "consul" and all(isinstance(v, str) for v in me["Tags"].values())


# ------------------------------------------------------------------------------------ catalog


def test_catalog_nodes(dev_agent: AgentProcess, node: str) -> None:
    # catalog_endpoint.go CatalogNodes: IndexedNodes.Nodes with setMeta, nil -> [].
    status, headers, nodes = _json(dev_agent, "GET", "/v1/catalog/nodes")
    assert status == 200 and QUERY_META_HEADERS <= set(headers)
    [me] = [n for n in nodes if n["Node"] == node]
    assert set(me) == NODE_KEYS
    assert isinstance(me["TaggedAddresses"], dict) and {"lan", "wan"} <= set(me["TaggedAddresses"])
    assert isinstance(me["Meta"], dict) and isinstance(me["CreateIndex"], int)
    assert _json(dev_agent, "GET", "/v1/catalog/nodes?filter=" + "Node%20%3D%3D%20%22nope%22")[2] == []


def test_catalog_datacenters(dev_agent: AgentProcess) -> None:
    # catalog_endpoint.go CatalogDatacenters: a list of names, no query metadata.
    status, headers, dcs = _json(dev_agent, "GET", "/v1/catalog/datacenters")
    assert (status, dcs) == (200, ["dc1"]) and _consul_headers(headers) == set()


# ------------------------------------------------------------------------------------ coordinates
# agent/coordinate_endpoint.go.


def test_coordinate_datacenters(dev_agent: AgentProcess, node: str) -> None:
    # CoordinateDatacenters: []structs.DatacenterMap {Datacenter, AreaID, Coordinates}; no setMeta.
    status, headers, dcs = _json(dev_agent, "GET", "/v1/coordinate/datacenters")
    assert status == 200 and _consul_headers(headers) == set()
    [dc] = dcs
    assert set(dc) == {"Datacenter", "AreaID", "Coordinates"} and (dc["Datacenter"], dc["AreaID"]) == ("dc1", "wan")
    for entry in dc["Coordinates"]:
        assert set(entry) == COORDINATE_KEYS and set(entry["Coord"]) == COORD_KEYS
        assert len(entry["Coord"]["Vec"]) == 8


def test_coordinate_nodes_and_node(dev_agent: AgentProcess, node: str) -> None:
    coord = {"Vec": [0.1, 0, 0, 0, 0, 0, 0, 0], "Error": 0.5, "Adjustment": 0.0, "Height": 0.0001}
    status, _, _ = _json(dev_agent, "PUT", "/v1/coordinate/update", {"Node": node, "Coord": coord})
    assert status == 200

    def listed() -> Any:
        return [c for c in _json(dev_agent, "GET", "/v1/coordinate/nodes")[2] if c["Node"] == node]

    [entry] = wait_for(listed, timeout=60, what="the coordinate update to be applied")
    assert set(entry) == COORDINATE_KEYS and entry["Segment"] == ""
    assert set(entry["Coord"]) == COORD_KEYS and all(isinstance(v, float) for v in entry["Coord"]["Vec"])
    _, headers, _ = _json(dev_agent, "GET", "/v1/coordinate/nodes")
    assert QUERY_META_HEADERS <= set(headers)
    # CoordinateNode: the same list filtered to one node; none is a 404 with an empty body.
    status, headers, one = _json(dev_agent, "GET", f"/v1/coordinate/node/{node}")
    assert status == 200 and [set(c) for c in one] == [COORDINATE_KEYS] and "X-Consul-Index" in headers
    status, headers, raw = dev_agent.http("GET", "/v1/coordinate/node/no-such-node")
    assert (status, raw) == (404, b"") and "X-Consul-Index" in headers


# ------------------------------------------------------------------------------------ status


def test_status_leader_and_peers(dev_agent: AgentProcess) -> None:
    # status_endpoint.go: a JSON string and a list of "ip:port" strings, no query metadata.
    status, headers, leader = _json(dev_agent, "GET", "/v1/status/leader")
    assert status == 200 and isinstance(leader, str) and leader.endswith(":8300")
    assert _consul_headers(headers) == set()
    status, headers, peers = _json(dev_agent, "GET", "/v1/status/peers")
    assert (status, peers) == (200, [leader]) and _consul_headers(headers) == set()


# ------------------------------------------------------------------------------------ operator


def test_operator_raft_configuration(dev_agent: AgentProcess, node: str) -> None:
    # structs.RaftConfigurationResponse {Servers []*RaftServer, Index}; RaftServer as built in
    # agent/consul/operator_raft_endpoint.go (ProtocolVersion is the raft_vsn tag, a string).
    status, _, conf = _json(dev_agent, "GET", "/v1/operator/raft/configuration")
    assert status == 200 and set(conf) == {"Servers", "Index"} and isinstance(conf["Index"], int)
    [server] = conf["Servers"]
    assert set(server) == {"ID", "Node", "Address", "Leader", "ProtocolVersion", "Voter", "LastIndex"}
    assert (server["Node"], server["Leader"], server["Voter"], server["ProtocolVersion"]) == (node, True, True, "3")
    assert server["Address"].endswith(":8300") and isinstance(server["LastIndex"], int)


def test_operator_autopilot_health(dev_agent: AgentProcess, node: str) -> None:
    # api/operator_autopilot.go OperatorHealthReply / ServerHealth: LastContact is a
    # ReadableDuration (a string), StableSince a time; 200 when healthy (429 when not).
    status, _, health = _json(dev_agent, "GET", "/v1/operator/autopilot/health")
    assert status == 200 and set(health) == {"Healthy", "FailureTolerance", "Servers"}
    assert health["Healthy"] is True and health["FailureTolerance"] == 0
    [server] = health["Servers"]
    assert set(server) == {
        "ID", "Name", "Address", "SerfStatus", "Version", "Leader", "LastContact", "LastTerm", "LastIndex",
        "Healthy", "Voter", "StableSince",
    }
    assert (server["Name"], server["SerfStatus"], server["Leader"], server["Voter"]) == (node, "alive", True, True)
    assert isinstance(server["LastContact"], str) and isinstance(server["StableSince"], str)
    assert isinstance(server["LastTerm"], int) and isinstance(server["LastIndex"], int)


@pytest.mark.parametrize(("path", "text"), [
    ("/v1/health/node/", "Missing node name"),
    ("/v1/health/checks/", "Missing service name"),
    ("/v1/health/state/", "Missing check state"),
])
def test_health_reads_without_a_name_are_400(dev_agent: AgentProcess, path: str, text: str) -> None:
    # health_endpoint.go: the routes are prefixes, so an empty name reaches the handler, which
    # answers 400 with these texts.
    status, _, body = dev_agent.http("GET", path)
    assert (status, body.decode()) == (400, text)
