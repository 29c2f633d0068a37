"""Seeded interleavings of shared blocking reads: joins, cancels, writes, wake-ups (issue 16).

Identical blocking reads share one parked read on the server that serves them
(`server.rpc._Parked`) and one forwarded call on a server that forwards them to the leader
(`server.rpc.SharedCalls`); a forwarded call that loses its last reader is cancelled, and the
cancel reaches the leader some time later, as `RPC.Cancel` does over the transport. This drives a
leader and a follower in one event loop with a seeded sequence of steps: watchers joining (on
either server, default or `?stale`, often at an index other watchers already wait on), watchers
hanging up (and coming back at the same index, as a client retrying), KV writes on the leader,
replication of those writes to the follower, answers and cancels travelling with seeded delays,
and a seeded number of loop iterations between steps. Everything is in-process and no timer
fires (waits are long), so a seed always gives the same interleaving.

Checked on every answer: its index is past the watcher's (nobody is answered for nothing; no
wait runs out here), and it is exactly the store's content at that index (nothing stale, nothing
torn). Half the watchers wait as the HTTP fast path's do (`Server.park_query`: a `ParkedRead` with no
task of its own, in the same tables as the awaiting readers; hanging up is `cancel`). Checked at
the end, once every write has replicated and the loop is quiet: every watcher
still waiting is at the current index of what it watches (no watcher missed a write); and once
all of them hang up, nothing is left parked or forwarded on either server.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from proconsul.rpc_api import QueryMeta, QueryOptions
from proconsul.server.rpc import ParkedOutcome, ParkedRead, Server
from proconsul.state.records import DirEntry
from proconsul.state.store import Store, WatchSet
from proconsul.wire import FrameDecoder, Response, decode_message, encode_response

PREFIXES = ("a/", "b/", "c/")
LEADER = "10.0.0.1:8300"


class Consensus:
    """Just what Server.query/read ask of the replicated log."""

    def __init__(self, leader: bool) -> None:
        self.leader = leader

    def is_leader(self) -> bool:
        return self.leader

    def ready_for_reads(self) -> bool:
        return self.leader

    def leader_address(self) -> str:
        return LEADER

    def last_contact_ms(self) -> int:
        return 0

    def voters(self) -> list[tuple[str, str, str]]:
        return []

    async def verify_leader(self) -> None:
        return None


async def _ticks(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class LoopbackPool:
    """The follower's pool to the leader, in-process: the request and the answer go through the
    wire encoding (so a shared answer is packed as the transport packs it), each after a seeded
    number of loop iterations; a caller that gives up has the leader's request cancelled a
    seeded number of iterations later (RPC.Cancel travelling)."""

    def __init__(self, leader: Server, rng: random.Random) -> None:
        self.leader = leader
        self.rng = rng
        self.serving: set[asyncio.Future[Any]] = set()
        self.seq = 0

    async def call(self, addr: str, method: str, body: Any, timeout_s: float = 30.0) -> Any:
        assert addr == LEADER
        self.seq += 1
        seq = self.seq
        body = msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False)
        delay_in, delay_out = self.rng.randrange(4), self.rng.randrange(4)

        async def serve() -> Any:
            await _ticks(delay_in)
            return await self.leader.handle_rpc(method, body)

        task = asyncio.ensure_future(serve())
        self.serving.add(task)
        task.add_done_callback(self.serving.discard)
        try:
            reply = await asyncio.shield(task)
        except asyncio.CancelledError:
            cancel_after = self.rng.randrange(6)
            loop = asyncio.get_running_loop()

            def deliver(left: int = cancel_after) -> None:
                if left:
                    loop.call_soon(deliver, left - 1)
                else:
                    task.cancel()

            deliver()
            raise
        (payload,) = FrameDecoder().feed(encode_response(Response(seq, None, reply)))
        msg = decode_message(payload)
        await _ticks(delay_out)
        return msg.body  # type: ignore[union-attr]


@dataclass
class Watcher:
    name: int
    on_leader: bool
    stale: bool
    prefix: str
    index: int
    answers: int = 0
    task: asyncio.Task[None] | None = None
    parked: bool = False  # waits through Server.park_query (the HTTP fast path's way)


DOUBLE_CALLS: list[Any] = []  # outcomes delivered to a ParkedRead's on_done after its first


async def park(server: Server, name: str, args: dict[str, Any], opts: QueryOptions) -> tuple[QueryMeta, Any]:
    """`server.query` through `park_query`, as http/fast_blocking.py uses it: the outcome comes
    to a callback; a caller that goes away cancels its ParkedRead."""
    got: asyncio.Future[ParkedOutcome] = asyncio.get_running_loop().create_future()
    calls = []

    def on_done(outcome: ParkedOutcome) -> None:
        calls.append(outcome)
        if len(calls) > 1:
            DOUBLE_CALLS.append(outcome)
        if not got.done():  # (cancelled: this caller's task is being cancelled, `cancel` follows)
            got.set_result(outcome)

    out = server.park_query(name, args, opts, on_done)
    assert out is not None, "park_query declined a plain blocking read"
    if not isinstance(out, ParkedRead):
        return out
    try:
        outcome = await got
    except asyncio.CancelledError:
        out.cancel()
        raise
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


class World:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.leader_store, self.follower_store = Store(), Store()
        self.leader = Server(self.leader_store, Consensus(True), "dc1", rng=random.Random(seed))  # type: ignore[arg-type]
        self.follower = Server(self.follower_store, Consensus(False), "dc1", rng=random.Random(seed + 1))  # type: ignore[arg-type]
        for server in (self.leader, self.follower):
            # An answered read parks again for its readers' return; ended below, not by a timer
            # (no timer fires during a run, so a seed is one interleaving).
            server.successor_grace_s = 3600.0
        self.pool = LoopbackPool(self.leader, self.rng)
        self.follower.pool = self.pool
        self.index = 0
        self.history: list[tuple[int, str, bytes]] = []  # (index, key, value), in index order
        self.replicated = 0  # how many of `history` the follower has applied
        self.watchers: list[Watcher] = []
        self.failures: list[str] = []

    # --- the stores ----------------------------------------------------------------------

    def write(self, prefix: str) -> None:
        self.index += 1
        key = f"{prefix}k{self.rng.randrange(3)}"
        value = f"v{self.index}".encode()
        self.history.append((self.index, key, value))
        self.leader_store.kv_set(self.index, DirEntry(key, value))
        self.leader_store.finish(self.index)

    def replicate_one(self) -> None:
        index, key, value = self.history[self.replicated]
        self.replicated += 1
        self.follower_store.kv_set(index, DirEntry(key, value))
        self.follower_store.finish(index)

    def expected(self, prefix: str, at: int) -> tuple[int, list[tuple[str, bytes]]]:
        """The KV list of `prefix` once the writes up to index `at` applied: (index, entries)."""
        state: dict[str, tuple[int, bytes]] = {}
        for index, key, value in self.history:
            if index > at:
                break
            if key.startswith(prefix):
                state[key] = (index, value)
        return max((i for i, _ in state.values()), default=0), [(k, state[k][1]) for k in sorted(state)]

    def applied_on(self, w: Watcher) -> int:
        """The last index the store that answers `w` has applied."""
        if w.stale and not w.on_leader:
            return self.history[self.replicated - 1][0] if self.replicated else 0
        return self.index

    # --- the watchers --------------------------------------------------------------------

    def start(self, w: Watcher) -> None:
        w.task = asyncio.ensure_future(self.watch(w))

    async def watch(self, w: Watcher) -> None:
        server = self.leader if w.on_leader else self.follower
        while True:
            opts = QueryOptions(min_index=w.index, max_wait_s=3600.0, allow_stale=w.stale)
            if w.parked:
                meta, result = await park(server, "KVS.List", {"prefix": w.prefix}, opts)
            else:
                meta, result = await server.query("KVS.List", {"prefix": w.prefix}, opts)
            assert isinstance(meta, QueryMeta)
            applied = self.applied_on(w)
            if meta.index <= w.index:
                self.failures.append(f"watcher {w.name} at {w.index} answered for nothing (index {meta.index})")
            got = [(e["Key"], _value(e["Value"])) for e in result]
            want_index, want = self.expected(w.prefix, applied)
            # The answer may predate later writes still on their way to this reader, but must be
            # exactly the prefix's content at the index it claims.
            at_index, at_content = self.expected(w.prefix, meta.index)
            if meta.index > applied or got != at_content or at_index != meta.index:
                self.failures.append(f"watcher {w.name} got index {meta.index} {got}, the store had "
                                     f"{at_index} {at_content} there (now {want_index} {want})")
            w.index = meta.index
            w.answers += 1

    def new_watcher(self) -> Watcher:
        prefix = self.rng.choice(PREFIXES)
        on_leader = self.rng.random() < 0.4
        stale = self.rng.random() < 0.25
        # Mostly an index others already wait on (so the read is shared), else the current one.
        peers = [w.index for w in self.watchers if w.prefix == prefix and w.task is not None and w.index]
        w = Watcher(len(self.watchers), on_leader, stale, prefix, 0, parked=self.rng.random() < 0.5)
        if peers and self.rng.random() < 0.7:
            w.index = self.rng.choice(peers)
        else:
            w.index = self.expected(prefix, self.applied_on(w))[0]
        self.watchers.append(w)
        return w

    def live(self) -> list[Watcher]:
        return [w for w in self.watchers if w.task is not None]


def _value(raw: Any) -> bytes:
    import base64

    return base64.b64decode(raw) if raw is not None else b""


async def run_world(seed: int, steps: int = 400) -> World:
    world = World(seed)
    rng = world.rng
    for prefix in PREFIXES:  # every prefix holds a key from the start
        world.write(prefix)
    while world.replicated < len(world.history):
        world.replicate_one()
    for _ in range(steps):
        roll = rng.random()
        live = world.live()
        if roll < 0.30 or not live:
            world.start(world.new_watcher())
        elif roll < 0.45:
            w = rng.choice(live)
            assert w.task is not None
            w.task.cancel()
            w.task = None
            if rng.random() < 0.5:  # the client retries at the same index
                again = Watcher(len(world.watchers), w.on_leader, w.stale, w.prefix, w.index, parked=w.parked)
                world.watchers.append(again)
                world.start(again)
        elif roll < 0.65:
            world.write(rng.choice(PREFIXES))
        elif roll < 0.80:
            if world.replicated < len(world.history):
                world.replicate_one()
        await _ticks(rng.randrange(5))
    while world.replicated < len(world.history):
        world.replicate_one()
    await _ticks(200)
    for w in world.live():
        current = world.expected(w.prefix, world.applied_on(w))[0]
        if w.index != current:
            world.failures.append(f"watcher {w.name} ({'leader' if w.on_leader else 'follower'}"
                                  f"{', stale' if w.stale else ''}) stuck at {w.index}, {w.prefix} is at {current}")
    for w in world.live():
        assert w.task is not None
        w.task.cancel()
    await _ticks(50)
    await asyncio.gather(*(w.task for w in world.watchers if w.task is not None), return_exceptions=True)
    # What the grace timer does: successors nobody came back to end (one still read is a leak).
    for server in (world.leader, world.follower):
        for parked in list(server._parked.values()):
            if parked.readers > 0:
                world.failures.append(f"parked read {parked.key} kept {parked.readers} readers after all left")
            parked.close_if_unused()
    return world


@pytest.mark.parametrize("seed", range(12))
async def test_shared_blocking_reads_miss_nothing_and_answer_nothing_early(seed: int) -> None:
    DOUBLE_CALLS.clear()
    world = await run_world(seed)
    assert not world.failures, world.failures[:5]
    assert not DOUBLE_CALLS
    assert sum(w.answers for w in world.watchers) > 0
    # Everyone hung up: nothing parked or forwarded is left behind on either server.
    assert world.leader.blocking_reads() == 0 and world.follower.blocking_reads() == 0
    assert not world.leader._parked and world.follower.forwarded_blocking_calls() == 0
    assert not world.pool.serving
    assert world.leader_store.watch_count() == 0 and world.follower_store.watch_count() == 0


async def test_readers_returning_at_the_answered_index_do_not_run_the_read_again() -> None:
    store = Store()
    server = Server(store, Consensus(True), "dc1")  # type: ignore[arg-type]
    runs = []

    def run(s: Store) -> tuple[int, Any]:
        runs.append(s.last_index)
        return s.kv_list("a/")

    async def read(index: int) -> QueryMeta:
        meta, _ = await server.read(QueryOptions(min_index=index, max_wait_s=60.0), run, WatchSet(kv_prefix="a/"),
                                    share_key="a/")
        return meta

    store.kv_set(1, DirEntry("a/x", b"1"))
    store.finish(1)
    first = [asyncio.ensure_future(read(1)) for _ in range(3)]
    await _ticks(3)
    assert len(runs) == 1  # one run for three identical readers
    store.kv_set(2, DirEntry("a/x", b"2"))
    store.finish(2)
    assert [m.index for m in await asyncio.gather(*first)] == [2, 2, 2]
    assert len(runs) == 2  # the wake-up's re-run
    again = [asyncio.ensure_future(read(2)) for _ in range(3)]
    await _ticks(3)
    assert len(runs) == 2  # they come back at index 2 and join the read parked there: no run
    store.kv_set(3, DirEntry("b/y", b"3"))  # not theirs
    store.finish(3)
    await _ticks(3)
    assert not any(t.done() for t in again)
    store.kv_set(4, DirEntry("a/z", b"4"))
    store.finish(4)
    assert [m.index for m in await asyncio.gather(*again)] == [4, 4, 4]


async def test_a_wake_up_answers_its_readers_in_batches_between_which_the_loop_runs_other_work() -> None:
    from proconsul.server import rpc

    store = Store()
    server = Server(store, Consensus(True), "dc1")  # type: ignore[arg-type]
    store.kv_set(1, DirEntry("a/x", b"1"))
    store.finish(1)
    n = rpc.WAKE_BATCH * 4 + 3
    readers = [asyncio.ensure_future(server.query("KVS.List", {"prefix": "a/"}, QueryOptions(min_index=1, max_wait_s=60.0)))
               for _ in range(n)]
    await _ticks(3)
    assert server.blocking_reads() == n
    store.kv_set(2, DirEntry("a/x", b"2"))
    store.finish(2)
    # Something else due on the loop (a Raft timer, a socket read): it runs after at most one batch.
    other_ran_after: list[int] = []
    asyncio.get_running_loop().call_soon(lambda: asyncio.get_running_loop().call_soon(
        lambda: other_ran_after.append(sum(r.done() for r in readers))))
    done_counts = []
    while not all(r.done() for r in readers):
        await asyncio.sleep(0)
        done_counts.append(sum(r.done() for r in readers))
    steps = [b - a for a, b in zip([0, *done_counts], done_counts)]
    assert max(steps) <= rpc.WAKE_BATCH, steps
    assert other_ran_after and other_ran_after[0] <= rpc.WAKE_BATCH
    assert {(await r)[0].index for r in readers} == {2}
