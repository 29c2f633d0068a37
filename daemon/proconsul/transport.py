"""TCP transport on the server port: first-byte multiplexing, RPC serving, a pipelined client pool.

Owns the sockets of server-to-server and client-to-server traffic. The listener reads one byte
per connection (`wire.ConnType`) and hands the stream to the protocol's handler; the RPC handler
answers each request in its own task, so slow requests (blocking queries) do not hold up fast
ones on the same connection. `ConnectionPool` keeps one connection per peer and multiplexes
concurrent calls on it by sequence number.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from proconsul.malformed_log import MALFORMED
from proconsul.wire import (
    ConnType,
    FrameDecoder,
    ProtocolError,
    Request,
    Response,
    decode_message,
    encode_request,
    encode_response,
)

logger = logging.getLogger(__name__)

# Outbound address redirections (config `dial_overrides`, test-only): the simulation harness puts
# a proxy on every directed server link, and a node dials the proxy in place of its peer.
_dial_overrides: dict[str, str] = {}


def set_dial_overrides(overrides: dict[str, str]) -> None:
    _dial_overrides.clear()
    _dial_overrides.update(overrides)


def dial_target(address: str) -> tuple[str, int]:
    """The (host, port) to connect to for `address`, after any configured redirection."""
    host, _, port = _dial_overrides.get(address, address).rpartition(":")
    return host.strip("[]"), int(port)

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
RPCHandler = Callable[[str, Any], Awaitable[Any]]
_READ_CHUNK = 64 * 1024


class RemoteError(Exception):
    """The remote end answered the call with an error (its message is kept verbatim)."""


class Listener:
    """Accepts connections and routes each by its first byte to a protocol handler."""

    def __init__(self, host: str, port: int, handlers: dict[ConnType, StreamHandler]) -> None:
        self.host = host
        self.port = port
        self.handlers = handlers
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            first = await reader.readexactly(1)
            try:
                handler = self.handlers[ConnType(first[0])]
            except (ValueError, KeyError):
                logger.warning(
                    "transport: unknown connection type %r from %s", first, writer.get_extra_info("peername"),
                    extra=MALFORMED,
                )
                return
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # stop() cancels open connections. This task is asyncio's client_connected_cb task,
            # which nobody awaits: on 3.11 a cancelled one is reported as an "Exception in
            # callback" traceback, so the cancellation ends here (the connection is closed below).
            pass
        except ProtocolError as exc:
            # The peer broke the protocol: one line, no traceback, and the connection is closed.
            logger.warning(
                "transport: closing connection from %s: %s", writer.get_extra_info("peername"), exc, extra=MALFORMED
            )
        finally:
            writer.close()
            if task is not None:
                self._conns.discard(task)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            await self._server.wait_closed()
            self._server = None


def rpc_stream_handler(dispatch: RPCHandler) -> StreamHandler:
    """A stream handler serving pipelined RPC requests with `dispatch(method, body)`."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        inflight: set[asyncio.Task[None]] = set()

        async def answer(req: Request) -> None:
            try:
                body = await dispatch(req.method, req.body)
                resp = Response(req.seq, None, body)
            except Exception as exc:  # every error becomes the caller's RemoteError
                resp = Response(req.seq, str(exc) or type(exc).__name__, None)
            try:
                writer.write(encode_response(resp))
                await writer.drain()
            except ConnectionError:
                pass

        try:
            while True:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    return
                for payload in decoder.feed(data):
                    msg = decode_message(payload)
                    if not isinstance(msg, Request):
                        raise ProtocolError("client sent a response frame")
                    task = asyncio.get_running_loop().create_task(answer(msg))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
        except ProtocolError as exc:
            logger.warning("transport: closing RPC connection: %s", exc, extra=MALFORMED)
        finally:
            for task in inflight:
                task.cancel()

    return serve


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.seq = itertools.count(1)
        self.closed = False
        self.reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        decoder = FrameDecoder()
        error: BaseException = ConnectionError("connection closed")
        try:
            while True:
                data = await self.reader.read(_READ_CHUNK)
                if not data:
                    break
                for payload in decoder.feed(data):
                    msg = decode_message(payload)
                    if not isinstance(msg, Response):
                        raise ProtocolError("server sent a request frame")
                    fut = self.pending.pop(msg.seq, None)
                    if fut is None or fut.done():
                        continue
                    if msg.error is not None:
                        fut.set_exception(RemoteError(msg.error))
                    else:
                        fut.set_result(msg.body)
        except (ProtocolError, ConnectionError) as exc:
            error = exc
        finally:
            self.close(error)

    def close(self, error: BaseException | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.writer.close()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(error or ConnectionError("connection closed"))
        self.pending.clear()


class ConnectionPool:
    """One pipelined RPC connection per address ("host:port"), opened on first use."""

    def __init__(self, connect_timeout_s: float = 5.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._conns: dict[str, _Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _get(self, address: str) -> _Connection:
        conn = self._conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        lock = self._locks.setdefault(address, asyncio.Lock())
        async with lock:
            conn = self._conns.get(address)
            if conn is not None and not conn.closed:
                return conn
            host, port = dial_target(address)
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), self.connect_timeout_s
            )
            writer.write(bytes([ConnType.RPC]))
            conn = _Connection(reader, writer)
            self._conns[address] = conn
            return conn

    async def call(self, address: str, method: str, body: Any, timeout_s: float = 30.0) -> Any:
        """Send one request and await its response; raises RemoteError, ConnectionError or TimeoutError."""
        conn = await self._get(address)
        seq = next(conn.seq)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.pending[seq] = fut
        try:
            conn.writer.write(encode_request(Request(seq, method, body)))
            await conn.writer.drain()
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            conn.pending.pop(seq, None)

    async def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
            conn.reader_task.cancel()
        self._conns.clear()
