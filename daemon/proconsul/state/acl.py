"""ACL tables of the state store: how the ACL commands change tokens, policies and roles.

Owns the rules every server applies identically when an ACL command commits: unique SecretIDs and
policy/role names, links only to policies and roles that exist, the built-in records (the
`global-management` policy cannot be deleted or have its rules changed, the anonymous token
cannot be deleted), CreateIndex kept across updates, and the one-time bootstrap with Consul's
reset index. A rejected command raises StoreError before changing anything.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from proconsul.acl.records import (
    ANONYMOUS_ACCESSOR,
    GLOBAL_MANAGEMENT_ID,
    ACLPolicy,
    ACLRole,
    ACLToken,
    Link,
    anonymous_token,
    global_management_policy,
)
from proconsul.state.commands import ACLOp, ACLOpKind
from proconsul.state.store import Store, StoreError


def token_by_secret(store: Store, secret: str) -> ACLToken | None:
    accessor = store.acl_secrets.get(secret)
    return store.acl_tokens.get(accessor) if accessor is not None else None


def _ensure_builtins(store: Store, index: int) -> None:
    if GLOBAL_MANAGEMENT_ID not in store.acl_policies:
        store.acl_policies[GLOBAL_MANAGEMENT_ID] = global_management_policy(index)
        store.touch("acl_policies", index)
    if ANONYMOUS_ACCESSOR not in store.acl_tokens:
        anon = anonymous_token(index)
        store.acl_tokens[anon.accessor_id] = anon
        store.acl_secrets[anon.secret_id] = anon.accessor_id
        store.touch("acl_tokens", index)


def init(store: Store, index: int, management: ACLToken | None) -> ACLToken | None:
    """The leader's ACL initialisation: built-ins, and the configured initial management token
    (which also counts as the bootstrap, so `/v1/acl/bootstrap` is then refused, as in Consul)."""
    _ensure_builtins(store, index)
    if management is None or management.secret_id in store.acl_secrets:
        return None
    _put_token(store, index, replace(management, policies=(Link(GLOBAL_MANAGEMENT_ID),)), create=True)
    if not store.acl_bootstrap_index:
        store.acl_bootstrap_index = index
    return store.acl_tokens[management.accessor_id]


def bootstrap(store: Store, index: int, token: ACLToken, reset_index: int) -> ACLToken:
    """`PUT /v1/acl/bootstrap`: once, or again when the caller presents the current reset index."""
    done = store.acl_bootstrap_index
    if done and not reset_index:
        raise StoreError(f"ACL bootstrap no longer allowed (reset index: {done})")
    if done and reset_index != done:
        raise StoreError(f"Invalid bootstrap reset index (specified {reset_index}, reset index: {done})")
    _ensure_builtins(store, index)
    _put_token(store, index, replace(token, policies=(Link(GLOBAL_MANAGEMENT_ID),)), create=True)
    store.acl_bootstrap_index = index
    return store.acl_tokens[token.accessor_id]


def _check_links(store: Store, policies: tuple[Link, ...], roles: tuple[Link, ...] = ()) -> None:
    for p in policies:
        if p.id not in store.acl_policies:
            raise StoreError(f"cannot find policy {p.id}")
    for r in roles:
        if r.id not in store.acl_roles:
            raise StoreError(f"cannot find role {r.id}")


def _put_token(store: Store, index: int, token: ACLToken, create: bool) -> None:
    old = store.acl_tokens.get(token.accessor_id)
    if create:
        if old is not None:
            raise StoreError(f"Invalid Token: AccessorID is already in use ({token.accessor_id})")
        if token.secret_id in store.acl_secrets:
            raise StoreError("Invalid Token: SecretID is already in use")
        create_index = index
    else:
        if old is None:
            raise StoreError(f"Cannot find token {token.accessor_id!r}")
        if token.secret_id != old.secret_id:
            raise StoreError("Changing a token's SecretID is not permitted")
        create_index = old.create_index
    _check_links(store, token.policies, token.roles)
    store.acl_tokens[token.accessor_id] = token.with_indexes(create_index, index)
    store.acl_secrets[token.secret_id] = token.accessor_id
    store.touch("acl_tokens", index)


def set_token(store: Store, index: int, token: ACLToken, create: bool) -> ACLToken:
    _put_token(store, index, token, create)
    return store.acl_tokens[token.accessor_id]


def delete_token(store: Store, index: int, accessor: str) -> bool:
    if accessor == ANONYMOUS_ACCESSOR:
        raise StoreError("Delete operation not permitted on the anonymous token")
    old = store.acl_tokens.pop(accessor, None)
    if old is not None:
        store.acl_secrets.pop(old.secret_id, None)
        store.touch("acl_tokens", index)
    return True


def set_policy(store: Store, index: int, policy: ACLPolicy, create: bool) -> ACLPolicy:
    old = store.acl_policies.get(policy.id)
    if create and old is not None:
        raise StoreError(f"Invalid Policy: ID is already in use ({policy.id})")
    if not create and old is None:
        raise StoreError(f"Cannot find policy {policy.id!r}")
    for other in store.acl_policies.values():
        if other.name == policy.name and other.id != policy.id:
            raise StoreError(f"Invalid Policy: A Policy with Name {policy.name!r} already exists")
    if policy.id == GLOBAL_MANAGEMENT_ID and old is not None:
        if policy.rules != old.rules:
            raise StoreError("Changing the Rules for the builtin global-management policy is not permitted")
        if policy.datacenters:
            raise StoreError("Changing the Datacenters of the builtin global-management policy is not permitted")
    create_index = old.create_index if old is not None else index
    store.acl_policies[policy.id] = replace(policy, create_index=create_index, modify_index=index)
    store.touch("acl_policies", index)
    return store.acl_policies[policy.id]


def delete_policy(store: Store, index: int, policy_id: str) -> bool:
    if policy_id == GLOBAL_MANAGEMENT_ID:
        raise StoreError("Delete operation not permitted on the builtin global-management policy")
    if store.acl_policies.pop(policy_id, None) is not None:
        # Links to it stay on tokens and roles and are skipped when read, as Consul does.
        store.touch("acl_policies", index)
    return True


def set_role(store: Store, index: int, role: ACLRole, create: bool) -> ACLRole:
    old = store.acl_roles.get(role.id)
    if create and old is not None:
        raise StoreError(f"Invalid Role: ID is already in use ({role.id})")
    if not create and old is None:
        raise StoreError(f"Cannot find role {role.id!r}")
    for other in store.acl_roles.values():
        if other.name == role.name and other.id != role.id:
            raise StoreError(f"Invalid Role: A Role with Name {role.name!r} already exists")
    _check_links(store, role.policies)
    create_index = old.create_index if old is not None else index
    store.acl_roles[role.id] = replace(role, create_index=create_index, modify_index=index)
    store.touch("acl_roles", index)
    return store.acl_roles[role.id]


def delete_role(store: Store, index: int, role_id: str) -> bool:
    if store.acl_roles.pop(role_id, None) is not None:
        store.touch("acl_roles", index)
    return True


def apply(store: Store, index: int, op: ACLOp) -> Any:
    """Apply one committed ACL command; the result is the record written (wire form) or True."""
    kind, payload = op.op, op.payload
    if kind == ACLOpKind.INIT:
        made = init(store, index, ACLToken.from_wire(payload) if payload is not None else None)
        return made.to_wire() if made is not None else None
    if kind == ACLOpKind.BOOTSTRAP:
        return bootstrap(store, index, ACLToken.from_wire(payload[0]), int(payload[1])).to_wire()
    if kind in (ACLOpKind.TOKEN_CREATE, ACLOpKind.TOKEN_UPDATE):
        return set_token(store, index, ACLToken.from_wire(payload), kind == ACLOpKind.TOKEN_CREATE).to_wire()
    if kind == ACLOpKind.TOKEN_DELETE:
        return delete_token(store, index, str(payload))
    if kind in (ACLOpKind.POLICY_CREATE, ACLOpKind.POLICY_UPDATE):
        return set_policy(store, index, ACLPolicy.from_wire(payload), kind == ACLOpKind.POLICY_CREATE).to_wire()
    if kind == ACLOpKind.POLICY_DELETE:
        return delete_policy(store, index, str(payload))
    if kind in (ACLOpKind.ROLE_CREATE, ACLOpKind.ROLE_UPDATE):
        return set_role(store, index, ACLRole.from_wire(payload), kind == ACLOpKind.ROLE_CREATE).to_wire()
    if kind == ACLOpKind.ROLE_DELETE:
        return delete_role(store, index, str(payload))
    raise StoreError(f"Invalid ACL operation {kind!r}")
