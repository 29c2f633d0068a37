"""DNS on client agents: the slice of the servers' catalog one question needs, fetched by RPC.

A client agent holds no catalog, so its DNS server cannot answer from a local store. As Consul's
client agents do (their DNS handlers issue Catalog/Health RPCs to a server), it asks a server
for the data and builds the answer itself, under its own DNS settings:

- :func:`catalog_need` reads a question the way `dns_answer.Resolver.resolve` does and names the
  part of the catalog the answer depends on: one service (case-insensitive, with its nodes and
  their checks), one node, the whole catalog (reverse lookups), or nothing (`.addr`, unknown
  forms, other datacenters);
- the server answers the named query `Internal.DNSCatalog` (`queries.dns_catalog`) with those
  records in wire form, under the agent's `dns_config.allow_stale` / `max_stale`;
- :func:`mirror_store` loads them into a throwaway `Store`, which the unchanged `Resolver` reads.

Server agents keep answering from their own store (and its answer cache); nothing here runs
there.
"""

from __future__ import annotations

from typing import Any

from dnslib import QTYPE

from proconsul.dns_answer import _KINDS, CONSUL_SERVICE, Question, _locality
from proconsul.state.records import HealthCheck, Node, ServiceInstance
from proconsul.state.store import Store

# The named query a server answers with a catalog slice (see proconsul.queries).
DNS_CATALOG_QUERY = "Internal.DNSCatalog"

# What a question reads: ("service", name) | ("node", name) | ("all", "") | ("none", "").
Need = tuple[str, str]


def catalog_need(q: Question, datacenter: str) -> Need:
    """The catalog slice `Resolver.resolve(store, q)` reads; mirrors its parsing of the name."""
    if q.qtype in (QTYPE.SOA, QTYPE.NS):
        return "service", CONSUL_SERVICE  # the zone apex names the servers
    if q.qtype in (QTYPE.AXFR, QTYPE.IXFR):
        return "none", ""
    if q.name == "arpa." or q.name.endswith(".arpa."):
        return "all", ""  # reverse lookups scan every node and service address
    rest = q.name[: -len(q.domain)].rstrip(".") if q.name != q.domain else ""
    labels = rest.split(".") if rest else []
    kind, parts, suffixes = "", [], []
    for i in range(len(labels) - 1, -1, -1):
        if labels[i] in _KINDS:
            kind, parts, suffixes = labels[i], labels[:i], labels[i + 1 :]
            break
        if q.qtype == QTYPE.SRV and labels[i].startswith("_"):
            kind, parts, suffixes = "service", labels[: i + 1], labels[i + 1 :]
            break
    if kind not in ("service", "node") or not parts or _locality(suffixes, datacenter) != datacenter:
        return "none", ""
    if kind == "node":
        return "node", ".".join(parts)
    if len(parts) == 2 and parts[0].startswith("_") and parts[1].startswith("_"):
        return "service", parts[0][1:]
    return "service", parts[-1]


def mirror_store(data: dict[str, list[Any]]) -> Store:
    """A store holding just the records of a catalog slice, for `Resolver` to read."""
    store = Store()
    for raw in data.get("nodes", []):
        node = Node.from_wire(raw)
        store.nodes[node.node] = node
    for raw in data.get("services", []):
        svc = ServiceInstance.from_wire(raw)
        store.services.setdefault(svc.node, {})[svc.id] = svc
        store.service_index[svc.service] = max(store.service_index.get(svc.service, 0), svc.modify_index)
    for raw in data.get("checks", []):
        check = HealthCheck.from_wire(raw)
        store.checks.setdefault(check.node, {})[check.check_id] = check
    return store
