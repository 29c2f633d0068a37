"""What the agent's default token must be allowed to read for a DNS answer (ACLs on).

Owns the check of one question against the Authorizer of the agent's default token (anonymous
when none is set), as Consul's DNS reads the catalog with that token: `<svc>.service` and its RFC
2782 form need `service:read` on the service, `<node>.node` needs `node:read` on the node, and
every other question (PTR, the domain's SOA and NS, `.addr`, `.query`) could reveal any node or
service, so it needs read on every node and service (a `node_prefix ""` and `service_prefix ""`
read rule, or default_policy allow). A refused question is answered NXDOMAIN, as a name the
token cannot see does not exist for it. Pure: no I/O.
"""

from __future__ import annotations

from proconsul.acl.authorizer import Authorizer
from proconsul.acl.rules import READ
from proconsul.dns.answer import Question, split_name


def allowed(authz: Authorizer, q: Question) -> bool:
    kind, parts, _ = split_name(q)
    if kind == "service" and parts:
        name = parts[0].lstrip("_") if parts[0].startswith("_") else parts[-1]
        return authz.allowed("service", name, READ)
    if kind == "node" and parts:
        return authz.allowed("node", parts[-1], READ)
    return authz.allowed("node", "", READ) and authz.allowed("service", "", READ)
