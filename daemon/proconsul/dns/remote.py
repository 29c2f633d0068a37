"""DNS answers for names in another datacenter (`web.service.dc2.consul`, `db.node.dc2.consul`).

Owns the remote half of a `.consul` question that `dns_answer.Resolver` marked with
`Answer.remote`: one named read (`Internal.DNSRecords`) sent to the other datacenter through the
RPC layer (`QueryOptions.datacenter`: a server forwards it over the WAN, a client agent through
its server), the records it returns loaded into a throw-away `Store`, and the question resolved
again by a `Resolver` for that datacenter, so every answer form (SRV targets named
`<node>.node.dc2.consul`, tags, health filtering, TTLs, truncation) is the local one.

Errors as Consul's DNS maps them: no path to the datacenter keeps the NXDOMAIN; any other
failure of the read is raised (`RPCError`), which the DNS server answers SERVFAIL.

Also owns DNS on client agents (`answer_on_client`): a client agent holds no catalog, so, as
Consul's client agents do (their DNS handlers issue RPCs to a server), it reads the same
`Internal.DNSRecords` slice for its own datacenter and resolves the question itself, under its
own DNS settings. `catalog_need` reads a question the way `Resolver.resolve` does and names the
slice the answer depends on: one service (any spelling, its nodes and checks), one node, the
whole catalog (reverse lookups) or nothing (`.addr`, unknown forms, other datacenters, which
then go the remote way above). Servers keep answering from their own store and answer cache.
"""

from __future__ import annotations

import random
from typing import Any

from dnslib import QTYPE

from proconsul.config import RuntimeConfig
from proconsul.dns.answer import CONSUL_SERVICE, Answer, Question, Resolver, Visibility, _locality, split_name
from proconsul.rpc_api import NoPathToDatacenter, QueryOptions, RPCError
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


def catalog_need(q: Question, datacenter: str) -> dict[str, Any]:
    """The `Internal.DNSRecords` arguments for the slice `Resolver.resolve(store, q)` reads in
    `datacenter` ({} when it reads nothing there); mirrors its parsing of the name."""
    if q.qtype in (QTYPE.SOA, QTYPE.NS):
        return {"service": CONSUL_SERVICE}  # the zone apex names the servers
    if q.qtype in (QTYPE.AXFR, QTYPE.IXFR):
        return {}
    if q.name == "arpa." or q.name.endswith(".arpa."):
        return {"all": True}  # reverse lookups scan every node and service address
    kind, parts, suffixes = split_name(q)
    if kind not in ("service", "node") or not parts or _locality(suffixes, datacenter) != datacenter:
        return {}
    if kind == "node":
        return {"node": ".".join(parts)}
    if len(parts) == 2 and parts[0].startswith("_") and parts[1].startswith("_"):
        return {"service": parts[0][1:]}
    return {"service": parts[-1]}


async def answer_on_client(
    server: Any, cfg: RuntimeConfig, q: Question, rng: random.Random, now: float, max_groups: int = 0,
    visible: Visibility | None = None,
) -> Answer:
    """A client agent's answer: the slice from a server (`allow_stale`/`max_stale` as the
    agent's DNS settings say), resolved here; names in other datacenters go the remote way.
    `visible` (ACLs on) keeps the instances the DNS token may see: a server answering a client
    agent's read has filtered the slice already, one reading for itself has not."""
    args = catalog_need(q, cfg.datacenter)
    store = Store()
    if args:
        stale = cfg.dns_config.allow_stale
        meta, records = await server.query("Internal.DNSRecords", args, QueryOptions(allow_stale=stale))
        if stale and meta.last_contact_ms > cfg.dns_config.max_stale_s * 1000:
            meta, records = await server.query("Internal.DNSRecords", args, QueryOptions())
        store = records_store(records)
    # No answer cache: each slice is a fresh store, so a cached entry could never be reused.
    answer = Resolver(cfg, cfg.datacenter, rng, now, None, max_groups, visible=visible).resolve(store, q)
    if answer.remote is not None:
        answer = await answer_remote(server, cfg, q, answer, rng, now, max_groups)
    return answer
