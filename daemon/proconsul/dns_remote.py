"""DNS answers for names in another datacenter (`web.service.dc2.consul`, `db.node.dc2.consul`).

Owns the remote half of a `.consul` question that `dns_answer.Resolver` marked with
`Answer.remote`: one named read (`Internal.DNSRecords`) sent to the other datacenter through the
RPC layer (`QueryOptions.datacenter`: a server forwards it over the WAN, a client agent through
its server), the records it returns loaded into a throw-away `Store`, and the question resolved
again by a `Resolver` for that datacenter, so every answer form (SRV targets named
`<node>.node.dc2.consul`, tags, health filtering, TTLs, truncation) is the local one.

Errors as Consul's DNS maps them: no path to the datacenter keeps the NXDOMAIN; any other
failure of the read is raised (`RPCError`), which the DNS server answers SERVFAIL.
"""

from __future__ import annotations

import random
from typing import Any

from proconsul.config import RuntimeConfig
from proconsul.dns_answer import Answer, Question, Resolver
from proconsul.rpc import NoPathToDatacenter, QueryOptions, RPCError
from proconsul.state.records import HealthCheck, Node, ServiceInstance
from proconsul.state.store import Store

NO_DC_PATH = str(NoPathToDatacenter(""))


def records_store(records: dict[str, Any]) -> Store:
    """A store holding just the nodes, services and checks an `Internal.DNSRecords` read returned."""
    store = Store()
    nodes = {n.node: n for n in (Node.from_wire(w) for w in records.get("nodes", []))}
    for node in nodes.values():
        store.ensure_registration(1, node, None, (), skip_node_update=False)
    for wire in records.get("services", []):
        svc = ServiceInstance.from_wire(wire)
        if svc.node in nodes:
            store.ensure_registration(1, nodes[svc.node], svc, (), skip_node_update=True)
    for wire in records.get("checks", []):
        check = HealthCheck.from_wire(wire)
        if check.node in nodes:
            store.ensure_registration(1, nodes[check.node], None, (check,), skip_node_update=True)
    store.finish(1)
    return store


async def answer_remote(
    server: Any,
    cfg: RuntimeConfig,
    q: Question,
    marked: Answer,
    rng: random.Random,
    now: float,
    max_groups: int = 0,
) -> Answer:
    """Resolve `q` in the datacenter `marked.remote` names; `marked` (NXDOMAIN) if unreachable."""
    assert marked.remote is not None
    dc, kind, name = marked.remote
    opts = QueryOptions(allow_stale=cfg.dns_config.allow_stale, datacenter=dc)
    try:
        _, records = await server.query("Internal.DNSRecords", {kind: name}, opts)
    except RPCError as exc:
        # From a server the error is NoPathToDatacenter; through a client agent, its text.
        if isinstance(exc, NoPathToDatacenter) or str(exc) == NO_DC_PATH:
            return marked
        raise
    resolver = Resolver(cfg, dc, rng, now, None, max_groups)
    return resolver.resolve(records_store(records), q)
