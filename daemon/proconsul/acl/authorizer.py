"""The Authorizer: may a token do something, as Consul resolves it.

Owns the decision for one resolved token: its merged rules (every policy linked directly or through
its roles, plus the synthetic policies of its service and node identities), whether it is a
management token (linked to the built-in `global-management` policy), and the agent's
`default_policy` as the fallback when no rule matches.

Resolution for a name-keyed resource (Consul's radix-tree lookup): a per-name rule for exactly that
name wins; otherwise the longest matching prefix rule; otherwise the default policy. A `deny` rule
refuses everything, `write` grants write, read and list, `read` grants read and list, `list` grants
list only. The default "allow" grants everything except `acl:read`/`acl:write`, which stay reserved
for management tokens, as in Consul's allow-all authorizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from proconsul.acl.rules import DENY, LIST, READ, SINGLE, WRITE, Rules

_GRANTS = {DENY: frozenset(), LIST: frozenset({LIST}), READ: frozenset({READ, LIST}),
           WRITE: frozenset({WRITE, READ, LIST})}


class PermissionDenied(Exception):
    """The token lacks a permission; the message is Consul's 403 text."""

    def __init__(self, accessor: str, resource: str, access: str, name: str | None = None) -> None:
        who = f"token with AccessorID '{accessor}'" if accessor else "provided token"
        text = f"Permission denied: {who} lacks permission '{resource}:{access}'"
        if name is not None:
            text += ' on "' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        super().__init__(text)
        self.resource = resource
        self.access = access
        self.name = name


@dataclass(frozen=True)
class Authorizer:
    """One token's permissions. `accessor` names it in denial messages."""

    rules: Rules
    default_allow: bool
    management: bool = False
    accessor: str = ""

    # ------------------------------------------------------------------------------ decisions

    def rule_for(self, resource: str, name: str) -> str | None:
        """The access of the rule that governs `name`, or None when only the default applies."""
        exact = self.rules.exact.get(resource)
        if exact and name in exact:
            return exact[name]
        prefixes = self.rules.prefix.get(resource)
        if not prefixes:
            return None
        best: str | None = None
        for p in prefixes:
            if name.startswith(p) and (best is None or len(p) > len(best)):
                best = p
        return prefixes[best] if best is not None else None

    def allowed(self, resource: str, name: str, access: str) -> bool:
        """May this token use `access` (list/read/write) on `resource` `name`?"""
        if self.management:
            return True
        rule = self.rule_for(resource, name)
        if rule is None:
            return self.default_allow
        return access in _GRANTS[rule]

    def allowed_single(self, resource: str, access: str) -> bool:
        """acl, operator, keyring, mesh, peering: one rule each."""
        if self.management:
            return True
        rule = self.rules.single.get(resource)
        if rule is None:
            # Consul's allow-all default still keeps the ACL system itself to management tokens.
            return self.default_allow and resource != "acl"
        return access in _GRANTS[rule]

    def key_write_prefix(self, prefix: str) -> bool:
        """Recursive KV delete of `prefix`: write on it and no rule below it that is not write."""
        if self.management:
            return True
        for table in (self.rules.exact.get("key", {}), self.rules.prefix.get("key", {})):
            for name, access in table.items():
                if name.startswith(prefix) and access != WRITE:
                    return False
        return self.allowed("key", prefix, WRITE)

    # ------------------------------------------------------------------------------- raising

    def require(self, resource: str, name: str, access: str) -> None:
        if not self.allowed(resource, name, access):
            raise PermissionDenied(self.accessor, resource, access, name)

    def require_single(self, resource: str, access: str) -> None:
        assert resource in SINGLE
        if not self.allowed_single(resource, access):
            raise PermissionDenied(self.accessor, resource, access)

    def require_management(self) -> None:
        """Endpoints without a precise check: only a management token may use them (fail closed)."""
        if not self.management:
            raise PermissionDenied(self.accessor, "acl", WRITE)


def allow_all() -> Authorizer:
    """ACLs disabled: everything is allowed (never used for decisions when ACLs are on)."""
    return Authorizer(Rules(), default_allow=True, management=True)
