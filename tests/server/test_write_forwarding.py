"""Writes a follower forwards to its leader in batches (server/forwarding.py, `Raft.ApplyBatch`).

Deterministic, in one event loop: the follower's `WriteForwarder` against a scripted pool (how
writes are grouped, and which outcome each write gets for every answer a leader can give, sent by
a task through `call` or straight out through `send_call`), one follower and leader over the real
transport (`ConnectionPool`, `rpc_stream_handler`), and a
follower `Server` forwarding to leader `Server`s through a loopback pool that goes through
msgpack as the transport does (the leader's batch endpoint, a leader change before proposing, a
leadership loss after proposing, a leadership transfer, malformed batches). The last tests run
`RaftLog.apply_batch` on a real one-voter Raft server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from proconsul.metrics import Metrics
from proconsul.raft.node import RaftServer
from proconsul.rpc_api import NoLeader, NotLeader, RPCError, UnknownOutcome
from proconsul.server import forwarding
from proconsul.server.consensus import CommandStateMachine, RaftLog
from proconsul.server.forwarding import WriteForwarder
from proconsul.server.remote import ClientConsensus
from proconsul.server.rpc import Server
from proconsul.server.single import SingleNodeLog
from proconsul.state import commands
from proconsul.state.fsm import FSM
from proconsul.state.records import DirEntry
from proconsul.state.store import Store
from proconsul.transport import ConnectionPool, Listener, RemoteError, rpc_stream_handler
from proconsul.wire import ConnType

LEADER = "127.0.0.1:8300"
OTHER = "127.0.0.2:8300"


def kv_set(key: str, value: bytes = b"v") -> commands.KVS:
    return commands.KVS(commands.KVOp.SET, DirEntry(key, value))


# ------------------------------------------------------------------ the follower's forwarder


class ScriptedPool:
    """Answers each call with `answer(method, body)` (a reply, or an exception to raise)."""

    def __init__(self, answer: Callable[[str, Any], Any]) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str, Any]] = []

    async def call(self, address: str, method: str, body: Any, timeout_s: float = 30.0) -> Any:
        self.calls.append((address, method, body))
        await asyncio.sleep(0)
        reply = self.answer(method, body)
        if isinstance(reply, BaseException):
            raise reply
        return reply


def applied_in_order(method: str, body: Any) -> Any:
    if method == "Raft.ApplyBatch":
        return {"results": [[100 + i, data.decode()] for i, data in enumerate(body["commands"])]}
    return {"index": 1, "result": body.decode()}


async def test_writes_handed_over_together_travel_in_one_call() -> None:
    pool = ScriptedPool(applied_in_order)
    fwd = WriteForwarder(pool)
    futs = [fwd.submit(LEADER, f"w{i}".encode()) for i in range(5)]
    other = fwd.submit(OTHER, b"x")
    assert await asyncio.gather(*futs) == [(100 + i, f"w{i}") for i in range(5)]
    assert await other == (100, "x")
    assert [(a, m) for a, m, _ in pool.calls] == [(LEADER, "Raft.ApplyBatch"), (OTHER, "Raft.ApplyBatch")]
    assert pool.calls[0][2] == {"commands": [f"w{i}".encode() for i in range(5)]}
    # A write handed over after that call left goes in a call of its own.
    assert await fwd.submit(LEADER, b"late") == (100, "late")
    assert len(pool.calls) == 3 and fwd.batches_sent == 3
    for _ in range(3):  # the call's task ends in the loop iterations after it answered
        await asyncio.sleep(0)
    assert fwd.in_flight() == 0


async def test_each_write_gets_its_own_outcome() -> None:
    results = [
        [7, True],
        "node is not the leader",
        "Permission denied: token lacks key:write",
        "leadership lost before the write applied; it may or may not commit",
        [8, False],
    ]
    fwd = WriteForwarder(ScriptedPool(lambda m, b: {"results": results}))
    futs = [fwd.submit(LEADER, b"c") for _ in results]
    got = await asyncio.gather(*futs, return_exceptions=True)
    assert got[0] == (7, True) and got[4] == (8, False)
    assert type(got[1]) is NotLeader  # refused before proposing: the caller may resend it
    assert type(got[2]) is RPCError and str(got[2]).startswith("Permission denied")  # HTTP maps it to 403
    assert type(got[3]) is RPCError and "may or may not commit" in str(got[3])  # never resent


@pytest.mark.parametrize(
    ("failure", "expected", "text"),
    [
        (RemoteError("node is not the leader"), NotLeader, "node is not the leader"),
        (RemoteError("Raft.ApplyBatch: the body must be a map"), RPCError, "the body must be a map"),
        (ConnectionResetError("reset by peer"), UnknownOutcome, "mid-write"),
        (TimeoutError(), UnknownOutcome, "may have applied"),
        ({"results": [[1, True]]}, UnknownOutcome, "malformed reply"),  # one result for two writes
    ],
)
async def test_a_batch_refused_or_lost_as_a_whole(failure: Any, expected: type, text: str) -> None:
    fwd = WriteForwarder(ScriptedPool(lambda m, b: failure))
    got = await asyncio.gather(fwd.submit(LEADER, b"a"), fwd.submit(LEADER, b"b"), return_exceptions=True)
    for exc in got:
        assert type(exc) is expected and text in str(exc), exc
    assert got[0] is not got[1]  # an exception object per caller


async def test_a_leader_without_batches_gets_one_call_per_write(monkeypatch: pytest.MonkeyPatch) -> None:
    def old_build(method: str, body: Any) -> Any:
        if method == "Raft.ApplyBatch":
            return RemoteError("rpc: can't find method Raft.ApplyBatch")
        return applied_in_order(method, body) if body != b"refused" else RemoteError("node is not the leader")

    pool = ScriptedPool(old_build)
    fwd = WriteForwarder(pool)
    got = await asyncio.gather(fwd.submit(LEADER, b"a"), fwd.submit(LEADER, b"refused"), return_exceptions=True)
    assert got[0] == (1, "a") and type(got[1]) is NotLeader
    assert [m for _, m, _ in pool.calls] == ["Raft.ApplyBatch", "Raft.Apply", "Raft.Apply"]
    # Remembered: the next writes go singly at once, until the retry time passes.
    assert await fwd.submit(LEADER, b"c") == (1, "c")
    assert [m for _, m, _ in pool.calls][3:] == ["Raft.Apply"]
    monkeypatch.setattr(forwarding, "UNSUPPORTED_RETRY_S", 0.0)
    fwd._single_until.clear()  # as if the retry time had passed
    assert await fwd.submit(LEADER, b"d") == (1, "d")
    assert pool.calls[-1][1] == "Raft.Apply"  # the leader still refused the batch


async def test_large_batches_are_cut_and_travel_together() -> None:
    pool = ScriptedPool(applied_in_order)
    fwd = WriteForwarder(pool, max_writes=3, max_bytes=10)
    futs = [fwd.submit(LEADER, b"%d" % i) for i in range(7)] + [fwd.submit(LEADER, b"x" * 25)]
    got = await asyncio.gather(*futs)
    assert [r[1] for r in got] == [str(i) for i in range(7)] + ["x" * 25]
    assert [len(b["commands"]) for _, _, b in pool.calls] == [3, 3, 1, 1]


async def test_a_result_it_cannot_read_leaves_that_write_unknown() -> None:
    fwd = WriteForwarder(ScriptedPool(lambda m, b: {"results": [[1, True], [2, True, "extra"]]}))
    got = await asyncio.gather(fwd.submit(LEADER, b"a"), fwd.submit(LEADER, b"b"), return_exceptions=True)
    assert got[0] == (1, True) and type(got[1]) is UnknownOutcome


async def test_a_failure_inside_the_forwarder_still_answers_every_writer() -> None:
    class Exploding(dict):  # type: ignore[type-arg]
        def get(self, key: Any, default: Any = None) -> Any:
            raise RuntimeError("bug")

    fwd = WriteForwarder(ScriptedPool(lambda m, b: Exploding()))
    got = await asyncio.gather(fwd.submit(LEADER, b"a"), fwd.submit(LEADER, b"b"), return_exceptions=True)
    assert [type(g) for g in got] == [UnknownOutcome, UnknownOutcome]


async def test_stopping_the_forwarder_leaves_outcomes_unknown() -> None:
    never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    class Hanging:
        async def call(self, address: str, method: str, body: Any, timeout_s: float = 30.0) -> Any:
            return await never

    fwd = WriteForwarder(Hanging())
    fut = fwd.submit(LEADER, b"a")
    await asyncio.sleep(0)
    await fwd.close()
    with pytest.raises(UnknownOutcome):
        await fut


class DirectPool(ScriptedPool):
    """A scripted pool that also sends without a task (`ConnectionPool.send_call`): answers
    come back through the callback in a later loop iteration; `open_to` are the leaders it has
    a connection to (a call to any other dials, through `call`, and opens one)."""

    def __init__(self, answer: Callable[[str, Any], Any], open_to: set[str] | None = None) -> None:
        super().__init__(answer)
        self.open_to = {LEADER, OTHER} if open_to is None else open_to
        self.direct: list[tuple[str, str, Any]] = []
        self.hold = False  # True: keep the answers (in `held`) until released
        self.held: list[Callable[[], None]] = []

    async def call(self, address: str, method: str, body: Any, timeout_s: float = 30.0) -> Any:
        self.open_to.add(address)
        return await super().call(address, method, body, timeout_s)

    def send_call(self, address: str, method: str, body: Any,
                  done: Callable[[Any, BaseException | None], None], timeout_s: float = 30.0) -> bool:
        if address not in self.open_to:
            return False
        self.direct.append((address, method, body))
        reply = self.answer(method, body)

        def settle() -> None:
            done(None, reply) if isinstance(reply, BaseException) else done(reply, None)

        if self.hold:
            self.held.append(settle)
        else:
            asyncio.get_running_loop().call_soon(settle)
        return True


async def test_writes_go_without_a_task_once_the_leader_connection_is_open() -> None:
    pool = DirectPool(applied_in_order, open_to={OTHER})
    fwd = WriteForwarder(pool)
    first = [fwd.submit(LEADER, f"a{i}".encode()) for i in range(3)]
    assert await asyncio.gather(*first) == [(100 + i, f"a{i}") for i in range(3)]
    # The first call dialled (through call, in a task); the next ones go straight out.
    assert [m for _, m, _ in pool.calls] == ["Raft.ApplyBatch"] and pool.direct == []
    second = [fwd.submit(LEADER, f"b{i}".encode()) for i in range(4)]
    other = fwd.submit(OTHER, b"x")
    assert fwd.in_flight() == 2 and not fwd._tasks  # queued, no task made for them
    assert await asyncio.gather(*second) == [(100 + i, f"b{i}") for i in range(4)]
    assert await other == (100, "x")
    assert [(a, m, b["commands"]) for a, m, b in pool.direct] == [
        (LEADER, "Raft.ApplyBatch", [f"b{i}".encode() for i in range(4)]),
        (OTHER, "Raft.ApplyBatch", [b"x"]),
    ]
    assert len(pool.calls) == 1 and fwd.batches_sent == 3 and fwd.in_flight() == 0


@pytest.mark.parametrize(
    ("failure", "expected", "text"),
    [
        (RemoteError("node is not the leader"), NotLeader, "node is not the leader"),
        (RemoteError("Raft.ApplyBatch: the body must be a map"), RPCError, "the body must be a map"),
        (ConnectionResetError("reset by peer"), UnknownOutcome, "mid-write"),
        (TimeoutError(), UnknownOutcome, "may have applied"),
        ({"results": [[1, True]]}, UnknownOutcome, "malformed reply"),
        ({"results": [[1, True], "Permission denied: no"]}, None, ""),
    ],
)
async def test_a_batch_sent_without_a_task_gets_the_same_outcomes(failure: Any, expected: type | None,
                                                                  text: str) -> None:
    pool = DirectPool(lambda m, b: failure)
    fwd = WriteForwarder(pool)
    got = await asyncio.gather(fwd.submit(LEADER, b"a"), fwd.submit(LEADER, b"b"), return_exceptions=True)
    assert len(pool.direct) == 1 and pool.calls == []
    if expected is None:
        assert got[0] == (1, True) and type(got[1]) is RPCError and str(got[1]) == "Permission denied: no"
        return
    for exc in got:
        assert type(exc) is expected and text in str(exc), exc
    assert got[0] is not got[1]


async def test_an_older_leader_met_without_a_task_gets_one_call_per_write() -> None:
    def old_build(method: str, body: Any) -> Any:
        if method == "Raft.ApplyBatch":
            return RemoteError("rpc: can't find method Raft.ApplyBatch")
        return {"index": 3, "result": body.decode()}

    pool = DirectPool(old_build)
    fwd = WriteForwarder(pool)
    assert await asyncio.gather(fwd.submit(LEADER, b"p"), fwd.submit(LEADER, b"q")) == [(3, "p"), (3, "q")]
    assert [m for _, m, _ in pool.direct] == ["Raft.ApplyBatch"]
    assert [m for _, m, _ in pool.calls] == ["Raft.Apply", "Raft.Apply"]
    assert await fwd.submit(LEADER, b"r") == (3, "r")  # within the minute: straight to Raft.Apply
    assert [m for _, m, _ in pool.direct] == ["Raft.ApplyBatch"] and pool.calls[-1][1] == "Raft.Apply"


async def test_stopping_the_forwarder_settles_the_batches_sent_without_a_task() -> None:
    pool = DirectPool(applied_in_order)
    pool.hold = True
    fwd = WriteForwarder(pool)
    sent = [fwd.submit(LEADER, b"a"), fwd.submit(LEADER, b"b")]
    await asyncio.sleep(0)  # the batch leaves
    assert len(pool.direct) == 1 and fwd.in_flight() == 1
    queued = fwd.submit(LEADER, b"c")  # handed over, not sent yet
    await fwd.close()
    for fut in [*sent, queued]:
        with pytest.raises(UnknownOutcome):
            await fut
    for settle in pool.held:  # an answer arriving afterwards changes nothing
        settle()
    assert fwd.in_flight() == 0
    await asyncio.sleep(0)
    assert len(pool.direct) == 1  # the write queued when it stopped never left


async def test_one_writer_s_write_leaves_at_once_and_several_writers_still_batch() -> None:
    """`submit_now` sends a write inside the call when nothing is in flight and the last batch
    carried one write (one client writing); otherwise it waits for the iteration's batch. Its
    outcome still never comes from inside the call."""
    pool = DirectPool(applied_in_order)
    pool.hold = True
    fwd = WriteForwarder(pool)
    got: list[Any] = []
    fwd.submit_now(LEADER, b"a", None, lambda o, e: got.append((o, e)))
    assert pool.direct == []  # no batch yet: the first write waits for the iteration's others
    await asyncio.sleep(0)
    assert [b["commands"] for _, _, b in pool.direct] == [[b"a"]]
    pool.held.pop()()
    assert got == [((100, "a"), None)]
    fwd.submit_now(LEADER, b"b", None, lambda o, e: got.append((o, e)))
    assert [b["commands"] for _, _, b in pool.direct][-1] == [b"b"]  # left inside the call
    assert got == [((100, "a"), None)]  # and was not answered inside it
    # In flight: the next writes wait for the iteration and go together.
    fwd.submit_now(LEADER, b"c", None, lambda o, e: got.append((o, e)))
    fwd.submit_now(LEADER, b"d", None, lambda o, e: got.append((o, e)))
    assert len(pool.direct) == 2
    await asyncio.sleep(0)
    assert [b["commands"] for _, _, b in pool.direct][-1] == [b"c", b"d"]
    for settle in pool.held:
        settle()
    pool.held.clear()
    # The last batch carried two writes: a write waits for its iteration again.
    fwd.submit_now(LEADER, b"e", None, lambda o, e: got.append((o, e)))
    assert len(pool.direct) == 3
    await asyncio.sleep(0)
    assert [b["commands"] for _, _, b in pool.direct][-1] == [b"e"]
    pool.held.pop()()
    assert [o for o, _ in got] == [(100, "a"), (100, "b"), (100, "c"), (101, "d"), (100, "e")]


async def test_a_write_sent_at_once_that_fails_to_leave_is_answered_from_the_loop() -> None:
    class Broken(DirectPool):
        def send_call(self, *args: Any, **kwargs: Any) -> bool:
            raise RuntimeError("broken")

    pool = Broken(applied_in_order)
    fwd = WriteForwarder(pool)
    fwd._alone = True  # as after a batch of one write
    got: list[Any] = []
    fwd.submit_now(LEADER, b"a", None, lambda o, e: got.append((o, e)))
    assert got == []
    await asyncio.sleep(0)
    assert len(got) == 1 and got[0][0] is None and type(got[0][1]) is UnknownOutcome


@pytest.mark.parametrize("pool_type, sent", [(ScriptedPool, "calls"), (DirectPool, "direct")],
                         ids=["in-a-task", "without-a-task"])
async def test_a_write_given_up_before_its_batch_left_is_not_sent(pool_type: type[ScriptedPool], sent: str) -> None:
    pool = pool_type(applied_in_order)
    fwd = WriteForwarder(pool)
    gone = fwd.submit(LEADER, b"gone")
    kept = fwd.submit(LEADER, b"kept")
    gone.cancel()
    assert await kept == (100, "kept")
    assert getattr(pool, sent)[0][2] == {"commands": [b"kept"]}


# ------------------------------------------------------------- a follower and its leader(s)


class LoopbackPool:
    """The follower's pool: requests and answers go through msgpack as on the wire; the
    leader's error becomes the caller's RemoteError with its text, as the transport carries it."""

    def __init__(self, servers: dict[str, Server]) -> None:
        self.servers = servers
        self.calls: list[tuple[str, str, int]] = []

    async def call(self, address: str, method: str, body: Any, timeout_s: float = 30.0) -> Any:
        n = len(body["commands"]) if method == "Raft.ApplyBatch" else 1
        self.calls.append((address, method, n))
        body = msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False)
        try:
            reply = await self.servers[address].handle_rpc(method, body)
        except Exception as exc:
            raise RemoteError(str(exc) or type(exc).__name__) from None
        return msgpack.unpackb(msgpack.packb(reply, use_bin_type=True), raw=False)


def follower_view(leader: str) -> ClientConsensus:
    """A follower's view of the log: never leads; the leader is whoever it was last told."""
    view = ClientConsensus()
    view.learn(leader)
    return view


class ScriptedLeader(SingleNodeLog):
    """A one-server log whose batch proposals can be scripted to fail as a real leader's do."""

    def __init__(self, store: Store, address: str) -> None:
        super().__init__(FSM(store), address, "id-" + address, "s-" + address)
        self.batch_failure: Callable[[], Any] | None = None
        self.batches = 0

    async def apply_batch(self, batch: list[tuple[commands.Command, bytes]]) -> list[Any]:
        self.batches += 1
        if self.batch_failure is not None:
            outcome = self.batch_failure()
            if isinstance(outcome, Exception):
                raise outcome
            return [outcome() for _ in batch]
        return await super().apply_batch(batch)


def cluster(leaders: tuple[str, ...] = (LEADER,)) -> tuple[Server, ClientConsensus, LoopbackPool, dict[str, ScriptedLeader]]:
    servers: dict[str, Server] = {}
    logs: dict[str, ScriptedLeader] = {}
    for addr in leaders:
        store = Store()
        logs[addr] = ScriptedLeader(store, addr)
        servers[addr] = Server(store, logs[addr], "dc1")
    pool = LoopbackPool(servers)
    view = follower_view(leaders[0])
    follower = Server(Store(), view, "dc1", pool=pool, rpc_hold_timeout_s=30.0)
    return follower, view, pool, logs


async def test_writes_through_a_follower_are_applied_once_and_answered_as_the_leader_would() -> None:
    follower, _, pool, logs = cluster()
    leader_store = logs[LEADER].fsm.store
    sets = [kv_set(f"k/{i}", b"%d" % i) for i in range(20)]
    cas_fail = commands.KVS(commands.KVOp.CAS, DirEntry("k/0", b"new", modify_index=999_999))
    bad_lock = commands.KVS(commands.KVOp.LOCK, DirEntry("locked", b"v", session="no-such-session"))
    got = await asyncio.gather(*(follower.write(c) for c in [*sets, cas_fail, bad_lock]), return_exceptions=True)
    # One call carried all of them, and the leader proposed them as one batch.
    assert pool.calls == [(LEADER, "Raft.ApplyBatch", 22)] and logs[LEADER].batches == 1
    for i, (meta, ok) in enumerate(got[:20]):  # type: ignore[misc]
        assert ok is True
        entry = leader_store.kv_get(f"k/{i}")[1]
        assert entry is not None and entry.value == b"%d" % i and entry.modify_index == meta.index
    meta, ok = got[20]  # type: ignore[misc]
    assert ok is False  # a failed check-and-set is a result, not an error
    assert type(got[21]) is RPCError and str(got[21]) == 'invalid session "no-such-session"'


async def test_a_leader_that_refuses_before_proposing_is_replaced_by_the_new_one() -> None:
    follower, view, pool, logs = cluster((LEADER, OTHER))

    def moved() -> Exception:
        view.leader = OTHER  # the follower learns the new leader, as Raft would tell it
        return NotLeader(OTHER)

    logs[LEADER].batch_failure = moved
    got = await asyncio.gather(*(follower.write(kv_set(f"m/{i}")) for i in range(5)))
    assert all(ok is True for _, ok in got)
    assert logs[LEADER].fsm.store.kv_get("m/0")[1] is None  # nothing proposed on the old leader
    assert [logs[OTHER].fsm.store.kv_get(f"m/{i}")[1] is not None for i in range(5)] == [True] * 5
    # Each write was resent once, after the refusal; the new leader got them (one call each or
    # fewer: they come back from their retry waits together).
    assert pool.calls[0] == (LEADER, "Raft.ApplyBatch", 5)
    assert sum(n for addr, _, n in pool.calls if addr == OTHER) == 5


class Outcomes:
    """`Server.write_now`'s callback: the (meta, result, error) it was called with."""

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


def start_now(server: Server, cmds: list[commands.Command]) -> list[Outcomes]:
    """`write_now` each command; each must be taken, and none answered from inside the call."""
    outs = [Outcomes() for _ in cmds]
    for command, out in zip(cmds, outs):
        assert server.write_now(command, out) is True
    assert all(out.got == [] for out in outs)
    return outs


async def test_write_now_on_a_follower_forwards_and_answers_as_write_does() -> None:
    follower, _, pool, logs = cluster()
    leader_store = logs[LEADER].fsm.store
    sets = [kv_set(f"n/{i}", b"%d" % i) for i in range(20)]
    cas_fail = commands.KVS(commands.KVOp.CAS, DirEntry("n/0", b"new", modify_index=999_999))
    bad_lock = commands.KVS(commands.KVOp.LOCK, DirEntry("locked", b"v", session="no-such-session"))
    outs = start_now(follower, [*sets, cas_fail, bad_lock])
    got = [await out.one() for out in outs]
    # Batched as `write`'s are: one call, one Raft batch on the leader.
    assert pool.calls == [(LEADER, "Raft.ApplyBatch", 22)] and logs[LEADER].batches == 1
    for i, (meta, ok, exc) in enumerate(got[:20]):
        entry = leader_store.kv_get(f"n/{i}")[1]
        assert exc is None and ok is True and entry is not None and entry.modify_index == meta.index
    assert got[20][1:] == (False, None) and got[20][0].index > 0
    meta, ok, exc = got[21]
    assert meta is None and ok is None and type(exc) is RPCError
    with pytest.raises(RPCError) as by_write:
        await follower.write(bad_lock)
    assert str(exc) == str(by_write.value) == 'invalid session "no-such-session"'


async def test_write_now_on_a_follower_counts_a_request_per_write_as_write_does() -> None:
    _, view, pool, _ = cluster()
    metrics = Metrics()
    counted = Server(Store(), view, "dc1", pool=pool, rpc_hold_timeout_s=30.0, metrics=metrics)

    def requests() -> float:
        return metrics.series[("consul.rpc.request", ())].total

    assert (await counted.write(kv_set("w")))[1] is True
    by_write = requests()
    assert by_write == 1
    outs = start_now(counted, [kv_set(f"c/{i}") for i in range(5)])
    for out in outs:
        assert (await out.one())[2] is None
    assert requests() == by_write + 5


async def test_write_now_on_a_follower_goes_to_the_new_leader_after_a_refusal() -> None:
    follower, view, pool, logs = cluster((LEADER, OTHER))

    def moved() -> Exception:
        view.leader = OTHER
        return NotLeader(OTHER)

    logs[LEADER].batch_failure = moved
    got = [await out.one() for out in start_now(follower, [kv_set(f"m/{i}") for i in range(5)])]
    assert [(ok, exc) for _, ok, exc in got] == [(True, None)] * 5
    assert logs[LEADER].fsm.store.kv_get("m/0")[1] is None  # nothing proposed on the old leader
    assert [logs[OTHER].fsm.store.kv_get(f"m/{i}")[1] is not None for i in range(5)] == [True] * 5
    assert pool.calls[0] == (LEADER, "Raft.ApplyBatch", 5)
    assert sum(n for addr, _, n in pool.calls if addr == OTHER) == 5
    assert not follower._retries  # the retry tasks ended


async def test_write_now_on_a_follower_never_resends_a_write_that_may_have_applied() -> None:
    follower, _, pool, logs = cluster()
    logs[LEADER].batch_failure = lambda: lambda: UnknownOutcome(
        "leadership lost before the write applied; it may or may not commit")
    meta, ok, exc = await start_now(follower, [kv_set("lost")])[0].one()
    assert meta is None and type(exc) is RPCError and "may or may not commit" in str(exc)
    assert pool.calls == [(LEADER, "Raft.ApplyBatch", 1)]
    # Stopped with a write queued: its outcome is unknown, as `write`'s would be.
    logs[LEADER].batch_failure = None
    queued = start_now(follower, [kv_set("queued")])[0]
    assert follower.write_forwarder is not None
    await follower.write_forwarder.close()
    meta, ok, exc = await queued.one()
    assert meta is None and type(exc) is UnknownOutcome


async def test_write_now_on_a_follower_leaves_to_write_what_it_cannot_send() -> None:
    pool = LoopbackPool({})
    no_leader = Server(Store(), ClientConsensus(), "dc1", pool=pool)
    assert no_leader.write_now(kv_set("k"), lambda *a: None) is False  # `write` waits for the election
    follower, _, pool, _ = cluster()
    assert follower.write_now(commands.Txn((kv_set("k"),)), lambda *a: None) is False  # only KV operations
    no_pool = Server(Store(), follower_view(LEADER), "dc1")
    assert no_pool.write_now(kv_set("k"), lambda *a: None) is False
    await asyncio.sleep(0)
    assert pool.calls == []


async def test_a_write_that_lost_its_leader_after_proposing_is_not_resent() -> None:
    follower, _, pool, logs = cluster()
    logs[LEADER].batch_failure = lambda: lambda: UnknownOutcome(
        "leadership lost before the write applied; it may or may not commit")
    with pytest.raises(RPCError, match="may or may not commit") as info:
        await follower.write(kv_set("lost"))
    assert not isinstance(info.value, NotLeader)
    assert pool.calls == [(LEADER, "Raft.ApplyBatch", 1)]


async def test_a_batch_met_by_a_leadership_transfer_waits_it_out_write_by_write() -> None:
    follower, _, pool, logs = cluster()
    logs[LEADER].batch_failure = lambda: RPCError("leadership transfer to s2 in progress")
    got = await asyncio.gather(follower.write(kv_set("t/1")), follower.write(kv_set("t/2")))
    assert [ok for _, ok in got] == [True, True]
    assert logs[LEADER].fsm.store.kv_get("t/2")[1] is not None


async def test_the_leader_refuses_a_batch_it_cannot_take() -> None:
    _, _, _, logs = cluster()
    store = Store()
    not_leader = Server(store, follower_view(OTHER), "dc1")
    with pytest.raises(NotLeader):
        await not_leader.handle_rpc("Raft.ApplyBatch", {"commands": [commands.encode(kv_set("x"))]})
    leader = Server(logs[LEADER].fsm.store, logs[LEADER], "dc1")
    with pytest.raises(RPCError, match="body must be"):
        await leader.handle_rpc("Raft.ApplyBatch", [b"not a map"])
    # A malformed command fails alone; the others in its batch apply.
    reply = await leader.handle_rpc(
        "Raft.ApplyBatch", {"commands": [commands.encode(kv_set("good")), b"\xc1garbage", "text"]})
    first, second, third = reply["results"]
    assert first[1] is True and logs[LEADER].fsm.store.kv_get("good")[1] is not None
    assert type(second) is str and type(third) is str and "bytes" in third
    assert (await leader.handle_rpc("Raft.ApplyBatch", {"commands": [b"\xc1"]}))["results"][0]
    assert await leader.handle_rpc("Raft.ApplyBatch", {"commands": []}) == {"results": []}


async def test_a_batch_counts_as_its_writes_in_the_metrics() -> None:
    metrics = Metrics()
    store = Store()
    leader = Server(store, ScriptedLeader(store, LEADER), "dc1", metrics=metrics)
    bad_lock = commands.KVS(commands.KVOp.LOCK, DirEntry("l", b"v", session="none"))
    body = {"commands": [commands.encode(c) for c in (kv_set("a"), kv_set("b"), bad_lock)]}
    await leader.handle_rpc("Raft.ApplyBatch", body)

    def total(name: str) -> float:
        series = metrics.series[(f"consul.{name}", ())]
        return series.count if series.family.kind == "sample" else series.total

    # As three Raft.Apply calls would count: three requests, two timed applies, one error.
    assert (total("rpc.request"), total("kvs.apply"), total("rpc.request_error")) == (3, 2, 1)


async def test_writes_through_a_follower_over_the_real_transport() -> None:
    """The follower's pool and the leader's RPC server as the agent runs them: the first batch
    dials, the later ones go without a task, and each write is answered as the leader applied it."""
    store = Store()
    log = ScriptedLeader(store, LEADER)
    leader = Server(store, log, "dc1")
    listener = Listener("127.0.0.1", 0, {ConnType.RPC: rpc_stream_handler(leader.handle_rpc)})
    await listener.start()
    address = f"127.0.0.1:{listener.port}"
    pool = ConnectionPool()
    sent_directly: list[bool] = []
    send_call = pool.send_call

    def spy(*args: Any, **kwargs: Any) -> bool:
        sent_directly.append(send_call(*args, **kwargs))
        return sent_directly[-1]

    pool.send_call = spy  # type: ignore[method-assign]
    follower = Server(Store(), follower_view(address), "dc1", pool=pool, rpc_hold_timeout_s=30.0)
    try:
        meta, ok = await follower.write(kv_set("first"))
        assert ok is True and store.kv_get("first")[1] is not None
        assert follower.write_forwarder is not None and follower.write_forwarder.batches_sent == 1
        for round_ in range(3):
            cas_fail = commands.KVS(commands.KVOp.CAS, DirEntry("first", b"x", modify_index=999_999))
            got = await asyncio.gather(*(follower.write(kv_set(f"r{round_}/{i}", b"%d" % i)) for i in range(16)),
                                       follower.write(cas_fail))
            for i, (meta, ok) in enumerate(got[:16]):
                entry = store.kv_get(f"r{round_}/{i}")[1]
                assert ok is True and entry is not None and entry.value == b"%d" % i
                assert entry.modify_index == meta.index
            assert got[16][1] is False
        assert follower.write_forwarder.batches_sent == 4 and log.batches == 4
        assert sent_directly == [False, True, True, True]  # the first one dialled
        # The HTTP fast path's PUTs (`write_now`): the same batch, answered from the reader.
        got_now = [await out.one() for out in start_now(follower, [kv_set(f"now/{i}") for i in range(16)])]
        for i, (meta, ok, exc) in enumerate(got_now):
            entry = store.kv_get(f"now/{i}")[1]
            assert exc is None and ok is True and entry is not None and entry.modify_index == meta.index
        assert sent_directly == [False, True, True, True, True] and log.batches == 5
        assert follower.write_forwarder.in_flight() == 0
    finally:
        await pool.close()
        await listener.stop()


# ------------------------------------------------------------- a real one-voter Raft server


async def _ready_one_voter(tmp_path: Any, store: Store) -> RaftServer:
    raft = RaftServer("a", "a", "127.0.0.1:8300", CommandStateMachine(FSM(store)), str(tmp_path), tick_s=0.02)
    raft.bootstrap({"a": "127.0.0.1:8300"})
    await raft.start()
    deadline = asyncio.get_running_loop().time() + 30
    while not raft.ready_for_reads():
        assert asyncio.get_running_loop().time() < deadline, "the single voter never became a ready leader"
        await asyncio.sleep(0.01)
    return raft


async def test_a_raft_leader_serves_forwarded_batches_without_a_task(tmp_path: Any) -> None:
    """The agent's wiring: the leader's RPC handler hands `Raft.ApplyBatch` to
    `Server.handle_rpc_now` (proposed by `RaftLog.propose_batch_now`, answered from the last
    entry's completion); a follower's `write` and `write_now` get what the leader applied."""
    store = Store()
    raft = await _ready_one_voter(tmp_path, store)
    log = RaftLog(raft)
    leader = Server(store, log, "dc1", propose_now=log.propose_now, propose_batch_now=log.propose_batch_now)
    taken: list[bool] = []

    def now(method: str, body: Any, answer: Any) -> bool:
        taken.append(leader.handle_rpc_now(method, body, answer))
        return taken[-1]

    listener = Listener("127.0.0.1", 0, {ConnType.RPC: rpc_stream_handler(leader.handle_rpc, dispatch_now=now)})
    await listener.start()
    pool = ConnectionPool()
    follower = Server(Store(), follower_view(f"127.0.0.1:{listener.port}"), "dc1", pool=pool, rpc_hold_timeout_s=30.0)
    try:
        cas_fail = commands.KVS(commands.KVOp.CAS, DirEntry("r/0", b"x", modify_index=999_999))
        for round_ in range(3):
            got = await asyncio.gather(*(follower.write(kv_set(f"r/{i}", b"%d" % round_)) for i in range(8)),
                                       follower.write(cas_fail))
            assert [ok for _, ok in got] == [True] * 8 + [False]
            got_now = [await out.one() for out in start_now(follower, [kv_set(f"n/{round_}/{i}") for i in range(8)])]
            for i, (meta, ok, exc) in enumerate(got_now):
                entry = store.kv_get(f"n/{round_}/{i}")[1]
                assert exc is None and ok is True and entry is not None and entry.modify_index == meta.index
        assert store.kv_get("r/7")[1].value == b"2"  # type: ignore[union-attr]
        assert taken == [True] * 6  # every batch, none through a task
    finally:
        await pool.close()
        await listener.stop()
        await raft.stop()


async def test_raft_applies_a_batch_in_order_with_the_proposed_objects(tmp_path: Any) -> None:
    store = Store()
    raft = RaftServer("a", "a", "127.0.0.1:8300", CommandStateMachine(FSM(store)), str(tmp_path), tick_s=0.02)
    raft.bootstrap({"a": "127.0.0.1:8300"})
    await raft.start()
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while not raft.ready_for_reads():
            assert asyncio.get_running_loop().time() < deadline, "the single voter never became a ready leader"
            await asyncio.sleep(0.01)
        log = RaftLog(raft)
        cmds = [kv_set(f"b/{i}", b"%d" % i) for i in range(10)]
        cmds.append(commands.KVS(commands.KVOp.CAS, DirEntry("b/0", b"x", modify_index=1)))
        outcomes = await log.apply_batch([(c, commands.encode(c)) for c in cmds])
        indexes = [index for index, _ in outcomes]
        assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
        assert [ok for _, ok in outcomes] == [True] * 10 + [False]
        assert store.kv_get("b/9")[1].value == b"9"  # type: ignore[union-attr]
    finally:
        await raft.stop()
    # Stopped, its core still says leader: a proposal is refused at once instead of waiting
    # forever for a loop that no longer runs.
    stopped = RaftLog(raft)
    for propose in (lambda: stopped.apply(kv_set("late")),
                    lambda: stopped.apply_batch([(kv_set("late"), commands.encode(kv_set("late")))])):
        with pytest.raises(NoLeader):
            await asyncio.wait_for(propose(), 10)
    # Not running (so leading nothing): the whole batch is refused before anything is proposed.
    idle = RaftServer("b", "b", "127.0.0.1:8300", CommandStateMachine(FSM(Store())), str(tmp_path / "b"))
    with pytest.raises(NoLeader):
        await RaftLog(idle).apply_batch([(kv_set("after"), commands.encode(kv_set("after")))])
