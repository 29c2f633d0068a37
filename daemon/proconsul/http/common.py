"""Request parsing and response building shared by every /v1 route module.

Owns Consul's cross-cutting HTTP conventions: presence-style boolean parameters, `?index` and
`?wait` for blocking, `?stale`/`?consistent`/`?max_stale` (and `discovery_max_stale`), `?dc`, `?filter`, tokens from the three places
Consul reads them, JSON bodies decoded with one-line 400 reasons, and responses that carry
`X-Consul-Index`, `X-Consul-KnownLeader`, `X-Consul-LastContact` and the effective consistency.
The mapping from errors to status codes lives in `http.server`, in one place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web

from proconsul import safe_json
from proconsul.durations import parse_duration
from proconsul.filter import FilterError, apply_filter
from proconsul.http.appkeys import AGENT
from proconsul.rpc_api import QueryMeta, QueryOptions
from proconsul.structs import canonical_key

try:  # orjson is much faster; stdlib json is the fallback and the pretty printer
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - orjson is a declared dependency

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


class HTTPError(Exception):
    """Answer with `status` and a plain-text one-line `message`, as Consul does."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> HTTPError:
    return HTTPError(400, message)


def flag(request: web.Request, name: str) -> bool:
    """Presence-style boolean: `?recurse`, `?recurse=1`, `?recurse=true` are true.

    An explicit `false`/`0` is false, as newer Consul versions parse it.
    """
    if name not in request.query:
        return False
    value = request.query.get(name, "")
    return value.lower() not in ("false", "0")


MAX_UINT64 = 2**64 - 1


def uint_param(request: web.Request, name: str, default: int = 0, message: str | None = None) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text, 10)
        # Consul's indexes, flags and counts are uint64; a larger number is as invalid as "x".
        if value < 0 or value > MAX_UINT64:
            raise ValueError
        return value
    except ValueError:
        raise bad_request(message or f"Invalid {name}: {text!r} is not a non-negative integer") from None


_DEFAULT_OPTIONS = QueryOptions()


def _discovery_default(request: web.Request, opts: QueryOptions) -> QueryOptions:
    """Consul's `discovery_max_stale`: catalog and health reads that name no consistency mode
    are stale reads bounded by it."""
    if request.path.startswith(("/v1/catalog", "/v1/health")):
        agent = request.app.get(AGENT)
        bound = agent.config.discovery_max_stale_s if agent is not None else 0.0
        if bound > 0:
            return dataclasses.replace(opts, allow_stale=True, max_stale_s=bound)
    return opts


def query_options(request: web.Request) -> QueryOptions:
    """Parse ?index, ?wait, ?stale, ?consistent, ?max_stale and ?dc (forwarded over the WAN) for a read endpoint."""
    if not request.query_string:
        return _discovery_default(request, _DEFAULT_OPTIONS)  # the common case, kept off the parsing path
    stale = flag(request, "stale")
    consistent = flag(request, "consistent")
    max_stale_s = 0.0
    raw_max_stale = request.query.get("max_stale", "")
    if raw_max_stale:
        try:
            max_stale_s = parse_duration(raw_max_stale)
        except ValueError:
            raise bad_request(f'Invalid max_stale value "{raw_max_stale}"') from None
        stale = stale or max_stale_s > 0  # a positive bound asks for a (bounded) stale read
    if stale and consistent:
        raise bad_request("Cannot specify ?stale with ?consistent, conflicting semantics.")
    wait_s = 0.0
    wait = request.query.get("wait")
    if wait:
        try:
            wait_s = parse_duration(wait)
        except ValueError:
            raise bad_request("Invalid wait time") from None
        if wait_s < 0:
            raise bad_request("Invalid wait time")
    index = uint_param(request, "index", message="Invalid index")
    opts = QueryOptions(min_index=index, max_wait_s=wait_s, allow_stale=stale, require_consistent=consistent,
                        datacenter=target_dc(request), max_stale_s=max(max_stale_s, 0.0))
    if not stale and not consistent and "leader" not in request.query:
        opts = _discovery_default(request, opts)
    return opts


def check_dc(request: web.Request) -> None:
    """For endpoints answered by this agent only: another ?dc is "No path to datacenter"."""
    dc = request.query.get("dc")
    if dc:
        request.app[AGENT].server_for_dc(dc)


def target_dc(request: web.Request) -> str:
    """The ?dc a forwardable request goes to ("" = ours); the RPC layer routes it (or answers
    "No path to datacenter" for one no server knows)."""
    dc = request.query.get("dc", "")
    return "" if dc == request.app[AGENT].config.datacenter else dc


def token(request: web.Request) -> str:
    """The request's ACL token: ?token, then X-Consul-Token, then `Authorization: Bearer`."""
    if request.query.get("token"):
        return request.query["token"]
    header = request.headers.get("X-Consul-Token")
    if header:
        return header
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return ""


def pretty(request: web.Request) -> bool:
    return "pretty" in request.query


def encode_json(request: web.Request, obj: Any) -> bytes:
    if pretty(request):
        # Consul pretty-prints with a four-space indent and a trailing newline.
        return json.dumps(obj, indent=4).encode() + b"\n"
    return _dumps(obj)


def meta_headers(meta: QueryMeta) -> dict[str, str]:
    headers = {
        "X-Consul-Index": str(meta.index),
        "X-Consul-KnownLeader": "true" if meta.known_leader else "false",
        "X-Consul-LastContact": str(meta.last_contact_ms),
        "X-Consul-Effective-Consistency": meta.consistency,
    }
    if meta.results_filtered:
        # The server that answered left out what the token may not read (ACLs over RPC).
        headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
    return headers


def json_response(
    request: web.Request, obj: Any, meta: QueryMeta | None = None, status: int = 200, index: int | None = None
) -> web.Response:
    if meta is not None:
        headers = meta_headers(meta)
    elif index is not None:
        headers = {"X-Consul-Index": str(max(index, 1))}
    else:
        headers = {}
    headers["Content-Type"] = "application/json"
    if meta is not None and "index" in request.query and not pretty(request) and isinstance(obj, (list, dict)):
        body = _encode_shared(obj)
    else:
        body = encode_json(request, obj) if request.query_string else _dumps(obj)
    return web.Response(body=body, status=status, headers=headers)


# Identical parked blocking queries are answered with one shared object (server/rpc.py's
# _Parked); the answers of the last few are kept by identity with their encoding and any fact a
# route derives from them (`shared_fact`), so a thousand watchers of one service cost one
# encoding and one scan. An entry holds its object, so its id cannot be reused meanwhile;
# answers are never changed once returned.
class _Shared:
    __slots__ = ("obj", "body", "facts")

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.body: bytes | None = None
        self.facts: dict[str, Any] = {}


_SHARED_ANSWERS: OrderedDict[int, _Shared] = OrderedDict()
_SHARED_ANSWERS_MAX = 16


def _shared(obj: Any) -> _Shared:
    entry = _SHARED_ANSWERS.get(id(obj))
    if entry is None or entry.obj is not obj:
        entry = _SHARED_ANSWERS[id(obj)] = _Shared(obj)
        if len(_SHARED_ANSWERS) > _SHARED_ANSWERS_MAX:
            _SHARED_ANSWERS.popitem(last=False)
    return entry


def _encode_shared(obj: Any) -> bytes:
    entry = _shared(obj)
    if entry.body is None:
        entry.body = _dumps(obj)
    return entry.body


def shared_fact(request: web.Request, obj: Any, name: str, compute: Callable[[Any], Any]) -> Any:
    """`compute(obj)`, a pure function of an answer, computed once per shared answer: a blocking
    read's answer may be the one object handed to every identical parked watcher, so the result
    is kept beside its encoding under `name`. Other reads' answers are their own; computed."""
    if "index" not in request.query or not isinstance(obj, (list, dict)):
        return compute(obj)
    facts = _shared(obj).facts
    if name not in facts:
        facts[name] = compute(obj)
    return facts[name]


def shared_fact_of(obj: Any, name: str, compute: Callable[[Any], Any]) -> Any:
    """`shared_fact` for an answer known to be a blocking read's (the fast path's, which has
    no `Request`)."""
    if not isinstance(obj, (list, dict)):
        return compute(obj)
    facts = _shared(obj).facts
    if name not in facts:
        facts[name] = compute(obj)
    return facts[name]


_RESPONSES_PER_ANSWER = 8


def shared_response(obj: Any, key: Any, build: Callable[[], bytes]) -> bytes:
    """A whole HTTP response to a blocking read answered with `obj`, built once per `key` (what
    else it depends on: the route's kind, the query meta, the Date second) and kept with the
    shared answer, so every watcher woken with one answer is written the same bytes
    (http/fast_blocking.py). `None` answers (a missing key) are not shared: built each time."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return build()
    responses = _shared(obj).facts.setdefault("responses", {})
    data: bytes | None = responses.get(key)
    if data is None:
        if len(responses) >= _RESPONSES_PER_ANSWER:
            responses.clear()  # an answer kept across many seconds: old Dates are no use
        data = responses[key] = build()
    return data


def set_meta(resp: web.StreamResponse, meta: QueryMeta) -> None:
    resp.headers.update(meta_headers(meta))


# A request body must arrive within this long of the handler asking for it. Without a bound a
# client that declares a body and trickles (or never sends) it holds a connection and a task
# for ever, the body-side twin of a slow request head (http/conn_guard.py).
BODY_READ_TIMEOUT_S = 60.0


async def read_body(request: web.Request, limit: int, too_large: str | None = None) -> bytes:
    """The whole request body, or a 413 once it passes `limit` bytes, or a 408 when it does not
    arrive within BODY_READ_TIMEOUT_S.

    `StreamReader.read(n)` returns whatever has arrived so far, so a single read of a body sent in
    several TCP segments (or chunks) would silently keep only its first part; this loops to EOF.
    """
    chunks: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT_S):
            while True:
                chunk = await request.content.read(65536)
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    raise HTTPError(413, too_large or f"Request body too large, max size: {limit} bytes.")
                chunks.append(chunk)
    except TimeoutError:
        raise HTTPError(408, "Request body not received in time") from None
    return b"".join(chunks)


# JSON bodies (registrations, sessions, ...) are bounded by this; KV and txn have their own limits.
MAX_JSON_BODY = 4 * 1024 * 1024


async def read_json(request: web.Request, *, allow_empty: bool = False) -> Any:
    """Decode the JSON body; malformed JSON is a 400 with a one-line reason."""
    body = await read_body(request, MAX_JSON_BODY)
    if not body.strip():
        if allow_empty:
            return None
        raise bad_request("Request decode failed: empty request body")
    return decode_json(body)


def decode_json(body: bytes) -> Any:
    """Decode a JSON body through `safe_json` (nesting bounded, every string valid UTF-8), so
    nothing undecodable reaches local state, the data dir or the catalog; any failure is a 400."""
    try:
        return safe_json.loads(body)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and UnsafeJSON alike
        raise bad_request(f"Request decode failed: {exc}") from None


def get_key(obj: dict[str, Any], *names: str) -> Any:
    """Look up a field case-insensitively (Go's JSON decoder matches names that way)."""
    wanted = {canonical_key(n) for n in names}
    for k, v in obj.items():
        if canonical_key(str(k)) in wanted:
            return v
    return None


def filter_items(request: web.Request, items: Any, schema: Any) -> Any:
    """Apply `?filter=` (go-bexpr) to a list of JSON objects or to a map's values."""
    expr = request.query.get("filter")
    if not expr:
        return items
    try:
        return apply_filter(expr, items, schema)
    except FilterError as exc:
        raise bad_request(str(exc)) from None
