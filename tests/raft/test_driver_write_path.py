"""The Raft driver's write and read paths on a real one-voter `RaftServer` (SQLite log, its
log-writer thread): one ReadIndex round serves every `?consistent` read waiting at that moment,
and the leader applies the command object it proposed, but only when decoding its bytes would
give the very same command; `propose_now` answers a batch of writes by callback, once, after the
driver's iteration; a peer's message reaching an idle leader is stepped at the end of the event-loop
pass that read it, and one arriving while a write is in flight waits for that write's completion."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from proconsul.metrics import Metrics
from proconsul.raft.messages import Message, MsgType
from proconsul.raft.node import NoLeaderError, OutcomeUnknown, RaftServer
from proconsul.server.consensus import CommandStateMachine, RaftLog
from proconsul.state import commands
from proconsul.state.fsm import FSM
from proconsul.state.records import DirEntry
from proconsul.state.store import Store


class RecordingFSM(FSM):
    """Records the command object each apply received."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.seen: list[Any] = []

    def apply(self, index: int, command: commands.Command) -> Any:
        self.seen.append(command)
        return super().apply(index, command)


async def _leader(tmp_path: Any) -> tuple[RaftServer, RecordingFSM, Store]:
    store = Store()
    fsm = RecordingFSM(store)
    raft = RaftServer("a", "a", "127.0.0.1:8300", CommandStateMachine(fsm), str(tmp_path), tick_s=0.02)
    raft.bootstrap({"a": "127.0.0.1:8300"})
    await raft.start()
    deadline = asyncio.get_running_loop().time() + 30
    while not raft.ready_for_reads():
        assert asyncio.get_running_loop().time() < deadline, "the single voter never became a ready leader"
        await asyncio.sleep(0.01)
    return raft, fsm, store


async def test_one_read_index_round_serves_all_waiting_reads(tmp_path: Any) -> None:
    raft, _, store = await _leader(tmp_path)
    try:
        core = raft.core
        assert core is not None
        rounds: list[bytes] = []
        real = core.read_index

        def counting(ctx: bytes) -> None:
            rounds.append(ctx)
            real(ctx)

        core.read_index = counting  # type: ignore[method-assign]
        await RaftLog(raft).apply(commands.KVS(commands.KVOp.SET, DirEntry("k", b"v")))
        await asyncio.gather(*(raft.verify_leader() for _ in range(50)))
        # All 50 were waiting before the loop ran: one round (a loop iteration may split them
        # at most once more if the loop was mid-iteration when the first arrived).
        assert 1 <= len(rounds) <= 2, rounds
        assert store.kv_get("k")[1] is not None
        # A read arriving after a round completed gets a round of its own.
        await raft.verify_leader()
        assert len(rounds) in (2, 3)
    finally:
        await raft.stop()


async def test_the_leader_applies_its_own_kv_command_object(tmp_path: Any) -> None:
    raft, fsm, store = await _leader(tmp_path)
    try:
        log = RaftLog(raft)
        plain = commands.KVS(commands.KVOp.SET, DirEntry("plain", b"value", flags=7))
        await log.apply(plain)
        assert any(seen is plain for seen in fsm.seen), "the proposed object was decoded again"
        # A value that is not exactly bytes would come back from msgpack as bytes: decoded, so
        # the leader stores what every follower stores.
        odd = commands.KVS(commands.KVOp.SET, DirEntry("odd", bytearray(b"value")))
        await log.apply(odd)
        assert not any(seen is odd for seen in fsm.seen)
        entry = store.kv_get("odd")[1]
        assert entry is not None and type(entry.value) is bytes and entry.value == b"value"
        # A non-KV command always goes through the codec.
        register = commands.Deregister("no-such-node")
        await log.apply(register)
        assert not any(seen is register for seen in fsm.seen)
    finally:
        await raft.stop()


async def test_propose_now_answers_a_batch_by_callback_after_the_iteration(tmp_path: Any) -> None:
    store = Store()
    metrics = Metrics()
    raft = RaftServer("a", "a", "127.0.0.1:8300", CommandStateMachine(FSM(store)), str(tmp_path), tick_s=0.02,
                      metrics=metrics)
    raft.bootstrap({"a": "127.0.0.1:8300"})
    await raft.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not raft.ready_for_reads():
        assert loop.time() < deadline, "the single voter never became a ready leader"
        await asyncio.sleep(0.01)
    commit = metrics.series[("consul.raft.commitTime", ())]
    fsm_apply = metrics.series[("consul.raft.fsm.apply", ())]
    proposed = metrics.series[("consul.raft.apply", ())]
    commits_before, applies_before, proposed_before = commit.count, fsm_apply.count, proposed.total
    got: list[tuple[int, Any, Any]] = []
    after_first: list[int] = []  # how many outcomes had arrived when the loop next ran something
    all_in = asyncio.Event()
    n = 20

    def outcome(i: int, out: Any, exc: Any) -> None:
        if not got:
            loop.call_soon(lambda: after_first.append(len(got)))
        got.append((i, out, exc))
        if len(got) == n:
            all_in.set()

    commands_ = [commands.KVS(commands.KVOp.SET, DirEntry(f"k{i}", b"v")) for i in range(n)]
    scheduled = 0  # event-loop callbacks scheduled while the batch went through
    real_call_soon = loop.call_soon

    def counting_call_soon(*args: Any, **kwargs: Any) -> Any:
        nonlocal scheduled
        scheduled += 1
        return real_call_soon(*args, **kwargs)

    try:
        loop.call_soon = counting_call_soon  # type: ignore[method-assign]
        try:
            for i, command in enumerate(commands_):
                raft.propose_now(commands.encode(command), command, lambda out, exc, i=i: outcome(i, out, exc))
            assert got == []  # never from inside the call
            await asyncio.wait_for(all_in.wait(), 30)
        finally:
            del loop.call_soon
        # Not a future and its callbacks per write (two or more each): a few for the whole batch.
        assert scheduled < n // 2, scheduled
        assert [i for i, _, _ in got] == list(range(n))  # in log order
        assert all(exc is None and out[1] is True for _, out, exc in got)
        indexes = [out[0] for _, out, _ in got]
        assert indexes == sorted(indexes) and len(set(indexes)) == n
        assert indexes[-1] == store.kv_get("k19")[1].modify_index  # type: ignore[union-attr]
        # Proposed before the driver ran: one Ready applied them, and one callback answered all.
        assert after_first == [n]
        assert commit.count == commits_before + n and fsm_apply.count >= applies_before + n
        assert proposed.total == proposed_before + n
        # A write pending when the server stops is answered too (applied, or its fate unknown).
        late: list[Any] = []
        last = commands.KVS(commands.KVOp.SET, DirEntry("late", b"v"))
        raft.propose_now(commands.encode(last), last, lambda out, exc: late.append((out, exc)))
    finally:
        await raft.stop()
    deadline = loop.time() + 30
    while not late:
        assert loop.time() < deadline, "the pending write was never answered"
        await asyncio.sleep(0.01)
    assert len(late) == 1
    out, exc = late[0]
    assert (exc is None and out[1] is True) or (out is None and isinstance(exc, OutcomeUnknown))
    with pytest.raises(NoLeaderError):  # stopped: refused, nothing proposed
        raft.propose_now(commands.encode(last), last, lambda out, exc: late.append((out, exc)))


async def _idle(raft: RaftServer) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while raft._busy:
        assert asyncio.get_running_loop().time() < deadline, "the driver never became idle"
        await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def _idle_recording_leader(tmp_path: Any) -> AsyncIterator[tuple[RaftServer, Store, Any, list[Message]]]:
    """A single-voter leader with nothing in flight, whose core records what it steps."""
    raft, _, store = await _leader(tmp_path)
    try:
        core = raft.core
        assert core is not None
        stepped = _record_steps(core)
        await _idle(raft)
        yield raft, store, core, stepped
    finally:
        await raft.stop()


def _heartbeat_answer(core: Any) -> Message:
    """A follower's answer to a heartbeat, in the leader's term (stepping it changes nothing)."""
    return Message(MsgType.HEARTBEAT_RESP, "a", "b", core.term)


def _propose_kv_set(raft: RaftServer) -> asyncio.Future[Any]:
    """Propose a KV set of "k" with `propose_now`; the future gets its (outcome, error)."""
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    command = commands.KVS(commands.KVOp.SET, DirEntry("k", b"v"))
    raft.propose_now(commands.encode(command), command, lambda out, exc: done.set_result((out, exc)))
    return done


def _record_steps(core: Any) -> list[Message]:
    """Every message the core steps from now on, in order (it still steps them)."""
    stepped: list[Message] = []
    real_step = core.step

    def step(m: Message) -> None:
        stepped.append(m)
        real_step(m)

    core.step = step
    return stepped


async def test_a_peer_message_reaching_a_leader_with_nothing_in_flight_is_stepped_in_the_read(tmp_path: Any) -> None:
    async with _idle_recording_leader(tmp_path) as (raft, store, core, stepped):
        assert not raft._pending and not raft._kick_due and not raft._reads
        m = _heartbeat_answer(core)
        raft._deliver([m])  # what the inbound protocol calls for one read's messages
        # No proposal in this pass and at most one write in flight (c1): nothing to gather it
        # with, so it is stepped at once, without a wake of the driver task.
        assert stepped == [m] and raft._inbox == [] and not raft._wake.is_set()


async def test_a_peer_message_reaching_a_leader_in_a_pass_with_proposals_is_stepped_at_its_end(tmp_path: Any) -> None:
    async with _idle_recording_leader(tmp_path) as (raft, store, core, stepped):
        done = _propose_kv_set(raft)
        m = _heartbeat_answer(core)
        raft._deliver([m])
        # A request proposed in this pass: the answer waits for the end of the pass, where one
        # Ready takes both, in a callback of its own (no wake of the driver task).
        assert stepped == [] and raft._inbox == [m] and not raft._wake.is_set()
        await asyncio.sleep(0)
        assert stepped == [m] and raft._inbox == []
        out, exc = await asyncio.wait_for(done, 30)
        assert exc is None and store.kv_get("k")[1] is not None


async def test_a_peer_message_arriving_during_a_write_is_stepped_by_its_completion(tmp_path: Any) -> None:
    async with _idle_recording_leader(tmp_path) as (raft, store, core, stepped):
        done = _propose_kv_set(raft)
        await asyncio.sleep(0)  # the end of the pass: the proposal's cycle hands its write over
        assert raft._busy
        m = _heartbeat_answer(core)
        raft._deliver([m])
        assert stepped == [] and raft._inbox == [m]  # waits for the write in flight
        out, exc = await asyncio.wait_for(done, 30)
        assert exc is None and out[1] is True and store.kv_get("k")[1] is not None
        assert stepped == [m] and raft._inbox == []
