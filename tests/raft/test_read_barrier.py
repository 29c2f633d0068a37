"""ReadIndex rounds in the Raft driver (`RaftServer.read_barrier` / `verify_leader`), on a real
one-voter `RaftServer` whose core's confirmations the test holds back and releases by hand.

One round is under way at a time and serves every read that was waiting when it started; a read
that arrives after a round started waits for the next round, which starts once the first ends and
records the commit index of that moment (so it covers a write acknowledged before the read). A
round nobody confirms is retried after a heartbeat interval and fails its reads after two
election timeouts; leadership lost fails every waiting read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from helpers import wait_until
from proconsul.raft.node import NoLeaderError, RaftServer
from proconsul.server.consensus import CommandStateMachine, RaftLog
from proconsul.state import commands
from proconsul.state.fsm import FSM
from proconsul.state.records import DirEntry
from proconsul.state.store import Store


async def _leader(tmp_path: Any) -> tuple[RaftServer, Store]:
    store = Store()
    raft = RaftServer("a", "a", "127.0.0.1:8300", CommandStateMachine(FSM(store)), str(tmp_path), tick_s=0.02)
    raft.bootstrap({"a": "127.0.0.1:8300"})
    await raft.start()
    await _until(raft.ready_for_reads, "the single voter to become a ready leader")
    return raft, store


async def _until(cond: Callable[[], Any], what: str) -> None:
    await wait_until(cond, timeout=30, what=what, interval=0.005)


class HeldRounds:
    """Replaces the core's `read_index`: records each round's context and the commit index when
    it started, and confirms a round only when the test calls `confirm`."""

    def __init__(self, raft: RaftServer) -> None:
        assert raft.core is not None
        self.raft = raft
        self.core = raft.core
        self.real = raft.core.read_index
        self.started: list[tuple[bytes, int]] = []
        raft.core.read_index = self.start  # type: ignore[method-assign]

    def start(self, ctx: bytes) -> None:
        self.started.append((ctx, self.core.commit_index))

    def confirm(self, n: int) -> None:
        """Confirm round `n` (a single voter confirms at once; the next Ready carries it)."""
        self.real(self.started[n][0])
        self.raft._wake.set()


def _put(value: bytes) -> commands.KVS:
    return commands.KVS(commands.KVOp.SET, DirEntry("k", value))


async def test_a_read_arriving_during_a_round_waits_for_the_next_one(tmp_path: Any) -> None:
    raft, store = await _leader(tmp_path)
    raft.tick_s = 30.0  # no retry of a held round and no expiry during the test (after the next tick)
    await asyncio.sleep(0.05)
    try:
        held = HeldRounds(raft)
        log = RaftLog(raft)
        first = [asyncio.ensure_future(raft.verify_leader()) for _ in range(5)]
        await _until(lambda: len(held.started) == 1, "the first round")
        # A write acknowledged after the first round started, then reads that arrive after it.
        await log.apply(_put(b"after-round-1"))
        acked_index = raft.applied_index
        second = [asyncio.ensure_future(raft.verify_leader()) for _ in range(5)]
        # The loop runs (another write goes through it), but no second round starts while the
        # first is under way, and no read is answered.
        await log.apply(_put(b"later"))
        assert len(held.started) == 1
        assert not any(f.done() for f in first + second)
        assert held.started[0][1] < acked_index  # the first round's index predates the write
        held.confirm(0)
        await asyncio.wait_for(asyncio.gather(*first), 30)
        # The second round starts only now, for all five reads, at an index covering the write.
        await _until(lambda: len(held.started) == 2, "the second round")
        assert not any(f.done() for f in second)
        assert held.started[1][1] >= acked_index
        held.confirm(1)
        await asyncio.wait_for(asyncio.gather(*second), 30)
        assert len(held.started) == 2
        assert store.kv_get("k")[1].value == b"later"  # type: ignore[union-attr]
    finally:
        await raft.stop()


async def test_callbacks_share_rounds_with_futures_and_run_outside_the_call(tmp_path: Any) -> None:
    raft, _ = await _leader(tmp_path)
    raft.tick_s = 30.0
    await asyncio.sleep(0.05)
    try:
        held = HeldRounds(raft)
        calls: list[BaseException | None] = []
        fut = asyncio.ensure_future(raft.verify_leader())  # runs before the loop's next iteration
        raft.read_barrier(calls.append)
        assert calls == []  # never called from inside read_barrier
        await _until(lambda: len(held.started) == 1, "the round")
        held.confirm(0)
        await asyncio.wait_for(fut, 30)
        await _until(lambda: calls == [None], "the callback")
        assert len(held.started) == 1
    finally:
        await raft.stop()


async def test_an_unconfirmed_round_is_retried_then_its_reads_fail(tmp_path: Any) -> None:
    raft, _ = await _leader(tmp_path)
    try:
        held = HeldRounds(raft)  # nothing is ever confirmed: as if every heartbeat were lost
        calls: list[BaseException | None] = []
        raft.read_barrier(calls.append)
        with pytest.raises(NoLeaderError):
            await asyncio.wait_for(raft.verify_leader(), 30)  # 2 election timeouts: 0.4 s here
        await _until(lambda: len(calls) == 1, "the callback's failure")
        assert isinstance(calls[0], NoLeaderError)
        # Retried once a heartbeat interval (one tick) passed without an answer.
        assert len(held.started) >= 2
    finally:
        await raft.stop()


async def test_stopping_fails_the_waiting_reads(tmp_path: Any) -> None:
    raft, _ = await _leader(tmp_path)
    raft.tick_s = 30.0
    await asyncio.sleep(0.05)
    held = HeldRounds(raft)
    under_way = asyncio.ensure_future(raft.verify_leader())
    await _until(lambda: len(held.started) == 1, "the round")
    waiting = asyncio.ensure_future(raft.verify_leader())
    await asyncio.sleep(0)
    await raft.stop()
    for fut in (under_way, waiting):
        with pytest.raises(NoLeaderError):
            await asyncio.wait_for(fut, 30)
