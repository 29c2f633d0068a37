"""A prepared query failing over across two federated datacenters, over HTTP and DNS.

One server per datacenter (`dc1`, `dc2`) on its own 127.a.b.N address, joined over the WAN. A
service `web` with a TTL check runs in both; a query `web-q` created in dc1 fails over to dc2
(`NearestN` and `Datacenters`). While dc1's instance passes, py-consul's `query.execute` and
`dig web-q.query.consul` answer from dc1; once its check goes critical they answer from dc2
(`Datacenter: dc2`, `Failovers: 1`, dc2's address), on the server and on a client agent of dc1;
once it passes again they come back to dc1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator

import consul
import pytest
from cluster_helpers import Federation, federation
from helpers import AgentProcess, wait_for

WAN_TIMEOUT = 90  # WAN gossip probes every 5 s and suspects for 30 s before declaring a failure
DC1_ADDR, DC2_ADDR = "10.1.0.7", "10.2.0.7"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with federation(tmp_path_factory.mktemp("pqwan")) as started:
        yield started


def _both_datacenters_known(agent: AgentProcess) -> bool:
    status, _, body = agent.http("GET", "/v1/catalog/datacenters")
    return status == 200 and sorted(json.loads(body)) == ["dc1", "dc2"]


def _dig(agent: AgentProcess, *args: str) -> list[str]:
    dig = shutil.which("dig")
    assert dig, "dig is missing: scripts/setup-env test installs bind9-dnsutils"
    out = subprocess.run([dig, f"@{agent.ip}", "-p", str(agent.dns_port), "+tries=1", "+time=5", "+short", *args],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.split("\n")[:-1] if out.stdout else []


def _executed_in(c: consul.Consul, dc: str) -> bool:
    result = c.query.execute("web-q")
    return result["Datacenter"] == dc and len(result["Nodes"]) == 1


def test_query_fails_over_to_dc2_and_comes_back(fed: Federation) -> None:
    for agent in (fed.dc1, fed.dc2):
        wait_for(lambda a=agent: _both_datacenters_known(a), timeout=WAN_TIMEOUT, what=lambda a=agent: a.log())
    c1, c2 = fed.py(fed.dc1), fed.py(fed.dc2)
    for c, addr in ((c1, DC1_ADDR), (c2, DC2_ADDR)):
        assert c.agent.service.register("web", service_id="web-1", address=addr, port=8080,
                                        check=consul.Check.ttl("10m"))
        assert c.agent.check.ttl_pass("service:web-1")
    for c in (c1, c2):
        wait_for(lambda c=c: len(c.health.service("web", passing=True)[1]) == 1, timeout=30)

    body = {"Name": "web-q", "Service": {"Service": "web", "Failover": {"NearestN": 1, "Datacenters": ["dc2"]}},
            "DNS": {"TTL": "7s"}}
    status, _, raw = fed.dc1.http("POST", "/v1/query", json.dumps(body).encode())
    assert status == 200, raw
    query_id = json.loads(raw)["ID"]

    # Healthy at home: answered by dc1, no failover.
    result = c1.query.execute("web-q")
    assert result["Datacenter"] == "dc1" and result["Failovers"] == 0 and result["Service"] == "web"
    assert [(n["Node"]["Node"], n["Service"]["Address"]) for n in result["Nodes"]] == [("srv-dc1", DC1_ADDR)]
    assert result["DNS"] == {"TTL": "7s"}
    assert _dig(fed.dc1, "web-q.query.consul", "A") == [DC1_ADDR]

    # dc1's only instance goes critical: the query fails over to dc2, over HTTP and DNS.
    assert c1.agent.check.ttl_fail("service:web-1")
    wait_for(lambda: _executed_in(c1, "dc2"), timeout=30, what="the query to fail over to dc2")
    result = c1.query.execute(query_id)
    assert result["Failovers"] == 1
    node = result["Nodes"][0]
    assert node["Node"]["Node"] == "srv-dc2" and node["Node"]["Datacenter"] == "dc2"
    assert node["Service"]["Address"] == DC2_ADDR
    assert {c["CheckID"]: c["Status"] for c in node["Checks"]}["service:web-1"] == "passing"
    wait_for(lambda: _dig(fed.dc1, "web-q.query.consul", "A") == [DC2_ADDR], timeout=30,
             what="DNS to answer from dc2")
    # A client agent executes the same way, through its server.
    cc = fed.py(fed.client)
    via_client = cc.query.execute("web-q")
    assert via_client["Datacenter"] == "dc2" and via_client["Failovers"] == 1
    assert [n["Service"]["Address"] for n in via_client["Nodes"]] == [DC2_ADDR]
    assert _dig(fed.client, "web-q.query.consul", "A") == [DC2_ADDR]
    srv = subprocess.run([shutil.which("dig") or "dig", f"@{fed.dc1.ip}", "-p", "8600", "+tries=1", "+time=5",
                          "+noall", "+answer", "_web-q._tcp.query.consul", "SRV"],
                         capture_output=True, text=True, timeout=30).stdout
    answer = [line.split() for line in srv.splitlines() if line.strip()]
    assert len(answer) == 1, srv
    assert answer[0][1] == "7" and answer[0][-2] == "8080", srv  # the query's DNS TTL and the port
    assert answer[0][-1].endswith(".addr.dc2.consul."), srv

    # dc1 recovers: answers come home.
    assert c1.agent.check.ttl_pass("service:web-1")
    wait_for(lambda: _executed_in(c1, "dc1"), timeout=30, what="the query to come back to dc1")
    assert c1.query.execute("web-q")["Failovers"] == 0
    wait_for(lambda: _dig(fed.dc1, "web-q.query.consul", "A") == [DC1_ADDR], timeout=30,
             what="DNS to answer from dc1 again")

    # A query stored in dc2 (created through dc1 with ?dc=), executed there from dc1, over HTTP and DNS.
    status, _, raw = fed.dc1.http("POST", "/v1/query?dc=dc2",
                                  json.dumps({"Name": "in-dc2", "Service": {"Service": "web"}}).encode())
    assert status == 200, raw
    assert [q["Name"] for q in c2.query.list()] == ["in-dc2"]
    assert [q["Name"] for q in c1.query.list()] == ["web-q"]
    remote = c1.query.execute("in-dc2", dc="dc2")
    assert remote["Datacenter"] == "dc2" and [n["Service"]["Address"] for n in remote["Nodes"]] == [DC2_ADDR]
    assert _dig(fed.dc1, "in-dc2.query.dc2.consul", "A") == [DC2_ADDR]
    assert fed.dc1.http("GET", "/v1/query/in-dc2/execute")[0] == 404  # not a query of dc1

    # Both down: every failover target tried, nothing found, the answer still names the query.
    assert c1.agent.check.ttl_fail("service:web-1")
    assert c2.agent.check.ttl_fail("service:web-1")
    wait_for(lambda: c1.query.execute("web-q")["Nodes"] == [] and c2.health.service("web", passing=True)[1] == [],
             timeout=30)
    result = c1.query.execute("web-q")
    assert result["Failovers"] == 1 and result["Service"] == "web"
    assert _dig(fed.dc1, "web-q.query.consul", "A") == []
