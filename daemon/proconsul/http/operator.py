"""`/v1/operator/raft/configuration`, `/v1/operator/raft/peer`, `/v1/operator/raft/transfer-leader`,
`/v1/operator/raft/recover` (proconsul's own, see docs/RECOVERY.md),
`/v1/operator/autopilot/{configuration,health,state}`, `/v1/operator/usage` and `/v1/snapshot`.

Thin HTTP over `proconsul.server.operator.Operator` (which forwards to the leader unless `?stale`).
Snapshot bodies are binary gzipped tars (see `proconsul.server.snapshot`); a damaged archive given to
`PUT /v1/snapshot` is refused with 400 before anything is proposed.
"""

from __future__ import annotations

from aiohttp import web

from proconsul.http.appkeys import AGENT
from proconsul.http.common import (
    HTTPError,
    bad_request,
    check_dc,
    flag,
    json_response,
    query_options,
    read_json,
)
from proconsul.raft.recovery import RecoveryError
from proconsul.server.autopilot_health import parse_body as parse_autopilot_body
from proconsul.server.operator import Operator
from proconsul.wire import MAX_FRAME_BYTES

# A restore travels to the leader in one RPC frame (and then in one log entry).
MAX_SNAPSHOT_BYTES = MAX_FRAME_BYTES - (1 << 20)


def _operator(request: web.Request) -> Operator:
    return request.app[AGENT].operator


async def raft_configuration(request: web.Request) -> web.Response:
    check_dc(request)
    conf = await _operator(request).raft_configuration(stale=flag(request, "stale"))
    return json_response(request, conf)


async def raft_peer(request: web.Request) -> web.Response:
    check_dc(request)
    peer_id = request.query.get("id", "")
    address = request.query.get("address", "")
    if not peer_id and not address:
        raise bad_request("Must specify either ?id with the server's ID or ?address with IP:port of peer to remove")
    if peer_id and address:
        raise bad_request("Must specify only one of ?id or ?address")
    await _operator(request).remove_peer(peer_id, address)
    return web.Response(status=200)


async def raft_transfer_leader(request: web.Request) -> web.Response:
    """`POST /v1/operator/raft/transfer-leader[?id=]`: Consul answers `{"Success": true}`."""
    check_dc(request)
    await _operator(request).transfer_leader(request.query.get("id", ""))
    return json_response(request, {"Success": True})


async def raft_recover_state(request: web.Request) -> web.Response:
    """`GET /v1/operator/raft/recover`: this server's Raft position, for a live recovery."""
    try:
        return json_response(request, _operator(request).recovery_state())
    except RecoveryError as exc:
        raise bad_request(str(exc)) from None


async def raft_recover(request: web.Request) -> web.Response:
    """`PUT /v1/operator/raft/recover`: install a recovery planned from every survivor's state.
    409 when refused (this server has a leader, its log moved, it is not a new voter)."""
    body = await read_json(request)
    op = _operator(request)
    if op.raft is None:
        raise bad_request("this agent runs no Raft server with a data directory (a client agent or -dev)")
    try:
        reply = await op.recover(body)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    except RecoveryError as exc:
        raise HTTPError(409, str(exc)) from None
    return json_response(request, reply)


async def autopilot_get_config(request: web.Request) -> web.Response:
    check_dc(request)
    return json_response(request, await _operator(request).autopilot.get_config(stale=flag(request, "stale")))


async def autopilot_set_config(request: web.Request) -> web.Response:
    """PUT: the body replaces the configuration (fields left out take their zero value, as in
    Consul); `?cas=<ModifyIndex>` makes it a check-and-set answered `true`/`false`."""
    check_dc(request)
    cas: int | None = None
    if "cas" in request.query:
        try:
            cas = int(request.query["cas"])
            if cas < 0:
                raise ValueError("negative")
        except ValueError:
            raise bad_request(f"Error parsing cas value: {request.query['cas']!r} is not an index") from None
    try:
        fields = parse_autopilot_body(await read_json(request))
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    ok = await _operator(request).autopilot.set_config(fields, cas)
    return json_response(request, ok if cas is not None else True)


async def autopilot_health(request: web.Request) -> web.Response:
    """Consul answers 429 (with the same body) while any server is unhealthy."""
    check_dc(request)
    reply = await _operator(request).autopilot.health(stale=flag(request, "stale"))
    return json_response(request, reply, status=200 if reply.get("Healthy") else 429)


async def autopilot_state(request: web.Request) -> web.Response:
    check_dc(request)
    return json_response(request, await _operator(request).autopilot.state(stale=flag(request, "stale")))


# Consul's connect kinds, each counted in ConnectServiceInstances (always present, 0 when none).
_CONNECT_KINDS = ("api-gateway", "connect-native", "connect-proxy", "ingress-gateway", "mesh-gateway",
                  "terminating-gateway")


async def usage(request: web.Request) -> web.Response:
    """`GET /v1/operator/usage`: catalog counts of this datacenter, in Consul's shape (a blocking
    read on the catalog). Billable instances leave out the `consul` service and connect proxies
    and gateways, as Consul counts them."""
    check_dc(request)
    agent = request.app[AGENT]
    opts = query_options(request)
    meta, instances = await agent.server.query("Catalog.ListServices", {"node_meta": {}, "instances": True}, opts)
    _, nodes = await agent.server.query("Catalog.ListNodes", {"node_meta": {}, "near": ""}, opts)
    connect = dict.fromkeys(_CONNECT_KINDS, 0)
    billable = 0
    for inst in instances:
        kind = inst.get("ServiceKind") or ""
        if inst.get("ServiceConnect", {}).get("Native"):
            connect["connect-native"] += 1
        if kind in connect:
            connect[kind] += 1
        elif inst.get("ServiceName") != "consul":
            billable += 1
    dc = agent.config.datacenter
    body = {
        "Usage": {dc: {
            "Services": len({inst.get("ServiceName") for inst in instances}),
            "ServiceInstances": len(instances),
            "ConnectServiceInstances": connect,
            "BillableServiceInstances": billable,
            "Nodes": len(nodes),
        }},
        "Index": meta.index,
        "LastContact": meta.last_contact_ms,
        "KnownLeader": meta.known_leader,
        "ConsistencyLevel": meta.consistency,
        "NotModified": False,
        "Backend": 0,
        "ResultsFilteredByACLs": False,
    }
    return json_response(request, body, meta)


async def snapshot_save(request: web.Request) -> web.Response:
    check_dc(request)
    index, blob = await _operator(request).snapshot_save(stale=flag(request, "stale"))
    server = request.app[AGENT].server
    headers = {
        "X-Consul-Index": str(max(index, 1)),
        "X-Consul-KnownLeader": "true" if server.consensus.leader_address() else "false",
        "X-Consul-LastContact": str(server.consensus.last_contact_ms()),
        "Content-Type": "application/x-gzip",
    }
    return web.Response(body=blob, headers=headers)


async def snapshot_restore(request: web.Request) -> web.Response:
    check_dc(request)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > MAX_SNAPSHOT_BYTES:
            raise HTTPError(413, f"Snapshot larger than {MAX_SNAPSHOT_BYTES} bytes")
        chunks.append(chunk)
    await _operator(request).snapshot_restore(b"".join(chunks))  # SnapshotError -> 400
    return web.Response(status=200)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/operator/raft/configuration", raft_configuration),
        web.delete("/v1/operator/raft/peer", raft_peer),
        web.post("/v1/operator/raft/transfer-leader", raft_transfer_leader),
        web.get("/v1/operator/raft/recover", raft_recover_state),
        web.put("/v1/operator/raft/recover", raft_recover),
        web.get("/v1/operator/autopilot/configuration", autopilot_get_config),
        web.put("/v1/operator/autopilot/configuration", autopilot_set_config),
        web.get("/v1/operator/autopilot/health", autopilot_health),
        web.get("/v1/operator/autopilot/state", autopilot_state),
        web.get("/v1/operator/usage", usage),
        web.get("/v1/snapshot", snapshot_save),
        web.put("/v1/snapshot", snapshot_restore),
    ]
