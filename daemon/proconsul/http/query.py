"""`/v1/query/...`: prepared queries (create, list, read, update, delete, execute, explain).

Owns decoding query definitions (`state.prepared_query.normalize`: Consul's checks; a body that
does not decode is a 400, a refused definition a 500 "Invalid prepared query: <reason>", as
Consul's PreparedQuery.Apply answers), the writes (`PreparedQueryOp` through Raft, forwarded
with `?dc=`), the reads (named reads, `?dc=`, `?stale`/`?consistent`), and the execute and explain
answers in Consul's JSON shape (`PreparedQueryExecuteResponse`: Service, Nodes, DNS, Datacenter,
PeerName, Failovers and the embedded QueryMeta fields). Execution itself, with failover, is
`server.prepared_query.execute`. `?near=` and `?limit=` on execute; the client's address for
`_ip` is the first `X-Forwarded-For` entry, else the peer's address, as Consul. Execute answers
`?cached` from the agent cache (a simple type, http/cached.py).

ACLs (`http/query_acl.py`): `query` write on the name for changes, `query` read for reads (with
tokens redacted unless `acl:write`), execution results filtered by the query's token or the
caller's. DNS executions are guarded by the DNS token's read on every node and service
(dns/acl.py).
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from aiohttp import web

from proconsul.acl.records import ANONYMOUS_ACCESSOR
from proconsul.http import cached, query_acl
from proconsul.http.acl_gate import FILTERED_HEADER, acl_enabled, authorizer
from proconsul.http.appkeys import AGENT
from proconsul.http.common import (
    HTTPError,
    bad_request,
    flag,
    json_response,
    query_options,
    read_json,
    target_dc,
    uint_param,
)
from proconsul.local.cache import PREPARED_QUERY
from proconsul.rpc_api import QueryMeta, QueryOptions
from proconsul.server import prepared_query as executor
from proconsul.state import commands
from proconsul.state import prepared_query as pq
from proconsul.state.records import PreparedQuery

_rng = random.Random()

NOT_FOUND = "Query not found"


async def _stored(request: web.Request) -> dict[str, Any] | None:
    """The query named by the path's ID as stored (for the permission checks of a change)."""
    _, items = await request.app[AGENT].server.query("PreparedQuery.Get", {"id": request.match_info["id"]},
                                                     QueryOptions(allow_stale=False))
    return items[0] if items else None


def _only_visible(request: web.Request, query: dict[str, Any]) -> dict[str, Any]:
    """`query` as this token may see it (redacted), or Consul's bare "Permission denied"."""
    kept, _ = query_acl.readable(request, [query])
    if not kept:
        raise HTTPError(403, "Permission denied")
    return kept[0]


def _meta_fields(meta: QueryMeta) -> dict[str, Any]:
    """Consul's QueryMeta, embedded without JSON tags in execute and explain answers."""
    return {
        "Index": meta.index,
        "LastContact": meta.last_contact_ms * 1_000_000,  # a Go time.Duration: nanoseconds
        "KnownLeader": meta.known_leader,
        "ConsistencyLevel": meta.consistency,
        "NotModified": False,
        "Backend": 0,
        "ResultsFilteredByACLs": False,
    }


async def _definition(request: web.Request) -> dict[str, Any]:
    body = await read_json(request)
    try:
        return pq.normalize(body)
    except pq.QueryError as exc:
        message = str(exc)
        if message.startswith("Request decode failed"):
            raise bad_request(message) from None  # Consul's HTTP layer decodes the body: a 400
        # The rest Consul checks inside its PreparedQuery.Apply RPC ("Invalid prepared query: ..."),
        # whose errors its HTTP layer answers with a 500.
        if not message.startswith("Invalid prepared query"):
            message = f"Invalid prepared query: {message}"
        raise HTTPError(500, message) from None


def _record(query_id: str, definition: dict[str, Any]) -> PreparedQuery:
    return PreparedQuery(query_id, definition["Name"], definition["Session"], definition)


async def create(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    definition = await _definition(request)
    query_acl.require_write(request, definition)
    query_id = str(uuid.uuid4())
    op = commands.PreparedQueryOp("create", _record(query_id, definition))
    await agent.server.write(op, datacenter=target_dc(request))
    return json_response(request, {"ID": query_id})


async def list_queries(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    meta, items = await agent.server.query("PreparedQuery.List", {}, query_options(request))
    items, removed = query_acl.readable(request, list(items))
    resp = json_response(request, items, meta)
    if removed and authorizer(request).accessor != ANONYMOUS_ACCESSOR:
        resp.headers[FILTERED_HEADER] = "true"
    return resp


async def get_query(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    meta, items = await agent.server.query("PreparedQuery.Get", {"id": request.match_info["id"]},
                                           query_options(request))
    if items is None:
        raise HTTPError(404, NOT_FOUND)
    if not items:
        raise HTTPError(403, "Permission denied")  # a server left out what the token may not see
    return json_response(request, [_only_visible(request, items[0])], meta)


async def update(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    definition = await _definition(request)
    query_acl.require_write(request, definition)
    if acl_enabled(request) and (stored := await _stored(request)) is not None:
        query_acl.require_write(request, stored)  # a missing one: the write answers as Consul's
    op = commands.PreparedQueryOp("update", _record(request.match_info["id"], definition))
    await agent.server.write(op, datacenter=target_dc(request))
    return web.Response(status=200)


async def delete(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    if acl_enabled(request) and (stored := await _stored(request)) is not None:
        query_acl.require_write(request, stored)
    op = commands.PreparedQueryOp("delete", PreparedQuery(request.match_info["id"]))
    await agent.server.write(op, datacenter=target_dc(request))
    return web.Response(status=200)


def source_ip(request: web.Request) -> str:
    """The client's address for `near=_ip`: X-Forwarded-For's first entry wins, as Consul."""
    forwarded = request.headers.get("X-Forwarded-For", "")
    if forwarded:
        return forwarded.split(",")[0].strip()
    return request.remote or ""


async def execute(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    limit = uint_param(request, "limit", message="Invalid limit")
    opts = query_options(request)
    args = (request.match_info["id"], source_ip(request), request.query.get("near", ""), limit,
            flag(request, "connect"))

    # Kept by a cache entry for its refetches, so it holds the request's values, not the request.
    async def run(opts: QueryOptions) -> executor.Execution:
        id_or_name, ip, near, limit, connect = args
        return await executor.execute(
            agent.server, id_or_name, opts, agent.config.datacenter, _rng, agent_node=agent.node_name,
            source_ip=ip, near=near, limit=limit, connect=connect,
        )

    async def fetch(min_index: int, wait_s: float) -> tuple[QueryMeta, executor.Execution]:
        found = await run(cached.stale_options(opts))  # a simple cache type: never blocking
        return found.meta, found

    try:
        if cached.requested(request):
            _, execution = await cached.get(request, PREPARED_QUERY, args, fetch, opts)
        else:
            execution = await run(opts)
    except executor.QueryNotFound:
        raise HTTPError(404, NOT_FOUND) from None
    query = execution.query
    nodes = executor.check_service_nodes(execution)
    filtered = execution.meta.results_filtered
    exec_authz = await query_acl.execution_authorizer(request, query)
    if exec_authz is not None:
        nodes, dropped = query_acl.visible_nodes(exec_authz, nodes)
        filtered = filtered or dropped
    body = {
        "Service": query["Service"]["Service"],
        "Nodes": nodes,
        "DNS": dict(query["DNS"]),
        "Datacenter": execution.datacenter,
        "PeerName": "",
        "Failovers": execution.failovers,
        **_meta_fields(execution.meta),
        "ResultsFilteredByACLs": filtered,
    }
    resp = json_response(request, body, execution.meta)
    if filtered:
        resp.headers[FILTERED_HEADER] = "true"
    return cached.mark(request, resp)


async def explain(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    meta, query = await agent.server.query("PreparedQuery.Explain", {"name": request.match_info["id"]},
                                           query_options(request))
    if query is None:
        raise HTTPError(404, NOT_FOUND)
    if not query:
        raise HTTPError(403, "Permission denied")  # a server left out what the token may not see
    return json_response(request, {"Query": _only_visible(request, query), **_meta_fields(meta)}, meta)


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/query", create),
        web.get("/v1/query", list_queries),
        web.get("/v1/query/{id}", get_query),
        web.put("/v1/query/{id}", update),
        web.delete("/v1/query/{id}", delete),
        web.get("/v1/query/{id}/execute", execute),
        web.get("/v1/query/{id}/explain", explain),
    ]
