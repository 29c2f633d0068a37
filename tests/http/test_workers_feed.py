"""The apply feed and the read replica of the HTTP workers (http/workers/feed.py, replica.py),
in one event loop over a real unix socket: the replica equals the store after every entry, a
barrier's answer arrives after every entry applied before it, a state replacement makes the
replica re-bootstrap, reads arriving in one loop iteration share one barrier, and one barrier is
in flight at a time."""

from __future__ import annotations

import asyncio
from pathlib import Path

from helpers import wait_until
from proconsul.http.workers.feed import ApplyFeed
from proconsul.http.workers.replica import BarrierFailed, Replica
from proconsul.server.consensus import CommandStateMachine
from proconsul.state import commands
from proconsul.state.fsm import FSM
from proconsul.state.records import DirEntry
from proconsul.state.store import Store


class _Status:
    leader = True

    def is_leader(self) -> bool:
        return self.leader

    def ready_for_reads(self) -> bool:
        return True

    def leader_address(self) -> str:
        return "x" if self.leader else ""

    def last_contact_ms(self) -> int:
        return 0


async def _until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    await wait_until(predicate, timeout=timeout, interval=0.005)


def _put(machine: CommandStateMachine, index: int, key: str, value: bytes) -> None:
    machine.apply(index, commands.encode(commands.KVS(commands.KVOp.SET, DirEntry(key=key, value=value))))


async def test_replica_follows_bootstraps_and_rebootstraps(tmp_path: Path) -> None:
    store = Store()
    status = _Status()
    feed = ApplyFeed(store, lambda: {"hello": 1}, status=lambda: status)
    machine = CommandStateMachine(FSM(store), feed.on_applied)
    for i in range(1, 21):
        _put(machine, i, f"k{i % 5}", str(i).encode())  # before any worker: in the snapshot
    path = str(tmp_path / "feed.sock")
    await feed.start(path)
    hellos: list[dict[str, int]] = []
    replica = Replica(path, hellos.append)
    follow = asyncio.get_running_loop().create_task(replica.run(lambda: None))
    try:
        await _until(lambda: replica.serving)
        assert hellos == [{"hello": 1}]
        for i in range(21, 200):
            _put(machine, i, f"k{i % 7}", str(i).encode())
            if i % 50 == 0:
                # A barrier asked now is answered only after every entry so far has arrived.
                leader, ready = await replica.barrier()
                assert (leader, ready) == (True, True)
                assert replica.applied == i and replica.store.snapshot() == store.snapshot()
        # Reads in one loop iteration share one round trip.
        sent = replica._seq
        results = await asyncio.gather(*(replica.barrier() for _ in range(25)))
        assert results == [(True, True)] * 25 and replica._seq == sent + 1
        # One barrier in flight at a time: reads arriving while it is out (it was asked before
        # them, so it cannot serve them) wait for its answer, then share the next trip.
        sent = replica._seq
        first = asyncio.ensure_future(asyncio.gather(*(replica.barrier() for _ in range(5))))
        async with asyncio.timeout(10):
            while replica._seq == sent:
                await asyncio.sleep(0)  # no timer: look again as soon as the first batch is out
        second: list[object] = []
        for _ in range(5):
            assert replica.barrier_then(second.append)
        await asyncio.sleep(0)  # the old behaviour would send the second batch right here
        assert replica._seq == sent + 1 or first.done()
        assert await first == [(True, True)] * 5
        await _until(lambda: len(second) == 5)
        assert second == [(True, True)] * 5 and replica._seq == sent + 2
        assert replica.store.snapshot() == store.snapshot()
        # A snapshot install replaces the state: the replica re-bootstraps from the new one.
        other = Store()
        CommandStateMachine(FSM(other)).apply(500, commands.encode(
            commands.KVS(commands.KVOp.SET, DirEntry(key="fresh", value=b"1"))))
        machine.install(Store.decode(other.snapshot()))
        await _until(lambda: not replica.serving or replica.store.kv.get("fresh") is not None)
        await _until(lambda: replica.serving and replica.store.kv.get("fresh") is not None)
        assert set(replica.store.kv) == {"fresh"}
        _put(machine, 501, "after", b"x")
        await replica.barrier()
        assert replica.store.snapshot() == store.snapshot()
        # The agent steps down: barriers say so (the worker then forwards default reads).
        status.leader = False
        assert await replica.barrier() == (False, True)
    finally:
        await feed.stop()
        follow.cancel()
    # Without a stream a barrier fails at once (the read is forwarded).
    await _until(lambda: not replica.serving)
    try:
        await replica.barrier()
    except BarrierFailed:
        pass
    else:
        raise AssertionError("a barrier without a stream succeeded")
