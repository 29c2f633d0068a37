"""What the agent's DNS token may see in a DNS answer (ACLs on).

Owns, for the Authorizer of `acl.tokens.dns` (else the default token, else anonymous), as
Consul's DNS reads the catalog with that token:

- the check of one question (`allowed`): `<svc>.service` and its RFC 2782 form need
  `service:read` on the service, `<node>.node` needs `node:read` on the node, a prepared query
  (`.query`) needs nothing up front (its execution is filtered, below), and every other question
  (PTR, the domain's SOA and NS, `.addr`) could reveal any node or service, so it needs read on
  every node and service (a `node_prefix ""` and `service_prefix ""` read rule, or
  default_policy allow). A refused question is answered NXDOMAIN, as a name the token cannot
  see does not exist for it;
- which instances an answer may list (`visibility`): Consul's filterCheckServiceNodes, read on
  the instance's node and on its service. A service whose instances are all on nodes the token
  cannot read is NXDOMAIN, as one with no healthy instance.

Pure: no I/O.
"""

from __future__ import annotations

from proconsul.acl.authorizer import Authorizer
from proconsul.acl.rules import READ
from proconsul.dns.answer import Question, Visibility, split_name


def allowed(authz: Authorizer, q: Question) -> bool:
    kind, parts, _ = split_name(q)
    if kind == "service" and parts:
        name = parts[0].lstrip("_") if parts[0].startswith("_") else parts[-1]
        return authz.allowed("service", name, READ)
    if kind == "node" and parts:
        return authz.allowed("node", parts[-1], READ)
    if kind == "query" and parts:
        return True  # executed, then filtered by `visibility` (Consul's PreparedQuery.Execute)
    return authz.allowed("node", "", READ) and authz.allowed("service", "", READ)


def visibility(authz: Authorizer) -> Visibility:
    """The instances `authz` may see: node read on the node and service read on the service."""
    return Visibility(authz, lambda node, service: authz.allowed("node", node, READ)
                      and authz.allowed("service", service, READ))


def sees_nothing() -> Visibility:
    """For an execution whose own token cannot be resolved (deleted): no instance is shown."""
    return Visibility(None, lambda node, service: False)
