"""Named reads of the ACL tables (sans-I/O), registered beside `server.queries`.

Owns the ACL reads a server answers: token resolution for an agent (`ACL.Resolve`: the token of a
SecretID with every policy and role it links to, in wire form, so the agent builds the Authorizer
itself), and the API reads of `/v1/acl/*` already in Consul's JSON shape with link names filled in.
SecretIDs are returned; the HTTP layer hides them from callers without `acl:write`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from proconsul.acl.records import ACLRole, ACLToken
from proconsul.state.acl import token_by_secret
from proconsul.state.store import Store

TOKEN_TABLES = ("acl_tokens", "acl_policies", "acl_roles")
POLICY_TABLES = ("acl_policies",)
ROLE_TABLES = ("acl_roles", "acl_policies")

Args = dict[str, Any]


def _index(store: Store, *tables: str) -> int:
    return max(store.table_index.get(t, 0) for t in tables)


def _policy_name(store: Store) -> Any:
    return lambda pid: p.name if (p := store.acl_policies.get(pid)) is not None else ""


def _role_name(store: Store) -> Any:
    return lambda rid: r.name if (r := store.acl_roles.get(rid)) is not None else ""


def token_api(store: Store, t: ACLToken) -> dict[str, Any]:
    # Links to deleted policies or roles are left out, as Consul drops them when reading a token.
    live = replace(t, policies=tuple(p for p in t.policies if p.id in store.acl_policies),
                   roles=tuple(r for r in t.roles if r.id in store.acl_roles))
    return live.to_api(_policy_name(store), _role_name(store))


def role_api(store: Store, r: ACLRole) -> dict[str, Any]:
    live = replace(r, policies=tuple(p for p in r.policies if p.id in store.acl_policies))
    return live.to_api(_policy_name(store))


def resolve(store: Store, args: Args) -> tuple[int, Any]:
    """{"token": wire | None, "policies": [wire], "roles": [wire]} for the SecretID `secret`."""
    index = _index(store, *TOKEN_TABLES)
    t = token_by_secret(store, args["secret"])
    if t is None:
        return index, {"token": None, "policies": [], "roles": []}
    roles = [r for link in t.roles if (r := store.acl_roles.get(link.id)) is not None]
    policy_ids = [p.id for p in t.policies] + [p.id for r in roles for p in r.policies]
    policies = [p.to_wire() for pid in dict.fromkeys(policy_ids) if (p := store.acl_policies.get(pid)) is not None]
    return index, {"token": t.to_wire(), "policies": policies, "roles": [r.to_wire() for r in roles],
                   "bootstrapped": bool(store.acl_bootstrap_index)}


def token_read(store: Store, args: Args) -> tuple[int, Any]:
    index = _index(store, *TOKEN_TABLES)
    if "secret" in args:
        t = token_by_secret(store, args["secret"])
    else:
        t = store.acl_tokens.get(args["accessor"])
    return index, token_api(store, t) if t is not None else None


def token_list(store: Store, args: Args) -> tuple[int, Any]:
    policy, role = args.get("policy", ""), args.get("role", "")
    service, method = args.get("servicename", ""), args.get("authmethod", "")
    if method:
        return _index(store, *TOKEN_TABLES), []  # no auth methods: no token came from one
    out = []
    for accessor in sorted(store.acl_tokens):
        t = store.acl_tokens[accessor]
        if policy and all(p.id != policy for p in t.policies):
            continue
        if role and all(r.id != role for r in t.roles):
            continue
        if service and all(s.service_name != service for s in t.service_identities):
            continue
        out.append(token_api(store, t))
    return _index(store, *TOKEN_TABLES), out


def policy_read(store: Store, args: Args) -> tuple[int, Any]:
    index = _index(store, *POLICY_TABLES)
    if "name" in args:
        found = [p for p in store.acl_policies.values() if p.name == args["name"]]
        return index, found[0].to_api() if found else None
    p = store.acl_policies.get(args["id"])
    return index, p.to_api() if p is not None else None


def policy_list(store: Store, args: Args) -> tuple[int, Any]:
    policies = sorted(store.acl_policies.values(), key=lambda p: p.id)
    return _index(store, *POLICY_TABLES), [p.to_list_api() for p in policies]


def role_read(store: Store, args: Args) -> tuple[int, Any]:
    index = _index(store, *ROLE_TABLES)
    if "name" in args:
        found = [r for r in store.acl_roles.values() if r.name == args["name"]]
        r = found[0] if found else None
    else:
        r = store.acl_roles.get(args["id"])
    return index, role_api(store, r) if r is not None else None


def role_list(store: Store, args: Args) -> tuple[int, Any]:
    policy = args.get("policy", "")
    roles = sorted(store.acl_roles.values(), key=lambda r: r.id)
    return _index(store, *ROLE_TABLES), [
        role_api(store, r) for r in roles if not policy or any(p.id == policy for p in r.policies)
    ]


def bootstrap_state(store: Store, args: Args) -> tuple[int, Any]:
    """The bootstrap index (0 = never bootstrapped) and whether the built-ins exist."""
    return _index(store, *TOKEN_TABLES), {"bootstrap_index": store.acl_bootstrap_index,
                                          "initialised": "00000000-0000-0000-0000-000000000002" in store.acl_tokens}
