"""ACL tokens, policies and roles: the replicated records and their Consul JSON shapes.

Owns the records as the state store keeps them (immutable, with `to_wire`/`from_wire` for the Raft
log and snapshots), their rendering in Consul's API shapes (`AccessorID`, `SecretID`, `Policies:
[{ID, Name}]`, ...), the built-in records every cluster has (the `global-management` policy, the
anonymous token), the synthetic rules of service and node identities, and `resolve`: a token
plus the policies and roles it links to, turned into an `Authorizer`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from proconsul.acl import rules as rules_mod
from proconsul.acl.authorizer import Authorizer

GLOBAL_MANAGEMENT_ID = "00000000-0000-0000-0000-000000000001"
GLOBAL_MANAGEMENT_NAME = "global-management"
ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
ANONYMOUS_SECRET = "anonymous"

GLOBAL_MANAGEMENT_RULES = """
acl = "write"
agent_prefix "" { policy = "write" }
event_prefix "" { policy = "write" }
key_prefix "" { policy = "write" }
keyring = "write"
node_prefix "" { policy = "write" }
operator = "write"
mesh = "write"
peering = "write"
query_prefix "" { policy = "write" }
service_prefix "" { policy = "write" intentions = "write" }
session_prefix "" { policy = "write" }
"""


@dataclass(frozen=True, slots=True)
class Link:
    """A token's or role's reference to a policy or role: the ID is what is stored; the name is
    filled in from the current record when rendered."""

    id: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class ServiceIdentity:
    service_name: str
    datacenters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    node_name: str
    datacenter: str


def _si_wire(s: ServiceIdentity) -> list[Any]:
    return [s.service_name, list(s.datacenters)]


def _ni_wire(n: NodeIdentity) -> list[Any]:
    return [n.node_name, n.datacenter]


@dataclass(frozen=True, slots=True)
class ACLPolicy:
    id: str
    name: str
    description: str = ""
    rules: str = ""
    datacenters: tuple[str, ...] = ()
    create_index: int = 0
    modify_index: int = 0

    def to_wire(self) -> list[Any]:
        return [self.id, self.name, self.description, self.rules, list(self.datacenters),
                self.create_index, self.modify_index]

    @classmethod
    def from_wire(cls, w: list[Any]) -> ACLPolicy:
        return cls(str(w[0]), str(w[1]), str(w[2]), str(w[3]), tuple(w[4]), int(w[5]), int(w[6]))

    def hash(self) -> str:
        return _hash(["policy", self.name, self.description, self.rules, sorted(self.datacenters)])

    def to_api(self) -> dict[str, Any]:
        return {
            "ID": self.id, "Name": self.name, "Description": self.description, "Rules": self.rules,
            "Datacenters": list(self.datacenters) or None, "Hash": self.hash(),
            "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
        }

    def to_list_api(self) -> dict[str, Any]:
        """The `/v1/acl/policies` stub: no rules."""
        out = self.to_api()
        del out["Rules"]
        return out


@dataclass(frozen=True, slots=True)
class ACLRole:
    id: str
    name: str
    description: str = ""
    policies: tuple[Link, ...] = ()
    service_identities: tuple[ServiceIdentity, ...] = ()
    node_identities: tuple[NodeIdentity, ...] = ()
    create_index: int = 0
    modify_index: int = 0

    def to_wire(self) -> list[Any]:
        return [self.id, self.name, self.description, [p.id for p in self.policies],
                [_si_wire(s) for s in self.service_identities], [_ni_wire(n) for n in self.node_identities],
                self.create_index, self.modify_index]

    @classmethod
    def from_wire(cls, w: list[Any]) -> ACLRole:
        return cls(str(w[0]), str(w[1]), str(w[2]), tuple(Link(str(p)) for p in w[3]),
                   tuple(ServiceIdentity(str(s[0]), tuple(s[1])) for s in w[4]),
                   tuple(NodeIdentity(str(n[0]), str(n[1])) for n in w[5]), int(w[6]), int(w[7]))

    def hash(self) -> str:
        return _hash(["role", self.name, self.description, sorted(p.id for p in self.policies),
                      [_si_wire(s) for s in self.service_identities], [_ni_wire(n) for n in self.node_identities]])

    def to_api(self, policy_name: Callable[[str], str]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ID": self.id, "Name": self.name, "Description": self.description,
            "Policies": _links_api(self.policies, policy_name),
        }
        if self.service_identities:
            out["ServiceIdentities"] = [_si_api(s) for s in self.service_identities]
        if self.node_identities:
            out["NodeIdentities"] = [_ni_api(n) for n in self.node_identities]
        out.update({"Hash": self.hash(), "CreateIndex": self.create_index, "ModifyIndex": self.modify_index})
        return out


@dataclass(frozen=True, slots=True)
class ACLToken:
    accessor_id: str
    secret_id: str
    description: str = ""
    policies: tuple[Link, ...] = ()
    roles: tuple[Link, ...] = ()
    service_identities: tuple[ServiceIdentity, ...] = ()
    node_identities: tuple[NodeIdentity, ...] = ()
    local: bool = False
    create_time: str = ""  # RFC 3339, stamped by the server that accepted the request
    expiration_time: str = ""  # RFC 3339, "" = never
    expiration_ttl_s: float = 0.0
    expires_at: float = 0.0  # wall-clock seconds of expiration_time, 0 = never (for comparisons)
    create_index: int = 0
    modify_index: int = 0

    def to_wire(self) -> list[Any]:
        return [self.accessor_id, self.secret_id, self.description, [p.id for p in self.policies],
                [r.id for r in self.roles], [_si_wire(s) for s in self.service_identities],
                [_ni_wire(n) for n in self.node_identities], self.local, self.create_time,
                self.expiration_time, self.expiration_ttl_s, self.expires_at, self.create_index,
                self.modify_index]

    @classmethod
    def from_wire(cls, w: list[Any]) -> ACLToken:
        return cls(str(w[0]), str(w[1]), str(w[2]), tuple(Link(str(p)) for p in w[3]),
                   tuple(Link(str(r)) for r in w[4]),
                   tuple(ServiceIdentity(str(s[0]), tuple(s[1])) for s in w[5]),
                   tuple(NodeIdentity(str(n[0]), str(n[1])) for n in w[6]), bool(w[7]), str(w[8]),
                   str(w[9]), float(w[10]), float(w[11]), int(w[12]), int(w[13]))

    def hash(self) -> str:
        return _hash(["token", self.description, sorted(p.id for p in self.policies), sorted(r.id for r in self.roles),
                      [_si_wire(s) for s in self.service_identities], [_ni_wire(n) for n in self.node_identities],
                      self.local])

    def expired(self, now: float) -> bool:
        return bool(self.expires_at) and now >= self.expires_at

    def to_api(self, policy_name: Callable[[str], str], role_name: Callable[[str], str],
               with_secret: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"AccessorID": self.accessor_id}
        if with_secret:
            out["SecretID"] = self.secret_id
        out["Description"] = self.description
        if self.policies:
            out["Policies"] = _links_api(self.policies, policy_name)
        if self.roles:
            out["Roles"] = _links_api(self.roles, role_name)
        if self.service_identities:
            out["ServiceIdentities"] = [_si_api(s) for s in self.service_identities]
        if self.node_identities:
            out["NodeIdentities"] = [_ni_api(n) for n in self.node_identities]
        out["Local"] = self.local
        if self.expiration_time:
            out["ExpirationTime"] = self.expiration_time
        if self.expiration_ttl_s:
            out["ExpirationTTL"] = _go_duration(self.expiration_ttl_s)
        out.update({"CreateTime": self.create_time, "Hash": self.hash(),
                    "CreateIndex": self.create_index, "ModifyIndex": self.modify_index})
        return out

    def with_indexes(self, create: int, modify: int) -> ACLToken:
        return replace(self, create_index=create, modify_index=modify)


def _links_api(links: Iterable[Link], name_of: Callable[[str], str]) -> list[dict[str, str]]:
    return [{"ID": link.id, "Name": name_of(link.id)} for link in links]


def _si_api(s: ServiceIdentity) -> dict[str, Any]:
    out: dict[str, Any] = {"ServiceName": s.service_name}
    if s.datacenters:
        out["Datacenters"] = list(s.datacenters)
    return out


def _ni_api(n: NodeIdentity) -> dict[str, Any]:
    return {"NodeName": n.node_name, "Datacenter": n.datacenter}


def _go_duration(seconds: float) -> str:
    total = int(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


def _hash(parts: list[Any]) -> str:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=32).digest()
    return base64.b64encode(digest).decode()


# --------------------------------------------------------------------------------- built-ins


def global_management_policy(index: int) -> ACLPolicy:
    return ACLPolicy(GLOBAL_MANAGEMENT_ID, GLOBAL_MANAGEMENT_NAME, "Builtin Policy that grants unlimited access",
                     GLOBAL_MANAGEMENT_RULES, (), index, index)


def anonymous_token(index: int) -> ACLToken:
    return ACLToken(ANONYMOUS_ACCESSOR, ANONYMOUS_SECRET, "Anonymous Token", create_index=index, modify_index=index)


# ------------------------------------------------------------------------------- resolution


def service_identity_rules(si: ServiceIdentity) -> rules_mod.Rules:
    """Consul's synthetic policy of a service identity: write on the service (and its sidecar
    proxy), read on every service and node (for discovery)."""
    name = si.service_name
    return rules_mod.Rules(
        exact={"service": {name: rules_mod.WRITE, f"{name}-sidecar-proxy": rules_mod.WRITE}},
        prefix={"service": {"": rules_mod.READ}, "node": {"": rules_mod.READ}},
    )


def node_identity_rules(ni: NodeIdentity) -> rules_mod.Rules:
    """Consul's synthetic policy of a node identity: write on the node, read on every service."""
    return rules_mod.Rules(exact={"node": {ni.node_name: rules_mod.WRITE}}, prefix={"service": {"": rules_mod.READ}})


def resolve(
    token: ACLToken,
    policy: Callable[[str], ACLPolicy | None],
    role: Callable[[str], ACLRole | None],
    default_allow: bool,
    datacenter: str,
    parse: Callable[[str], rules_mod.Rules] = rules_mod.parse,
) -> Authorizer:
    """The Authorizer of `token`: its policies, its roles' policies and every identity.

    Links to policies or roles that no longer exist are skipped (Consul drops them when it
    reads the token). Policies and identities limited to other datacenters do not apply.
    """
    policy_ids: list[str] = [p.id for p in token.policies]
    services = list(token.service_identities)
    nodes = list(token.node_identities)
    for link in token.roles:
        r = role(link.id)
        if r is None:
            continue
        policy_ids.extend(p.id for p in r.policies)
        services.extend(r.service_identities)
        nodes.extend(r.node_identities)
    management = False
    parts: list[rules_mod.Rules] = []
    for pid in dict.fromkeys(policy_ids):
        p = policy(pid)
        if p is None or (p.datacenters and datacenter not in p.datacenters):
            continue
        if p.id == GLOBAL_MANAGEMENT_ID:
            management = True
            continue
        parts.append(parse(p.rules))
    parts.extend(service_identity_rules(s) for s in services if not s.datacenters or datacenter in s.datacenters)
    parts.extend(node_identity_rules(n) for n in nodes if n.datacenter == datacenter)
    return Authorizer(rules_mod.merge(parts), default_allow, management, token.accessor_id)
