"""`/v1/health/...`: health-aware reads of the catalog.

Owns node/:node, checks/:service, state/:state and service/:service (the main discovery query of
consul-template and py-consul), with `?passing`, `?tag`, `?node-meta`, `?filter`, `?peer` and blocking;
service/:service also answers `?cached` from the agent cache (http/cached.py).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from proconsul import filter as bexpr
from proconsul.http import cached
from proconsul.http.absent import peer_requested
from proconsul.http.appkeys import AGENT
from proconsul.http.catalog import node_meta_filter
from proconsul.http.common import bad_request, filter_items, flag, json_response, query_options, shared_fact
from proconsul.http.coordinate import near_node
from proconsul.local.cache import HEALTH_SERVICES
from proconsul.state import protection

logger = logging.getLogger(__name__)

# Which services this agent's API has seen below their protection threshold (logging only).
PROTECTION_LOG = web.AppKey("protection_log", protection.ProtectionLog)


def protection_applied(items: list[Any]) -> bool:
    """Whether a `?passing` answer holds a non-passing check: only the protection threshold
    keeps those. Scans every check of every instance, hence computed once per shared answer."""
    return any(check.get("Status") != "passing" for item in items for check in item.get("Checks") or ())


def _unpeered(request: web.Request, items: list[Any], schema: Any) -> list[Any]:
    """`?filter` applied to the local answer; `[]` for a `?peer=` (none exists: nothing imported)."""
    # The filter runs first so that a bad expression is still a 400 with a peer named.
    filtered = filter_items(request, items, schema)
    return [] if peer_requested(request) else filtered  # type: ignore[no-any-return]


def _path_name(request: web.Request, key: str, missing: str) -> str:
    """The name at the end of the path; an empty one is Consul's 400 (its routes are prefixes,
    so `/v1/health/node/` reaches the handler, which refuses it with `missing`)."""
    name = request.match_info.get(key, "")
    if not name:
        raise bad_request(missing)
    return name


async def node_health(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    opts = query_options(request)
    node = _path_name(request, "node", "Missing node name")
    meta, items = await agent.server.query("Health.NodeChecks", {"node": node}, opts)
    return json_response(request, _unpeered(request, items, bexpr.HEALTH_CHECK), meta)


async def service_checks(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    opts = query_options(request)
    args = {"service": _path_name(request, "service", "Missing service name"),
            "node_meta": node_meta_filter(request), "near": near_node(request)}
    meta, items = await agent.server.query("Health.ServiceChecks", args, opts)
    return json_response(request, _unpeered(request, items, bexpr.HEALTH_CHECK), meta)


async def checks_in_state(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    opts = query_options(request)
    # Consul validates nothing but emptiness: an unknown state matches no check (200, []).
    state = _path_name(request, "state", "Missing check state")
    args = {"state": state, "node_meta": node_meta_filter(request), "near": near_node(request)}
    meta, items = await agent.server.query("Health.ChecksInState", args, opts)
    return json_response(request, _unpeered(request, items, bexpr.HEALTH_CHECK), meta)


async def service_health(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    opts = query_options(request)
    args = {
        "service": request.match_info["service"],
        "tags": request.query.getall("tag", []),
        "passing": flag(request, "passing"),
        "node_meta": node_meta_filter(request),
        "datacenter": agent.config.datacenter,
        "near": near_node(request),
    }
    meta, items = await cached.query(request, HEALTH_SERVICES, "Health.ServiceNodes", args, opts)
    # With ?passing every entry is all-passing unless the protection threshold kept the others
    # (the server that ran the query may be another one, so this is read off the answer).
    protected = args["passing"] and shared_fact(request, items, "protection", protection_applied)
    if args["passing"]:
        request.app[PROTECTION_LOG].note(args["service"], protected)
    response = json_response(request, _unpeered(request, items, bexpr.HEALTH_SERVICE_ENTRY), meta)
    if protected:
        response.headers[protection.APPLIED_HEADER] = "true"
    return cached.mark(request, response)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/health/node/{node}", node_health),
        web.get("/v1/health/node/", node_health),
        web.get("/v1/health/checks/{service}", service_checks),
        web.get("/v1/health/checks/", service_checks),
        web.get("/v1/health/state/{state}", checks_in_state),
        web.get("/v1/health/state/", checks_in_state),
        web.get("/v1/health/service/{service}", service_health),
    ]
