"""Store watches by topic (table, service, node, KV prefix) and the by-name service index."""

from __future__ import annotations

from proconsul.state import commands as cmd
from proconsul.state.records import DirEntry, HealthCheck, Node, ServiceInstance
from state_helpers import Log


def _register(log: Log, node: str, sid: str, name: str, status: str = "passing") -> None:
    log.apply(cmd.Register(
        Node(node, address="10.0.0.1"), ServiceInstance(node, sid, name, port=80),
        (HealthCheck(node, f"chk-{sid}", status=status, service_id=sid),),
    ))  # fmt: skip


def test_watches_fire_only_for_what_they_read() -> None:
    log = Log()
    _register(log, "n1", "web1", "web")
    _register(log, "n2", "db1", "db")
    log.apply(cmd.KVS("set", DirEntry(key="app/a", value=b"1")))
    fired: list[str] = []
    store = log.store
    store.watch((), lambda: fired.append("web"), services=("web",))
    store.watch((), lambda: fired.append("db"), services=("db",))
    store.watch((), lambda: fired.append("n2"), nodes=("n2",))
    store.watch(("services",), lambda: fired.append("services-table"))
    store.watch(("kvs", "tombstones"), lambda: fired.append("app/"), kv_prefix="app/")
    store.watch(("kvs", "tombstones"), lambda: fired.append("apple"), kv_prefix="apple")
    assert store.watch_count() == 6

    # A check flip on web's instance: web's readers only (not db's, not the services table).
    _register(log, "n1", "web1", "web", status="critical")
    assert fired == ["web"]
    # A KV write under app/: the app/ prefix, not the unrelated "apple" one.
    log.apply(cmd.KVS("set", DirEntry(key="app/b", value=b"2")))
    assert fired == ["web", "app/"]
    # A node-level check on n2 changes db's health and n2's checks.
    log.apply(cmd.Register(Node("n2", address="10.0.0.1"), checks=(HealthCheck("n2", "node-ok", status="passing"),)))
    assert sorted(fired[2:]) == ["db", "n2"]
    # A new service touches the services table; the watches left are "services-table" and "apple".
    assert store.watch_count() == 2
    _register(log, "n3", "cache1", "cache")
    assert fired[-1] == "services-table" and store.watch_count() == 1
    log.apply(cmd.KVS("delete", DirEntry(key="app/a", value=None)))
    log.apply(cmd.KVS("set", DirEntry(key="apple", value=b"x")))
    assert fired[-1] == "apple" and store.watch_count() == 0


def test_unwatched_watches_are_gone_from_every_topic() -> None:
    log = Log()
    fired: list[str] = []
    w = log.store.watch(("nodes",), lambda: fired.append("x"), kv_prefix="k/", services=("web",), nodes=("n1",))
    log.store.unwatch(w)
    assert log.store.watch_count() == 0
    _register(log, "n1", "web1", "web")
    log.apply(cmd.KVS("set", DirEntry(key="k/1", value=b"1")))
    assert fired == [] and log.store._watches == {} and log.store._kv_prefix_lens == {}


def test_service_index_follows_renames_deregistrations_and_failed_transactions() -> None:
    log = Log()
    store = log.store
    _register(log, "n2", "a", "web")
    _register(log, "n1", "b", "web")
    _register(log, "n1", "c", "db")
    assert [(s.node, s.id) for s in store.service_instances("web")] == [("n1", "b"), ("n2", "a")]
    # Renaming instance b moves it from web to api.
    log.apply(cmd.Register(Node("n1", address="10.0.0.1"), ServiceInstance("n1", "b", "api")))
    assert [s.id for s in store.service_instances("web")] == ["a"]
    assert [s.id for s in store.service_instances("api")] == ["b"]
    assert [c.check_id for c in store.service_checks("api")[1]] == ["chk-b"]
    assert [s.id for s in store.service_instances_any_case("API")] == ["b"]
    # A transaction that registers a service and then fails leaves the index as it was.
    result = log.apply(cmd.Txn((
        cmd.TxnServiceOp("set", "n2", ServiceInstance("n2", "x", "web")),
        cmd.TxnServiceOp("set", "nowhere", ServiceInstance("nowhere", "y", "web")),
    )))  # fmt: skip
    assert getattr(result, "errors", None), result
    assert [s.id for s in store.service_instances("web")] == ["a"]
    log.apply(cmd.Deregister("n2"))
    assert store.service_instances("web") == []
    assert store.list_services()[1] == {"api": [], "db": []}
    # A restored snapshot rebuilds it.
    other = Log()
    other.store.restore(store.snapshot())
    assert [s.id for s in other.store.service_instances("api")] == ["b"]
    assert other.store.list_services()[1] == {"api": [], "db": []}


def test_changes_made_with_nothing_parked_never_fire_a_later_watch() -> None:
    # With no watch parked, `finish` forgets what the command touched without looking for
    # watches; what it forgot must not linger and fire a watch registered afterwards.
    log = Log()
    _register(log, "n1", "web1", "web")
    log.apply(cmd.KVS("set", DirEntry(key="k/1", value=b"1")))
    log.apply(cmd.KVS("delete", DirEntry(key="k/1")))
    store = log.store
    fired: list[str] = []
    store.watch((), lambda: fired.append("k/"), kv_prefix="k/")
    store.watch((), lambda: fired.append("web"), services=("web",))
    store.watch((), lambda: fired.append("n1"), nodes=("n1",))
    store.watch(("tombstones",), lambda: fired.append("tombstones"))
    log.apply(cmd.KVS("set", DirEntry(key="other", value=b"x")))
    assert fired == []
    log.apply(cmd.KVS("set", DirEntry(key="k/2", value=b"2")))
    assert fired == ["k/"]
    assert store.watch_count() == 3
