"""The HTTP server: aiohttp application, route table and the one error-to-status mapping.

Owns wiring the /v1 route modules into one aiohttp application, the middleware that every
request passes through (URL sanity, headers Consul always sends, error mapping), and the
listeners on `client_addr:ports.http` and, with an SSL context, `ports.https` (every connection
through the connection guard: per-IP cap, request-head deadline, idle timeout). Each route module
owns its endpoints; this module owns what they share.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import HttpVersion11, hdrs, web

from proconsul.http import (
    absent,
    acl_gate,
    catalog,
    event,
    fast,
    fast_blocking,
    health,
    keyring,
    kv,
    operator,
    query,
    session,
    status,
    txn,
    ui,
    ui_internal,
)
from proconsul.http import acl as acl_routes
from proconsul.http import agent as agent_routes
from proconsul.http import coordinate as coordinate_routes
from proconsul.http import debug as debug_routes
from proconsul.http import host as host_routes
from proconsul.http import metrics as metrics_routes
from proconsul.http import monitor as monitor_routes
from proconsul.http.access import AccessRules
from proconsul.http.appkeys import (
    ACCESS_RULES,
    ACL_RESOLVER,
    AGENT,
    DEFAULT_ACL_POLICY,
    HTTP_METRICS,
    METRICS,
    RESPONSE_HEADERS,
    AgentSurface,
)
from proconsul.http.common import HTTPError
from proconsul.http.conn_guard import (
    HEADER_READ_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    ConnectionCounter,
    GuardedRequestHandler,
    guarded_factory,
)
from proconsul.listen import listen_backlog
from proconsul.rpc_api import RPCError
from proconsul.state import protection
from proconsul.state.store import StoreError

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    # A reason may quote request text; never let an unencodable character in it turn the
    # error answer itself into a 500.
    return web.Response(status=status, text=message.encode("utf-8", "backslashreplace").decode("utf-8"))


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


# Handlers are cancelled when their client disconnects (handler_cancellation), so an abandoned
# blocking query stops waiting and drops its store watch at once instead of holding it, its task
# and its response until ?wait runs out (up to max_query_time plus jitter). Consul's blocking
# queries likewise stop on the request context's cancellation. Reads only: a write is finished
# even when its client has gone, so its outcome never depends on when the client hung up.
_CANCELLABLE = frozenset({"GET", "HEAD"})


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a write whose client left is not "never retrieved" noise


async def _run_to_completion(work: Awaitable[web.StreamResponse]) -> web.StreamResponse:
    task = asyncio.ensure_future(work)
    task.add_done_callback(_consume)
    return await asyncio.shield(task)


@web.middleware
async def consul_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    # A decoded path with control characters (e.g. a URL-encoded newline in a KV key) is
    # refused, as Consul does, before it can reach a store key.
    if _CONTROL_CHARS.search(request.path):
        return _error(400, "Invalid URL path: contains a non-printable character")
    refusal = request.app[ACCESS_RULES].refusal(request.method, request.path, request.remote)
    protocol = request.protocol
    guarded = isinstance(protocol, GuardedRequestHandler)
    if guarded:
        protocol.request_started()  # the head arrived: stop its deadline
    try:
        if refusal is not None:
            raise HTTPError(403, refusal)
        acl_on = request.app[ACL_RESOLVER] is not None and request.path.startswith("/v1/")
        if acl_on:
            await acl_gate.before(request)  # 403 unless the token holds the route's permission
        else:
            # ACLs off here, perhaps on in the servers: writes still carry the caller's token.
            acl_gate.carry_token(request)
        if request.method in _CANCELLABLE:
            resp = await handler(request)
        else:
            resp = await _run_to_completion(handler(request))
        if acl_on:
            if "index" in request.query:
                await acl_gate.recheck(request)  # a blocking query woke: is its token still good?
            resp = acl_gate.after(request, resp)  # list answers trimmed to what the token may read
    except HTTPError as exc:
        resp = _error(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status == 405:
            resp = _error(405, f"method {request.method} not allowed")
        elif exc.status == 404:
            resp = _error(404, "")
        elif exc.status == 413:
            resp = _error(413, "Request body too large")
        else:
            raise
    except (RPCError, StoreError) as exc:
        # RPC and state errors are 500 with the error text, as Consul answers them; a server's
        # ACL refusal of a forwarded write is a 403, recognised by its text as Consul does.
        text = str(exc)
        resp = _error(403 if text.startswith(("Permission denied", "ACL not found")) else 500, text)
    except ConnectionError:
        transport = request.transport
        if transport is not None and not transport.is_closing():
            raise  # not the client's connection: a real error, left to aiohttp's 500
        # The client went away mid-request (e.g. it gave up while sending its body): there is
        # no one to answer and nothing worth a traceback.
        resp = _error(400, "connection closed by the client")
    except (ValueError, OverflowError, RecursionError) as exc:
        # Each is raised by decoding something the client sent (a malformed, out-of-range or too
        # deeply nested value), so it is the client's error, never a 500. UnicodeError is a
        # ValueError.
        resp = _error(400, str(exc) or type(exc).__name__)
    finally:
        if guarded:
            protocol.request_finished()
    headers = resp.headers
    headers["X-Consul-Default-Acl-Policy"] = request.app[DEFAULT_ACL_POLICY]
    extra = request.app[RESPONSE_HEADERS]
    if extra:
        headers.update(extra)
    request.app[HTTP_METRICS].observe(request, start)
    return resp


def refuse_unknown_expectations(app_handler: Handler) -> Handler:
    """Wraps the application: an `Expect:` other than 100-continue is a 417 before routing.

    aiohttp's own expect handling echoes the header into its 417 text, and a header byte that is
    not UTF-8 then fails to encode: an unhandled 500 with a traceback (found by the fuzz tier).
    It runs before any middleware, so it is answered here, ahead of the application; 100-continue
    is still left to aiohttp.
    """

    async def handle(request: web.Request) -> web.StreamResponse:
        expect = request.headers.get(hdrs.EXPECT)
        if expect is not None and request.version == HttpVersion11 and expect.lower() != "100-continue":
            text = "Unknown Expect: " + expect.encode("utf-8", "backslashreplace").decode("utf-8")
            return web.Response(status=417, text=text)
        return await app_handler(request)

    return handle


# A request an HTTP worker process forwards (http/workers/proxy.py) names its real client in
# this header. It is believed only on a unix-socket connection (the agent's private forwarding
# socket, in a 0700 directory); from TCP it is dropped, so nobody can claim another address to
# pass `allow_write_http_from`.
FORWARDED_CLIENT = "X-Proconsul-Forwarded-Client"


def trust_forwarded_client(app_handler: Handler) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        client = request.headers.get(FORWARDED_CLIENT)
        if client is not None:
            headers = request.headers.copy()
            del headers[FORWARDED_CLIENT]
            transport = request.transport
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is not None and sock.family == socket.AF_UNIX:
                request = request.clone(remote=client, headers=headers)
            else:
                request = request.clone(headers=headers)
        return await app_handler(request)

    return handle


def route_defs(acl_enabled: bool = False) -> list[web.AbstractRouteDef]:
    """Every /v1 route (method, path, handler): the route table, also read by the fuzz tier.

    With ACLs disabled the /v1/acl routes answer 401 "ACL support disabled" (http/absent.py);
    enabled, they are the ACL API (http/acl.py)."""
    defs: list[web.AbstractRouteDef] = []
    for module in (agent_routes, catalog, health, kv, session, txn, status, operator, event, keyring, query):
        defs.extend(module.routes())
    defs.extend(coordinate_routes.routes())
    defs.extend(absent.routes(acl_enabled))
    if acl_enabled:
        defs.extend(acl_routes.routes())
    defs.extend(metrics_routes.routes())
    defs.extend(ui_internal.routes())
    defs.extend(host_routes.routes())
    defs.extend(monitor_routes.routes())
    defs.extend(debug_routes.routes())
    return defs


def build_app(agent: AgentSurface) -> web.Application:
    # Bodies are read by the handlers with their own limits (KV: kv_max_value_size, txn:
    # txn_max_req_len); every body is read through common.read_body, which loops to EOF.
    app = web.Application(middlewares=[consul_middleware], client_max_size=4 * 1024 * 1024)
    app[AGENT] = agent
    monitor_routes.install(app)
    metrics_routes.install(app)
    debug_routes.install(app)
    http_config = agent.config.http_config
    app[RESPONSE_HEADERS] = dict(http_config.response_headers)
    app[ACCESS_RULES] = AccessRules.build(http_config.block_endpoints, http_config.allow_write_http_from)
    acl_enabled = bool(agent.config.acl.enabled)
    app.router.add_routes(route_defs(acl_enabled))
    ui.add_routes(app, agent.config.ui_config)  # `/` and the UI's content path, after /v1
    # The token resolver when ACLs are on (every /v1 request is then checked, see acl_gate).
    app[ACL_RESOLVER] = agent.acl_resolver if acl_enabled else None
    app[DEFAULT_ACL_POLICY] = agent.config.acl.default_policy if acl_enabled else "allow"
    app[METRICS] = agent.metrics
    app[HTTP_METRICS] = metrics_routes.HTTPMetrics(agent.metrics)
    app[health.PROTECTION_LOG] = protection.ProtectionLog(health.logger, "http")
    return app


class HTTPServer:
    """Listens on every client address; `start()` returns once the sockets are bound.

    A port <= 0 opens no listener of that kind (ports.http = -1 leaves only HTTPS, as Consul).
    `bound` lists the plain HTTP sockets, `bound_https` the TLS ones; both serve the same app.
    `reads` is what the fast path reads (http/fast.py's `ReadGate`), chosen by the agent.
    """

    def __init__(
        self,
        agent: AgentSurface,
        addresses: list[str],
        port: int,
        https: tuple[list[str], int, ssl.SSLContext] | None = None,
        *,
        reads: fast.ReadGate,
    ) -> None:
        self.app = build_app(agent)
        self.reads = reads  # what the fast path reads (the agent's `fast_reads`)
        self.addresses = addresses
        self.port = port
        self.https = https
        self.runner: web.AppRunner | None = None
        self.bound: list[tuple[str, int]] = []
        self._listeners: list[asyncio.AbstractServer] = []
        # Read at each new connection, so a reload of `limits` applies to the next one.
        self.connections = ConnectionCounter(lambda: int(agent.config.limits.http_max_conns_per_client))
        self.bound_https: list[tuple[str, int]] = []
        # Consul's limits.https_handshake_timeout: a TLS client that does not finish its handshake
        # in time is dropped (5 s by default).
        self.tls_handshake_timeout_s = float(agent.config.limits.https_handshake_timeout_s)
        # False: every request through aiohttp (tests compare the two paths' answers).
        self.fast_path = True
        self.fast_routes: fast.FastRoutes | None = None
        self.blocking_routes: fast_blocking.BlockingRoutes | None = None

    async def start(self) -> None:
        handler_kwargs: dict[str, Any] = {"access_log": None, "keepalive_timeout": IDLE_TIMEOUT_S}
        self.runner = web.AppRunner(
            self.app, handle_signals=False, shutdown_timeout=2.0, handler_cancellation=True, **handler_kwargs
        )
        await self.runner.setup()
        assert self.runner.server is not None
        self.runner.server.request_handler = refuse_unknown_expectations(
            trust_forwarded_client(self.runner.server.request_handler)
        )
        # Our own listeners instead of TCPSite, so every connection goes through the guard;
        # runner.cleanup() still shuts the connections down, as the guard registers each one
        # with the runner's server. HTTPS listeners serve the same app through the same guard.
        # Requests the HTTP workers forward arrive on a unix socket and take aiohttp's path:
        # their real client is in a header only that path reads (allow_write_http_from), and
        # the fast path would judge them by the socket's empty peer address.
        self._factory = guarded_factory(self.runner.server, self.connections, HEADER_READ_TIMEOUT_S, **handler_kwargs)
        # The hot routes are answered by http/fast.py ahead of aiohttp's request machinery.
        routes = fast.FastRoutes(self.app, IDLE_TIMEOUT_S, self.reads)
        factory: Callable[[], GuardedRequestHandler]
        if routes.enabled and self.fast_path:
            self.fast_routes = routes
            # Blocking reads are parked on their connections and answered from one shared
            # encoding per change (http/fast_blocking.py), ahead of the rest of the fast path.
            self.blocking_routes = fast_blocking.BlockingRoutes(routes)
            factory = fast_blocking.blocking_factory(
                self.runner.server, routes, self.blocking_routes, self.connections, HEADER_READ_TIMEOUT_S,
                **handler_kwargs,
            )
        else:
            factory = self._factory
        loop = asyncio.get_running_loop()
        listeners: list[tuple[list[str], int, ssl.SSLContext | None, list[tuple[str, int]]]] = [
            (self.addresses, self.port, None, self.bound)
        ]
        if self.https is not None:
            listeners.append((self.https[0], self.https[1], self.https[2], self.bound_https))
        for addresses, port, context, bound in listeners:
            if port <= 0:
                continue
            tls_args: dict[str, Any] = (
                {"ssl": context, "ssl_handshake_timeout": self.tls_handshake_timeout_s} if context else {}
            )
            for address in addresses:
                listener = await loop.create_server(
                    factory, address, port, reuse_address=True, backlog=listen_backlog(), **tls_args
                )
                self._listeners.append(listener)
                for sock in listener.sockets:
                    bound.append(sock.getsockname()[:2])
        logger.info(
            "http: listening on %s",
            ", ".join([f"{h}:{p}" for h, p in self.bound] + [f"https://{h}:{p}" for h, p in self.bound_https]),
        )

    def plain_sockets(self) -> list[socket.socket]:
        """The listening sockets of plain HTTP, which HTTP worker processes inherit and accept
        on too (http/workers/)."""
        out: list[socket.socket] = []
        for listener in self._listeners:
            for sock in listener.sockets:
                if sock.getsockname()[:2] in self.bound:
                    out.append(sock)  # type: ignore[arg-type]
        return out

    async def listen_unix(self, path: str) -> None:
        """Also serve the app on the unix socket `path`: the HTTP workers forward to it."""
        listener = await asyncio.get_running_loop().create_unix_server(self._factory, path)
        self._listeners.append(listener)

    async def stop(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
