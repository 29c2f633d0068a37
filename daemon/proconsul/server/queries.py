"""Named read queries a server answers from its state store (sans-I/O).

Owns every read the HTTP API, anti-entropy and (later) client agents ask of a server, as a
named, data-only request: `name` plus plain `args`, answered by a pure function of the store
with `(index, result)`, where the result is already in Consul's JSON shape (PascalCase dicts
from `state.render`). Because requests and answers are plain data, a follower can forward a read
to the leader, and a client agent can send it to a server, over the RPC transport unchanged.

Each query also names what a blocking read of it waits on: tables, a KV prefix, or (for the
hot discovery reads) one service or one node by name, so that a write wakes only the reads it
can change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proconsul.coordinate import DEFAULT_SEGMENT, distance
from proconsul.server import acl_queries, prepared_query
from proconsul.state import commands, protection, render
from proconsul.state.fsm import TxnError, txn_op
from proconsul.state.records import Node, ServiceInstance
from proconsul.state.store import Store, StoreError, WatchSet
from proconsul.structs import HEALTH_PASSING

CATALOG_TABLES = ("nodes", "services", "checks")
COORDINATE_TABLES = ("coordinates",)
KV_TABLES = ("kvs", "tombstones")

Args = dict[str, Any]
QueryFn = Callable[[Store, Args], tuple[int, Any]]


class UnknownQuery(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class QuerySpec:
    run: QueryFn
    tables: tuple[str, ...]
    kv_prefix: Callable[[Args], str | None] = lambda args: None
    # Narrower than `tables` where the read allows it (one service, one node, fewer tables).
    narrow: Callable[[Args], WatchSet] | None = None

    def watch_set(self, args: Args) -> WatchSet:
        if self.narrow is not None:
            return self.narrow(args)
        return WatchSet(self.tables, self.kv_prefix(args))


def _one_service(args: Args) -> WatchSet:
    # Every write that can change a service's instances, their nodes or checks touches the
    # service by name (Store._touch_service), as its index does.
    return WatchSet(services=(str(args["service"]),))


def _one_node(args: Args) -> WatchSet:
    return WatchSet(nodes=(str(args["node"]),))


def _service_list(args: Args) -> WatchSet:
    # The answer's index is the services table's; node fields matter only when filtered by them.
    if args.get("node_meta") or args.get("instances"):
        return WatchSet(("services", "nodes"))
    return WatchSet(("services",))


def _meta_ok(n: Node, wanted: dict[str, str]) -> bool:
    return all(n.meta.get(k) == v for k, v in wanted.items())


def _tags_ok(svc: ServiceInstance, tags: list[str]) -> bool:
    lowered = {t.lower() for t in svc.tags}
    return all(t.lower() in lowered for t in tags)


def _near(store: Store, args: Args, items: list[Any], node_of: Callable[[Any], str]) -> list[Any]:
    """Consul's `?near=`: a stable sort by estimated RTT from the node `args["near"]`.

    Nodes without a coordinate sort last (infinite distance); when the source node has no
    coordinate the order is left alone, as there is nothing to measure from. The source node
    itself is at distance 0: Consul measures it from its own coordinate (twice its height plus
    adjustments), which on a jittery link can rank a neighbour before it, but no node is
    closer to a node than itself.
    """
    near = args.get("near")
    if not near:
        return items
    source = store.coordinates.get(near, {}).get(DEFAULT_SEGMENT)
    if source is None:
        return items

    def rtt(item: Any) -> float:
        node = node_of(item)
        if node == near:
            return 0.0
        return distance(source, store.coordinates.get(node, {}).get(DEFAULT_SEGMENT))

    return sorted(items, key=rtt)


# ----------------------------------------------------------------------------------------- KV


def kv_get(store: Store, args: Args) -> tuple[int, Any]:
    index, entry = store.kv_get(args["key"])
    return index, render.dir_entry(entry) if entry is not None else None


def kv_list(store: Store, args: Args) -> tuple[int, Any]:
    index, entries = store.kv_list(args["prefix"])
    return index, [render.dir_entry(e) for e in entries]


def kv_keys(store: Store, args: Args) -> tuple[int, Any]:
    prefix, separator = args["prefix"], args.get("separator", "")
    index, entries = store.kv_list(prefix)
    keys = [e.key for e in entries]
    if not separator:
        return index, keys
    out: list[str] = []
    for k in keys:
        rest = k[len(prefix) :]
        pos = rest.find(separator)
        item = k if pos < 0 else prefix + rest[: pos + len(separator)]
        if not out or out[-1] != item:
            out.append(item)
    return index, out


def kv_lock_delay(store: Store, args: Args) -> tuple[int, Any]:
    """Whether acquiring `key` now falls in the lock-delay of an invalidated holder.

    The lock-delay is server-local state (each server records it when it applies the session's
    invalidation), so a client agent asks a server, as Consul checks it in KVS.Apply on the leader.
    """
    return store.last_index, store.lock_delay_active(args["key"])


def txn_read(store: Store, args: Args) -> tuple[int, Any]:
    """A read-only transaction: {"Results": [{"KV"|"Node"|"Service"|"Check": ...}]} or
    {"Errors": [...]} (its operations only read, so it never changes state)."""
    errors: list[TxnError] = []
    results: list[Any] = []
    for i, raw in enumerate(args["ops"]):
        op = commands.decode_txn_op(raw)
        if commands.txn_op_writes(op):
            errors.append(TxnError(i, "read-only transaction with a write operation"))
            continue
        try:
            results.extend(txn_op(store, 0, i, op, errors))
        except StoreError as exc:
            errors.append(TxnError(i, str(exc)))
    if errors:
        return store.kv_max_index(), {"Errors": [{"OpIndex": e.op_index, "What": e.what} for e in errors]}
    return store.kv_max_index(), {"Results": [render.txn_result(r) for r in results if r is not None]}


# ------------------------------------------------------------------------------------ catalog


def catalog_nodes(store: Store, args: Args) -> tuple[int, Any]:
    wanted = args.get("node_meta") or {}
    index, nodes = store.list_nodes()
    found = [render.catalog_node(n) for n in nodes if _meta_ok(n, wanted)]
    return index, _near(store, args, found, lambda item: item["Node"])


def catalog_services(store: Store, args: Args) -> tuple[int, Any]:
    """Service name -> tags; with `instances`, the instances themselves (`?filter` runs on them)."""
    wanted = args.get("node_meta") or {}
    if args.get("instances"):
        found = []
        for node_name in sorted(store.services):
            n = store.nodes.get(node_name)
            if n is None or not _meta_ok(n, wanted):
                continue
            per = store.services[node_name]
            found.extend(render.service_node(n, per[sid]) for sid in sorted(per))
        return store.catalog_index("services"), found
    if not wanted:
        return store.list_services()
    out: dict[str, set[str]] = {}
    for node_name, per in store.services.items():
        n = store.nodes.get(node_name)
        if n is None or not _meta_ok(n, wanted):
            continue
        for svc in per.values():
            out.setdefault(svc.service, set()).update(svc.tags)
    return store.catalog_index("services"), {k: sorted(out[k]) for k in sorted(out)}


def catalog_service_nodes(store: Store, args: Args) -> tuple[int, Any]:
    name, tags, wanted = args["service"], args.get("tags") or [], args.get("node_meta") or {}
    out = []
    for svc in store.service_instances(name):
        n = store.nodes.get(svc.node)
        if n is None or not _tags_ok(svc, tags) or not _meta_ok(n, wanted):
            continue
        out.append(render.service_node(n, svc))
    return store.index_for_service(name), _near(store, args, out, lambda item: item["Node"])


def catalog_node_services(store: Store, args: Args) -> tuple[int, Any]:
    index, n, svcs = store.node_services(args["node"])
    if n is None:
        return index, None
    return index, {"Node": render.node(n), "Services": [render.service(s) for s in svcs]}


# ------------------------------------------------------------------------------------- health


def health_node_checks(store: Store, args: Args) -> tuple[int, Any]:
    index, checks = store.node_checks(args["node"])
    return index, [render.check(c) for c in checks]


def health_service_checks(store: Store, args: Args) -> tuple[int, Any]:
    wanted = args.get("node_meta") or {}
    index, checks = store.service_checks(args["service"])
    found = [render.check(c) for c in checks if not wanted or _meta_ok(store.nodes[c.node], wanted)]
    return index, _near(store, args, found, lambda item: item["Node"])


def health_checks_in_state(store: Store, args: Args) -> tuple[int, Any]:
    wanted = args.get("node_meta") or {}
    index, checks = store.checks_in_state(args["state"])
    found = [render.check(c) for c in checks if not wanted or _meta_ok(store.nodes[c.node], wanted)]
    return index, _near(store, args, found, lambda item: item["Node"])


def health_service_nodes(store: Store, args: Args) -> tuple[int, Any]:
    """Instances of a service with node and checks; `passing` keeps all-passing ones only,
    unless the service's protection threshold says the filter would empty it too far."""
    name, tags = args["service"], args.get("tags") or []
    passing, wanted = bool(args.get("passing")), args.get("node_meta") or {}
    candidates = []
    for svc in store.service_instances(name):
        n = store.nodes.get(svc.node)
        if n is None or not _tags_ok(svc, tags) or not _meta_ok(n, wanted):
            continue
        candidates.append((n, svc, store.checks_for_instance(svc)))
    if passing:
        candidates, _ = protection.select_healthy(
            candidates, lambda c: c[1], lambda c: all(check.status == HEALTH_PASSING for check in c[2])
        )
    out = []
    for n, svc, checks in candidates:
        node = render.node(n)
        node["Datacenter"] = node["Datacenter"] or args.get("datacenter", "")
        out.append({"Node": node, "Service": render.service(svc), "Checks": [render.check(c) for c in checks]})
    return store.index_for_service(name), _near(store, args, out, lambda item: item["Node"]["Node"])


# ------------------------------------------------------------------------------------ session


def session_get(store: Store, args: Args) -> tuple[int, Any]:
    index, session = store.get_session(args["id"])
    return index, [render.session(session)] if session else []


def session_node(store: Store, args: Args) -> tuple[int, Any]:
    index, sessions = store.node_sessions(args["node"])
    return index, [render.session(s) for s in sessions]


def session_list(store: Store, args: Args) -> tuple[int, Any]:
    index, sessions = store.list_sessions()
    return index, [render.session(s) for s in sessions]


# -------------------------------------------------------------------------------- coordinate


def _coordinate_entry(node: str, segment: str, coord: Any) -> dict[str, Any]:
    # Consul CE's structs.Coordinate: Partition is omitted when empty.
    return {"Node": node, "Segment": segment, "Coord": coord.to_json()}


def coordinate_list_nodes(store: Store, args: Args) -> tuple[int, Any]:
    index, entries = store.list_coordinates()
    return index, [_coordinate_entry(n, seg, c) for n, seg, c in entries]


def coordinate_node(store: Store, args: Args) -> tuple[int, Any]:
    index, per = store.node_coordinates(args["node"])
    return index, [_coordinate_entry(args["node"], seg, c) for seg, c in per.items()]


# ----------------------------------------------------------------------------------- internal


def node_state(store: Store, args: Args) -> tuple[int, Any]:
    """One node's catalog entries in wire form, for the agent's anti-entropy comparison."""
    index, n, svcs = store.node_services(args["node"])
    _, checks = store.node_checks(args["node"])
    return index, {
        "node": n.to_wire() if n is not None else None,
        "services": [s.to_wire() for s in svcs],
        "checks": [c.to_wire() for c in checks],
    }


def dns_records(store: Store, args: Args) -> tuple[int, Any]:
    """The catalog records a DNS answer for another datacenter is built from, in wire form:
    every instance of `service` (any spelling) with its node and checks, the node `node` (any
    spelling), or with `all` the whole catalog (a client agent's reverse lookups). See
    `proconsul.dns.remote`."""
    nodes: dict[str, Node] = {}
    services: list[Any] = []
    checks: dict[tuple[str, str], Any] = {}  # node checks count once per node
    if args.get("service"):
        for svc in store.service_instances_any_case(str(args["service"])):
            node = store.nodes.get(svc.node)
            if node is None:
                continue
            nodes[svc.node] = node
            services.append(svc.to_wire())
            checks.update(((c.node, c.check_id), c.to_wire()) for c in store.checks_for_instance(svc))
    if args.get("node"):
        wanted = str(args["node"]).lower()
        for node_name in sorted(store.nodes):
            if node_name.lower() == wanted:
                nodes[node_name] = store.nodes[node_name]
    if args.get("all"):
        # Reverse lookups from a client agent scan every node and service address.
        nodes = {n: store.nodes[n] for n in sorted(store.nodes)}
        services = [per[s].to_wire() for n in sorted(store.services) for per in (store.services[n],) for s in sorted(per)]
        checks = {(c.node, c.check_id): c.to_wire() for n in sorted(store.checks) for c in store.checks[n].values()}
    return store.catalog_index(*CATALOG_TABLES), {
        "nodes": [n.to_wire() for n in nodes.values()],
        "services": services,
        "checks": list(checks.values()),
    }


READS: dict[str, QuerySpec] = {
    "KVS.Get": QuerySpec(kv_get, KV_TABLES, lambda a: a["key"]),
    "KVS.List": QuerySpec(kv_list, KV_TABLES, lambda a: a["prefix"]),
    "KVS.ListKeys": QuerySpec(kv_keys, KV_TABLES, lambda a: a["prefix"]),
    "Txn.Read": QuerySpec(txn_read, KV_TABLES + CATALOG_TABLES),
    "Catalog.ListNodes": QuerySpec(catalog_nodes, CATALOG_TABLES, narrow=lambda a: WatchSet(("nodes",))),
    "Catalog.ListServices": QuerySpec(catalog_services, CATALOG_TABLES, narrow=_service_list),
    "Catalog.ServiceNodes": QuerySpec(catalog_service_nodes, CATALOG_TABLES, narrow=_one_service),
    "Catalog.NodeServices": QuerySpec(catalog_node_services, CATALOG_TABLES, narrow=_one_node),
    "Health.NodeChecks": QuerySpec(health_node_checks, CATALOG_TABLES, narrow=_one_node),
    "Health.ServiceChecks": QuerySpec(health_service_checks, CATALOG_TABLES, narrow=_one_service),
    "Health.ChecksInState": QuerySpec(health_checks_in_state, CATALOG_TABLES, narrow=lambda a: WatchSet(("checks",))),
    "Health.ServiceNodes": QuerySpec(health_service_nodes, CATALOG_TABLES, narrow=_one_service),
    "Session.Get": QuerySpec(session_get, ("sessions",)),
    "Session.NodeSessions": QuerySpec(session_node, ("sessions",)),
    "Session.List": QuerySpec(session_list, ("sessions",)),
    "Internal.NodeState": QuerySpec(node_state, CATALOG_TABLES, narrow=_one_node),
    "Coordinate.ListNodes": QuerySpec(coordinate_list_nodes, COORDINATE_TABLES),
    "Coordinate.Node": QuerySpec(coordinate_node, COORDINATE_TABLES),
    "Internal.DNSRecords": QuerySpec(dns_records, CATALOG_TABLES),
    "KVS.LockDelay": QuerySpec(kv_lock_delay, KV_TABLES),
    "PreparedQuery.List": QuerySpec(prepared_query.list_all, ("prepared_queries",)),
    "PreparedQuery.Get": QuerySpec(prepared_query.get, ("prepared_queries",)),
    "PreparedQuery.Explain": QuerySpec(prepared_query.explain, ("prepared_queries",)),
    "PreparedQuery.ExecuteLocal": QuerySpec(prepared_query.execute_local, prepared_query.TABLES),
    "ACL.Resolve": QuerySpec(acl_queries.resolve, acl_queries.TOKEN_TABLES),
    "ACL.TokenRead": QuerySpec(acl_queries.token_read, acl_queries.TOKEN_TABLES),
    "ACL.TokenList": QuerySpec(acl_queries.token_list, acl_queries.TOKEN_TABLES),
    "ACL.PolicyRead": QuerySpec(acl_queries.policy_read, acl_queries.POLICY_TABLES),
    "ACL.PolicyList": QuerySpec(acl_queries.policy_list, acl_queries.POLICY_TABLES),
    "ACL.RoleRead": QuerySpec(acl_queries.role_read, acl_queries.ROLE_TABLES),
    "ACL.RoleList": QuerySpec(acl_queries.role_list, acl_queries.ROLE_TABLES),
    "ACL.BootstrapState": QuerySpec(acl_queries.bootstrap_state, acl_queries.TOKEN_TABLES),
}

def spec(name: str) -> QuerySpec:
    try:
        return READS[name]
    except KeyError:
        raise UnknownQuery(f"unknown query {name!r}") from None
