"""The Raft driver's write and read paths on a real one-voter `RaftServer` (SQLite log, its
log-writer thread): one ReadIndex round serves every `?consistent` read waiting at that moment,
and the leader applies the command object it proposed, but only when decoding its bytes would
give the very same command."""

from __future__ import annotations

import asyncio
from typing import Any

from proconsul.raft.node import RaftServer
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
