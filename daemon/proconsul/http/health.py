"""`/v1/health/...`: health-aware reads of the catalog.

Owns node/:node, checks/:service, state/:state and service/:service (the main discovery query of
consul-template and py-consul), with `?passing`, `?tag`, `?node-meta`, `?filter` and blocking.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proconsul import filter as bexpr
from proconsul.http import render
from proconsul.http.catalog import CATALOG_TABLES, has_tags, node_matches_meta, node_meta_filter
from proconsul.http.common import bad_request, filter_items, flag, json_response, query_options
from proconsul.state.records import HealthCheck, Node, ServiceInstance
from proconsul.state.store import Store
from proconsul.structs import CHECK_STATUSES, HEALTH_ANY, HEALTH_PASSING


async def node_health(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    opts = query_options(request)
    name = request.match_info["node"]

    def run(store: Store) -> tuple[int, list[HealthCheck]]:
        return store.node_checks(name)

    meta, checks = await agent.server.read(opts, run, CATALOG_TABLES)
    items = filter_items(request, [render.check(c) for c in checks], bexpr.HEALTH_CHECK)
    return json_response(request, items, meta)


async def service_checks(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    opts = query_options(request)
    name = request.match_info["service"]
    wanted = node_meta_filter(request)

    def run(store: Store) -> tuple[int, list[HealthCheck]]:
        index, checks = store.service_checks(name)
        if wanted:
            checks = [c for c in checks if node_matches_meta(store.nodes[c.node], wanted)]
        return index, checks

    meta, checks = await agent.server.read(opts, run, CATALOG_TABLES)
    items = filter_items(request, [render.check(c) for c in checks], bexpr.HEALTH_CHECK)
    return json_response(request, items, meta)


async def checks_in_state(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    opts = query_options(request)
    state = request.match_info["state"]
    if state not in CHECK_STATUSES and state != HEALTH_ANY:
        raise bad_request("Invalid check state")
    wanted = node_meta_filter(request)

    def run(store: Store) -> tuple[int, list[HealthCheck]]:
        index, checks = store.checks_in_state(state)
        if wanted:
            checks = [c for c in checks if node_matches_meta(store.nodes[c.node], wanted)]
        return index, checks

    meta, checks = await agent.server.read(opts, run, CATALOG_TABLES)
    items = filter_items(request, [render.check(c) for c in checks], bexpr.HEALTH_CHECK)
    return json_response(request, items, meta)


def service_entries(
    store: Store, name: str, tags: list[str], passing_only: bool, wanted_meta: dict[str, str]
) -> tuple[int, list[tuple[Node, ServiceInstance, list[HealthCheck]]]]:
    """Instances of `name` with their node and checks; `passing_only` keeps all-passing ones."""
    out = []
    for svc in store.service_instances(name):
        n = store.nodes.get(svc.node)
        if n is None or not has_tags(svc, tags) or not node_matches_meta(n, wanted_meta):
            continue
        checks = store.checks_for_instance(svc)
        if passing_only and any(c.status != HEALTH_PASSING for c in checks):
            continue
        out.append((n, svc, checks))
    return store.index_for_service(name), out


async def service_health(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    opts = query_options(request)
    name = request.match_info["service"]
    tags = request.query.getall("tag", [])
    passing = flag(request, "passing")
    wanted = node_meta_filter(request)
    dc = agent.config.datacenter

    def run(store: Store) -> tuple[int, Any]:
        return service_entries(store, name, tags, passing, wanted)

    meta, entries = await agent.server.read(opts, run, CATALOG_TABLES)
    items = [
        {
            "Node": render.node(n),
            "Service": render.service(s),
            "Checks": [render.check(c) for c in checks],
        }
        for n, s, checks in entries
    ]
    for item in items:
        item["Node"]["Datacenter"] = item["Node"]["Datacenter"] or dc
    items = filter_items(request, items, bexpr.HEALTH_SERVICE_ENTRY)
    return json_response(request, items, meta)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/health/node/{node}", node_health),
        web.get("/v1/health/checks/{service}", service_checks),
        web.get("/v1/health/state/{state}", checks_in_state),
        web.get("/v1/health/service/{service}", service_health),
    ]
