"""The server's RPC surface records Consul's rpc.* and apply metrics into the registry it is given."""

from __future__ import annotations

import pytest
from helpers import wait_until
from proconsul.metrics import Metrics
from proconsul.rpc_api import QueryOptions, RPCError
from proconsul.server.rpc import Server
from proconsul.server.single import SingleNodeLog
from proconsul.state import commands
from proconsul.state.fsm import FSM
from proconsul.state.records import DirEntry, Node, ServiceInstance
from proconsul.state.store import Store


def _total(m: Metrics, name: str) -> float:
    series = m.series[(f"consul.{name}", ())]
    return series.count if series.family.kind == "sample" else series.total


async def test_requests_queries_applies_and_errors_are_counted() -> None:
    metrics = Metrics()
    store = Store()
    server = Server(store, SingleNodeLog(FSM(store), "127.0.0.1:8300", "id", "s1"), "dc1", metrics=metrics)
    await server.write(commands.KVS(commands.KVOp.SET, DirEntry(key="k", value=b"v")))
    await server.query("KVS.Get", {"key": "k"}, QueryOptions())
    assert _total(metrics, "rpc.request") == 2
    assert _total(metrics, "rpc.query") == 1
    assert _total(metrics, "kvs.apply") == 1
    assert _total(metrics, "txn.apply") == 0
    assert _total(metrics, "rpc.request_error") == 0
    with pytest.raises(RPCError):
        await server.handle_rpc("No.Such", None)
    assert _total(metrics, "rpc.request_error") == 1


async def test_prepared_query_applies_are_timed() -> None:
    from proconsul.state import prepared_query as pq
    from proconsul.state.records import PreparedQuery

    metrics = Metrics()
    store = Store()
    server = Server(store, SingleNodeLog(FSM(store), "127.0.0.1:8300", "id", "s1"), "dc1", metrics=metrics)
    definition = pq.normalize({"Name": "q", "Service": {"Service": "web"}})
    query = PreparedQuery("11111111-1111-1111-1111-111111111111", "q", "", definition)
    await server.write(commands.PreparedQueryOp("create", query))
    await server.write(commands.PreparedQueryOp("delete", query))
    assert _total(metrics, "prepared-query.apply") == 2


def _labelled(m: Metrics, name: str, *labels: str) -> float:
    series = m.series.get((f"consul.{name}", labels))
    return 0.0 if series is None else series.total


async def test_service_discovery_reads_are_counted_by_service_tags_and_not_found() -> None:
    metrics = Metrics()
    store = Store()
    server = Server(store, SingleNodeLog(FSM(store), "127.0.0.1:8300", "id", "s1"), "dc1", metrics=metrics)
    families = ("query", "query-tags", "not-found")
    for what in ("health", "catalog"):  # declared with the server, before any read
        for family in families:
            assert _total(metrics, f"{what}.service.{family}") == 0
    await server.write(commands.Register(Node("n1", address="127.0.0.2"),
                                         ServiceInstance("n1", "web", "web", tags=("v1", "blue"))))
    health = {"service": "web", "tags": [], "passing": False, "node_meta": {}, "datacenter": "dc1", "near": ""}
    await server.query("Health.ServiceNodes", health, QueryOptions())
    await server.query("Health.ServiceNodes", {**health, "tags": ["v1", "blue"]}, QueryOptions())
    await server.query("Health.ServiceNodes", {**health, "service": "nope"}, QueryOptions())
    assert _labelled(metrics, "health.service.query", "web") == 2
    assert _labelled(metrics, "health.service.query", "nope") == 1
    assert _labelled(metrics, "health.service.query-tags", "web", "blue,v1") == 1  # sorted, as Consul sorts
    assert _labelled(metrics, "health.service.not-found", "nope") == 1
    assert _labelled(metrics, "health.service.not-found", "web") == 0
    catalog = {"service": "web", "tags": ["v1"], "node_meta": {}, "near": ""}
    await server.query("Catalog.ServiceNodes", catalog, QueryOptions())
    await server.query("Catalog.ServiceNodes", {**catalog, "tags": ["v2"]}, QueryOptions())
    assert _labelled(metrics, "catalog.service.query", "web") == 2
    assert _labelled(metrics, "catalog.service.query-tags", "web", "v1") == 1
    assert _labelled(metrics, "catalog.service.not-found", "web") == 1  # no instance tagged v2
    assert _labelled(metrics, "health.service.query", "web") == 2  # other reads count nothing here
    await server.query("KVS.Get", {"key": "k"}, QueryOptions())
    assert _labelled(metrics, "catalog.service.query", "web") == 2


async def test_parked_service_reads_count_when_answered() -> None:
    """`park_query` (the HTTP fast path's blocking reads) counts an answer ready at once and a
    parked read when its answer comes, not when it parks."""
    metrics = Metrics()
    store = Store()
    server = Server(store, SingleNodeLog(FSM(store), "127.0.0.1:8300", "id", "s1"), "dc1", metrics=metrics)
    meta, _ = await server.write(commands.Register(Node("n1", address="127.0.0.2"),
                                                   ServiceInstance("n1", "web", "web")))
    args = {"service": "web", "tags": [], "passing": False, "node_meta": {}, "datacenter": "dc1", "near": ""}
    outcomes: list[object] = []
    out = server.park_query("Health.ServiceNodes", args, QueryOptions(min_index=1), outcomes.append)
    assert isinstance(out, tuple)  # index 1 is behind: answered at once
    assert _labelled(metrics, "health.service.query", "web") == 1
    index = out[0].index
    parked = server.park_query("Health.ServiceNodes", args, QueryOptions(min_index=index), outcomes.append)
    assert parked is not None and not isinstance(parked, tuple)
    assert _labelled(metrics, "health.service.query", "web") == 1  # waiting: not yet
    await server.write(commands.Deregister("n1", service_id="web"))
    await wait_until(lambda: bool(outcomes), timeout=10.0)
    assert isinstance(outcomes[0], tuple)
    assert _labelled(metrics, "health.service.query", "web") == 2
    assert _labelled(metrics, "health.service.not-found", "web") == 1  # the answer is empty now
