"""HTTP connection guard: the per-client-IP connection cap and the request-head deadline.

Owns the accounting of open HTTP connections per client IP (`limits.http_max_conns_per_client`,
as Consul counts them: a connection beyond the cap is answered 429 and closed before any byte
of it is parsed) and the deadline by which a client must have sent a complete request head
(request line and headers). Without the deadline a client trickling one header byte per second
holds a connection, a parser and a task forever; aiohttp's keep-alive timer only closes
connections that sit idle after a response.

The guard is a `RequestHandler` subclass built by the server's protocol factory; the HTTP
middleware tells it when a request head has arrived (`request_started`) and when the
request is answered (`request_finished`), so the guard needs nothing private from aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.web_server import Server

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


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's request handler plus the per-IP cap and the request-head deadline."""

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
        # One timer per connection, moved lazily: arming and cancelling a deadline per request
        # only sets `_due` (a timer handle per request was a measurable share of a fast-path GET).
        self._deadline: asyncio.TimerHandle | None = None
        self._due: float | None = None  # when the current request head must be complete
        self._due_heads = 0  # request heads seen when it was armed

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
        super().connection_made(transport)
        self._arm_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._cancel_deadline()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
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
        if self._deadline is None:
            self._deadline = self._guard_loop.call_at(self._due, self._deadline_check)

    def _cancel_deadline(self) -> None:
        self._due = None  # the timer finds nothing to do when it fires

    def _deadline_check(self) -> None:
        self._deadline = None
        due = self._due
        if due is None:
            return
        if self._guard_loop.time() < due:  # re-armed since the timer was set: wait for that one
            self._deadline = self._guard_loop.call_at(due, self._deadline_check)
            return
        self._due = None
        if self._heads == self._due_heads and self._in_flight == 0:
            logger.debug("http: closed a connection from %s: no request head within %ss", self._peer_ip,
                         self._header_timeout_s)  # fmt: skip
            self.force_close()


def guarded_factory(
    server: Server, counter: ConnectionCounter, header_timeout_s: float, **handler_kwargs: Any
) -> Callable[[], GuardedRequestHandler]:
    """A protocol factory for `loop.create_server` that builds guarded handlers for `server`."""
    loop = asyncio.get_running_loop()

    def factory() -> GuardedRequestHandler:
        return GuardedRequestHandler(server, counter, header_timeout_s, loop=loop, **handler_kwargs)

    return factory
