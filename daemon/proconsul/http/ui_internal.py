"""`/v1/internal/ui/services` and `/v1/internal/ui/nodes`: the web UI's aggregate reads.

Owns the two summaries the UI's list pages block on, in the shapes Consul's UI endpoints give
(learned from Consul's API, not its code): per service a `ServiceSummary` (name, tags, the nodes
it runs on, instance count, checks by status), per node a `NodeDump` entry (the node with its
services and checks). Each is composed from the public named reads (the catalog's instances,
its checks and its nodes), so whatever filtering those reads apply applies here too. Both take `?dc`, `?index`,
`?wait`, `?stale`, `?consistent` and `?filter` (go-bexpr over the summaries' own fields, as
Consul filters them: `Name`, `Tags`, `ChecksCritical`, ...; `Node`, `Address`, `Meta`, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from proconsul.http.appkeys import AGENT
from proconsul.http.common import filter_items, json_response, query_options
from proconsul.rpc_api import QueryMeta, QueryOptions, ServerAccess

_STATUS_FIELD = {"passing": "ChecksPassing", "warning": "ChecksWarning", "critical": "ChecksCritical"}


# The reads a summary is composed of. Each answers with its own table's index (services,
# checks, nodes), so none alone wakes for every change that matters: see `_catalog`.
_PARTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("Catalog.ListServices", {"instances": True}),
    ("Health.ChecksInState", {"state": "any"}),
    ("Catalog.ListNodes", {}),
)


async def _snapshot(server: ServerAccess, now: QueryOptions) -> tuple[QueryMeta, list[Any]]:
    """The three reads answered at once; the index is the largest of theirs (as Consul's dump
    reads report the catalog's index over all its tables)."""
    metas, results = [], []
    for name, args in _PARTS:
        meta, result = await server.query(name, args, now)
        metas.append(meta)
        results.append(list(result))
    return dataclasses.replace(metas[0], index=max(m.index for m in metas)), results


async def _catalog(request: web.Request) -> tuple[QueryMeta, list[Any], str]:
    """(meta, [instances, checks, nodes], datacenter) under the request's blocking options.

    Blocking: when `?index` is not behind the current one, one read parks until any catalog
    table passes it. That read is `Internal.DNSRecords` asked for no record: it answers only the
    catalog's overall index (nodes, services and checks together) and wakes on a change to any
    of them, which none of the public reads does alone. Then the three reads are taken afresh.
    A change between the first look and the wait is not lost: the wait's index is at least the
    one looked at.
    """
    agent = request.app[AGENT]
    server = agent.server
    opts = query_options(request)
    now = dataclasses.replace(opts, min_index=0, max_wait_s=0.0)
    meta, results = await _snapshot(server, now)
    if opts.min_index and meta.index <= opts.min_index:
        await server.query("Internal.DNSRecords", {}, opts)
        meta, results = await _snapshot(server, now)
    return meta, results, opts.datacenter or agent.config.datacenter


def _by_node(checks: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for check in checks:
        out.setdefault(check["Node"], []).append(check)
    return out


def service_summaries(instances: list[dict[str, Any]], checks: list[dict[str, Any]], dc: str) -> list[dict[str, Any]]:
    """One summary per service name, sorted by name. A service's checks are its instances' own
    checks and the node-level checks of the nodes it runs on (a failing node fails its services),
    each counted once."""
    node_checks = _by_node(checks)
    summaries: dict[str, dict[str, Any]] = {}
    counted: dict[str, set[tuple[str, str]]] = {}
    for inst in instances:
        name = inst["ServiceName"]
        summary = summaries.get(name)
        if summary is None:
            summary = summaries[name] = {
                "Kind": inst.get("ServiceKind", ""),
                "Name": name,
                "Datacenter": dc,
                "Tags": [],
                "Nodes": [],
                "ExternalSources": [],
                "InstanceCount": 0,
                "ChecksPassing": 0,
                "ChecksWarning": 0,
                "ChecksCritical": 0,
                "GatewayConfig": {},
                "TransparentProxy": False,
                "ConnectNative": False,
                "ConnectedWithProxy": False,
                "ConnectedWithGateway": False,
            }
            counted[name] = set()
        summary["InstanceCount"] += 1
        for tag in inst.get("ServiceTags") or []:
            if tag not in summary["Tags"]:
                summary["Tags"].append(tag)
        if inst["Node"] not in summary["Nodes"]:
            summary["Nodes"].append(inst["Node"])
        for check in node_checks.get(inst["Node"], []):
            if check.get("ServiceID") not in ("", None, inst["ServiceID"]):
                continue
            key = (check["Node"], check["CheckID"])
            if key in counted[name]:
                continue
            counted[name].add(key)
            field = _STATUS_FIELD.get(check["Status"])
            if field:
                summary[field] += 1
    for summary in summaries.values():
        summary["Tags"].sort()
        summary["Nodes"].sort()
    return [summaries[name] for name in sorted(summaries)]


def _node_service(inst: dict[str, Any]) -> dict[str, Any]:
    """A catalog ServiceNode's flattened `ServiceXxx` fields as the NodeService a NodeDump lists."""
    out: dict[str, Any] = {"ID": inst["ServiceID"], "Service": inst["ServiceName"]}
    for key, value in inst.items():
        if key.startswith("Service") and key not in ("ServiceID", "ServiceName"):
            out[key[len("Service"):]] = value
    out["CreateIndex"] = inst.get("CreateIndex", 0)
    out["ModifyIndex"] = inst.get("ModifyIndex", 0)
    return out


async def ui_services(request: web.Request) -> web.Response:
    meta, (instances, checks, _), dc = await _catalog(request)
    summaries = filter_items(request, service_summaries(instances, checks, dc), None)
    return json_response(request, summaries, meta)


async def ui_nodes(request: web.Request) -> web.Response:
    meta, (instances, checks, nodes), dc = await _catalog(request)
    services: dict[str, list[dict[str, Any]]] = {}
    for inst in instances:
        services.setdefault(inst["Node"], []).append(_node_service(inst))
    node_checks = _by_node(checks)
    dump = []
    for node in sorted(nodes, key=lambda n: n["Node"]):
        entry = {
            "ID": node.get("ID", ""),
            "Node": node["Node"],
            "Address": node.get("Address", ""),
            "Datacenter": node.get("Datacenter") or dc,
            "TaggedAddresses": node.get("TaggedAddresses"),
            "Meta": node.get("Meta") or {},
            "Services": services.get(node["Node"], []),
            "Checks": node_checks.get(node["Node"], []),
        }
        dump.append(entry)
    return json_response(request, filter_items(request, dump, None), meta)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/internal/ui/services", ui_services),
        web.get("/v1/internal/ui/nodes", ui_nodes),
    ]
