"""`/v1/kv/<key>`: Consul's KV API (GET with recurse/keys/raw, PUT with cas/flags/locks, DELETE).

Owns the translation between KV HTTP requests and `KVS` FSM commands or store reads, including
Consul's quirks: a miss is 404 with an index, `?keys` with a separator collapses sub-folders,
`?raw` returns the bare bytes, values over `limits.kv_max_value_size` get 413.
"""

from __future__ import annotations

import base64

from aiohttp import web

from proconsul.http.appkeys import AGENT
from proconsul.http.common import (
    HTTPError,
    bad_request,
    flag,
    json_response,
    meta_headers,
    query_options,
    read_body,
    set_meta,
    target_dc,
    uint_param,
)
from proconsul.rpc_api import QueryMeta, QueryOptions, ServerAccess
from proconsul.state import commands
from proconsul.state.records import DirEntry

MAX_UINT64 = (1 << 64) - 1


def _key(request: web.Request) -> str:
    key = request.match_info.get("key", "")
    return key


async def kv_get(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    key = _key(request)
    opts = query_options(request)
    server = agent.server
    if request.query_string and flag(request, "keys"):
        args = {"prefix": key, "separator": request.query.get("separator", "")}
        meta, keys = await server.query("KVS.ListKeys", args, opts)
        if not keys:
            return _not_found(meta)
        return json_response(request, keys, meta)
    if request.query_string and flag(request, "recurse"):
        meta, entries = await server.query("KVS.List", {"prefix": key}, opts)
        if not entries:
            return _not_found(meta)
        return json_response(request, entries, meta)
    meta, entry = await server.query("KVS.Get", {"key": key}, opts)
    if entry is None:
        return _not_found(meta)
    if request.query_string and flag(request, "raw"):
        # Consul stopped sniffing the content type (CVE-2020-25864): raw values are text/plain.
        value = base64.b64decode(entry["Value"]) if entry["Value"] is not None else b""
        resp = web.Response(body=value, content_type="text/plain")
        set_meta(resp, meta)
        return resp
    return json_response(request, [entry], meta)


def _not_found(meta: QueryMeta) -> web.Response:
    return web.Response(status=404, headers=meta_headers(meta))


async def kv_put(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    dc = target_dc(request)
    key = _key(request)
    if not key:
        raise bad_request("Missing key name")
    if request.query.get("recurse") is not None and "recurse" in request.query:
        raise bad_request("Cannot set recurse with PUT")
    limit = agent.config.limits.kv_max_value_size
    if request.content_length is not None and request.content_length > limit:
        raise HTTPError(
            413, f"Request body(+{request.content_length} bytes) too large, max size: {limit} bytes. See "
            "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
        )
    value = await read_body(request, limit)
    flags = uint_param(request, "flags", message="Invalid flags")
    if flags > MAX_UINT64:
        raise bad_request("Invalid flags")
    op = commands.KVOp.SET
    session = ""
    cas_index = 0
    if "cas" in request.query:
        cas_index = uint_param(request, "cas", message="Invalid cas")
        op = commands.KVOp.CAS
    if "acquire" in request.query:
        session = request.query["acquire"]
        op = commands.KVOp.LOCK
    if "release" in request.query:
        session = request.query["release"]
        op = commands.KVOp.UNLOCK
    checked_at = 0
    if op == commands.KVOp.LOCK and not dc:
        delayed, checked_at = await _lock_delay_active(agent.server, key)
        if delayed:
            # Consul refuses (false) an acquire during the lock-delay of an invalidated holder.
            return json_response(request, False, index=checked_at)
    entry = DirEntry(key=key, value=value, flags=flags, session=session, modify_index=cas_index)
    meta, ok = await agent.server.write(commands.KVS(op, entry, checked_at), datacenter=dc)
    return json_response(request, bool(ok), index=meta.index)


async def _lock_delay_active(server: ServerAccess, key: str) -> tuple[bool, int]:
    """(in the lock-delay?, index), as the leader sees it.

    Consul's leader checks the delay in its KVS endpoint. A follower's own store may not have
    applied the invalidation yet (the chaos suite caught an acquire through a follower taking a
    lock the moment its holder's node was deregistered), so the question is a default-mode read,
    which a follower forwards to the leader and a client agent to a server.
    """
    meta, active = await server.query("KVS.LockDelay", {"key": key}, QueryOptions())
    return bool(active), meta.index


async def kv_delete(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    dc = target_dc(request)
    key = _key(request)
    op = commands.KVOp.DELETE
    cas_index = 0
    if flag(request, "recurse"):
        op = commands.KVOp.DELETE_TREE
    elif not key:
        raise bad_request("Missing key name")
    if "cas" in request.query:
        if op == commands.KVOp.DELETE_TREE:
            raise bad_request("Conflicting flags: cas=true, recurse=true")
        cas_index = uint_param(request, "cas", message="Invalid cas")
        op = commands.KVOp.DELETE_CAS
    meta, ok = await agent.server.write(commands.KVS(op, DirEntry(key=key, modify_index=cas_index)), datacenter=dc)
    return json_response(request, bool(ok), index=meta.index)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/kv/{key:.*}", kv_get),
        web.put("/v1/kv/{key:.*}", kv_put),
        web.delete("/v1/kv/{key:.*}", kv_delete),
    ]
