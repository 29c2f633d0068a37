"""`/v1/catalog/...`: the cluster-wide register of nodes and services.

Owns catalog register/deregister (direct writes, as opposed to the agent API which goes through
the agent's local state) and the catalog reads: datacenters, nodes, services, service/:name,
node/:node, node-services/:node, each with blocking, `?filter`, `?tag`, `?node-meta`, `?peer`;
services and service/:name also answer `?cached` from the agent cache (http/cached.py).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proconsul import filter as bexpr
from proconsul.http import acl_gate, cached
from proconsul.http.absent import peer_requested
from proconsul.http.appkeys import AGENT
from proconsul.http.common import (
    bad_request,
    filter_items,
    get_key,
    json_response,
    query_options,
    read_json,
    target_dc,
)
from proconsul.http.coordinate import near_node
from proconsul.local.cache import CATALOG_SERVICE_NODES, CATALOG_SERVICES
from proconsul.rpc_api import QueryOptions
from proconsul.server import acl_authz
from proconsul.server.acl_authz import same_node
from proconsul.state import commands, protection
from proconsul.state.records import HealthCheck, Node, ServiceInstance
from proconsul.structs import CHECK_STATUSES, DecodeError, decode_service


def node_meta_filter(request: web.Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in request.query.getall("node-meta", []):
        k, _, v = pair.partition(":")
        out[k] = v
    return out


def _write_dc(request: web.Request, body: dict[str, Any]) -> str:
    """Where a catalog write goes: the body's `Datacenter` (Consul routes the RPC by it), else
    ?dc; "" for ours."""
    dc = get_key(body, "Datacenter") or target_dc(request)
    return "" if dc == request.app[AGENT].config.datacenter else str(dc)


async def register(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: expected a JSON object")
    dc = _write_dc(request, body)
    command = decode_register(body, dc or agent.config.datacenter)
    if _check_here(request):
        _authorize(request, command, *await _acl_lookups(request, command.node.node))
    await agent.server.write(command, datacenter=dc)
    return json_response(request, True)


def decode_register(body: dict[str, Any], datacenter: str) -> commands.Register:
    """Decode a `/v1/catalog/register` body into a Register command (400 on bad input)."""
    node_name = get_key(body, "Node")
    if not isinstance(node_name, str) or not node_name:
        raise bad_request("Must provide node")
    address = get_key(body, "Address")
    if not isinstance(address, str) or not address:
        raise bad_request("Must provide address if SkipNodeUpdate is not set")
    node_id = get_key(body, "ID") or ""
    tagged = get_key(body, "TaggedAddresses") or {}
    meta = get_key(body, "NodeMeta") or {}
    if not isinstance(tagged, dict) or not isinstance(meta, dict):
        raise bad_request("Request decode failed: TaggedAddresses and NodeMeta must be objects")
    node = Node(
        node=node_name,
        id=str(node_id),
        address=address,
        datacenter=datacenter,
        tagged_addresses={str(k): str(v) for k, v in tagged.items()},
        meta={str(k): str(v) for k, v in meta.items()},
    )
    service = None
    raw_service = get_key(body, "Service")
    if raw_service:
        service = decode_node_service(raw_service, node_name)
    raw_checks: list[Any] = []
    single = get_key(body, "Check")
    if single:
        raw_checks.append(single)
    many = get_key(body, "Checks")
    if many:
        if not isinstance(many, list):
            raise bad_request("Request decode failed: Checks must be a list")
        raw_checks.extend(many)
    checks = []
    for raw in raw_checks:
        if not isinstance(raw, dict):
            raise bad_request("Request decode failed: a check must be an object")
        checks.append(decode_catalog_check(raw, node_name, service))
    skip = bool(get_key(body, "SkipNodeUpdate"))
    return commands.Register(node=node, service=service, checks=tuple(checks), skip_node_update=skip)


def decode_node_service(raw_service: Any, node_name: str) -> ServiceInstance:
    """A NodeService JSON object (catalog register, txn Service operations); 400 on bad input."""
    if not isinstance(raw_service, dict):
        raise bad_request("Request decode failed: Service must be an object")
    # The catalog's NodeService names the service `Service`; the decoder expects `Name`.
    as_def = {k: v for k, v in raw_service.items() if k.lower() not in ("service", "name", "modifyindex",
                                                                        "createindex")}
    as_def["Name"] = get_key(raw_service, "Service") or get_key(raw_service, "Name") or ""
    try:
        definition = decode_service(as_def, strict=False)
    except DecodeError as exc:
        raise bad_request("Invalid service: " + "; ".join(exc.errors)) from None
    return ServiceInstance(
        node=node_name,
        id=definition.id,
        service=definition.name,
        tags=definition.tags,
        address=definition.address,
        tagged_addresses=definition.tagged_addresses,
        meta=definition.meta,
        port=definition.port,
        weights=definition.weights,
        enable_tag_override=definition.enable_tag_override,
        kind=definition.kind,
        extra=protection.extra_for(definition.protection_threshold),
    )


def decode_catalog_check(raw: dict[str, Any], node: str, service: ServiceInstance | None) -> HealthCheck:
    check_id = get_key(raw, "CheckID", "ID") or get_key(raw, "Name") or ""
    name = get_key(raw, "Name") or check_id
    if not check_id:
        raise bad_request("Missing check ID")
    status = get_key(raw, "Status") or "critical"
    if status not in CHECK_STATUSES:
        raise bad_request(f"Invalid check status: {status!r}")
    service_id = get_key(raw, "ServiceID") or ""
    definition = get_key(raw, "Definition") or {}
    return HealthCheck(
        node=get_key(raw, "Node") or node,
        check_id=str(check_id),
        name=str(name),
        status=status,
        notes=str(get_key(raw, "Notes") or ""),
        output=str(get_key(raw, "Output") or ""),
        service_id=str(service_id),
        type=str(get_key(raw, "Type") or ""),
        definition=definition if isinstance(definition, dict) else {},
    )


def _check_here(request: web.Request) -> bool:
    """ACLs on a server: the write is checked here, against this server's catalog. A client agent
    leaves it to the server, which checks the forwarded write with the caller's token against the
    whole catalog (this agent would only see what the token may read of it), with the same 403."""
    return acl_gate.acl_enabled(request) and not request.app[AGENT].server.catalog_is_remote


async def _acl_lookups(request: web.Request, node: str) -> tuple[dict[str, str], Node | None]:
    """The node's services (ID -> name) and its stored record, for the ACL check of a write."""
    _, state = await request.app[AGENT].server.query("Internal.NodeState", {"node": node},
                                                       QueryOptions(allow_stale=True))
    services = (ServiceInstance.from_wire(w) for w in state["services"])
    stored = Node.from_wire(state["node"]) if state["node"] is not None else None
    return {s.id: s.service for s in services}, stored


def _authorize(request: web.Request, command: Any, names: dict[str, str], stored: Node | None) -> None:
    acl_gate.require(request, lambda authz: acl_authz.authorize(
        authz, command, lambda n, sid: names.get(sid), node_unchanged=lambda node: same_node(stored, node)))


async def deregister(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: expected a JSON object")
    dc = _write_dc(request, body)
    node = get_key(body, "Node")
    if not isinstance(node, str) or not node:
        raise bad_request("Must provide node")
    command = commands.Deregister(
        node=node,
        service_id=str(get_key(body, "ServiceID") or ""),
        check_id=str(get_key(body, "CheckID") or ""),
    )
    if _check_here(request):
        _authorize(request, command, *await _acl_lookups(request, node))
    await agent.server.write(command, datacenter=dc)
    return json_response(request, True)


async def datacenters(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    return json_response(request, await agent.server.list_datacenters())


async def nodes(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    opts = query_options(request)
    args = {"node_meta": node_meta_filter(request), "near": near_node(request)}
    meta, items = await agent.server.query("Catalog.ListNodes", args, opts)
    items = filter_items(request, items, bexpr.CATALOG_NODE)
    return json_response(request, [] if peer_requested(request) else items, meta)


async def services(request: web.Request) -> web.Response:
    opts = query_options(request)
    expr = request.query.get("filter")
    args: dict[str, Any] = {"node_meta": node_meta_filter(request), "instances": bool(expr)}
    meta, result = await cached.query(request, CATALOG_SERVICES, "Catalog.ListServices", args, opts)
    if expr:
        # Consul runs the filter on each service instance (catalog/service's selectors), then
        # groups the survivors by name with the union of their tags.
        grouped: dict[str, set[str]] = {}
        for item in filter_items(request, result, bexpr.CATALOG_SERVICE_NODE):
            grouped.setdefault(item["ServiceName"], set()).update(item["ServiceTags"])
        result = {name: sorted(grouped[name]) for name in sorted(grouped)}
    return cached.mark(request, json_response(request, {} if peer_requested(request) else result, meta))


async def service_nodes(request: web.Request) -> web.Response:
    opts = query_options(request)
    args = {
        "service": request.match_info["service"],
        "tags": request.query.getall("tag", []),
        "node_meta": node_meta_filter(request),
        "near": near_node(request),
    }
    meta, items = await cached.query(request, CATALOG_SERVICE_NODES, "Catalog.ServiceNodes", args, opts)
    items = filter_items(request, items, bexpr.CATALOG_SERVICE_NODE)
    return cached.mark(request, json_response(request, [] if peer_requested(request) else items, meta))


async def node_detail(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    opts = query_options(request)
    meta, result = await agent.server.query("Catalog.NodeServices", {"node": request.match_info["node"]}, opts)
    if result is None or peer_requested(request):
        return json_response(request, None, meta)
    # The filter runs on each value of the Services map (the node-services selectors).
    kept = filter_items(request, result["Services"], bexpr.CATALOG_NODE_SERVICES)
    body = {"Node": result["Node"], "Services": {s["ID"]: s for s in kept}}
    return json_response(request, body, meta)


async def node_services(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    opts = query_options(request)
    meta, result = await agent.server.query("Catalog.NodeServices", {"node": request.match_info["node"]}, opts)
    if result is None or peer_requested(request):
        # Consul's handler answers a pointer to a zero NodeServiceList here, never a bare null.
        return json_response(request, {"Node": None, "Services": None}, meta)
    items = filter_items(request, result["Services"], bexpr.CATALOG_NODE_SERVICES)
    return json_response(request, {"Node": result["Node"], "Services": items}, meta)


def routes() -> list[web.RouteDef]:
    return [
        web.put("/v1/catalog/register", register),
        web.put("/v1/catalog/deregister", deregister),
        web.get("/v1/catalog/datacenters", datacenters),
        web.get("/v1/catalog/nodes", nodes),
        web.get("/v1/catalog/services", services),
        web.get("/v1/catalog/service/{service}", service_nodes),
        web.get("/v1/catalog/node/{node}", node_detail),
        web.get("/v1/catalog/node-services/{node}", node_services),
    ]
