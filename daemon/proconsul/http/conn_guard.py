"""HTTP connection guard: the per-client-IP connection cap and the request-head deadline.

Owns the accounting of open HTTP connections per client IP (`limits.http_max_conns_per_client`,
as Consul counts them: a connection beyond the cap is answered 429 and closed before any byte
of it is parsed) and the deadline by which a client must have sent a complete request head
(request line and headers). Without the deadline a client trickling one header byte per second
holds a connection, a parser and a task forever; aiohttp's keep-alive timer only closes
connections that sit idle after a response.

The guard is a `RequestHandler` subclass built by the server's protocol factory; the HTTP
middleware tells it when a request head has arrived (`request_started`) and when the
request is answered (`request_finished`).

Also owns keeping an open connection small for CPython's cyclic collector (at 10,000 watchers
the connections were most of what a complete scan walks: docs/PERFORMANCE.md, issue 16). The
request-head deadline and aiohttp's keep-alive deadline are one entry in the loop's shared
`deadlines` table (not a timer each: a timer is four tracked objects), and aiohttp's request
task (`RequestHandler.start`, a task, its coroutine, context and waiter) is started only when a
first message is handed to aiohttp: a connection whose requests the fast path answers never has
one. Both rest on aiohttp internals (`lean_supported`); without them the guard leaves aiohttp's
own timer and task as they are. Keep-alive behaves as aiohttp's: a connection whose request
task is idle (or never started) is closed once `_next_keepalive_close_time` has passed; one busy
in aiohttp's handler then gets aiohttp's own timer back, armed by aiohttp after its response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.tcp_helpers import tcp_keepalive
from aiohttp.web_server import Server

from proconsul.server import deadlines

logger = logging.getLogger(__name__)

# A new connection, and a connection that starts sending a request after a response, has this
# long to deliver the whole request head. Go's net/http leaves ReadHeaderTimeout unset unless
# asked; 10 s is what hardened Go servers commonly use and is far above what any real client
# on a loaded host needs for a few hundred bytes.
HEADER_READ_TIMEOUT_S = 10.0
# A keep-alive connection with no request in flight is closed after this long. HTTP clients
# reconnect transparently (Go's transport retries idempotent requests on a closed idle
# connection), so this only bounds how many idle sockets a client can park on the agent.
IDLE_TIMEOUT_S = 30.0

_REFUSAL_BODY = b"too many concurrent connections from this IP; rate limit your requests\n"
_REFUSAL = (
    b"HTTP/1.1 429 Too Many Requests\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n%s"
) % (len(_REFUSAL_BODY), _REFUSAL_BODY)


class ConnectionCounter:
    """Open HTTP connections per client IP, shared by every listener of one agent.

    `limit()` is read at each new connection, so a SIGHUP reload of `limits` applies to the
    next connection (Consul reloads `http_max_conns_per_client`). A limit <= 0 means no cap.
    """

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, ip: str) -> bool:
        limit = self._limit()
        count = self._open.get(ip, 0)
        if limit > 0 and count >= limit:
            return False
        self._open[ip] = count + 1
        return True

    def release(self, ip: str) -> None:
        count = self._open.get(ip, 0) - 1
        if count > 0:
            self._open[ip] = count
        else:
            self._open.pop(ip, None)

    def open_connections(self) -> int:
        return sum(self._open.values())


# aiohttp internals the lean connection relies on (RequestHandler, aiohttp 3.14).
_LEAN_INTERNALS = (
    "_manager", "_tcp_keepalive", "_keepalive", "_keepalive_timeout", "_keepalive_handle",
    "_next_keepalive_close_time", "_task_handler", "_messages", "_waiter", "_force_close", "start",
)


def lean_supported() -> bool:
    return all(hasattr(web.RequestHandler, name) for name in _LEAN_INTERNALS)


_LEAN = lean_supported()


class _OnDeadlines:
    """Stands in aiohttp's `_keepalive_handle` while the keep-alive deadline is in the shared
    table: aiohttp arms no timer of its own while the handle is set, and cancels it (here: a
    no-op; the table's entry finds the handle gone) wherever it would cancel its own."""

    __slots__ = ()

    def cancel(self) -> None:
        pass


_ON_DEADLINES = _OnDeadlines()


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's request handler plus the per-IP cap and the request-head deadline."""

    # No instance dict: one tracked object fewer per connection.
    __slots__ = ("_guard_loop", "_counter", "_header_timeout_s", "_peer_ip", "_refused", "_in_flight", "_heads",
                 "_due", "_due_heads", "_deadlines", "_slot", "_slot_due", "_task_started")

    def __init__(
        self, manager: Server, counter: ConnectionCounter, header_timeout_s: float, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._guard_loop: asyncio.AbstractEventLoop = kwargs["loop"]
        self._counter = counter
        self._header_timeout_s = header_timeout_s
        self._peer_ip: str | None = None  # set once counted; released on connection_lost
        self._refused = False
        self._in_flight = 0
        self._heads = 0  # request heads seen by the middleware
        # One entry per connection in the loop's deadline table, moved lazily: arming and
        # cancelling a deadline per request only sets `_due` (a timer handle per request was a
        # measurable share of a fast-path GET); the entry, when it comes, checks what is due.
        self._due: float | None = None  # when the current request head must be complete
        self._due_heads = 0  # request heads seen when it was armed
        self._deadlines = deadlines.for_loop(self._guard_loop)
        self._slot = -1  # the entry's slot in the table (-1: none)
        self._slot_due = 0.0  # and the time it was asked for
        self._task_started = False  # aiohttp's request task (started with the first message for it)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) and peer else None
        if ip is not None:
            if not self._counter.acquire(ip):
                # Answered and closed without ever reaching aiohttp's parser or the app.
                self._refused = True
                logger.debug("http: refused a connection from %s: over http_max_conns_per_client", ip)
                # (uvloop's transports are not asyncio.WriteTransport subclasses: no isinstance.)
                writer = cast(asyncio.WriteTransport, transport)
                writer.write(_REFUSAL)
                writer.close()
                return
            self._peer_ip = ip
        if _LEAN:
            self._lean_connection_made(transport)
        else:
            self._task_started = True
            super().connection_made(transport)
        self._arm_deadline()

    def _lean_connection_made(self, transport: asyncio.BaseTransport) -> None:
        """aiohttp's `RequestHandler.connection_made`, less its keep-alive timer (the deadline
        table's entry instead) and its request task (started with the first message for it)."""
        BaseProtocol.connection_made(self, transport)
        real_transport = cast(asyncio.Transport, transport)
        if self._tcp_keepalive:
            tcp_keepalive(real_transport)
        assert self._manager is not None
        self._manager.connection_made(self, real_transport)
        if self._keepalive_timeout > 0:
            self._next_keepalive_close_time = self._guard_loop.time() + self._keepalive_timeout
            self._keepalive_handle = _ON_DEADLINES  # type: ignore[assignment]
            self._schedule(self._next_keepalive_close_time)

    def start_request_task(self) -> None:
        """Start aiohttp's request task once a message waits in its queue (the first one handed
        to aiohttp on this connection); its later messages reach it through its waiter."""
        if not self._task_started and self._messages and not self._force_close and self.transport is not None:
            self._task_started = True
            self._task_handler = self._guard_loop.create_task(self.start())

    def keepalive_moved(self) -> None:
        """`_next_keepalive_close_time` was set (an answer went out): an entry for a later time
        (left by a parked read's long deadline) comes forward to it."""
        if self._keepalive_handle is _ON_DEADLINES:
            self._schedule(self._next_keepalive_close_time)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._cancel_deadline()
        if self._slot >= 0:
            self._deadlines.remove(self, self._slot)
            self._slot = -1
        if self._peer_ip is not None:
            self._counter.release(self._peer_ip)
            self._peer_ip = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        # Bytes while no request is being handled start a new request head: it must be
        # complete within the deadline, however slowly it trickles in.
        if data and self._in_flight == 0 and self._due is None:
            self._arm_deadline()
        super().data_received(data)
        if not self._task_started:
            self.start_request_task()

    def request_started(self) -> None:
        """The middleware saw a request: its head arrived in time."""
        self._heads += 1
        self._in_flight += 1
        self._cancel_deadline()

    def request_finished(self) -> None:
        self._in_flight -= 1

    def _arm_deadline(self) -> None:
        self._due = self._guard_loop.time() + self._header_timeout_s
        self._due_heads = self._heads
        self._schedule(self._due)

    def _cancel_deadline(self) -> None:
        self._due = None  # the table's entry finds nothing to do when it comes

    def _schedule(self, due: float) -> None:
        """Have the table's entry come at `due` at the latest (an earlier one stays: it re-checks)."""
        if self._slot >= 0:
            if self._slot_due <= due:
                return
            self._deadlines.remove(self, self._slot)
        self._slot_due = due
        self._slot = self._deadlines.add(self, due)

    def deadline_expired(self, now: float) -> None:
        """The table's entry came: close the connection if its request head or its keep-alive is
        overdue, else ask for the next of them."""
        self._slot = -1
        if self.transport is None or self._force_close:
            return
        due = self._due
        if due is not None and now >= due:
            self._due = None
            if self._heads == self._due_heads and self._in_flight == 0:
                logger.debug("http: closed a connection from %s: no request head within %ss", self._peer_ip,
                             self._header_timeout_s)  # fmt: skip
                self.force_close()
                return
        if self._keepalive_handle is _ON_DEADLINES:
            # aiohttp's _process_keepalive, on this entry.
            if not self._keepalive:
                self._keepalive_handle = None
            elif now >= self._next_keepalive_close_time:
                self._keepalive_handle = None
                if not self._task_started or (self._waiter is not None and not self._waiter.done()):
                    self.force_close()  # idle
                    return
                # Busy in aiohttp's handler: aiohttp arms its own timer after the response.
        soonest = self._due
        if self._keepalive_handle is _ON_DEADLINES:
            close = self._next_keepalive_close_time
            soonest = close if soonest is None or close < soonest else soonest
        if soonest is not None:
            self._schedule(soonest)


def guarded_factory(
    server: Server, counter: ConnectionCounter, header_timeout_s: float, **handler_kwargs: Any
) -> Callable[[], GuardedRequestHandler]:
    """A protocol factory for `loop.create_server` that builds guarded handlers for `server`."""
    loop = asyncio.get_running_loop()

    def factory() -> GuardedRequestHandler:
        return GuardedRequestHandler(server, counter, header_timeout_s, loop=loop, **handler_kwargs)

    return factory
