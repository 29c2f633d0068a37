"""Which permission each named read needs, and what of its answer a token may see (sans-I/O).

Owns the ACL rules of the reads a server answers (`server.queries`), keyed by query name: the
check before a read (`check`: raises PermissionDenied, Consul's 403 text) and the filter of its
answer (`filter_result`: what the token may not read is left out, and whether anything was).
The server applies them to every read that reaches it over RPC with the caller's token
(server/acl_rpc.py), so a client agent, a follower forwarding to its leader or a raw RPC caller
gets exactly what the same token gets over HTTP. The HTTP gate (http/acl_gate.py) filters its
answers with the same predicates, defined here; filtering an answer twice changes nothing.

Reads not listed need a management token (fail closed). `ACL.Resolve` and `ACL.BootstrapState`
need none: the first answers only for the SecretID the caller presents (the secret is the proof,
as Consul's token self-read), the second only says whether bootstrap happened.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proconsul.acl.authorizer import Authorizer
from proconsul.acl.rules import READ, WRITE
from proconsul.server.acl_authz import authorize_txn_op
from proconsul.state import commands
from proconsul.state.records import HealthCheck, Node, ServiceInstance

Args = dict[str, Any]
Keep = Callable[[Authorizer, Any], bool]
Filter = Callable[[Authorizer, Args, Any], tuple[Any, bool]]
Check = Callable[[Authorizer, Args, str, bool], None]  # (authz, args, caller's secret, key list policy)

HIDDEN = "<hidden>"
# Answered without resolving the caller's token (see the module docstring).
TOKENLESS = frozenset({"ACL.Resolve", "ACL.BootstrapState"})


# ------------------------------------------------------------------------------ predicates
# Shared with the HTTP gate, which filters the same JSON shapes.


def node_read(field: str) -> Keep:
    return lambda a, item: isinstance(item, dict) and a.allowed("node", str(item.get(field, "")), READ)


def check_read(a: Authorizer, c: Any) -> bool:
    if not isinstance(c, dict) or not a.allowed("node", str(c.get("Node", "")), READ):
        return False
    name = c.get("ServiceName") or ""
    return not name or a.allowed("service", str(name), READ)


def service_entry_read(a: Authorizer, e: Any) -> bool:
    return (isinstance(e, dict) and a.allowed("node", str(e.get("Node", "")), READ)
            and a.allowed("service", str(e.get("ServiceName", "")), READ))


def health_entry_read(a: Authorizer, e: Any) -> bool:
    return (isinstance(e, dict) and a.allowed("node", str((e.get("Node") or {}).get("Node", "")), READ)
            and a.allowed("service", str((e.get("Service") or {}).get("Service", "")), READ))


def session_read(a: Authorizer, s: Any) -> bool:
    return isinstance(s, dict) and a.allowed("session", str(s.get("Node", "")), READ)


def kv_entries(a: Authorizer, body: Any) -> tuple[Any, bool]:
    """KV entries (or bare keys) the token may read."""
    if not isinstance(body, list):
        return body, False
    kept = [e for e in body if a.allowed("key", e if isinstance(e, str) else str(e.get("Key", "")), READ)]
    return kept, len(kept) != len(body)


def node_detail(a: Authorizer, body: Any) -> tuple[Any, bool]:
    """A node with its services (a list, or a map by ID): nothing without node:read, else the
    services the token may read."""
    if not isinstance(body, dict):
        return body, False
    node = str((body.get("Node") or {}).get("Node", ""))
    if not a.allowed("node", node, READ):
        return None, True
    services = body.get("Services")
    if isinstance(services, dict):
        kept: Any = {k: s for k, s in services.items() if a.allowed("service", str(s.get("Service", "")), READ)}
    elif isinstance(services, list):
        kept = [s for s in services if a.allowed("service", str(s.get("Service", "")), READ)]
    else:
        return body, False
    if len(kept) == len(services):
        return body, False
    return {**body, "Services": kept}, True


def keep_list(keep: Keep) -> Callable[[Authorizer, Any], tuple[Any, bool]]:
    def run(a: Authorizer, body: Any) -> tuple[Any, bool]:
        if not isinstance(body, list):
            return body, False
        kept = [item for item in body if keep(a, item)]
        return (kept, True) if len(kept) != len(body) else (body, False)

    return run


def keep_map(keep: Callable[[Authorizer, str, Any], bool]) -> Callable[[Authorizer, Any], tuple[Any, bool]]:
    def run(a: Authorizer, body: Any) -> tuple[Any, bool]:
        if not isinstance(body, dict):
            return body, False
        kept = {k: v for k, v in body.items() if keep(a, k, v)}
        return (kept, True) if len(kept) != len(body) else (body, False)

    return run


# ---------------------------------------------------------------------------- wire records


def _wire_service_read(a: Authorizer, w: Any) -> bool:
    s = ServiceInstance.from_wire(w)
    return a.allowed("node", s.node, READ) and a.allowed("service", s.service, READ)


def _wire_check_read(a: Authorizer, w: Any) -> bool:
    c = HealthCheck.from_wire(w)
    return a.allowed("node", c.node, READ) and (not c.service_name or a.allowed("service", c.service_name, READ))


def _node_state(a: Authorizer, args: Args, body: Any) -> tuple[Any, bool]:
    """One node's entries (anti-entropy, ACL lookups): nothing without node:read, as Consul's
    NodeServices answers; else the services and checks the token may read."""
    if not isinstance(body, dict):
        return body, False
    if body.get("node") is not None and not a.allowed("node", Node.from_wire(body["node"]).node, READ):
        return {"node": None, "services": [], "checks": []}, True
    services = [w for w in body.get("services") or [] if _wire_service_read(a, w)]
    checks = [w for w in body.get("checks") or [] if _wire_check_read(a, w)]
    if len(services) == len(body.get("services") or []) and len(checks) == len(body.get("checks") or []):
        return body, False
    return {**body, "services": services, "checks": checks}, True


def _dns_records(a: Authorizer, args: Args, body: Any) -> tuple[Any, bool]:
    if not isinstance(body, dict):
        return body, False
    nodes = [w for w in body.get("nodes") or [] if a.allowed("node", Node.from_wire(w).node, READ)]
    services = [w for w in body.get("services") or [] if _wire_service_read(a, w)]
    checks = [w for w in body.get("checks") or [] if _wire_check_read(a, w)]
    if (len(nodes), len(services), len(checks)) == tuple(len(body.get(k) or []) for k in ("nodes", "services", "checks")):
        return body, False
    return {**body, "nodes": nodes, "services": services, "checks": checks}, True


def _prepared_execute(a: Authorizer, args: Args, body: Any) -> tuple[Any, bool]:
    """The instances the token may read (node and service); the query's own token is hidden."""
    if not isinstance(body, dict):
        return body, False
    query = body.get("Query")
    if isinstance(query, dict) and query.get("Token"):
        query = {**query, "Token": HIDDEN}
    nodes = body.get("Nodes") or []
    kept = [n for n in nodes if a.allowed("node", Node.from_wire(n[0]).node, READ) and _wire_service_read(a, n[1])]
    return {**body, "Query": query, "Nodes": kept}, len(kept) != len(nodes)


def query_acl_prefix(query: Any) -> str | None:
    """A prepared query's ACL prefix (Consul's GetACLPrefix): its Name, "" for a nameless
    template (every name), None for an unnamed session-bound query (no `query` rule applies)."""
    if not isinstance(query, dict):
        return None
    if query.get("Name"):
        return str(query["Name"])
    if (query.get("Template") or {}).get("Type"):
        return ""
    return None


def readable_queries(a: Authorizer, queries: list[Any]) -> tuple[list[Any], bool]:
    """The prepared queries a token may see (Consul's filterPreparedQueries): all, with their
    tokens, for `acl:write`; else the named ones its `query` read covers, `Token` hidden, and
    never an unnamed one. Also whether a named one was left out."""
    if a.allowed_single("acl", WRITE):
        return queries, False
    kept: list[Any] = []
    named_removed = False
    for query in queries:
        prefix = query_acl_prefix(query)
        if prefix is None:
            continue
        if not a.allowed("query", prefix, READ):
            named_removed = True
            continue
        kept.append({**query, "Token": HIDDEN} if query.get("Token") else query)
    return kept, named_removed


def _queries(a: Authorizer, args: Args, body: Any) -> tuple[Any, bool]:
    if not isinstance(body, list):
        return body, False
    return readable_queries(a, body)


def _explained(a: Authorizer, args: Args, body: Any) -> tuple[Any, bool]:
    """One query, or {} when the token may not see it (the HTTP layer answers that 403)."""
    if not isinstance(body, dict):
        return body, False
    kept, _ = readable_queries(a, [body])
    return (kept[0] if kept else {}), not kept


def _hide_secret(a: Authorizer, token: Any) -> Any:
    if isinstance(token, dict) and "SecretID" in token and not a.allowed_single("acl", WRITE):
        return {**token, "SecretID": HIDDEN}
    return token


# -------------------------------------------------------------------------------- the rules


def _key_read(a: Authorizer, args: Args, secret: str, key_list: bool) -> None:
    a.require("key", str(args.get("key", "")), READ)


def _key_list(a: Authorizer, args: Args, secret: str, key_list: bool) -> None:
    if key_list:  # acl.enable_key_list_policy: a recursive read needs key:list on the prefix
        a.require("key", str(args.get("prefix", "")), "list")


def _txn_read(a: Authorizer, args: Args, secret: str, key_list: bool) -> None:
    for raw in args.get("ops") or []:
        authorize_txn_op(a, commands.decode_txn_op(raw))


def _acl_read(a: Authorizer, args: Args, secret: str, key_list: bool) -> None:
    a.require_single("acl", READ)


def _token_read(a: Authorizer, args: Args, secret: str, key_list: bool) -> None:
    if "secret" in args and args["secret"] == secret:
        return  # the caller's own token (Consul's token self-read)
    a.require_single("acl", READ)


def _nothing(a: Authorizer, args: Args, secret: str, key_list: bool) -> None:
    """Filtered after the read, or no permission needed."""


def _management(a: Authorizer, args: Args, secret: str, key_list: bool) -> None:
    a.require_management()


def _plain(run: Callable[[Authorizer, Any], tuple[Any, bool]]) -> Filter:
    return lambda a, args, body: run(a, body)


def _services(a: Authorizer, args: Args, body: Any) -> tuple[Any, bool]:
    if isinstance(body, list):  # with `instances` (for ?filter)
        return keep_list(service_entry_read)(a, body)
    return keep_map(lambda a, name, _: a.allowed("service", name, READ))(a, body)


def _token_read_filter(a: Authorizer, args: Args, body: Any) -> tuple[Any, bool]:
    if "secret" in args:
        return body, False  # read by its SecretID: the caller knows it already
    return _hide_secret(a, body), False


def _token_list_filter(a: Authorizer, args: Args, body: Any) -> tuple[Any, bool]:
    if not isinstance(body, list) or a.allowed_single("acl", WRITE):
        return body, False
    return [_hide_secret(a, t) for t in body], False


_CHECKS = _plain(keep_list(check_read))
_SESSIONS = _plain(keep_list(session_read))

RULES: dict[str, tuple[Check, Filter | None]] = {
    "KVS.Get": (_key_read, None),
    "KVS.List": (_key_list, _plain(kv_entries)),
    "KVS.ListKeys": (_key_list, _plain(kv_entries)),
    "KVS.LockDelay": (_key_read, None),
    "Txn.Read": (_txn_read, None),
    "Catalog.ListNodes": (_nothing, _plain(keep_list(node_read("Node")))),
    "Catalog.ListServices": (_nothing, _services),
    "Catalog.ServiceNodes": (_nothing, _plain(keep_list(service_entry_read))),
    "Catalog.NodeServices": (_nothing, _plain(node_detail)),
    "Health.NodeChecks": (_nothing, _CHECKS),
    "Health.ServiceChecks": (_nothing, _CHECKS),
    "Health.ChecksInState": (_nothing, _CHECKS),
    "Health.ServiceNodes": (_nothing, _plain(keep_list(health_entry_read))),
    "Session.Get": (_nothing, _SESSIONS),
    "Session.NodeSessions": (_nothing, _SESSIONS),
    "Session.List": (_nothing, _SESSIONS),
    "Internal.NodeState": (_nothing, _node_state),
    "Coordinate.ListNodes": (_nothing, _plain(keep_list(node_read("Node")))),
    "Coordinate.Node": (_nothing, _plain(keep_list(node_read("Node")))),
    "Internal.DNSRecords": (_nothing, _dns_records),
    # Prepared queries: `query` read on the name (http/query_acl.py applies the same rules),
    # Get answering [] and Explain {} for a query the token may not see. Executing needs no
    # rule; the instances are filtered by the query's own token, else the caller's (acl_rpc.py).
    "PreparedQuery.List": (_nothing, _queries),
    "PreparedQuery.Get": (_nothing, _queries),
    "PreparedQuery.Explain": (_nothing, _explained),
    "PreparedQuery.ExecuteLocal": (_nothing, _prepared_execute),
    "ACL.TokenRead": (_token_read, _token_read_filter),
    "ACL.TokenList": (_acl_read, _token_list_filter),
    "ACL.PolicyRead": (_acl_read, None),
    "ACL.PolicyList": (_acl_read, None),
    "ACL.RoleRead": (_acl_read, None),
    "ACL.RoleList": (_acl_read, None),
}


def check(authz: Authorizer, name: str, args: Args, secret: str, key_list_policy: bool = False) -> None:
    """Raise PermissionDenied unless the token may run the read `name` with `args`; `secret` is
    the caller's own SecretID (for reading its own token)."""
    if authz.management:
        return
    rule = RULES.get(name)
    if rule is None:
        authz.require_management()  # fail closed: no rule for this read yet
        return
    rule[0](authz, args, secret, key_list_policy)


def filter_result(authz: Authorizer, name: str, args: Args, result: Any) -> tuple[Any, bool]:
    """The part of the read's answer the token may see (a new object when something was left
    out or hidden: answers are shared between readers) and whether anything was left out."""
    if authz.management:
        return result, False
    rule = RULES.get(name)
    if rule is None or rule[1] is None:
        return result, False
    return rule[1](authz, args, result)
