"""Executing prepared queries: the local filter (health, tags, meta, near, limit) and the failover."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from proconsul.coordinate import Coordinate
from proconsul.rpc_api import NoPathToDatacenter, QueryMeta, QueryOptions, RPCError
from proconsul.server import prepared_query as ex
from proconsul.server import queries
from proconsul.state import prepared_query as pq
from proconsul.state.records import HealthCheck, Node, PreparedQuery, ServiceInstance
from proconsul.state.store import Store

QID = "11111111-1111-1111-1111-111111111111"


def coord(x: float) -> Coordinate:
    return Coordinate((x,) + (0.0,) * 7, 0.0, 0.0, 1e-5)


def _register(store: Store, node: str, address: str, sid: str = "web", status: str = "passing",
              tags: tuple[str, ...] = (), node_meta: dict | None = None, meta: dict | None = None,
              extra_checks: tuple[tuple[str, str], ...] = ()) -> None:
    index = store.last_index + 1
    n = Node(node, address=address, datacenter="dc1", meta=node_meta or {})
    svc = ServiceInstance(node, sid, "web", tags=tags, meta=meta or {}, port=80)
    checks = (HealthCheck(node, f"service:{sid}", status=status, service_id=sid),) + tuple(
        HealthCheck(node, cid, status=st) for cid, st in extra_checks)
    store.ensure_registration(index, n, svc, checks, False)
    store.finish(index)


def _store_with_query(store: Store, **service: Any) -> None:
    service.setdefault("Service", "web")
    d = pq.normalize({"Name": "q", "Service": service})
    store.prepared_query_set(store.last_index + 1, PreparedQuery(QID, "q", "", d))


def _nodes(store: Store, **args: Any) -> list[str]:
    args.setdefault("id_or_name", "q")
    _, out = queries.spec("PreparedQuery.ExecuteLocal").run(store, args)
    return sorted(Node.from_wire(n).node for n, _, _ in out["Nodes"]) if not args.get("ordered") else [
        Node.from_wire(n).node for n, _, _ in out["Nodes"]]


def test_health_filter_warning_passes_unless_only_passing_and_ignore_check_ids() -> None:
    store = Store()
    _register(store, "ok", "10.0.0.1")
    _register(store, "warn", "10.0.0.2", status="warning")
    _register(store, "crit", "10.0.0.3", status="critical")
    _register(store, "node-down", "10.0.0.4", extra_checks=(("serfHealth", "critical"),))
    _register(store, "flaky", "10.0.0.5", extra_checks=(("flaky-check", "critical"),))
    _store_with_query(store)
    assert _nodes(store) == ["ok", "warn"]
    _store_with_query(store, OnlyPassing=True)
    assert _nodes(store) == ["ok"]
    _store_with_query(store, IgnoreCheckIDs=["flaky-check"])
    assert _nodes(store) == ["flaky", "ok", "warn"]


def test_tags_with_exclusion_and_meta_filters() -> None:
    store = Store()
    _register(store, "a", "10.0.0.1", tags=("primary", "v2"), node_meta={"rack": "r1"}, meta={"env": "prod"})
    _register(store, "b", "10.0.0.2", tags=("primary", "experimental"), node_meta={"rack": "r1"}, meta={"env": "prod"})
    _register(store, "c", "10.0.0.3", tags=("Primary",), node_meta={"rack": "r2"}, meta={"env": "dev"})
    _store_with_query(store, Tags=["primary", "!experimental"])
    assert _nodes(store) == ["a", "c"]  # tags match case-insensitively
    _store_with_query(store, Tags=["PRIMARY"], NodeMeta={"rack": "r1"})
    assert _nodes(store) == ["a", "b"]
    _store_with_query(store, ServiceMeta={"env": "dev"})
    assert _nodes(store) == ["c"]


def test_unknown_query_and_limit() -> None:
    store = Store()
    for i in range(5):
        _register(store, f"n{i}", f"10.0.0.{i}")
    _store_with_query(store)
    _, out = queries.spec("PreparedQuery.ExecuteLocal").run(store, {"id_or_name": "missing"})
    assert out == {"Query": None, "Nodes": []}
    assert len(_nodes(store, limit=2)) == 2


def test_shuffle_depends_on_the_seed_only() -> None:
    store = Store()
    for i in range(8):
        _register(store, f"n{i}", f"10.0.0.{i}")
    _store_with_query(store)
    orders = {tuple(_nodes(store, seed=s, ordered=True)) for s in range(20)}
    assert len(orders) > 1
    assert _nodes(store, seed=3, ordered=True) == _nodes(store, seed=3, ordered=True)


def _near_store() -> Store:
    store = Store()
    for i, name in enumerate(("far", "mid", "near", "me")):
        _register(store, name, f"10.0.0.{i + 1}")
    positions = {"far": 0.5, "mid": 0.2, "near": 0.05, "me": 0.0}
    store.coordinate_batch_update(store.last_index + 1, tuple((n, "", coord(x)) for n, x in positions.items()))
    return store


@pytest.mark.parametrize(("args", "first"), [
    ({"near": "far"}, ["far", "mid", "near", "me"]),
    ({"near": "_agent", "agent_node": "me"}, ["me", "near", "mid", "far"]),
    ({"near": "_ip", "source_ip": "10.0.0.3"}, ["near", "me", "mid", "far"]),
])
def test_near_sorts_by_coordinates(args: dict, first: list[str]) -> None:
    store = _near_store()
    _store_with_query(store)
    for seed in range(5):
        assert _nodes(store, sort=True, seed=seed, ordered=True, **args) == first


def test_query_near_applies_when_the_request_names_none_and_not_remotely() -> None:
    store = _near_store()
    _store_with_query(store, Near="far")
    assert _nodes(store, sort=True, ordered=True) == ["far", "mid", "near", "me"]
    assert _nodes(store, sort=True, ordered=True, near="me") == ["me", "near", "mid", "far"]
    # Without `sort` (another datacenter's execution) only the shuffle runs.
    orders = {tuple(_nodes(store, seed=s, ordered=True)) for s in range(20)}
    assert len(orders) > 1
    # _ip with no node at that address: no sort.
    orders = {tuple(_nodes(store, sort=True, near="_ip", source_ip="10.9.9.9", seed=s, ordered=True))
              for s in range(20)}
    assert len(orders) > 1


# ------------------------------------------------------------------------------------ failover


class FakeFederation:
    """`Server.query` and `list_datacenters` over one store per datacenter."""

    def __init__(self, stores: dict[str, Store], local: str, nearest: list[str], broken: tuple[str, ...] = ()):
        self.stores, self.local, self.nearest, self.broken = stores, local, nearest, broken
        self.asked: list[str] = []

    async def query(self, name: str, args: dict, opts: QueryOptions) -> tuple[QueryMeta, Any]:
        dc = opts.datacenter or self.local
        self.asked.append(dc)
        if dc not in self.stores:
            raise NoPathToDatacenter(dc)
        if dc in self.broken:
            raise RPCError("rpc error: no server in datacenter answered")
        index, result = queries.spec(name).run(self.stores[dc], args)
        return QueryMeta(index, True, 0, "leader"), result

    async def list_datacenters(self) -> list[str]:
        return self.nearest


def _run(fed: FakeFederation, name: str = "q", **kw: Any) -> ex.Execution:
    return asyncio.run(ex.execute(fed, name, QueryOptions(), fed.local, random.Random(1), **kw))


def _dc_store(healthy: bool, node: str) -> Store:
    store = Store()
    _register(store, node, "10.0.0.1", status="passing" if healthy else "critical")
    return store


def test_failover_nearest_n_then_datacenters_each_once() -> None:
    stores = {"dc1": _dc_store(False, "a1"), "dc2": _dc_store(False, "a2"), "dc3": _dc_store(False, "a3"),
              "dc4": _dc_store(True, "a4")}
    _store_with_query(stores["dc1"], Failover={"NearestN": 2, "Datacenters": ["dc3", "dc9", "dc4", "dc2"]})
    fed = FakeFederation(stores, "dc1", ["dc1", "dc3", "dc2", "dc4"])
    result = _run(fed)
    # NearestN picks dc3 and dc2 (nearest first), then the list adds dc4; dc9 is unknown: skipped.
    assert fed.asked == ["dc1", "dc3", "dc2", "dc4"]
    assert result.datacenter == "dc4" and result.failovers == 3
    assert [n.node for n, _, _ in result.instances] == ["a4"]
    assert [n["Node"]["Datacenter"] for n in ex.check_service_nodes(result)] == ["dc1"]  # as registered


def test_failover_stops_at_the_first_datacenter_with_instances_and_skips_broken_ones() -> None:
    stores = {"dc1": _dc_store(False, "a1"), "dc2": _dc_store(True, "a2"), "dc3": _dc_store(True, "a3")}
    _store_with_query(stores["dc1"], Failover={"Targets": [{"Datacenter": "dc2"}, {"Datacenter": "dc3"}]})
    fed = FakeFederation(stores, "dc1", ["dc1", "dc2", "dc3"], broken=("dc2",))
    result = _run(fed)
    assert fed.asked == ["dc1", "dc2", "dc3"] and result.failovers == 2 and result.datacenter == "dc3"


def test_no_failover_when_healthy_locally_or_not_configured() -> None:
    stores = {"dc1": _dc_store(True, "a1"), "dc2": _dc_store(True, "a2")}
    _store_with_query(stores["dc1"], Failover={"NearestN": 1})
    fed = FakeFederation(stores, "dc1", ["dc1", "dc2"])
    result = _run(fed)
    assert fed.asked == ["dc1"] and result.failovers == 0 and result.datacenter == "dc1"
    stores["dc1"] = _dc_store(False, "a1")
    _store_with_query(stores["dc1"])
    fed = FakeFederation(stores, "dc1", ["dc1", "dc2"])
    result = _run(fed)
    assert fed.asked == ["dc1"] and result.instances == [] and result.failovers == 0


def test_unknown_query_raises_not_found() -> None:
    fed = FakeFederation({"dc1": Store()}, "dc1", ["dc1"])
    with pytest.raises(ex.QueryNotFound):
        _run(fed, "nope")


def test_template_travels_rendered_to_the_remote_datacenter() -> None:
    stores = {"dc1": Store(), "dc2": Store()}
    _register(stores["dc2"], "b1", "10.0.0.9")
    d = pq.normalize({"Name": "", "Template": {"Type": "name_prefix_match"},
                      "Service": {"Service": "${name.full}", "Failover": {"Datacenters": ["dc2"]}}})
    stores["dc1"].prepared_query_set(1, PreparedQuery(QID, "", "", d))
    result = _run(FakeFederation(stores, "dc1", ["dc1", "dc2"]), "web")
    assert result.datacenter == "dc2" and [n.node for n, _, _ in result.instances] == ["b1"]
    assert result.query["Service"]["Service"] == "web"
