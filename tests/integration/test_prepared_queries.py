"""Prepared queries on a real `proconsul agent -dev`, driven by py-consul, raw HTTP and `dig`.

Create, list, read, update, delete and explain with py-consul (which always sends a
`name_prefix_match` template), Consul's status codes and reasons for bad definitions and unknown
queries, execution with its filters (health, `!tag`, service meta), `?limit` and `?near`,
templates with a regexp, session-bound queries deleted with their session, and the DNS forms
`<name>.query.consul` (A, with the query's TTL) and `_<name>._tcp.query.consul` (SRV).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import consul
import pytest
from helpers import AgentProcess, wait_for

LOCAL = "127.0.0.1"


@pytest.fixture()
def c(dev_agent: AgentProcess) -> consul.Consul:
    return consul.Consul(host=LOCAL, port=dev_agent.http_port)


@pytest.fixture(autouse=True)
def _no_queries(dev_agent: AgentProcess) -> None:
    # Each test starts with no queries: a catch-all template left behind would answer every name.
    for q in json.loads(dev_agent.http("GET", "/v1/query")[2]):
        assert dev_agent.http("DELETE", f"/v1/query/{q['ID']}")[0] == 200


def _post(agent: AgentProcess, body: dict) -> tuple[int, str]:
    status, _, raw = agent.http("POST", "/v1/query", json.dumps(body).encode())
    return status, raw.decode()


def _create(agent: AgentProcess, body: dict) -> str:
    status, raw = _post(agent, body)
    assert status == 200, raw
    return str(json.loads(raw)["ID"])


def _register(agent: AgentProcess, node: str, address: str, service: str, *, tags: list[str] | None = None,
              meta: dict | None = None, status: str = "passing", port: int = 80) -> None:
    body = {
        "Node": node, "Address": address,
        "Service": {"ID": service, "Service": service, "Tags": tags or [], "Meta": meta or {}, "Port": port},
        "Check": {"CheckID": f"service:{service}", "Name": "svc", "Status": status, "ServiceID": service},
    }
    code, _, text = agent.http("PUT", "/v1/catalog/register", json.dumps(body).encode())
    assert code == 200, text


def _execute(agent: AgentProcess, name: str, query: str = "") -> dict:
    status, _, raw = agent.http("GET", f"/v1/query/{name}/execute{query}")
    assert status == 200, raw
    return json.loads(raw)  # type: ignore[no-any-return]


def _dig(agent: AgentProcess, *args: str) -> str:
    binary = shutil.which("dig")
    assert binary, "dig is missing: scripts/setup-env test installs bind9-dnsutils"
    return subprocess.run([binary, f"@{LOCAL}", "-p", str(agent.dns_port), "+tries=1", "+time=5", *args],
                          capture_output=True, text=True, timeout=30).stdout


def test_crud_explain_with_py_consul(c: consul.Consul, dev_agent: AgentProcess) -> None:
    created = c.query.create("redis", name="redis-q", tags=["primary"], ttl="10s", onlypassing=True)
    qid = created["ID"]
    (listed,) = c.query.list()
    assert listed["ID"] == qid and listed["Name"] == "redis-q"
    assert listed["Template"] == {"Type": "name_prefix_match", "Regexp": "", "RemoveEmptyTags": False}
    assert listed["Service"] == {
        "Service": "redis", "SamenessGroup": "", "Failover": {"NearestN": 0, "Datacenters": None, "Targets": None},
        "OnlyPassing": True, "IgnoreCheckIDs": None, "Near": "", "Tags": ["primary"], "NodeMeta": None,
        "ServiceMeta": None, "Peer": "", "Connect": False,
    }
    assert listed["DNS"] == {"TTL": "10s"} and listed["Session"] == "" and listed["Token"] == ""
    assert listed["CreateIndex"] == listed["ModifyIndex"] > 0
    assert c.query.get(qid) == [listed]

    assert c.query.update(qid, "redis", name="redis-q", tags=["replica"]) is True
    (updated,) = c.query.get(qid)
    assert updated["Service"]["Tags"] == ["replica"] and updated["Service"]["OnlyPassing"] is False
    assert updated["CreateIndex"] == listed["CreateIndex"] and updated["ModifyIndex"] > listed["ModifyIndex"]

    explained = c.query.explain("redis-q")
    assert explained["Query"]["ID"] == qid and explained["Query"]["Service"]["Service"] == "redis"
    assert "Index" in explained and explained["KnownLeader"] is True

    result = c.query.execute("redis-q")
    assert result["Service"] == "redis" and result["Nodes"] == [] and result["Datacenter"] == "dc1"
    assert result["Failovers"] == 0 and result["DNS"] == {"TTL": ""}  # the update sent no TTL

    assert c.query.delete(qid) is True
    assert c.query.list() == []
    assert c.query.get(qid) is None  # py-consul's answer to a 404


def test_bad_definitions_and_unknown_queries(dev_agent: AgentProcess) -> None:
    # Consul checks a definition in its PreparedQuery.Apply RPC, whose errors are 500s.
    assert _post(dev_agent, {"Name": "x", "Service": {}}) == (
        500, "Invalid prepared query: Must provide a Service name to query")
    assert _post(dev_agent, {"Service": {"Service": "web"}}) == (500, "Invalid prepared query: Must be bound to a session")
    status, text = _post(dev_agent, {"Name": "x", "Service": {"Service": "web"}, "DNS": {"TTL": "later"}})
    assert status == 500 and text.startswith("Invalid prepared query: Bad DNS TTL 'later'")
    status, text = _post(dev_agent, {"Name": "x", "Template": {"Type": "name_prefix_match", "Regexp": "(("},
                                     "Service": {"Service": "web"}})
    assert status == 500 and "error parsing regexp" in text
    status, _, raw = dev_agent.http("POST", "/v1/query", b"{not json")
    assert status == 400 and raw.startswith(b"Request decode failed")

    _create(dev_agent, {"Name": "taken", "Service": {"Service": "web"}})
    assert _post(dev_agent, {"Name": "taken", "Service": {"Service": "db"}}) == (
        500, "name 'taken' aliases an existing query name")

    missing = "00000000-0000-0000-0000-000000000000"
    for path in (f"/v1/query/{missing}", f"/v1/query/{missing}/execute", "/v1/query/nothing/explain"):
        status, _, raw = dev_agent.http("GET", path)
        assert (status, raw) == (404, b"Query not found"), path
    status, _, raw = dev_agent.http("PUT", f"/v1/query/{missing}", json.dumps(
        {"Name": "y", "Service": {"Service": "web"}}).encode())
    assert status == 500 and raw.decode() == f"Cannot modify non-existent prepared query: '{missing}'"
    assert dev_agent.http("POST", f"/v1/query/{missing}")[0] == 405
    assert dev_agent.http("GET", "/v1/query/taken/execute?limit=x")[0] == 400


def test_execute_filters_limit_and_near(dev_agent: AgentProcess) -> None:
    _register(dev_agent, "api-1", "10.3.0.1", "api", tags=["v1"], meta={"env": "prod"})
    _register(dev_agent, "api-2", "10.3.0.2", "api", tags=["v1", "canary"], meta={"env": "prod"})
    _register(dev_agent, "api-3", "10.3.0.3", "api", tags=["v1"], meta={"env": "prod"}, status="warning")
    _register(dev_agent, "api-4", "10.3.0.4", "api", tags=["v1"], meta={"env": "dev"})
    _register(dev_agent, "api-5", "10.3.0.5", "api", tags=["v1"], meta={"env": "prod"}, status="critical")
    _create(dev_agent, {"Name": "api-prod", "Service": {"Service": "api", "Tags": ["v1", "!canary"],
                                                        "ServiceMeta": {"env": "prod"}}})

    def nodes(query: str = "") -> list[str]:
        return [n["Node"]["Node"] for n in _execute(dev_agent, "api-prod", query)["Nodes"]]

    assert sorted(nodes()) == ["api-1", "api-3"]  # warning counts as passing
    assert len(nodes("?limit=1")) == 1
    # The node named by ?near comes first (no coordinates for these catalog-only nodes).
    for _ in range(5):
        assert nodes("?near=api-3") == ["api-3", "api-1"]
    result = _execute(dev_agent, "api-prod")
    entry = result["Nodes"][0]
    assert set(entry) == {"Node", "Service", "Checks"}
    assert entry["Node"]["Datacenter"] == "dc1" and entry["Service"]["Service"] == "api"
    assert set(result) == {"Service", "Nodes", "DNS", "Datacenter", "PeerName", "Failovers", "Index",
                           "LastContact", "KnownLeader", "ConsistencyLevel", "NotModified", "Backend",
                           "ResultsFilteredByACLs"}

    qid = _create(dev_agent, {"Name": "api-strict", "Service": {"Service": "api", "OnlyPassing": True,
                                                                "IgnoreCheckIDs": ["service:api"]}})
    # Ignoring the service check leaves every instance, however its check says.
    assert len(_execute(dev_agent, qid)["Nodes"]) == 5


def test_templates_over_http_and_dns(dev_agent: AgentProcess) -> None:
    _register(dev_agent, "tpl-1", "10.4.0.1", "shop", tags=["blue"], port=8081)
    _register(dev_agent, "tpl-2", "10.4.0.2", "shop", tags=["green"], port=8082)
    _create(dev_agent, {
        "Name": "geo-", "Template": {"Type": "name_prefix_match", "Regexp": r"^geo-([a-z]+)-([a-z]*)$",
                                     "RemoveEmptyTags": True},
        "Service": {"Service": "${match(1)}", "Tags": ["${match(2)}"]}, "DNS": {"TTL": "42s"},
    })
    _create(dev_agent, {"Name": "", "Template": {"Type": "name_prefix_match"},
                        "Service": {"Service": "${name.full}"}})
    result = _execute(dev_agent, "geo-shop-green")
    assert result["Service"] == "shop" and [n["Node"]["Node"] for n in result["Nodes"]] == ["tpl-2"]
    assert sorted(n["Node"]["Node"] for n in _execute(dev_agent, "geo-shop-")["Nodes"]) == ["tpl-1", "tpl-2"]
    status, _, raw = dev_agent.http("GET", "/v1/query/geo-shop-blue/explain")
    assert status == 200 and json.loads(raw)["Query"]["Service"]["Tags"] == ["blue"]
    # The catch-all answers any other name with the service of that name.
    assert sorted(n["Node"]["Node"] for n in _execute(dev_agent, "shop")["Nodes"]) == ["tpl-1", "tpl-2"]

    out = _dig(dev_agent, "+noall", "+answer", "geo-shop-blue.query.consul", "A")
    assert [line.split() for line in out.splitlines()] == [["geo-shop-blue.query.consul.", "42", "IN", "A", "10.4.0.1"]]
    out = _dig(dev_agent, "+noall", "+answer", "_geo-shop-green._tcp.query.consul", "SRV")
    fields = [line.split() for line in out.splitlines()]
    assert len(fields) == 1 and fields[0][3:7] == ["SRV", "1", "1", "8082"], out
    assert fields[0][7] == "tpl-2.node.dc1.consul."
    out = _dig(dev_agent, "shop.query.consul", "A")
    assert "status: NOERROR" in out and "10.4.0.1" in out and "10.4.0.2" in out


def test_unknown_query_is_nxdomain(dev_agent: AgentProcess) -> None:
    _create(dev_agent, {"Name": "known", "Service": {"Service": "nothing-here"}})
    assert "status: NXDOMAIN" in _dig(dev_agent, "unknown.query.consul", "A")
    # A known query with no healthy instance is NXDOMAIN as well.
    assert "status: NXDOMAIN" in _dig(dev_agent, "known.query.consul", "A")


def test_session_bound_query_is_deleted_with_its_session(c: consul.Consul, dev_agent: AgentProcess) -> None:
    session = c.session.create(behavior="delete")
    qid = _create(dev_agent, {"Session": session, "Service": {"Service": "web"}})
    status, raw = _post(dev_agent, {"Session": "not-a-session", "Service": {"Service": "web"}})
    assert (status, raw) == (500, 'invalid session "not-a-session"')
    assert [q["ID"] for q in c.query.list()] == [qid]
    assert c.session.destroy(session) is True
    wait_for(lambda: c.query.list() == [], timeout=10)
    assert dev_agent.http("GET", f"/v1/query/{qid}")[0] == 404
