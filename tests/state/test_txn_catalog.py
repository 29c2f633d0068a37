"""Transactions over the catalog: Node, Service, Check and Session operations, Consul's verbs,
results and per-operation errors, atomic rollback, and the wire form of commands and results."""

from __future__ import annotations

from dataclasses import replace

from proconsul.server import queries
from proconsul.server.rpc import decode_result, encode_result
from proconsul.state import commands as cmd
from proconsul.state.fsm import FSM, TxnResult
from proconsul.state.records import DirEntry, HealthCheck, Node, ServiceInstance, Session
from proconsul.state.store import Store

N1 = Node("n1", id="6a3c1b1e-0000-4000-8000-000000000001", address="10.0.0.1", datacenter="dc1")
WEB = ServiceInstance("n1", "web-1", "web", tags=("v1",), port=80)
CHK = HealthCheck("n1", "web-alive", name="alive", status="passing", service_id="web-1")


def _txn(fsm: FSM, index: int, *ops: cmd.TxnOp) -> TxnResult:
    # Through the command codec and the RPC result codec, as Raft and forwarding carry them.
    raw = fsm.apply(index, cmd.decode(cmd.encode(cmd.Txn(ops))))
    assert isinstance(raw, TxnResult), raw
    result = decode_result(encode_result(raw))
    assert result == raw
    return result  # type: ignore[no-any-return]


def _errors(result: TxnResult) -> list[tuple[int, str]]:
    return [(e.op_index, e.what) for e in result.errors]


def test_set_get_and_results_per_kind() -> None:
    store = Store()
    fsm = FSM(store)
    result = _txn(fsm, 5, cmd.TxnNodeOp("set", N1), cmd.TxnServiceOp("set", "n1", WEB),
                  cmd.TxnCheckOp("set", CHK), cmd.KVS("set", DirEntry("k", b"v")))
    node, svc, check, kv = result.results
    assert isinstance(node, Node) and node.node == "n1" and node.create_index == node.modify_index == 5
    assert isinstance(svc, ServiceInstance) and svc.id == "web-1" and svc.modify_index == 5
    assert isinstance(check, HealthCheck) and check.service_name == "web" and check.status == "passing"
    assert isinstance(kv, DirEntry) and kv.value is None  # KV writes answer with the value blanked
    got = _txn(fsm, 6, cmd.TxnNodeOp("get", Node("n1")), cmd.TxnServiceOp("get", "n1", ServiceInstance("n1", "web-1", "")),
               cmd.TxnCheckOp("get", HealthCheck("n1", "web-alive")))
    assert [type(r) for r in got.results] == [Node, ServiceInstance, HealthCheck]
    # A node found by its ID as well as by its name.
    assert _txn(fsm, 7, cmd.TxnNodeOp("get", Node("", id=N1.id))).results[0].node == "n1"  # type: ignore[union-attr]


def test_cas_and_delete_cas_compare_modify_index() -> None:
    store = Store()
    fsm = FSM(store)
    _txn(fsm, 5, cmd.TxnNodeOp("set", N1), cmd.TxnServiceOp("set", "n1", WEB), cmd.TxnCheckOp("set", CHK))
    stale = _txn(fsm, 6, cmd.TxnNodeOp("cas", replace(N1, address="10.0.0.9", modify_index=4)))
    assert _errors(stale) == [(0, 'failed to set node "n1", index is stale')]
    ok = _txn(fsm, 7, cmd.TxnNodeOp("cas", replace(N1, address="10.0.0.9", modify_index=5)))
    assert ok.results[0].address == "10.0.0.9"  # type: ignore[union-attr]
    # cas with index 0 creates only what does not exist.
    assert _errors(_txn(fsm, 8, cmd.TxnServiceOp("cas", "n1", WEB))) == [
        (0, 'failed to set service "web-1" on node "n1", index is stale')]
    assert _txn(fsm, 9, cmd.TxnServiceOp("cas", "n1", replace(WEB, id="web-2"))).results[0].id == "web-2"  # type: ignore[union-attr]
    assert _errors(_txn(fsm, 10, cmd.TxnCheckOp("delete-cas", replace(CHK, modify_index=1)))) == [
        (0, 'failed to delete check "web-alive" on node "n1", index is stale')]
    assert _errors(_txn(fsm, 11, cmd.TxnServiceOp("delete-cas", "n1", replace(WEB, modify_index=1)))) == [
        (0, 'failed to delete service "web-1" on node "n1", index is stale')]
    assert _txn(fsm, 12, cmd.TxnServiceOp("delete-cas", "n1", replace(WEB, modify_index=5))).results == ()
    assert "web-1" not in store.services["n1"] and "web-alive" not in store.checks["n1"]  # its check went too
    assert _errors(_txn(fsm, 13, cmd.TxnNodeOp("delete-cas", replace(N1, modify_index=3)))) == [
        (0, 'failed to delete node "n1", index is stale')]
    _txn(fsm, 14, cmd.TxnNodeOp("delete-cas", replace(N1, modify_index=7)))
    assert "n1" not in store.nodes


def test_errors_name_each_failing_index_and_nothing_applies() -> None:
    store = Store()
    fsm = FSM(store)
    result = _txn(
        fsm, 5,
        cmd.KVS("set", DirEntry("a", b"1")),
        cmd.TxnServiceOp("set", "ghost", WEB),
        cmd.TxnNodeOp("get", Node("ghost")),
        cmd.TxnNodeOp("set", N1),
        cmd.TxnCheckOp("set", replace(CHK, service_id="nope")),
        cmd.TxnCheckOp("get", HealthCheck("n1", "missing")),
        cmd.TxnServiceOp("get", "n1", ServiceInstance("n1", "missing", "")),
    )
    assert _errors(result) == [
        (1, "Missing node registration"),
        (2, 'node "ghost" doesn\'t exist'),
        (4, "Missing service registration"),
        (5, 'check "missing" on node "n1" doesn\'t exist'),
        (6, 'service "missing" on node "n1" doesn\'t exist'),
    ]
    assert result.results == ()
    assert store.kv == {} and store.nodes == {}  # rolled back, the KV set too


def test_session_delete_releases_its_locks() -> None:
    store = Store()
    fsm = FSM(store)
    _txn(fsm, 5, cmd.TxnNodeOp("set", N1))
    store.create_session(6, Session("s1", node="n1"))
    _txn(fsm, 7, cmd.KVS("lock", DirEntry("lock", b"x", session="s1")))
    assert store.kv["lock"].session == "s1"
    _txn(fsm, 8, cmd.TxnSessionOp("delete", "s1"))
    assert "s1" not in store.sessions and store.kv["lock"].session == ""


def test_read_only_transaction_renders_each_kind() -> None:
    store = Store()
    fsm = FSM(store)
    _txn(fsm, 5, cmd.TxnNodeOp("set", N1), cmd.TxnServiceOp("set", "n1", WEB), cmd.TxnCheckOp("set", CHK),
         cmd.KVS("set", DirEntry("k", b"v")))
    ops = [cmd.TxnNodeOp("get", Node("n1")), cmd.TxnServiceOp("get", "n1", ServiceInstance("n1", "web-1", "")),
           cmd.TxnCheckOp("get", HealthCheck("n1", "web-alive")), cmd.KVS("get", DirEntry("k"))]
    _, answer = queries.spec("Txn.Read").run(store, {"ops": [cmd.encode_txn_op(op) for op in ops]})
    results = answer["Results"]
    assert [list(r) for r in results] == [["Node"], ["Service"], ["Check"], ["KV"]]
    assert results[0]["Node"]["Address"] == "10.0.0.1" and results[1]["Service"]["Service"] == "web"
    assert results[2]["Check"]["CheckID"] == "web-alive" and results[3]["KV"]["Value"] == "dg=="
    _, answer = queries.spec("Txn.Read").run(store, {"ops": [cmd.encode_txn_op(cmd.TxnNodeOp("get", Node("x")))]})
    assert answer == {"Errors": [{"OpIndex": 0, "What": 'node "x" doesn\'t exist'}]}
