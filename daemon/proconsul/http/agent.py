"""`/v1/agent/...`: the local agent's own state and controls.

Owns the agent endpoints: self, members, services and checks (local views, each with `?filter`),
service and check registration through local state (so anti-entropy keeps the catalog equal),
TTL updates, maintenance modes, local health aggregates, tokens, reload and leave.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proconsul import filter as bexpr
from proconsul.http import acl_gate, agent_self
from proconsul.http.appkeys import AGENT
from proconsul.http.common import (
    HTTPError,
    bad_request,
    filter_items,
    flag,
    get_key,
    json_response,
    query_options,
    read_json,
    token,
)
from proconsul.state import render
from proconsul.state.store import aggregate_status
from proconsul.structs import (
    CHECK_STATUSES,
    HEALTH_CRITICAL,
    HEALTH_PASSING,
    HEALTH_WARNING,
    NODE_MAINT_CHECK_ID,
    SERVICE_MAINT_PREFIX,
    CheckDefinition,
    DecodeError,
    decode_check,
    decode_service,
)

if TYPE_CHECKING:
    from proconsul.local.state import LocalState


def _decode_error_message(kind: str, exc: DecodeError) -> str:
    errors = exc.errors
    if any(e.startswith("name: missing") for e in errors):
        return f"Missing {kind} name"
    return f"Invalid {kind}: " + "; ".join(errors)


async def self_info(request: web.Request) -> web.Response:
    return json_response(request, request.app[AGENT].self_view.self_info())


async def members(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    return json_response(request, filter_items(request, agent.members(wan=flag(request, "wan")), bexpr.AGENT_MEMBER))


async def version(request: web.Request) -> web.Response:
    return json_response(request, agent_self.version_info())


async def services(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    local = agent.local
    dc = agent.config.datacenter
    out = {sid: render.agent_service(local.service_record(sid), dc) for sid in sorted(local.services)}
    return json_response(request, filter_items(request, out, bexpr.AGENT_SERVICE))


def _content_hash(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


async def service(request: web.Request) -> web.Response:
    """One local service; `?hash=<ContentHash>` blocks until it differs (or `?wait` passes), as
    Consul's hash-based blocking on this endpoint does (it is what Envoy bootstraps poll)."""
    agent = request.app[AGENT]
    sid = request.match_info["id"]
    opts = query_options(request)
    wait_s = min(opts.max_wait_s or agent.config.default_query_time_s, agent.config.max_query_time_s)
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        if sid not in agent.local.services:
            raise HTTPError(404, f"unknown service ID: {sid}")
        body = render.agent_service(agent.local.service_record(sid), agent.config.datacenter)
        digest = _content_hash(body)
        remaining = deadline - asyncio.get_running_loop().time()
        if request.query.get("hash", "") != digest or remaining <= 0:
            break
        await agent.local.wait_for_change(remaining)
    body["ContentHash"] = digest
    resp = json_response(request, body)
    resp.headers["X-Consul-ContentHash"] = digest
    return resp


async def checks(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    local = agent.local
    out = {}
    for cid in sorted(local.checks):
        item = render.check(local.check_record(cid))
        item["CreateIndex"] = 0
        item["ModifyIndex"] = 0
        out[cid] = item
    return json_response(request, filter_items(request, out, bexpr.AGENT_CHECK))


async def service_register(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: expected a JSON object")
    try:
        definition = decode_service(body, strict=False)
    except DecodeError as exc:
        raise bad_request(_decode_error_message("service", exc)) from None
    acl_gate.require(request, lambda authz: authz.require("service", definition.name, "write"))
    agent.check_script_allowed(definition.checks, source="api")
    replace_existing = flag(request, "replace-existing-checks")
    agent.local.add_service(definition, "api", token(request), replace_existing_checks=replace_existing)
    return web.Response(status=200)


async def service_deregister(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    sid = request.match_info["id"]
    if not agent.local.remove_service(sid):
        raise HTTPError(
            404, f'Unknown service ID "{sid}". Ensure that the service ID is passed, not the service name.'
        )
    return web.Response(status=200)


async def check_register(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: expected a JSON object")
    try:
        definition = decode_check(body, strict=False)
    except DecodeError as exc:
        raise bad_request(_decode_error_message("check", exc)) from None
    acl_gate.require(request, lambda authz: _check_write(request, authz, definition.service_id))
    agent.check_script_allowed((definition,), source="api")
    try:
        agent.local.add_check(definition, "api", token(request))
    except KeyError as exc:
        raise bad_request(str(exc.args[0])) from None
    return web.Response(status=200)


async def check_deregister(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    cid = request.match_info["id"]
    if not agent.local.remove_check(cid):
        raise HTTPError(404, f'Unknown check ID "{cid}". Ensure that the check ID is passed, not the check name.')
    return web.Response(status=200)


def _check_write(request: web.Request, authz: Any, service_id: str) -> None:
    """A check on a local service needs service:write on it; a node check node:write."""
    agent = request.app[AGENT]
    if service_id and service_id in agent.local.services:
        authz.require("service", agent.local.service_record(service_id).service, "write")
    else:
        authz.require("node", agent.node_name, "write")


def _ttl_update(request: web.Request, cid: str, status: str, output: str) -> None:
    agent = request.app[AGENT]
    check = agent.local.checks.get(cid)
    if check is None:
        raise HTTPError(404, f'Unknown check ID "{cid}". Ensure that the check ID is passed, not the check name.')
    if check.definition.type != "ttl":
        raise HTTPError(500, f'CheckID "{cid}" does not have associated TTL')
    agent.checks.ttl_touched(cid)
    agent.local.update_check(cid, status, output)


def _ttl_handler(status: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        _ttl_update(request, request.match_info["id"], status, request.query.get("note", ""))
        return web.Response(status=200)

    return handler


async def check_update(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: expected a JSON object")
    status = get_key(body, "Status")
    output = get_key(body, "Output") or ""
    if status not in CHECK_STATUSES:
        raise bad_request(f"Invalid check status: '{status}'")
    if not isinstance(output, str):
        raise bad_request("Request decode failed: Output must be a string")
    _ttl_update(request, request.match_info["id"], status, output)
    return web.Response(status=200)


def _enable_param(request: web.Request) -> bool:
    if "enable" not in request.query or request.query["enable"] == "":
        raise bad_request("Missing value for enable")
    text = request.query["enable"].lower()
    if text in ("1", "t", "true"):
        return True
    if text in ("0", "f", "false"):
        return False
    raise bad_request(f"Invalid value for enable: {request.query['enable']!r}")


async def node_maintenance(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    enable = _enable_param(request)
    reason = request.query.get("reason", "")
    if enable:
        notes = reason or (
            "Maintenance mode is enabled for this node, but no reason was provided. This is a default message."
        )
        definition = CheckDefinition(id=NODE_MAINT_CHECK_ID, name="Node Maintenance Mode", notes=notes,
                                     status=HEALTH_CRITICAL, type="maintenance")
        agent.local.add_check(definition, "api", token(request))
    else:
        agent.local.remove_check(NODE_MAINT_CHECK_ID)
    return web.Response(status=200)


async def service_maintenance(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    sid = request.match_info["id"]
    enable = _enable_param(request)
    if sid not in agent.local.services:
        raise HTTPError(404, f'Unknown service ID "{sid}"')
    cid = SERVICE_MAINT_PREFIX + sid
    if enable:
        notes = request.query.get("reason") or (
            "Maintenance mode is enabled for this service, but no reason was provided. This is a default message."
        )
        definition = CheckDefinition(id=cid, name="Service Maintenance Mode", notes=notes, service_id=sid,
                                     status=HEALTH_CRITICAL, type="maintenance")
        agent.local.add_check(definition, "api", token(request))
    else:
        agent.local.remove_check(cid)
    return web.Response(status=200)


_HEALTH_CODES = {HEALTH_PASSING: 200, HEALTH_WARNING: 429, HEALTH_CRITICAL: 503}


def _service_health(local: LocalState, datacenter: str, sid: str) -> dict[str, Any]:
    own = [local.check_record(c) for c in sorted(local.checks) if local.checks[c].definition.service_id == sid]
    node_checks = [local.check_record(c) for c in sorted(local.checks) if not local.checks[c].definition.service_id]
    status = aggregate_status(node_checks + own)
    if any(c.check_id == NODE_MAINT_CHECK_ID or c.check_id.startswith(SERVICE_MAINT_PREFIX) for c in node_checks + own):
        if status == HEALTH_CRITICAL:
            status = "maintenance"
    return {
        "AggregatedStatus": status,
        "Service": render.agent_service(local.service_record(sid), datacenter),
        "Checks": [render.check(c) for c in own],
    }


async def health_by_id(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    sid = request.match_info["id"]
    if sid not in agent.local.services:
        return _health_text(request, 404, f"ServiceId {sid} not found", None)
    body = _service_health(agent.local, agent.config.datacenter, sid)
    code = _HEALTH_CODES.get(body["AggregatedStatus"], 503)
    return _health_text(request, code, body["AggregatedStatus"], body)


async def health_by_name(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    name = request.match_info["name"]
    sids = [sid for sid in sorted(agent.local.services) if agent.local.services[sid].definition.name == name]
    if not sids:
        return _health_text(request, 404, f"ServiceName {name} Not Found", None)
    bodies = [_service_health(agent.local, agent.config.datacenter, sid) for sid in sids]
    worst = aggregate_status_names([b["AggregatedStatus"] for b in bodies])
    return _health_text(request, _HEALTH_CODES.get(worst, 503), worst, bodies)


def aggregate_status_names(statuses: list[str]) -> str:
    for s in ("maintenance", HEALTH_CRITICAL, HEALTH_WARNING):
        if s in statuses:
            return s
    return HEALTH_PASSING


def _health_text(request: web.Request, code: int, text: str, body: Any) -> web.Response:
    if request.query.get("format") == "text" or body is None:
        return web.Response(status=code, text=text)
    return json_response(request, body, status=code)


async def set_token(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    kind = request.match_info["kind"]
    known = ("default", "agent", "agent_recovery", "agent_master", "replication", "config_file_service_registration", "dns")
    if kind not in known:
        raise HTTPError(404, f"Token {kind!r} is unknown")
    body = await read_json(request)
    value = get_key(body, "Token") if isinstance(body, dict) else None
    if not isinstance(value, str):
        raise bad_request("Request decode failed: Token must be a string")
    # Consul's legacy name for the recovery token.
    agent.set_agent_token("agent_recovery" if kind == "agent_master" else kind, value)
    return web.Response(status=200)


async def reload(request: web.Request) -> web.Response:
    errors = await request.app[AGENT].reload()
    if errors:
        raise HTTPError(500, "Failed reloading config: " + "; ".join(errors))
    return web.Response(status=200)


async def leave(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    # Consul answers once the leave is done; the agent shuts down after it.
    await agent.request_leave().done.wait()
    return web.Response(status=200)


async def join(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    address = request.match_info["address"]
    if flag(request, "wan"):
        if agent.wan is None:
            raise HTTPError(500, "Must be a server to join WAN cluster")
        n = await agent.wan.join([address])
    else:
        n = await agent.membership.join([address])
    if n == 0:
        raise HTTPError(500, f"1 error occurred:\n\t* Failed to join {address}: no reply from its gossip port\n\n")
    return web.Response(status=200)


async def force_leave(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    node = request.match_info["node"]
    prune = flag(request, "prune")
    if flag(request, "wan"):
        # Only the WAN pool, where the name is "<node>.<dc>" (Consul's force-leave -wan).
        if agent.wan is None or not agent.wan.force_leave(node, prune=prune):
            raise HTTPError(500, f"agent: No node found with name '{node}'")
        return web.Response(status=200)
    if agent.wan is not None:
        # A server's force-leave also covers the node's own WAN member (Consul: removeFailedNode).
        agent.wan.force_leave(f"{node}.{agent.config.datacenter}", prune=prune)
    if not agent.membership.force_leave(node, prune=prune):
        raise HTTPError(500, f"agent: No node found with name '{node}'")
    return web.Response(status=200)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/agent/self", self_info),
        web.get("/v1/agent/members", members),
        web.get("/v1/agent/version", version),
        web.get("/v1/agent/services", services),
        web.get("/v1/agent/service/{id}", service),
        web.get("/v1/agent/checks", checks),
        web.put("/v1/agent/service/register", service_register),
        web.put("/v1/agent/service/deregister/{id}", service_deregister),
        web.put("/v1/agent/service/maintenance/{id}", service_maintenance),
        web.put("/v1/agent/check/register", check_register),
        web.put("/v1/agent/check/deregister/{id}", check_deregister),
        web.put("/v1/agent/check/pass/{id}", _ttl_handler(HEALTH_PASSING)),
        web.put("/v1/agent/check/warn/{id}", _ttl_handler(HEALTH_WARNING)),
        web.put("/v1/agent/check/fail/{id}", _ttl_handler(HEALTH_CRITICAL)),
        web.put("/v1/agent/check/update/{id}", check_update),
        web.put("/v1/agent/maintenance", node_maintenance),
        web.get("/v1/agent/health/service/id/{id}", health_by_id),
        web.get("/v1/agent/health/service/name/{name}", health_by_name),
        web.put("/v1/agent/token/{kind}", set_token),
        web.put("/v1/agent/reload", reload),
        web.put("/v1/agent/leave", leave),
        web.put("/v1/agent/join/{address}", join),
        web.put("/v1/agent/force-leave/{node}", force_leave),
    ]
