"""`?cached`: the HTTP side of the agent cache (`local/cache.py`) for the endpoints Consul caches.

Owns how a request becomes a cache get and how the answer says where it came from: `?cached` is
honoured while `http_config.use_cache` is on (Consul's default) and refused with `?consistent`;
the `Cache-Control` request directives `max-age=<s>`, `must-revalidate` and `stale-if-error=<s>`
(whole seconds; `max-age=0` means must-revalidate; anything else unparsable is a 400); the entry
key (every argument the read sends to the servers, the datacenter and the request's ACL token);
`?index` with `?wait` (default `default_query_time`, at most `max_query_time`) as a blocking get;
and the `X-Cache: HIT|MISS` header on every cached answer, with `Age` (seconds) on hits.
A request without `?cached` goes to the servers exactly as before.

Which endpoints, and of which kind (Consul's "Agent Caching" column): `/v1/health/service/:s`,
`/v1/catalog/services` and `/v1/catalog/service/:s` are background-refresh types; prepared query
execute is a simple type. `?filter` runs on the cached answer in the handler, as without the cache.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from aiohttp import web

from proconsul.http.appkeys import AGENT
from proconsul.http.common import bad_request, flag, token
from proconsul.local.cache import AgentCache, CacheResult, CacheType, Fetch, RequestInfo
from proconsul.rpc_api import QueryMeta, QueryOptions

_RESULT = "agent_cache_result"  # request key: the CacheResult this request was answered with


def requested(request: web.Request) -> bool:
    """Does this request ask for the agent cache (and may it)?"""
    if "cached" not in request.query or request.app[AGENT].cache is None:
        return False  # http_config.use_cache = false: the agent has no cache, ?cached is ignored
    if flag(request, "consistent"):
        raise bad_request("Cannot specify ?cached with ?consistent, conflicting semantics.")
    return True


@dataclasses.dataclass(frozen=True, slots=True)
class CacheControl:
    max_age_s: float | None = None
    must_revalidate: bool = False
    stale_if_error_s: float | None = None


def cache_control(header: str) -> CacheControl:
    """The request directives Consul reads from `Cache-Control`; others are ignored."""
    max_age: float | None = None
    must_revalidate = False
    stale_if_error: float | None = None
    for raw in header.lower().split(","):
        directive = raw.strip()
        if directive == "must-revalidate":
            must_revalidate = True
        elif directive.startswith("max-age="):
            seconds = _seconds(directive[len("max-age="):])
            # Consul: 0 is must-revalidate, a negative age is no bound at all.
            max_age = seconds if seconds > 0 else None
            must_revalidate = must_revalidate or seconds == 0
        elif directive.startswith("stale-if-error="):
            stale_if_error = _seconds(directive[len("stale-if-error="):])
    return CacheControl(max_age, must_revalidate, stale_if_error)


def _seconds(text: str) -> float:
    # Consul parses a decimal int64 (strconv.Atoi): a sign is allowed, nothing else, no overflow.
    body = text[1:] if text[:1] in ("+", "-") else text
    if not body.isascii() or not body.isdigit() or len(body.lstrip("0")) > 19:
        raise bad_request("Invalid Cache-Control header.")
    value = int(text, 10)
    if not -(2**63) <= value < 2**63:
        raise bad_request("Invalid Cache-Control header.")
    return float(value)


def _cache(request: web.Request) -> AgentCache:
    cache: AgentCache | None = request.app[AGENT].cache
    assert cache is not None, "requested() said the agent has a cache"
    return cache


async def get(request: web.Request, ctype: CacheType, key: Any, fetch: Fetch, opts: QueryOptions) -> tuple[QueryMeta, Any]:
    """Answer from the agent cache: `key` (JSON-able) names what `fetch` reads; `opts` are the
    request's query options (its index, wait and datacenter)."""
    config = request.app[AGENT].config
    control = cache_control(request.headers.get("Cache-Control", ""))
    wait = opts.max_wait_s or config.default_query_time_s
    if config.max_query_time_s > 0:
        wait = min(wait, config.max_query_time_s)
    info = RequestInfo(
        key=json.dumps(key, sort_keys=True, separators=(",", ":"), default=str),
        token=token(request),
        datacenter=opts.datacenter,
        min_index=opts.min_index,
        timeout_s=wait,
        max_age_s=control.max_age_s,
        must_revalidate=control.must_revalidate,
        stale_if_error_s=control.stale_if_error_s,
    )
    result = await _cache(request).get(ctype, info, fetch)
    request[_RESULT] = result
    return result.meta, result.value


def stale_options(opts: QueryOptions, min_index: int = 0, wait_s: float = 0.0) -> QueryOptions:
    """A cache fetch's options: always a stale read (the answer is served from a cache anyway,
    and any server can give it), blocking as the cache asks, in the request's datacenter."""
    return QueryOptions(min_index=min_index, max_wait_s=wait_s, allow_stale=True, datacenter=opts.datacenter)


async def query(request: web.Request, ctype: CacheType, name: str, args: dict[str, Any],
                opts: QueryOptions) -> tuple[QueryMeta, Any]:
    """The named read `name(args)`: through the agent cache with `?cached`, else to the servers."""
    server = request.app[AGENT].server
    if not requested(request):
        meta, result = await server.query(name, args, opts)
        return meta, result

    async def fetch(min_index: int, wait_s: float) -> tuple[QueryMeta, Any]:
        meta, result = await server.query(name, args, stale_options(opts, min_index, wait_s))
        return meta, result

    return await get(request, ctype, [name, args], fetch, opts)


def mark(request: web.Request, response: web.Response) -> web.Response:
    """Add `X-Cache` (and `Age` on a hit) when the request was answered through the cache."""
    result: CacheResult | None = request.get(_RESULT)
    if result is not None:
        response.headers["X-Cache"] = "HIT" if result.hit else "MISS"
        if result.hit:
            response.headers["Age"] = f"{result.age_s:.0f}"
    return response
