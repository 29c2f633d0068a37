"""The Raft driver: runs the sans-I/O core against the disk, the network, the clock and the FSM.

Owns one server's replicated log in motion: a tick timer, inbound Raft messages, proposals and
ReadIndex requests go into `RaftNode`; each `Ready` it returns is carried out in the core's
required order (leader-early replication, then snapshot/entries/hard state persisted in one
log write + fdatasync by the log-writer thread, then messages sent, then committed entries applied
to the FSM, then read states served, then `advance`); committed entries already in the durable
log are applied while the new ones are written. Proposals queued while a Ready is being
persisted go into the next one, which is the group commit; `?consistent` reads queued meanwhile
share the next ReadIndex round. A leader's new commit index reaches followers with the next
entries it replicates, or `commit_delay_s` later if none leave meanwhile (the core's
`defer_commit`).

It is a generic replicated log: it proposes bytes and applies committed entries to a
`StateMachine` (bytes in, result out), and knows nothing of Consul. The errors it raises are its
own (`RaftError` and subclasses); `proconsul.server.consensus` encodes the state store's commands
and translates these errors into RPC errors at the server boundary. A proposal whose entry is
overwritten, or whose leader steps down before it applies, is reported as `OutcomeUnknown`: it may
still commit under another leader.

Peers are known by node ID; their server-port addresses come from the bootstrap (expect)
discovery, join requests and inbound connections, and are kept in `data_dir/raft/addresses.json`
(older builds kept them in `peers.json`, which is now Consul's recovery file: see
`recover_from_peers_file` and docs/OPERATIONS.md).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import queue
import random
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import msgpack

from proconsul.malformed_log import MALFORMED
from proconsul.metrics import Metrics
from proconsul.raft import codec, recovery
from proconsul.raft.core import Compacted, NotLeader, ProposalRejected, RaftNode, Unavailable
from proconsul.raft.messages import (
    ConfChange,
    ConfChangeOp,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)
from proconsul.raft.storage import HardState as DiskHardState
from proconsul.raft.storage import LogRecord, SnapshotStore, atomic_write, private_dir, raft_log
from proconsul.raft.storage import SnapshotMeta as DiskSnapshotMeta
from proconsul.tasks import blocking_work, collector_paused
from proconsul.transport import RPCSecurity, TLSHandshakeError, adopt_stream, dial
from proconsul.wire import MAX_FRAME_BYTES, ConnType, encode_frame

logger = logging.getLogger(__name__)
# Entries are built with tuple.__new__ on the hot paths (see messages.Entry): no Python-level
# constructor per replicated entry.
_new_tuple = tuple.__new__

# X-Consul-LastContact of a server that never heard from a leader: Go's maximum time.Duration
# in milliseconds, what Consul reports then.
NEVER_CONTACTED_MS = (2**63 - 1) // 1_000_000


class StateMachine(Protocol):
    """What committed entries are applied to, in log order, on the event loop.

    `apply` must be deterministic (every server applies the same entries to the same state);
    `snapshot` returns the whole state, `restore` replaces it with one (a snapshot sent by the
    leader, or the one on disk at start-up).

    The driver keeps the loop running through large states with the split forms:
    `snapshot_view` takes a consistent view on the loop and returns the function that
    serialises it, which runs in a worker thread while entries keep applying;
    `decode_snapshot` runs in a worker thread and touches no live state, `install` then
    swaps its result in on the loop.
    """

    def apply(self, index: int, data: bytes, proposed: Any = None) -> Any:
        """Apply entry `index`; `data` is b"" for entries that carry no payload (no-op, conf change).

        `proposed` is, on the leader that proposed this very entry, the object the caller passed
        to `propose_bytes` alongside `data` (its decoded form), so the state machine may skip
        decoding its own bytes; None everywhere else. It must apply exactly as `data` would.
        """
        ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...

    def snapshot_view(self) -> Callable[[], bytes]:
        """The state now (cheap); the returned function serialises it from any thread."""
        ...

    def decode_snapshot(self, data: bytes) -> object:
        """A snapshot decoded into a new state, from any thread (raises when malformed)."""
        ...

    def install(self, decoded: object) -> None:
        """Replace the state with a `decode_snapshot` result (on the loop, cheap)."""
        ...

    def store_index(self, raft_index: int) -> int:
        """The index callers see for Raft index `raft_index` (the state's own index may be offset)."""
        ...


class RaftError(Exception):
    """A request this Raft node could not carry out; the message says why."""


class NoLeaderError(RaftError):
    """No leader is known (or this node has not started its Raft yet)."""

    def __init__(self, message: str = "no cluster leader") -> None:
        super().__init__(message)


class NotLeaderError(RaftError):
    """This node is not the leader; `leader` is the leader's address when known, else ""."""

    def __init__(self, leader: str = "") -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class OutcomeUnknown(RaftError):
    """The proposal may or may not commit (leadership was lost, the log tail was replaced)."""


class DiskStorage:
    """The core's `LogView` over the segment log and the snapshot files (all of it durable)."""

    def __init__(self, directory: str) -> None:
        private_dir(directory)
        self.log = raft_log(directory)
        self.snapshots = SnapshotStore(os.path.join(directory, "snapshots"))
        self.log.open()
        latest = self.snapshots.latest()
        if latest is not None:
            meta, data = latest
            self._snap = Snapshot(SnapshotMeta(meta.index, meta.term, Configuration.decode(meta.config)), data)
        else:
            self._snap = Snapshot(SnapshotMeta(0, 0, Configuration()), b"")

    def is_empty(self) -> bool:
        return self.log.hard_state.term == 0 and self.log.last_index < self.log.first_index and not self._snap.meta.index

    # LogView ---------------------------------------------------------------------------------

    def hard_state(self) -> HardState:
        hs = self.log.hard_state
        return HardState(hs.term, hs.vote or None, hs.commit)

    def snapshot(self) -> Snapshot:
        return self._snap

    def snapshot_meta(self) -> SnapshotMeta:
        return self._snap.meta

    def first_index(self) -> int:
        return self.log.first_index

    def last_index(self) -> int:
        return self.log.last_index

    def term(self, index: int) -> int:
        first = self.log.first_index
        if index == first - 1:
            return self.log.offset_term or (self._snap.meta.term if index == self._snap.meta.index else 0)
        if index < first - 1:
            raise Compacted(index)
        rec = self.log.get(index)
        if rec is None:
            raise Unavailable(index)
        return rec.term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo < self.log.first_index:
            raise Compacted(lo)
        if hi > self.log.last_index + 1:
            raise Unavailable(hi)
        out: list[Entry] = []
        size = 0
        kinds = codec.ENTRY_KINDS  # a dict lookup, not an Enum call, per entry read
        for rec in self.log.slice(lo, hi):
            size += len(rec.data)
            if out and max_bytes is not None and size > max_bytes:
                break
            out.append(_new_tuple(Entry, (rec.index, rec.term, kinds[rec.kind], rec.data)))
        return out

    # write side --------------------------------------------------------------------------------

    def install_snapshot(self, snap: Snapshot) -> None:
        meta = DiskSnapshotMeta(snap.meta.index, snap.meta.term, snap.meta.config.encode())
        self.snapshots.save(meta, snap.data)
        self.log.reset(snap.meta.index + 1, snap.meta.term)
        self._snap = snap

    def write_snapshot_file(self, snap: Snapshot) -> None:
        """A snapshot taken here, written to its file: safe in a worker thread (touches no log
        file). `serve_snapshot` and the driver's `_compact` follow it on the loop."""
        meta = DiskSnapshotMeta(snap.meta.index, snap.meta.term, snap.meta.config.encode())
        self.snapshots.save(meta, snap.data)

    def serve_snapshot(self, snap: Snapshot) -> None:
        """Serve `snap` (its file is durable) to the core and to followers that need it."""
        self._snap = snap

    def bootstrap(self, voters: list[str], learners: list[str] | None = None) -> None:
        """Write the initial configuration as snapshot 0 (only on an empty storage)."""
        snap = Snapshot(SnapshotMeta(0, 0, Configuration(frozenset(voters), frozenset(learners or ()))), b"")
        meta = DiskSnapshotMeta(0, 0, snap.meta.config.encode())
        self.snapshots.save(meta, b"")
        self._snap = snap


class PeersFileError(Exception):
    """`data_dir/raft/peers.json` (the outage-recovery file) is malformed; nothing was changed."""


class AddressBook:
    """Node ID -> server-port address, persisted so that a restarted server finds its peers."""

    def __init__(self, path: str | None, legacy_path: str | None = None) -> None:
        self.path = path
        self.addrs: dict[str, str] = {}
        if path and legacy_path and not os.path.exists(path) and os.path.exists(legacy_path):
            # Builds before the peers.json recovery kept the address book (a JSON object) under
            # that name; a recovery file is a JSON list and stays where it is.
            try:
                with open(legacy_path, encoding="utf-8") as fh:
                    legacy = json.load(fh)
            except (OSError, ValueError):
                legacy = None
            if isinstance(legacy, dict):
                os.replace(legacy_path, path)
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                self.addrs = dict(json.load(fh))

    def learn(self, node_id: str, addr: str) -> None:
        if not addr or self.addrs.get(node_id) == addr:
            return
        self.addrs[node_id] = addr
        if self.path:
            atomic_write(self.path, json.dumps(self.addrs, sort_keys=True).encode())


class _LogWriter:
    """One long-lived thread that runs the log's durable writes (one log write and its fdatasync),
    and a snapshot's log compaction (its frame, fdatasync and the old segments renamed aside), in
    order; between them, while nothing is queued, the renamed segments' deletion a piece at a time.

    The hand-off is a `SimpleQueue.put` and, for the answer, one `call_soon_threadsafe` (of a
    callback, `submit_then`, or resolving a future, `submit`): cheaper
    per batch than `run_in_executor` (a `concurrent.futures` future chained to an asyncio one,
    the pool's work item and thread accounting), and the fsync never queues behind unrelated
    work in the default executor. Writes run one at a time, in submission order.
    """

    _STOP = object()

    # The thread needs the GIL for a few short stretches per batch (around the write and the
    # fdatasync, which release it), while the event loop holds it nearly all the time under load. A thread
    # waiting for the GIL asks for it only after the interpreter's switch interval (5 ms by
    # default), so each stretch could wait that long and an fsync batch took several ms on a
    # busy leader. The process-wide interval is lowered to SWITCH_INTERVAL_S: the loop hands the
    # GIL over within that, at the cost of a thread switch only when another thread wants it.
    SWITCH_INTERVAL_S = 0.0005

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop, between: Callable[[], bool] | None = None) -> None:
        """`between`: background work done in bounded pieces between the submitted calls (a
        compacted segment's deletion, `DurableLog.delete_step`): called after each call while
        nothing else is queued, and again while it returns True and the queue stays empty."""
        if sys.getswitchinterval() > self.SWITCH_INTERVAL_S:
            sys.setswitchinterval(self.SWITCH_INTERVAL_S)
        # The loop every submit() comes from (the driver's): asyncio.get_running_loop() costs a
        # getpid() system call per call on Python 3.11.
        self._loop = loop
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._between = between
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = self._loop
        fut: asyncio.Future[Any] = loop.create_future()
        self._q.put((loop, fut, None, fn, args))
        return fut

    def submit_then(self, then: Callable[[tuple[bool, Any]], None], fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the thread, then `then((True, result))` or `then((False, error))`
        on the loop: one callback, no future and no task switch between the write and what
        follows it."""
        self._q.put((self._loop, None, then, fn, args))

    def _work(self) -> None:
        between, pending = self._between, False
        while True:
            if pending and self._q.empty():
                pending = self._step_between(between)
                continue
            item = self._q.get()
            if item is self._STOP:
                return
            pending = between is not None
            loop, fut, then, fn, args = item
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the waiter, which fails the loop
                outcome: tuple[bool, Any] = (False, exc)
            else:
                outcome = (True, result)
            try:
                if then is not None:
                    loop.call_soon_threadsafe(then, outcome)
                else:
                    loop.call_soon_threadsafe(_resolve, fut, outcome)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    @staticmethod
    def _step_between(between: Any) -> bool:
        try:
            return bool(between())
        except Exception:  # a background deletion that failed is retried at the next open
            logger.exception("raft: background work on the log writer failed")
            return False

    async def drain(self) -> None:
        """Return once every write submitted so far has finished."""
        await self.submit(lambda: None)

    def stop(self) -> None:
        """End the thread after the writes queued so far (does not wait for it)."""
        self._q.put(self._STOP)


# Log records freed per event-loop iteration after a compaction (~0.2-0.5 ms of frees on this
# box): dropping the ~100,000 records a snapshot compacts at once held the loop for 30-80 ms.
_RELEASE_SLICE = 2048


def _release_in_slices(loop: asyncio.AbstractEventLoop, records: list[Any]) -> None:
    """Free `records` one slice per loop iteration, from the end (nothing is moved)."""
    del records[-_RELEASE_SLICE:]
    if records:
        loop.call_soon(_release_in_slices, loop, records)


def _resolve(fut: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if fut.done():
        return
    ok, value = outcome
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class _Wake:
    """The Raft loop's wake-up: `set` from anything on the loop, `wait` in the loop's task.

    An `asyncio.Event` waited under `asyncio.timeout` costs, per wait, the event's future and
    waiter list, a `Timeout` context manager with its timer and the task's (un)cancel
    bookkeeping; the loop waits once or twice per write. This is one future and one timer handle.
    """

    __slots__ = ("_set", "_fut")

    def __init__(self) -> None:
        self._set = False
        self._fut: asyncio.Future[None] | None = None

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def is_set(self) -> bool:
        return self._set

    def clear(self) -> None:
        self._set = False

    async def wait(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        """Until `set` is called or `timeout_s` passes (a cancellation propagates)."""
        if self._set:
            return
        fut = self._fut = loop.create_future()
        timer = loop.call_later(max(0.0, timeout_s), _set_none, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._fut = None


def _set_none(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# `RaftServer.propose_now`'s callback: ((store index, result), None) once applied, or (None, error).
Settled = Callable[[tuple[int, Any] | None, BaseException | None], None]


class _Settlements:
    """Outcomes of callback proposals (`_Settle`), handed out in one event-loop callback per
    batch: the driver settles a loop iteration's applied entries together, and their owners'
    work (a fast-path PUT writes its answer) runs after the iteration, not inside it."""

    __slots__ = ("_due", "_loop", "_held")

    def __init__(self) -> None:
        self._due: list[tuple[Settled, tuple[int, Any] | None, BaseException | None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # While the driver runs cycles from an event-loop callback of its own (a peer's read,
        # a write's completion), it hands the outcomes out itself once they end (`release`):
        # no event-loop iteration between a write's apply and its answer.
        self._held = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand outcomes out on `loop` (the driver's, from `start()`)."""
        self._loop = loop

    def add(self, done: Settled, value: tuple[int, Any] | None, exc: BaseException | None) -> None:
        due = self._due
        if not due and not self._held:
            (self._loop or asyncio.get_running_loop()).call_soon(self._run)
        due.append((done, value, exc))

    def hold(self) -> None:
        """Outcomes added from now on wait for `release` (not a `call_soon`)."""
        self._held = True

    def release(self) -> None:
        """Hand out what is due now; called after the cycles, outside any caller's call."""
        self._held = False
        if self._due:
            self._run()

    def _run(self) -> None:
        due, self._due = self._due, []
        for done, value, exc in due:
            try:
                done(value, exc)
            except Exception:  # one owner's failure must not keep the others' outcomes
                logger.exception("raft: a proposal's callback failed")


class _Settle:
    """A pending proposal's waiter that calls back (`propose_now`): the part of a future's
    interface the driver uses on its pending proposals (`done`, `set_result`, `set_exception`)."""

    __slots__ = ("_done", "_fn", "_settlements")

    def __init__(self, settlements: _Settlements, fn: Settled) -> None:
        self._settlements = settlements
        self._fn = fn
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, value: tuple[int, Any]) -> None:
        self._done = True
        self._settlements.add(self._fn, value, None)

    def set_exception(self, exc: BaseException) -> None:
        self._done = True
        self._settlements.add(self._fn, None, exc)


# A ReadIndex waiter (`RaftServer.read_barrier`): called with None once its read may be served
# from the local FSM, or with the error that ends it.
ReadDone = Callable[[BaseException | None], None]


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return  # the reader gave up (its task was cancelled)
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


def _notify(waiters: list[ReadDone], exc: BaseException | None) -> None:
    for done in waiters:
        try:
            done(exc)
        except Exception:  # one reader's failure must not keep the others (or the loop) waiting
            logger.exception("raft: a ReadIndex waiter failed")


def _notify_soon(loop: asyncio.AbstractEventLoop | None, waiters: list[ReadDone], exc: BaseException | None) -> None:
    """Call the waiters from the event loop, not from inside a Raft loop iteration: a reader's
    own work (a fast-path read is answered from its callback) must not delay the loop."""
    if waiters:
        (loop or asyncio.get_running_loop()).call_soon(_notify, waiters, exc)


class _InboundRaft(asyncio.Protocol):
    """One inbound Raft connection, as an asyncio protocol: length-prefixed msgpack frames (see
    `proconsul.wire`), the first the dialler's hello (`{"id", "addr"}`), then messages, which go
    to the server's inbox as they are decoded; the loop is woken once per read.

    A message of the wrong shape is dropped (one warning); a frame that breaks the framing (over
    the size limit, not msgpack) closes the connection, as the listener does for other streams.
    Nothing is ever written back: answers leave on this server's own link to the peer.

    `learn(id, addr)` gets the hello; `deliver(messages)` each read's decoded messages (never
    an empty list); `closed` is resolved when the connection ends.
    """

    def __init__(self, learn: Callable[[str, str], None], deliver: Callable[[list[Message]], None], peer: Any,
                 closed: asyncio.Future[None]) -> None:
        self._learn = learn
        self._deliver = deliver
        self._peer = peer
        self._closed = closed
        self._buf = bytearray()
        self._hello = True
        self._failed = False  # a broken frame closed the connection: ignore whatever still arrives
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data  # the common case: whole frames in one read, parsed without a copy
        size = len(src)
        pos = 0
        header = _FRAME_HEADER
        decoded: list[Message] = []
        broken = ""
        with memoryview(src) as view:
            while size - pos >= 4:
                (length,) = header.unpack_from(src, pos)
                if length > MAX_FRAME_BYTES:
                    broken = f"frame of {length} bytes exceeds the {MAX_FRAME_BYTES}-byte limit"
                    break
                end = pos + 4 + length
                if end > size:
                    break
                try:
                    raw = msgpack.unpackb(view[pos + 4 : end], raw=False)
                except Exception as exc:  # msgpack raises several unrelated exception types
                    broken = f"undecodable frame: {exc}"
                    break
                pos = end
                if self._hello:
                    self._hello = False
                    if isinstance(raw, dict) and isinstance(raw.get("id"), str) and isinstance(raw.get("addr"), str):
                        self._learn(raw["id"], raw["addr"])
                    continue
                try:
                    m = codec.decode_message(raw)
                except Exception as exc:  # any shape a peer sends; the codec's errors vary by field
                    logger.warning("raft: dropping undecodable message: %s: %s", type(exc).__name__, exc, extra=MALFORMED)
                    continue
                decoded.append(m)
        if decoded:  # what arrived whole before a broken frame is kept
            self._deliver(decoded)
        if broken:
            self._protocol_error(broken)
            return
        if buf:
            del buf[:pos]
        elif pos < size:
            buf += data[pos:]

    def _protocol_error(self, why: str) -> None:
        logger.warning("transport: closing connection from %s: %s", self._peer, why, extra=MALFORMED)
        self._failed = True
        self._buf.clear()
        if self._transport is not None:
            self._transport.close()

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._buf = bytearray()
        if not self._closed.done():
            self._closed.set_result(None)


_FRAME_HEADER = struct.Struct(">I")


class _PeerLink:
    """Outbound Raft messages to one peer, over one connection, dropped when it is down.

    A send phase's messages are written straight to the socket by `flush`; the link's task
    dials, writes what had to queue (while dialling, or behind a full socket buffer) and notices
    a lost connection."""

    QUEUE_LIMIT = 4096
    # Above this many unsent bytes in the socket's buffer, messages wait in the queue for the
    # link's task, which writes them once the peer has drained what is already buffered.
    DIRECT_WRITE_LIMIT = 256 * 1024

    def __init__(self, node: RaftServer, peer: str) -> None:
        self.node = node
        self.peer = peer
        self.queue: asyncio.Queue[Message] = asyncio.Queue(self.QUEUE_LIMIT)
        # The connected stream (None while dialling) and the messages of the current send phase.
        self.writer: asyncio.StreamWriter | None = None
        self._out: list[Message] = []
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"raft-link:{peer}")

    def send(self, m: Message) -> bool:
        """Collect `m`; it leaves with the rest of this send phase at `flush`. True when it is the
        phase's first message (the caller then flushes this link once, at the phase's end)."""
        self._out.append(m)
        return len(self._out) == 1

    def flush(self) -> None:
        """Send what `send` collected: written to the socket at once, all in one write, when the
        link is up with nothing queued before it and the socket keeps up; else queued for the
        link's task. A write per send phase without waking the task is what makes a Ready's
        messages cheap (every member sends at least one per replicated batch)."""
        out, self._out = self._out, []
        if not out:
            return
        w = self.writer
        if w is not None and self.queue.empty():
            transport = w.transport
            if not transport.is_closing() and transport.get_write_buffer_size() < self.DIRECT_WRITE_LIMIT:
                try:
                    w.write(b"".join(encode_frame(codec.encode_message(x)) for x in out))
                except Exception:  # never let one bad message stop the server; Raft resends
                    logger.exception("raft: sending to %s failed", self.peer)
                return
        for m in out:
            try:
                self.queue.put_nowait(m)
            except asyncio.QueueFull:
                pass  # Raft tolerates loss; the next heartbeat or retry resends

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            addr = self.node.addresses.addrs.get(self.peer)
            if not addr:
                await asyncio.sleep(0.5)
                self._drain()
                continue
            try:
                _, writer = await dial(addr, ConnType.RAFT, self.node.security, timeout_s=5)
            except (TimeoutError, OSError) as exc:
                if isinstance(exc, TLSHandshakeError):  # a peer with a certificate we do not trust
                    logger.warning("raft: link to %s: %s", self.peer, exc, extra=MALFORMED)
                self._drain()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            try:
                writer.write(encode_frame({"id": self.node.id, "addr": self.node.address}))
                self.writer = writer
                while True:
                    m = await self.queue.get()
                    batch = [m]
                    while not self.queue.empty() and len(batch) < 256:
                        batch.append(self.queue.get_nowait())
                    writer.write(b"".join(encode_frame(codec.encode_message(x)) for x in batch))
                    await writer.drain()
            except (OSError, ConnectionError):
                pass
            except Exception:  # never let one bad message end the link for good
                logger.exception("raft: link to %s failed; reconnecting", self.peer)
                self._drain()
            finally:
                self.writer = None
                writer.close()

    def _drain(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()

    def close(self) -> None:
        self.task.cancel()


class RaftServer:
    """One server's Raft: the core plus its I/O, over a `StateMachine`."""

    def __init__(
        self,
        node_id: str,
        node_name: str,
        address: str,
        fsm: StateMachine,
        data_dir: str,
        *,
        tick_s: float = 0.1,
        election_tick: int = 10,
        snapshot_threshold: int = 16384,
        trailing_logs: int = 10000,
        snapshot_interval_s: float | None = None,
        commit_delay_s: float = 0.01,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        security: RPCSecurity | None = None,
        on_leadership: Callable[[bool], None] | None = None,
        on_leader_change: Callable[[str | None], None] | None = None,
        fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.id = node_id
        self.node_name = node_name
        self.address = address
        # TLS for links to peers (verify_outgoing); None: plaintext. See proconsul.transport.
        self.security = security
        self.fsm = fsm
        self.tick_s = tick_s
        self.election_tick = election_tick
        self.snapshot_threshold = snapshot_threshold
        self.trailing_logs = trailing_logs
        # A leader tells followers a new commit index with the next AppendEntries that carries
        # entries, or after this delay if none leaves meanwhile (the core's defer_commit): a
        # client writing one write after another then costs each follower one message and one
        # answer per write instead of two. Followers apply up to this much later; nothing that
        # is acknowledged waits for it. Consul's leader has the same lag (CommitTimeout, 50 ms).
        self.commit_delay_s = commit_delay_s
        # How often to check whether a snapshot is due (Consul's raft_snapshot_interval, with
        # hashicorp/raft's jitter of up to one interval); None: after every Ready.
        self.snapshot_interval_s = snapshot_interval_s
        self._next_snapshot_check = 0.0
        # A snapshot being serialised and written in a worker thread: (its start, the
        # metadata, the future of its Snapshot). The driver finishes it between Readys.
        self._snapshot_job: tuple[float, SnapshotMeta, asyncio.Future[Snapshot]] | None = None
        self.rng = rng or random.Random()
        raft_dir = os.path.join(data_dir, "raft")
        self.storage = DiskStorage(raft_dir)
        self.addresses = AddressBook(os.path.join(raft_dir, "addresses.json"), os.path.join(raft_dir, "peers.json"))
        self.addresses.learn(node_id, address)
        # Before recovery: replaying a peers.json recovery applies entries, which is timed.
        m = metrics or Metrics()
        # Per-entry timings of a loop iteration (or a recovery replay), recorded once per iteration (observe_many):
        # raft.fsm.apply's and raft.commitTime's milliseconds.
        self._fsm_ms: list[float] = []
        self._commit_ms: list[float] = []
        self._proposed_now = 0  # `propose_now` calls not yet counted in raft.apply
        self._m_apply = m.counter("raft", "apply", help="writes proposed by this leader")
        self._m_commit_time = m.sample("raft", "commitTime", help="ms from proposal to applied result on the leader")
        self._m_fsm_apply = m.sample("raft", "fsm", "apply", help="ms the state machine took to apply one entry")
        self._m_state = {
            "candidate": m.counter("raft", "state", "candidate", help="elections this server started"),
            "leader": m.counter("raft", "state", "leader", help="times this server became leader"),
            "follower": m.counter("raft", "state", "follower", help="times this server became a follower"),
        }
        self._m_last_contact = m.sample(
            "raft", "leader", "lastContact", help="ms since the leader last heard from each follower, sampled per tick"
        )
        self._m_dispatch = m.sample("raft", "leader", "dispatchLog", help="ms for the leader to write a batch to its log, fsync included")
        self._m_store_logs = m.sample(
            "raft", "rpc", "appendEntries", "storeLogs", help="ms for a follower to write a batch to its log, fsync included"
        )
        self._m_append_entries = m.sample(
            "raft", "rpc", "appendEntries",
            help="ms for a follower to handle the AppendEntries of one loop iteration: step, persist, answer",
        )
        self._m_snapshot = m.sample("raft", "snapshot", "takeSnapshot", help="ms to take a snapshot and compact the log")
        self._m_restore = m.sample("raft", "fsm", "restore", help="ms to restore the state machine from a snapshot")
        self.recovered_from_peers_file = self.recover_from_peers_file(os.path.join(raft_dir, "peers.json"))
        self.recovery = self._load_recovery(raft_dir)
        self.core: RaftNode | None = None
        self._inbox: list[Message] = []
        self._wake = _Wake()
        # The driver's state between cycles (see `_cycle`): a Ready's write is in flight
        # (`_busy`), a cycle is running (`_cycling`), a snapshot-installing Ready waits for the
        # task (`_slow`); the next tick, when a deferred commit index is due to be sent (0:
        # none) and its timer, and the role the last Ready reported.
        self._busy = False
        self._cycling = False
        self._kick_due = False  # a `_kick` is scheduled (propose_now)
        self._slow: tuple[Any, tuple[Any, ...]] | None = None
        self._started_loop = False
        self._next_tick = 0.0
        self._commit_due = 0.0
        self._commit_timer: asyncio.TimerHandle | None = None
        self._was_leader = False
        self._was_role = "follower"
        self._links: dict[str, _PeerLink] = {}
        # Raft index -> (term, its waiter, the decoded object proposed with the bytes or None,
        # the perf_counter reading it was proposed at for raft.commitTime, 0.0: not timed). The
        # waiter is a future, or a `_Settle` for a proposal answered by callback (`propose_now`).
        self._pending: dict[int, tuple[int, asyncio.Future[tuple[int, Any]] | _Settle, Any, float]] = {}
        self._settlements = _Settlements()
        # ReadIndex: reads waiting for the next round, and the rounds under way (context -> when
        # it started, the reads it answers), oldest first. One round serves every read that was
        # waiting when it started; reads arriving while it is under way wait for the next one.
        self._read_waiting: list[ReadDone] = []
        self._reads: dict[bytes, tuple[float, list[ReadDone]]] = {}
        self._read_seq = 0
        self._writer: _LogWriter | None = None
        # The event loop the driver runs on, kept by start(): asyncio.get_running_loop() costs a
        # getpid() system call per call on Python 3.11, and the write path asked it ~11 times per
        # write. Everything that uses it runs after start() (a core exists).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._last_leader_contact = 0.0
        # (leader commit index, when the leader said so) this follower has yet to apply: its data
        # counts as current as of a leader message only once it applied what that message knew.
        self._contact_pending: deque[tuple[int, float]] = deque()
        self.leader_id: str | None = None
        self.applied_index = 0
        # Called with True when this server becomes leader, False when it stops being one.
        self._on_leadership: Callable[[bool], None] = on_leadership or (lambda is_leader: None)
        # Called when the replication loop dies of an error; the agent shuts down (exit 1).
        self._fatal: Callable[[BaseException], None] = fatal or (lambda exc: None)
        # Called with the new leader's ID (or None) whenever it changes, on every server.
        self._on_leader_change: Callable[[str | None], None] = on_leader_change or (lambda leader: None)
        self.started = asyncio.Event()
        # hashicorp/raft's metric names (the registry adds Consul's prefix). A server built
        # without a registry (tests) records into a private one nobody reads.
        # Leader only: when each follower last answered (monotonic seconds).
        self._follower_contact: dict[str, float] = {}
        # Loop time until which a leadership transfer started here counts as planned (pending
        # writes survive losing leadership to it), and until which they may wait to apply.
        self._transfer_until = 0.0
        self._pending_deadline = 0.0
        self._recovering = False  # a live recovery (recover_live) is being installed

    # ------------------------------------------------------------------------------ set-up

    @property
    def has_state(self) -> bool:
        return not self.storage.is_empty() or bool(self.storage.snapshot_meta().config.voters)

    def bootstrap(self, voters: dict[str, str]) -> None:
        """Start a new cluster with these voters (ID -> address); only on empty storage."""
        if self.has_state:
            return
        for vid, addr in voters.items():
            self.addresses.learn(vid, addr)
        self.storage.bootstrap(sorted(voters))

    def recover_from_peers_file(self, path: str) -> bool:
        """Consul's outage recovery: rewrite the configuration to the servers in `peers.json`.

        The file is a JSON list of `{"id", "address", "non_voter"}` (Raft protocol 3). When it
        exists at start, everything in the log (committed or not, as hashicorp/raft's
        RecoverCluster does) is applied to the state, which is written as a snapshot at the
        last log index carrying exactly those servers as the configuration; the log is then
        compacted past it. The file is deleted so the recovery happens once. Every server of
        the recovered cluster must get the same file before it starts.
        """
        if not os.path.exists(path):
            return False
        with open(path, encoding="utf-8") as fh:
            try:
                raw = json.load(fh)
            except ValueError as exc:
                raise PeersFileError(f"raft: {path} is not valid JSON: {exc}") from None
        if isinstance(raw, dict) and os.path.exists(self.addresses.path or ""):
            # An old-style address book left next to the migrated one: not a recovery request.
            os.remove(path)
            return False
        if not isinstance(raw, list) or not raw:
            raise PeersFileError(f"raft: {path} must be a non-empty JSON list of {{id, address, non_voter}}")
        voters: dict[str, str] = {}
        learners: dict[str, str] = {}
        for item in raw:
            if not isinstance(item, dict) or not item.get("id") or not item.get("address"):
                raise PeersFileError(f"raft: {path}: every entry needs an id and an address (got {item!r})")
            (learners if item.get("non_voter") else voters)[str(item["id"])] = str(item["address"])
        if not voters:
            raise PeersFileError(f"raft: {path} names no voter")
        for sid, addr in {**voters, **learners}.items():
            self.addresses.learn(sid, addr)
        config = Configuration(frozenset(voters), frozenset(learners))
        storage = self.storage
        if not self.has_state:
            storage.bootstrap(sorted(voters), sorted(learners))
        else:
            snap = storage.snapshot()
            if snap.data:
                self.fsm.restore(snap.data)
            index, term = snap.meta.index, snap.meta.term
            last = storage.last_index()
            if last >= storage.first_index():
                for e in storage.entries(storage.first_index(), last + 1):
                    if e.index <= index:
                        continue
                    self._apply_to_fsm(e)
                    index, term = e.index, e.term
                self._record_timings()
            recovered = Snapshot(SnapshotMeta(index, term, config), self.fsm.snapshot())
            storage.install_snapshot(recovered)
        recovery.clear_marker(os.path.dirname(path))  # this recovery supersedes an earlier one
        os.remove(path)
        logger.warning(
            "raft: recovered the configuration from %s: voters %s, non-voters %s (state kept up to index %d); "
            "file deleted", path, sorted(voters), sorted(learners), storage.snapshot_meta().index,
        )
        return True

    def _load_recovery(self, raft_dir: str) -> recovery.Marker | None:
        """`proconsul operator raft recover`'s marker: its voters replace older configurations."""
        marker = recovery.load_marker(raft_dir)
        if marker is None:
            return None
        for sid, addr in marker.voters.items():
            self.addresses.learn(sid, addr)
        hs = self.storage.log.hard_state
        if hs.term < marker.term:  # the marker was written but the term bump was not
            self.storage.log.save(hard_state=DiskHardState(marker.term, "", hs.commit))
        logger.info("raft: recovered configuration in force from term %d: voters %s",
                    marker.term, sorted(marker.voters))
        return marker

    async def start(self) -> None:
        self._stopped = False
        snap = self.storage.snapshot()
        if snap.data:
            await self._restore_fsm(snap.data, "restoring the state from the last snapshot")
        self.applied_index = snap.meta.index
        self.core = self._new_core(snap.meta.index)
        loop = self._loop = asyncio.get_running_loop()
        self._settlements.bind(loop)
        self._writer = _LogWriter(f"raft-log-writer:{self.node_name}", loop, self.storage.log.delete_step)
        self._task = loop.create_task(self._run(), name="raft")
        self._task.add_done_callback(self._loop_ended)
        self.started.set()

    def _new_core(self, applied: int) -> RaftNode:
        """The protocol state, rebuilt from what is durable (at start, and by a live recovery)."""
        return RaftNode(
            self.id,
            self.storage,
            self.rng,
            election_tick=self.election_tick,
            heartbeat_tick=1,
            snapshot_threshold=self.snapshot_threshold,
            applied=applied,
            recovery=self.recovery.recovery() if self.recovery else None,
            defer_commit=self.commit_delay_s > 0,
        )

    async def recover_live(self, marker: recovery.Marker) -> None:
        """`proconsul operator raft recover` against a running survivor (docs/RECOVERY.md): make
        `marker` durable as the stopped-server path does (term first, then the marker file) and
        restart the protocol state from storage under it, without restarting the agent.

        Refused (RecoveryError) while this server has a leader or is not among the new voters.
        The replication loop is stopped between two Readies (the core has none outstanding, so
        no persist is in flight on the worker thread) and started again on the new core; the
        state machine keeps what it applied. Writes and reads waiting on the old core fail.
        """
        if self._recovering:
            raise recovery.RecoveryError("a recovery is already being installed on this server")
        core = self._core()
        if self.is_leader() or core.leader:
            leader = core.leader or self.id
            raise recovery.RecoveryError(
                f"this server has a leader ({leader} at {self.addresses.addrs.get(leader, '?')}); "
                "recovery is only for a cluster that lost its majority")
        if self.id not in marker.voters:
            raise recovery.RecoveryError(f"this server ({self.id}) is not among the new voters")
        if marker.term <= core.term:
            raise recovery.RecoveryError(f"the recovery term {marker.term} is not past this server's term {core.term}")
        self._recovering = True
        try:
            await self._install_recovery(core, marker)
        finally:
            self._recovering = False
        logger.warning("raft: recovered while running: voters %s from term %d, kept log up to index %d (term %d)",
                       sorted(marker.voters), marker.term, marker.kept_index, marker.kept_term)

    async def _install_recovery(self, core: RaftNode, marker: recovery.Marker) -> None:
        await self._between_readies()
        if core.ready_outstanding:
            raise recovery.RecoveryError("the Raft loop is stuck in the middle of a write; nothing was changed")
        if core.leader or core.term >= marker.term:  # while we waited
            raise recovery.RecoveryError("this server found a leader or a newer term meanwhile; nothing was changed")
        task, self._task = self._task, None
        if task is not None:
            task.remove_done_callback(self._loop_ended)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._writer is not None:
            await self._writer.drain()  # a compaction queued on the log writer: before our write
        try:
            hs = self.storage.log.hard_state
            self.storage.log.save(hard_state=DiskHardState(max(hs.term, marker.term), "",
                                                           max(hs.commit, core.commit_index)))
            raft_dir = os.path.dirname(self.storage.log.path)
            recovery.write_marker(raft_dir, marker)
            for sid, addr in marker.voters.items():
                self.addresses.learn(sid, addr)
            self.recovery = marker
            self._fail_pending(OutcomeUnknown("the server was recovered; the write may or may not commit"))
            self._fail_reads(NoLeaderError())
            self.leader_id = None
            self._transfer_until = self._pending_deadline = 0.0
            self.core = self._new_core(self.applied_index)
        finally:
            # Whatever happened, the server goes on running Raft (on the old core if the
            # writes failed: nothing changed then but perhaps the term).
            self._task = asyncio.get_running_loop().create_task(self._run(), name="raft")
            self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # A failed persist or apply leaves this server unable to take part safely:
            # fail-stop, loudly, rather than linger as a silent, leaderless member.
            logger.critical("raft: the replication loop failed; stopping the agent", exc_info=exc)
            self._fatal(exc)

    async def _between_readies(self, timeout_s: float = 10.0) -> None:
        """Until the replication loop is not in the middle of a Ready (no persist in flight on
        the worker thread), so it can be cancelled without the thread writing to a log
        that is closed or rewritten under it (which crashed the process in SQLite)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (self.core is not None and self.core.ready_outstanding and self._task is not None
               and not self._task.done() and loop.time() < deadline):
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        # Refuse proposals from now on: the loop that would commit them is going away, and a
        # proposal accepted by the core after this point would wait forever.
        self._stopped = True
        if self._task is not None:
            await self._between_readies()
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._snapshot_job is not None:
            # Let its thread finish the file it is writing (it never touches the log).
            job, self._snapshot_job = self._snapshot_job[2], None
            await asyncio.gather(job, return_exceptions=True)
        for link in self._links.values():
            link.close()
        self._fail_pending(OutcomeUnknown("server shutting down; the write may or may not have committed"))
        self._fail_reads(NoLeaderError("server shutting down"))
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                # A write cancelled with the loop task may still be running: let it end before
                # the database closes under it.
                await writer.drain()
            finally:
                writer.stop()
        self.storage.log.close()

    # ---------------------------------------------------------------------------- client API

    def is_leader(self) -> bool:
        return self.core is not None and self.core.leader == self.id and self.core.role.value == "leader"

    def ready_for_reads(self) -> bool:
        """The leader may serve default-mode reads once it committed an entry of its term and
        applied everything committed (the new leader's NOOP gets it there within a round trip)."""
        core = self.core
        return (
            core is not None
            and self.is_leader()
            and core.committed_in_term()
            and self.applied_index >= core.commit_index
        )

    def leader_address(self) -> str:
        if self.core is None or not self.core.leader:
            return ""
        return self.addresses.addrs.get(self.core.leader, "")

    def _heard_from_leader(self, m: Message) -> None:
        """A message from the leader: this server's data is current as of now once it applied
        what the leader had committed when sending it (at once if it already has).

        Consul (hashicorp/raft) counts any AppendEntries as contact, so a follower that rejoins
        after a partition reports a last contact of ~0 ms while it still serves the data of
        before the partition; `?max_stale` and `X-Consul-LastContact` then promise freshness it
        does not have. A heartbeat's `commit` is capped at the follower's match index, so the
        leader sends its own commit index in the heartbeat's otherwise unused `index`.
        """
        now = time.monotonic()
        if m.type == MsgType.SNAP and m.snapshot is not None:
            needed = m.snapshot.meta.index
        elif m.type == MsgType.HEARTBEAT:
            needed = max(m.index, m.commit)
        else:
            needed = m.commit
        if needed <= self.applied_index:
            self._last_leader_contact = now
            return
        pending = self._contact_pending
        if pending and pending[-1][0] == needed:
            pending[-1] = (needed, now)  # the leader's commit was still this at `now`
        else:
            pending.append((needed, now))
            if len(pending) > 64:  # far behind: fold it into the last one, whose older time
                pending.pop()     # only understates freshness
                pending[-1] = (needed, pending[-1][1])

    def _caught_up_with_leader(self) -> None:
        pending = self._contact_pending
        while pending and pending[0][0] <= self.applied_index:
            _, at = pending.popleft()
            self._last_leader_contact = max(self._last_leader_contact, at)

    def last_contact_ms(self) -> int:
        """How long ago this server last heard from a leader (0 on the leader itself).

        A server that has not heard from any leader since it started reports Go's largest
        duration, as Consul does (time since the zero time): its state may be arbitrarily old.
        """
        if self.is_leader():
            return 0
        if not self._last_leader_contact:
            return NEVER_CONTACTED_MS
        return int((time.monotonic() - self._last_leader_contact) * 1000)

    def follower_contact_age_s(self, peer: str) -> float | None:
        """Leader only: seconds since `peer` last answered (None: never, or not the leader)."""
        if not self.is_leader():
            return None
        at = self._follower_contact.get(peer)
        return None if at is None else max(0.0, time.monotonic() - at)

    def log_stats(self) -> dict[str, int]:
        """This server's log position and term (Consul's Status.RaftStats)."""
        core = self._core()
        return {"last_index": core.last_index, "last_term": core.last_term, "term": core.term}

    def voters(self) -> list[tuple[str, str, str]]:
        if self.core is None:
            return []
        return [(v, v, self.addresses.addrs.get(v, "")) for v in sorted(self.core.config.voters)]

    def configuration(self) -> dict[str, Any]:
        """This server's view of the Raft configuration (Consul's RaftConfigurationResponse,
        without node names): every member with its address, role and last known log index.

        `LastIndex` is exact for this server; the leader also knows each peer's match index,
        a follower reports 0 for the others.
        """
        core = self._core()
        conf = core.config
        servers = []
        for sid in conf.members():
            last = 0
            if sid == self.id:
                last = core.last_index
            elif self.is_leader():
                try:
                    last = core.progress(sid)[0]
                except KeyError:
                    last = 0
            servers.append({
                "ID": sid,
                "Address": self.addresses.addrs.get(sid, ""),
                "Leader": sid == core.leader,
                "Voter": sid in conf.voters,
                "LastIndex": last,
            })
        return {"Servers": servers, "Index": core.config_index}

    async def propose_bytes(self, data: bytes, proposed: Any = None) -> tuple[int, Any]:
        """Append `data` to the log; returns (store index, the state machine's result) once it
        applied here. `proposed`, if given, is handed to `StateMachine.apply` with the entry
        when this leader applies it (see there)."""
        core = self._core()
        for _ in range(3):
            try:
                proposal = core.propose(data)
                break
            except NotLeader as exc:
                raise NotLeaderError(self.addresses.addrs.get(exc.leader_hint or "", "")) from None
            except ProposalRejected as exc:
                # A leadership transfer is running: nothing was proposed, so wait for it to end
                # and then propose here (abandoned) or let the caller forward (done).
                if not self._transfer_in_progress():
                    raise RaftError(str(exc)) from None
                await self._wait_out_transfer()
        else:
            raise NoLeaderError("leadership transfer in progress")
        fut: asyncio.Future[tuple[int, Any]] = self._running_loop().create_future()
        self._pending[proposal.index] = (proposal.term, fut, proposed, time.perf_counter())
        self._m_apply.incr()
        self._poke()
        return await fut

    def propose_batch(self, items: list[tuple[bytes, Any]]) -> list[asyncio.Future[tuple[int, Any]]]:
        """Append several entries at once, `(data, proposed)` each as `propose_bytes` takes them
        (the writes a follower forwards in one frame): one wake of the loop, and no coroutine
        per entry. Each future resolves as `propose_bytes` would return or raise.

        All or none: NotLeaderError, or RaftError while a leadership transfer runs, is raised
        before anything is proposed, so the caller may send the writes elsewhere (or wait the
        transfer out through `propose_bytes`). Nothing between two `core.propose` calls can
        change the core's role, so a batch whose first entry is accepted is accepted whole.
        """
        core = self._core()
        loop = self._running_loop()
        start = time.perf_counter()
        futs: list[asyncio.Future[tuple[int, Any]]] = []
        pending = self._pending
        try:
            for data, proposed in items:
                proposal = core.propose(data)
                fut: asyncio.Future[tuple[int, Any]] = loop.create_future()
                pending[proposal.index] = (proposal.term, fut, proposed, start)
                futs.append(fut)
        except NotLeader as exc:
            if futs:  # unreachable (see above); never drop proposed entries' futures
                raise AssertionError("raft: a batch proposal was refused half-way") from exc
            raise NotLeaderError(self.addresses.addrs.get(exc.leader_hint or "", "")) from None
        except ProposalRejected as exc:
            if futs:
                raise AssertionError("raft: a batch proposal was refused half-way") from exc
            raise RaftError(str(exc)) from None
        if not futs:
            return futs
        self._m_apply.incr(len(futs))
        self._poke()
        return futs

    def propose_now(self, data: bytes, proposed: Any, done: Settled) -> None:
        """`propose_batch` of one entry answered by callback instead of a future (the HTTP fast
        path's writes on the leader): `done((store index, result), None)` once it applied here,
        or `done(None, error)` with what `propose_bytes` would raise; never from inside this
        call. The outcomes of one loop iteration's applied entries are handed out together, in
        one event-loop callback (`_Settlements`), not a future and its callbacks per write.
        NotLeaderError, or RaftError while a leadership transfer runs, is raised with nothing
        proposed."""
        core = self._core()
        try:
            proposal = core.propose(data)
        except NotLeader as exc:
            raise NotLeaderError(self.addresses.addrs.get(exc.leader_hint or "", "")) from None
        except ProposalRejected as exc:
            raise RaftError(str(exc)) from None
        self._pending[proposal.index] = (proposal.term, _Settle(self._settlements, done), proposed, time.perf_counter())
        self._proposed_now += 1  # raft.apply, counted once per loop iteration (_record_timings)
        if self._can_inline():
            # The driver is idle: the proposals of this event-loop pass (every request read in
            # it) go out together in one cycle as soon as the pass ends, without a task switch.
            # Not from here: the first alone would leave the others behind its write.
            if not self._kick_due:
                self._kick_due = True
                self._running_loop().call_soon(self._kick)
        else:
            self._poke()

    async def verify_leader(self) -> None:
        """ReadIndex: returns once a quorum confirmed leadership and the FSM caught up.

        The read joins the next ReadIndex round (see `read_barrier`).
        """
        self._core()
        fut: asyncio.Future[None] = self._running_loop().create_future()
        self.read_barrier(functools.partial(_settle, fut))
        # No timeout of its own: the loop fails a round that is not confirmed in time.
        await fut

    def read_barrier(self, done: ReadDone) -> None:
        """ReadIndex without a task: `done(None)` is called (soon, from the event loop, never
        from inside this call) once a quorum confirmed this server's leadership after the call
        and the FSM applied the commit index it had then; `done(error)` when that cannot happen
        (leadership lost, no quorum within two election timeouts, shutdown).

        Reads share rounds, as etcd's linearizable read loop does: one round (one heartbeat to
        each follower) is under way at a time, and the next one starts, for every read that
        arrived meanwhile, as soon as it ends. A read therefore never joins a round that started
        before it arrived, whose confirmation could predate it; the round it joins records the
        commit index after the read arrived and confirms leadership after that.

        Raises:
            NotLeaderError: this server is not the leader now.
        """
        self._core()
        if not self.is_leader():
            raise NotLeaderError(self.leader_address())
        self._read_waiting.append(done)
        if len(self._read_waiting) == 1:
            self._poke()

    def _start_read_round(self, core: RaftNode) -> None:
        """One ReadIndex round for every read waiting now, unless one is under way (called by
        the loop, before ready()). A round unanswered for a heartbeat interval (a heartbeat or
        its answer lost with a link) no longer holds the next one back."""
        now = time.monotonic()
        if self._reads and now - next(reversed(self._reads.values()))[0] < self.tick_s:
            return
        waiting, self._read_waiting = self._read_waiting, []
        self._read_seq += 1
        ctx = f"{self.id}:{self._read_seq}".encode()
        try:
            core.read_index(ctx)
        except NotLeader:
            _notify_soon(self._loop, waiting, NotLeaderError(self.leader_address()))
            return
        self._reads[ctx] = (now, waiting)

    def _release_reads(self, read_states: Any) -> None:
        """Confirmed rounds (their index is applied): answer their reads, and let the next
        round start."""
        done: list[ReadDone] = []
        for rs in read_states:
            entry = self._reads.pop(rs.context, None)
            if entry is not None:
                done.extend(entry[1])
        _notify_soon(self._loop, done, None)
        if self._read_waiting:
            self._poke()

    def _expire_reads(self) -> None:
        """Fail the rounds unconfirmed for two election timeouts (no quorum answers; with
        check-quorum this leader steps down within one, which fails them sooner)."""
        limit = time.monotonic() - self.tick_s * self.election_tick * 2
        while self._reads:
            ctx, (started, waiters) = next(iter(self._reads.items()))
            if started > limit:
                break
            del self._reads[ctx]
            _notify_soon(self._loop, waiters, NoLeaderError())

    def _fail_reads(self, exc: Exception) -> None:
        waiting = [w for _, ws in self._reads.values() for w in ws] + self._read_waiting
        self._read_waiting = []
        self._reads.clear()
        _notify_soon(self._loop, waiting, exc)

    async def add_voter(self, node_id: str, addr: str) -> None:
        """Leader only: add a server to the configuration (single-server change)."""
        core = self._core()
        self.addresses.learn(node_id, addr)
        if node_id in core.config.voters:
            return
        try:
            proposal = core.propose_conf_change(ConfChange(ConfChangeOp.ADD_VOTER, node_id))
        except NotLeader:
            raise NotLeaderError(self.leader_address()) from None
        fut: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self._pending[proposal.index] = (proposal.term, fut, None, 0.0)
        self._poke()
        await fut

    async def remove_voter(self, node_id: str) -> None:
        """Leader only: remove a server (voter or not) from the configuration."""
        core = self._core()
        if not self.is_leader():
            raise NotLeaderError(self.leader_address())
        if node_id not in core.config.voters and node_id not in core.config.learners:
            raise RaftError(f'id "{node_id}" was not found in the Raft configuration')
        try:
            proposal = core.propose_conf_change(ConfChange(ConfChangeOp.REMOVE, node_id))
        except NotLeader:
            raise NotLeaderError(self.leader_address()) from None
        except ProposalRejected as exc:
            raise RaftError(f"raft: cannot remove {node_id}: {exc}") from None
        fut: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self._pending[proposal.index] = (proposal.term, fut, None, 0.0)
        self._poke()
        try:
            await fut
        except OutcomeUnknown:
            # Removing the leader itself: it steps down as its removal commits, which fails
            # pending futures; the change took effect when appended, so check the outcome.
            if node_id != self.id or node_id in self._core().config.members():
                raise
        logger.info("raft: removed %s from the configuration", node_id)

    async def transfer_leadership(self, timeout_s: float, target: str = "") -> str | None:
        """Leader only: hand leadership to voter `target`, or by default to the most up-to-date
        other voter (as Consul's leaving leader does, so the cluster never waits out an election
        timeout). Returns the new leader's ID, or None when this is not a leader, has no other
        voter, or the transfer did not happen within `timeout_s`.

        Raises RaftError when `target` is this server or not a voter. While the transfer runs,
        proposals wait for it (see `propose_bytes`) and the writes already proposed are kept
        waiting for their entries to apply under the new leader (the transferee has them all
        before it campaigns), so a planned transfer fails no write.
        """
        core = self._core()
        if not self.is_leader():
            return None
        if target:
            if target == self.id:
                raise RaftError(f"cannot transfer leadership to itself ({target} is the leader)")
            if target not in core.config.voters:
                raise RaftError(f'id "{target}" is not a voter in the Raft configuration')
        else:
            others = [v for v in sorted(core.config.voters) if v != self.id]
            if not others:
                return None
            target = max(others, key=lambda v: core.progress(v)[0])  # ties: the first by ID
        try:
            core.transfer_leadership(target)
        except (NotLeader, ProposalRejected):
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._transfer_until = loop.time() + max(timeout_s, self.tick_s * self.election_tick * 2)
        self._poke()
        while loop.time() < deadline:
            if self.leader_id and self.leader_id != self.id:
                return str(self.leader_id)
            await asyncio.sleep(0.02)
        return None

    def _transfer_in_progress(self) -> bool:
        return self.core is not None and self.core.transferee is not None

    async def _wait_out_transfer(self) -> None:
        """Until the leadership transfer this leader runs ends (done or abandoned)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.tick_s * self.election_tick * 2
        while self._transfer_in_progress() and self.is_leader() and loop.time() < deadline:
            await asyncio.sleep(0.01)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        return loop if loop is not None else asyncio.get_running_loop()

    def _core(self) -> RaftNode:
        if self._stopped:
            raise NoLeaderError("server shutting down")
        if self.core is None:
            raise NoLeaderError()
        return self.core

    # ------------------------------------------------------------------------------- inbound

    async def serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Handler for inbound ConnType.RAFT connections: a hello frame, then messages.

        The stream's transport is handed to an `_InboundRaft` protocol, which decodes frames
        into the inbox as the loop reads them: no task switch, read call or copy through a
        StreamReader per message. When the driver is idle (no Ready being written), the
        messages are stepped at once, from the read (`_deliver`); else the write's completion
        steps them. This task only waits for the end.
        """
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        adopt_stream(reader, writer, _InboundRaft(self.addresses.learn, self._deliver, writer.get_extra_info("peername"), closed))
        await closed

    def _deliver(self, msgs: list[Message]) -> None:
        self._inbox.extend(msgs)
        if not self._can_inline():
            self._poke()
        elif self._was_leader and (self._kick_due or len(self._pending) > 1 or self._reads):
            # A leader steps its followers' answers at the end of the event-loop pass, with
            # the requests read in it proposed by then: one Ready takes them all. With at most
            # one write in flight, none proposed in this pass and no ReadIndex round under way
            # (one client writing: c1) there is nothing to gather, and the answer is stepped
            # now, a loop iteration earlier.
            if not self._kick_due:
                self._kick_due = True
                self._running_loop().call_soon(self._kick)
        else:
            self._drive_inline(answer=True)

    # ---------------------------------------------------------------------------- the loop
    #
    # One Ready at a time, in three parts: `_cycle` (steps the inbox, takes the Ready, sends the
    # leader's early messages, applies what is already durable and hands the write to the log
    # writer), the write on the writer's thread, and `_finish` (sends, applies, advances),
    # called from the write's completion callback. The next cycle follows at once when there is
    # work. Cycles are started by the driver task (ticks, proposals, reads, a snapshot to
    # install), and, when the driver is idle, directly by what brings the work: a read of peer
    # messages (`_deliver`), and the end of the event-loop pass in which `propose_now` was
    # called (`_kick`, so a pass's requests still go out together): no task switch between a
    # message's arrival and its step, nor between a durable write and its answer. While a
    # write is in flight nothing wakes the task (`_poke`): its completion's cycles take all
    # the work. `_cycling` makes sure a cycle never starts inside another (an FSM apply or a
    # callback that proposes only queues work).

    def _kick(self) -> None:
        self._kick_due = False
        if self._can_inline():
            self._drive_inline(answer=True)
        else:
            self._poke()

    def _poke(self) -> None:
        """Wake the driver task for new work, unless a write is in flight: its completion
        runs the next cycles, which take all the work there is (no task switch per poke)."""
        if not self._busy:
            self._wake.set()

    def _can_inline(self) -> bool:
        return (not self._busy and not self._cycling and not self._stopped and self._slow is None
                and self._task is not None and not self._task.done() and self._started_loop)

    def _drive_inline(self, answer: bool = False) -> None:
        """Run cycles now, from a callback of the event loop (not the driver task): an error
        fails the server as the task's would, never the caller. With `answer` (an event-loop
        callback of the driver's own, never a proposer's call) the proposals the cycles
        applied are answered right after them."""
        settlements = self._settlements
        if answer:
            settlements.hold()
        try:
            self._run_cycles()
        except Exception as exc:
            self._driver_failed(exc)
        finally:
            if answer:
                settlements.release()

    def _driver_failed(self, exc: BaseException) -> None:
        self._stopped = True  # no further cycle: this server can no longer take part safely
        task = self._task
        if task is not None:
            task.remove_done_callback(self._loop_ended)
            task.cancel()
        logger.critical("raft: the replication loop failed; stopping the agent", exc_info=exc)
        self._fatal(exc)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._next_tick = loop.time() + self.tick_s
        self._commit_due = 0.0
        self._was_leader = False
        self._was_role = "follower"
        self._started_loop = True
        try:
            while True:
                if self._slow is not None:
                    # A Ready that installs a snapshot: restored in a worker thread, awaited here.
                    rd, ctx = self._slow
                    await self._persist(rd)
                    self._slow = None
                    self._finish(rd, ctx)
                    continue
                if not self._busy:
                    self._run_cycles()
                    if self._slow is not None:
                        continue
                if self._busy:
                    # The write's completion runs the next cycles (which tick when one is due);
                    # what woke us meanwhile is handled by them. Look again now and then.
                    self._wake.clear()
                    await self._wake.wait(loop, max(0.005, self._next_tick - loop.time()))
                    continue
                due = min(self._next_tick, self._commit_due) if self._commit_due else self._next_tick
                await self._wake.wait(loop, max(0.0, due - loop.time()))
                self._wake.clear()
        finally:
            self._started_loop = False

    def _run_cycles(self) -> None:
        """Cycles until there is no work, or a write is in flight (its completion goes on)."""
        self._cycling = True
        try:
            while self._cycle():
                pass
        finally:
            self._cycling = False

    def _cycle(self) -> bool:
        """One Ready, up to its write; True when it was carried out whole and more work waits."""
        loop = self._loop
        assert loop is not None
        core = self._core_now()
        now = loop.time()
        if self._commit_due and now >= self._commit_due:
            self._commit_due = 0.0
            self._commit_timer = None
            core.flush_commit()
        if self._snapshot_job is not None and self._snapshot_job[2].done():
            self._finish_snapshot(core)
        if now >= self._next_tick:
            core.tick()
            self._next_tick = now + self.tick_s
            if self._pending_deadline and now >= self._pending_deadline:
                self._pending_deadline = 0.0
                if not self._was_leader:
                    self._fail_pending(
                        OutcomeUnknown("leadership moved before the write applied; it may or may not commit")
                    )
            if self._reads:
                self._expire_reads()
            if self._was_leader:
                self._sample_last_contact()
                # A leader is in contact with itself: once deposed, its data is as old as this.
                self._last_leader_contact = time.monotonic()
            if self.snapshot_interval_s is not None and not core.has_ready():
                self._maybe_snapshot(core)
        appends_from = 0.0  # when this cycle began handling AppendEntries (0: none came)
        if self._inbox:
            inbox, self._inbox = self._inbox, []
            was_leader = self._was_leader
            for m in inbox:
                if m.type is MsgType.APP and not appends_from:
                    appends_from = time.perf_counter()
                if was_leader and m.type in (MsgType.APP_RESP, MsgType.HEARTBEAT_RESP):
                    self._follower_contact[m.frm] = time.monotonic()
                try:
                    core.step(m)
                except Exception:  # a bad peer message must not stop the server
                    logger.exception("raft: step failed for %s from %s", m.type.name, m.frm)
                    continue
                if m.frm == core.leader and m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
                    self._heard_from_leader(m)
        if self._read_waiting:
            self._start_read_round(core)
        rd = core.ready()
        if rd is None:
            self._record_timings()
            return False
        if rd.soft_state is not None:
            self._soft_state_changed(core, rd.soft_state)
        if rd.early_messages:
            self._send_all(rd.early_messages)
        committed = rd.committed_entries
        if rd.snapshot is None and committed:
            # Committed entries already in the durable log are applied while this Ready's
            # own entries are being written (committed means durable on a quorum, and these
            # are durable here too): a write's answer does not wait for the fsync of the
            # proposals that arrived after it. Entries this Ready appends wait (below).
            durable_last = rd.entries[0].index - 1 if rd.entries else committed[-1].index
            n = 0
            for e in committed:
                if e.index > durable_last:
                    break
                self._apply(e)
                n += 1
            committed = committed[n:]
        ctx = (committed, time.perf_counter() if rd.entries else 0.0, appends_from, self._was_leader)
        if rd.snapshot is not None:
            self._busy = True
            self._slow = (rd, ctx)
            self._wake.set()
            return False
        write = self._prepare_write(rd)
        if write is None:
            self._finish(rd, ctx)
            return bool(self._inbox) or core.has_ready() or bool(self._read_waiting)
        assert self._writer is not None, "start() first"
        self._busy = True
        self._writer.submit_then(functools.partial(self._written, rd, ctx, write), self.storage.log.write_db, *write)
        return False

    def _written(self, rd: Any, ctx: tuple[Any, ...], write: tuple[Any, ...], outcome: tuple[bool, Any]) -> None:
        """The log writer finished `rd`'s write (on the loop): carry the Ready out, go on."""
        settlements = self._settlements
        settlements.hold()  # the writes this completion applies are answered when it ends
        try:
            try:
                ok, value = outcome
                if not ok:
                    raise value
                self._wrote(write)
                self._finish(rd, ctx)
            except Exception as exc:
                self._driver_failed(exc)
                return
            if self._can_inline():
                self._drive_inline()
        finally:
            settlements.release()

    def _finish(self, rd: Any, ctx: tuple[Any, ...]) -> None:
        """The Ready after its write: send, apply, release reads, advance."""
        committed, write_start, appends_from, was_leader = ctx
        self._busy = False
        if write_start:
            (self._m_dispatch if was_leader else self._m_store_logs).since(write_start)
        if rd.messages:
            self._send_all(rd.messages)
        if appends_from:
            self._m_append_entries.since(appends_from)  # answered (hashicorp/raft's rpc.appendEntries)
        for e in committed:
            self._apply(e)
        if self._contact_pending:
            self._caught_up_with_leader()
        if rd.read_states:
            self._release_reads(rd.read_states)
        self._record_timings()
        core = self._core_now()
        core.advance(rd)
        if not core.commit_unsent():
            if self._commit_due:
                self._commit_due = 0.0
                if self._commit_timer is not None:
                    self._commit_timer.cancel()
                    self._commit_timer = None
        elif not self._commit_due:
            loop = self._loop
            assert loop is not None
            self._commit_due = loop.time() + self.commit_delay_s
            # The driver task may sleep until the next tick: wake it when the commit is due.
            self._commit_timer = loop.call_at(self._commit_due, self._poke)
        self._maybe_snapshot(core)

    def _soft_state_changed(self, core: RaftNode, soft: Any) -> None:
        if soft.leader != self.leader_id:
            self._on_leader_change(soft.leader)
        self.leader_id = soft.leader
        if soft.leader == self.id:
            self._last_leader_contact = time.monotonic()
        role = soft.role.value
        if role != self._was_role:
            counter = self._m_state.get(role)
            if counter is not None:
                counter.incr()
            self._was_role = role
        is_leader = role == "leader"
        if is_leader != self._was_leader:
            logger.info("raft: %s leadership (term %d)", "gained" if is_leader else "lost", core.term)
            loop = self._loop
            assert loop is not None
            if not is_leader and loop.time() < self._transfer_until:
                # A transfer we started: the new leader holds every pending entry and
                # commits them in its term; they resolve as they apply (or time out).
                self._pending_deadline = self._transfer_until
            elif not is_leader:
                self._fail_pending(
                    OutcomeUnknown("leadership lost before the write applied; it may or may not commit")
                )
            if not is_leader:
                # The core drops its ReadIndex requests with leadership.
                self._fail_reads(NoLeaderError())
            self._was_leader = is_leader
            now = time.monotonic()
            self._follower_contact = {peer: now for peer, _, _ in self.voters() if peer != self.id}
            self._on_leadership(is_leader)

    def _core_now(self) -> RaftNode:
        core = self.core
        assert core is not None, "start() first"
        return core

    def _prepare_write(self, rd: Any) -> tuple[Any, ...] | None:
        """`rd`'s log write as `DurableLog.write_db` arguments, or None when nothing needs an
        fsync (no entries, and only the commit index moved, or nothing at all)."""
        log = self.storage.log
        if not rd.entries and rd.hard_state is None:
            return None
        hs = None
        if rd.hard_state is not None:
            hs = DiskHardState(rd.hard_state.term, rd.hard_state.vote or "", rd.hard_state.commit)
            durable = log.durable_hard_state
            if not rd.entries and (hs.term, hs.vote) == (durable.term, durable.vote):
                # Only the commit index moved: it can always be relearned from the leader, so it
                # rides along with the next entries instead of costing an fsync (etcd's MustSync
                # rule; a third of the leader's fsyncs in bench/raft_vs_etcd.py were these).
                log.hard_state = hs
                return None
        batch = [LogRecord(e.index, e.term, int(e.kind), e.data) for e in rd.entries]
        return (hs, batch, log.check_append(batch, None))

    def _wrote(self, write: tuple[Any, ...]) -> None:
        """A `_prepare_write` write is durable: the log's memory follows it."""
        hs, batch, truncate = write
        self.storage.log.apply_memory(hs, batch, truncate)
        if truncate is not None:
            # Our uncommitted tail was replaced by a new leader's: those writes' fate is unknown.
            self._fail_pending_from(truncate)

    async def _persist(self, rd: Any) -> None:
        """A Ready's persistence awaited in the driver task (a Ready that installs a snapshot)."""
        if rd.snapshot is not None:
            if self._writer is not None:
                # A compaction queued on the log writer ends before the log is reset here.
                await self._writer.drain()
            self.storage.install_snapshot(rd.snapshot)
            await self._restore_fsm(rd.snapshot.data, "restoring a snapshot from the leader")
            self.applied_index = rd.snapshot.meta.index
            self._fail_pending_upto(rd.snapshot.meta.index)
        write = self._prepare_write(rd)
        if write is None:
            return
        # The fsync runs off the event loop; proposals arriving meanwhile form the next batch.
        assert self._writer is not None, "start() first"
        await self._writer.submit(self.storage.log.write_db, *write)
        self._wrote(write)

    def _send_all(self, msgs: tuple[Message, ...]) -> None:
        """Send one phase's messages: each peer's go out together (see `_PeerLink.flush`)."""
        touched: list[_PeerLink] = []
        for m in msgs:
            link = self._links.get(m.to)
            if link is None:
                link = self._links[m.to] = _PeerLink(self, m.to)
            if link.send(m):
                touched.append(link)
        for link in touched:
            link.flush()

    def _sample_last_contact(self) -> None:
        now = time.monotonic()
        voters = {peer for peer, _, _ in self.voters()}
        for peer, seen in list(self._follower_contact.items()):
            if peer in voters:
                self._m_last_contact.observe((now - seen) * 1000.0)
            else:
                del self._follower_contact[peer]

    def _apply_to_fsm(self, e: Entry, proposed: Any = None) -> Any:
        if e.kind == EntryKind.NORMAL and e.data:
            start = time.perf_counter()
            result = self.fsm.apply(e.index, e.data, proposed)
            self._fsm_ms.append((time.perf_counter() - start) * 1000.0)  # recorded by _record_timings
            return result
        self.fsm.apply(e.index, b"")
        return None

    def _record_timings(self) -> None:
        """Record the per-entry timings and the `propose_now` proposals collected since the last
        call, one call per metric."""
        if self._proposed_now:
            self._m_apply.incr(self._proposed_now)
            self._proposed_now = 0
        if self._fsm_ms:
            self._m_fsm_apply.observe_many(self._fsm_ms)
            self._fsm_ms = []
        if self._commit_ms:
            self._m_commit_time.observe_many(self._commit_ms)
            self._commit_ms = []

    def _apply(self, e: Entry) -> None:
        pending = self._pending.pop(e.index, None)
        # Our own proposal's object only if this entry is that proposal (same term).
        proposed = pending[2] if pending is not None and pending[0] == e.term else None
        result = self._apply_to_fsm(e, proposed)
        self.applied_index = e.index
        if pending is not None:
            term, fut, _, start = pending
            if fut.done():
                return
            if term == e.term:
                # Callers see the store's index (X-Consul-Index), offset after a restore.
                fut.set_result((self.fsm.store_index(e.index), result))
                if start:
                    self._commit_ms.append((time.perf_counter() - start) * 1000.0)
            else:
                fut.set_exception(RaftError("the write did not commit: a new leader committed another entry at its index; it is safe to retry"))

    def snapshot_in_progress(self) -> bool:
        """A snapshot is being serialised and written in a worker thread."""
        return self._snapshot_job is not None

    async def _restore_fsm(self, data: bytes, what: str) -> None:
        """Replace the state with a snapshot's: decoded in a worker thread (the loop keeps
        serving, from the old state), swapped in on the loop. Nothing applies meanwhile: the
        driver awaits this before it applies further entries."""
        start = time.perf_counter()
        def decode() -> object:
            with collector_paused():
                return self.fsm.decode_snapshot(data)

        with blocking_work(what):
            decoded = await asyncio.get_running_loop().run_in_executor(None, decode)
            self.fsm.install(decoded)
        self._m_restore.since(start)

    def _maybe_snapshot(self, core: RaftNode) -> None:
        if self._snapshot_job is not None:
            return  # one at a time; the driver finishes it when its thread is done
        if self.snapshot_interval_s is not None:
            now = time.monotonic()
            if now < self._next_snapshot_check:
                return
            self._next_snapshot_check = now + self.snapshot_interval_s * (1 + self.rng.random())
        index = core.snapshot_due()
        if index is None:
            return
        # On the loop, at the applied index: the metadata and a consistent view of the state
        # (references to immutable records). Serialising and writing the file, the slow part,
        # run in a worker thread while entries keep applying.
        start = time.perf_counter()
        meta = core.make_snapshot(index, b"").meta
        encode = self.fsm.snapshot_view()
        storage = self.storage

        def write() -> Snapshot:
            snap = Snapshot(meta, encode())
            storage.write_snapshot_file(snap)
            return snap

        future = asyncio.get_running_loop().run_in_executor(None, write)
        future.add_done_callback(lambda _: self._poke())
        self._snapshot_job = (start, meta, future)

    def _finish_snapshot(self, core: RaftNode) -> None:
        """Between Readys (no log write in flight): serve the written snapshot, compact the log
        (see `_compact`: the compaction's file work is queued on the log writer)."""
        assert self._snapshot_job is not None
        start, meta, future = self._snapshot_job
        self._snapshot_job = None
        try:
            snap = future.result()
        except Exception:
            logger.exception("raft: snapshot at index %d failed; retrying later", meta.index)
            return
        if self.storage.snapshot_meta().index >= meta.index:
            return  # a newer snapshot (from the leader) was installed meanwhile
        self.storage.serve_snapshot(snap)
        self._compact(meta.index - self.trailing_logs)
        self._m_snapshot.since(start)
        logger.info("raft: snapshot at index %d", meta.index)

    def _compact(self, upto_index: int) -> None:
        """Drop the log up to `upto_index` (covered by the snapshot just written) without
        holding the loop: the memory's bounds move now, the compaction frame's fdatasync and the
        old segments' deletion run on the log writer thread (in order with the log writes), and
        the dropped records are freed a slice per loop iteration."""
        log = self.storage.log
        compaction = log.compact_memory(upto_index)
        if compaction is None:
            return
        first, offset_term, dropped = compaction
        writer, loop = self._writer, self._loop
        if writer is None or loop is None:  # not started: nothing else writes the log
            log.write_compaction(first, offset_term)
            return
        # The old segments are renamed aside there and deleted in pieces between later writes
        # (`DurableLog.delete_step`, the writer's `between` work).
        writer.submit_then(self._compaction_written, log.write_compaction, first, offset_term, True)
        loop.call_soon(_release_in_slices, loop, dropped)

    def _compaction_written(self, outcome: tuple[bool, Any]) -> None:
        ok, value = outcome
        if ok:
            return
        if self._stopped:
            logger.warning("raft: the log compaction failed while stopping: %s", value)
            return
        # The log refuses every later write after a failed fdatasync: fail as a write would.
        self._driver_failed(value)

    def _fail_pending(self, exc: Exception) -> None:
        for _, fut, _, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()

    def _fail_pending_from(self, index: int) -> None:
        for i in [i for i in self._pending if i >= index]:
            _, fut, _, _ = self._pending.pop(i)
            if not fut.done():
                fut.set_exception(OutcomeUnknown("a new leader replaced this server's uncommitted log tail; the write may or may not commit"))

    def _fail_pending_upto(self, index: int) -> None:
        for i in [i for i in self._pending if i <= index]:
            _, fut, _, _ = self._pending.pop(i)
            if not fut.done():
                fut.set_exception(OutcomeUnknown("a snapshot replaced the log; the write's fate is unknown"))
