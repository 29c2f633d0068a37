"""KV writes proposed without a coroutine (`Server.write_now` over `RaftLog.propose_now`), the
HTTP fast path's PUT on a Raft leader: the same outcomes, indexes and metrics as `write`, the
answer never given from inside the call, and nothing proposed whenever `write` must do it.

`RaftLog.propose_now` against a scripted Raft stand-in (every way a proposal ends: applied,
refused before proposing, lost after proposing, cancelled), then `Server.write_now` on a real
one-voter Raft server next to `Server.write`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from proconsul.metrics import Metrics
from proconsul.raft.node import NoLeaderError, NotLeaderError, OutcomeUnknown, RaftError, RaftServer
from proconsul.rpc_api import NoLeader, RPCError, UnknownOutcome, WriteMeta
from proconsul.server.consensus import CommandStateMachine, RaftLog
from proconsul.server.rpc import Server
from proconsul.server.single import SingleNodeLog
from proconsul.state import commands
from proconsul.state.fsm import FSM
from proconsul.state.records import DirEntry
from proconsul.state.store import Store, StoreError


def kv_set(key: str, value: bytes = b"v") -> commands.KVS:
    return commands.KVS(commands.KVOp.SET, DirEntry(key, value))


class ScriptedRaft:
    """`propose_now` and `propose_batch` as RaftServer's: refuse with `refusal`, else keep the
    entry and its callback (or its future) for the test to settle (RaftServer settles them from
    the event loop, later)."""

    def __init__(self, refusal: RaftError | None = None) -> None:
        self.refusal = refusal
        self.proposed: list[tuple[bytes, Any]] = []
        self.callbacks: list[Any] = []
        self.futures: list[asyncio.Future[tuple[int, Any]]] = []

    def propose_now(self, data: bytes, proposed: Any, done: Any) -> None:
        if self.refusal is not None:
            raise self.refusal
        self.proposed.append((data, proposed))
        self.callbacks.append(done)

    def propose_batch(self, items: list[tuple[bytes, Any]]) -> list[asyncio.Future[tuple[int, Any]]]:
        """As RaftServer's (a follower's forwarded batch on the leader): one future per entry."""
        if self.refusal is not None:
            raise self.refusal
        self.proposed.extend(items)
        futs = [asyncio.get_running_loop().create_future() for _ in items]
        self.futures.extend(futs)
        return futs


class Outcomes:
    def __init__(self) -> None:
        self.got: list[tuple[Any, ...]] = []
        self.event = asyncio.Event()

    def __call__(self, *outcome: Any) -> None:
        self.got.append(outcome)
        self.event.set()

    async def one(self) -> tuple[Any, ...]:
        await asyncio.wait_for(self.event.wait(), 30)
        assert len(self.got) == 1
        return self.got[0]


async def test_propose_now_reports_each_ending_in_rpc_terms() -> None:
    raft = ScriptedRaft()
    log = RaftLog(raft)  # type: ignore[arg-type]
    boom = KeyError("not a Raft error")
    endings: list[tuple[Any, Any]] = [
        (((7, True), None), lambda out, exc: out == (7, True) and exc is None),
        ((None, OutcomeUnknown("lost")), lambda out, exc: out is None and type(exc) is UnknownOutcome),
        ((None, RaftError("other entry")), lambda out, exc: type(exc) is RPCError and str(exc) == "other entry"),
        ((None, NoLeaderError()), lambda out, exc: out is None and type(exc) is NoLeader),
        ((None, boom), lambda out, exc: out is None and exc is boom),
    ]
    for end, expected in endings:
        outcomes = Outcomes()
        command = kv_set("k")
        assert log.propose_now(command, outcomes) is True
        assert raft.proposed[-1] == (commands.encode(command), command)  # the object rides with its bytes
        assert outcomes.got == []
        raft.callbacks[-1](*end)
        assert expected(*await outcomes.one())


@pytest.mark.parametrize("refusal", [NotLeaderError("10.0.0.1:8300"), NoLeaderError(), RaftError("transfer running")])
async def test_propose_now_refused_before_proposing_leaves_it_to_apply(refusal: RaftError) -> None:
    log = RaftLog(ScriptedRaft(refusal))  # type: ignore[arg-type]
    called: list[Any] = []
    assert log.propose_now(kv_set("k"), lambda *a: called.append(a)) is False
    await asyncio.sleep(0)
    assert called == []


async def test_propose_now_does_not_propose_what_does_not_encode() -> None:
    raft = ScriptedRaft()
    bad = commands.KVS(commands.KVOp.SET, DirEntry("k", object()))  # type: ignore[arg-type]
    assert RaftLog(raft).propose_now(bad, lambda *a: None) is False  # type: ignore[arg-type]
    assert raft.proposed == []


async def test_write_now_leaves_what_it_cannot_do_to_write() -> None:
    store = Store()
    dev = Server(store, SingleNodeLog(FSM(store), "127.0.0.1:8300", "id", "s1"), "dc1")
    assert dev.write_now(kv_set("k"), lambda *a: None) is False  # a single voter: `write` applies at once
    follower_raft = ScriptedRaft()
    follower_log = _Follower(follower_raft)
    follower = Server(Store(), follower_log, "dc1", propose_now=follower_log.propose_now)
    assert follower.write_now(kv_set("k"), lambda *a: None) is False  # `write` forwards it
    leader_raft = ScriptedRaft()
    leader_log = RaftLog(leader_raft)  # type: ignore[arg-type]
    leader = Server(Store(), leader_log, "dc1", propose_now=leader_log.propose_now)
    txn = commands.Txn((kv_set("k"),))
    assert leader.write_now(txn, lambda *a: None) is False  # only KV operations
    assert follower_raft.proposed == [] and leader_raft.proposed == []


class _Follower(RaftLog):
    def is_leader(self) -> bool:
        return False


async def _one_voter(tmp_path: Any, store: Store) -> RaftServer:
    raft = RaftServer("a", "a", "127.0.0.1:8300", CommandStateMachine(FSM(store)), str(tmp_path), tick_s=0.02)
    raft.bootstrap({"a": "127.0.0.1:8300"})
    await raft.start()
    deadline = asyncio.get_running_loop().time() + 30
    while not raft.ready_for_reads():
        assert asyncio.get_running_loop().time() < deadline, "the single voter never became a ready leader"
        await asyncio.sleep(0.01)
    return raft


def _total(m: Metrics, name: str) -> float:
    series = m.series[(f"consul.{name}", ())]
    return series.count if series.family.kind == "sample" else series.total


async def test_write_now_on_a_raft_leader_answers_as_write_does(tmp_path: Any) -> None:
    store = Store()
    raft = await _one_voter(tmp_path, store)
    metrics = Metrics()
    log = RaftLog(raft)
    server = Server(store, log, "dc1", metrics=metrics, propose_now=log.propose_now)
    try:
        by_write = [await server.write(kv_set("w")),
                    await server.write(commands.KVS(commands.KVOp.CAS, DirEntry("w", b"x", modify_index=1)))]
        requests, applies = _total(metrics, "rpc.request"), _total(metrics, "kvs.apply")
        cases = [
            kv_set("n", b"first"),
            commands.KVS(commands.KVOp.CAS, DirEntry("n", b"stale cas", modify_index=1)),
            commands.KVS("no-such-op", DirEntry("n")),  # the FSM's StoreError, raised by `write`
        ]
        got = []
        for command in cases:
            outcomes = Outcomes()
            assert server.write_now(command, outcomes) is True
            assert outcomes.got == []
            got.append(await outcomes.one())
        (meta0, ok0, exc0), (meta1, ok1, exc1), (meta2, ok2, exc2) = got
        assert isinstance(meta0, WriteMeta) and ok0 is True and exc0 is None
        assert meta0.index > by_write[1][0].index and meta0.index == store.kv_get("n")[1].modify_index  # type: ignore[union-attr]
        assert isinstance(meta1, WriteMeta) and meta1.index > meta0.index and ok1 is False and exc1 is None
        assert by_write[1][1] is False  # the same CAS outcome `write` gives
        assert meta2 is None and ok2 is None and type(exc2) is StoreError and "no-such-op" in str(exc2)
        with pytest.raises(StoreError):
            await server.write(commands.KVS("no-such-op", DirEntry("n")))
        assert store.kv_get("n")[1].value == b"first"  # type: ignore[union-attr]
        # Counted as `write` counts: one request each, the applies that succeeded timed.
        assert _total(metrics, "rpc.request") == requests + 4
        assert _total(metrics, "kvs.apply") == applies + 4
    finally:
        await raft.stop()
    # Stopped: nothing is proposed, and `write` reports it as it always did.
    assert server.write_now(kv_set("late"), lambda *a: None) is False
    with pytest.raises(NoLeader):
        await asyncio.wait_for(server.write(kv_set("late")), 10)


# ------------------------------------------------- a follower's batch on the leader, task-less


async def test_propose_batch_now_answers_once_every_entry_is_settled() -> None:
    raft = ScriptedRaft()
    log = RaftLog(raft)  # type: ignore[arg-type]
    outcomes = Outcomes()
    batch = [(kv_set(f"k{i}"), commands.encode(kv_set(f"k{i}"))) for i in range(3)]
    assert log.propose_batch_now(batch, outcomes) is True
    assert raft.proposed == [(data, command) for command, data in batch]
    first, second, last = raft.futures
    last.set_result((3, True))  # the last one first: the others are still pending
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert outcomes.got == []
    first.set_result((1, True))
    second.set_exception(OutcomeUnknown("lost"))
    got, exc = await outcomes.one()
    assert exc is None and got[0] == (1, True) and got[2] == (3, True)
    assert type(got[1]) is UnknownOutcome
    # Anything but a Raft error fails the whole batch, as it fails `apply_batch`.
    failed = Outcomes()
    assert log.propose_batch_now(batch[:2], failed) is True
    raft.futures[-2].set_result((4, True))
    raft.futures[-1].set_exception(ValueError("broken"))
    got, exc = await failed.one()
    assert got is None and type(exc) is ValueError
    empty = Outcomes()
    assert log.propose_batch_now([], empty) is True and empty.got == []
    assert await empty.one() == ([], None)


async def test_a_one_write_batch_is_proposed_as_a_fast_path_write_with_the_same_outcomes() -> None:
    raft = ScriptedRaft()
    log = RaftLog(raft)  # type: ignore[arg-type]
    one = [(kv_set("k"), commands.encode(kv_set("k")))]
    applied, lost, broken = Outcomes(), Outcomes(), Outcomes()
    for outcomes in (applied, lost, broken):
        assert log.propose_batch_now(one, outcomes) is True
    # By callback (`RaftServer.propose_now`), not a future: the leader's own fast-path PUT's way.
    assert raft.futures == [] and len(raft.callbacks) == 3
    assert raft.proposed == [(one[0][1], one[0][0])] * 3
    raft.callbacks[0]((7, True), None)
    raft.callbacks[1](None, OutcomeUnknown("lost"))
    raft.callbacks[2](None, ValueError("broken"))
    assert await applied.one() == ([(7, True)], None)
    got, exc = await lost.one()  # a Raft error is that write's RPC error, as `_batch_outcomes` gives
    assert exc is None and len(got) == 1 and type(got[0]) is UnknownOutcome
    got, exc = await broken.one()  # anything else fails the batch
    assert got is None and type(exc) is ValueError


@pytest.mark.parametrize("refusal", [NotLeaderError("10.0.0.1:8300"), RaftError("transfer running")])
async def test_propose_batch_now_refused_before_proposing_leaves_it_to_apply_batch(refusal: RaftError) -> None:
    log = RaftLog(ScriptedRaft(refusal))  # type: ignore[arg-type]
    called: list[Any] = []
    assert log.propose_batch_now([(kv_set("k"), commands.encode(kv_set("k")))], lambda *a: called.append(a)) is False
    await asyncio.sleep(0)
    assert called == []


async def test_apply_batch_waits_for_every_entry_whatever_the_order() -> None:
    raft = ScriptedRaft()
    log = RaftLog(raft)  # type: ignore[arg-type]
    batch = [(kv_set(f"k{i}"), commands.encode(kv_set(f"k{i}"))) for i in range(3)]
    task = asyncio.ensure_future(log.apply_batch(batch))
    await asyncio.sleep(0)
    raft.futures[2].set_result((3, True))
    raft.futures[0].set_result((1, True))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done()
    raft.futures[1].set_exception(OutcomeUnknown("lost"))
    got = await asyncio.wait_for(task, 30)
    assert got[0] == (1, True) and type(got[1]) is UnknownOutcome and got[2] == (3, True)
    # Cancelled while waiting: every proposal's future is cancelled, as gather cancelled them.
    task = asyncio.ensure_future(log.apply_batch(batch))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(f.cancelled() for f in raft.futures[3:])


async def test_apply_forwarded_now_answers_as_apply_forwarded_does(tmp_path: Any) -> None:
    store = Store()
    raft = await _one_voter(tmp_path, store)
    metrics = Metrics()
    log = RaftLog(raft)
    server = Server(store, log, "dc1", metrics=metrics, propose_now=log.propose_now,
                    propose_batch_now=log.propose_batch_now)
    try:
        def body(tag: str) -> dict[str, Any]:
            return {"commands": [
                commands.encode(kv_set(f"{tag}/a")),
                commands.encode(commands.KVS(commands.KVOp.CAS, DirEntry(f"{tag}/a", b"x", modify_index=1))),
                commands.encode(commands.KVS(commands.KVOp.LOCK, DirEntry("l", b"v", session="none"))),
                b"\xc1garbage",
            ]}
        by_task = await server.handle_rpc("Raft.ApplyBatch", body("task"))
        requests, errors, applies = (_total(metrics, n) for n in ("rpc.request", "rpc.request_error", "kvs.apply"))
        answers = Outcomes()
        assert server.handle_rpc_now("Raft.ApplyBatch", body("now"), answers) is True
        assert answers.got == []
        reply, exc = await answers.one()
        assert exc is None
        assert [type(r) for r in reply["results"]] == [type(r) for r in by_task["results"]] == [list, list, str, str]
        assert reply["results"][1][1] is False and reply["results"][2:] == by_task["results"][2:]
        entry = store.kv_get("now/a")[1]
        assert entry is not None and entry.modify_index == reply["results"][0][0]
        # Counted as the task path counts: a request per write, an error per failed one.
        assert _total(metrics, "rpc.request") == requests + 4
        assert _total(metrics, "rpc.request_error") == errors + 2
        assert _total(metrics, "kvs.apply") == applies + 2
        # What it leaves to the task path: other methods, a malformed body, an ACL bootstrap
        # (one by one), nothing to propose.
        for method, declined in [("Raft.Apply", commands.encode(kv_set("x"))), ("Raft.ApplyBatch", {"commands": 1}),
                                 ("Raft.ApplyBatch", {"commands": [commands.encode(commands.ACLOp(
                                     commands.ACLOpKind.BOOTSTRAP, [{}, 0]))]}),
                                 ("Raft.ApplyBatch", {"commands": [b"\xc1"]})]:
            assert server.handle_rpc_now(method, declined, lambda *a: None) is False, declined
        assert _total(metrics, "rpc.request") == requests + 4
        acl_on = Server(store, log, "dc1", authorize_write=_allow, propose_batch_now=log.propose_batch_now)
        assert acl_on.handle_rpc_now("Raft.ApplyBatch", body("acl"), lambda *a: None) is False
    finally:
        await raft.stop()
    assert server.handle_rpc_now("Raft.ApplyBatch", body("late"), lambda *a: None) is False  # not leading


async def _allow(token: str, command: commands.Command) -> None:
    return None


async def test_apply_forwarded_now_with_acls_authorises_each_write_as_the_task_path(tmp_path: Any) -> None:
    """With ACLs on, the leader takes a batch without a task once every token in it is resolved:
    each write is authorised with its own token, a denied write is still denied (answered with
    its refusal, in its place, and never applied), and the reply and counts are the task
    path's (`_apply_forwarded_authorized`). An unresolved token, or a batch refused whole, goes
    to the task path."""
    store = Store()
    raft = await _one_voter(tmp_path, store)
    metrics = Metrics()
    log = RaftLog(raft)
    resolved = {"good", "bad"}

    def verdict(token: str, command: commands.Command) -> str:
        key = command.entry.key if type(command) is commands.KVS else ""
        return "Permission denied" if token == "bad" or key.startswith("secret/") else ""

    async def authorize(token: str, command: commands.Command) -> None:
        refusal = verdict(token, command)
        if refusal:
            raise RPCError(refusal)

    def authorize_now(token: str, command: commands.Command) -> str | None:
        return verdict(token, command) if token in resolved else None

    server = Server(store, log, "dc1", metrics=metrics, propose_batch_now=log.propose_batch_now,
                    authorize_write=authorize, authorize_write_now=authorize_now)
    try:
        def body(tag: str, tokens: list[str]) -> dict[str, Any]:
            return {"commands": [commands.encode(kv_set(f"{tag}/a")), commands.encode(kv_set(f"secret/{tag}")),
                                 commands.encode(kv_set(f"{tag}/b")), b"\xc1garbage"], "tokens": tokens}
        by_task = await server.handle_rpc("Raft.ApplyBatch", body("task", ["good", "good", "bad", "good"]))
        requests, errors = _total(metrics, "rpc.request"), _total(metrics, "rpc.request_error")
        answers = Outcomes()
        assert server.handle_rpc_now("Raft.ApplyBatch", body("now", ["good", "good", "bad", "good"]), answers) is True
        reply, exc = await answers.one()
        assert exc is None
        assert [type(r) for r in reply["results"]] == [type(r) for r in by_task["results"]] == [list, str, str, str]
        assert reply["results"][1:3] == by_task["results"][1:3] == ["Permission denied", "Permission denied"]
        assert store.kv_get("now/a")[1] is not None
        assert store.kv_get("secret/now")[1] is None and store.kv_get("now/b")[1] is None  # denied: not applied
        assert _total(metrics, "rpc.request") == requests + 4
        assert _total(metrics, "rpc.request_error") == errors + 3
        # A token not resolved yet: the task path resolves it (and answers alike).
        assert server.handle_rpc_now("Raft.ApplyBatch", body("x", ["good", "unknown", "good", "good"]),
                                     lambda *a: None) is False
        # Every write refused: nothing to propose, the task path answers the refusals.
        denied = {"commands": [commands.encode(kv_set("y"))], "tokens": ["bad"]}
        assert server.handle_rpc_now("Raft.ApplyBatch", denied, lambda *a: None) is False
        assert (await server.handle_rpc("Raft.ApplyBatch", denied))["results"] == ["Permission denied"]
        # No tokens in the body: every write is anonymous (""), which is not resolved here.
        assert server.handle_rpc_now("Raft.ApplyBatch", {"commands": [commands.encode(kv_set("z"))]},
                                     lambda *a: None) is False
        assert _total(metrics, "rpc.request") == requests + 5
        assert store.kv_get("x/a")[1] is None
    finally:
        await raft.stop()
