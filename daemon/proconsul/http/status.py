"""`/v1/status/leader` and `/v1/status/peers`: the Raft leader and voters of this datacenter."""

from __future__ import annotations

from aiohttp import web

from proconsul.http.appkeys import AGENT
from proconsul.http.common import check_dc, json_response


async def leader(request: web.Request) -> web.Response:
    check_dc(request)
    return json_response(request, request.app[AGENT].server.leader())


async def peers(request: web.Request) -> web.Response:
    check_dc(request)
    return json_response(request, request.app[AGENT].server.peers())


def routes() -> list[web.RouteDef]:
    return [web.get("/v1/status/leader", leader), web.get("/v1/status/peers", peers)]
