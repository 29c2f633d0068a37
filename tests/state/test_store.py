"""State store and FSM: Consul's index semantics, KV rules, transactions, watches, snapshots."""

from __future__ import annotations

import threading

from proconsul.state import commands as cmd
from proconsul.state.fsm import TxnResult
from proconsul.state.records import DirEntry, HealthCheck, Node, ServiceInstance, Session
from proconsul.state.store import Store, StoreError
from state_helpers import Log


def kv(op: str, key: str, value: bytes | None = b"v", **kw: object) -> cmd.KVS:
    return cmd.KVS(op, DirEntry(key=key, value=value, **kw))  # type: ignore[arg-type]


def test_kv_set_keeps_create_index_and_bumps_modify_index() -> None:
    log = Log()
    log.apply(kv("set", "a"))
    log.apply(kv("set", "a", b"w"))
    index, entry = log.store.kv_get("a")
    assert entry is not None and (entry.create_index, entry.modify_index, index) == (1, 2, 2)


def test_cas_zero_only_creates_and_stale_index_fails() -> None:
    log = Log()
    assert log.apply(kv("cas", "k", modify_index=0)) is True
    assert log.apply(kv("cas", "k", modify_index=0)) is False
    assert log.apply(kv("cas", "k", modify_index=99)) is False
    assert log.apply(kv("cas", "k", modify_index=1)) is True


def test_missing_key_and_prefix_reads_report_tombstone_index() -> None:
    log = Log()
    log.apply(kv("set", "p/a"))
    log.apply(kv("set", "other"))
    log.apply(kv("delete", "p/a"))
    index, entries = log.store.kv_list("p/")
    assert entries == [] and index == 3
    index, entry = log.store.kv_get("p/a")
    assert entry is None and index == 3


def test_delete_cas_on_missing_key_succeeds() -> None:
    log = Log()
    assert log.apply(kv("delete-cas", "nope", modify_index=5)) is True


def test_watch_fires_only_for_matching_prefix() -> None:
    log = Log()
    fired: list[str] = []
    log.store.watch(("kvs", "tombstones"), lambda: fired.append("a"), kv_prefix="a")
    log.apply(kv("set", "b"))
    assert fired == []
    log.apply(kv("set", "a/x"))
    assert fired == ["a"]
    log.apply(kv("set", "a/y"))
    assert fired == ["a"], "watches are one-shot"


def test_txn_is_atomic() -> None:
    log = Log()
    log.apply(kv("set", "exists"))
    before = dict(log.store.table_index)
    result = log.apply(cmd.Txn((kv("set", "new"), kv("check-not-exists", "exists"))))
    assert isinstance(result, TxnResult) and result.errors and result.errors[0].op_index == 1
    assert "new" not in log.store.kv
    assert log.store.table_index == before


def test_lock_requires_session_and_counts_lock_index() -> None:
    log = Log()
    log.apply(cmd.Register(Node("n1", address="10.0.0.1")))
    assert isinstance(log.apply(kv("lock", "l", session="nope")), StoreError)
    log.apply(cmd.SessionOp("create", Session(id="s1", node="n1")))
    log.apply(cmd.SessionOp("create", Session(id="s2", node="n1")))
    assert log.apply(kv("lock", "l", session="s1")) is True
    assert log.apply(kv("lock", "l", session="s2")) is False
    assert log.store.kv["l"].lock_index == 1 and log.store.kv["l"].session == "s1"
    assert log.apply(kv("unlock", "l", session="s1")) is True
    assert log.apply(kv("lock", "l", session="s2")) is True
    assert log.store.kv["l"].lock_index == 2


def test_destroying_a_session_releases_or_deletes_its_locks() -> None:
    log = Log()
    log.apply(cmd.Register(Node("n1", address="10.0.0.1")))
    log.apply(cmd.SessionOp("create", Session(id="rel", node="n1")))
    log.apply(cmd.SessionOp("create", Session(id="del", node="n1", behavior="delete")))
    log.apply(kv("lock", "a", session="rel"))
    log.apply(kv("lock", "b", session="del"))
    log.apply(cmd.SessionOp("destroy", Session(id="rel")))
    log.apply(cmd.SessionOp("destroy", Session(id="del")))
    assert log.store.kv["a"].session == "" and "b" not in log.store.kv


def test_an_acquire_checked_before_an_invalidation_is_refused() -> None:
    """The lock-delay is checked before the acquire is proposed; if the holder's session is
    invalidated in between, the acquire (carrying the index it was checked at) must not take
    the lock the invalidation just freed, or two holders overlap for the whole lock-delay."""
    for behavior in ("release", "delete"):
        log = Log()
        log.apply(cmd.Register(Node("n1", address="10.0.0.1")))
        log.apply(cmd.SessionOp("create", Session(id="a", node="n1", behavior=behavior)))
        log.apply(cmd.SessionOp("create", Session(id="b", node="n1")))
        log.apply(kv("lock", "l", session="a"))
        checked_at = log.store.last_index
        assert not log.store.lock_delay_active("l")
        log.apply(cmd.SessionOp("destroy", Session(id="a")))  # invalidated after the check
        late = cmd.KVS("lock", DirEntry(key="l", value=b"v", session="b"), checked_at)
        assert log.apply(late) is False, behavior
        assert log.store.kv.get("l") is None or log.store.kv["l"].session == ""
        # Checked after the invalidation, the acquire meets the delay (the HTTP layer refuses);
        # once the key is unchanged since the check, the same acquire succeeds.
        assert log.store.lock_delay_active("l")
        fresh = cmd.KVS("lock", DirEntry(key="l", value=b"v", session="b"), log.store.last_index)
        assert log.apply(fresh) is True
        # The holder re-acquiring its own lock is not refused by later writes of its own.
        log.apply(kv("lock", "l", b"w", session="b"))
        again = cmd.KVS("lock", DirEntry(key="l", value=b"x", session="b"), checked_at)
        assert log.apply(again) is True


def test_the_checked_index_of_an_acquire_survives_encoding() -> None:
    command = cmd.KVS("lock", DirEntry(key="l", session="s"), 41)
    assert cmd.decode(cmd.encode(command)) == command
    plain = cmd.KVS("set", DirEntry(key="k", value=b"v"))
    assert cmd.decode(cmd.encode(plain)) == plain and len(cmd.encode(plain)) < len(cmd.encode(command))


def test_critical_check_invalidates_sessions() -> None:
    log = Log()
    node = Node("n1", address="10.0.0.1")
    log.apply(cmd.Register(node, checks=(HealthCheck("n1", "serfHealth", status="passing"),)))
    log.apply(cmd.SessionOp("create", Session(id="s", node="n1", node_checks=("serfHealth",))))
    log.apply(cmd.Register(node, checks=(HealthCheck("n1", "serfHealth", status="critical"),)))
    assert "s" not in log.store.sessions


def test_register_rejects_check_for_unknown_service_without_changes() -> None:
    log = Log()
    before = dict(log.store.table_index)
    result = log.apply(cmd.Register(Node("n1", address="x"), checks=(HealthCheck("n1", "c", service_id="ghost"),)))
    assert isinstance(result, StoreError)
    assert "n1" not in log.store.nodes and log.store.table_index == before


def test_unchanged_registration_does_not_bump_indexes() -> None:
    log = Log()
    svc = ServiceInstance("n1", "web", "web", port=80)
    log.apply(cmd.Register(Node("n1", address="x"), svc))
    first = log.store.index_for_service("web")
    log.apply(cmd.Register(Node("n1", address="x"), svc))
    assert log.store.index_for_service("web") == first


def test_service_index_tracks_node_check_changes() -> None:
    log = Log()
    node = Node("n1", address="x")
    log.apply(cmd.Register(node, ServiceInstance("n1", "web", "web")))
    log.apply(cmd.Register(node, ServiceInstance("n1", "db", "db")))
    web_before = log.store.index_for_service("web")
    log.apply(cmd.Register(node, checks=(HealthCheck("n1", "maint", status="critical"),)))
    assert log.store.index_for_service("web") > web_before


def test_snapshot_restore_roundtrip() -> None:
    log = Log()
    log.apply(cmd.Register(Node("n1", address="x"), ServiceInstance("n1", "web", "web", tags=("a",), port=80),
                           (HealthCheck("n1", "c1", status="passing", service_id="web"),)))
    log.apply(kv("set", "k", b"\x00\xff"))
    log.apply(kv("delete", "gone"))
    blob = log.store.snapshot()
    other = Store()
    other.restore(blob)
    assert other.snapshot() == blob
    assert other.kv_get("k") == log.store.kv_get("k")
    assert other.service_instances("web") == log.store.service_instances("web")


def test_deregister_node_removes_services_checks_and_sessions() -> None:
    log = Log()
    log.apply(cmd.Register(Node("n1", address="x"), ServiceInstance("n1", "web", "web"),
                           (HealthCheck("n1", "c1", status="passing", service_id="web"),)))
    log.apply(cmd.SessionOp("create", Session(id="s", node="n1")))
    log.apply(cmd.Deregister("n1"))
    assert log.store.nodes == {} and log.store.service_instances("web") == [] and log.store.sessions == {}


def _workload(step: int) -> cmd.Command:
    """A deterministic mix of writes over a few nodes and keys: registrations, check changes,
    updates, deregistrations and KV sets/deletes, so later steps change what earlier ones wrote."""
    node = f"n{step % 7}"
    kind = step % 5
    if kind == 0:
        return cmd.Register(
            Node(node, address=f"10.0.0.{step % 250}", meta={"step": str(step)}),
            ServiceInstance(node, f"web-{step % 11}", "web", port=step, tags=(f"t{step}",)),
            (HealthCheck(node, f"c{step % 3}", status=("passing", "critical")[step % 2], service_id=f"web-{step % 11}"),),
        )
    if kind == 1:
        return kv("set", f"k/{step % 13}", str(step).encode())
    if kind == 2:
        return kv("delete", f"k/{(step * 3) % 13}")
    if kind == 3:
        return cmd.Deregister(node, service_id=f"web-{(step * 7) % 11}")
    return cmd.Deregister(node) if step % 4 == 0 else kv("set", f"other/{step}", b"x")


def test_snapshot_view_serialised_off_thread_while_writes_continue_is_the_state_at_its_index() -> None:
    live = Log()
    for step in range(300):
        live.apply(_workload(step))
    at = live.index
    encode = live.store.snapshot_view()  # on the "loop", at index `at`
    # Writes continue before the encoding starts and while it runs in another thread: the
    # encoding must see neither (and must not trip over dicts changing size under it).
    for step in range(300, 600):
        live.apply(_workload(step))
    result: list[bytes] = []
    worker = threading.Thread(target=lambda: result.append(encode()))
    worker.start()
    for step in range(600, 1200):
        live.apply(_workload(step))
    worker.join(timeout=60)
    assert result, "the encoding thread did not finish"
    reference = Log()  # the same writes, stopped at the view's index
    for step in range(300):
        reference.apply(_workload(step))
    assert reference.index == at
    assert result[0] == reference.store.snapshot()
    restored = Store.decode(result[0])
    assert restored.snapshot() == result[0]
    assert restored.last_index == at and live.store.last_index > at
    assert restored.kv_list("k/") == reference.store.kv_list("k/")
    assert restored.service_instances("web") == reference.store.service_instances("web")
    assert restored.service_instances("web") != live.store.service_instances("web")


def test_restore_entry_adopts_a_store_decoded_off_the_loop_only_for_its_own_blob() -> None:
    source = Log()
    for step in range(50):
        source.apply(_workload(step))
    blob = source.store.snapshot()
    other = source.store.snapshot_view()()  # same bytes: the offer is matched by content
    plain, offered, mismatched = Log(), Log(), Log()
    for log in (plain, offered, mismatched):
        log.apply(kv("set", "before", b"1"))
    decoded = Store.decode(blob)
    offered.fsm.offer_decoded(blob, decoded)
    mismatched.fsm.offer_decoded(Log().store.snapshot(), Store())  # another blob: not used
    for log in (plain, offered, mismatched):
        log.apply(cmd.Restore(other))
    assert offered.store.nodes is decoded.nodes  # adopted, not decoded again
    assert plain.store.snapshot() == offered.store.snapshot() == mismatched.store.snapshot()
    assert offered.store.kv_get("before")[1] is None and offered.store.kv_list("k/") == source.store.kv_list("k/")
