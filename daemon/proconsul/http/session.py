"""`/v1/session/...`: sessions, the basis of Consul's locks and leader election.

Owns decoding session create requests with Consul's defaults (node = this agent, checks =
`serfHealth`, lock delay 15s, behaviour `release`, TTL between `session_ttl_min` and 24h),
destroy/renew, and the blocking reads info/node/list. TTL expiry is the leader's job
(`proconsul.server.leader.SessionTimers`); renew re-arms it.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from proconsul.durations import format_duration, parse_duration
from proconsul.http import acl_gate
from proconsul.http.appkeys import AGENT
from proconsul.http.common import (
    HTTPError,
    bad_request,
    check_dc,
    get_key,
    json_response,
    query_options,
    read_json,
)
from proconsul.state import commands
from proconsul.state.records import Session
from proconsul.structs import SERF_CHECK_ID

MAX_LOCK_DELAY_S = 60.0
MAX_SESSION_TTL_S = 86400.0
# Consul reads a bare LockDelay number below this as seconds rather than nanoseconds.
_LOCK_DELAY_SECONDS_THRESHOLD = 1000


def _lock_delay(value: Any) -> float:
    if isinstance(value, bool):
        raise bad_request("Request decode failed: LockDelay must be a duration")
    if isinstance(value, (int, float)):
        return float(value) if value < _LOCK_DELAY_SECONDS_THRESHOLD else value / 1e9
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError:
            raise bad_request(f"Request decode failed: invalid LockDelay {value!r}") from None
    raise bad_request("Request decode failed: LockDelay must be a duration")


def decode_session(body: Any, node_name: str, session_ttl_min_s: float) -> Session:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: expected a JSON object")
    name = get_key(body, "Name") or ""
    node = get_key(body, "Node") or node_name
    if not isinstance(name, str) or not isinstance(node, str):
        raise bad_request("Request decode failed: Name and Node must be strings")
    lock_delay_s = 15.0
    raw_delay = get_key(body, "LockDelay")
    if raw_delay is not None:
        lock_delay_s = _lock_delay(raw_delay)
    if not 0 <= lock_delay_s <= MAX_LOCK_DELAY_S:
        raise bad_request(f"Invalid LockDelay: must be between 0s and {MAX_LOCK_DELAY_S:g}s")
    behavior = get_key(body, "Behavior") or "release"
    if behavior not in ("release", "delete"):
        raise bad_request(f"Invalid Behavior setting '{behavior}'")
    checks = get_key(body, "Checks")
    node_checks = get_key(body, "NodeChecks")
    service_checks = get_key(body, "ServiceChecks")
    for label, value in (("Checks", checks), ("NodeChecks", node_checks)):
        if value is not None and (not isinstance(value, list) or not all(isinstance(c, str) for c in value)):
            raise bad_request(f"Request decode failed: {label} must be a list of check IDs")
    if checks is None and node_checks is None and service_checks is None:
        node_checks = [SERF_CHECK_ID]
    all_node_checks = list(dict.fromkeys((node_checks or []) + (checks or [])))
    parsed_service_checks: list[tuple[str, str]] = []
    if service_checks is not None:
        if not isinstance(service_checks, list):
            raise bad_request("Request decode failed: ServiceChecks must be a list")
        for item in service_checks:
            cid = get_key(item, "ID") if isinstance(item, dict) else None
            if not isinstance(cid, str) or not cid:
                raise bad_request("Request decode failed: each ServiceChecks item needs an ID")
            parsed_service_checks.append((cid, str(get_key(item, "Namespace") or "")))
    ttl_text = ""
    raw_ttl = get_key(body, "TTL")
    if raw_ttl:
        if not isinstance(raw_ttl, str):
            raise bad_request("Request decode failed: TTL must be a duration string")
        try:
            ttl_s = parse_duration(raw_ttl)
        except ValueError:
            raise bad_request(f"Request decode failed: invalid TTL {raw_ttl!r}") from None
        low = session_ttl_min_s
        if ttl_s != 0 and not low <= ttl_s <= MAX_SESSION_TTL_S:
            raise bad_request(
                f"Invalid Session TTL '{format_duration(ttl_s)}', must be between "
                f"[{format_duration(low)}={format_duration(MAX_SESSION_TTL_S)}]"
            )
        ttl_text = format_duration(ttl_s) if ttl_s else ""
    return Session(
        id=str(uuid.uuid4()),
        name=name,
        node=node,
        node_checks=tuple(all_node_checks),
        service_checks=tuple(parsed_service_checks),
        lock_delay_ns=int(round(lock_delay_s * 1e9)),
        behavior=behavior,
        ttl=ttl_text,
    )


def _path_id(request: web.Request, key: str, missing: str) -> str:
    """The session ID or node name ending the path; Consul's routes are prefixes, so an empty one
    reaches its handler and is a 400 with `missing`."""
    value = request.match_info.get(key, "")
    if not value:
        raise bad_request(missing)
    return value


async def create(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    check_dc(request)
    body = await read_json(request, allow_empty=True)
    session = decode_session(body, agent.node_name, agent.config.session_ttl_min_s)
    acl_gate.require(request, lambda authz: authz.require("session", session.node, "write"))
    await agent.server.write(commands.SessionOp("create", session))
    await agent.touch_session(session)
    # Consul's SessionCreate and SessionDestroy set no query metadata: no X-Consul-Index.
    return json_response(request, {"ID": session.id})


async def destroy(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    check_dc(request)
    sid = _path_id(request, "id", "Missing session")
    await agent.server.write(commands.SessionOp("destroy", Session(id=sid)))
    agent.session_timers.disarm(sid)
    return json_response(request, True)


async def renew(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    check_dc(request)
    sid = _path_id(request, "id", "Missing session")
    # The leader looks the session up and re-arms its TTL (client agents hold no sessions).
    sessions = await agent.renew_session(sid)
    if not sessions:
        raise HTTPError(404, f"Session id '{sid}' not found")
    return json_response(request, sessions)


async def _read(request: web.Request, name: str, args: dict[str, str]) -> web.Response:
    agent = request.app[AGENT]
    opts = query_options(request)
    meta, sessions = await agent.server.query(name, args, opts)
    return json_response(request, sessions, meta)


async def info(request: web.Request) -> web.Response:
    return await _read(request, "Session.Get", {"id": _path_id(request, "id", "Missing session")})


async def node_list(request: web.Request) -> web.Response:
    return await _read(request, "Session.NodeSessions", {"node": _path_id(request, "node", "Missing node name")})


async def list_all(request: web.Request) -> web.Response:
    return await _read(request, "Session.List", {})


def routes() -> list[web.RouteDef]:
    return [
        web.put("/v1/session/create", create),
        web.put("/v1/session/destroy/{id}", destroy),
        web.put("/v1/session/destroy/", destroy),
        web.put("/v1/session/renew/{id}", renew),
        web.put("/v1/session/renew/", renew),
        web.get("/v1/session/info/{id}", info),
        web.get("/v1/session/info/", info),
        web.get("/v1/session/node/{node}", node_list),
        web.get("/v1/session/node/", node_list),
        web.get("/v1/session/list", list_all),
    ]
