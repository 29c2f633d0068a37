"""`/v1/txn`: atomic multi-operation transactions over KV, nodes, services, checks and sessions.

Owns decoding Consul's transaction body (`[{"KV": {"Verb", "Key", "Value"(base64), "Flags",
"Index", "Session"}}]`, `{"Node": {"Verb", "Node": {...}}}`, `{"Service": {"Verb", "Node",
"Service": {...}}}`, `{"Check": {"Verb", "Check": {...}}}`, `{"Session": {"Verb": "delete",
"Session": {"ID"}}}`; catalog verbs set, cas, get, delete, delete-cas with `ModifyIndex` as the
CAS index), its limits (128 operations, `txn_max_req_len` bytes: 413), answering
read-only transactions as reads under the consistency mode asked for, and rendering results
(200 `{Results, Errors: null}`) or rollbacks (409 `{Results: null, Errors: [{OpIndex, What}]}`),
read-only ones carrying Consul's untagged QueryMeta fields in the body.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from typing import Any

from aiohttp import web

from proconsul import safe_json
from proconsul.acl.authorizer import PermissionDenied
from proconsul.http import acl_gate
from proconsul.http.appkeys import AGENT
from proconsul.http.catalog import decode_catalog_check, decode_node_service
from proconsul.http.common import (
    HTTPError,
    bad_request,
    get_key,
    json_response,
    query_options,
    read_body,
    target_dc,
)
from proconsul.rpc_api import QueryMeta
from proconsul.server import acl_authz
from proconsul.state import commands, render
from proconsul.state.fsm import TxnError, TxnResult
from proconsul.state.records import DirEntry, Node, ServiceInstance

MAX_TXN_OPS = 128
UINT64_MAX = 2**64 - 1


def _uint64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= UINT64_MAX


def _index(raw: dict[str, Any], i: int) -> int:
    index = get_key(raw, "ModifyIndex") or 0
    if not _uint64(index):
        raise bad_request(f"Operation {i}: ModifyIndex must be an integer in the uint64 range")
    return int(index)


def _verb(op: dict[str, Any], kind: str, verbs: frozenset[str], i: int) -> str:
    verb = get_key(op, "Verb")
    if verb not in verbs:
        raise bad_request(f"Invalid {kind} verb {verb!r} in operation {i}")
    return str(verb)


def _string_map(value: Any, what: str, i: int) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"Operation {i}: {what} must be an object")
    return {str(k): str(v) for k, v in value.items()}


def _decode_kv(kv: Any, i: int) -> commands.KVS:
    if not isinstance(kv, dict):
        raise bad_request(f"Operation {i}: KV must be an object")
    verb = get_key(kv, "Verb")
    if verb not in commands.KV_VERBS:
        raise bad_request(f"Invalid KV verb {verb!r} in operation {i}")
    key = get_key(kv, "Key")
    if not isinstance(key, str):
        raise bad_request(f"Operation {i}: Key must be a string")
    raw_value = get_key(kv, "Value")
    value = None
    if raw_value is not None:
        if not isinstance(raw_value, str):
            raise bad_request(f"Operation {i}: Value must be a base64 string")
        try:
            value = base64.b64decode(raw_value, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"Operation {i}: Value is not valid base64") from None
    flags = get_key(kv, "Flags") or 0
    index = get_key(kv, "Index") or 0
    session = get_key(kv, "Session") or ""
    # Consul's Flags and Index are uint64: anything outside 0..2^64-1 (or a bool) is refused
    # here rather than failing later in the msgpack encoder.
    if not _uint64(flags) or not _uint64(index):
        raise bad_request(f"Operation {i}: Flags and Index must be integers in the uint64 range")
    if not isinstance(session, str):
        raise bad_request(f"Operation {i}: Session must be a string")
    entry = DirEntry(key=key, value=value, flags=flags, session=session, modify_index=index)
    return commands.KVS(verb, entry)


def _decode_node(op: Any, i: int, datacenter: str) -> commands.TxnNodeOp:
    if not isinstance(op, dict):
        raise bad_request(f"Operation {i}: Node must be an object")
    verb = _verb(op, "Node", commands.CATALOG_VERBS, i)
    raw = get_key(op, "Node")
    if not isinstance(raw, dict):
        raise bad_request(f"Operation {i}: Node.Node must be an object")
    name, address, node_id = get_key(raw, "Node") or "", get_key(raw, "Address") or "", get_key(raw, "ID") or ""
    if not all(isinstance(v, str) for v in (name, address, node_id)):
        raise bad_request(f"Operation {i}: Node, Address and ID must be strings")
    node = Node(
        node=name, id=node_id, address=address, datacenter=datacenter,
        tagged_addresses=_string_map(get_key(raw, "TaggedAddresses"), "TaggedAddresses", i),
        meta=_string_map(get_key(raw, "Meta"), "Meta", i),
        modify_index=_index(raw, i),
    )
    return commands.TxnNodeOp(verb, node)


def _decode_service(op: Any, i: int) -> commands.TxnServiceOp:
    if not isinstance(op, dict):
        raise bad_request(f"Operation {i}: Service must be an object")
    verb = _verb(op, "Service", commands.CATALOG_VERBS, i)
    node = get_key(op, "Node") or ""
    if not isinstance(node, str):
        raise bad_request(f"Operation {i}: Service.Node must be a string")
    raw = get_key(op, "Service")
    if not isinstance(raw, dict):
        raise bad_request(f"Operation {i}: Service.Service must be an object")
    if verb in ("set", "cas"):
        svc = decode_node_service(raw, node)
    else:  # get and deletes name the service by ID only
        sid = get_key(raw, "ID") or ""
        if not isinstance(sid, str):
            raise bad_request(f"Operation {i}: Service.ID must be a string")
        svc = ServiceInstance(node=node, id=sid, service=str(get_key(raw, "Service") or ""))
    return commands.TxnServiceOp(verb, node, replace(svc, modify_index=_index(raw, i)))


def _decode_check(op: Any, i: int) -> commands.TxnCheckOp:
    if not isinstance(op, dict):
        raise bad_request(f"Operation {i}: Check must be an object")
    verb = _verb(op, "Check", commands.CATALOG_VERBS, i)
    raw = get_key(op, "Check")
    if not isinstance(raw, dict):
        raise bad_request(f"Operation {i}: Check.Check must be an object")
    node = get_key(raw, "Node") or ""
    if not isinstance(node, str):
        raise bad_request(f"Operation {i}: Check.Node must be a string")
    check = decode_catalog_check(raw, node, None)
    return commands.TxnCheckOp(verb, replace(check, modify_index=_index(raw, i)))


def _decode_session(op: Any, i: int) -> commands.TxnSessionOp:
    if not isinstance(op, dict):
        raise bad_request(f"Operation {i}: Session must be an object")
    verb = _verb(op, "Session", commands.SESSION_VERBS, i)
    raw = get_key(op, "Session")
    sid = get_key(raw, "ID") if isinstance(raw, dict) else None
    if not isinstance(sid, str):
        raise bad_request(f"Operation {i}: Session.ID must be a string")
    return commands.TxnSessionOp(verb, sid)


def decode_ops(body: Any, datacenter: str = "") -> list[commands.TxnOp]:
    if not isinstance(body, list):
        raise bad_request("Failed to parse body: expected a JSON array of operations")
    if len(body) > MAX_TXN_OPS:
        raise HTTPError(413, f"Transaction contains too many operations ({len(body)} > {MAX_TXN_OPS})")
    ops: list[commands.TxnOp] = []
    for i, raw in enumerate(body):
        if not isinstance(raw, dict):
            raise bad_request(f"Failed to parse body: operation {i} is not an object")
        kinds = [k for k in ("KV", "Node", "Service", "Check", "Session") if get_key(raw, k) is not None]
        if len(kinds) != 1:
            # Consul's TxnOp holds one operation; Intention ops are deprecated there, absent here.
            got = ", ".join(sorted(str(k) for k in raw)) or "nothing"
            raise bad_request(f"Operation {i}: expected exactly one of KV, Node, Service, Check, Session (got {got})")
        kind = kinds[0]
        value = get_key(raw, kind)
        if kind == "KV":
            ops.append(_decode_kv(value, i))
        elif kind == "Node":
            ops.append(_decode_node(value, i, datacenter))
        elif kind == "Service":
            ops.append(_decode_service(value, i))
        elif kind == "Check":
            ops.append(_decode_check(value, i))
        else:
            ops.append(_decode_session(value, i))
    return ops


def _render(request: web.Request, result: TxnResult) -> web.Response:
    # A write transaction answers with no X-Consul-* headers at all, as Consul's handler sets none.
    if result.errors:
        body = {"Results": None, "Errors": [{"OpIndex": e.op_index, "What": e.what} for e in result.errors]}
        return json_response(request, body, status=409)
    # Consul's state store builds its results as an empty (not nil) slice: `[]` when no operation
    # returns an entry (deletes, check-not-exists).
    results = [render.txn_result(r) for r in result.results if r is not None]
    return json_response(request, {"Results": results, "Errors": None})


def _read_body(answer: dict[str, Any], meta: QueryMeta) -> dict[str, Any]:
    """Consul's TxnReadResponse embeds QueryMeta without JSON tags, so its fields ride in the body.

    The read is not a blocking query, so Index and ConsistencyLevel keep their zero values;
    LastContact is a Go duration (nanoseconds); Backend is the blocking-query backend (0).
    """
    errors = answer.get("Errors")
    return {
        "Results": None if errors else answer["Results"],
        "Errors": errors or None,
        "Index": 0,
        "LastContact": meta.last_contact_ms * 1_000_000,
        "KnownLeader": meta.known_leader,
        "ConsistencyLevel": "",
        "NotModified": False,
        "Backend": 0,
        "ResultsFilteredByACLs": False,
    }


async def txn(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    dc = target_dc(request)
    limit = agent.config.limits.txn_max_req_len
    body_bytes = await read_body(request, limit, f"Request body too large, max size: {limit} bytes")
    try:
        body = safe_json.loads(body_bytes or b"null")
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and UnsafeJSON alike
        raise bad_request(f"Failed to parse body: {exc}") from None
    ops = decode_ops(body, agent.config.datacenter if not dc else dc)
    # Every operation is checked before any runs (key, node, service or session permission per
    # op); as Consul, the refused ones are the transaction's errors (409), and nothing runs.
    authz = acl_gate.authorizer(request)
    denied = []
    for i, op in enumerate(ops):
        try:
            acl_authz.authorize_txn_op(authz, op)
        except PermissionDenied as exc:
            denied.append(TxnError(i, str(exc)))
    if denied:
        return _render(request, TxnResult(errors=tuple(denied)))
    if not any(commands.txn_op_writes(op) for op in ops):
        opts = query_options(request)
        args = {"ops": [commands.encode_txn_op(op) for op in ops]}
        meta, answer = await agent.server.query("Txn.Read", args, opts)
        status = 409 if answer.get("Errors") else 200
        resp = json_response(request, _read_body(answer, meta), status=status)
        # Only these two: the read is not blocking, so Consul sets no index or consistency header.
        resp.headers["X-Consul-KnownLeader"] = "true" if meta.known_leader else "false"
        resp.headers["X-Consul-LastContact"] = str(meta.last_contact_ms)
        return resp
    _, result = await agent.server.write(commands.Txn(tuple(ops)), datacenter=dc)
    return _render(request, result)


def routes() -> list[web.RouteDef]:
    return [web.put("/v1/txn", txn)]
