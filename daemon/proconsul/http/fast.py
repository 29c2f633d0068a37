"""The HTTP fast path: the requests that dominate traffic, answered without aiohttp's per-request
machinery.

Owns recognising, from the message aiohttp's C parser has just produced, the hot requests (KV GET
and PUT, `/v1/health/service/<name>`, `/v1/catalog/service/<name>`) in the plain forms this module
fully understands, and answering them straight onto the transport with pre-encoded header bytes:
no `Request`, no router lookup, no middleware chain, no `Response`, no CIMultiDict, no task for a
read. A profile of the agent under KV GET load (docs/PERFORMANCE.md) put most of its time there.

Everything else goes through aiohttp as before, and so does any hot request the fast path does
not fully understand: a parameter outside the short lists below, a token, `Expect`, HTTP/1.0 or
`Connection: close`, a body not yet complete, a percent-escaped or dotted path, a blocking
read, another `?dc`, a read this server cannot answer at once (a follower's default-mode or
`?consistent` read), ACLs enabled, a `http_config.response_headers` entry that names a header the
fast path writes. Bad input is never answered here: whatever would be a 4xx from validation falls
back, so every error text stays the route module's. What the fast path writes is byte for byte
what the normal path writes (tests/integration/test_http_fast_path.py compares the two on a table
of requests, for the agent and for an HTTP worker).

Where reads come from: a narrow `ReadGate` says which `server.rpc.Server` to read (the agent's,
over its store; an HTTP worker's, over its replica, http/workers/app.py), whether a default-mode
read may be answered now, must first pass a barrier (a worker: the agent's applied index, one
round trip for every read waiting at that moment), or must take the normal path; and the same
for a KV `?consistent` read, whose barrier on a Raft leader is ReadIndex (`RaftServer.read_barrier`:
one leadership confirmation for every read waiting, then the store once it applied the commit
index of the moment the read arrived). A read waiting on a barrier is parked on its connection
(no task, no timer): its connection routes nothing else until the barrier's answer comes back and
the read is answered, or handed to aiohttp when it must be (a failed `?consistent` barrier always
is: the normal path then answers, forwards or reports the error as it always did).

How it hooks in: `FastRequestHandler` is the connection guard's `RequestHandler` with aiohttp's
parser wrapped (`_Intercept`); each parsed message is either answered here or handed on to aiohttp
unchanged. Responses stay in request order on a pipelined connection: while a request aiohttp
handles is unanswered, the following ones go to aiohttp too; while a fast PUT waits for Raft, the
following messages wait in a backlog and are routed, in order, once it is answered.

A plain KV PUT skips even the parser: a chunk of bytes that is exactly one PUT with a short list
of ordinary header fields (`plain_put`), arriving while its connection has nothing else in hand,
is routed from the bytes, with no message, header dict, URL or body stream built for it (on a
Raft leader under write load those were a fifth of the event loop's time per write). This is
only sound while aiohttp's parser sits between two requests, holding no partial one: so a
connection keeps it only as long as every chunk it received was such a whole PUT; the first read,
other PUT or part of a request leaves the connection to the parser for good.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import HttpVersion11, web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_server import Server as AiohttpServer
from yarl import URL

from proconsul.http import health
from proconsul.http.appkeys import ACCESS_RULES, ACL_RESOLVER, AGENT, HTTP_METRICS, RESPONSE_HEADERS
from proconsul.http.common import HTTPError, _dumps
from proconsul.http.conn_guard import ConnectionCounter, GuardedRequestHandler
from proconsul.metrics import Sample
from proconsul.metrics.registry import SampleBatch
from proconsul.rpc_api import QueryMeta, QueryOptions, RPCError, WriteMeta
from proconsul.state import commands, protection
from proconsul.state.records import DirEntry
from proconsul.state.store import StoreError

if TYPE_CHECKING:
    from proconsul.server.rpc import Server

logger = logging.getLogger(__name__)

MAX_UINT64 = (1 << 64) - 1

# Parameters each fast route understands; any other one sends the request down the normal path.
_KV_GET_PARAMS = frozenset({"raw", "recurse", "keys", "separator", "stale", "consistent", "dc"})
_KV_PUT_PARAMS = frozenset({"flags", "cas", "dc"})
_SERVICE_PARAMS = frozenset({"stale", "dc", "tag"})
_HEALTH_PARAMS = frozenset({"stale", "dc", "tag", "passing"})
# Headers the fast path writes itself: a `response_headers` entry naming one of them would change
# it in place on the normal path, so with such an entry the fast path stays off.
_OWN_HEADERS = frozenset({
    "content-type", "content-length", "date", "server", "connection", "transfer-encoding",
    "x-consul-index", "x-consul-knownleader", "x-consul-lastcontact", "x-consul-effective-consistency",
    "x-consul-default-acl-policy", protection.APPLIED_HEADER.lower(),
})
# Request headers that need the normal path: a token (forwarded with writes, checked with ACLs),
# expectations (100-continue and its refusals), and bodies in a transfer coding.
SLOW_HEADERS = ("X-Consul-Token", "Authorization", "Expect", "Transfer-Encoding")

KV_ROUTE = "/v1/kv/"
HEALTH_ROUTE = "/v1/health/service/"
CATALOG_ROUTE = "/v1/catalog/service/"
JSON_HEADER = b"Content-Type: application/json\r\n"
_SERVER = f"\r\nServer: {SERVER_SOFTWARE}\r\n\r\n".encode()
_STATUS = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_DEFAULT = QueryOptions()
_STALE = QueryOptions(allow_stale=True)
_CONSISTENT = QueryOptions(require_consistent=True)
_PUT_OK_HEAD = _STATUS[200] + b"X-Consul-Index: "
_INTERNAL_ERROR_BODY = b"500 Internal Server Error\n\nServer got itself in trouble"

# A plain KV PUT read straight from the bytes (`plain_put`), without aiohttp's parser: a chunk
# that is exactly one such request, which is what a client with one write in flight per
# connection sends. Its head may carry only these fields (lower-case names), once each, with
# printable ASCII values; a `Host` is required (aiohttp answers a HTTP/1.1 request without one
# 400). Anything else (a token, `Expect`, `Connection`, a transfer or content coding) is left to
# aiohttp's parser, which does what it always did.
_PLAIN_FIELDS = frozenset({b"host", b"user-agent", b"accept", b"accept-encoding", b"content-type",
                           b"content-length"})
_PLAIN_HEAD_MAX = 4096  # well below aiohttp's line and field limits (8190)
_PLAIN_BODY_MAX = 16384  # well below the body size at which aiohttp's StreamReader pauses the parser
# Bytes a plain head may hold besides its CRLFs: printable ASCII and HTAB.
_HEAD_BYTES = bytes(range(0x20, 0x7F)) + b"\t"
# A plain target: an absolute path and query of unreserved and sub-delimiter characters (no
# percent escapes, no fragment, no space, nothing outside ASCII).
_PLAIN_TARGET = re.compile(rb"/[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*")
_PLAIN_SET = (commands.KVOp.SET, 0, 0)  # a PUT without a query: a set, no flags
# What the parser wrapper returns for a chunk the fast path took whole: no message for aiohttp.
_NO_MESSAGES: tuple[tuple[()], bool, bytes] = ((), False, b"")


# aiohttp internals the fast path relies on (RequestHandler and its BaseProtocol, aiohttp 3.14):
# with another aiohttp that lacks one of them the fast path stays off rather than misbehave.
_AIOHTTP_INTERNALS = (
    "_parser", "_messages", "_waiter", "_request_count", "_force_close", "_paused", "_buffer_paused",
    "_max_msg_queue_size", "_msg_queue_resume_size", "_next_keepalive_close_time", "_loop",
    "_handle_request", "_pause_reading_for_buffer", "_resume_reading_if_drained",
)


def aiohttp_supported() -> bool:
    return all(hasattr(web.RequestHandler, name) for name in _AIOHTTP_INTERNALS)


def service_route(path: str) -> tuple[str, str] | None:
    """(route prefix, service name) of a `/v1/health/service/<name>` or `/v1/catalog/service/<name>`
    path, or None for any other path (a name with a slash included: the normal path answers it)."""
    for pattern in (HEALTH_ROUTE, CATALOG_ROUTE):
        if path.startswith(pattern):
            service = path[len(pattern):]
            return (pattern, service) if service and "/" not in service else None
    return None


def query_flag(query: Any, name: str) -> bool:
    """common.flag on a parsed query: present and not "false"/"0"."""
    value = query.get(name)
    return value is not None and value.lower() not in ("false", "0")


def _uint(text: str) -> int | None:
    """common.uint_param's accepted values ("" is 0); None for what it answers 400."""
    if text == "":
        return 0
    try:
        value = int(text, 10)
    except ValueError:
        return None
    return value if 0 <= value <= MAX_UINT64 else None


def meta_header_bytes(meta: QueryMeta) -> bytes:
    return (
        f"X-Consul-Index: {meta.index}\r\nX-Consul-KnownLeader: {'true' if meta.known_leader else 'false'}\r\n"
        f"X-Consul-LastContact: {meta.last_contact_ms}\r\nX-Consul-Effective-Consistency: {meta.consistency}\r\n"
    ).encode()


class _Fallback(Exception):
    """The request needs the normal path (raised before anything was done for it)."""


class _Barrier(Exception):
    """A default-mode read that may be answered only after a barrier (raised before anything
    was done for it): the connection parks it until `ReadGate.barrier` calls back."""

    consistent = False


class _ConsistentBarrier(_Barrier):
    """A `?consistent` read: parked until `ReadGate.consistent_barrier` calls back."""

    consistent = True


# ReadGate.default_read's answers (anything else: the normal path).
ANSWER = 1
BARRIER = 2
FALLBACK = 0
# The barrier's outcome: (the agent is the leader?, ready for reads?), or None when it failed.
BarrierResult = tuple[bool, bool] | None
# `Server.write_now`'s callback: (meta, result, None) once applied, or (None, None, error).
WriteDone = Callable[[WriteMeta | None, Any, BaseException | None], None]

_PARKED = object()  # FastRequestHandler._busy while a read waits for its barrier
_WRITING = object()  # FastRequestHandler._busy while a fast write started without a task runs


class ReadGate(Protocol):
    """Where the fast path's reads come from, and when a default-mode read may be answered."""

    writes: bool  # plain KV PUTs answered here too (the agent); a worker forwards every write

    def reader(self) -> Server | None:
        """The server whose `query` answers the read (its store, its query meta); None: the
        fast path takes no read now."""

    def default_read(self) -> int:
        """ANSWER (now), BARRIER (after `barrier`) or FALLBACK (the normal path)."""

    def barrier(self, done: Callable[[BarrierResult], None]) -> bool:
        """Call `done` once the store to read holds every write acknowledged before this call;
        False when no barrier can be run (the read then takes the normal path)."""

    def consistent_read(self) -> int:
        """For a `?consistent` read: ANSWER (now: a single voter), BARRIER (after
        `consistent_barrier`) or FALLBACK (the normal path)."""

    def consistent_barrier(self, done: Callable[[BarrierResult], None]) -> bool:
        """Call `done` with (True, True) once leadership was confirmed after this call and the
        store applied the commit index of this moment (ReadIndex), or with None when that
        failed; never from inside this call. False when no barrier can be run."""

    def write_now(self, command: commands.KVS, done: WriteDone) -> bool:
        """Start a plain KV write without a task (`Server.write_now`: proposed on a Raft leader,
        forwarded by a follower that knows its leader) and call `done(meta, result, error)` once
        it applied; False, with nothing proposed or sent, when the write must take the task
        path (`Server.write`: no known leader, a single voter, a client)."""


class ReadIndex(Protocol):
    """A Raft leader's ReadIndex without a task (`server.consensus.RaftLog.read_barrier`)."""

    def read_barrier(self, done: Callable[[BaseException | None], None]) -> None:
        """`done(None)` once a linearizable read may be served, `done(error)` when it may not;
        raises an `RPCError` (NotLeader) at once when this server cannot run it."""


class AgentReads:
    """The in-process server's own store: a default read is answered at once by a leader ready
    for reads. `read_index` is the Raft log's ReadIndex on a Raft server, None on the single
    voter of `-dev` (server.single.SingleNodeLog), which confirms its leadership without a round;
    the agent (its composition root) says which when it builds this."""

    writes = True

    def __init__(self, server: Server, read_index: ReadIndex | None) -> None:
        self.server = server
        self.read_index = read_index

    def reader(self) -> Server | None:
        return self.server

    def default_read(self) -> int:
        server = self.server
        consensus = server.consensus
        if consensus.is_leader() and (consensus.ready_for_reads() or server.unsafe_reads_before_first_apply):
            return ANSWER
        return FALLBACK  # a follower forwards, a new leader waits for its first commit

    def barrier(self, done: Callable[[BarrierResult], None]) -> bool:
        return False

    def consistent_read(self) -> int:
        if self.read_index is not None:
            # A Raft server: ReadIndex decides (on a follower it refuses at once, and the read
            # is forwarded by the normal path; a new leader's round waits for its first commit).
            return BARRIER
        # A single voter confirms without a round (SingleNodeLog.verify_leader returns at once).
        return ANSWER if self.server.consensus.is_leader() else FALLBACK

    def consistent_barrier(self, done: Callable[[BarrierResult], None]) -> bool:
        read_index = self.read_index
        if read_index is None:
            return False

        def confirmed(exc: BaseException | None) -> None:
            done(None if exc is not None else _CONFIRMED)

        try:
            read_index.read_barrier(confirmed)
        except RPCError:
            return False  # not the leader: the normal path forwards the read
        return True

    def write_now(self, command: commands.KVS, done: WriteDone) -> bool:
        return self.server.write_now(command, done)


class ClientReads:
    """A client agent's: it holds no catalog, so every read takes the normal path (an RPC to a
    server); its plain KV PUTs are still answered here (`Server.write` over RPC)."""

    writes = True

    def reader(self) -> Server | None:
        return None

    def default_read(self) -> int:
        return FALLBACK

    def barrier(self, done: Callable[[BarrierResult], None]) -> bool:
        return False

    def consistent_read(self) -> int:
        return FALLBACK

    def write_now(self, command: commands.KVS, done: WriteDone) -> bool:
        return False  # a client agent's writes are RPCs to a server: the task path

    def consistent_barrier(self, done: Callable[[BarrierResult], None]) -> bool:
        return False


_CONFIRMED: BarrierResult = (True, True)


class FastRoutes:
    """What one application's fast path may answer and how; built once per HTTP server."""

    def __init__(self, app: web.Application, keepalive_timeout_s: float, reads: ReadGate,
                 own_headers: str = "") -> None:
        """`reads`: where reads come from (the agent's `AgentReads` or `ClientReads`, a worker's
        replica); `own_headers`: lines ("Name: value\r\n") the application's middleware adds
        after the configured ones."""
        self.app = app
        self.agent = agent = app[AGENT]
        self.reads = reads
        self.keepalive_timeout_s = keepalive_timeout_s
        self.rules = app[ACCESS_RULES]
        self.metrics = app[HTTP_METRICS]
        self.protection_log = app[health.PROTECTION_LOG]
        self.datacenter = agent.config.datacenter
        self._own_headers = own_headers
        self.refresh()
        self._series: dict[tuple[str, str], Sample] = {}
        # The KV PUT route's timer, recorded once per loop iteration (`SampleBatch`): a Raft
        # batch's writes are answered in one callback. A read is answered alone, and its time is
        # recorded before its answer goes out, as the middleware does.
        self._put_series = SampleBatch(self.metrics.route_series("PUT", KV_ROUTE))
        self._put_ok_date = ""
        self._put_ok_ends: tuple[bytes, bytes] = (b"", b"")
        self.answered = 0  # requests the fast path answered (tests check which ones it takes)
        self._date_str = ""
        self._date = b""

    def refresh(self) -> None:
        """Take the application's (reloaded) response headers."""
        extra = self.app[RESPONSE_HEADERS]
        # ACLs on: every request is authorised (and list answers trimmed) by http/acl_gate.py.
        self.on = self.app[ACL_RESOLVER] is None and not any(k.lower() in _OWN_HEADERS for k in extra)
        self.enabled = self.on and aiohttp_supported()
        # What the middleware adds to every answer, in its order, then aiohttp's own headers.
        self.tail = ("X-Consul-Default-Acl-Policy: allow\r\n" + "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                     + self._own_headers).encode("utf-8")
        self._put_ok_date = ""  # the Date the PUT answers' cached ends below were built for

    # ------------------------------------------------------------------------------ answers

    def note_answer(self) -> None:
        """A connection answered one more request on the fast path (`answered`)."""
        self.answered += 1

    def response(self, status: int, head: bytes, body: bytes) -> bytes:
        date = rfc822_formatted_time()  # aiohttp's own, cached per second
        if date is not self._date_str:
            self._date_str, self._date = date, date.encode()
        return b"".join((_STATUS[status], head, self.tail, b"Content-Length: ", str(len(body)).encode(),
                         b"\r\nDate: ", self._date, _SERVER, body))

    def error(self, status: int, message: str) -> bytes:
        """server._error's answer (a text/plain reason), as the middleware completes it."""
        body = message.encode("utf-8", "backslashreplace")
        return self.response(status, b"Content-Type: text/plain; charset=utf-8\r\n", body)

    def put_ok(self, index: int, ok: bool) -> bytes:
        """`response(200, ...)` of a PUT's `true`/`false` answer at `index`: everything after
        the index header's value is the same for every answer within a second, so it is built
        once per Date (and per `refresh`)."""
        date = rfc822_formatted_time()
        if date is not self._put_ok_date:
            if date is not self._date_str:
                self._date_str, self._date = date, date.encode()
            head = b"\r\n" + JSON_HEADER + self.tail + b"Content-Length: "
            end = b"\r\nDate: " + self._date + _SERVER
            self._put_ok_ends = (head + b"5" + end + b"false", head + b"4" + end + b"true")
            self._put_ok_date = date
        return b"".join((_PUT_OK_HEAD, str(index).encode(), self._put_ok_ends[1 if ok else 0]))

    def observe(self, method: str, pattern: str, start: float) -> None:
        series = self._series.get((method, pattern))
        if series is None:
            series = self._series[(method, pattern)] = self.metrics.route_series(method, pattern)
        series.observe((time.perf_counter() - start) * 1000.0)

    def observe_put(self, start: float) -> None:
        """`observe("PUT", KV_ROUTE, start)`, recorded at the end of this loop iteration."""
        self._put_series.observe((time.perf_counter() - start) * 1000.0)

    # -------------------------------------------------------------------------------- reads

    def _options(self, query: Any, discovery: bool) -> QueryOptions:
        """common.query_options for the parameters the fast routes accept."""
        dc = query.get("dc") if query else None
        if dc and dc != self.datacenter:
            raise _Fallback  # another datacenter: forwarded over the WAN
        stale = bool(query) and query_flag(query, "stale")
        if query and "consistent" in query and query_flag(query, "consistent"):
            if stale:
                raise _Fallback  # the normal path answers the 400
            return _CONSISTENT
        if discovery and not stale:
            bound = self.agent.config.discovery_max_stale_s
            if bound > 0:
                return QueryOptions(allow_stale=True, max_stale_s=bound)
        return _STALE if stale else _DEFAULT

    def _read_now(self, name: str, args: dict[str, Any], opts: QueryOptions,
                  passed: bool | None) -> tuple[QueryMeta, Any]:
        """`server.query(name, args, opts)` when the reader answers it without waiting; `passed`:
        True for a read whose barrier has just been passed, False for one whose barrier failed."""
        server = self.reads.reader()
        if server is None:
            raise _Fallback
        if opts.require_consistent:
            if passed is None:
                mode = self.reads.consistent_read()
                if mode != ANSWER:
                    raise _ConsistentBarrier if mode == BARRIER else _Fallback
            elif passed:
                # ReadIndex confirmed leadership after the read arrived and the store holds the
                # commit index of that moment: the leader's read of the store now is linearizable.
                meta, result = self._run_query(server, name, args, _DEFAULT)
                return QueryMeta(meta.index, meta.known_leader, meta.last_contact_ms, "consistent"), result
            else:
                raise _Fallback  # the normal path runs (and reports) ReadIndex itself
        elif opts.allow_stale:
            if opts.too_stale(server.consensus.last_contact_ms()):
                raise _Fallback
        elif not passed:
            mode = self.reads.default_read()
            if mode != ANSWER:
                raise _Barrier if mode == BARRIER else _Fallback
        return self._run_query(server, name, args, opts)

    @staticmethod
    def _run_query(server: Server, name: str, args: dict[str, Any], opts: QueryOptions) -> tuple[QueryMeta, Any]:
        coro = server.query(name, args, opts)
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        # It suspended after all: abandon it (a read has no effect but its counters) and let the
        # normal path answer.
        coro.close()
        raise _Fallback

    def kv_get(self, key: str, query: Any, passed: bool | None = None) -> bytes:
        if query and not query.keys() <= _KV_GET_PARAMS:
            raise _Fallback
        opts = self._options(query, discovery=False)
        if query and query_flag(query, "keys"):
            meta, keys = self._read_now("KVS.ListKeys", {"prefix": key, "separator": query.get("separator", "")}, opts,
                                         passed)
            return self._list(meta, keys)
        if query and query_flag(query, "recurse"):
            meta, entries = self._read_now("KVS.List", {"prefix": key}, opts, passed)
            return self._list(meta, entries)
        meta, entry = self._read_now("KVS.Get", {"key": key}, opts, passed)
        if entry is None:
            return self.response(404, meta_header_bytes(meta), b"")
        if query and query_flag(query, "raw"):
            value = base64.b64decode(entry["Value"]) if entry["Value"] is not None else b""
            return self.response(200, b"Content-Type: text/plain\r\n" + meta_header_bytes(meta), value)
        return self.response(200, meta_header_bytes(meta) + JSON_HEADER, _dumps([entry]))

    def _list(self, meta: QueryMeta, items: Any) -> bytes:
        if not items:
            return self.response(404, meta_header_bytes(meta), b"")
        return self.response(200, meta_header_bytes(meta) + JSON_HEADER, _dumps(items))

    def health_service(self, service: str, query: Any, passed: bool | None = None) -> bytes:
        if query and not query.keys() <= _HEALTH_PARAMS:
            raise _Fallback
        opts = self._options(query, discovery=True)
        passing = bool(query) and query_flag(query, "passing")
        args = {"service": service, "tags": query.getall("tag", []) if query else [], "passing": passing,
                "node_meta": {}, "datacenter": self.datacenter, "near": ""}
        meta, items = self._read_now("Health.ServiceNodes", args, opts, passed)
        protected = passing and any(
            check.get("Status") != "passing" for item in items for check in item.get("Checks") or ()
        )
        if passing:
            self.protection_log.note(service, protected)
        head = meta_header_bytes(meta) + JSON_HEADER
        if protected:
            head += f"{protection.APPLIED_HEADER}: true\r\n".encode()
        return self.response(200, head, _dumps(items))

    def catalog_service(self, service: str, query: Any, passed: bool | None = None) -> bytes:
        if query and not query.keys() <= _SERVICE_PARAMS:
            raise _Fallback
        opts = self._options(query, discovery=True)
        args = {"service": service, "tags": query.getall("tag", []) if query else [], "node_meta": {}, "near": ""}
        meta, items = self._read_now("Catalog.ServiceNodes", args, opts, passed)
        return self.response(200, meta_header_bytes(meta) + JSON_HEADER, _dumps(items))

    # -------------------------------------------------------------------------------- writes

    def kv_put_command(self, key: str, query: Any, headers: Any, payload: Any) -> commands.KVS:
        """The command of a plain KV PUT (set, `?flags`, `?cas`), checked as http/kv.py checks it."""
        if not key or (query and not query.keys() <= _KV_PUT_PARAMS):
            raise _Fallback
        op, flags, cas = self._kv_put_args(query) if query else _PLAIN_SET
        value = _value(headers, payload, self.agent.config.limits.kv_max_value_size)
        return commands.KVS(op, DirEntry(key=key, value=value, flags=flags, modify_index=cas))

    def kv_put_plain(self, key: str, query: Any, value: bytes) -> commands.KVS:
        """`kv_put_command` of a request read by `plain_put`: its whole body is `value`."""
        if not key or (query and not query.keys() <= _KV_PUT_PARAMS):
            raise _Fallback
        op, flags, cas = self._kv_put_args(query) if query else _PLAIN_SET
        if len(value) > self.agent.config.limits.kv_max_value_size:
            raise _Fallback  # the normal path answers 413
        return commands.KVS(op, DirEntry(key=key, value=value, flags=flags, modify_index=cas))

    def _kv_put_args(self, query: Any) -> tuple[commands.KVOp, int, int]:
        """A PUT's operation, flags and cas index from its (non-empty) query."""
        flags = cas = 0
        op = commands.KVOp.SET
        dc = query.get("dc")
        if dc and dc != self.datacenter:
            raise _Fallback
        if "flags" in query:
            flags = _uint(query["flags"])  # type: ignore[assignment]
        if "cas" in query:
            cas = _uint(query["cas"])  # type: ignore[assignment]
            op = commands.KVOp.CAS
        if flags is None or cas is None:
            raise _Fallback  # the normal path answers the 400
        return op, flags, cas

    def kv_put_now(self, command: commands.KVS, done: Callable[[bytes | None], None]) -> bool:
        """Start the write without a task where the server can (`Server.write_now`: the leader's
        Raft log, or a follower's write forwarder) and call `done(answer)` once it applied, with what `kv_put` would answer (None
        when the write's future was cancelled: nothing is answered, as when `kv_put`'s task is);
        never from inside this call. False, with nothing proposed: `kv_put` must do it."""
        def applied(meta: WriteMeta | None, ok: Any, exc: BaseException | None) -> None:
            done(self.put_answer(command, meta, ok, exc))

        try:
            return self.reads.write_now(command, applied)
        except Exception as exc:
            # Whether it was proposed is not known: answer it here as `kv_put` would, never retry.
            asyncio.get_running_loop().call_soon(done, self.put_answer(command, None, None, exc))
            return True

    async def kv_put(self, command: commands.KVS) -> bytes | None:
        try:
            meta, ok = await self.agent.server.write(command)
        except Exception as exc:
            return self.put_answer(command, None, None, exc)
        return self.put_answer(command, meta, ok, None)

    def put_answer(self, command: commands.KVS, meta: WriteMeta | None, ok: Any, exc: BaseException | None) -> bytes | None:
        """The answer to a KV PUT: `ok` at `meta.index`, or `exc` as the middleware maps it."""
        if exc is None:
            assert meta is not None
            index = meta.index
            return self.put_ok(index if index > 1 else 1, bool(ok))
        if isinstance(exc, HTTPError):
            return self.error(exc.status, exc.message)
        if isinstance(exc, (RPCError, StoreError)):
            # As the middleware maps them: a server's ACL refusal by its text, else a 500.
            text = str(exc)
            return self.error(403 if text.startswith(("Permission denied", "ACL not found")) else 500, text)
        if isinstance(exc, (ValueError, OverflowError, RecursionError)):
            return self.error(400, str(exc) or type(exc).__name__)
        if not isinstance(exc, Exception):
            return None  # cancelled
        logger.error("http: error handling PUT %s", command.entry.key, exc_info=exc)
        return self.response(500, b"Content-Type: text/plain; charset=utf-8\r\n", _INTERNAL_ERROR_BODY)


def _value(headers: Any, payload: Any, limit: int) -> bytes:
    """A PUT's whole body when it has all arrived (declared length, no coding, within `limit`)."""
    if payload is EMPTY_PAYLOAD:
        return b""
    length = headers.get("Content-Length")
    if length is None or not isinstance(payload, StreamReader) or not payload.is_eof():
        raise _Fallback  # still arriving (or chunked): read_body on the normal path waits for it
    size = int(length)
    if size > limit or payload.total_bytes != size:
        raise _Fallback  # the normal path answers 413
    return payload.read_nowait(-1)


def plain_put(data: bytes) -> tuple[str, bytes] | None:
    """`(target, body)` when `data` is exactly one plain PUT request (see `_PLAIN_FIELDS`):
    `PUT <target> HTTP/1.1`, a head of CRLF-ended lines of allowed fields, and the whole body its
    `Content-Length` declares (none without one). None for anything else."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > _PLAIN_HEAD_MAX:
        return None
    # The request line: exactly three parts, each matched whole (so no CR, LF or control byte).
    line_end = data.find(b"\r\n")
    parts = data[:line_end].split(b" ")
    if len(parts) != 3 or parts[0] != b"PUT" or parts[2] != b"HTTP/1.1" or not _PLAIN_TARGET.fullmatch(parts[1]):
        return None
    fields = data[line_end + 2:end]  # empty when the request line ends the head
    length = _plain_heads.get(fields)
    if length is None:
        length = _plain_fields(fields)
        if length is None:
            return None
        if len(_plain_heads) >= _PLAIN_HEADS_MAX:
            _plain_heads.clear()
        _plain_heads[fields] = length
    start = end + 4
    if len(data) - start != length:
        return None
    return parts[1].decode("ascii"), data[start:]


# Header fields (a head without its request line) that `_plain_fields` took, with the body
# length each declares. A client sends the same fields with every write of the same size, so
# they are read once, not per request; the key is the exact bytes, so a block found here is one
# that was read in full. Bounded: emptied when full (a client varying its fields only loses the
# shortcut).
_plain_heads: dict[bytes, int] = {}
_PLAIN_HEADS_MAX = 256


def _plain_fields(fields: bytes) -> int | None:
    """The body length a plain PUT's header fields declare (0 without a `Content-Length`), or
    None when they are not plain: CRLF-separated lines of allowed fields with printable ASCII
    only, one `Host`, at most one length within `_PLAIN_BODY_MAX`."""
    lines = fields.split(b"\r\n")
    # Only printable ASCII (and HTAB) between the CRLFs: no bare CR or LF, no control byte.
    if fields.translate(None, _HEAD_BYTES) != b"\r\n" * (len(lines) - 1):
        return None
    host = False
    length = -1
    for line in lines:
        name, sep, value = line.partition(b":")
        name = name.lower()
        if not sep or name not in _PLAIN_FIELDS:
            return None
        if name == b"content-length":
            value = value.strip(b" \t")
            if length >= 0 or not value.isdigit() or len(value) > 9:
                return None
            length = int(value)
        elif name == b"host":
            if host:
                return None
            host = True
    if not host or length > _PLAIN_BODY_MAX:
        return None
    return length if length > 0 else 0


class FastRequestHandler(GuardedRequestHandler):
    """The guarded request handler with the fast path in front of aiohttp's request handling."""

    __slots__ = ("_routes", "_real_parser", "_slow", "_busy", "_parked", "_passed", "_passed_ok", "_passed_start",
                 "_backlog", "_may_write", "_routing", "_parser_full", "_reentered", "_between")

    def __init__(self, manager: AiohttpServer, counter: ConnectionCounter, header_timeout_s: float,
                 routes: FastRoutes, **kwargs: Any) -> None:
        super().__init__(manager, counter, header_timeout_s, **kwargs)
        self._routes = routes
        self._real_parser = self._parser
        self._parser = _Intercept(self._parser, self)  # type: ignore[assignment]
        self._slow = 0  # messages handed to aiohttp and not answered yet
        self._busy: asyncio.Task[None] | object | None = None  # a fast write being answered (_WRITING or its task), or _PARKED
        self._parked: tuple[Any, Any, float] | None = None  # the read waiting for its barrier, since when
        self._passed: Any = None  # the message whose barrier has just answered
        self._passed_ok = False  # whether it passed (else it failed)
        self._passed_start = 0.0  # and when it arrived
        self._backlog: deque[tuple[Any, Any]] = deque()  # messages behind it, in order
        self._may_write: bool | None = None  # allow_write_http_from, decided once per connection
        self._routing = False  # a message is being routed (see _Intercept.feed_data)
        self._parser_full = False  # the parser's last batch filled its queue: it may hold more
        # Messages parsed meanwhile, routed after it (a list only while there are some: one
        # tracked object fewer per idle connection).
        self._reentered: list[tuple[Any, Any]] | None = None
        # aiohttp's parser has been given whole plain PUTs only (`plain_put`), so it holds
        # nothing between them and the next plain PUT may be read from its bytes without it
        # (`_Intercept.feed_data`). Once it is given anything else (a read, a PUT with other
        # headers, part of a request) it keeps the connection.
        self._between = True

    # ------------------------------------------------------------------ routing each message

    def route(self, msg: Any, payload: Any) -> bool:
        """True when the fast path took the message (answered it, or holds it in order)."""
        if self._busy is not None or self._backlog:
            self._backlog.append((msg, payload))
            if len(self._backlog) >= self._max_msg_queue_size and not self._buffer_paused:
                self._pause_reading_for_buffer()  # as aiohttp does with its own queue
            return True
        if self._slow == 0 and self._try(msg, payload):
            return True
        self._slow += 1
        return False

    def _try(self, msg: Any, payload: Any) -> bool:
        passed: bool | None = None
        if self._passed is msg:
            passed = self._passed_ok
            self._passed = None
        if type(msg) is not RawRequestMessage or self._paused or self.transport is None:
            return False  # a parse error, or the client is not reading: aiohttp waits for it
        method = msg.method
        if method != "GET" and method != "PUT":
            return False
        if msg.version != HttpVersion11 or msg.should_close or msg.upgrade or msg.compression:
            return False
        headers = msg.headers
        for name in SLOW_HEADERS:
            if name in headers:
                return False
        target = msg.path
        path, sep, _ = target.partition("?")
        if "%" in path or "/." in path or "#" in target or not target.isascii():
            return False  # escapes, dot segments, fragments, raw non-ASCII: the normal path's URL rules
        query = msg.url.query if sep else None
        routes = self._routes
        if not routes.on:
            return False
        rules = routes.rules
        if rules.blocked_prefixes and any(path.startswith(p) for p in rules.blocked_prefixes):
            return False
        start = self._passed_start if passed is not None else time.perf_counter()
        try:
            if method == "GET":
                if payload is not EMPTY_PAYLOAD:
                    return False  # a GET with a body: aiohttp reads and drops it
                if path.startswith(KV_ROUTE):
                    key = path[len(KV_ROUTE):]
                    if not key:
                        return False
                    data = routes.kv_get(key, query, passed)
                    pattern = KV_ROUTE
                else:
                    matched = service_route(path)
                    if matched is None:
                        return False
                    pattern, service = matched
                    read = routes.health_service if pattern == HEALTH_ROUTE else routes.catalog_service
                    data = read(service, query, passed)
                self.request_started()
                routes.observe("GET", pattern, start)  # as the middleware: before the answer goes out
                self._answer(data)
                self.request_finished()
                return True
            if not path.startswith(KV_ROUTE) or not routes.reads.writes:
                return False
            if rules.write_networks and not self._write_allowed():
                return False  # the normal path answers the 403
            command = routes.kv_put_command(path[len(KV_ROUTE):], query, headers, payload)
        except _Fallback:
            return False
        except _Barrier as barrier:
            return self._park(msg, payload, start, barrier.consistent)
        except Exception:
            # Nothing was done for the request yet (a read has no effect, a write was not
            # proposed): the normal path answers it, with its own error mapping.
            logger.debug("http: fast path passed %s %s on after an error", method, target, exc_info=True)
            return False
        self.request_started()
        self._busy = _WRITING
        if not routes.kv_put_now(command, functools.partial(self._put_done, start)):
            self._busy = self._loop.create_task(self._put(command, start))
        return True

    def put_plain(self, target: str, body: bytes) -> bool:
        """`_try` of a plain PUT read from the bytes (`plain_put`), taken while this connection
        has nothing else in hand: True when the fast path took it (it is being answered); False,
        with nothing done, when aiohttp must parse and answer it."""
        if self._paused or self.transport is None:
            return False
        routes = self._routes
        if not routes.on or not routes.reads.writes:
            self._between = False  # none will be taken here (ACLs, a reader): stop looking
            return False
        path, sep, query_string = target.partition("?")
        if "/." in path or not path.startswith(KV_ROUTE):
            return False
        rules = routes.rules
        if rules.blocked_prefixes and any(path.startswith(p) for p in rules.blocked_prefixes):
            return False
        if rules.write_networks and not self._write_allowed():
            return False
        start = time.perf_counter()
        try:
            # The query as aiohttp's parser builds the request's URL.
            query = URL.build(path=path, query_string=query_string, encoded=True).query if sep else None
            command = routes.kv_put_plain(path[len(KV_ROUTE):], query, body)
        except Exception:
            return False  # _Fallback, or an error: nothing was done, the normal path answers it
        self.request_started()
        self._busy = _WRITING
        if not routes.kv_put_now(command, functools.partial(self._put_done, start)):
            self._busy = self._loop.create_task(self._put(command, start))
        return True

    def _park(self, msg: Any, payload: Any, start: float, consistent: bool) -> bool:
        """Hold a read until its barrier answers (`_unpark`); the messages after it wait in the
        backlog, as behind a fast write. False when no barrier can be run."""
        self._parked = (msg, payload, start)
        self._busy = _PARKED
        reads = self._routes.reads
        try:
            started = reads.consistent_barrier(self._unpark) if consistent else reads.barrier(self._unpark)
        except Exception:
            logger.debug("http: no barrier for a parked read", exc_info=True)
            started = False
        if not started:
            self._parked = self._busy = None
            return False
        self.request_started()
        return True

    def _unpark(self, result: BarrierResult) -> None:
        """The barrier answered: route the parked read again, first in line. Passed (the agent
        still the leader, ready), it is answered from the store now; otherwise a default read
        meets the gate again, which sends it down the normal path, and a `?consistent` read
        goes down the normal path."""
        parked, self._parked = self._parked, None
        self._busy = None
        if parked is None:
            return
        msg, payload, start = parked
        self.request_finished()
        self._passed, self._passed_start = msg, start
        self._passed_ok = result is not None and result[0] and result[1]
        self._backlog.appendleft((msg, payload))
        try:
            self._drain()
        finally:
            if self._passed is msg:
                self._passed = None  # not routed here after all (aiohttp holds earlier messages)

    def _write_allowed(self) -> bool:
        if self._may_write is None:
            peer = self.transport.get_extra_info("peername") if self.transport is not None else None
            remote = peer[0] if isinstance(peer, tuple) and peer else None
            self._may_write = self._routes.rules.refusal("PUT", "", remote) is None
        return self._may_write

    async def _put(self, command: commands.KVS, start: float) -> None:
        data = None
        try:
            data = await self._routes.kv_put(command)
        finally:
            self._put_done(start, data)

    def _put_done(self, start: float, data: bytes | None) -> None:
        """A fast write's answer is ready (None: cancelled, nothing to answer): write it, then
        route what waited behind it."""
        try:
            if data is not None:
                self._routes.observe_put(start)
                self._answer(data)
        finally:
            self.request_finished()
            self._busy = None
            self._drain()

    def _answer(self, data: bytes) -> None:
        self._routes.note_answer()  # before the write: a client may read the answer at once
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
        if self._real_parser is not None:  # None once the connection is gone
            self._real_parser.message_consumed()
        # aiohttp's keep-alive timer closes a connection idle for keepalive_timeout; this one is not.
        self._next_keepalive_close_time = self._loop.time() + self._routes.keepalive_timeout_s

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        # aiohttp drops its parser here; drop ours too, or the parser and this handler keep each
        # other alive as a cycle that only a complete collection frees (11 objects per closed
        # connection: bench/gc_store_objects.py, docs/PERFORMANCE.md).
        self._real_parser = None

    def _drain(self) -> None:
        """Route the messages that waited behind a fast write, in order."""
        handed = False
        self._routing = True
        try:
            while self._backlog and self._busy is None and not self._force_close:
                msg, payload = self._backlog.popleft()
                taken = self._slow == 0 and self._try(msg, payload)
                if self._reentered:
                    self._backlog.extend(self._reentered)
                    self._reentered = None
                if taken:
                    continue
                self._slow += 1
                self._request_count += 1
                self._messages.append((msg, payload))
                handed = True
        finally:
            self._routing = False
        if handed:
            self.start_request_task()  # (no-op once started)
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if self._buffer_paused and not self._backlog and len(self._messages) <= self._msg_queue_resume_size:
            self._resume_reading_if_drained()
        self._refeed()

    def _refeed(self) -> None:
        """Parse what the parser held back at its queue limit, once every message it had given
        out is answered (nothing else would make it look at that data again)."""
        if (self._parser_full and not self._routing and self._busy is None and not self._backlog
                and self._slow == 0 and not self._messages and self._parser is not None):
            self._parser_full = False
            self.data_received(b"")

    async def _handle_request(self, request: Any, start_time: Any, request_handler: Any) -> Any:
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            self._slow -= 1
            self._refeed()


class _Intercept:
    """aiohttp's request parser, with the messages the fast path takes removed from its output."""

    __slots__ = ("_parser", "_handler")

    def __init__(self, parser: Any, handler: FastRequestHandler) -> None:
        self._parser = parser
        self._handler = handler

    def feed_data(self, data: bytes) -> Any:
        handler = self._handler
        if handler._between and data:
            # A chunk that is one plain KV PUT, on a connection with nothing else in hand, is
            # routed from its bytes: no parser objects (message, headers, URL, body stream).
            plain = plain_put(data)
            if plain is None:
                handler._between = False  # the parser may now hold part of a request: for good
            elif (handler._busy is None and not handler._backlog and handler._slow == 0
                  and not handler._routing and not handler._parser_full and handler.put_plain(*plain)):
                return _NO_MESSAGES
        try:
            result = self._parser.feed_data(data)
        except Exception:
            handler._slow += 1  # aiohttp answers the parse error itself
            raise
        messages = result[0]
        if not messages:
            return result
        if handler._routing:
            # Re-entered while a message is being routed (reading a body can resume a parser
            # paused at its queue limit, which parses what follows): these messages come after
            # the rest of the batch, so they join its end.
            if handler._reentered is None:
                handler._reentered = list(messages)
            else:
                handler._reentered.extend(messages)
            return [], result[1], result[2]
        kept: list[tuple[Any, Any]] = []
        handler._routing = True
        try:
            while True:
                handler._parser_full = len(messages) >= handler._max_msg_queue_size
                queue = deque(messages)
                while queue:
                    msg, payload = queue.popleft()
                    if not handler.route(msg, payload):
                        kept.append((msg, payload))
                    if handler._reentered:
                        queue.extend(handler._reentered)
                        handler._reentered = None
                # The parser stops after a full queue of unanswered messages and keeps the rest
                # for its next feed; when the fast path answered them all, that feed is now.
                if not handler._parser_full or kept or handler._busy is not None or handler._backlog:
                    break
                result = self._parser.feed_data(b"")
                messages = result[0]
                if not messages:
                    break
        finally:
            handler._routing = False
        return kept, result[1], result[2]

    def message_consumed(self) -> None:
        self._parser.message_consumed()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


def fast_factory(
    server: AiohttpServer, routes: FastRoutes, counter: ConnectionCounter, header_timeout_s: float,
    **handler_kwargs: Any,
) -> Callable[[], FastRequestHandler]:
    """A protocol factory for `loop.create_server`: guarded handlers with the fast path."""
    loop = asyncio.get_running_loop()

    def factory() -> FastRequestHandler:
        return FastRequestHandler(server, counter, header_timeout_s, routes, loop=loop, **handler_kwargs)

    return factory
