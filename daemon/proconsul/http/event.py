"""`/v1/event/fire/:name` and `/v1/event/list`: user events (see `proconsul.local.events`).

Owns the HTTP side of events as Consul's agent/event_endpoint.go does it: fire takes the body as
the payload, `?node=`, `?service=`, `?tag=` regex filters and `?dc=`, has a server broadcast it
over gossip (`AgentEvents.fire`) and answers the event as fired (LTime 0: it is stamped by
gossip); list is agent-local, filtered by `?name=`, and blocks on an index derived from the last
event's ID, waking when that index differs from `?index=`.
"""

from __future__ import annotations

import time

from aiohttp import web

from proconsul.durations import parse_duration
from proconsul.http.appkeys import AGENT
from proconsul.http.common import HTTPError, bad_request, json_response, read_body, uint_param
from proconsul.local import events as ev

# Read at most this much of a fire body: anything larger fails serf's limit anyway.
_MAX_FIRE_BODY = 64 * 1024


async def fire(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    name = request.match_info.get("name", "")
    if not name:
        raise HTTPError(400, "Missing name")
    body = await read_body(request, _MAX_FIRE_BODY)
    q = request.query
    try:
        event = ev.new_event(name, body or None, q.get("node", ""), q.get("service", ""), q.get("tag", ""))
    except ev.EventError as exc:
        # Consul answers a failed fire (validation, size limit) with 500 and the error text.
        raise HTTPError(500, str(exc)) from None
    await agent.events.fire(event, request.query.get("dc", ""))
    return json_response(request, event.to_json())


async def list_events(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    log = agent.events.log
    name = request.query.get("name", "")
    min_index = uint_param(request, "index", message="Invalid index")
    wait_s = 0.0
    if request.query.get("wait"):
        try:
            wait_s = parse_duration(request.query["wait"])
        except ValueError:
            raise bad_request("Invalid wait time") from None
    max_s = float(agent.config.max_query_time_s)
    if min_index and (wait_s <= 0 or wait_s > max_s):
        wait_s = max_s
    deadline = time.monotonic() + wait_s
    while True:
        events = log.list(name)
        index = log.index_of(events)
        # The index is not monotonic, so only an exact match with ?index= blocks.
        if not min_index or index != min_index:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not await log.wait_changed(remaining):
            break
    return json_response(request, [e.to_json() for e in events], index=index)


def routes() -> list[web.RouteDef]:
    return [
        web.put("/v1/event/fire/{name}", fire),
        web.put("/v1/event/fire/", fire),
        web.get("/v1/event/list", list_events),
    ]
