"""Executing prepared queries: the local filter (a named read) and the failover across datacenters.

Owns what `/v1/query/:id/execute`, `/explain` and `<name>.query.consul` answer, as Consul's
`PreparedQuery.Execute` does it:

- `execute_local` (the named read `PreparedQuery.ExecuteLocal`, a pure function of the store):
  resolve the query (or take the rendered one a failover ships along, since the remote datacenter
  does not store it), take every instance of its service, drop the unhealthy ones (any critical
  check that is not in `IgnoreCheckIDs`; with `OnlyPassing`, any check that is not passing), keep
  those whose node meta, service meta and tags match (`!tag` excludes), shuffle with the seed the
  caller drew, sort by network-coordinate distance from the `Near` node (`?near=` first, then the
  query's `Service.Near`; `_agent` is the asking agent's node, `_ip` the node whose address is the
  client's IP), the source node itself first, then cut to `?limit`. A remote execution only
  shuffles, as Consul's ExecuteRemote.
- `execute` (async, on whichever agent got the request): run it where asked (`?dc=`), and when
  nothing healthy came back, fail over: the `NearestN` datacenters nearest by WAN round-trip time,
  then `Datacenters` (or `Targets`) in their order, each tried once, unknown ones skipped, a failing
  one logged and passed over; `Failovers` counts the datacenters tried and `Datacenter` names the
  last one that answered. Reads travel as named reads through the RPC layer (`QueryOptions.datacenter`),
  so client agents and servers execute the same way.

Blocking is not supported on execute, as in Consul.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from typing import Any

from proconsul.coordinate import DEFAULT_SEGMENT, distance
from proconsul.rpc_api import QueryMeta, QueryOptions, RPCError, ServerAccess
from proconsul.state import prepared_query as pq
from proconsul.state import render
from proconsul.state.records import HealthCheck, Node, ServiceInstance
from proconsul.state.store import Store
from proconsul.structs import HEALTH_CRITICAL, HEALTH_PASSING

logger = logging.getLogger(__name__)

TABLES = ("prepared_queries", "nodes", "services", "checks")
# Consul swaps the source node to the front only if it is among the first ten after the sort.
_SOURCE_SEARCH_DEPTH = 10


class QueryNotFound(RPCError):
    """Consul's ErrQueryNotFound; the HTTP layer answers it 404."""

    def __init__(self) -> None:
        super().__init__("Query not found")


# -------------------------------------------------------------------------------- local filter

Instance = tuple[Node, ServiceInstance, list[HealthCheck]]


def _healthy(checks: list[HealthCheck], only_passing: bool, ignore: frozenset[str]) -> bool:
    for c in checks:
        if c.check_id in ignore:
            continue
        if c.status == HEALTH_CRITICAL or (only_passing and c.status != HEALTH_PASSING):
            return False
    return True


def _tags_ok(svc: ServiceInstance, tags: list[str]) -> bool:
    have = {t.lower() for t in svc.tags}
    for tag in tags:
        tag = tag.lower()
        if tag.startswith("!"):
            if tag[1:] in have:
                return False
        elif tag not in have:
            return False
    return True


def _meta_ok(meta: Any, wanted: dict[str, str] | None) -> bool:
    return all(meta.get(k) == v for k, v in (wanted or {}).items())


def _connect_capable(svc: ServiceInstance, name: str) -> bool:
    if svc.kind == "connect-proxy":
        proxy = svc.extra.get("Proxy") or {}
        return str(proxy.get("DestinationServiceName", "")).lower() == name
    connect = svc.extra.get("Connect") or {}
    return svc.service.lower() == name and bool(connect.get("Native"))


def matching_instances(store: Store, service: dict[str, Any], connect: bool = False) -> list[Instance]:
    """The instances a query's Service block selects, in (node, service ID) order.

    The service name matches in any case, as Consul's service index (and DNS names) do."""
    name = service["Service"].lower()
    only_passing = bool(service["OnlyPassing"])
    ignore = frozenset(service["IgnoreCheckIDs"] or ())
    tags = service["Tags"] or []
    connect = connect or bool(service["Connect"])
    out: list[Instance] = []
    # A plain query reads the by-name index; Connect matches proxies by destination: a scan.
    if connect:
        candidates = [store.services[n][sid] for n in sorted(store.services) for sid in sorted(store.services[n])]
    else:
        candidates = store.service_instances_any_case(name)
    for svc in candidates:
        node = store.nodes.get(svc.node)
        if node is None:
            continue
        if connect:
            if not _connect_capable(svc, name):
                continue
        elif svc.service.lower() != name:
            continue
        checks = store.checks_for_instance(svc)
        if not _healthy(checks, only_passing, ignore):
            continue
        if not _meta_ok(node.meta, service["NodeMeta"]) or not _meta_ok(svc.meta, service["ServiceMeta"]):
            continue
        if tags and not _tags_ok(svc, tags):
            continue
        out.append((node, svc, checks))
    return out


def _source_node(store: Store, near: str, agent_node: str, source_ip: str) -> str:
    if near == "_agent":
        return agent_node
    if near == "_ip":
        if source_ip:
            for name in sorted(store.nodes):
                if store.nodes[name].address == source_ip:
                    return name
        return ""
    return near


def _sort_near(store: Store, items: list[Instance], source: str) -> list[Instance]:
    coord = store.coordinates.get(source, {}).get(DEFAULT_SEGMENT)
    if coord is not None:
        def rtt(item: Instance) -> float:
            if item[0].node == source:
                return 0.0
            return distance(coord, store.coordinates.get(item[0].node, {}).get(DEFAULT_SEGMENT))

        items = sorted(items, key=rtt)
    for i, item in enumerate(items[:_SOURCE_SEARCH_DEPTH]):
        if item[0].node.lower() == source.lower():
            items[0], items[i] = items[i], items[0]
            break
    return items


def execute_local(store: Store, args: dict[str, Any]) -> tuple[int, Any]:
    """The named read `PreparedQuery.ExecuteLocal`; see the module docstring.

    args: `query` (a rendered query, from a failover) or `id_or_name`; `seed` for the shuffle;
    `sort` with `near`, `agent_node`, `source_ip` (only where the asking agent lives); `limit`;
    `connect`. Answers {"Query": rendered query or None, "Nodes": [[node, service, [checks]]]}
    in wire form.
    """
    index = store.catalog_index(*TABLES)
    query = args.get("query")
    if query is None:
        query = pq.resolve(store.prepared_queries, str(args.get("id_or_name", "")))
        if query is None:
            return index, {"Query": None, "Nodes": []}
    items = matching_instances(store, query["Service"], bool(args.get("connect")))
    random.Random(int(args.get("seed", 0))).shuffle(items)
    if args.get("sort"):
        near = str(args.get("near") or query["Service"]["Near"] or "")
        source = _source_node(store, near, str(args.get("agent_node", "")), str(args.get("source_ip", "")))
        if source:
            items = _sort_near(store, items, source)
    limit = int(args.get("limit") or 0)
    if limit > 0:
        items = items[:limit]
    nodes = [[n.to_wire(), s.to_wire(), [c.to_wire() for c in checks]] for n, s, checks in items]
    return index, {"Query": query, "Nodes": nodes}


def explain(store: Store, args: dict[str, Any]) -> tuple[int, Any]:
    """The named read `PreparedQuery.Explain`: the rendered query `name` resolves to, or None."""
    return store.catalog_index("prepared_queries"), pq.resolve(store.prepared_queries, str(args["name"]))


def get(store: Store, args: dict[str, Any]) -> tuple[int, Any]:
    """The named read `PreparedQuery.Get`: [query] for an ID, or None."""
    q = store.prepared_queries.get(str(args["id"]))
    index = store.catalog_index("prepared_queries")
    if q is None:
        return index, None
    return index, [pq.render(q.id, q.definition, q.create_index, q.modify_index)]


def list_all(store: Store, args: dict[str, Any]) -> tuple[int, Any]:
    index, queries = store.list_prepared_queries()
    return index, [pq.render(q.id, q.definition, q.create_index, q.modify_index) for q in queries]


# ------------------------------------------------------------------------------------ failover


@dataclass
class Execution:
    """What an execution found: the rendered query, the instances (records), where they came from."""

    query: dict[str, Any]
    instances: list[Instance]
    datacenter: str
    failovers: int
    meta: QueryMeta


def _instances(wire: list[Any]) -> list[Instance]:
    return [
        (Node.from_wire(n), ServiceInstance.from_wire(s), [HealthCheck.from_wire(c) for c in checks])
        for n, s, checks in wire
    ]


def failover_targets(query: dict[str, Any], nearest: list[str]) -> list[tuple[str, str]]:
    """(datacenter, peer) pairs to try in order: NearestN of `nearest` (the other known datacenters,
    nearest first), then Datacenters or Targets not tried yet; unknown datacenters are skipped."""
    failover = query["Service"]["Failover"]
    known = set(nearest)
    out: list[tuple[str, str]] = []
    chosen: set[str] = set()
    n = int(failover["NearestN"] or 0)
    for dc in nearest[:n] if n > 0 else []:
        out.append((dc, ""))
        chosen.add(dc)
    if failover["Datacenters"]:
        listed = [{"Datacenter": dc, "Peer": ""} for dc in failover["Datacenters"]]
    else:
        listed = list(failover["Targets"] or [])
    for target in listed:
        dc, peer = target.get("Datacenter", ""), target.get("Peer", "")
        if dc:
            if dc not in known:
                logger.debug("prepared query: skipping unknown datacenter %s", dc)
            elif dc not in chosen:
                out.append((dc, ""))
                chosen.add(dc)
        if peer:
            out.append(("", peer))
    return out


async def execute(
    server: ServerAccess,
    id_or_name: str,
    opts: QueryOptions,
    local_dc: str,
    rng: random.Random,
    *,
    agent_node: str = "",
    source_ip: str = "",
    near: str = "",
    limit: int = 0,
    connect: bool = False,
) -> Execution:
    """Execute the query `id_or_name` where `opts.datacenter` says (ours by default), failing over
    when nothing healthy is found there. Raises QueryNotFound."""
    opts = replace(opts, min_index=0)  # Consul does not block on execute
    target = opts.datacenter or local_dc
    args = {
        "id_or_name": id_or_name,
        "seed": rng.getrandbits(63),
        # Distance sorting only where the asking agent's coordinates live (Consul's
        # sortNodesByDistanceFrom ignores a source in another datacenter).
        "sort": target == local_dc,
        "near": near,
        "agent_node": agent_node,
        "source_ip": source_ip,
        "limit": limit,
        "connect": connect,
    }
    meta, found = await server.query("PreparedQuery.ExecuteLocal", args, opts)
    query = found["Query"]
    if query is None:
        raise QueryNotFound()
    instances = _instances(found["Nodes"])
    answered, failovers = target, 0
    if not instances:
        nearest = [dc for dc in await server.list_datacenters() if dc != target]
        for dc, peer in failover_targets(query, nearest):
            failovers += 1
            if peer:
                # No cluster peering here: a peer target has nothing to import from.
                logger.warning("prepared query %s: peer %s is not known (no cluster peering)", query["ID"], peer)
                continue
            remote_args = {"query": query, "seed": rng.getrandbits(63), "limit": limit, "connect": connect}
            try:
                _, remote = await server.query("PreparedQuery.ExecuteLocal", remote_args, replace(opts, datacenter=dc))
            except RPCError as exc:
                logger.warning("prepared query %s: failed querying for service %s in datacenter %s: %s",
                               query["ID"], query["Service"]["Service"], dc, exc)
                continue
            answered = dc
            instances = _instances(remote["Nodes"])
            if instances:
                break
    return Execution(query, instances, answered, failovers, meta)


def check_service_nodes(execution: Execution) -> list[dict[str, Any]]:
    """The instances as Consul's CheckServiceNode JSON objects (`Nodes` of an execute answer)."""
    out = []
    for node, svc, checks in execution.instances:
        n = render.node(node)
        n["Datacenter"] = n["Datacenter"] or execution.datacenter
        out.append({"Node": n, "Service": render.service(svc), "Checks": [render.check(c) for c in checks]})
    return out
