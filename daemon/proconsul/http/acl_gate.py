"""ACL enforcement on the HTTP API: which permission each /v1 route needs, and list filtering.

Owns, while `acl.enabled` is on: resolving the request's token (`X-Consul-Token`, `Authorization:
Bearer`, `?token=`; none means the agent's default token, then anonymous) to an Authorizer; the
route table that says what each endpoint requires before its handler runs; filtering list answers
down to what the token may read (setting `X-Consul-Results-Filtered-By-ACLs: true`, except for
anonymous requests, as Consul); and failing
closed: a route not in the table needs a management token.

A blocking query (`?index=`) is checked again when it answers (`recheck`, Consul re-authorises
on every wake): a token deleted while the request waited is "ACL not found", one whose policy
changed gets its new rights. A server resolves from its own store each time; a client agent
caches for `acl.token_ttl`, as Consul's do.

The filter predicates are server/acl_reads.py's, which a server applies to the reads that reach
it over RPC; an answer a server already filtered passes here unchanged.

Routes marked `HANDLER` check inside their handler (their permission depends on the body: catalog
register, agent service and check registration, session create, txn); they read the Authorizer
with `authorizer(request)`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proconsul.acl.authorizer import Authorizer, PermissionDenied, allow_all
from proconsul.acl.records import ANONYMOUS_ACCESSOR
from proconsul.acl.rules import READ, WRITE
from proconsul.http.appkeys import ACL_RESOLVER, AGENT
from proconsul.http.common import HTTPError, encode_json, flag, token
from proconsul.rpc_api import CALLER_TOKEN, QueryOptions
from proconsul.server import acl_reads
from proconsul.server.acl_resolver import ACLNotFound

FILTERED_HEADER = "X-Consul-Results-Filtered-By-ACLs"

# The predicates a server filters its RPC answers with (server/acl_reads.py).
_node_read = acl_reads.node_read
_check_read = acl_reads.check_read
_service_entry_read = acl_reads.service_entry_read
_health_entry_read = acl_reads.health_entry_read

Check = Callable[[web.Request, Authorizer], Awaitable[None]]


def authorizer(request: web.Request) -> Authorizer:
    """The request's Authorizer; everything is allowed when ACLs are off."""
    authz = request.get("authz")
    return authz if authz is not None else allow_all()


def acl_enabled(request: web.Request) -> bool:
    return request.app.get(ACL_RESOLVER) is not None


# ------------------------------------------------------------------------------ pre-checks


async def _none(request: web.Request, authz: Authorizer) -> None:
    """No permission needed (status, datacenters, version), or the answer is filtered."""


async def HANDLER(request: web.Request, authz: Authorizer) -> None:  # noqa: N802 - a marker
    """The handler checks (the permission depends on the body)."""


def _own_node(request: web.Request) -> str:
    return str(request.app[AGENT].node_name)


def _agent(access: str) -> Check:
    async def check(request: web.Request, authz: Authorizer) -> None:
        authz.require("agent", _own_node(request), access)

    return check


def _single(resource: str, access: str) -> Check:
    async def check(request: web.Request, authz: Authorizer) -> None:
        authz.require_single(resource, access)

    return check


async def _own_node_write(request: web.Request, authz: Authorizer) -> None:
    authz.require("node", _own_node(request), WRITE)


async def _kv_get(request: web.Request, authz: Authorizer) -> None:
    key = request.match_info.get("key", "")
    if request.query_string and (flag(request, "recurse") or flag(request, "keys")):
        if request.app[AGENT].config.acl.enable_key_list_policy:
            authz.require("key", key, "list")
        return  # entries are filtered by key:read
    authz.require("key", key, READ)


async def _kv_put(request: web.Request, authz: Authorizer) -> None:
    authz.require("key", request.match_info.get("key", ""), WRITE)


async def _kv_delete(request: web.Request, authz: Authorizer) -> None:
    key = request.match_info.get("key", "")
    if flag(request, "recurse"):
        if not authz.key_write_prefix(key):
            raise PermissionDenied(authz.accessor, "key", WRITE, key)
        return
    authz.require("key", key, WRITE)


def _local_service_name(request: web.Request, sid: str) -> str | None:
    local = request.app[AGENT].local
    if sid not in local.services:
        return None
    return str(local.service_record(sid).service)


def _local_service(access: str) -> Check:
    async def check(request: web.Request, authz: Authorizer) -> None:
        name = _local_service_name(request, request.match_info.get("id", ""))
        if name is not None:  # an unknown ID is the handler's 404
            authz.require("service", name, access)

    return check


async def _local_check_write(request: web.Request, authz: Authorizer) -> None:
    check = request.app[AGENT].local.checks.get(request.match_info.get("id", ""))
    if check is None:
        return  # the handler's 404
    sid = check.definition.service_id
    if sid:
        name = _local_service_name(request, sid)
        authz.require("service", name or "", WRITE)
    else:
        authz.require("node", _own_node(request), WRITE)


async def _service_name_read(request: web.Request, authz: Authorizer) -> None:
    authz.require("service", request.match_info.get("name", ""), READ)


async def _event_fire(request: web.Request, authz: Authorizer) -> None:
    authz.require("event", request.match_info.get("name", ""), WRITE)


async def _session_write(request: web.Request, authz: Authorizer) -> None:
    sid = request.match_info.get("id", "")
    _, found = await request.app[AGENT].server.query("Session.Get", {"id": sid}, QueryOptions(allow_stale=True))
    if found:
        authz.require("session", found[0].get("Node", ""), WRITE)


async def _acl_own(request: web.Request, authz: Authorizer) -> None:
    """The /v1/acl handlers check acl:read / acl:write themselves (bootstrap needs no token)."""


PRE: dict[tuple[str, str], Check] = {
    ("GET", "/v1/kv/{key}"): _kv_get,
    ("PUT", "/v1/kv/{key}"): _kv_put,
    ("DELETE", "/v1/kv/{key}"): _kv_delete,
    ("PUT", "/v1/txn"): HANDLER,
    ("PUT", "/v1/catalog/register"): HANDLER,
    ("PUT", "/v1/catalog/deregister"): HANDLER,
    ("GET", "/v1/catalog/datacenters"): _none,
    ("GET", "/v1/catalog/nodes"): _none,
    ("GET", "/v1/catalog/services"): _none,
    ("GET", "/v1/catalog/service/{service}"): _none,
    ("GET", "/v1/catalog/node/{node}"): _none,
    ("GET", "/v1/catalog/node-services/{node}"): _none,
    ("GET", "/v1/health/node/{node}"): _none,
    ("GET", "/v1/health/checks/{service}"): _none,
    ("GET", "/v1/health/state/{state}"): _none,
    ("GET", "/v1/health/service/{service}"): _none,
    ("GET", "/v1/agent/self"): _agent(READ),
    ("GET", "/v1/agent/members"): _none,
    ("GET", "/v1/agent/version"): _none,
    ("GET", "/v1/agent/services"): _none,
    ("GET", "/v1/agent/service/{id}"): _local_service(READ),
    ("GET", "/v1/agent/checks"): _none,
    ("PUT", "/v1/agent/service/register"): HANDLER,
    ("PUT", "/v1/agent/service/deregister/{id}"): _local_service(WRITE),
    ("PUT", "/v1/agent/service/maintenance/{id}"): _local_service(WRITE),
    ("PUT", "/v1/agent/check/register"): HANDLER,
    ("PUT", "/v1/agent/check/deregister/{id}"): _local_check_write,
    ("PUT", "/v1/agent/check/pass/{id}"): _local_check_write,
    ("PUT", "/v1/agent/check/warn/{id}"): _local_check_write,
    ("PUT", "/v1/agent/check/fail/{id}"): _local_check_write,
    ("PUT", "/v1/agent/check/update/{id}"): _local_check_write,
    ("PUT", "/v1/agent/maintenance"): _own_node_write,
    ("GET", "/v1/agent/health/service/id/{id}"): _local_service(READ),
    ("GET", "/v1/agent/health/service/name/{name}"): _service_name_read,
    ("PUT", "/v1/agent/token/{kind}"): _agent(WRITE),
    ("PUT", "/v1/agent/reload"): _agent(WRITE),
    ("PUT", "/v1/agent/leave"): _agent(WRITE),
    ("PUT", "/v1/agent/join/{address}"): _agent(WRITE),
    ("PUT", "/v1/agent/force-leave/{node}"): _single("operator", WRITE),
    ("GET", "/v1/agent/metrics"): _agent(READ),
    ("GET", "/v1/agent/metrics/stream"): _agent(READ),
    ("GET", "/v1/coordinate/datacenters"): _none,
    ("GET", "/v1/coordinate/nodes"): _none,
    ("GET", "/v1/coordinate/node/{node}"): _none,
    ("PUT", "/v1/event/fire/{name}"): _event_fire,
    ("PUT", "/v1/event/fire/"): _event_fire,
    ("GET", "/v1/event/list"): _none,
    ("GET", "/v1/operator/keyring"): _single("keyring", READ),
    ("POST", "/v1/operator/keyring"): _single("keyring", WRITE),
    ("PUT", "/v1/operator/keyring"): _single("keyring", WRITE),
    ("DELETE", "/v1/operator/keyring"): _single("keyring", WRITE),
    ("GET", "/v1/operator/raft/configuration"): _single("operator", READ),
    ("DELETE", "/v1/operator/raft/peer"): _single("operator", WRITE),
    ("PUT", "/v1/session/create"): HANDLER,
    ("PUT", "/v1/session/destroy/{id}"): _session_write,
    ("PUT", "/v1/session/renew/{id}"): _session_write,
    ("GET", "/v1/session/info/{id}"): _none,
    ("GET", "/v1/session/node/{node}"): _none,
    ("GET", "/v1/session/list"): _none,
    ("GET", "/v1/status/leader"): _none,
    ("GET", "/v1/status/peers"): _none,
    ("GET", "/v1/agent/monitor"): _agent(READ),
    ("GET", "/v1/agent/host"): _single("operator", READ),
    ("GET", "/v1/agent/debug/pprof/profile"): _single("operator", READ),
    ("GET", "/v1/agent/debug/pprof/goroutine"): _single("operator", READ),
    ("GET", "/v1/operator/autopilot/configuration"): _single("operator", READ),
    ("PUT", "/v1/operator/autopilot/configuration"): _single("operator", WRITE),
    ("GET", "/v1/operator/autopilot/health"): _single("operator", READ),
    ("GET", "/v1/operator/autopilot/state"): _single("operator", READ),
    ("GET", "/v1/operator/usage"): _single("operator", READ),
    ("POST", "/v1/operator/raft/transfer-leader"): _single("operator", WRITE),
    # proconsul's leaderless recovery (docs/RECOVERY.md): both sides need operator:write, since
    # the state it reads only serves to plan a change of the configuration.
    ("GET", "/v1/operator/raft/recover"): _single("operator", WRITE),
    ("PUT", "/v1/operator/raft/recover"): _single("operator", WRITE),
    # The web UI's summaries: filtered below to the nodes and services the token may read.
    ("GET", "/v1/internal/ui/services"): _none,
    ("GET", "/v1/internal/ui/nodes"): _none,
    # Features proconsul leaves out (http/absent.py): always an empty answer, nothing to protect.
    ("GET", "/v1/health/connect/{service}"): _none,
    ("GET", "/v1/health/ingress/{service}"): _none,
    ("GET", "/v1/catalog/connect/{service}"): _none,
    ("GET", "/v1/catalog/gateway-services/{gateway}"): _none,
    # The empty-name forms answer Consul's 400 ("Missing session", "Missing node name", ...)
    # before reading or writing anything.
    ("GET", "/v1/health/node/"): _none,
    ("GET", "/v1/health/checks/"): _none,
    ("GET", "/v1/health/state/"): _none,
    ("PUT", "/v1/session/destroy/"): _none,
    ("PUT", "/v1/session/renew/"): _none,
    ("GET", "/v1/session/info/"): _none,
    ("GET", "/v1/session/node/"): _none,
    # Prepared queries: `query` rules on the query's name, checked by http/query.py (the name is
    # in the body or the stored query), and execution results filtered by the query's token.
    ("POST", "/v1/query"): HANDLER,
    ("GET", "/v1/query"): HANDLER,
    ("GET", "/v1/query/{id}"): HANDLER,
    ("PUT", "/v1/query/{id}"): HANDLER,
    ("DELETE", "/v1/query/{id}"): HANDLER,
    ("GET", "/v1/query/{id}/execute"): HANDLER,
    ("GET", "/v1/query/{id}/explain"): HANDLER,
}
# Not listed, so management only: /v1/snapshot (as in Consul), /v1/coordinate/update, and any
# route added later until it is given a precise check here.


# ------------------------------------------------------------------------------- filtering

Keep = Callable[[Authorizer, Any], bool]


def _ui_nodes(request: web.Request, a: Authorizer, body: Any) -> tuple[Any, bool]:
    """The UI's node dump: nodes the token may read, each with only its readable services/checks."""
    if not isinstance(body, list):
        return body, False
    out, dropped = [], False
    for node in body:
        if not _node_read("Node")(a, node):
            dropped = True
            continue
        services = [sv for sv in node.get("Services") or [] if a.allowed("service", str(sv.get("Service", "")), READ)]
        checks = [c for c in node.get("Checks") or [] if _check_read(a, c)]
        dropped = dropped or len(services) != len(node.get("Services") or []) or len(checks) != len(
            node.get("Checks") or [])
        out.append({**node, "Services": services, "Checks": checks})
    return out, dropped


def _list(keep: Keep) -> Callable[[web.Request, Authorizer, Any], tuple[Any, bool]]:
    def run(request: web.Request, a: Authorizer, body: Any) -> tuple[Any, bool]:
        if not isinstance(body, list):
            return body, False
        kept = [item for item in body if keep(a, item)]
        return kept, len(kept) != len(body)

    return run


def _map(keep: Callable[[Authorizer, str, Any], bool]) -> Callable[[web.Request, Authorizer, Any], tuple[Any, bool]]:
    def run(request: web.Request, a: Authorizer, body: Any) -> tuple[Any, bool]:
        if not isinstance(body, dict):
            return body, False
        kept = {k: v for k, v in body.items() if keep(a, k, v)}
        return kept, len(kept) != len(body)

    return run


def _kv_list(request: web.Request, a: Authorizer, body: Any) -> tuple[Any, bool]:
    return acl_reads.kv_entries(a, body)


def _node_detail(request: web.Request, a: Authorizer, body: Any) -> tuple[Any, bool]:
    return acl_reads.node_detail(a, body)


def _agent_check(request: web.Request) -> Keep:
    node = _own_node(request)

    def keep(a: Authorizer, c: Any) -> bool:
        name = c.get("ServiceName") or ""
        return a.allowed("service", str(name), READ) if name else a.allowed("node", node, READ)

    return keep


def _agent_checks(request: web.Request, a: Authorizer, body: Any) -> tuple[Any, bool]:
    keep = _agent_check(request)
    return _map(lambda a, k, v: keep(a, v))(request, a, body)


FILTERS: dict[str, Callable[[web.Request, Authorizer, Any], tuple[Any, bool]]] = {
    "/v1/kv/{key}": _kv_list,
    "/v1/catalog/nodes": _list(_node_read("Node")),
    "/v1/catalog/services": _map(lambda a, name, _: a.allowed("service", name, READ)),
    "/v1/catalog/service/{service}": _list(_service_entry_read),
    "/v1/catalog/node/{node}": _node_detail,
    "/v1/catalog/node-services/{node}": _node_detail,
    "/v1/health/node/{node}": _list(_check_read),
    "/v1/health/checks/{service}": _list(_check_read),
    "/v1/health/state/{state}": _list(_check_read),
    "/v1/health/service/{service}": _list(_health_entry_read),
    "/v1/agent/members": _list(_node_read("Name")),
    "/v1/agent/services": _map(lambda a, _, s: a.allowed("service", str(s.get("Service", "")), READ)),
    "/v1/agent/checks": _agent_checks,
    "/v1/coordinate/nodes": _list(_node_read("Node")),
    "/v1/coordinate/node/{node}": _list(_node_read("Node")),
    "/v1/session/info/{id}": _list(lambda a, s: a.allowed("session", str(s.get("Node", "")), READ)),
    "/v1/session/node/{node}": _list(lambda a, s: a.allowed("session", str(s.get("Node", "")), READ)),
    "/v1/session/list": _list(lambda a, s: a.allowed("session", str(s.get("Node", "")), READ)),
    "/v1/event/list": _list(lambda a, e: a.allowed("event", str(e.get("Name", "")), READ)),
    "/v1/internal/ui/services": _list(lambda a, s: a.allowed("service", str(s.get("Name", "")), READ)),
    "/v1/internal/ui/nodes": _ui_nodes,
}


# ------------------------------------------------------------------------------ the gate


def route_key(request: web.Request) -> str | None:
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return None
    return resource.canonical  # the path with its variables, without their patterns


async def before(request: web.Request) -> None:
    """Resolve the token and apply the route's check; raises HTTPError(403) when refused."""
    resolver = request.app[ACL_RESOLVER]
    secret = resolver.effective_secret(token(request))
    CALLER_TOKEN.set(secret)  # carried by this request's writes to a server (client agents)
    try:
        authz = await resolver.resolve(secret)
    except ACLNotFound as exc:
        raise HTTPError(403, str(exc)) from None
    request["authz"] = authz
    key = route_key(request)
    if key is None or request.match_info.http_exception is not None:
        return  # no route: the 404/405 comes from routing, with nothing to protect
    if key.startswith("/v1/acl/") or key == "/v1/internal/acl/authorize":
        return await _acl_own(request, authz)
    check = PRE.get((request.method if request.method != "HEAD" else "GET", key))
    try:
        if check is None:
            authz.require_management()  # fail closed: no precise check for this route yet
        else:
            await check(request, authz)
    except PermissionDenied as exc:
        raise HTTPError(403, str(exc)) from None


async def recheck(request: web.Request) -> None:
    """A blocking query answering: resolve its token again and re-apply the route's check (the
    token may have been deleted or changed while it waited); the answer is then filtered with
    the rights the token has now. Raises HTTPError(403) when refused."""
    await before(request)


def carry_token(request: web.Request) -> None:
    """ACLs off on this agent: a request's own token still travels with its writes to a server
    (which authorises it when its ACLs are on); without one, the agent token is sent."""
    secret = token(request)
    if secret:
        CALLER_TOKEN.set(secret)


def after(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """Filter a list answer down to what the token may read."""
    authz = request.get("authz")
    if authz is None or authz.management or not isinstance(resp, web.Response) or resp.status != 200:
        return resp
    key = route_key(request)
    run = FILTERS.get(key or "")
    if run is None or resp.content_type != "application/json" or resp.body is None:
        return resp
    body = json.loads(bytes(resp.body))  # type: ignore[arg-type]
    kept, filtered = run(request, authz, body)
    if not filtered:
        return resp
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in ("content-length", "content-type")}
    if authz.accessor != ANONYMOUS_ACCESSOR:
        # As Consul: anonymous requests are not told that something was hidden from them.
        headers[FILTERED_HEADER] = "true"
    if kept == [] and key == "/v1/kv/{key}":
        return web.Response(status=404, headers=headers)
    return web.Response(body=encode_json(request, kept), status=200, headers=headers, content_type="application/json")


def require(request: web.Request, check: Callable[[Authorizer], None]) -> None:
    """For HANDLER routes: run `check` against the request's Authorizer, 403 when refused."""
    try:
        check(authorizer(request))
    except PermissionDenied as exc:
        raise HTTPError(403, str(exc)) from None
