"""The HTTP fast path for blocking reads: a watcher parked on its connection, answered from one
shared encoding.

Owns recognising a plain blocking read (`?index=N`, with `?wait`) of the routes watchers use
(`/v1/health/service/<name>`, `/v1/catalog/service/<name>`, `/v1/catalog/services`, `/v1/kv/<key>`
with `?recurse`, `?keys` or `?raw`), parking it on its connection through `Server.park_query`
(no aiohttp `Request`, no handler task, no `Response`: the parked read, or on a follower the
forwarded call, holds a small waiter that looks like a future), and answering it when woken
straight onto the transport. One write that wakes K watchers of the same read costs one answer
object (the shared parked read's or forwarded call's), one encoding of the whole response (status
line, `X-Consul-Index`/`KnownLeader`/`LastContact`/`Effective-Consistency`, the body) kept with
that answer (`common.shared_response`), and K `transport.write`s of the same bytes. With
thousands of watchers the leader's profile was aiohttp's per-response work, one request object
graph per watcher (docs/PERFORMANCE.md, issue 16).

What the fast path writes is what http/health.py, http/catalog.py and http/kv.py write for the
same request (tests/http/test_fast_blocking.py compares the two paths byte for byte). Anything
else goes to http/fast.py's path and from there to aiohttp as before: another parameter (`?cached`,
`?filter`, `?near`, `?node-meta`, `?consistent`, `?max_stale`, `?pretty`, a token, ...), a bad
`?index` or `?wait` (the route module answers the 400), `discovery_max_stale`, another `?dc`, a
read `park_query` declines (no leader known yet, a new leader not ready), an HTTP worker (its reads
come from a replica). A read whose parked re-run or forwarded call fails is handed to aiohttp's
path, which runs it again and answers its error as the middleware maps it. A client that hangs up
leaves at once (`connection_lost`), as a cancelled handler does on the normal path.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any

from aiohttp import HttpVersion11
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_server import Server as AiohttpServer

from proconsul.durations import parse_duration
from proconsul.http import fast, health
from proconsul.http.common import _dumps, shared_fact_of, shared_response
from proconsul.http.conn_guard import ConnectionCounter
from proconsul.rpc_api import QueryMeta, QueryOptions
from proconsul.server.rpc import ParkedOutcome, ParkedRead, args_key
from proconsul.state import protection

# Parameters each blocking route understands (with `index`, required, and `wait`).
_COMMON = frozenset({"index", "wait", "stale", "dc"})
_KV_PARAMS = _COMMON | {"raw", "recurse", "keys", "separator"}
_HEALTH_PARAMS = _COMMON | {"tag", "passing"}
_SERVICE_PARAMS = _COMMON | {"tag"}
_SERVICES_PARAMS = _COMMON
_SERVICES = "/v1/catalog/services"
_PROTECTED = f"{protection.APPLIED_HEADER}: true\r\n".encode()
# Longer than any blocking wait (max_query_time is at most 10 minutes, plus jitter).
_PARKED_KEEPALIVE_S = 86400.0
_BLOCKED = object()  # BlockingRequestHandler._busy while a blocking read is parked


class _NotOurs(Exception):
    """Not a blocking read this module answers (raised before anything was done for it)."""


def _uint(text: str) -> int:
    """common.uint_param's accepted values; anything it answers 400 is not ours."""
    if text == "":
        return 0
    try:
        value = int(text, 10)
    except ValueError:
        raise _NotOurs from None
    if not 0 <= value <= fast.MAX_UINT64:
        raise _NotOurs
    return value


class _Read:
    """One recognised blocking read: the query to park, and how to turn its answer into bytes.
    Shared by every request with the same target (never changed once built)."""

    __slots__ = ("name", "args", "args_text", "opts", "kind", "service", "pattern")

    def __init__(self, name: str, args: dict[str, Any], opts: QueryOptions, kind: str, pattern: str,
                 service: str = "") -> None:
        self.name, self.args, self.opts, self.kind, self.pattern, self.service = name, args, opts, kind, pattern, service
        self.args_text = args_key(args)


# Recognised targets kept (watchers of one read send the same target, index included); cleared
# when full. A profile at 10,000 watchers put a tenth of a server's time in parsing them anew.
_READS_KEPT = 4096


def _meta_key(meta: QueryMeta) -> tuple[int, bool, int, str]:
    return (meta.index, meta.known_leader, meta.last_contact_ms, meta.consistency)


class BlockingRoutes:
    """What the blocking fast path answers and how, over http/fast.py's `FastRoutes`."""

    def __init__(self, routes: fast.FastRoutes) -> None:
        self.routes = routes
        # Only over the agent's own store (a worker's replica answers no blocking read here).
        self.enabled = isinstance(routes.reads, fast.AgentReads)
        self.answered = 0  # blocking reads answered here (tests check which ones it takes)
        self._reads: dict[tuple[str, float], _Read] = {}

    def read_for(self, target: str, path: str, msg: Any) -> _Read:
        """`recognise`, kept per target (and the `discovery_max_stale` it was read under, which
        a reload may change)."""
        key = (target, self.routes.agent.config.discovery_max_stale_s)
        read = self._reads.get(key)
        if read is None:
            read = self.recognise(path, msg.url.query)
            if len(self._reads) >= _READS_KEPT:
                self._reads.clear()
            self._reads[key] = read
        return read

    # ------------------------------------------------------------------------ recognising

    def _options(self, query: Any, discovery: bool) -> QueryOptions:
        """common.query_options for the parameters accepted here."""
        dc = query.get("dc")
        if dc and dc != self.routes.datacenter:
            raise _NotOurs  # another datacenter: forwarded over the WAN
        stale = fast.query_flag(query, "stale")
        if discovery and not stale and self.routes.agent.config.discovery_max_stale_s > 0:
            raise _NotOurs  # a bounded stale read: `query` decides where it goes
        index = _uint(query.get("index", ""))
        if index <= 0:
            raise _NotOurs  # not blocking
        wait_s = 0.0
        wait = query.get("wait")
        if wait:
            try:
                wait_s = parse_duration(wait)
            except ValueError:
                raise _NotOurs from None
            if wait_s < 0:
                raise _NotOurs
        return QueryOptions(min_index=index, max_wait_s=wait_s, allow_stale=stale)

    def recognise(self, path: str, query: Any) -> _Read:
        keys = query.keys()
        if path.startswith(fast.KV_ROUTE):
            key = path[len(fast.KV_ROUTE):]
            if not key or not keys <= _KV_PARAMS:
                raise _NotOurs
            opts = self._options(query, discovery=False)
            if fast.query_flag(query, "keys"):
                return _Read("KVS.ListKeys", {"prefix": key, "separator": query.get("separator", "")}, opts, "list",
                             fast.KV_ROUTE)
            if fast.query_flag(query, "recurse"):
                return _Read("KVS.List", {"prefix": key}, opts, "list", fast.KV_ROUTE)
            return _Read("KVS.Get", {"key": key}, opts, "raw" if fast.query_flag(query, "raw") else "get", fast.KV_ROUTE)
        if path == _SERVICES:
            if not keys <= _SERVICES_PARAMS:
                raise _NotOurs
            opts = self._options(query, discovery=True)
            return _Read("Catalog.ListServices", {"node_meta": {}, "instances": False}, opts, "json", _SERVICES)
        matched = fast.service_route(path)
        if matched is None:
            raise _NotOurs
        pattern, service = matched
        tags = query.getall("tag", [])
        if pattern == fast.HEALTH_ROUTE:
            if not keys <= _HEALTH_PARAMS:
                raise _NotOurs
            opts = self._options(query, discovery=True)
            passing = fast.query_flag(query, "passing")
            args = {"service": service, "tags": tags, "passing": passing, "node_meta": {},
                    "datacenter": self.routes.datacenter, "near": ""}
            return _Read("Health.ServiceNodes", args, opts, "health-passing" if passing else "json", pattern, service)
        if not keys <= _SERVICE_PARAMS:
            raise _NotOurs
        opts = self._options(query, discovery=True)
        return _Read("Catalog.ServiceNodes", {"service": service, "tags": tags, "node_meta": {}, "near": ""}, opts,
                     "json", pattern)

    # --------------------------------------------------------------------------- answers

    def answer(self, read: _Read, meta: QueryMeta, result: Any) -> bytes:
        """The whole response, encoded once per (answer object, meta, kind, second): every
        watcher woken by one change with one answer gets the same bytes."""
        self.answered += 1  # (not in http/fast.py's count: tests tell the two apart)
        if read.kind == "health-passing":
            self.routes.protection_log.note(read.service, _protected(result))
        # The Date header's text (aiohttp's, cached per second) is part of what is shared.
        key = (read.kind, _meta_key(meta), rfc822_formatted_time())
        return shared_response(result, key, lambda: self._encode(read, meta, result))

    def _encode(self, read: _Read, meta: QueryMeta, result: Any) -> bytes:
        routes = self.routes
        head = fast.meta_header_bytes(meta)
        kind = read.kind
        if kind == "list":
            if not result:
                return routes.response(404, head, b"")
            return routes.response(200, head + fast.JSON_HEADER, _dumps(result))
        if kind in ("get", "raw"):
            if result is None:
                return routes.response(404, head, b"")
            if kind == "raw":
                value = base64.b64decode(result["Value"]) if result["Value"] is not None else b""
                return routes.response(200, b"Content-Type: text/plain\r\n" + head, value)
            return routes.response(200, head + fast.JSON_HEADER, _dumps([result]))
        head += fast.JSON_HEADER
        if kind == "health-passing" and _protected(result):
            head += _PROTECTED
        return routes.response(200, head, _dumps(result))


def _protected(items: Any) -> bool:
    """health.service_health's protection test, computed once per shared answer."""
    return bool(shared_fact_of(items, "protection", health.protection_applied))


class BlockingRequestHandler(fast.FastRequestHandler):
    """http/fast.py's request handler, with blocking reads parked on the connection."""

    __slots__ = ("_blocking", "_blocked", "_blocked_msg", "_blocked_read", "_blocked_start", "_to_aiohttp")

    def __init__(self, manager: AiohttpServer, counter: ConnectionCounter, header_timeout_s: float,
                 routes: fast.FastRoutes, blocking: BlockingRoutes, **kwargs: Any) -> None:
        super().__init__(manager, counter, header_timeout_s, routes, **kwargs)
        self._blocking = blocking
        self._blocked: ParkedRead | None = None  # the read parked on this connection
        # Its message, recognised read and arrival (three slots, not a tuple: one tracked object
        # fewer per parked read; its payload is always EMPTY_PAYLOAD).
        self._blocked_msg: Any = None
        self._blocked_read: _Read | None = None
        self._blocked_start = 0.0
        self._to_aiohttp: Any = None  # a parked read whose outcome aiohttp must answer

    def _try(self, msg: Any, payload: Any) -> bool:
        if msg is self._to_aiohttp:
            self._to_aiohttp = None
            return False
        if type(msg) is RawRequestMessage and "index=" in msg.path:
            taken = self._try_blocking(msg, payload)
            if taken is not None:
                return taken
        return super()._try(msg, payload)

    def _try_blocking(self, msg: Any, payload: Any) -> bool | None:
        """True: answered or parked; False: aiohttp answers it; None: not a blocking read here."""
        blocking = self._blocking
        routes = self._routes
        if not blocking.enabled or not routes.on or self._paused or self.transport is None:
            return None
        if msg.method != "GET" or msg.version != HttpVersion11 or msg.should_close or msg.upgrade or msg.compression:
            return None
        headers = msg.headers
        for name in fast.SLOW_HEADERS:
            if name in headers:
                return None
        target = msg.path
        path, sep, _ = target.partition("?")
        if not sep or "%" in path or "/." in path or "#" in target or not target.isascii():
            return None
        if payload is not EMPTY_PAYLOAD:
            return None
        rules = routes.rules
        if rules.blocked_prefixes and any(path.startswith(p) for p in rules.blocked_prefixes):
            return None
        start = time.perf_counter()
        try:
            read = blocking.read_for(target, path, msg)
            server = routes.reads.reader()
            if server is None:
                return None
            # A plain function and this connection, not a bound method kept per parked read.
            out = server.park_query(read.name, read.args, read.opts, BlockingRequestHandler.parked_read_done,
                                    read.args_text, self)
        except _NotOurs:
            return None
        except Exception:
            return False  # nothing done yet: the normal path answers, with its own error mapping
        if out is None:
            return None
        if isinstance(out, ParkedRead):
            self._blocked = out
            self._blocked_msg, self._blocked_read, self._blocked_start = msg, read, start
            self._busy = _BLOCKED  # later pipelined requests wait in the backlog, in order
            self.request_started()
            # Not idle: aiohttp's keep-alive timer would close a connection with no request in
            # its own queue; the answer moves it on again.
            self._next_keepalive_close_time = self._loop.time() + _PARKED_KEEPALIVE_S
            return True
        meta, result = out
        self.request_started()
        self._send(read, meta, result, start)
        self.request_finished()
        return True

    def _send(self, read: _Read, meta: QueryMeta, result: Any, start: float) -> None:
        data = self._blocking.answer(read, meta, result)
        self._routes.observe("GET", read.pattern, start)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
        if self._real_parser is not None:  # None once the connection is gone
            self._real_parser.message_consumed()
        # aiohttp's keep-alive timer closes a connection idle for keepalive_timeout; this one is not.
        self._next_keepalive_close_time = self._loop.time() + self._routes.keepalive_timeout_s
        self.keepalive_moved()  # (earlier than the parked read's long one)

    def parked_read_done(self, outcome: ParkedOutcome) -> None:
        """The parked read's outcome: answer it, or hand the request to aiohttp."""
        self._blocked = None
        msg, self._blocked_msg = self._blocked_msg, None
        read, self._blocked_read = self._blocked_read, None
        if msg is None or read is None:
            return
        payload = EMPTY_PAYLOAD
        start = self._blocked_start
        self._busy = None
        if isinstance(outcome, BaseException):
            # aiohttp runs it again and answers the error as the middleware maps it.
            self.request_finished()
            self._to_aiohttp = msg
            self._backlog.appendleft((msg, payload))
            self._drain()
            return
        meta, result = outcome
        try:
            self._send(read, meta, result, start)
        finally:
            self.request_finished()
        self._drain()

    def connection_lost(self, exc: BaseException | None) -> None:
        blocked, self._blocked = self._blocked, None
        if blocked is not None:
            blocked.cancel()  # the client went away: stop costing anything
            self._blocked_msg = self._blocked_read = None
            self._busy = None
        super().connection_lost(exc)


def blocking_factory(
    server: AiohttpServer, routes: fast.FastRoutes, blocking: BlockingRoutes, counter: ConnectionCounter,
    header_timeout_s: float, **handler_kwargs: Any,
) -> Callable[[], BlockingRequestHandler]:
    """A protocol factory for `loop.create_server`: the fast path with blocking reads parked."""
    loop = asyncio.get_running_loop()

    def factory() -> BlockingRequestHandler:
        return BlockingRequestHandler(server, counter, header_timeout_s, routes, blocking, loop=loop,
                                      **handler_kwargs)

    return factory
