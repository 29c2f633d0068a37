"""`proconsul catalog datacenters|nodes|services`: read the catalog from the command line.

Owns these commands' flags, the `/v1/catalog/...` calls they make, and their output layout,
which follows `consul catalog ...`: columns `Node  ID  Address  DC` (plus `TaggedAddresses  Meta`
with -detailed), one service per line (with sorted, comma-joined tags under -tags).
"""

from __future__ import annotations

from typing import Any

from proconsul.api_client import APIError
from proconsul.cli.base import HTTP_SERVER, Command, Context, FlagSpec, GroupCommand, too_many_args
from proconsul.cli.output import columnize, tab_align


def parse_kv_pairs(values: list[str], flag: str) -> dict[str, str] | str:
    """Parse repeated `-flag key=value` uses; on error return Go's flag error message instead."""
    out: dict[str, str] = {}
    for item in values:
        if "=" not in item:
            return f'invalid value "{item}" for flag -{flag}: Missing "=" value in argument: {item}'
        k, _, v = item.partition("=")
        out[k] = v
    return out


def _node_meta_params(meta: dict[str, str]) -> list[tuple[str, str]]:
    # The HTTP API takes node metadata filters as repeated `node-meta=key:value`.
    return [("node-meta", f"{k}:{v}") for k, v in sorted(meta.items())]


def _map_to_kv(m: dict[str, str] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((m or {}).items()))


class CatalogCommand(GroupCommand):
    name = "catalog"
    synopsis = "Interact with the catalog"
    usage = """
Usage: proconsul catalog <subcommand> [options] [args]

  Commands for reading the catalog: datacenters, nodes and services.

      $ proconsul catalog datacenters
      $ proconsul catalog nodes
      $ proconsul catalog services
"""


class CatalogDatacenters(Command):
    name = "catalog datacenters"
    synopsis = "Lists all known datacenters"
    http = HTTP_SERVER
    usage = """
Usage: proconsul catalog datacenters [options]

  Lists every known datacenter, nearest (by round-trip time) first.
"""

    def run(self, ctx: Context) -> int:
        if ctx.args:
            return too_many_args(ctx.ui, len(ctx.args), "0")
        client = ctx.connect()
        if client is None:
            return 1
        try:
            dcs = client.get_json("/v1/catalog/datacenters") or []
        except APIError as exc:
            # Consul prints this and still exits 0; a failed query exiting 1 is what scripts need.
            ctx.ui.error(f"Error listing datacenters: {exc}")
            return 1
        for dc in dcs:
            ctx.ui.output(str(dc))
        return 0


class CatalogNodes(Command):
    name = "catalog nodes"
    synopsis = "Lists all nodes in the given datacenter"
    http = HTTP_SERVER
    usage = """
Usage: proconsul catalog nodes [options]

  Lists the nodes registered in a datacenter (by default the local agent's).

      $ proconsul catalog nodes
      $ proconsul catalog nodes -detailed
      $ proconsul catalog nodes -service=web
      $ proconsul catalog nodes -node-meta="foo=bar"
      $ proconsul catalog nodes -near=node-web
"""

    def define(self, spec: FlagSpec) -> None:
        spec.bool(
            "detailed", "Output detailed information about the nodes including their addresses and metadata."
        )
        spec.string(
            "filter",
            "Filter expression to apply to the node list (see the HTTP API's filtering).",
            default="",
            example="string",
        )
        spec.string(
            "near",
            "Node name to sort the node list by estimated round-trip time from. "
            '"_agent" uses this agent\'s node.',
            default="",
            example="string",
        )
        spec.list(
            "node-meta",
            "Metadata to filter nodes with, as key=value. May be given multiple times.",
            example="key=value",
        )
        spec.string(
            "service",
            "Service id or name to filter nodes. Only nodes providing the given service are listed.",
            default="",
            example="id or name",
        )

    def run(self, ctx: Context) -> int:
        o = ctx.opts
        meta = parse_kv_pairs(o["node-meta"], "node-meta")
        if isinstance(meta, str):
            ctx.ui.error(meta)
            return 1
        if ctx.args:
            return too_many_args(ctx.ui, len(ctx.args), "0")
        client = ctx.connect()
        if client is None:
            return 1
        params = _node_meta_params(meta)
        if o["near"]:
            params.append(("near", o["near"]))
        if o["filter"]:
            params.append(("filter", o["filter"]))
        nodes: list[dict[str, Any]]
        if o["service"]:
            try:
                entries = client.get_json("/v1/catalog/service/" + o["service"], params) or []
            except APIError as exc:
                ctx.ui.error(f"Error listing nodes for service: {exc}")
                return 1
            nodes = [
                {
                    "ID": e.get("ID", ""),
                    "Node": e.get("Node", ""),
                    "Address": e.get("Address", ""),
                    "Datacenter": e.get("Datacenter", ""),
                    "TaggedAddresses": e.get("TaggedAddresses"),
                    "Meta": e.get("NodeMeta"),
                }
                for e in entries
            ]
        else:
            try:
                nodes = client.get_json("/v1/catalog/nodes", params) or []
            except APIError as exc:
                ctx.ui.error(f"Error listing nodes: {exc}")
                return 1
        if not nodes:
            ctx.ui.error("No nodes match the given query - try expanding your search.")
            return 0
        if o["detailed"]:
            lines = ["Node|ID|Address|DC|TaggedAddresses|Meta"] + [
                f"{n.get('Node', '')}|{n.get('ID', '')}|{n.get('Address', '')}|{n.get('Datacenter', '')}|"
                f"{_map_to_kv(n.get('TaggedAddresses'))}|{_map_to_kv(n.get('Meta'))}"
                for n in nodes
            ]
        else:
            lines = ["Node|ID|Address|DC"]
            for n in nodes:
                node_id = n.get("ID") or ""
                # Only the first group of the UUID, as Consul shortens it.
                dash = node_id.find("-")
                if dash > 0:
                    node_id = node_id[:dash]
                lines.append(
                    f"{n.get('Node', '')}|{node_id}|{n.get('Address', '')}|{n.get('Datacenter', '')}"
                )
        ctx.ui.output(columnize(lines))
        return 0


class CatalogServices(Command):
    name = "catalog services"
    synopsis = "Lists all registered services in a datacenter"
    http = HTTP_SERVER
    usage = """
Usage: proconsul catalog services [options]

  Lists the services registered in a datacenter (by default the local agent's).

      $ proconsul catalog services
      $ proconsul catalog services -tags
      $ proconsul catalog services -node=web
      $ proconsul catalog services -node-meta="foo=bar"
"""

    def define(self, spec: FlagSpec) -> None:
        spec.string("node", "Node id or name for which to list services.", default="", example="id or name")
        spec.list(
            "node-meta",
            "Metadata to filter nodes with, as key=value; only services on matching "
            "nodes are listed. May be given multiple times.",
            example="key=value",
        )
        spec.bool("tags", "Display each service's tags as a comma-separated list beside each service entry.")

    def run(self, ctx: Context) -> int:
        o = ctx.opts
        meta = parse_kv_pairs(o["node-meta"], "node-meta")
        if isinstance(meta, str):
            ctx.ui.error(meta)
            return 1
        if ctx.args:
            return too_many_args(ctx.ui, len(ctx.args), "0")
        client = ctx.connect()
        if client is None:
            return 1
        params = _node_meta_params(meta)
        services: dict[str, list[str]] = {}
        if o["node"]:
            try:
                node = client.get_json("/v1/catalog/node/" + o["node"], params)
            except APIError as exc:
                ctx.ui.error(f"Error listing services for node: {exc}")
                return 1
            if node:
                for svc in (node.get("Services") or {}).values():
                    services.setdefault(svc.get("Service", ""), []).extend(svc.get("Tags") or [])
        else:
            try:
                services = client.get_json("/v1/catalog/services", params) or {}
            except APIError as exc:
                ctx.ui.error(f"Error listing services: {exc}")
                return 1
        if not services:
            ctx.ui.error("No services match the given query - try expanding your search.")
            return 0
        names = sorted(services)
        if o["tags"]:
            rows = [(name, ",".join(sorted(services[name] or []))) for name in names]
            ctx.ui.output(tab_align(rows).strip())
        else:
            for name in names:
                ctx.ui.output(name)
        return 0


COMMANDS: list[type[Command]] = [CatalogCommand, CatalogDatacenters, CatalogNodes, CatalogServices]
