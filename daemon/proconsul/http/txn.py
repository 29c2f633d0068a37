"""`/v1/txn`: atomic multi-operation KV transactions.

Owns decoding Consul's transaction body (`[{"KV": {"Verb", "Key", "Value"(base64), "Flags",
"Index", "Session"}}]`), its limits (128 operations, `txn_max_req_len` bytes: 413), answering
read-only transactions as reads under the consistency mode asked for, and rendering results
(200 `{Results, Errors: null}`) or rollbacks (409 `{Results: null, Errors: [{OpIndex, What}]}`).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from aiohttp import web

from proconsul import safe_json
from proconsul.http.common import (
    HTTPError,
    bad_request,
    get_key,
    json_response,
    query_options,
    read_body,
    target_dc,
)
from proconsul.state import commands, render
from proconsul.state.fsm import TxnResult
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


def _render(request: web.Request, result: TxnResult, **kw: Any) -> web.Response:
    if result.errors:
        body = {"Results": None, "Errors": [{"OpIndex": e.op_index, "What": e.what} for e in result.errors]}
        return json_response(request, body, status=409, **kw)
    results = [{"KV": render.dir_entry(e)} for e in result.results if e is not None]
    return json_response(request, {"Results": results or None, "Errors": None}, **kw)


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
    if all(op.op not in commands.KV_WRITE_VERBS for op in ops):
        opts = query_options(request)
        args = {"ops": [[op.op, op.entry.to_wire()] for op in ops]}
        meta, answer = await agent.server.query("Txn.Read", args, opts)
        if "Errors" in answer:
            return json_response(request, {"Results": None, "Errors": answer["Errors"]}, meta, status=409)
        return json_response(request, {"Results": answer["Results"] or None, "Errors": None}, meta)
    wmeta, result = await agent.server.write(commands.Txn(tuple(ops)), datacenter=dc)
    return _render(request, result, index=wmeta.index)


def routes() -> list[web.RouteDef]:
    return [web.put("/v1/txn", txn)]
