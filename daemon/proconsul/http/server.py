"""The HTTP server: aiohttp application, route table and the one error-to-status mapping.

Owns wiring the /v1 route modules into one aiohttp application, the middleware that every
request passes through (URL sanity, headers Consul always sends, error mapping), and the
listeners on `client_addr:ports.http` and, with an SSL context, `ports.https`. Each route
module owns its endpoints; this module owns what they share.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proconsul.http import absent, catalog, event, health, keyring, kv, operator, session, status, txn
from proconsul.http import agent as agent_routes
from proconsul.http import coordinate as coordinate_routes
from proconsul.http import metrics as metrics_routes
from proconsul.http.access import AccessRules
from proconsul.http.common import HTTPError
from proconsul.rpc_api import RPCError
from proconsul.state.store import StoreError

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    # A reason may quote request text; never let an unencodable character in it turn the
    # error answer itself into a 500.
    return web.Response(status=status, text=message.encode("utf-8", "backslashreplace").decode("utf-8"))


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


@web.middleware
async def consul_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    # A decoded path with control characters (e.g. a URL-encoded newline in a KV key) is
    # refused, as Consul does, before it can reach a store key.
    if _CONTROL_CHARS.search(request.path):
        return _error(400, "Invalid URL path: contains a non-printable character")
    refusal = request.app["access_rules"].refusal(request.method, request.path, request.remote)
    try:
        if refusal is not None:
            raise HTTPError(403, refusal)
        resp = await handler(request)
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
        # RPC and state errors are 500 with the error text, as Consul answers them.
        resp = _error(500, str(exc))
    except (ValueError, OverflowError, RecursionError) as exc:
        # Each is raised by decoding something the client sent (a malformed, out-of-range or too
        # deeply nested value), so it is the client's error, never a 500. UnicodeError is a
        # ValueError.
        resp = _error(400, str(exc) or type(exc).__name__)
    headers = resp.headers
    headers["X-Consul-Default-Acl-Policy"] = "allow"
    extra = request.app["response_headers"]
    if extra:
        headers.update(extra)
    request.app["http_metrics"].observe(request, start)
    return resp


async def index(request: web.Request) -> web.Response:
    return web.Response(text="Consul Agent")


def build_app(agent: Any) -> web.Application:
    # Bodies are read by the handlers with their own limits (KV: kv_max_value_size, txn:
    # txn_max_req_len); every body is read through common.read_body, which loops to EOF.
    app = web.Application(middlewares=[consul_middleware], client_max_size=4 * 1024 * 1024)
    app["agent"] = agent
    http_config = agent.config.http_config
    app["response_headers"] = dict(http_config.response_headers)
    app["access_rules"] = AccessRules.build(http_config.block_endpoints, http_config.allow_write_http_from)
    app.router.add_get("/", index)
    for module in (agent_routes, catalog, health, kv, session, txn, status, operator, event, keyring):
        app.router.add_routes(module.routes())
    app.router.add_routes(coordinate_routes.routes())
    app.router.add_routes(absent.routes())
    app["metrics"] = agent.metrics
    app["http_metrics"] = metrics_routes.HTTPMetrics(agent.metrics)
    app.router.add_routes(metrics_routes.routes())
    return app


class HTTPServer:
    """Listens on every client address; `start()` returns once the sockets are bound.

    A port <= 0 opens no listener of that kind (ports.http = -1 leaves only HTTPS, as Consul).
    `bound` lists the plain HTTP sockets, `bound_https` the TLS ones; both serve the same app.
    """

    def __init__(
        self,
        agent: Any,
        addresses: list[str],
        port: int,
        https: tuple[list[str], int, ssl.SSLContext] | None = None,
    ) -> None:
        self.app = build_app(agent)
        self.addresses = addresses
        self.port = port
        self.https = https
        self.runner: web.AppRunner | None = None
        self.bound: list[tuple[str, int]] = []
        self.bound_https: list[tuple[str, int]] = []

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self.runner.setup()
        listeners: list[tuple[list[str], int, ssl.SSLContext | None, list[tuple[str, int]]]] = [
            (self.addresses, self.port, None, self.bound)
        ]
        if self.https is not None:
            listeners.append((self.https[0], self.https[1], self.https[2], self.bound_https))
        for addresses, port, context, bound in listeners:
            if port <= 0:
                continue
            for address in addresses:
                site = web.TCPSite(self.runner, address, port, reuse_address=True, ssl_context=context)
                await site.start()
                server = getattr(site, "_server", None)
                for sock in getattr(server, "sockets", None) or []:
                    bound.append(sock.getsockname()[:2])
        logger.info(
            "http: listening on %s",
            ", ".join(
                [f"{h}:{p}" for h, p in self.bound] + [f"https://{h}:{p}" for h, p in self.bound_https]
            ),
        )

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
