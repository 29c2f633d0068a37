"""A worker's read replica: the state store copy fed by the agent's apply stream.

Owns the worker's end of the control socket (http/workers/feed.py): it adopts the snapshot it
is sent, then applies every entry through the same `CommandStateMachine` the servers use, so its
`store` equals the agent's at each index; it keeps the agent's last reported Raft status (the
`Consensus` a worker-side `server.rpc.Server` reads: leader?, last contact) and runs barriers:
all default-mode reads that arrive in one event-loop iteration share one "what have you applied?"
round trip, whose answer arrives after every entry the agent had applied when it answered. One
barrier is in flight at a time: reads arriving meanwhile (they cannot use it: it was asked
before them) form the next batch, sent when its answer comes, so under load a batch holds every
read of a round trip. A waiting read is a callback in its batch's list (the fast path parks its
connection on it), not a task or a future.
`serving` is false until bootstrapped and whenever the stream breaks: the worker then forwards
every request to the agent.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from collections.abc import Callable
from typing import Any

from proconsul.http.fast import BarrierResult
from proconsul.http.workers import frames
from proconsul.server.consensus import CommandStateMachine
from proconsul.state.fsm import FSM
from proconsul.state.store import Store

logger = logging.getLogger(__name__)


class BarrierFailed(Exception):
    """The stream broke before the agent answered: the read must be forwarded."""


class Replica:
    def __init__(self, path: str, on_hello: Callable[[dict[str, Any]], None]) -> None:
        self.path = path
        self.on_hello = on_hello
        self.store = Store()
        self.machine = CommandStateMachine(FSM(self.store))
        self.serving = False
        self.applied = 0
        # The agent's Raft status as last reported.
        self.leader = False
        self.ready = False
        self.known_leader = False
        self.contact_ms = 0
        self._writer: asyncio.StreamWriter | None = None
        self._seq = 0
        # Callbacks of the barriers sent and not answered (by sequence number), and of the next.
        self._waiting: dict[int, list[Callable[[BarrierResult], None]]] = {}
        self._next: list[Callable[[BarrierResult], None]] = []
        self.hello_seen = asyncio.Event()

    # ------------------------------------------------------ Consensus, as server.rpc reads it

    def is_leader(self) -> bool:
        return self.leader

    def ready_for_reads(self) -> bool:
        return self.ready

    def leader_address(self) -> str:
        return "agent" if self.known_leader else ""

    def last_contact_ms(self) -> int:
        return self.contact_ms

    # -------------------------------------------------------------------------- barriers

    async def barrier(self) -> tuple[bool, bool]:
        """(the agent is the leader?, ready for reads?) once this replica holds every entry the
        agent had applied after this call was made. Calls in one loop iteration share a trip."""
        fut: asyncio.Future[BarrierResult] = asyncio.get_running_loop().create_future()

        def done(result: BarrierResult) -> None:
            if not fut.done():
                fut.set_result(result)

        if not self.barrier_then(done):
            raise BarrierFailed()
        result = await fut
        if result is None:
            raise BarrierFailed()
        return result

    def barrier_then(self, done: Callable[[BarrierResult], None]) -> bool:
        """Call `done((leader?, ready?))` once this replica holds every entry the agent had
        applied after this call, or `done(None)` if the stream breaks first. False (and no call)
        when the replica is not following the agent. Calls in one loop iteration share a trip."""
        if not self.serving or self._writer is None:
            return False
        if not self._next and not self._waiting:
            asyncio.get_running_loop().call_soon(self._send_barrier)
        self._next.append(done)
        return True

    def _send_barrier(self) -> None:
        if self._waiting:
            return  # one barrier in flight at a time: its answer sends this batch
        batch, self._next = self._next, []
        if not batch:
            return
        if self._writer is None or self._writer.is_closing():
            _call(batch, None)
            return
        self._seq += 1
        self._waiting[self._seq] = batch
        self._writer.write(frames.frame(frames.BARRIER, self._seq.to_bytes(8, "big")))

    def _fail_waiters(self) -> None:
        waiting, self._waiting = self._waiting, {}
        batch, self._next = self._next, []
        for callbacks in (*waiting.values(), batch):
            _call(callbacks, None)

    def report(self, payload: bytes) -> bool:
        """Send the agent a metrics report (`proconsul.metrics.remote`); False when not connected
        (the report is then lost: telemetry is best effort, as a statsd datagram is)."""
        writer = self._writer
        if writer is None or writer.is_closing():
            return False
        writer.write(frames.frame(frames.METRICS, payload))
        return True

    # ---------------------------------------------------------------------------- stream

    async def run(self, gone: Callable[[], None]) -> None:
        """Stay connected: bootstrap, apply, re-bootstrap after a break. Calls `gone` when the
        agent's socket no longer accepts connections (the agent has exited)."""
        failures = 0
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=1 << 20)
            except OSError:
                failures += 1
                if failures >= 25:
                    gone()
                    return
                await asyncio.sleep(0.2)
                continue
            failures = 0
            try:
                await self._follow(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
                if self.serving:
                    logger.warning("http worker: the apply stream broke (%s); forwarding until re-bootstrapped",
                                   type(exc).__name__)
            except Exception:  # anything else: say so, and start afresh rather than stop following
                logger.exception("http worker: the apply stream failed; forwarding until re-bootstrapped")
            finally:
                self.serving = False
                self._writer = None
                self._fail_waiters()
                writer.close()
            await asyncio.sleep(0.1)

    async def _follow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            kind, payload = await frames.read_frame(reader)
            if kind == frames.ENTRY:
                index, data = frames.split_index(payload)
                self.machine.apply(index, data)
                self.applied = index
            elif kind == frames.BARRIER_ANSWER or kind == frames.STATUS:
                self.leader, self.ready, self.known_leader, self.contact_ms, _, seq = frames.parse_status(payload)
                if kind == frames.BARRIER_ANSWER:
                    batch = self._waiting.pop(seq, None)
                    if self._next:
                        self._send_barrier()  # the reads that arrived meanwhile: their own trip
                    if batch:
                        _call(batch, (self.leader, self.ready))
            elif kind == frames.SNAPSHOT:
                index, blob = frames.split_index(payload)
                decoded = await asyncio.to_thread(Store.decode, blob)
                self.store.adopt(decoded)
                self.applied = index
                self._writer = writer
                if not self.serving:
                    logger.info("http worker: replica bootstrapped at index %d", index)
                self.serving = True
            elif kind == frames.HELLO:
                self.on_hello(pickle.loads(payload))
                self.hello_seen.set()


def _call(callbacks: list[Callable[[BarrierResult], None]], result: BarrierResult) -> None:
    """Run each waiting read's callback; one that fails must not break the stream for the rest."""
    for done in callbacks:
        try:
            done(result)
        except Exception:
            logger.exception("http worker: a read waiting for a barrier failed")
