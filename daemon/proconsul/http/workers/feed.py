"""The agent's side of the replica stream: bootstrap, applied entries, status and barriers.

Owns the unix control socket HTTP workers connect to. A new connection gets the worker's
configuration (HELLO), then a snapshot of the store (a `snapshot_view` taken on the event loop,
encoded in a thread) and, in order after it, every entry Raft applies from that moment: the
`on_applied` subscriber of `server.consensus.CommandStateMachine`. Apply is deterministic, so the
worker's copy equals this store at each index. It also pushes the Raft status (leader? last
contact?) when it changes and answers barrier requests with it: written after every entry applied
so far, an answer tells the worker it holds everything this process had applied when it asked.
Workers report what their telemetry recorded (METRICS frames), merged into the agent's registry
(`proconsul.metrics.remote`), so `/v1/agent/metrics`, the Prometheus view and the statsd sinks
count every request whichever process answered it. A snapshot install replaces the state wholesale: every connection is closed, and the workers
re-bootstrap. So is one whose worker reads too slowly (its buffer passes `MAX_BUFFER`).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from collections.abc import Callable
from typing import Any

from proconsul.http.workers import frames
from proconsul.metrics.registry import Metrics
from proconsul.metrics.remote import merge_report
from proconsul.state.store import Store

logger = logging.getLogger(__name__)

# A worker further behind than this many buffered bytes is cut off and re-bootstraps.
MAX_BUFFER = 64 * 1024 * 1024
STATUS_INTERVAL_S = 0.05


class RaftStatus:
    """What the feed reports about Raft (the agent's `RaftLog` answers these)."""

    def is_leader(self) -> bool: ...  # pragma: no cover - protocol
    def ready_for_reads(self) -> bool: ...  # pragma: no cover - protocol
    def leader_address(self) -> str: ...  # pragma: no cover - protocol
    def last_contact_ms(self) -> int: ...  # pragma: no cover - protocol


class _Conn:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        # Entries applied while the snapshot is being encoded: sent right after it.
        self.held: list[bytes] | None = []

    def send(self, data: bytes) -> bool:
        if self.held is not None:
            self.held.append(data)
            return True
        if self.writer.is_closing():
            return False
        self.writer.write(data)
        return self.writer.transport.get_write_buffer_size() <= MAX_BUFFER


class ApplyFeed:
    """Serves the replica stream to the workers over a unix socket (see the module docstring).

    `status` returns the Raft status object (leader? ready? last contact), or None before Raft
    exists: the feed is built before the Raft driver, which takes `on_applied` as its state
    machine's subscriber, so the status is looked up late rather than set afterwards.
    """

    def __init__(self, store: Store, hello: Callable[[], dict[str, Any]], status: Callable[[], Any],
                 metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics  # where the workers' reports go (None: dropped)
        self.hello = hello
        self._status = status
        self.applied = 0
        self._conns: set[_Conn] = set()
        self._server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._last_status = b""

    # ---------------------------------------------------------------- the Raft subscriber

    def on_applied(self, index: int, data: bytes | None) -> None:
        self.applied = max(self.applied, index) if data is not None else index
        if not self._conns:
            return
        if data is None:
            logger.info("http workers: the state was replaced by a snapshot; workers re-bootstrap")
            for conn in list(self._conns):
                self._drop(conn)
            return
        frame = frames.entry(index, data)
        for conn in list(self._conns):
            if not conn.send(frame):
                logger.warning("http workers: a worker fell too far behind the apply stream; it re-bootstraps")
                self._drop(conn)

    # ------------------------------------------------------------------------- the socket

    async def start(self, path: str) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path)
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="http-workers-status")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            self._drop(conn)

    def config_changed(self) -> None:
        """Send the (reloaded) configuration to every worker."""
        hello = frames.frame(frames.HELLO, pickle.dumps(self.hello()))
        for conn in list(self._conns):
            conn.send(hello)

    def _drop(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        conn.writer.close()

    def _status_frame(self, kind: bytes, seq: int = 0) -> bytes:
        s = self._status()
        return frames.status(kind, s.is_leader(), s.ready_for_reads(), bool(s.leader_address()),
                             max(int(s.last_contact_ms()), 0), self.applied, seq)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            if not self._conns or self._status() is None:
                continue
            frame = self._status_frame(frames.STATUS)
            if frame == self._last_status:
                continue
            self._last_status = frame
            for conn in list(self._conns):
                conn.send(frame)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        try:
            writer.write(frames.frame(frames.HELLO, pickle.dumps(self.hello())))
            # The view and the registration happen together, with no await between: every entry
            # applied after the view is held for this connection, none before it.
            view = self.store.snapshot_view()
            applied = self.applied
            self._conns.add(conn)
            blob = await asyncio.to_thread(view)
            writer.write(frames.snapshot(applied, blob))
            held, conn.held = conn.held or [], None
            for data in held:
                writer.write(data)
            if self._status() is not None:
                writer.write(self._status_frame(frames.STATUS))
            while True:
                kind, payload = await frames.read_frame(reader)
                if kind == frames.BARRIER:
                    # Written after every entry applied so far: see the module docstring.
                    seq = frames.split_index(payload)[0]
                    if not conn.send(self._status_frame(frames.BARRIER_ANSWER, seq)):
                        break
                elif kind == frames.METRICS and self.metrics is not None:
                    merge_report(self.metrics, payload)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self._drop(conn)
