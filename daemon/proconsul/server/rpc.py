"""Server-side RPC endpoints and the blocking-query helper.

Owns what a server answers: named endpoints (`KVS.Get`, `Catalog.Register`, ...) that read the
state store under Consul's consistency modes or propose FSM commands through the replicated log,
and the blocking-query loop (`?index=&wait=`) that parks on store watches.

Identical parked blocking reads (same query, arguments, index and consistency mode) share one
parked read (`_Parked`): one store watch, one re-run when it fires, one answer object (which the
HTTP layer then encodes once, and the transport packs once for every RPC caller: `SharedBody`).
Once answered, the read parks again at its new index for a few seconds, so the readers coming
back with that index join it instead of re-running the read; the readers of one answer are woken
in batches, so the loop's sockets and timers (Raft's) run between them. A parked read goes when
its last reader does: a client that hangs up (its handler is cancelled) or a forwarding server
that gives up (the transport cancels the forwarded call) stops costing anything at once.
Blocking reads a follower forwards to the leader are shared the same way (`SharedCalls`: one
forwarded call per group of identical readers), as are a client agent's (server/remote.py).
A reader may also wait without a task of its own (`park_query`, a `ParkedRead` in the same
tables): the HTTP fast path parks a watcher that way on its connection (http/fast_blocking.py).

A follower forwards the writes it is handed to the leader in batches (server/forwarding.py: one
`Raft.ApplyBatch` call per loop iteration), which the leader proposes as one Raft batch and
answers together (`Server.apply_forwarded`).

Callers (the HTTP API, DNS, the agent's anti-entropy) go through `Server.read` and
`Server.write`. In a server agent these are in-process calls; the Raft and gossip issues add the
network path (forwarding to the leader, client agents calling a server) behind the same methods.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any, Protocol

from proconsul.malformed_log import MALFORMED
from proconsul.metrics import Metrics, Sample
from proconsul.metrics.registry import CounterBatch, SampleBatch, deferred_group
from proconsul.rpc_api import (
    CALLER_TOKEN,
    Consensus,
    NoLeader,
    NoPathToDatacenter,
    NotLeader,
    QueryMeta,
    QueryOptions,
    RPCError,
    RPCHandler,
    WriteMeta,
)
from proconsul.server import deadlines, queries
from proconsul.server.acl_rpc import RPCACL
from proconsul.server.forwarding import WriteForwarder
from proconsul.server.query_metrics import ServiceQueryCounters
from proconsul.state import commands
from proconsul.state.fsm import TxnError, TxnResult
from proconsul.state.records import DirEntry, HealthCheck, Node, ServiceInstance
from proconsul.state.store import Store, StoreError, WatchSet
from proconsul.wire import SharedBody

logger = logging.getLogger(__name__)

# Calls only another server of this datacenter makes: a raw Raft proposal or read forwarded to
# the leader, a voter joining, autopilot's health probe. With verify_incoming the transport
# answers them only over a connection whose certificate names server.<dc>.<domain> (clients
# reach the same operations through Client.Query / Client.Write, which the server checks itself).
SERVER_ONLY_METHODS: frozenset[str] = frozenset({"Raft.Apply", "Raft.ApplyBatch", "Query", "Raft.Join",
                                                 "Autopilot.ServerState"})

# A read is a function of the store returning (index, result).
ReadFn = Callable[[Store], tuple[int, Any]]
# `RaftLog.propose_now`: propose a command now and call back with ((index, result) | None, error);
# False when it cannot be proposed at once.
ProposeNow = Callable[[commands.Command, Callable[[tuple[int, Any] | None, BaseException | None], None]], bool]

# `RaftLog.propose_batch_now`: propose (command, bytes) pairs now and call back with
# (outcome per write | None, error of the whole batch); False when they cannot be proposed at once.
ProposeBatchNow = Callable[[list[tuple[commands.Command, bytes]],
                            Callable[[list[Any] | None, BaseException | None], None]], bool]


class ServerPool(Protocol):
    """RPC to the other servers of this datacenter (`transport.ConnectionPool`)."""

    async def call(self, address: str, method: str, body: Any, timeout_s: float = ...) -> Any: ...


class WANRouter(Protocol):
    """The servers of other datacenters, as a server forwards `?dc=` requests to them
    (`server.wan.Router`)."""

    def datacenters(self) -> list[str]: ...

    async def query(self, dc: str, name: str, args: dict[str, Any], opts: QueryOptions,
                    wait_s: float) -> tuple[QueryMeta, Any]: ...

    async def write(self, dc: str, command: commands.Command) -> tuple[WriteMeta, Any]: ...


class BootstrapReset(Protocol):
    """The leader's `acl-bootstrap-reset` file (server/acl_leader.BootstrapResetFile)."""

    def read(self) -> int: ...

    def remove(self) -> None: ...


# Jitter added to blocking waits, as a fraction of the wait (Consul's JitterFraction is 16).
JITTER_FRACTION = 16

# How long an answered shared read stays parked at its new index for its readers to come back.
SUCCESSOR_GRACE_S = 5.0

# Readers of one shared answer woken per event-loop iteration. Each woken reader then encodes
# and writes its answer in the same iteration; in batches, the loop polls its sockets and runs
# due timers (Raft heartbeats and elections among them) between batches, so a write that wakes
# thousands of watchers cannot hold them up past an election timeout.
WAKE_BATCH = 64


def wake_order(waiters: Iterable[Any]) -> list[Any]:
    """`waiters` in the order to wake them: futures (a task awaits each) before ParkedReads.

    A task awaiting a shared read is often the handler of a forwarded call (a follower's, a
    client agent's `Query`), whose answer then wakes that server's own watchers; a ParkedRead
    answers one watcher. In the table's order (who joined first), a follower's next forwarded
    call, sent once one of its watchers came back, sat behind most of the leader's own watchers,
    which come back sooner: woken batches later, its watchers answered that much after the
    leader's (issue 16: 37-400 ms at 10,000 watchers).
    """
    ahead = [w for w in waiters if type(w) is not ParkedRead]
    if not ahead:
        return list(waiters)
    return ahead + [w for w in waiters if type(w) is ParkedRead]


def wake_in_batches(waiters: list[asyncio.Future[Any]]) -> None:
    """Resolve `waiters` (their owners read the outcome elsewhere), WAKE_BATCH per iteration;
    pass them in `wake_order`."""
    for fut in waiters[:WAKE_BATCH]:
        if not fut.done():
            fut.set_result(None)
    if len(waiters) > WAKE_BATCH:
        asyncio.get_running_loop().call_soon(wake_in_batches, waiters[WAKE_BATCH:])


class _Parked:
    """One blocking read parked on the store for every reader waiting on the same answer.

    It holds one store watch; when that fires it re-runs the read once (soon after the write's
    command has applied, not inside it) and either answers every reader, when the index moved
    past theirs, or parks again. Readers leave on their own deadlines; the last one to leave
    drops the watch.
    """

    __slots__ = ("key", "store", "run", "watches", "min_index", "index", "result", "done", "error", "waiters",
                 "readers", "_watch", "_closed", "_on_close", "_on_answer", "_counters")

    def __init__(
        self, key: Any, store: Store, run: ReadFn, watches: WatchSet, min_index: int, index: int, result: Any,
        on_close: Callable[[_Parked], None], counters: tuple[Any, Any],
        on_answer: Callable[[_Parked], None] | None = None,
    ) -> None:
        self.key = key
        self._counters = counters  # (re-runs, re-runs that found nothing new)
        self.store, self.run, self.watches, self.min_index = store, run, watches, min_index
        self.index, self.result = index, result
        self.done = False  # answered (or failed): every reader is woken, in batches
        self.error: BaseException | None = None
        self.waiters: dict[asyncio.Future[None], None] = {}
        self.readers = 0
        self._closed = False
        self._on_close = on_close
        self._on_answer = on_answer
        self._watch: Any = store.watch_set(watches, self._fired)

    def _fired(self) -> None:
        self._watch = None
        asyncio.get_running_loop().call_soon(self._rerun)

    def _rerun(self) -> None:
        if self._closed:
            return
        if self.readers <= 0:  # a successor nobody joined: whoever comes runs the read afresh
            self.close()
            return
        try:
            index, result = self.run(self.store)
        except Exception as exc:  # every reader gets the error, as an unshared read would
            self.done, self.error = True, exc
            wake_in_batches(wake_order(self.waiters))
            self.close()
            return
        self.index, self.result = index, result
        self._counters[0].incr()
        if index > self.min_index:
            self.done = True
            wake_in_batches(wake_order(self.waiters))
            self.close()  # later readers with this index start afresh (the answer is already newer)
            if self._on_answer is not None:
                self._on_answer(self)
        else:
            self._counters[1].incr()  # woken for nothing: a write it does not read touched its watch
            self._watch = self.store.watch_set(self.watches, self._fired)

    def leave(self) -> None:
        self.readers -= 1
        if self.readers <= 0:
            self.close()

    def close_if_unused(self) -> None:
        if self.readers <= 0:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watch is not None:
            self.store.unwatch(self._watch)
            self._watch = None
        self._on_close(self)


class _SharedCall:
    __slots__ = ("key", "task", "callers", "waiters")

    def __init__(self, key: Any, task: asyncio.Future[Any]) -> None:
        self.key = key
        self.task = task
        self.callers = 0
        self.waiters: dict[asyncio.Future[None], None] = {}


class SharedCalls:
    """Identical calls in flight made once: the callers of one key share one task and its answer.

    Used for blocking reads forwarded to another server (a follower's to the leader, a client
    agent's to its server): a thousand watchers of one service cost one forwarded call, one
    answer to encode on the far side and one to decode here, and they all get the same answer
    object (so the HTTP layer encodes it once). Callers are woken in batches (see WAKE_BATCH). A
    caller that goes away leaves the others waiting; when the last one goes the call is
    cancelled (the transport then tells the far side to stop serving it) and leaves the table at
    once, so nobody joins a call being cancelled. A caller arriving after the answer starts a
    new call.
    """

    def __init__(self) -> None:
        self._calls: dict[Any, _SharedCall] = {}

    def __len__(self) -> int:
        return len(self._calls)

    async def call(self, key: Any, start: Callable[[], Awaitable[Any]]) -> Any:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        shared = self.join(key, start, waiter)
        try:
            # Our own future, not the task: one caller going away must not cancel the call the
            # others wait on.
            await waiter
            return shared.task.result()
        finally:
            self.leave(shared, waiter)

    def join(self, key: Any, start: Callable[[], Awaitable[Any]], waiter: Any) -> _SharedCall:
        """Add `waiter` (a future, or anything with `done()` and `set_result(None)`) to the call
        of `key`, starting one if none is in flight; it is woken when the call ends. Every
        joiner must `leave` once, woken or not."""
        shared = self._calls.get(key)
        # A finished call leaves the table a moment later (done callbacks run on the next loop
        # iteration); its answer is not this caller's: it may be a wait that ran out.
        if shared is None or shared.task.done():
            shared = _SharedCall(key, asyncio.ensure_future(start()))
            self._calls[key] = shared
            shared.task.add_done_callback(lambda _t, shared=shared: self._done(shared))
        shared.callers += 1
        shared.waiters[waiter] = None
        return shared

    def leave(self, shared: _SharedCall, waiter: Any) -> None:
        """`waiter` is done with `shared`; the last one to leave an unfinished call cancels it."""
        shared.waiters.pop(waiter, None)
        shared.callers -= 1
        if shared.callers <= 0 and not shared.task.done():
            self._drop(shared)
            shared.task.cancel()

    def _drop(self, shared: _SharedCall) -> None:
        if self._calls.get(shared.key) is shared:
            del self._calls[shared.key]

    def _done(self, shared: _SharedCall) -> None:
        self._drop(shared)
        if not shared.task.cancelled():
            shared.task.exception()  # retrieved: callers that left early must not leave it unreported
        wake_in_batches(wake_order(shared.waiters))


# What a ParkedRead's `on_done` receives: the answer, or the exception `query` would have raised.
ParkedOutcome = tuple[QueryMeta, Any] | BaseException


class ParkedRead:
    """One blocking read parked without a task of its own (`Server.park_query`: the HTTP fast
    path's), beside the readers that await one.

    It waits in the same tables as those readers: a shared parked read's waiters here, a shared
    forwarded call's on a follower, looking like their futures (`done`, `set_result`), so one
    wake-up answers both kinds alike, in the same batches. When woken, when its wait runs out
    (a parked read here) or never, if its client goes away first (`cancel`), it leaves its table
    and calls `on_done` once with the outcome; a cancelled read calls nothing.

    Kept small for the cyclic collector (10,000 of them are parked at once on a busy server, and
    every complete scan walks each): no timer of its own (its wait is an entry in the loop's
    shared `deadlines` table) and no bound methods (it keeps the server, and `on_done` with the
    object it is called on).
    """

    __slots__ = ("_server", "_owner", "_on_done", "_finished", "_parked", "_consistency", "_slot", "_calls",
                 "_call", "_count_name", "_count_args")

    def __init__(self, server: Server, on_done: Callable[..., None], owner: Any = None) -> None:
        self._server = server  # its QueryMeta for an index and mode; told when a parked reader leaves
        self._owner = owner  # when set, `on_done(owner, outcome)`; else `on_done(outcome)`
        self._on_done = on_done
        self._finished = False
        self._parked: _Parked | None = None
        self._consistency = ""
        self._slot = -1  # its place in the loop's deadline table while it waits there
        self._calls: SharedCalls | None = None
        self._call: _SharedCall | None = None
        # The service-query counters this read's answer goes to (`count_as`; None: not counted).
        self._count_name: str | None = None
        self._count_args: dict[str, Any] | None = None

    def count_as(self, name: str, args: dict[str, Any]) -> None:
        """Count the answer as the read `name` with `args` (the server's service-query counters)."""
        self._count_name, self._count_args = name, args

    def done(self) -> bool:
        return self._finished

    def join_forwarded(self, calls: SharedCalls, key: Any, start: Callable[[], Awaitable[Any]]) -> None:
        """Wait on the shared forwarded call `key` (a follower's), started by `start` if new."""
        self._calls = calls
        self._call = calls.join(key, start, self)

    def wait_on(self, parked: _Parked, consistency: str, wait_s: float) -> None:
        """Wait in `parked`'s table (the server added it there) until woken or `wait_s` passed."""
        self._parked, self._consistency = parked, consistency
        loop = asyncio.get_running_loop()
        if parked.done:  # answered, its readers being woken in batches: this one with them
            loop.call_soon(self._finish)
        else:
            self._slot = deadlines.for_loop(loop).add(self, loop.time() + wait_s)

    def deadline_expired(self, _now: float) -> None:
        """The wait ran out (the `deadlines` table calls this)."""
        self._slot = -1
        self._finish()

    def set_result(self, _value: Any) -> None:
        """Woken (the shared read answered or failed, the forwarded call ended)."""
        self._finish()

    def cancel(self) -> None:
        """The client went away: leave without an answer (the last reader drops the watch, the
        last caller of a forwarded call cancels it, and the leader stops serving it)."""
        if not self._finished:
            self._finished = True
            self._leave()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            outcome: ParkedOutcome = self._outcome()
        except Exception as exc:  # the re-run's or the forwarded call's error
            outcome = exc
        owner = self._owner
        if self._count_name is not None and isinstance(outcome, tuple):  # an error counts nothing
            self._server.count_service_query(self._count_name, self._count_args or {}, outcome[1])
        self._leave()  # (drops the owner: no cycle left with a connection that keeps this read)
        try:
            if owner is not None:
                self._on_done(owner, outcome)
            else:
                self._on_done(outcome)
        except Exception:  # one reader's failure must not keep the rest of its batch asleep
            logger.exception("rpc: answering a parked blocking read failed")

    def _outcome(self) -> tuple[QueryMeta, Any]:
        parked = self._parked
        if parked is not None:
            if parked.error is not None:
                raise parked.error
            return self._server.meta_for(parked.index, self._consistency), parked.result
        assert self._call is not None
        if not self._call.task.done():  # cannot happen: woken only by the call's end
            raise RPCError("forwarded blocking read ended without an answer")
        return self._call.task.result()  # type: ignore[no-any-return]

    def _leave(self) -> None:
        if self._slot >= 0:
            deadlines.for_loop(asyncio.get_running_loop()).remove(self, self._slot)
            self._slot = -1
        parked, self._parked = self._parked, None
        if parked is not None:
            parked.waiters.pop(self, None)  # type: ignore[call-overload]
            parked.leave()
            self._server.parked_reader_left()
        call, self._call = self._call, None
        if call is not None and self._calls is not None:
            self._calls.leave(call, self)
        self._owner = None


class Server:
    """A server's RPC surface for one datacenter (the in-process `rpc_api.ServerAccess`).

    Args:
        store, consensus, datacenter: the replicated state, its log, and our datacenter.
        default_query_time_s, max_query_time_s: a blocking read's default and longest wait.
        voter_refusal: Raft.Join's gate (server/admission.py): why a (node ID, address) may not
            become a voter, "" when it may. None where no other server can join (dev mode, tests).
        metrics: where the RPC counters go (None: a private registry nobody reads).
        pool: RPC to the other servers of this datacenter, for forwarding to the leader; None
            without a Raft cluster (dev mode), where this server always leads.
        router: the WAN router to other datacenters' servers; None without a WAN pool.
        rpc_hold_timeout_s: how long a request waits for a leader during an election before
            failing (Consul's performance.rpc_hold_timeout).
        identity: what `Status.Identify` answers (server/cluster.py's `server_identity`).
        authorize_write: with ACLs on, raises RPCError unless the token may apply the command
            (client agents' writes, and writes forwarded by another server); None with ACLs off.
        authorize_write_now: `authorize_write` without waiting, for the leader's task-less
            `Raft.ApplyBatch`: "" when the token allows the command, the refusal text when it
            does not, None when it cannot tell without resolving the token (the batch then takes
            `authorize_write`). None: every batch with ACLs on takes the task path.
        acl_gate: with ACLs on, the token every call to another server carries and the check of
            the reads that arrive over RPC (server/acl_rpc.py); None with ACLs off.
        acl_bootstrap_reset: the leader's `<data_dir>/acl-bootstrap-reset`
            (server/acl_leader.BootstrapResetFile); None without ACLs or a data directory.
        unsafe_follower_local_reads: test-only broken build: default reads on a follower are
            served from its own store, as if ?stale. Lets the chaos suite prove its
            linearizability checker catches a real bug.
        unsafe_reads_before_first_apply: test-only broken build: a new leader answers default
            reads before its term's first apply; the read-your-writes checker catches it.
    """

    # The catalog is here (a client agent's RemoteServer says True: ask a server instead).
    catalog_is_remote = False

    def __init__(
        self,
        store: Store,
        consensus: Consensus,
        datacenter: str,
        default_query_time_s: float = 300.0,
        max_query_time_s: float = 600.0,
        rng: random.Random | None = None,
        voter_refusal: Callable[[str, str], str] | None = None,
        metrics: Metrics | None = None,
        *,
        pool: ServerPool | None = None,
        router: WANRouter | None = None,
        rpc_hold_timeout_s: float = 7.0,
        identity: dict[str, Any] | None = None,
        authorize_write: Callable[[str, commands.Command], Awaitable[None]] | None = None,
        authorize_write_now: Callable[[str, commands.Command], str | None] | None = None,
        acl_gate: RPCACL | None = None,
        acl_bootstrap_reset: BootstrapReset | None = None,
        unsafe_follower_local_reads: bool = False,
        unsafe_reads_before_first_apply: bool = False,
        propose_now: ProposeNow | None = None,
        propose_batch_now: ProposeBatchNow | None = None,
    ) -> None:
        self.store = store
        # The Raft log's task-less proposal (`RaftLog.propose_now`), for `write_now`; None where
        # the consensus proposes only through a coroutine (a single voter, a client agent).
        self._propose_now = propose_now
        # Its batch form (`RaftLog.propose_batch_now`), for `apply_forwarded_now`; None likewise.
        self._propose_batch_now = propose_batch_now
        self.voter_refusal = voter_refusal
        self.consensus = consensus
        self.datacenter = datacenter
        self.default_query_time_s = default_query_time_s
        self.max_query_time_s = max_query_time_s
        self.rng = rng or random.Random()
        self.router = router
        self.pool = pool
        self.rpc_hold_timeout_s = rpc_hold_timeout_s
        self.identity: dict[str, Any] = identity or {}
        # Extra RPC methods registered by other parts (`register`: session renewals, events, ...).
        self.handlers: dict[str, RPCHandler] = {}
        self.acl_bootstrap_reset = acl_bootstrap_reset
        self.authorize_write = authorize_write
        self.authorize_write_now = authorize_write_now
        self.acl_gate = acl_gate
        self.unsafe_follower_local_reads = unsafe_follower_local_reads
        self.unsafe_reads_before_first_apply = unsafe_reads_before_first_apply
        m = metrics or Metrics()  # without a registry (tests): a private one nobody reads
        self._m_request = m.counter("rpc", "request", help="reads and writes this server was asked to serve")
        self._m_query = m.counter("rpc", "query", help="read queries (blocking or not) this server answered")
        self._m_request_error = m.counter("rpc", "request_error", help="RPCs from other agents answered with an error")
        self._m_blocking = m.gauge("rpc", "queries_blocking", help="blocking queries waiting for a change")
        self._service_queries = ServiceQueryCounters(m)  # health/catalog.service.* by service
        self._blocking = 0
        self._parked_counters = (
            m.counter("rpc", "queries_blocking_rerun", help="re-runs of parked blocking reads after a change they watch"),
            m.counter("rpc", "queries_blocking_unchanged",
                      help="re-runs of parked blocking reads that found nothing new (woken for nothing)"),
        )
        # Parked blocking reads shared by identical readers: (query, args, index, consistency).
        self._parked: dict[Any, _Parked] = {}
        self.successor_grace_s = SUCCESSOR_GRACE_S
        # Blocking reads forwarded to the leader, shared the same way: (leader, query, args, options).
        self._forwarding = SharedCalls()
        # Writes forwarded to the leader, in one Raft.ApplyBatch call per loop iteration and leader.
        self.write_forwarder = WriteForwarder(pool) if pool is not None else None
        # `write_now`'s forwarded writes that a refusal sent on to the next leader, in tasks.
        self._retries: set[asyncio.Task[None]] = set()
        # Consul times each endpoint's apply where it proposes (the leader); by command type.
        self._m_apply_by_type: dict[type, Sample] = {
            commands.KVS: m.sample("kvs", "apply", help="ms to apply a KV write through Raft"),
            commands.Txn: m.sample("txn", "apply", help="ms to apply a transaction through Raft"),
            commands.Register: m.sample("catalog", "register", help="ms to apply a catalog register through Raft"),
            commands.Deregister: m.sample("catalog", "deregister", help="ms to apply a catalog deregister through Raft"),
            commands.SessionOp: m.sample("session", "apply", help="ms to apply a session create/destroy through Raft"),
            commands.PreparedQueryOp: m.sample("prepared-query", "apply",
                                               help="ms to apply a prepared query create/update/delete through Raft"),
        }
        # `write_now`'s per-write recordings of the same two metrics, made once per loop iteration.
        batched = deferred_group()
        self._m_kvs_apply_now = SampleBatch(self._m_apply_by_type[commands.KVS], batched)
        self._m_request_now = CounterBatch(self._m_request, batched)

    # ---------------------------------------------------------------------------------- reads

    def _meta(self, index: int, consistency: str) -> QueryMeta:
        c = self.consensus
        # X-Consul-Index must never be 0: clients treat 0 as "no blocking support" and spin.
        return QueryMeta(max(index, 1), bool(c.leader_address()), c.last_contact_ms(), consistency)

    async def query(self, name: str, args: dict[str, Any], opts: QueryOptions) -> tuple[QueryMeta, Any]:
        """Answer the named read `name` (see `proconsul.server.queries`) under `opts`."""
        self._m_request.incr()
        spec = queries.spec(name)
        if opts.datacenter and opts.datacenter != self.datacenter:
            return await self._forward_dc(opts.datacenter, name, args, opts)

        def run(store: Store) -> tuple[int, Any]:
            return spec.run(store, args)

        if self.unsafe_follower_local_reads and not opts.require_consistent and not self.consensus.is_leader():
            opts = replace(opts, allow_stale=True)
        if opts.too_stale(self.consensus.last_contact_ms()):
            # ?max_stale: this server has not heard from the leader for too long; the leader answers.
            opts = replace(opts, allow_stale=False, max_stale_s=0.0)
        if not opts.allow_stale and not self.consensus.is_leader() and self.pool is not None:
            leader = await self.wait_for_leader()
            if not self.consensus.is_leader():
                if opts.min_index > 0:
                    return await self._forward_query_shared(leader, name, args, opts)
                return await self._forward_query(leader, name, args, opts)
        share = (name, args_key(args)) if opts.min_index > 0 else None
        meta, result = await self.read(opts, run, spec.watch_set(args), share_key=share)
        if opts.too_stale(meta.last_contact_ms) and self.pool is not None:
            # Contact was lost while a blocking read waited: ask the leader now, without blocking
            # (as Consul retries once; the client sees the leader's index and blocks again).
            return await self.query(name, args, replace(opts, allow_stale=False, max_stale_s=0.0, min_index=0))
        self._service_queries.record(name, args, result)
        return meta, result

    async def _wait_ready_for_reads(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.rpc_hold_timeout_s
        while not self.consensus.ready_for_reads():
            if not self.consensus.is_leader():
                raise NotLeader(self.consensus.leader_address())
            if loop.time() >= deadline:
                raise NoLeader()
            await asyncio.sleep(0.01)

    async def wait_for_leader(self) -> str:
        """The leader's address, waiting up to rpc_hold_timeout for an election to finish."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.rpc_hold_timeout_s
        while True:
            if self.consensus.is_leader():
                return ""
            addr = self.consensus.leader_address()
            if addr:
                return addr
            if loop.time() >= deadline:
                raise NoLeader()
            await asyncio.sleep(0.05)

    async def _forward_query(self, leader: str, name: str, args: dict[str, Any], opts: QueryOptions) -> tuple[QueryMeta, Any]:
        body = {
            "name": name,
            "args": args,
            "opts": opts.wire(),
        }
        if self.acl_gate is not None:
            body["token"] = self.acl_gate.outgoing_token()  # the leader authorises it
        timeout = (self.wait_time(opts) if opts.min_index else 0) + 30.0
        try:
            reply = await self.pool.call(leader, "Query", body, timeout_s=timeout)
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise RPCError(f"rpc error forwarding to the leader {leader}: {exc}") from None
        except Exception as exc:  # RemoteError: the leader's own answer
            raise RPCError(str(exc)) from None
        index, known_leader, _, consistency = reply["meta"]
        # Our own last contact with the leader is what X-Consul-LastContact reports.
        return QueryMeta(index, known_leader, self.consensus.last_contact_ms(), consistency,
                         "filtered" in reply), reply["result"]

    async def _forward_query_shared(self, leader: str, name: str, args: dict[str, Any],
                                    opts: QueryOptions) -> tuple[QueryMeta, Any]:
        """A blocking read forwarded to the leader once for every identical reader here: the
        leader serves and answers it once, this server decodes it once, and every reader gets
        the same answer object (so the HTTP layer encodes it once too). See SharedCalls."""
        key = (leader, name, args_key(args), tuple(opts.wire()),
               self.acl_gate.outgoing_token() if self.acl_gate is not None else None)  # answers differ by token
        return await self._forwarding.call(key, lambda: self._forward_query(leader, name, args, opts))  # type: ignore[no-any-return]

    def forwarded_blocking_calls(self) -> int:
        """Blocking reads this server is forwarding to the leader (one per group of identical readers)."""
        return len(self._forwarding)

    async def _forward_dc(self, dc: str, name: str, args: dict[str, Any], opts: QueryOptions) -> tuple[QueryMeta, Any]:
        if self.router is None:
            raise NoPathToDatacenter(dc)
        return await self.router.query(dc, name, args, opts, self.wait_time(opts) if opts.min_index else 0.0)

    async def list_datacenters(self) -> list[str]:
        return self.known_datacenters()

    def known_datacenters(self) -> list[str]:
        """Ours, and every other the WAN pool knows."""
        return self.router.datacenters() if self.router is not None else [self.datacenter]

    def wait_time(self, opts: QueryOptions) -> float:
        """The blocking deadline in seconds: ?wait (default and cap from config) plus jitter."""
        wait = opts.max_wait_s or self.default_query_time_s
        wait = min(wait, self.max_query_time_s)
        return wait + self.rng.uniform(0, wait / JITTER_FRACTION)

    async def read(
        self,
        opts: QueryOptions,
        run: ReadFn,
        tables: Iterable[str] | WatchSet,
        kv_prefix: str | None = None,
        share_key: Any = None,
    ) -> tuple[QueryMeta, Any]:
        """Answer a read under `opts`, blocking while the result's index is <= opts.min_index.

        `tables` (with `kv_prefix`) or a WatchSet says what wakes a blocked read. Readers that
        pass the same `share_key` (equal for reads that answer alike) share one parked read.
        """
        self._m_query.incr()
        c = self.consensus
        if opts.allow_stale:
            consistency = "stale"
        else:
            if not c.is_leader():
                if not c.leader_address():
                    raise NoLeader()
                raise NotLeader(c.leader_address())
            consistency = "leader"
            if not c.ready_for_reads() and not self.unsafe_reads_before_first_apply:
                # A new leader answers only after committing an entry of its term; until then
                # its store may miss writes its predecessor acknowledged (found by tests/sim).
                await self._wait_ready_for_reads()
            if opts.require_consistent:
                await c.verify_leader()
                consistency = "consistent"
        watches = tables if isinstance(tables, WatchSet) else WatchSet(tuple(tables), kv_prefix)
        key = None if share_key is None or opts.min_index <= 0 else (share_key, opts.min_index, consistency)
        # An identical read already parked: nothing it reads has changed since its last run (or
        # its re-run is on its way), so this reader joins it without running the read again.
        parked = self._parked.get(key) if key is not None else None
        if parked is None:
            index, result = run(self.store)
            if opts.min_index <= 0 or index > opts.min_index:
                return self._meta(index, consistency), result
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_time(opts)
        if parked is None:
            parked = self._new_parked(key, run, watches, opts.min_index, index, result)
        parked.readers += 1
        waiter: asyncio.Future[None] = loop.create_future()
        parked.waiters[waiter] = None
        self._blocking += 1
        self._m_blocking.set(self._blocking)
        try:
            remaining = deadline - loop.time()
            if remaining > 0 and not parked.done:
                await asyncio.wait((waiter,), timeout=remaining)
            if parked.error is not None:
                raise parked.error  # the re-run failed: every reader gets its error, as an unshared read would
            return self._meta(parked.index, consistency), parked.result
        finally:
            parked.waiters.pop(waiter, None)
            parked.leave()
            self._blocking -= 1
            self._m_blocking.set(self._blocking)

    def _new_parked(self, key: Any, run: ReadFn, watches: WatchSet, min_index: int, index: int,
                    result: Any) -> _Parked:
        parked = _Parked(key, self.store, run, watches, min_index, index, result, self._unpark,
                         self._parked_counters, self._park_successor if key is not None else None)
        if key is not None:
            self._parked[key] = parked
        return parked

    def count_service_query(self, name: str, args: dict[str, Any], result: Any) -> None:
        """Count an answered health/catalog service read (a parked one's, when it answers)."""
        self._service_queries.record(name, args, result)

    def park_query(self, name: str, args: dict[str, Any], opts: QueryOptions,
                   on_done: Callable[..., None],
                   args_text: str | None = None, owner: Any = None) -> tuple[QueryMeta, Any] | ParkedRead | None:
        """`query` for a blocking read (`opts.min_index` > 0), without a task: the answer now
        when there is one, else a ParkedRead that calls `on_done` with it later; None when only
        `query` serves this read (another datacenter, `?consistent`, a `max_stale` bound, no
        leader known yet, a new leader not ready for reads, the test-only unsafe modes).

        A reader parked here shares the parked read (or, on a follower, the forwarded call) of
        identical readers awaiting `query`, and its answer object: what the HTTP fast path needs
        to answer thousands of watchers of one change with one encoding and no task each.
        `args_text`: `args_key(args)`, when the caller keeps it. `owner`: when given, the
        outcome comes as `on_done(owner, outcome)` (a plain function and its object: no bound
        method kept per parked read).
        """
        c = self.consensus
        if (opts.min_index <= 0 or (opts.datacenter and opts.datacenter != self.datacenter)
                or opts.require_consistent or opts.max_stale_s > 0
                or self.unsafe_follower_local_reads or self.unsafe_reads_before_first_apply):
            return None
        spec = queries.spec(name)
        if args_text is None:
            args_text = args_key(args)
        reader = ParkedRead(self, on_done, owner)
        if (opts.allow_stale or c.is_leader()) and self._service_queries.counts(name):
            reader.count_as(name, args)  # answered here (a forwarded read is the leader's to count)
        if not opts.allow_stale and not c.is_leader():
            leader = c.leader_address()
            if self.pool is None or not leader:
                return None  # `query` waits for an election (or answers that there is no leader)
            self._m_request.incr()
            # Joined to the call identical readers awaiting `query` share (_forward_query_shared).
            key = (leader, name, args_text, tuple(opts.wire()))
            reader.join_forwarded(self._forwarding, key, lambda: self._forward_query(leader, name, args, opts))
            return reader
        if not opts.allow_stale and not c.ready_for_reads():
            return None
        self._m_request.incr()
        self._m_query.incr()
        consistency = "stale" if opts.allow_stale else "leader"

        def run(store: Store) -> tuple[int, Any]:
            return spec.run(store, args)

        key = ((name, args_text), opts.min_index, consistency)
        parked = self._parked.get(key)
        if parked is None:
            index, result = run(self.store)
            if index > opts.min_index:
                self._service_queries.record(name, args, result)
                return self._meta(index, consistency), result
            parked = self._new_parked(key, run, spec.watch_set(args), opts.min_index, index, result)
        parked.readers += 1
        parked.waiters[reader] = None  # type: ignore[index]
        self._blocking += 1
        self._m_blocking.set(self._blocking)
        reader.wait_on(parked, consistency, self.wait_time(opts))
        return reader

    def meta_for(self, index: int, consistency: str) -> QueryMeta:
        """The QueryMeta of an answer at `index` in `consistency` mode (a ParkedRead's)."""
        return self._meta(index, consistency)

    def parked_reader_left(self) -> None:
        """A ParkedRead left its shared parked read's table."""
        self._blocking -= 1
        self._m_blocking.set(self._blocking)

    def _park_successor(self, answered: _Parked) -> None:
        """Park the read again at the index it just answered with, before anyone asks.

        Every reader it answered comes back at once with that index (a watcher's next request,
        a follower's next forwarded call); without this the first of them re-runs the read the
        wake-up just ran. The successor holds the answer and a store watch from the moment of
        the re-run, so a write in between wakes it as it would a reader parked then; nobody
        joining within `successor_grace_s` (or a write coming first) ends it.
        """
        share, _, consistency = answered.key
        key = (share, answered.index, consistency)
        if key in self._parked:
            return
        successor = _Parked(key, self.store, answered.run, answered.watches, answered.index, answered.index,
                            answered.result, self._unpark, self._parked_counters, self._park_successor)
        self._parked[key] = successor
        asyncio.get_running_loop().call_later(self.successor_grace_s, successor.close_if_unused)

    def _unpark(self, parked: _Parked) -> None:
        if parked.key is not None and self._parked.get(parked.key) is parked:
            del self._parked[parked.key]

    def blocking_reads(self) -> int:
        """Readers waiting in a blocking query here (identical ones share one store watch)."""
        return self._blocking

    # --------------------------------------------------------------------------------- writes

    async def write(self, command: commands.Command, datacenter: str = "") -> tuple[WriteMeta, Any]:
        """Propose `command`; returns the index it was applied at and the FSM's result.

        A StoreError from the FSM is raised here, so the HTTP layer reports it as Consul does.
        With another `datacenter`, a server of that datacenter proposes it (WAN forwarding).
        """
        self._m_request.incr()
        if datacenter and datacenter != self.datacenter:
            if self.router is None:
                raise NoPathToDatacenter(datacenter)
            return await self.router.write(datacenter, command)
        if not self.consensus.is_leader():
            if self.pool is None:
                if not self.consensus.leader_address():
                    raise NoLeader()
                raise NotLeader(self.consensus.leader_address())
            leader = await self.wait_for_leader()
            if leader:
                return await self._forward_write_retrying(leader, command)
        try:
            index, result = await self._apply(command)
        except NotLeader:
            if self.pool is None:
                raise
            leader = await self.wait_for_leader()
            if not leader:
                raise
            return await self._forward_write_retrying(leader, command)
        if isinstance(result, StoreError):
            raise result
        return WriteMeta(index), result

    def write_now(self, command: commands.Command,
                  done: Callable[[WriteMeta | None, Any, BaseException | None], None]) -> bool:
        """`write` of a KV operation without a coroutine (the HTTP fast path's PUT: no task
        and no chain of awaits per write): on the leader, proposes `command` now; on a follower
        that knows its leader, hands it to the write forwarder (`WriteForwarder.submit_now`);
        then calls `done(meta, result, None)` once it applied, or `done(None, None, error)` with
        what `write` would raise; never from inside this call. False, with nothing proposed or
        sent, when `write` must do it: another kind of command, a leader whose consensus
        proposes only through a coroutine, a leadership transfer running, a follower without a
        known leader (`write` waits for the election) or without a pool."""
        if type(command) is not commands.KVS:
            return False
        if not self.consensus.is_leader():
            return self._forward_now(command, done)
        propose_now = self._propose_now
        if propose_now is None:
            return False
        timer = self._m_kvs_apply_now
        start = time.perf_counter()

        def applied(out: tuple[int, Any] | None, exc: BaseException | None) -> None:
            if out is None:
                done(None, None, exc)
                return
            timer.since(start)  # as `_propose`: the successful applies only
            index, result = out
            if isinstance(result, StoreError):
                done(None, None, result)
            else:
                done(WriteMeta(index), result, None)

        if not propose_now(command, applied):
            return False
        self._m_request_now.incr()
        return True

    def _forward_now(self, command: commands.KVS,
                     done: Callable[[WriteMeta | None, Any, BaseException | None], None]) -> bool:
        """`write_now` on a follower: the forwarding `write` does (`_forward_write_retrying`),
        with the first attempt settled by a callback; a refusal before proposing (NotLeader)
        goes on in a task, as `write`'s retry loop, within the same rpc_hold_timeout."""
        forwarder = self.write_forwarder
        if forwarder is None:
            return False
        leader = self.consensus.leader_address()
        if not leader:
            return False
        try:
            data = commands.encode(command)
        except Exception:
            return False  # `write` raises it
        token = self.acl_gate.outgoing_token() if self.acl_gate is not None else None  # the leader authorises it
        deadline = asyncio.get_running_loop().time() + self.rpc_hold_timeout_s

        def settled(outcome: tuple[int, Any] | None, exc: BaseException | None) -> None:
            if outcome is not None:
                result = outcome[1]
                if isinstance(result, dict):  # only a transaction's result needs decoding (a KV op's is a bool)
                    try:
                        result = decode_result(result)
                    except Exception as bad:
                        done(None, None, bad)
                        return
                done(WriteMeta(outcome[0]), result, None)
            elif isinstance(exc, NotLeader) and asyncio.get_running_loop().time() < deadline:
                self._retry_forward(leader, command, deadline, done)
            else:
                done(None, None, exc)

        self._m_request_now.incr()  # counted once per loop iteration, as the leader's `write_now`
        forwarder.submit_now(leader, data, token, settled)
        return True

    def _retry_forward(self, leader: str, command: commands.Command, deadline: float,
                       done: Callable[[WriteMeta | None, Any, BaseException | None], None]) -> None:
        async def retry() -> None:
            try:
                meta, result = await self._forward_write_retrying(leader, command, deadline, refused=True)
            except asyncio.CancelledError as exc:
                done(None, None, exc)  # nothing to answer, as when `write`'s task is cancelled
                raise
            except Exception as exc:
                done(None, None, exc)
            else:
                done(meta, result, None)

        task = asyncio.get_running_loop().create_task(retry())
        self._retries.add(task)  # held until it ends (the loop keeps only weak references)
        task.add_done_callback(self._retries.discard)

    async def _apply(self, command: commands.Command, encoded: bytes | None = None) -> tuple[int, Any]:
        """Propose on this server (the leader). An ACL bootstrap takes its reset index from this
        server's `acl-bootstrap-reset` file, as Consul's leader reads it, and the file goes once used."""
        reset = self.acl_bootstrap_reset
        if reset is not None and isinstance(command, commands.ACLOp) and command.op == commands.ACLOpKind.BOOTSTRAP:
            token, given = command.payload
            index = int(given) or reset.read()
            command = commands.ACLOp(command.op, [token, index])
            out = await self._propose(command)
            if index and not isinstance(out[1], StoreError):
                reset.remove()
            return out
        return await self._propose(command, encoded)

    async def _propose(self, command: commands.Command, encoded: bytes | None = None) -> tuple[int, Any]:
        timer = self._m_apply_by_type.get(type(command))
        if timer is None:
            return await self.consensus.apply(command, encoded)
        start = time.perf_counter()
        out = await self.consensus.apply(command, encoded)
        timer.since(start)
        return out

    async def _forward_write_retrying(self, leader: str, command: commands.Command, deadline: float | None = None,
                                      refused: bool = False) -> tuple[WriteMeta, Any]:
        """Forward a write; when the server we took for the leader answers that it is not (a
        leadership transfer or election moved it, and nothing was proposed), forward to the new
        leader, within rpc_hold_timeout (until `deadline`, when given). `refused`: `leader`
        has refused it already (`write_now`'s first attempt), so look for the next one."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.rpc_hold_timeout_s
        while True:
            if not refused:
                try:
                    return await self._forward_write(leader, command)
                except NotLeader:
                    if loop.time() >= deadline:
                        raise
            refused = False
            stale = leader
            while True:
                await asyncio.sleep(0.02)
                if self.consensus.is_leader():
                    return await self.write(command)
                leader = self.consensus.leader_address()
                if (leader and leader != stale) or loop.time() >= deadline:
                    break
            if not leader:
                raise NoLeader()

    async def _forward_write(self, leader: str, command: commands.Command) -> tuple[WriteMeta, Any]:
        """Send a write to the leader once (a follower never forwards a forwarded write): with
        the other writes forwarded in this loop iteration, in one call (server/forwarding.py).
        Raises NotLeader only when the leader refused it before proposing it."""
        assert self.write_forwarder is not None, "forwarding needs a pool"
        token = self.acl_gate.outgoing_token() if self.acl_gate is not None else None  # the leader authorises it
        index, result = await self.write_forwarder.submit(leader, commands.encode(command), token)
        return WriteMeta(index), decode_result(result)

    async def apply_forwarded(self, body: Any) -> dict[str, Any]:
        """`Raft.ApplyBatch`: the writes a follower forwarded together ({"commands": [bytes]}),
        proposed as one Raft batch and answered together once all of them applied:
        {"results": [...]}, per write `[index, result]` or the text of the error its own
        `Raft.Apply` would have answered. The whole batch is refused (NotLeader) only before
        any of it is proposed, so the follower may resend it; after that, every write gets its
        own outcome (an unknown one if leadership is lost before it applies)."""
        if not self.consensus.is_leader():
            raise NotLeader(self.consensus.leader_address())
        out, batch, slots, one_by_one = self._forwarded_batch(body)
        self._m_request.incr(len(out))  # one request per write, as separate Raft.Apply calls count
        start = time.perf_counter()
        outcomes: list[Any] = []
        if batch and not one_by_one:
            try:
                outcomes = await self.consensus.apply_batch(batch)
            except NotLeader:
                raise
            except RPCError:
                # Nothing proposed (a leadership transfer is running): each write waits it out
                # as a single Raft.Apply would.
                one_by_one = True
        if one_by_one:
            outcomes = await asyncio.gather(*(self._apply_one(c, d) for c, d in batch))
        return self._forwarded_reply(out, slots, batch, outcomes, start, one_by_one)

    def apply_forwarded_now(self, body: Any, answer: Callable[[Any, BaseException | None], None]) -> bool:
        """`apply_forwarded` without a task (the RPC connection's reader hands it over): the
        batch is proposed now (`RaftLog.propose_batch_now`) and `answer(reply, None)` or
        `answer(None, error)` is called once its last entry is settled; never from inside this
        call. False, with nothing proposed or counted, when `_apply_forwarded_authorized` or
        `apply_forwarded` must do it (and answer its refusals): not the leader, a batch that
        must go write by write, a leadership transfer running, a malformed body; with ACLs on,
        a token not resolved yet (`authorize_write_now` answered None) or every write refused.
        With ACLs on, each write is authorised with its token as `_apply_forwarded_authorized`
        does, and a refused write is answered with the refusal, in its place."""
        propose = self._propose_batch_now
        if propose is None or not self.consensus.is_leader():
            return False
        refused: dict[int, str] = {}
        raw: list[Any] = []
        if self.authorize_write is not None:
            checked = self._refusals_now(body)
            if checked is None:
                return False
            raw, refused = checked
            if refused:
                if len(refused) == len(raw):
                    return False  # nothing to propose: the task path answers the refusals
                body = {"commands": [data for i, data in enumerate(raw) if i not in refused]}
        try:
            out, batch, slots, one_by_one = self._forwarded_batch(body)
        except Exception:
            return False
        if one_by_one or not batch:
            return False
        start = time.perf_counter()

        def applied(outcomes: list[Any] | None, exc: BaseException | None) -> None:
            if exc is None:
                assert outcomes is not None
                try:
                    reply = self._forwarded_reply(out, slots, batch, outcomes, start, False)
                    if refused:
                        answers = iter(reply["results"])
                        reply = {"results": [refused[i] if i in refused else next(answers)
                                             for i in range(len(raw))]}
                except Exception as bad:
                    exc = bad
                else:
                    answer(reply, None)
                    return
            if isinstance(exc, Exception):
                self._m_request_error.incr()  # a failed call, as `handle_rpc` counts one
            answer(None, exc)

        if not propose(batch, applied):
            return False
        self._m_request.incr(len(out) + len(refused))
        if refused:
            self._m_request_error.incr(len(refused))  # as separate Raft.Apply calls would count them
        return True

    def _refusals_now(self, body: Any) -> tuple[list[Any], dict[int, str]] | None:
        """With ACLs on, a `Raft.ApplyBatch` body's writes authorised without waiting, as
        `_apply_forwarded_authorized` does: (the commands, the refusal text by position), or
        None when the body is malformed or a token is not resolved yet (the task path then
        answers it)."""
        check = self.authorize_write_now
        raw = body.get("commands") if type(body) is dict else None
        if check is None or type(raw) is not list:
            return None
        tokens = body.get("tokens")
        if type(tokens) is not list or len(tokens) != len(raw):
            tokens = [""] * len(raw)
        refused: dict[int, str] = {}
        for i, data in enumerate(raw):
            try:
                command = commands.decode(data)
            except Exception:
                continue  # `_forwarded_batch` answers it with the decoding error
            verdict = check(str(tokens[i] or ""), command)
            if verdict is None:
                return None
            if verdict:
                refused[i] = verdict
        return raw, refused

    def _forwarded_batch(self, body: Any) -> tuple[list[Any], list[tuple[commands.Command, bytes]], list[int], bool]:
        """A `Raft.ApplyBatch` body checked and decoded: (a slot per write, holding the error
        text of those that cannot be proposed; the (command, bytes) to propose; their slots;
        whether they must be proposed one by one)."""
        raw = body.get("commands") if type(body) is dict else None
        if type(raw) is not list:
            raise RPCError('Raft.ApplyBatch: the body must be {"commands": [encoded command, ...]}')
        out: list[Any] = [None] * len(raw)
        batch: list[tuple[commands.Command, bytes]] = []
        slots: list[int] = []
        one_by_one = False
        for i, data in enumerate(raw):
            if type(data) is not bytes:
                out[i] = "Raft.ApplyBatch: a command must be bytes"
                continue
            try:
                command = commands.decode(data)  # checked here, proposed as it came
            except Exception as exc:
                out[i] = str(exc) or type(exc).__name__
                continue
            if type(command) is commands.ACLOp:
                one_by_one = True  # an ACL bootstrap takes this server's reset index (see _apply)
            batch.append((command, data))
            slots.append(i)
        return out, batch, slots, one_by_one

    def _forwarded_reply(self, out: list[Any], slots: list[int], batch: list[tuple[commands.Command, bytes]],
                         outcomes: list[Any], start: float, one_by_one: bool) -> dict[str, Any]:
        """`Raft.ApplyBatch`'s answer from each proposed write's outcome (written into `out`)."""
        # Each write's apply time is the batch's: its writes commit and apply together.
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        timers = self._m_apply_by_type
        for i, (command, _), outcome in zip(slots, batch, outcomes):
            if isinstance(outcome, Exception):
                out[i] = str(outcome) or type(outcome).__name__
                continue
            index, result = outcome
            if isinstance(result, StoreError):
                out[i] = str(result)
                continue
            out[i] = [index, encode_result(result)]
            timer = None if one_by_one else timers.get(type(command))  # _apply times its own
            if timer is not None:
                timer.observe(elapsed_ms)
        failed = 0
        for r in out:
            if type(r) is str:
                failed += 1
        if failed:
            # As many as separate Raft.Apply calls would have answered with an error.
            self._m_request_error.incr(failed)
        return {"results": out}

    async def _apply_one(self, command: commands.Command, data: bytes) -> tuple[int, Any] | RPCError:
        try:
            return await self._apply(command, data)
        except RPCError as exc:
            return exc

    # ------------------------------------------------------------------------ RPC endpoints

    def register(self, method: str, handler: RPCHandler) -> None:
        """Answer the RPC `method` with `handler` (parts built after the server add theirs)."""
        self.handlers[method] = handler

    def handle_rpc_now(self, method: str, body: Any, answer: Callable[[Any, BaseException | None], None]) -> bool:
        """Serve a request without a task where this server can (the transport's
        `dispatch_now`): a follower's `Raft.ApplyBatch` (`apply_forwarded_now`); `answer` is
        called once, never from inside this call. False: `handle_rpc` serves it."""
        if method != "Raft.ApplyBatch" or method in self.handlers:
            return False
        return self.apply_forwarded_now(body, answer)

    async def handle_rpc(self, method: str, body: Any) -> Any:
        """Serve a request from another agent (the transport's RPC dispatch)."""
        try:
            return await self._dispatch_rpc(method, body)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Whatever goes back to the caller as an error (refusals included), as Consul counts it.
            self._m_request_error.incr()
            raise

    async def _dispatch_rpc(self, method: str, body: Any) -> Any:
        extra = self.handlers.get(method)
        if extra is not None:
            if self.acl_gate is not None:
                await self.acl_gate.check_call(method, body)  # the operator calls: their token
            return await extra(body)
        if method == "Status.Ping":
            return True
        if method == "Status.Identify":
            return self.identity
        if method == "Raft.ApplyBatch":
            if self.authorize_write is not None:
                return await self._apply_forwarded_authorized(body)
            return await self.apply_forwarded(body)
        if method == "Raft.Apply":
            if not self.consensus.is_leader():
                raise NotLeader(self.consensus.leader_address())
            self._m_request.incr()
            data, token = _command_data_and_token(body)
            command = commands.decode(data)
            if self.authorize_write is not None:
                await self.authorize_write(token, command)  # ACLs: the forwarding caller's token
            # The forwarded bytes are proposed as they came (decoded once, to check them).
            index, result = await self._apply(command, data if type(data) is bytes else None)
            if isinstance(result, StoreError):
                raise result
            return {"index": index, "result": encode_result(result)}
        if method == "Query":
            opts = QueryOptions.from_wire(body["opts"])
            if not opts.allow_stale and not self.consensus.is_leader():
                raise NotLeader(self.consensus.leader_address())
            if self.acl_gate is not None:
                return await self._query_authorized(body, opts)
            meta, result = await self.query(body["name"], body["args"], opts)
            return _query_reply(meta, result, opts)
        if method == "Client.Query":
            # From a client agent: answered here or forwarded to the leader (Server.query).
            opts = QueryOptions.from_wire(body["opts"], body.get("dc", ""))
            if self.acl_gate is not None:
                return await self._query_authorized(body, opts)
            if opts.datacenter:
                CALLER_TOKEN.set(body.get("token"))  # the other datacenter's server may check it
            meta, result = await self.query(body["name"], body["args"], opts)
            return _query_reply(meta, result, opts)
        if method == "Client.Write":
            # From a client agent: proposed here or forwarded once to the leader (Server.write),
            # after the caller's token is authorised here when ACLs are on.
            command, token = _command_and_token(body)
            if self.authorize_write is not None:
                await self.authorize_write(token, command)
                CALLER_TOKEN.set(token)  # carried on to the leader, which authorises it too
            wmeta, result = await self.write(command)
            return {"index": wmeta.index, "result": encode_result(result)}
        if method == "Client.WriteDC":
            # From a client agent, for another datacenter (`?dc=`): forwarded over the WAN.
            command, token = _command_and_token(body)
            if self.authorize_write is not None and body["dc"] == self.datacenter:
                await self.authorize_write(token, command)
            CALLER_TOKEN.set(token)  # carried on to the other datacenter's server
            wmeta, result = await self.write(command, datacenter=body["dc"])
            return {"index": wmeta.index, "result": encode_result(result)}
        if method == "Catalog.ListDatacenters":
            return await self.list_datacenters()
        if method == "Status.Leader":
            return {"leader": self.consensus.leader_address(), "voters": [list(v) for v in self.consensus.voters()]}
        if method == "Raft.Join":
            if not self.consensus.is_leader():
                raise NotLeader(self.consensus.leader_address())
            refusal = self.voter_refusal(str(body["id"]), str(body["addr"])) if self.voter_refusal else ""
            if refusal:
                # Rate-limited: a server still joining the LAN pool retries every few seconds,
                # and a hostile client may retry far more often.
                logger.warning("raft: refused to add %s at %s as a voter: %s", body["id"], body["addr"], refusal,
                               extra=MALFORMED)
                raise RPCError(f"Raft.Join refused: {refusal}")
            await self.consensus.add_voter(body["id"], body["addr"])  # type: ignore[attr-defined]
            return True
        raise RPCError(f"rpc: can't find method {method}")

    # ------------------------------------------------------------------------ ACLs over RPC

    async def _query_authorized(self, body: Any, opts: QueryOptions) -> dict[str, Any]:
        """A read over RPC with ACLs on: the caller's token is resolved and checked here, where
        the read is answered (another datacenter's server checks its own), and the answer is
        filtered to what the token may read. A blocking read checks the token again when it
        wakes: one deleted (or changed) while it waited gets its new rights."""
        gate = self.acl_gate
        assert gate is not None
        name, args, token = body["name"], body["args"], str(body.get("token") or "")
        here = not opts.datacenter or opts.datacenter == self.datacenter
        authz = await gate.check(token, name, args) if here else None
        CALLER_TOKEN.set(token)  # carried on to the leader or the other datacenter
        meta, result = await self.query(name, args, opts)
        filtered = meta.results_filtered
        if here:
            if opts.min_index > 0:
                authz = await gate.check(token, name, args)
            result, dropped = await gate.filter_answer(authz, name, args, result)
            filtered = filtered or dropped
        reply = _query_reply(meta, result, opts)
        if filtered:
            reply["filtered"] = True
        return reply

    async def _apply_forwarded_authorized(self, body: Any) -> dict[str, Any]:
        """`Raft.ApplyBatch` with ACLs on: each write is authorised with the token it carries
        (`{"commands": [...], "tokens": [...]}`; none is anonymous) before the batch goes to
        `apply_forwarded`; a refused write is answered with the refusal, in its place."""
        if not self.consensus.is_leader():
            raise NotLeader(self.consensus.leader_address())
        raw = body.get("commands") if type(body) is dict else None
        if type(raw) is not list:
            return await self.apply_forwarded(body)  # its own error
        tokens = body.get("tokens")
        if type(tokens) is not list or len(tokens) != len(raw):
            tokens = [""] * len(raw)
        assert self.authorize_write is not None
        refused: dict[int, str] = {}
        for i, data in enumerate(raw):
            try:
                command = commands.decode(data)
            except Exception:
                continue  # apply_forwarded answers it with the decoding error
            try:
                await self.authorize_write(str(tokens[i] or ""), command)
            except RPCError as exc:
                refused[i] = str(exc)
        if not refused:
            return await self.apply_forwarded({"commands": raw})
        self._m_request.incr(len(refused))
        self._m_request_error.incr(len(refused))
        allowed = [data for i, data in enumerate(raw) if i not in refused]
        results = (await self.apply_forwarded({"commands": allowed}))["results"] if allowed else []
        answers = iter(results)
        return {"results": [refused[i] if i in refused else next(answers) for i in range(len(raw))]}

    # ------------------------------------------------------------------------------- status

    def leader(self) -> str:
        return self.consensus.leader_address()

    def peers(self) -> list[str]:
        return [addr for _, _, addr in self.consensus.voters()]

    def check_datacenter(self, dc: str | None) -> None:
        """Requests for another datacenter need WAN forwarding (the multi-DC issue)."""
        if dc and dc != self.datacenter:
            raise NoPathToDatacenter(dc)


# Transaction results on the wire: a KV entry as its bare wire list (as before catalog
# operations existed), the other records tagged with their kind.
_TXN_RECORD_TAGS: dict[type, str] = {Node: "node", ServiceInstance: "service", HealthCheck: "check"}
_TXN_RECORD_TYPES: dict[str, Any] = {tag: cls for cls, tag in _TXN_RECORD_TAGS.items()}


def _encode_txn_record(r: Any) -> Any:
    if r is None or isinstance(r, DirEntry):
        return r.to_wire() if r is not None else None
    return {_TXN_RECORD_TAGS[type(r)]: r.to_wire()}


def _decode_txn_record(raw: Any) -> Any:
    if raw is None:
        return None
    if isinstance(raw, dict):
        ((tag, wire),) = raw.items()
        return _TXN_RECORD_TYPES[tag].from_wire(wire)
    return DirEntry.from_wire(raw)
def _query_reply(meta: QueryMeta, result: Any, opts: QueryOptions) -> dict[str, Any]:
    body = {"meta": [meta.index, meta.known_leader, meta.last_contact_ms, meta.consistency], "result": result}
    if opts.min_index > 0:
        # A blocking read's answer is one object shared by every caller of its parked read (or
        # forwarded call): the transport packs it once for all of them.
        return SharedBody(body, ("result",))
    return body


def args_key(args: dict[str, Any]) -> str:
    """A canonical text of a query's arguments: equal for reads that answer alike."""
    return json.dumps(args, sort_keys=True, separators=(",", ":"), default=repr)


def _command_data_and_token(body: Any) -> tuple[Any, str]:
    """A forwarded `Raft.Apply`: {"command": bytes, "token": secret} with ACLs on, bare bytes otherwise."""
    if type(body) is dict:
        return body.get("command"), str(body.get("token") or "")
    return body, ""


def _command_and_token(body: Any) -> tuple[commands.Command, str]:
    """A client agent's write: {"command": bytes, "token": secret} (bare bytes from older agents)."""
    if isinstance(body, dict):
        return commands.decode(body["command"]), str(body.get("token") or "")
    return commands.decode(body), ""


def encode_result(result: Any) -> Any:
    """An FSM result as plain data for the wire (see decode_result)."""
    if isinstance(result, TxnResult):
        return {
            "txn": [
                [_encode_txn_record(r) for r in result.results],
                [[e.op_index, e.what] for e in result.errors],
            ]
        }
    return result


def decode_result(raw: Any) -> Any:
    if isinstance(raw, dict) and "txn" in raw:
        results, errors = raw["txn"]
        return TxnResult(
            tuple(_decode_txn_record(r) for r in results),
            tuple(TxnError(i, w) for i, w in errors),
        )
    return raw
