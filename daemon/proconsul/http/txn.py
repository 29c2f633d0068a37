"""`/v1/txn`: atomic multi-operation KV transactions.

Owns decoding Consul's transaction body (`[{"KV": {"Verb", "Key", "Value"(base64), "Flags",
"Index", "Session"}}]`), its limits (128 operations, `txn_max_req_len` bytes: 413), answering
read-only transactions as reads under the consistency mode asked for, and rendering results
(200 `{Results, Errors: null}`) or rollbacks (409 `{Results: null, Errors: [{OpIndex, What}]}`),
read-only ones carrying Consul's untagged QueryMeta fields in the body.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from aiohttp import web

from proconsul import safe_json
from proconsul.acl.authorizer import PermissionDenied
from proconsul.http import acl_gate
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
from proconsul.state.records import DirEntry

MAX_TXN_OPS = 128
UINT64_MAX = 2**64 - 1


def _uint64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= UINT64_MAX


def decode_ops(body: Any) -> list[commands.KVS]:
    if not isinstance(body, list):
        raise bad_request("Failed to parse body: expected a JSON array of operations")
    if len(body) > MAX_TXN_OPS:
        raise HTTPError(413, f"Transaction contains too many operations ({len(body)} > {MAX_TXN_OPS})")
    ops: list[commands.KVS] = []
    for i, raw in enumerate(body):
        if not isinstance(raw, dict):
            raise bad_request(f"Failed to parse body: operation {i} is not an object")
        kv = get_key(raw, "KV")
        if kv is None:
            kinds = ", ".join(sorted(raw)) or "nothing"
            raise bad_request(f"Operation {i}: only KV operations are supported (got {kinds})")
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
        ops.append(commands.KVS(verb, entry))
    return ops


def _render(request: web.Request, result: TxnResult) -> web.Response:
    # A write transaction answers with no X-Consul-* headers at all, as Consul's handler sets none.
    if result.errors:
        body = {"Results": None, "Errors": [{"OpIndex": e.op_index, "What": e.what} for e in result.errors]}
        return json_response(request, body, status=409)
    # Consul's state store builds its results as an empty (not nil) slice: `[]` when no operation
    # returns an entry (deletes, check-not-exists).
    results = [{"KV": render.dir_entry(e)} for e in result.results if e is not None]
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
    agent = request.app["agent"]
    dc = target_dc(request)
    limit = agent.config.limits.txn_max_req_len
    body_bytes = await read_body(request, limit, f"Request body too large, max size: {limit} bytes")
    try:
        body = safe_json.loads(body_bytes or b"null")
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and UnsafeJSON alike
        raise bad_request(f"Failed to parse body: {exc}") from None
    ops = decode_ops(body)
    # Every operation is checked before any runs (key:read / key:write / key:list per op); as
    # Consul, the refused ones are the transaction's errors (409), and nothing runs.
    authz = acl_gate.authorizer(request)
    denied = []
    for i, op in enumerate(ops):
        try:
            acl_authz.authorize_kv(authz, op)
        except PermissionDenied as exc:
            denied.append(TxnError(i, str(exc)))
    if denied:
        return _render(request, TxnResult(errors=tuple(denied)))
    if all(op.op not in commands.KV_WRITE_VERBS for op in ops):
        opts = query_options(request)
        args = {"ops": [[op.op, op.entry.to_wire()] for op in ops]}
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
