"""CPU per forwarded write of the forwarding code on each end, in one process, without a tracer.

Measures the server-side Python a c1 write through a follower pays, outside the transport and
the Raft driver (both replaced by stand-ins that only keep the callback):

- follower: `Server.write_now` on a follower -> `WriteForwarder.submit_now` -> the batch's
  request frame encoded -> its answer handed back -> the write settled (`_answered`);
- leader: `Server.handle_rpc_now("Raft.ApplyBatch")` of a one-write batch -> proposed
  (`RaftLog.propose_batch_now`) -> the applied outcome -> the reply body;
- leader apply: the state machine's apply of what the leader proposed with the bytes
  (`CommandStateMachine.apply`; its decode is in the line above).

    PYTHONPATH=<tree>/daemon .venv/bin/python bench/forwarded_write_cpu.py

Each figure is the best of 5 runs of 100,000 writes (µs per write); compare trees by running it
with each tree's daemon on PYTHONPATH, one after the other.
"""

from __future__ import annotations

import asyncio
import time
import timeit
from typing import Any

import uvloop
from proconsul.server.consensus import CommandStateMachine, RaftLog
from proconsul.server.forwarding import WriteForwarder
from proconsul.server.rpc import Server
from proconsul.server.single import SingleNodeLog
from proconsul.state import commands
from proconsul.state.fsm import FSM
from proconsul.state.records import DirEntry
from proconsul.state.store import Store
from proconsul.wire import Request, encode_request

N = 100_000
COMMAND = commands.KVS(commands.KVOp.SET, DirEntry("bench/key-000001", b"x" * 100))
DATA = commands.encode(COMMAND)


class _Pool:
    """`ConnectionPool.send_call`: encodes the frame, keeps the callback."""

    def __init__(self) -> None:
        self.done: Any = None
        self.seq = 0

    def send_call(self, address: str, method: str, body: Any, done: Any, timeout_s: float = 30.0) -> bool:
        self.seq += 1
        encode_request(Request(self.seq, method, body))
        self.done = done
        return True

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a one-write batch to an open connection goes by send_call")


class _Follower:
    def is_leader(self) -> bool:
        return False

    def leader_address(self) -> str:
        return "127.0.0.1:9"


class _Raft:
    """`RaftServer.propose_now`/`propose_batch`: keeps the callback, proposes nothing."""

    def __init__(self) -> None:
        self.done: Any = None

    def is_leader(self) -> bool:
        return True

    def propose_now(self, data: bytes, proposed: Any, done: Any) -> None:
        self.done = done

    def propose_batch(self, items: list[Any]) -> list[asyncio.Future[Any]]:
        futs = [asyncio.get_running_loop().create_future() for _ in items]
        self.done = lambda out, exc: futs[-1].set_result(out)
        return futs


async def _follower() -> float:
    pool = _Pool()
    store = Store()
    server = Server(store, SingleNodeLog(FSM(store), "127.0.0.1:8300", "id", "s1"), "dc1")
    server.write_forwarder = WriteForwarder(pool)
    server.consensus = _Follower()  # type: ignore[assignment]
    got: list[Any] = []
    reply = {"results": [[42, True]]}

    def done(meta: Any, result: Any, exc: Any) -> None:
        got.append(meta)

    server.write_now(COMMAND, done)  # the first write waits for the loop; the next ones leave at once
    await asyncio.sleep(0)
    pool.done(reply, None)
    best = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(N):
            server.write_now(COMMAND, done)
            pool.done(reply, None)
        best.append((time.perf_counter() - start) / N * 1e6)
        await asyncio.sleep(0)
    assert len(got) == 5 * N + 1 and got[-1].index == 42
    return min(best)


async def _leader() -> float:
    raft = _Raft()
    log = RaftLog(raft)  # type: ignore[arg-type]
    server = Server(Store(), log, "dc1", propose_now=log.propose_now, propose_batch_now=log.propose_batch_now)
    got: list[Any] = []
    body = {"commands": [DATA]}

    def answer(reply: Any, exc: Any) -> None:
        got.append(reply)

    best = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(N):
            server.handle_rpc_now("Raft.ApplyBatch", body, answer)
            raft.done((7, True), None)
        best.append((time.perf_counter() - start) / N * 1e6)
        await asyncio.sleep(0.01)  # a propose_batch future's callbacks
    assert got[-1] == {"results": [[7, True]]}, got[-1]
    return min(best)


def _leader_apply() -> float:
    """What the leader's one-write path decodes the command into, applied as proposed."""
    machine = CommandStateMachine(FSM(Store()))
    server = Server(Store(), SingleNodeLog(FSM(Store()), "127.0.0.1:8300", "id", "s1"), "dc1")
    one = getattr(server, "_apply_one_forwarded_now", None)
    decode = commands.decode_for_apply if one is not None else commands.decode
    proposed = decode(DATA)  # decoded on the offer (the line above counts it)
    index = [0]

    def apply() -> None:
        index[0] += 1
        machine.apply(index[0], DATA, proposed)

    return min(timeit.repeat(apply, number=N, repeat=5)) / N * 1e6


async def _main() -> None:
    print(f"follower: write_now -> frame encoded -> answer settled  {await _follower():5.2f} us")
    print(f"leader:   offer -> proposed -> applied outcome -> reply  {await _leader():5.2f} us")
    print(f"leader:   apply of the proposed command                 {_leader_apply():5.2f} us")


if __name__ == "__main__":
    uvloop.run(_main())
