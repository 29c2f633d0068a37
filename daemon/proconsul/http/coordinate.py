"""`/v1/coordinate/...`: network coordinates, and the `?near=` parameter other reads share.

Owns `datacenters` (every federated datacenter's servers with the WAN coordinates the answering
server's WAN pool holds for them, area `wan`, as Consul's `Coordinate.ListDatacenters`; client
agents ask a server), `nodes` and
`node/:node` (the catalog's coordinates, blocking, `?segment`; a node without any is a 404),
`update` (PUT, validated, sent as a `Coordinate.Update` RPC), the 401 that all of them answer
when `disable_coordinates` is set, and :func:`near_node`, which resolves `?near=_agent` to this
agent's node name for the catalog and health endpoints.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proconsul.coordinate import InvalidCoordinate
from proconsul.http.appkeys import AGENT
from proconsul.http.common import HTTPError, bad_request, check_dc, json_response, query_options, read_json
from proconsul.local.coordinate_sync import decode_update

# The magic `?near=` value for "the agent answering this request".
NEAR_AGENT = "_agent"


def near_node(request: web.Request) -> str:
    """The node `?near=` names ("" for none), with `_agent` meaning this agent's node."""
    near = request.query.get("near", "")
    if near == NEAR_AGENT:
        return str(request.app[AGENT].node_name)
    return near


def _check_enabled(request: web.Request) -> None:
    if request.app[AGENT].config.disable_coordinates:
        raise HTTPError(401, "Coordinate support disabled")


def _by_segment(request: web.Request, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if "segment" not in request.query:
        return entries
    segment = request.query.get("segment", "")
    return [e for e in entries if e["Segment"] == segment]


async def datacenters(request: web.Request) -> web.Response:
    _check_enabled(request)
    agent = request.app[AGENT]
    return json_response(request, await agent.coordinate_sync.list_datacenters())


async def nodes(request: web.Request) -> web.Response:
    _check_enabled(request)
    agent = request.app[AGENT]
    opts = query_options(request)
    meta, items = await agent.server.query("Coordinate.ListNodes", {}, opts)
    return json_response(request, _by_segment(request, items), meta)


async def node(request: web.Request) -> web.Response:
    _check_enabled(request)
    agent = request.app[AGENT]
    opts = query_options(request)
    meta, items = await agent.server.query("Coordinate.Node", {"node": request.match_info["node"]}, opts)
    items = _by_segment(request, items)
    if not items:
        resp = json_response(request, None, meta, status=404)
        resp.body = b""
        return resp
    return json_response(request, items, meta)


async def update(request: web.Request) -> web.Response:
    _check_enabled(request)
    check_dc(request)
    agent = request.app[AGENT]
    body = await read_json(request)
    try:
        decode_update(body)
    except InvalidCoordinate as exc:
        raise bad_request(str(exc)) from None
    await agent.coordinate_sync.send(body)
    return web.Response(status=200)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/coordinate/datacenters", datacenters),
        web.get("/v1/coordinate/nodes", nodes),
        web.get("/v1/coordinate/node/{node}", node),
        web.put("/v1/coordinate/update", update),
    ]
