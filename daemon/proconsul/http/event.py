"""`/v1/event/fire/:name` and `/v1/event/list`: user events (see `proconsul.events`).

Owns the HTTP side of events as Consul's agent/event_endpoint.go does it: fire takes the body as
the payload and `?node=`, `?service=`, `?tag=` regex filters and answers the event as fired
(LTime 0: it is stamped on receipt); list is agent-local, filtered by `?name=`, and blocks on an
index derived from the last event's ID, waking when that index differs from `?index=`.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from proconsul import events as ev
from proconsul.config import parse_duration
from proconsul.http.common import HTTPError, bad_request, check_dc, json_response, uint_param

# Read at most this much of a fire body: anything larger fails serf's limit anyway.
_MAX_FIRE_BODY = 64 * 1024


def event_log(agent: Any) -> ev.EventLog:
    log = getattr(agent, "events", None)
    if log is None:  # agents built without one (tests) get theirs on first use
        log = ev.EventLog()
        agent.events = log
    return log


def _local_services(agent: Any) -> list[tuple[str, tuple[str, ...]]]:
    out: list[tuple[str, tuple[str, ...]]] = []
    for sid, svc in sorted(agent.local.services.items()):
        d = svc.definition
        out.append((sid, tuple(d.tags)))
        if d.name != sid:
            out.append((d.name, tuple(d.tags)))
    return out


def deliver(agent: Any, event: ev.UserEvent) -> bool:
    """Deliver an event to this agent if its filters select it; True if it was recorded."""
    if not ev.matches(event, agent.node_name, _local_services(agent)):
        return False
    event_log(agent).ingest(event)
    return True


async def fire(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    check_dc(request)
    name = request.match_info.get("name", "")
    if not name:
        raise HTTPError(400, "Missing name")
    body = await request.content.read(_MAX_FIRE_BODY)
    q = request.query
    try:
        event = ev.new_event(name, body or None, q.get("node", ""), q.get("service", ""), q.get("tag", ""))
    except ev.EventError as exc:
        # Consul answers a failed fire (validation, size limit) with 500 and the error text.
        raise HTTPError(500, str(exc)) from None
    deliver(agent, event)
    return json_response(request, event.to_json())


async def list_events(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    log = event_log(agent)
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
