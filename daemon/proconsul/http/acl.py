"""`/v1/acl/...` while ACLs are enabled: bootstrap, tokens, policies and roles.

Owns the ACL HTTP API in Consul's shapes and status codes: decoding token, policy and role bodies
(policy links by ID or name, service and node identities, expiration), the permission each call
needs (`acl:read` for reads, `acl:write` for writes, none for bootstrap and `token/self`), hiding
SecretIDs from callers without `acl:write`, the bootstrap reset file (`<data_dir>/acl-bootstrap-reset`
read by the leader), and the FSM commands each write proposes. The records
themselves live in `proconsul.acl.records`, the tables in `state/acl.py`.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import replace
from typing import Any

from aiohttp import web

from proconsul.acl import rules as rules_mod
from proconsul.acl.authorizer import Authorizer, PermissionDenied
from proconsul.acl.records import (
    GLOBAL_MANAGEMENT_ID,
    ACLPolicy,
    ACLRole,
    ACLToken,
    Link,
    NodeIdentity,
    ServiceIdentity,
)
from proconsul.durations import parse_duration
from proconsul.http.acl_gate import authorizer
from proconsul.http.appkeys import ACL_RESOLVER, AGENT
from proconsul.http.common import HTTPError, bad_request, get_key, json_response, read_json, token
from proconsul.rpc_api import QueryOptions, RPCError
from proconsul.server.acl_resolver import ACLNotFound
from proconsul.state.commands import ACLOp, ACLOpKind
from proconsul.state.store import StoreError

HIDDEN = "<hidden>"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
_STALE = QueryOptions(allow_stale=True)
NOT_FOUND = "ACL not found"


def _need(request: web.Request, access: str) -> Authorizer:
    authz = authorizer(request)
    try:
        authz.require_single("acl", access)
    except PermissionDenied as exc:
        raise HTTPError(403, str(exc)) from None
    return authz


async def _query(request: web.Request, name: str, args: dict[str, Any]) -> Any:
    agent = request.app[AGENT]
    # Consistent with the writes that precede it on the same agent: default (leader) reads.
    _, result = await agent.server.query(name, args, QueryOptions())
    return result


# The store's refusals of an ACL write (state/acl.py), recognised by their text also when the
# write was refused on the leader and came back as an RPC error: the client's error, a 400.
_REFUSALS = ("Invalid ", "Cannot find", "cannot find", "Changing ", "Delete operation not permitted")


async def _write(request: web.Request, op: str, payload: Any) -> Any:
    agent = request.app[AGENT]
    try:
        meta, result = await agent.server.write(ACLOp(op, payload))
    except (StoreError, RPCError) as exc:
        if str(exc).startswith(_REFUSALS):
            raise bad_request(str(exc)) from None
        raise
    resolver = request.app.get(ACL_RESOLVER)
    if resolver is not None:
        resolver.invalidate()
    return meta, result


def _new_id() -> str:
    return str(uuid.uuid4())


def _now_rfc3339(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


# ------------------------------------------------------------------------------ bootstrap


async def bootstrap(request: web.Request) -> web.Response:
    body = await read_json(request, allow_empty=True)
    secret = get_key(body, "BootstrapSecret") if isinstance(body, dict) else None
    if secret is not None and (not isinstance(secret, str) or not _UUID.match(secret)):
        raise bad_request("Invalid BootstrapSecret: must be a UUID")
    now = dt.datetime.now(dt.UTC)
    tok = ACLToken(_new_id(), secret or _new_id(), "Bootstrap Token (Global Management)",
                   (Link(GLOBAL_MANAGEMENT_ID),), create_time=_now_rfc3339(now))
    try:
        # Reset index 0: the leader fills in its acl-bootstrap-reset file's (server/rpc.py).
        _, result = await _write(request, ACLOpKind.BOOTSTRAP, [tok.to_wire(), 0])
    except (StoreError, RPCError) as exc:  # RPCError: refused on the leader, forwarded back
        if "ACL bootstrap no longer allowed" in str(exc):
            raise HTTPError(403, f"Permission denied: {exc}") from None
        raise
    made = ACLToken.from_wire(result)
    return json_response(request, made.to_api(lambda pid: "global-management", lambda rid: ""))


# ------------------------------------------------------------------------------------ tokens


async def _links(request: web.Request, raw: Any, kind: str) -> tuple[Link, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise bad_request(f"Request decode failed: {kind} must be a list")
    out: list[Link] = []
    for item in raw:
        if not isinstance(item, dict):
            raise bad_request(f"Request decode failed: {kind} entries must be objects")
        lid, name = get_key(item, "ID") or "", get_key(item, "Name") or ""
        if not isinstance(lid, str) or not isinstance(name, str):
            raise bad_request(f"Request decode failed: {kind} ID and Name must be strings")
        query = "ACL.PolicyRead" if kind == "Policies" else "ACL.RoleRead"
        what = "policy" if kind == "Policies" else "role"
        if lid:
            found = await _query(request, query, {"id": lid})
            if found is None:
                raise bad_request(f"Cannot find {what} with ID {lid!r}")
        elif name:
            found = await _query(request, query, {"name": name})
            if found is None:
                raise bad_request(f"Cannot find {what} with name {name!r}")
            lid = found["ID"]
        else:
            raise bad_request(f"{kind} links must have an ID or a Name")
        if all(link.id != lid for link in out):
            out.append(Link(lid))
    return tuple(out)


def _service_identities(raw: Any) -> tuple[ServiceIdentity, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise bad_request("Request decode failed: ServiceIdentities must be a list")
    out = []
    for item in raw:
        name = get_key(item, "ServiceName") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise bad_request("Service identity is missing the service name field on this token")
        dcs = get_key(item, "Datacenters") or []
        if not isinstance(dcs, list) or not all(isinstance(d, str) for d in dcs):
            raise bad_request("Request decode failed: Datacenters must be a list of strings")
        out.append(ServiceIdentity(name, tuple(dcs)))
    return tuple(out)


def _node_identities(raw: Any) -> tuple[NodeIdentity, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise bad_request("Request decode failed: NodeIdentities must be a list")
    out = []
    for item in raw:
        name = get_key(item, "NodeName") if isinstance(item, dict) else None
        dc = get_key(item, "Datacenter") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise bad_request("Node identity is missing the node name field on this token")
        if not isinstance(dc, str) or not dc:
            raise bad_request("Node identity is missing the datacenter field on this token")
        out.append(NodeIdentity(name, dc))
    return tuple(out)


def _expiration(body: dict[str, Any], now: dt.datetime) -> tuple[str, float, float]:
    """(ExpirationTime text, ExpirationTTL seconds, expires-at epoch seconds) from the body."""
    ttl_raw, when_raw = get_key(body, "ExpirationTTL"), get_key(body, "ExpirationTime")
    if ttl_raw and when_raw:
        raise bad_request("Expiration TTL and Expiration Time cannot both be set")
    if ttl_raw:
        try:
            ttl = parse_duration(str(ttl_raw))
        except ValueError:
            raise bad_request(f"Invalid ExpirationTTL: {ttl_raw!r}") from None
        if ttl < 60 or ttl > 24 * 3600:
            raise bad_request(f"Token Expiration TTL '{ttl_raw}' should be between 1m0s and 24h0m0s")
        when = now + dt.timedelta(seconds=ttl)
        return _now_rfc3339(when), ttl, when.timestamp()
    if when_raw:
        try:
            when = dt.datetime.fromisoformat(str(when_raw).replace("Z", "+00:00"))
        except ValueError:
            raise bad_request(f"Invalid ExpirationTime: {when_raw!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        if when <= now:
            raise bad_request("ExpirationTime cannot be in the past")
        return _now_rfc3339(when), 0.0, when.timestamp()
    return "", 0.0, 0.0


async def _decode_token(request: web.Request, body: Any, accessor: str, secret: str) -> ACLToken:
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: expected a JSON object")
    desc = get_key(body, "Description") or ""
    if not isinstance(desc, str):
        raise bad_request("Request decode failed: Description must be a string")
    local = get_key(body, "Local") or False
    if not isinstance(local, bool):
        raise bad_request("Request decode failed: Local must be a boolean")
    now = dt.datetime.now(dt.UTC)
    expiration, ttl, at = _expiration(body, now)
    return ACLToken(
        accessor, secret, desc,
        await _links(request, get_key(body, "Policies"), "Policies"),
        await _links(request, get_key(body, "Roles"), "Roles"),
        _service_identities(get_key(body, "ServiceIdentities")),
        _node_identities(get_key(body, "NodeIdentities")),
        local, _now_rfc3339(now), expiration, ttl, at,
    )


def _given_id(body: Any, field: str) -> str:
    value = get_key(body, field) if isinstance(body, dict) else None
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or not _UUID.match(value):
        raise bad_request(f"Invalid {field}: must be a UUID")
    return value


def _shown(request: web.Request, token_json: dict[str, Any], authz: Authorizer) -> dict[str, Any]:
    if "SecretID" in token_json and not authz.allowed_single("acl", "write"):
        token_json = {**token_json, "SecretID": HIDDEN}
    return token_json


async def token_create(request: web.Request) -> web.Response:
    _need(request, "write")
    body = await read_json(request)
    accessor = _given_id(body, "AccessorID") or _new_id()
    secret = _given_id(body, "SecretID") or _new_id()
    tok = await _decode_token(request, body, accessor, secret)
    await _write(request, ACLOpKind.TOKEN_CREATE, tok.to_wire())
    return json_response(request, await _query(request, "ACL.TokenRead", {"accessor": accessor}))


async def _existing_token(request: web.Request, accessor: str) -> dict[str, Any]:
    found = await _query(request, "ACL.TokenRead", {"accessor": accessor})
    if found is None:
        raise HTTPError(403, NOT_FOUND)
    return dict(found)


async def token_read(request: web.Request) -> web.Response:
    authz = _need(request, "read")
    found = await _existing_token(request, request.match_info["id"])
    return json_response(request, _shown(request, found, authz))


async def token_self(request: web.Request) -> web.Response:
    resolver = request.app[ACL_RESOLVER]
    secret = resolver.effective_secret(token(request))
    found = await _query(request, "ACL.TokenRead", {"secret": secret})
    if found is None:
        raise HTTPError(403, NOT_FOUND)
    return json_response(request, found)


async def token_update(request: web.Request) -> web.Response:
    _need(request, "write")
    accessor = request.match_info["id"]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: expected a JSON object")
    given = _given_id(body, "AccessorID")
    if given and given != accessor:
        raise bad_request("AccessorID in the request body does not match the one in the URL")
    old = await _existing_token(request, accessor)
    secret = _given_id(body, "SecretID")
    if secret and secret != old["SecretID"]:
        raise bad_request("Changing a token's SecretID is not permitted")
    if isinstance(body, dict) and get_key(body, "ExpirationTTL"):
        raise bad_request("Cannot change expiration time")
    when = get_key(body, "ExpirationTime") if isinstance(body, dict) else None
    if when and _epoch(str(when)) != _epoch(old.get("ExpirationTime", "")):
        raise bad_request("Cannot change expiration time")
    body = {k: v for k, v in body.items() if k.lower() not in ("expirationtime", "expirationttl")}
    tok = await _decode_token(request, body, accessor, old["SecretID"])
    # The expiration and creation time are fixed when a token is created (Consul refuses changes).
    tok = replace(tok, create_time=old.get("CreateTime", ""), expiration_time=old.get("ExpirationTime", ""),
                  expires_at=_epoch(old.get("ExpirationTime", "")), expiration_ttl_s=_ttl_s(old))
    await _write(request, ACLOpKind.TOKEN_UPDATE, tok.to_wire())
    return json_response(request, await _query(request, "ACL.TokenRead", {"accessor": accessor}))


def _ttl_s(old: dict[str, Any]) -> float:
    ttl = old.get("ExpirationTTL")
    return parse_duration(ttl) if isinstance(ttl, str) and ttl else 0.0


def _epoch(text: str) -> float:
    if not text:
        return 0.0
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def token_clone(request: web.Request) -> web.Response:
    _need(request, "write")
    old = await _existing_token(request, request.match_info["id"])
    body = await read_json(request, allow_empty=True)
    desc = get_key(body, "Description") if isinstance(body, dict) else None
    wire_old = {**old, "Description": desc if isinstance(desc, str) and desc else old.get("Description", "")}
    clone = await _decode_token(request, {k: v for k, v in wire_old.items()
                                          if k not in ("ExpirationTime", "ExpirationTTL")}, _new_id(), _new_id())
    clone = replace(clone, expiration_time=old.get("ExpirationTime", ""), expires_at=_epoch(old.get("ExpirationTime", "")))
    await _write(request, ACLOpKind.TOKEN_CREATE, clone.to_wire())
    return json_response(request, await _query(request, "ACL.TokenRead", {"accessor": clone.accessor_id}))


async def token_delete(request: web.Request) -> web.Response:
    _need(request, "write")
    await _write(request, ACLOpKind.TOKEN_DELETE, request.match_info["id"])
    return json_response(request, True)


async def token_list(request: web.Request) -> web.Response:
    authz = _need(request, "read")
    args = {k: request.query[k] for k in ("policy", "role", "servicename", "authmethod") if request.query.get(k)}
    tokens = await _query(request, "ACL.TokenList", args)
    return json_response(request, [_shown(request, t, authz) for t in tokens])


# ---------------------------------------------------------------------------------- policies


def _decode_policy(body: Any, policy_id: str) -> ACLPolicy:
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: expected a JSON object")
    name = get_key(body, "Name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise bad_request("Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed")
    desc = get_key(body, "Description") or ""
    text = get_key(body, "Rules") or ""
    dcs = get_key(body, "Datacenters") or []
    if not isinstance(desc, str) or not isinstance(text, str):
        raise bad_request("Request decode failed: Description and Rules must be strings")
    if not isinstance(dcs, list) or not all(isinstance(d, str) for d in dcs):
        raise bad_request("Request decode failed: Datacenters must be a list of strings")
    try:
        rules_mod.parse(text)
    except rules_mod.RulesError as exc:
        raise bad_request(f"Invalid Policy: {exc}") from None
    return ACLPolicy(policy_id, name, desc, text, tuple(dcs))


async def policy_create(request: web.Request) -> web.Response:
    _need(request, "write")
    body = await read_json(request)
    if _given_id(body, "ID"):
        raise bad_request("Cannot specify an ID when creating a policy")
    policy = _decode_policy(body, _new_id())
    _, result = await _write(request, ACLOpKind.POLICY_CREATE, policy.to_wire())
    return json_response(request, ACLPolicy.from_wire(result).to_api())


async def _read_one(request: web.Request, query: str, by: str) -> web.Response:
    """One policy or role by ID or name (from the URL); Consul answers an unknown one 403."""
    _need(request, "read")
    found = await _query(request, query, {by: request.match_info[by]})
    if found is None:
        raise HTTPError(403, NOT_FOUND)
    return json_response(request, found)


async def policy_read(request: web.Request) -> web.Response:
    return await _read_one(request, "ACL.PolicyRead", "id")


async def policy_read_name(request: web.Request) -> web.Response:
    return await _read_one(request, "ACL.PolicyRead", "name")


async def policy_update(request: web.Request) -> web.Response:
    _need(request, "write")
    pid = request.match_info["id"]
    body = await read_json(request)
    given = _given_id(body, "ID")
    if given and given != pid:
        raise bad_request("Policy ID in URL and payload do not match")
    policy = _decode_policy(body, pid)
    _, result = await _write(request, ACLOpKind.POLICY_UPDATE, policy.to_wire())
    return json_response(request, ACLPolicy.from_wire(result).to_api())


async def policy_delete(request: web.Request) -> web.Response:
    _need(request, "write")
    await _write(request, ACLOpKind.POLICY_DELETE, request.match_info["id"])
    return json_response(request, True)


async def policy_list(request: web.Request) -> web.Response:
    _need(request, "read")
    return json_response(request, await _query(request, "ACL.PolicyList", {}))


# ------------------------------------------------------------------------------------- roles


async def _decode_role(request: web.Request, body: Any, role_id: str) -> ACLRole:
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: expected a JSON object")
    name = get_key(body, "Name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise bad_request("Invalid Role: invalid Name. Only alphanumeric characters, '-' and '_' are allowed")
    desc = get_key(body, "Description") or ""
    if not isinstance(desc, str):
        raise bad_request("Request decode failed: Description must be a string")
    return ACLRole(role_id, name, desc, await _links(request, get_key(body, "Policies"), "Policies"),
                   _service_identities(get_key(body, "ServiceIdentities")),
                   _node_identities(get_key(body, "NodeIdentities")))


async def role_create(request: web.Request) -> web.Response:
    _need(request, "write")
    body = await read_json(request)
    if _given_id(body, "ID"):
        raise bad_request("Cannot specify an ID when creating a role")
    role = await _decode_role(request, body, _new_id())
    await _write(request, ACLOpKind.ROLE_CREATE, role.to_wire())
    return json_response(request, await _query(request, "ACL.RoleRead", {"id": role.id}))


async def role_read(request: web.Request) -> web.Response:
    return await _read_one(request, "ACL.RoleRead", "id")


async def role_read_name(request: web.Request) -> web.Response:
    return await _read_one(request, "ACL.RoleRead", "name")


async def role_update(request: web.Request) -> web.Response:
    _need(request, "write")
    rid = request.match_info["id"]
    body = await read_json(request)
    given = _given_id(body, "ID")
    if given and given != rid:
        raise bad_request("Role ID in URL and payload do not match")
    role = await _decode_role(request, body, rid)
    await _write(request, ACLOpKind.ROLE_UPDATE, role.to_wire())
    return json_response(request, await _query(request, "ACL.RoleRead", {"id": rid}))


async def role_delete(request: web.Request) -> web.Response:
    _need(request, "write")
    await _write(request, ACLOpKind.ROLE_DELETE, request.match_info["id"])
    return json_response(request, True)


async def role_list(request: web.Request) -> web.Response:
    _need(request, "read")
    args = {"policy": request.query["policy"]} if request.query.get("policy") else {}
    return json_response(request, await _query(request, "ACL.RoleList", args))


async def not_implemented(request: web.Request) -> web.Response:
    """Auth methods, binding rules, login/logout, replication: not built (see docs/ACL.md)."""
    _need(request, "read")
    raise HTTPError(501, f"{request.path} is not implemented by proconsul (see docs/ACL.md)")


def routes() -> list[web.RouteDef]:
    out = [
        web.put("/v1/acl/bootstrap", bootstrap),
        web.put("/v1/acl/token", token_create),
        web.get("/v1/acl/token/self", token_self),
        web.put("/v1/acl/token/{id}/clone", token_clone),
        web.get("/v1/acl/token/{id}", token_read),
        web.put("/v1/acl/token/{id}", token_update),
        web.delete("/v1/acl/token/{id}", token_delete),
        web.get("/v1/acl/tokens", token_list),
        web.put("/v1/acl/policy", policy_create),
        web.get("/v1/acl/policy/name/{name}", policy_read_name),
        web.get("/v1/acl/policy/{id}", policy_read),
        web.put("/v1/acl/policy/{id}", policy_update),
        web.delete("/v1/acl/policy/{id}", policy_delete),
        web.get("/v1/acl/policies", policy_list),
        web.put("/v1/acl/role", role_create),
        web.get("/v1/acl/role/name/{name}", role_read_name),
        web.get("/v1/acl/role/{id}", role_read),
        web.put("/v1/acl/role/{id}", role_update),
        web.delete("/v1/acl/role/{id}", role_delete),
        web.get("/v1/acl/roles", role_list),
    ]
    for path, methods in (
        ("/v1/acl/replication", ("GET",)),
        ("/v1/acl/binding-rules", ("GET",)), ("/v1/acl/binding-rule", ("PUT",)),
        ("/v1/acl/binding-rule/{rest:.*}", ("GET", "PUT", "DELETE")),
        ("/v1/acl/auth-methods", ("GET",)), ("/v1/acl/auth-method", ("PUT",)),
        ("/v1/acl/auth-method/{rest:.*}", ("GET", "PUT", "DELETE")),
        ("/v1/acl/login", ("POST",)), ("/v1/acl/logout", ("POST",)),
        ("/v1/acl/templated-policies", ("GET",)), ("/v1/acl/templated-policy/{rest:.*}", ("GET",)),
        ("/v1/internal/acl/authorize", ("POST",)),
    ):
        out.extend(web.route(m, path, not_implemented) for m in methods)
    return out


__all__ = ["routes", "ACLNotFound"]
