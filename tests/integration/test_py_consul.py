"""A real `proconsul agent -dev` process driven by the py-consul client library from PyPI.

Each test uses the client the way an application would and checks what Consul would answer.
"""

from __future__ import annotations

import base64
import http.server
import threading
import time
from collections.abc import Iterator

import consul
import pytest
from helpers import AgentProcess, wait_for


@pytest.fixture()
def c(dev_agent: AgentProcess) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=dev_agent.http_port)


class _OK(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        body = b"all good"
        self.send_response(type(self).status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def health_endpoint() -> Iterator[tuple[str, type[_OK]]]:
    handler = type("Handler", (_OK,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health", handler
    finally:
        server.shutdown()
        server.server_close()


def test_kv_put_get_roundtrip(c: consul.Consul) -> None:
    assert c.kv.put("app/config/port", "8080") is True
    index, entry = c.kv.get("app/config/port")
    assert entry["Value"] == b"8080"
    assert entry["Key"] == "app/config/port"
    assert entry["CreateIndex"] == entry["ModifyIndex"] == int(index)
    assert entry["LockIndex"] == 0 and entry["Flags"] == 0


def test_kv_empty_value_is_none(c: consul.Consul) -> None:
    """Consul sends an empty value as null; the client hands it over as None, flat and recursive."""
    assert c.kv.put("app/empty", "") is True
    _, entry = c.kv.get("app/empty")
    assert entry["Key"] == "app/empty" and entry["Value"] is None
    _, entries = c.kv.get("app/empty", recurse=True)
    assert [(e["Key"], e["Value"]) for e in entries] == [("app/empty", None)]


def test_kv_missing_key_has_index(c: consul.Consul) -> None:
    index, entry = c.kv.get("does/not/exist")
    assert entry is None
    assert int(index) >= 1


def test_kv_flags_and_cas(c: consul.Consul) -> None:
    assert c.kv.put("cas/key", "v1", flags=42)
    _, entry = c.kv.get("cas/key")
    assert entry["Flags"] == 42
    modify = entry["ModifyIndex"]
    assert c.kv.put("cas/key", "v2", cas=modify) is True
    assert c.kv.put("cas/key", "v3", cas=modify) is False  # stale index
    _, entry = c.kv.get("cas/key")
    assert entry["Value"] == b"v2"
    assert entry["Flags"] == 0  # flags follow the last write, as Consul
    # cas=0 means "only if absent".
    assert c.kv.put("cas/fresh", "x", cas=0) is True
    assert c.kv.put("cas/fresh", "y", cas=0) is False


def test_kv_recurse_keys_and_delete(c: consul.Consul) -> None:
    for key in ("tree/a", "tree/b/1", "tree/b/2", "tree/c"):
        assert c.kv.put(key, key.upper())
    _, entries = c.kv.get("tree/", recurse=True)
    assert [e["Key"] for e in entries] == ["tree/a", "tree/b/1", "tree/b/2", "tree/c"]
    _, keys = c.kv.get("tree/", keys=True, separator="/")
    assert keys == ["tree/a", "tree/b/", "tree/c"]
    assert c.kv.delete("tree/a") is True
    _, entry = c.kv.get("tree/a")
    assert entry is None
    _, entry = c.kv.get("tree/b/1")
    assert c.kv.delete("tree/b/1", cas=entry["ModifyIndex"] + 1000) is False
    assert c.kv.delete("tree/b/1", cas=entry["ModifyIndex"]) is True
    assert c.kv.delete("tree/", recurse=True) is True
    _, entries = c.kv.get("tree/", recurse=True)
    assert entries is None


def test_kv_recurse_index_moves_on_delete(c: consul.Consul) -> None:
    c.kv.put("tomb/x", "1")
    before, _ = c.kv.get("tomb/", recurse=True)
    c.kv.delete("tomb/x")
    after, entries = c.kv.get("tomb/", recurse=True)
    assert entries is None
    assert int(after) > int(before)


def test_blocking_get_returns_when_another_client_writes(dev_agent: AgentProcess) -> None:
    reader = consul.Consul(host="127.0.0.1", port=dev_agent.http_port)
    writer = consul.Consul(host="127.0.0.1", port=dev_agent.http_port)
    writer.kv.put("block/x", "before")
    index, _ = reader.kv.get("block/x")
    result: dict[str, object] = {}

    def blocked_read() -> None:
        result["answer"] = reader.kv.get("block/x", index=index, wait="60s")

    thread = threading.Thread(target=blocked_read)
    thread.start()
    # An unrelated key must not wake the reader with a changed answer.
    writer.kv.put("block/unrelated", "noise")
    time.sleep(0.2)  # give a wrongly woken reader the chance to return early
    assert "answer" not in result
    writer.kv.put("block/x", "after")
    thread.join(timeout=30)
    assert not thread.is_alive(), "blocking read did not return after the write"
    new_index, entry = result["answer"]  # type: ignore[misc]
    assert int(new_index) > int(index)
    assert entry["Value"] == b"after"


def test_blocking_get_times_out_at_wait(c: consul.Consul) -> None:
    c.kv.put("block/quiet", "1")
    index, _ = c.kv.get("block/quiet")
    start = time.monotonic()
    again, entry = c.kv.get("block/quiet", index=index, wait="1s")
    elapsed = time.monotonic() - start
    assert again == index and entry["Value"] == b"1"
    assert elapsed >= 1.0  # not before the wait; jitter adds at most wait/16


def test_txn_mixed_operations(c: consul.Consul) -> None:
    c.kv.put("txn/exists", "old")
    result = c.txn.put(
        [
            {"KV": {"Verb": "set", "Key": "txn/new", "Value": base64.b64encode(b"hello").decode()}},
            {"KV": {"Verb": "get", "Key": "txn/exists"}},
        ]
    )
    assert result["Errors"] is None
    assert result["Results"][0]["KV"]["Key"] == "txn/new"
    assert result["Results"][0]["KV"]["Value"] is None  # write results carry no value
    assert base64.b64decode(result["Results"][1]["KV"]["Value"]) == b"old"
    _, entry = c.kv.get("txn/new")
    assert entry["Value"] == b"hello"


def test_txn_rolls_back_on_failed_check(c: consul.Consul) -> None:
    with pytest.raises(consul.ConsulException) as info:
        c.txn.put(
            [
                {"KV": {"Verb": "set", "Key": "txn/rolled", "Value": base64.b64encode(b"x").decode()}},
                {"KV": {"Verb": "check-not-exists", "Key": "txn/exists-already"}},
                {"KV": {"Verb": "check-index", "Key": "txn/missing", "Index": 5}},
            ]
        )
    assert "409" in str(info.value) or "txn/missing" in str(info.value)
    _, entry = c.kv.get("txn/rolled")
    assert entry is None


def test_service_register_with_http_check_and_deregister(
    c: consul.Consul, health_endpoint: tuple[str, type[_OK]]
) -> None:
    url, handler = health_endpoint
    check = consul.Check.http(url, interval="1s", timeout="2s")
    c.agent.service.register("web", service_id="web-1", port=8080, tags=["v1", "primary"], check=check,
                             meta={"env": "test"})
    services = c.agent.services()
    assert services["web-1"]["Service"] == "web"
    assert services["web-1"]["Port"] == 8080
    assert services["web-1"]["Meta"] == {"env": "test"}

    def passing_nodes() -> list[dict]:
        _, nodes = c.health.service("web", passing=True)
        return nodes

    nodes = wait_for(passing_nodes, timeout=30, what="web-1 to pass its HTTP check")
    assert nodes[0]["Service"]["ID"] == "web-1"
    check_ids = [ch["CheckID"] for ch in nodes[0]["Checks"]]
    assert "serfHealth" in check_ids and "service:web-1" in check_ids
    http_check = next(ch for ch in nodes[0]["Checks"] if ch["CheckID"] == "service:web-1")
    assert "200" in http_check["Output"]

    handler.status = 503
    wait_for(lambda: not passing_nodes(), timeout=30, what="web-1 to leave ?passing when the check fails")
    _, all_nodes = c.health.service("web")
    assert all_nodes and any(ch["Status"] == "critical" for ch in all_nodes[0]["Checks"])

    c.agent.service.deregister("web-1")
    assert "web-1" not in c.agent.services()
    wait_for(lambda: not c.catalog.service("web")[1], timeout=30, what="web to leave the catalog")


def test_agent_services_filter(c: consul.Consul) -> None:
    c.agent.service.register("api", service_id="api-prod", port=1, tags=["prod"], meta={"env": "prod"})
    c.agent.service.register("api", service_id="api-dev", port=2, tags=["dev"], meta={"env": "dev"})
    try:
        prod = c.agent.services(filter_expr='Meta.env == "prod"')
        assert set(prod) == {"api-prod"}
        tagged = c.agent.services(filter_expr='"dev" in Tags and Service == api')
        assert set(tagged) == {"api-dev"}
        with pytest.raises(consul.ConsulException):
            c.agent.services(filter_expr="NoSuchField == 1")
    finally:
        c.agent.service.deregister("api-prod")
        c.agent.service.deregister("api-dev")


def test_catalog_and_health_reads(c: consul.Consul, dev_agent: AgentProcess) -> None:
    assert c.catalog.datacenters() == ["dc1"]
    _, nodes = c.catalog.nodes()
    assert [n["Node"] for n in nodes] == ["test-node"]
    _, services = c.catalog.services()
    assert "consul" in services
    _, consul_nodes = c.catalog.service("consul")
    assert consul_nodes[0]["ServicePort"] > 0
    _, node = c.catalog.node("test-node")
    assert "consul" in node["Services"]
    _, checks = c.health.node("test-node")
    serf = [ch for ch in checks if ch["CheckID"] == "serfHealth"]
    assert serf and serf[0]["Status"] == "passing"
    _, passing = c.health.state("passing")
    assert any(ch["CheckID"] == "serfHealth" for ch in passing)
    assert c.status.leader()
    assert c.status.peers() == [c.status.leader()]


def test_catalog_register_and_deregister(c: consul.Consul) -> None:
    assert c.catalog.register(
        "external-db", "10.1.2.3", service={"Service": "db", "ID": "db1", "Port": 5432, "Tags": ["primary"]},
        check={"CheckID": "db-alive", "Name": "db alive", "Status": "passing", "ServiceID": "db1"},
    )
    _, nodes = c.catalog.service("db", tag="primary")
    assert [(n["Node"], n["ServicePort"]) for n in nodes] == [("external-db", 5432)]
    _, entries = c.health.service("db", passing=True)
    assert [e["Node"]["Node"] for e in entries] == ["external-db"]
    assert c.catalog.deregister("external-db")
    _, nodes = c.catalog.service("db")
    assert nodes == []


def test_ttl_check_pass_and_fail(c: consul.Consul) -> None:
    c.agent.check.register("heartbeat", check=consul.Check.ttl("30s"), check_id="hb")
    checks = c.agent.checks()
    assert checks["hb"]["Status"] == "critical"
    c.agent.check.ttl_pass("hb", notes="alive")
    assert c.agent.checks()["hb"]["Status"] == "passing"
    assert c.agent.checks()["hb"]["Output"] == "alive"
    c.agent.check.ttl_warn("hb")
    assert c.agent.checks()["hb"]["Status"] == "warning"
    c.agent.check.deregister("hb")
    assert "hb" not in c.agent.checks()


def test_agent_self_reports_dev_server(c: consul.Consul) -> None:
    me = c.agent.self()
    assert me["Config"]["Datacenter"] == "dc1"
    assert me["Config"]["NodeName"] == "test-node"
    assert me["Config"]["Server"] is True
    members = c.agent.members()
    assert members[0]["Name"] == "test-node" and members[0]["Status"] == 1
