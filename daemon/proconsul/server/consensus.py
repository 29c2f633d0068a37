"""The server boundary of the replicated log: state-store commands over Raft's bytes.

Owns the two adapters that keep `proconsul.raft` a generic replicated log:
- `CommandStateMachine`: Raft's `StateMachine` over the FSM; it decodes each committed entry
  into a `state.commands.Command` (an entry that is not one, or carries nothing, applies as a
  no-op, so every server still consumes it identically) and snapshots/restores the store; on
  the leader it applies the command object it proposed when decoding would give the same; an
  optional `on_applied` subscriber sees every applied (index, bytes) in order, and `None` bytes
  when the whole state was replaced (the HTTP workers' read replicas, http/workers/);
- `RaftLog`: the `rpc_api.Consensus` the RPC layer proposes through; it encodes commands and
  translates Raft's own errors into the RPC errors servers answer with (`raft_errors`, also for
  the operator and autopilot, which change the configuration directly); `propose_now` proposes
  without a coroutine for the HTTP fast path's writes (no task, no chain of awaits per PUT),
  and `propose_batch_now` a follower's forwarded batch, from the RPC connection's reader.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from proconsul.raft.node import NoLeaderError, NotLeaderError, OutcomeUnknown, RaftError, RaftServer
from proconsul.rpc_api import NoLeader, NotLeader, RPCError, UnknownOutcome
from proconsul.state import commands
from proconsul.state.fsm import FSM
from proconsul.state.store import Store
from proconsul.tasks import blocking_work, collector_paused

logger = logging.getLogger(__name__)


def rpc_error(exc: RaftError) -> RPCError:
    """The RPC error a Raft error means (NotLeader keeps the leader's address)."""
    if isinstance(exc, NotLeaderError):
        return NotLeader(exc.leader)
    if isinstance(exc, NoLeaderError):
        return NoLeader()
    if isinstance(exc, OutcomeUnknown):
        return UnknownOutcome(str(exc))
    return RPCError(str(exc))


@contextmanager
def raft_errors() -> Iterator[None]:
    """Raise Raft's errors as the RPC errors they mean (`rpc_error`)."""
    try:
        yield
    except RaftError as exc:
        raise rpc_error(exc) from None


# What `RaftLog.propose_now` reports: ((index, result), None) once applied, or (None, error).
Applied = Callable[[tuple[int, Any] | None, BaseException | None], None]


def _settled(done: Applied, out: tuple[int, Any] | None, exc: BaseException | None) -> None:
    if exc is None:
        done(out, None)
    else:
        done(None, rpc_error(exc) if isinstance(exc, RaftError) else exc)


# What `RaftLog.propose_batch_now` reports: (outcomes, None), or (None, error) for the whole batch.
BatchApplied = Callable[[list[tuple[int, Any] | RPCError] | None, BaseException | None], None]


def _settled_one(done: BatchApplied, out: tuple[int, Any] | None, exc: BaseException | None) -> None:
    """A one-write batch's outcome, as `_batch_outcomes` reports it for its future: a Raft
    error becomes that write's RPC error; any other (a stopping driver's) fails the batch."""
    if exc is None:
        done([out], None)  # type: ignore[list-item]
    elif isinstance(exc, RaftError):
        done([rpc_error(exc)], None)
    else:
        done(None, exc)


def _batch_outcomes(futs: list[asyncio.Future[tuple[int, Any]]]) -> list[tuple[int, Any] | RPCError]:
    """Each settled proposal's outcome: (index, result), or the RPC error `apply` would raise
    for a Raft error; any other exception (CancelledError for a cancelled one) is raised."""
    out: list[tuple[int, Any] | RPCError] = []
    for fut in futs:
        exc = fut.exception()  # raises CancelledError for a cancelled future
        if exc is None:
            out.append(fut.result())
        elif isinstance(exc, RaftError):
            out.append(rpc_error(exc))
        else:
            raise exc
    return out


def _when_all_settled(futs: list[asyncio.Future[tuple[int, Any]]], last: int, done: BatchApplied) -> None:
    """Call `done(outcomes)` once every future in `futs` is settled: waits on the last one (the
    entries apply in order, so the others are then settled too), then on any still pending."""
    def settled(_: Any) -> None:
        for i in range(len(futs) - 1, -1, -1):
            if not futs[i].done():
                _when_all_settled(futs, i, done)
                return
        try:
            outcomes = _batch_outcomes(futs)
        except BaseException as exc:  # (CancelledError included: nothing here is being cancelled)
            done(None, exc)
            return
        done(outcomes, None)

    futs[last].add_done_callback(settled)


def _round_trips(command: Any) -> bool:
    """Whether `command` is exactly what `commands.decode(commands.encode(command))` gives, so
    the leader may apply it instead of its bytes and still build the state every follower
    builds. Only the hot, flat shape is vouched for: a KV operation whose fields have the exact
    types the decoder produces (no bytearray value, no bool or int subclass, no str subclass)."""
    if type(command) is not commands.KVS or type(command.op) is not str:
        return False
    if type(command.checked_at) is not int:
        return False
    e = command.entry
    return (
        type(e.key) is str and type(e.session) is str
        and (e.value is None or type(e.value) is bytes)
        and type(e.flags) is int and type(e.lock_index) is int
        and type(e.create_index) is int and type(e.modify_index) is int
    )


class CommandStateMachine:
    """Raft's `StateMachine` over the FSM: committed bytes -> decoded command -> store."""

    def __init__(self, fsm: FSM, on_applied: Callable[[int, bytes | None], None] | None = None) -> None:
        self.fsm = fsm
        # Called after each entry is applied with (Raft index, its bytes), in apply order, and
        # with (index, None) after a snapshot replaced the state. Apply is deterministic, so
        # whoever applies the same bytes in the same order to a copy of the store holds a copy.
        self.on_applied = on_applied

    def apply(self, index: int, data: bytes, proposed: Any = None) -> Any:
        result = self._apply(index, data, proposed)
        if self.on_applied is not None:
            self.on_applied(index, data)
        return result

    def _apply(self, index: int, data: bytes, proposed: Any) -> Any:
        if not data:
            self.fsm.apply(index, commands.Noop())
            return None
        if proposed is not None and _round_trips(proposed):
            # The leader's own proposal: the command it encoded, unchanged by a decode.
            return self.fsm.apply(index, proposed)
        try:
            command = commands.decode_for_apply(data)
        except ValueError as exc:
            logger.error("raft: entry %d is not a command (%s); skipped", index, exc)
            self.fsm.apply(index, commands.Noop())
            return None
        if type(command) is tuple:  # a plain KV set: (key, value, flags)
            return self.fsm.apply_kv_set(index, *command)
        if isinstance(command, commands.Restore):
            with blocking_work("restoring a snapshot (PUT /v1/snapshot)"), collector_paused():
                return self.fsm.apply(index, command)
        return self.fsm.apply(index, command)

    def snapshot(self) -> bytes:
        return self.fsm.store.snapshot()

    def restore(self, data: bytes) -> None:
        with blocking_work("restoring a snapshot"):
            self.fsm.store.restore(data)
        if self.on_applied is not None:
            self.on_applied(self.fsm.store.last_index, None)

    def snapshot_view(self) -> Callable[[], bytes]:
        return self.fsm.store.snapshot_view()

    def decode_snapshot(self, data: bytes) -> object:
        return Store.decode(data)

    def install(self, decoded: object) -> None:
        assert isinstance(decoded, Store)
        self.fsm.store.adopt(decoded)
        if self.on_applied is not None:
            self.on_applied(self.fsm.store.last_index, None)

    def store_index(self, raft_index: int) -> int:
        return self.fsm.store_index(raft_index)


class RaftLog:
    """`rpc_api.Consensus` over a Raft node: commands in, RPC errors out."""

    def __init__(self, raft: RaftServer) -> None:
        self.raft = raft

    def is_leader(self) -> bool:
        return self.raft.is_leader()

    def ready_for_reads(self) -> bool:
        return self.raft.ready_for_reads()

    def leader_address(self) -> str:
        return self.raft.leader_address()

    def last_contact_ms(self) -> int:
        return self.raft.last_contact_ms()

    def voters(self) -> list[tuple[str, str, str]]:
        return self.raft.voters()

    async def apply(self, command: commands.Command, encoded: bytes | None = None) -> tuple[int, Any]:
        data = encoded if encoded is not None else commands.encode(command)
        try:  # not raft_errors(): a generator context manager per write costs more than the rest here
            return await self.raft.propose_bytes(data, command)
        except RaftError as exc:
            raise rpc_error(exc) from None

    def propose_now(self, command: commands.Command, done: Applied) -> bool:
        """`apply` without a coroutine (the HTTP fast path's KV writes on the leader): proposes
        `command` now and calls `done((index, result), None)` once it applied here, or
        `done(None, error)` with the RPC error `apply` would raise; never from inside this call
        (`RaftServer.propose_now`: a loop iteration's outcomes come in one event-loop callback;
        there is no future to cancel). False, with nothing proposed, when it cannot
        be proposed at once (not the leader, a leadership transfer running, a command that does
        not encode): `apply` then does what it always does (waits the transfer out, or raises)."""
        try:
            data = commands.encode(command)
        except Exception:
            return False  # `apply` raises it
        try:
            self.raft.propose_now(data, command, functools.partial(_settled, done))
        except RaftError:
            return False  # raised before anything was proposed
        return True

    async def apply_batch(self, batch: list[tuple[commands.Command, bytes]]) -> list[tuple[int, Any] | RPCError]:
        """Propose `(command, its encoding)` pairs as one Raft batch and wait for all of them;
        each outcome is what `apply` would return, or the RPC error it would raise. NotLeader
        (or the RPCError of a leadership transfer in progress) is raised before any is proposed."""
        with raft_errors():
            futs = self.raft.propose_batch([(data, command) for command, data in batch])
        # Not asyncio.gather (a callback and an iteration more): the entries apply in order, so
        # once the last is settled the others almost always are.
        try:
            for fut in reversed(futs):
                if not fut.done():
                    await asyncio.wait((fut,))
        except asyncio.CancelledError:
            for fut in futs:
                fut.cancel()  # as gather cancelled its children
            raise
        return _batch_outcomes(futs)

    def propose_batch_now(self, batch: list[tuple[commands.Command, bytes]],
                          done: BatchApplied) -> bool:
        """`apply_batch` without a coroutine (a follower's `Raft.ApplyBatch` on the leader):
        proposes the batch now and calls `done(outcomes, None)` once every entry is settled, or
        `done(None, error)` with what `apply_batch` would raise then; never from inside this call. False, with nothing proposed, when Raft refuses the batch before
        proposing (not the leader, a leadership transfer): `apply_batch` then raises it.

        A batch of one write (a follower forwarding one client's writes, c1) is proposed as the
        leader's own fast-path PUT is (`RaftServer.propose_now`): its outcome comes by callback
        with the iteration's other settlements, and an idle driver runs the proposal at the end
        of this loop pass, not a future's callback and a wake of the driver task later."""
        if len(batch) == 1:
            command, data = batch[0]
            try:
                self.raft.propose_now(data, command, functools.partial(_settled_one, done))
            except RaftError:
                return False  # raised before anything was proposed
            return True
        try:
            futs = self.raft.propose_batch([(data, command) for command, data in batch])
        except RaftError:
            return False
        if not futs:
            asyncio.get_running_loop().call_soon(done, [], None)
            return True
        _when_all_settled(futs, len(futs) - 1, done)
        return True

    async def verify_leader(self) -> None:
        with raft_errors():
            await self.raft.verify_leader()

    def read_barrier(self, done: Callable[[BaseException | None], None]) -> None:
        """`verify_leader` without a task (`RaftServer.read_barrier`): `done(None)` once the read
        may be served, `done(error)` (a Raft error) when it may not; NotLeader when not leader."""
        try:  # not raft_errors(): a generator context manager per read costs more than the call
            self.raft.read_barrier(done)
        except NotLeaderError as exc:
            raise NotLeader(exc.leader) from None
        except RaftError:
            raise NoLeader() from None  # not started yet

    async def add_voter(self, node_id: str, addr: str) -> None:
        """Leader only (the `Raft.Join` RPC): add a server to the configuration."""
        with raft_errors():
            await self.raft.add_voter(node_id, addr)
