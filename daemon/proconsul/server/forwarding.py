"""Write forwarding, follower side: the writes a server hands to its leader, sent in batches.

Owns the path of a write that reaches a server which does not lead. Every write handed over
during one event-loop iteration goes to the leader in one `Raft.ApplyBatch` call: one frame on
the pooled connection (`transport.ConnectionPool`), one deadline. The frame is written by a
callback at the start of the next iteration (or at once, by `submit_now`, when nothing is in
flight and the last batch carried one write: one client writing), and the answer settles the writes from the
connection's reader (`ConnectionPool.send_call`): no task, and no loop iteration spent waiting
for one to be scheduled, on a path a write through a follower pays twice (a task per call, and
the pool's write-coalescing flush, remain for the first call to a leader, which dials, and for a
full socket buffer). The leader proposes
the batch as one Raft batch and answers it in one frame once every write in it has applied
(server/rpc.py, `Server.apply_forwarded`). Per write, the follower pays a future instead of an
RPC, and the leader an entry instead of a request task; the command is encoded once, here, and
the leader proposes those bytes as they came.

Each write's outcome is what its own `Raft.Apply` call would have given:
- `(index, raw result)` once the leader applied it (`rpc.decode_result` turns the raw result
  back into the FSM's);
- `NotLeader` when the server we took for the leader refused the batch before proposing any of
  it (or refused that write before proposing it): the caller may send it again, to the new
  leader (`Server._forward_write_retrying`);
- `UnknownOutcome` when the connection was lost, no answer came, or the answer could not be read
  after the batch was sent: the write may have applied, so it is never sent again blindly;
- `RPCError` with the leader's text otherwise (an FSM error, a refusal, a write that lost its
  leader mid-flight: the leader's own "may or may not commit").

With ACLs on, each write carries its caller's token (`submit`'s `token`), which the leader
authorises it with: `"tokens"` beside `"commands"` in a batch, `{"command", "token"}` for a
single `Raft.Apply`. The tokens are kept beside the queue (`_tokens`, by the write's future), so
the batching itself is the same with ACLs on or off.

`submit_now` is `submit` for a caller without a coroutine (the HTTP fast path's PUT on a
follower, `Server.write_now`): the write is queued and batched the same way, and its outcome is
handed to a callback where a future would have been settled (`_CallbackWrite`), so the answer
from the connection's reader reaches the HTTP connection in the same step, with no task to wake.

A leader of an older build that does not know `Raft.ApplyBatch` answers "can't find method"
before doing anything: the batch's writes then go one `Raft.Apply` call each, and that leader
is offered batches again after `UNSUPPORTED_RETRY_S` (it may have been upgraded meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from proconsul.rpc_api import NotLeader, RPCError, UnknownOutcome

logger = logging.getLogger(__name__)

BATCH_METHOD = "Raft.ApplyBatch"
SINGLE_METHOD = "Raft.Apply"
# How long a forwarded write (or batch) waits for the leader's answer before its outcome is
# unknown, as one Raft.Apply call always waited.
FORWARD_TIMEOUT_S = 30.0
# A batch is cut at this many writes or bytes, so that a burst of large values never makes a
# frame near the transport's 64 MiB limit; the parts travel concurrently.
MAX_BATCH_WRITES = 1024
MAX_BATCH_BYTES = 4 * 1024 * 1024
# After a leader answered that it does not know Raft.ApplyBatch, how long before we try again.
UNSUPPORTED_RETRY_S = 60.0

_NOT_LEADER_TEXT = str(NotLeader())
_UNKNOWN_METHOD_TEXT = f"rpc: can't find method {BATCH_METHOD}"

# (index, raw result) of one applied write.
Outcome = tuple[int, Any]


class Caller(Protocol):
    """RPC to another server of this datacenter (`transport.ConnectionPool`)."""

    async def call(self, address: str, method: str, body: Any, timeout_s: float = ...) -> Any: ...


class DirectCaller(Caller, Protocol):
    """A `Caller` that can also send on an open connection without a task
    (`transport.ConnectionPool.send_call`); the forwarder uses it when the pool has it."""

    def send_call(self, address: str, method: str, body: Any,
                  done: Callable[[Any, BaseException | None], None], timeout_s: float = ...) -> bool: ...


# `submit_now`'s callback: (outcome, None) once applied, or (None, error).
Settled = Callable[[Outcome | None, BaseException | None], None]


class _CallbackWrite:
    """A queued write answered by a callback (`submit_now`): quacks like the future `submit`
    gives (`done`, `set_result`, `set_exception`, all the forwarder uses), and hands the outcome
    to `settled` right there, at most once."""

    __slots__ = ("_settled", "_tokens", "fired")

    def __init__(self, settled: Settled, tokens: dict[Any, str]) -> None:
        self._settled = settled
        self._tokens = tokens  # the forwarder's: this write's token leaves with its outcome
        self.fired = False

    def done(self) -> bool:
        return self.fired

    def set_result(self, outcome: Outcome) -> None:
        self._fire(outcome, None)

    def set_exception(self, error: BaseException) -> None:
        self._fire(None, error)

    def _fire(self, outcome: Outcome | None, error: BaseException | None) -> None:
        if self.fired:
            return
        self.fired = True
        if self._tokens:
            self._tokens.pop(self, None)
        try:
            self._settled(outcome, error)
        except Exception:
            # Never into the loop settling a whole batch (or the connection's reader).
            logger.exception("rpc: a forwarded write's callback failed")


# What a queued write is settled through: `submit`'s future or `submit_now`'s callback.
Pending = asyncio.Future[Outcome] | _CallbackWrite
_Write = tuple[bytes, Pending]


def error_from_text(text: str) -> RPCError:
    """The error a leader's answer text stands for (its class decides whether to resend)."""
    if text == _NOT_LEADER_TEXT:
        return NotLeader()  # refused before proposing: safe to send again
    return RPCError(text)


class WriteForwarder:
    """Coalesces the writes forwarded to each leader into `Raft.ApplyBatch` calls."""

    def __init__(self, pool: Caller, timeout_s: float = FORWARD_TIMEOUT_S,
                 max_writes: int = MAX_BATCH_WRITES, max_bytes: int = MAX_BATCH_BYTES) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        self.max_writes = max_writes
        self.max_bytes = max_bytes
        # Writes waiting for the next call, per leader address; a key exists while that call's
        # task is scheduled but has not yet taken them.
        self._queued: dict[str, list[_Write]] = {}
        # Leaders that refused Raft.ApplyBatch as unknown: address -> monotonic time to try again.
        self._single_until: dict[str, float] = {}
        # Calls under way in tasks (the first to a leader, which dials; one call per write to an
        # older leader): task -> its writes.
        self._tasks: dict[asyncio.Task[None], list[_Write]] = {}
        # Calls sent with send_call, not yet answered: id -> their writes.
        self._flying: dict[int, list[_Write]] = {}
        self._send_call: Callable[..., bool] | None = getattr(pool, "send_call", None)
        self.batches_sent = 0  # calls made (tests and benchmarks read how writes were grouped)
        # Whether the last batch dispatched carried a single write: then `submit_now` sends a
        # write at once when nothing is in flight (with several writers, batches are larger,
        # and the writes of an iteration still wait for each other).
        self._alone = False
        # ACLs on: the token each queued write carries, by its future (empty with ACLs off).
        self._tokens: dict[Pending, str] = {}

    def submit(self, leader: str, data: bytes, token: str | None = None) -> asyncio.Future[Outcome]:
        """Queue the encoded command `data` for `leader`; the future gives its outcome (see the
        module docstring). It leaves with every other write queued in this loop iteration.
        `token`: the caller's ACL token (None with ACLs off)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outcome] = loop.create_future()
        if token is not None:
            self._tokens[fut] = token
            fut.add_done_callback(self._forget_token)
        queued = self._queued.get(leader)
        if queued is None:
            queued = self._queued[leader] = []
            # Runs after the callbacks already scheduled in this iteration (the other requests
            # that arrived with this one), which queue here too.
            loop.call_soon(self._dispatch, leader)
        queued.append((data, fut))
        return fut

    def submit_now(self, leader: str, data: bytes, token: str | None, settled: Settled) -> None:
        """`submit` without a future: `settled(outcome, None)` or `settled(None, error)` (the
        same outcomes) is called once, from the connection's reader (or a timer, or `close`);
        never from inside this call."""
        write = _CallbackWrite(settled, self._tokens)
        if token is not None:
            self._tokens[write] = token
        queued = self._queued.get(leader)
        if queued is None:
            if self._alone and not self._flying and not self._tasks and not self._queued:
                # One client writing: nothing in flight, the last batch carried one write, so
                # none is expected to join this one; it leaves now, not an iteration later.
                self._queued[leader] = [(data, write)]
                self._dispatch(leader, now=True)
                return
            queued = self._queued[leader] = []
            asyncio.get_running_loop().call_soon(self._dispatch, leader)
        queued.append((data, write))

    def _forget_token(self, fut: Pending) -> None:
        self._tokens.pop(fut, None)

    def _batch_body(self, writes: list[_Write]) -> dict[str, Any]:
        body: dict[str, Any] = {"commands": [d for d, _ in writes]}
        if self._tokens:
            body["tokens"] = [self._tokens.get(fut, "") for _, fut in writes]
        return body

    def _single_body(self, data: bytes, fut: Pending) -> Any:
        token = self._tokens.get(fut) if self._tokens else None
        return data if token is None else {"command": data, "token": token}

    def in_flight(self) -> int:
        """Calls under way (or about to start) to leaders."""
        return len(self._tasks) + len(self._flying) + len(self._queued)

    async def close(self) -> None:
        """Stop every call under way; their writes' outcomes are unknown (they may have applied)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        # Every write not answered yet, a task's included (one cancelled before it started
        # never runs its own handler).
        unsettled = [*self._tasks.values(), *self._flying.values(), *self._queued.values()]
        self._flying.clear()
        self._queued.clear()
        for writes in unsettled:
            _fail(writes, lambda: UnknownOutcome("rpc error: stopped waiting for the leader; "
                                                 "the write may have applied"))
        await asyncio.gather(*tasks, return_exceptions=True)

    def _dispatch(self, leader: str, now: bool = False) -> None:
        """Send the writes queued for `leader`. `now`: called from `submit_now`, whose callback
        must not run inside it (a failure to send is then reported from the loop)."""
        writes = self._queued.pop(leader, [])
        # A caller that gave up before the call left (its request was cancelled): not sent.
        writes = [w for w in writes if not w[1].done()]
        if not writes:
            return
        self._alone = len(writes) == 1
        send_call = self._send_call
        if send_call is None or time.monotonic() < self._single_until.get(leader, 0.0):
            self._spawn(leader, writes)
            return
        for part in self._split(writes):
            self.batches_sent += 1
            key = self.batches_sent
            self._flying[key] = part
            try:
                sent = send_call(leader, BATCH_METHOD, self._batch_body(part),
                                 lambda reply, error, key=key: self._answered(leader, key, reply, error),
                                 self.timeout_s)
            except Exception:
                del self._flying[key]
                logger.exception("rpc: forwarding %d writes to the leader %s failed", len(part), leader)
                def make() -> BaseException:
                    return UnknownOutcome(f"rpc error: forwarding to the leader {leader} failed; "
                                          "the write may have applied")

                if now:
                    asyncio.get_running_loop().call_soon(_fail, part, make)
                else:
                    _fail(part, make)
                continue
            if not sent:  # no open connection (or a full buffer): the call dials, and waits
                del self._flying[key]
                self.batches_sent -= 1
                self._spawn(leader, part)

    def _answered(self, leader: str, key: int, reply: Any, error: BaseException | None) -> None:
        writes = self._flying.pop(key, None)
        if writes is None:
            return  # the forwarder was closed: its writes are settled already
        if self._settle(leader, writes, reply, error):
            self._spawn(leader, writes)  # one call per write (_single_until is set)

    def _spawn(self, leader: str, writes: list[_Write]) -> None:
        task = asyncio.get_running_loop().create_task(self._send(leader, writes), name=f"forward-writes:{leader}")
        self._tasks[task] = writes
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _send(self, leader: str, writes: list[_Write]) -> None:
        try:
            if time.monotonic() < self._single_until.get(leader, 0.0):
                await self._send_singly(leader, writes)
                return
            parts = self._split(writes)
            if len(parts) == 1:
                await self._send_batch(leader, writes)
            else:
                await asyncio.gather(*(self._send_batch(leader, part) for part in parts))
        except asyncio.CancelledError:
            _fail(writes, lambda: UnknownOutcome(f"rpc error: stopped waiting for the leader {leader}; "
                                                 "the write may have applied"))
            raise
        except Exception:
            # A bug here must not leave the writers waiting forever.
            logger.exception("rpc: forwarding %d writes to the leader %s failed", len(writes), leader)
            _fail(writes, lambda: UnknownOutcome(f"rpc error: forwarding to the leader {leader} failed; "
                                                 "the write may have applied"))

    def _split(self, writes: list[_Write]) -> list[list[_Write]]:
        if len(writes) <= self.max_writes and sum(len(d) for d, _ in writes) <= self.max_bytes:
            return [writes]
        parts: list[list[_Write]] = [[]]
        size = 0
        for w in writes:
            part = parts[-1]
            if part and (len(part) >= self.max_writes or size + len(w[0]) > self.max_bytes):
                parts.append([])
                part, size = parts[-1], 0
            part.append(w)
            size += len(w[0])
        return parts

    async def _send_batch(self, leader: str, writes: list[_Write]) -> None:
        self.batches_sent += 1
        try:
            reply = await self.pool.call(leader, BATCH_METHOD, self._batch_body(writes), timeout_s=self.timeout_s)
        except Exception as exc:  # (not CancelledError: _send answers the writers for that)
            if self._settle(leader, writes, None, exc):
                await self._send_singly(leader, writes)
            return
        self._settle(leader, writes, reply, None)

    def _settle(self, leader: str, writes: list[_Write], reply: Any,
                error: BaseException | None) -> bool:
        """Give each write the outcome a batch call's answer (or `error`) means for it. True:
        the leader does not know batches, and the writes are still to be sent one by one."""
        if isinstance(error, TimeoutError):  # before OSError, of which it is a subclass
            _fail(writes, lambda: UnknownOutcome(f"rpc error: no answer from the leader {leader}; "
                                                 "the write may have applied"))
            return False
        if isinstance(error, (ConnectionError, OSError)):
            text = f"rpc error: lost the connection to the leader {leader} mid-write: {error}"
            _fail(writes, lambda: UnknownOutcome(text))
            return False
        if error is not None:  # RemoteError: the leader refused the whole batch (before proposing)
            text = str(error)
            if text == _UNKNOWN_METHOD_TEXT:
                logger.info("rpc: the leader %s does not take batched writes (an older build); "
                            "forwarding one call per write", leader)
                self._single_until[leader] = time.monotonic() + UNSUPPORTED_RETRY_S
                return True
            _fail(writes, lambda: error_from_text(text))
            return False
        results = reply.get("results") if isinstance(reply, dict) else None
        if not isinstance(results, list) or len(results) != len(writes):
            # The leader answered, so each write was proposed or refused; which, we cannot tell.
            n = len(writes)
            _fail(writes, lambda: UnknownOutcome(f"rpc error: the leader {leader} answered a batch of {n} writes "
                                                 "with a malformed reply; the writes may have applied"))
            return False
        for (_, fut), r in zip(writes, results):
            if fut.done():
                continue
            if type(r) is list and len(r) == 2:
                fut.set_result((r[0], r[1]))
            elif type(r) is str:
                fut.set_exception(error_from_text(r))
            else:
                fut.set_exception(UnknownOutcome(f"rpc error: the leader {leader} answered a write with {r!r}; "
                                                 "it may have applied"))
        return False

    async def _send_singly(self, leader: str, writes: list[_Write]) -> None:
        await asyncio.gather(*(self._send_one(leader, data, fut) for data, fut in writes))

    async def _send_one(self, leader: str, data: bytes, fut: Pending) -> None:
        try:
            reply = await self.pool.call(leader, SINGLE_METHOD, self._single_body(data, fut), timeout_s=self.timeout_s)
        except TimeoutError:
            outcome: BaseException = UnknownOutcome(
                f"rpc error: no answer from the leader {leader}; the write may have applied")
        except (ConnectionError, OSError) as exc:
            outcome = UnknownOutcome(f"rpc error: lost the connection to the leader {leader} mid-write: {exc}")
        except Exception as exc:  # RemoteError: the leader refused or failed it
            outcome = error_from_text(str(exc))
        else:
            if not fut.done():
                fut.set_result((reply["index"], reply["result"]))
            return
        if not fut.done():
            fut.set_exception(outcome)


def _fail(writes: list[_Write], make: Callable[[], BaseException]) -> None:
    # An exception object per write: one raised in many callers would grow one traceback.
    for _, fut in writes:
        if not fut.done():
            fut.set_exception(make())
