"""TCP transport on the server port: first-byte multiplexing, TLS, RPC serving, a pipelined client pool.

Owns the sockets of server-to-server and client-to-server traffic. The listener reads one byte
per connection (`wire.ConnType`) and hands the stream to the protocol's handler; the RPC handler
answers each request in its own task, so slow requests (blocking queries) do not hold up fast
ones on the same connection (except the requests its `dispatch_now` takes and answers through a
callback: a follower's batch of writes on the leader, with no task per request); past a bound of
unanswered requests it reads no more until they fall (read back-pressure). `ConnectionPool` keeps
one connection per peer and multiplexes
concurrent calls on it by sequence number; `dial` opens every outgoing connection (the pool's and
Raft's). A caller that gives up on a call (cancelled, or timed out) sends `CANCEL_METHOD` with the
call's sequence number on the same connection, and the serving side cancels that request's task:
a blocking query forwarded to the leader ends when the agent that forwarded it stops waiting, as
Consul's RPCs end with their caller's context. (A server without it answers "can't find method",
which the caller ignores: it no longer waits for any answer to that number.) `send_call` is the
task-less form of `call` for a caller on a hot path (a follower's forwarded writes): the frame
leaves at once and the answer is handed to a callback from the connection's reader.

TLS works as Consul's RPCTLS byte: a dialer that must verify its server writes `ConnType.TLS`,
runs the handshake, then writes the inner type byte inside the TLS stream. The listener reads the
first byte straight from the socket (so the ClientHello stays in the kernel for the handshake),
refuses a plaintext connection when the agent demands TLS (verify_incoming), and closes a
connection of a server-only type (Raft) whose peer certificate is not a server's. What TLS means
(contexts, server names, whose certificate counts as a server's) comes from an `RPCSecurity`,
built from the agent's settings in `proconsul.tls.rpc`; without one, everything is plaintext.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

from proconsul.listen import listen_backlog
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

# The request a caller sends, body = the sequence number of its abandoned call. Never answered.
CANCEL_METHOD = "RPC.Cancel"

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


class RPCSecurity(Protocol):
    """The agent's TLS policy for the server port, read at each connection (so a reload that
    swaps certificates reaches new connections only). Implemented by `proconsul.tls.rpc`."""

    def server_context(self) -> ssl.SSLContext | None:
        """The context TLS connections are accepted with; None: no certificate, TLS refused."""
        ...

    def require_tls(self) -> bool:
        """True when a connection that does not start with `ConnType.TLS` is refused."""
        ...

    def client_context(self, datacenter: str) -> tuple[ssl.SSLContext, str | None] | None:
        """For a dial to a server of `datacenter` ("" = ours): the context and the server name to
        verify (None: the chain only); None: dial in plaintext."""
        ...

    def server_refusal(self, peer_certificate: dict[str, Any] | None) -> str:
        """Why a peer with this (verified) certificate may not make server-only calls; "" when it
        may (a server certificate of this datacenter, or incoming verification off)."""
        ...

    def handshake_timeout_s(self) -> float: ...


class TLSHandshakeError(ConnectionRefusedError):
    """The server's certificate did not verify (or it closed the handshake): nothing was sent,
    so a caller may try another server, as after a refused connection."""


def peer_certificate(writer: asyncio.StreamWriter) -> dict[str, Any] | None:
    """The verified certificate of the peer on a TLS stream (None: plaintext or none sent)."""
    ssl_object = writer.get_extra_info("ssl_object")
    return ssl_object.getpeercert() if ssl_object is not None else None  # type: ignore[no-any-return]


async def dial(
    address: str,
    conn_type: ConnType,
    security: RPCSecurity | None = None,
    datacenter: str = "",
    timeout_s: float = 5.0,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection of `conn_type` to `address` ("host:port"), over TLS when `security` says
    so; raises OSError (ssl.SSLError included: a certificate that does not verify) or TimeoutError."""
    host, port = dial_target(address)
    # asyncio.timeout, not asyncio.wait_for, for every wait in this module: on 3.11 wait_for returns
    # the result when its caller is cancelled in the loop iteration the result arrives, and the
    # cancellation is lost (CPython gh-86296): a stopping agent's dial, accept or call carries on.
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
    try:
        outgoing = security.client_context(datacenter) if security is not None else None
        if outgoing is not None:
            context, server_name = outgoing
            writer.write(bytes([ConnType.TLS]))
            try:
                async with asyncio.timeout(timeout_s):
                    await writer.start_tls(context, server_hostname=server_name, ssl_handshake_timeout=timeout_s)
            except (ssl.SSLError, ConnectionError) as exc:
                raise TLSHandshakeError(f"TLS handshake with {address} failed: {exc}") from exc
        writer.write(bytes([conn_type]))
    except BaseException:
        writer.close()
        raise
    return reader, writer


def adopt_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: asyncio.Protocol) -> bool:
    """Hand an accepted stream's transport to `protocol` (a handler that wants every byte as it
    arrives, without a task woken per read): from now on the transport calls `protocol`, which
    first gets `connection_made` and what the stream had already read. Returns False when the
    connection was already over (the protocol got its bytes and `connection_lost(None)`).

    Plaintext and TLS transports alike (both implement `set_protocol`). The buffered bytes are
    the StreamReader's own, read from its `_buffer` (no public way to take them without a task
    switch); the listener creates every reader, with the limit that keeps that buffer small.
    """
    transport = writer.transport
    protocol.connection_made(transport)
    transport.set_protocol(protocol)
    buffered = bytes(reader._buffer)  # noqa: SLF001 (see the docstring)
    reader._buffer.clear()  # noqa: SLF001
    if buffered:
        protocol.data_received(buffered)
    if reader.exception() is not None or reader.at_eof() or transport.is_closing():
        # The StreamReaderProtocol saw the end already; nothing more comes to `protocol`.
        transport.close()
        protocol.connection_lost(None)
        return False
    if not transport.is_reading():
        transport.resume_reading()  # the reader had paused it with a full buffer
    return True


class _DirectReads(asyncio.Protocol):
    """Stands in for a stream's StreamReaderProtocol: the bytes go to `on_data` inside the
    transport's read callback (no task woken per read, no loop iteration before they are acted
    on); the end of the connection and the write flow control still go to the stream's own
    protocol, so the stream's reader sees the EOF or the error and `drain()` still waits. An
    exception from `on_data` goes to `on_error` (which closes the connection)."""

    def __init__(self, stream_protocol: Any, on_data: Callable[[bytes], None],
                 on_error: Callable[[Exception], None]) -> None:
        self._stream = stream_protocol
        self._on_data = on_data
        self._on_error = on_error
        self._failed = False

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return  # closing after an error: the rest is not read
        try:
            self._on_data(data)
        except Exception as exc:
            self._failed = True
            self._on_error(exc)

    def eof_received(self) -> bool | None:
        return self._stream.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._stream.connection_lost(exc)

    def pause_writing(self) -> None:
        self._stream.pause_writing()

    def resume_writing(self) -> None:
        self._stream.resume_writing()


def read_directly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  on_data: Callable[[bytes], None], on_error: Callable[[Exception], None]) -> None:
    """From now on, hand what `reader`'s stream receives to `on_data` as it arrives (see
    `_DirectReads`); what the reader had buffered goes first, now. The reader itself then only
    ends: `read()` answers b"" at EOF or raises the connection's error. Used for answers to our
    own requests (`_Connection`), whose amount our requests bound: no read back-pressure is lost."""
    transport = writer.transport
    transport.set_protocol(_DirectReads(transport.get_protocol(), on_data, on_error))
    buffered = bytes(reader._buffer)  # noqa: SLF001 (as adopt_stream: no public way without a task switch)
    reader._buffer.clear()  # noqa: SLF001
    if buffered:
        transport.get_protocol().data_received(buffered)
    if not transport.is_closing() and not transport.is_reading():
        transport.resume_reading()  # the reader had paused it with a full buffer


StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
RPCHandler = Callable[[str, Any], Awaitable[Any]]
# (method, body, answer) -> whether it took the request (`rpc_stream_handler`'s `dispatch_now`).
RPCHandlerNow = Callable[[str, Any, Callable[[Any, BaseException | None], None]], bool]
_READ_CHUNK = 64 * 1024


class RemoteError(Exception):
    """The remote end answered the call with an error (its message is kept verbatim)."""


class Listener:
    """Accepts connections and routes each by its first byte to a protocol handler.

    `server_only` lists the connection types only a server may open: with `security` demanding
    verification, a peer without a server certificate is closed before its handler sees a byte.
    """

    def __init__(
        self,
        host: str,
        port: int,
        handlers: dict[ConnType, StreamHandler],
        security: RPCSecurity | None = None,
        server_only: Collection[ConnType] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.handlers = handlers
        self.security = security
        self.server_only = frozenset(server_only)
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.host or "0.0.0.0", self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(listen_backlog())
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._accepting = loop.create_task(self._accept_loop(sock), name=f"listener:{self.port}")

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as exc:  # e.g. out of file descriptors: keep the listener, slow down
                logger.error("transport: accept failed on port %d: %s", self.port, exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            task = loop.create_task(self._serve(conn, peer))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    def _timeout(self) -> float:
        return self.security.handshake_timeout_s() if self.security is not None else 5.0

    async def _serve(self, conn: socket.socket, peer: Any) -> None:
        loop = asyncio.get_running_loop()
        writer: asyncio.StreamWriter | None = None
        try:
            # One byte straight from the socket: what follows (a ClientHello) stays unread.
            async with asyncio.timeout(self._timeout()):
                first = await loop.sock_recv(conn, 1)
            if not first:
                return
            context: ssl.SSLContext | None = None
            if first[0] == ConnType.TLS:
                context = self.security.server_context() if self.security is not None else None
                if context is None:
                    logger.warning("transport: TLS connection from %s refused: this agent has no TLS certificate "
                                   "for server RPC", peer, extra=MALFORMED)
                    return
            elif self.security is not None and self.security.require_tls():
                logger.warning("transport: non-TLS connection from %s refused: verify_incoming requires TLS",
                               peer, extra=MALFORMED)
                return
            reader = asyncio.StreamReader(limit=2**16)
            protocol = asyncio.StreamReaderProtocol(reader)
            try:
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, conn, ssl=context,
                    **({"ssl_handshake_timeout": self._timeout()} if context is not None else {}),
                )
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                logger.warning("transport: TLS handshake with %s failed: %s", peer, exc, extra=MALFORMED)
                return
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            if context is not None:
                async with asyncio.timeout(self._timeout()):
                    first = await reader.readexactly(1)
            try:
                conn_type = ConnType(first[0])
                handler = self.handlers[conn_type]
            except (ValueError, KeyError):
                logger.warning("transport: unknown connection type %r from %s", first, peer, extra=MALFORMED)
                return
            if conn_type in self.server_only and self.security is not None:
                refusal = self.security.server_refusal(peer_certificate(writer))
                if refusal:
                    logger.warning("transport: %s connection from %s refused: %s", conn_type.name, peer, refusal,
                                   extra=MALFORMED)
                    return
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        except asyncio.CancelledError:
            # stop() cancels open connections. This task is asyncio's client_connected_cb task,
            # which nobody awaits: on 3.11 a cancelled one is reported as an "Exception in
            # callback" traceback, so the cancellation ends here (the connection is closed below).
            pass
        except ProtocolError as exc:
            # The peer broke the protocol: one line, no traceback, and the connection is closed.
            logger.warning("transport: closing connection from %s: %s", peer, exc, extra=MALFORMED)
        except OSError:
            pass
        finally:
            if writer is not None:
                writer.close()
            else:
                conn.close()

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
            self._accepting = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)


class _Cork:
    """Frames written to one stream during one event-loop iteration leave in one socket write.

    Pipelined RPCs arrive and complete in bursts (a follower forwarding every write it is
    handed, a leader answering them as one Raft batch applies); a write per frame costs a
    syscall and a wake-up of the peer each, which a busy machine charges dearly. The flush is
    scheduled with `call_soon`, so a frame waits for at most the rest of the current iteration.
    """

    __slots__ = ("_writer", "_buf")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._buf: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._buf:
            asyncio.get_running_loop().call_soon(self._flush)
        self._buf.append(data)

    def write_now(self, data: bytes) -> None:
        """`data` written now, after what is buffered (one socket write), without scheduling a
        flush for it: for a frame nothing else is expected to join in this iteration."""
        if self._buf:
            self._buf.append(data)
            self._flush()
            return
        if self._writer.is_closing():
            return  # as `_flush`: the callers see the loss through drain() or their futures
        try:
            self._writer.write(data)
        except (ConnectionError, RuntimeError):
            pass

    def _flush(self) -> None:
        buf, self._buf = self._buf, []
        if not buf or self._writer.is_closing():
            return  # the callers see the loss through drain() or their pending futures
        try:
            self._writer.write(buf[0] if len(buf) == 1 else b"".join(buf))
        except (ConnectionError, RuntimeError):
            pass


def rpc_stream_handler(
    dispatch: RPCHandler, security: RPCSecurity | None = None, server_only: Collection[str] = (),
    dispatch_now: RPCHandlerNow | None = None,
) -> StreamHandler:
    """A stream handler serving pipelined RPC requests with `dispatch(method, body)`.

    The methods in `server_only` are answered with a refusal unless `security` accepts the
    peer's certificate as a server's (with incoming verification off, it accepts anyone).
    `dispatch_now(method, body, answer)`, when given, is offered each request first: True
    means it took the request and calls `answer(body, None)` or `answer(None, error)` once,
    later (no task for that request: a hot, short one such as a follower's batch of writes; it
    cannot be cancelled, and its answer is written through the cork without waiting for the
    socket buffer to drain); False sends it to `dispatch` in a task. The answer of the last
    such request outstanding on the connection is written at once, with any corked before it
    (nothing else taken can join it: one client writing through a follower pays no loop
    iteration for it); while others are outstanding, answers wait for the cork's flush, so the
    answers of batches applied in one Raft step still leave in one socket write."""
    server_methods = frozenset(server_only)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        inflight: dict[int, asyncio.Task[None]] = {}
        cork = _Cork(writer)
        taken = _Outstanding()  # requests `dispatch_now` took and has not answered yet
        room = _Room(taken, inflight)
        taken.on_answer = room.note_answer
        refusal = security.server_refusal(peer_certificate(writer)) if security is not None else ""

        async def answer(req: Request) -> None:
            try:
                if refusal and req.method in server_methods:
                    logger.warning("transport: refused %s from %s: %s", req.method,
                                   writer.get_extra_info("peername"), refusal, extra=MALFORMED)
                    raise PermissionError(f"Permission denied: {req.method} is for servers only: {refusal}")
                body = await dispatch(req.method, req.body)
                resp = Response(req.seq, None, body)
            except Exception as exc:  # every error becomes the caller's RemoteError
                resp = Response(req.seq, str(exc) or type(exc).__name__, None)
            try:
                cork.write(encode_response(resp))
                await writer.drain()
            except ConnectionError:
                pass

        def task_done(task: asyncio.Task[None], seq: int) -> None:
            _forget(inflight, seq, task)
            room.note_answer()

        held: bytes | None = None  # a chunk read while waiting for room, decoded next
        try:
            while True:
                if held is not None:
                    data, held = held, None
                else:
                    data = await reader.read(_READ_CHUNK)
                if not data:
                    return
                for payload in decoder.feed(data):
                    if room.full():
                        # Unread bytes stay in the reader, which pauses the socket; one chunk is
                        # read meanwhile (if none is held yet) to see the client hang up.
                        more = await room.wait(reader if held is None else None)
                        if more == b"":
                            return  # the client hung up: its requests are cancelled below
                        if more is not None:
                            held = more
                    msg = decode_message(payload)
                    if not isinstance(msg, Request):
                        raise ProtocolError("client sent a response frame")
                    if msg.method == CANCEL_METHOD:
                        abandoned = inflight.get(msg.body) if isinstance(msg.body, int) else None
                        if abandoned is not None:
                            abandoned.cancel()
                        continue
                    if (dispatch_now is not None and not (refusal and msg.method in server_methods)
                            and _offer(dispatch_now, msg, cork, taken)):
                        continue
                    task = asyncio.get_running_loop().create_task(answer(msg))
                    inflight[msg.seq] = task
                    task.add_done_callback(lambda t, seq=msg.seq: task_done(t, seq))
        except ProtocolError as exc:
            logger.warning("transport: closing RPC connection: %s", exc, extra=MALFORMED)
        finally:
            for task in inflight.values():
                task.cancel()

    return serve


# A served connection's read back-pressure (`_Room`): at either bound the serving task takes no
# further request until both counts have fallen to half of it (it reads one chunk meanwhile, to
# see the client hang up). `dispatch_now`'s requests (a
# follower's batches of writes) end within a Raft round; the task bound is loose, since the
# blocking queries one agent forwards park there for minutes, and its later requests (the
# cancels of those queries among them) wait behind the bound.
_MAX_TAKEN = 256
_MAX_TASKS = 4096


class _Outstanding:
    """How many requests of one connection `dispatch_now` took and has not answered yet;
    `on_answer`, when set, is called after each answer."""

    __slots__ = ("count", "on_answer")

    def __init__(self) -> None:
        self.count = 0
        self.on_answer: Callable[[], None] | None = None


class _Room:
    """Whether a served connection may take another request: without a bound, a client that
    pipelines requests faster than they are answered would grow the server's tasks and pending
    answers without limit. While the serving task waits here it reads at most one chunk more
    (to see the client hang up), so the bytes pile up in its StreamReader, which pauses the
    socket at its own limit."""

    __slots__ = ("_taken", "_inflight", "_waiter")

    def __init__(self, taken: _Outstanding, inflight: dict[int, asyncio.Task[None]]) -> None:
        self._taken = taken
        self._inflight = inflight
        self._waiter: asyncio.Future[None] | None = None

    def full(self) -> bool:
        return self._taken.count >= _MAX_TAKEN or len(self._inflight) >= _MAX_TASKS

    async def wait(self, reader: asyncio.StreamReader | None) -> bytes | None:
        """Until both counts are at half their bound or below (hysteresis: one answer does not
        let exactly one more request in).

        Meanwhile one more chunk is read from `reader` (when given), so that a client hanging up
        while its requests are parked here is seen at once and its requests cancelled, not when
        they end (minutes later for blocking queries). Returns that chunk, or b"" at once for
        the client's EOF (a reset is raised at once), or None when nothing more was read. The
        reading stops after that one chunk: the server holds at most one chunk beyond the
        reader's limit."""
        loop = asyncio.get_running_loop()
        read = loop.create_task(reader.read(_READ_CHUNK)) if reader is not None else None
        try:
            while not self._low():
                self._waiter = loop.create_future()
                try:
                    if read is None or read.done():
                        await self._waiter
                    else:
                        await asyncio.wait((self._waiter, read), return_when=asyncio.FIRST_COMPLETED)
                        if read.done() and not read.cancelled() and (
                                read.exception() is not None or not read.result()):
                            break  # the client hung up (EOF or a reset): no need to wait on
                finally:
                    self._waiter = None
        finally:
            if read is not None and not read.done():
                read.cancel()  # no bytes are taken from the reader by a read cancelled while waiting
                await asyncio.wait((read,))  # the reader admits one reader at a time: let it leave
        if read is None or read.cancelled():
            return None
        return read.result()  # the read's ConnectionError, if any, ends the serving task

    def note_answer(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done() and self._low():
            waiter.set_result(None)

    def _low(self) -> bool:
        return self._taken.count <= _MAX_TAKEN // 2 and len(self._inflight) <= _MAX_TASKS // 2


def _offer(dispatch_now: RPCHandlerNow, req: Request, cork: _Cork, taken: _Outstanding) -> bool:
    """Offer `req` to `dispatch_now`; its answer goes out through `cork` as a task's would, or
    at once when it is the last one outstanding (see `rpc_stream_handler`)."""
    seq = req.seq
    answers = [False]

    def answered(body: Any, error: BaseException | None) -> None:
        if answers[0]:
            return  # `dispatch_now` answers once; never count one twice
        answers[0] = True
        taken.count -= 1
        if taken.on_answer is not None:
            taken.on_answer()
        if error is not None and not isinstance(error, Exception):
            return  # cancelled: nothing is answered, as for a cancelled task
        resp = Response(seq, None, body) if error is None else Response(seq, str(error) or type(error).__name__, None)
        try:
            data = encode_response(resp)
        except Exception as exc:  # an answer that does not encode: the caller gets why
            data = encode_response(Response(seq, str(exc) or type(exc).__name__, None))
        try:
            if taken.count:
                cork.write(data)  # another answer may come in this iteration: one write for both
            else:
                cork.write_now(data)
        except (ConnectionError, RuntimeError):
            pass

    taken.count += 1  # before the offer: an answer is never given inside it, but be exact
    try:
        took = dispatch_now(req.method, req.body, answered)
    except Exception as exc:  # a bug before taking it: answered as `dispatch` would have failed
        logger.exception("transport: serving %s without a task failed", req.method)
        answered(None, exc)
        return True
    if not took:
        answers[0] = True
        taken.count -= 1
    return took


def _forget(inflight: dict[int, asyncio.Task[None]], seq: int, task: asyncio.Task[None]) -> None:
    if inflight.get(seq) is task:
        del inflight[seq]


# Above this many bytes waiting in a connection's socket buffer, `send_call` declines (the caller
# uses `call`, which waits for the buffer to drain).
_SEND_CALL_MAX_BUFFERED = 256 * 1024

Answered = Callable[[Any, BaseException | None], None]


class _Callback:
    """A pending entry of `send_call`: quacks like the future the reader settles, and hands
    the answer to `done(body, error)` right there, at most once; its timer gives up on it."""

    __slots__ = ("_done", "timer", "fired")

    def __init__(self, done: Answered) -> None:
        self._done = done
        self.timer: asyncio.TimerHandle | None = None
        self.fired = False

    def done(self) -> bool:
        return self.fired

    def set_result(self, body: Any) -> None:
        self._fire(body, None)

    def set_exception(self, error: BaseException) -> None:
        self._fire(None, error)

    def _fire(self, body: Any, error: BaseException | None) -> None:
        if self.fired:
            return
        self.fired = True
        if self.timer is not None:
            self.timer.cancel()
        try:
            self._done(body, error)
        except Exception:
            # Never into the connection's reader, which would drop the connection for it.
            logger.exception("transport: an RPC answer's callback failed")


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.cork = _Cork(writer)
        self.pending: dict[int, asyncio.Future[Any] | _Callback] = {}
        self.seq = itertools.count(1)
        self.closed = False
        self._decoder = FrameDecoder()
        # Answers are read in the transport's callback (a forwarded batch's writers are answered
        # without waiting for a task to be woken); the task waits for the end of the connection.
        read_directly(reader, writer, self._take, self.close)
        self.reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    def _take(self, data: bytes) -> None:
        for payload in self._decoder.feed(data):
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

    async def _read_loop(self) -> None:
        error: BaseException = ConnectionError("connection closed")
        try:
            while await self.reader.read(_READ_CHUNK):
                pass  # nothing arrives here any more (see _take): this waits for the end
        except ConnectionError as exc:
            error = exc
        finally:
            self.close(error)

    def close(self, error: BaseException | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.writer.close()
        for fut in list(self.pending.values()):  # a send_call callback runs in here
            if not fut.done():
                fut.set_exception(error or ConnectionError("connection closed"))
        self.pending.clear()


class ConnectionPool:
    """One pipelined RPC connection per address ("host:port"), opened on first use (over TLS
    when `security` says so)."""

    def __init__(self, connect_timeout_s: float = 5.0, security: RPCSecurity | None = None) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.security = security
        self._conns: dict[str, _Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _get(self, address: str, datacenter: str = "") -> _Connection:
        conn = self._conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        lock = self._locks.setdefault(address, asyncio.Lock())
        async with lock:
            conn = self._conns.get(address)
            if conn is not None and not conn.closed:
                return conn
            reader, writer = await dial(address, ConnType.RPC, self.security, datacenter, self.connect_timeout_s)
            conn = _Connection(reader, writer)
            self._conns[address] = conn
            return conn

    async def call(
        self, address: str, method: str, body: Any, timeout_s: float = 30.0, datacenter: str = ""
    ) -> Any:
        """Send one request and await its response; raises RemoteError, ConnectionError, OSError
        (ssl.SSLError: the server's certificate did not verify) or TimeoutError. `datacenter` is
        the server's, when not ours (the name its certificate must carry)."""
        conn = await self._get(address, datacenter)
        seq = next(conn.seq)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.pending[seq] = fut
        sent = False
        try:
            conn.cork.write(encode_request(Request(seq, method, body)))
            sent = True
            await conn.writer.drain()
            # Not asyncio.wait_for (see dial): a caller cancelled as the answer arrives would take
            # the answer and go on, and a stopping agent wait forever on a task back asleep.
            async with asyncio.timeout(timeout_s):
                return await fut
        finally:
            conn.pending.pop(seq, None)
            # Given up (cancelled, or timed out: the timeout cancels the future): the server stops
            # working on it.
            if sent and (not fut.done() or fut.cancelled()) and not conn.closed:
                fut.cancel()
                try:
                    # Through the cork, after the request itself (which may not be flushed yet).
                    conn.cork.write(encode_request(Request(next(conn.seq), CANCEL_METHOD, seq)))
                except (ConnectionError, OSError, RuntimeError):
                    pass

    def send_call(self, address: str, method: str, body: Any, done: Answered, timeout_s: float = 30.0) -> bool:
        """`call` without a task, for an open connection: the request is written now, and
        `done(reply, None)` or `done(None, error)` (RemoteError, ConnectionError, TimeoutError,
        as `call` raises them) is called once, from the connection's reader (or the timeout's
        timer, which also cancels the request on the server as `call` does). Returns False,
        having sent nothing, when no connection to `address` is open or its socket buffer is
        full: use `call`, which dials and waits for the buffer to drain."""
        conn = self._conns.get(address)
        if conn is None or conn.closed or conn.writer.transport.get_write_buffer_size() > _SEND_CALL_MAX_BUFFERED:
            return False
        seq = next(conn.seq)
        frame = encode_request(Request(seq, method, body))  # before anything is registered
        entry = _Callback(done)
        conn.pending[seq] = entry
        entry.timer = asyncio.get_running_loop().call_later(timeout_s, self._expire, conn, seq, entry)
        conn.cork.write_now(frame)
        return True

    @staticmethod
    def _expire(conn: _Connection, seq: int, entry: _Callback) -> None:
        if conn.pending.get(seq) is entry:
            del conn.pending[seq]
        if entry.fired:
            return
        entry.set_exception(TimeoutError())
        if not conn.closed:
            try:
                conn.cork.write(encode_request(Request(next(conn.seq), CANCEL_METHOD, seq)))
            except (ConnectionError, OSError, RuntimeError):
                pass

    async def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
            conn.reader_task.cancel()
        self._conns.clear()
