"""`proconsul rtt [-wan] NODE1 [NODE2]`: estimated round-trip time between two nodes.

Owns the command's rules and messages, which follow `consul rtt`: one or two node names (the
second defaults to the agent's own node), LAN coordinates from `/v1/coordinate/nodes` by
default, WAN ones from `/v1/coordinate/datacenters` with `-wan` (names then written
`node.datacenter`), node names matched case-insensitively, and the one output line
`Estimated a <-> b rtt: 1.234 ms (using LAN coordinates)`. The distance is computed here from
the two coordinates, as the Consul CLI does.
"""

from __future__ import annotations

from typing import Any

from proconsul.api_client import APIError, Client
from proconsul.cli.base import HTTP_CLIENT, RUN_RESULT_HELP, Command, Context, FlagSpec
from proconsul.coordinate import Coordinate, InvalidCoordinate


def _coord(raw: Any) -> Coordinate | None:
    try:
        return Coordinate.from_json(raw, dimensionality=None)
    except InvalidCoordinate:
        return None


class RTTCommand(Command):
    name = "rtt"
    synopsis = "Estimates network round trip time between nodes"
    http = HTTP_CLIENT
    usage = """
Usage: proconsul rtt [options] node1 [node2]

  Estimates the round trip time between two nodes from the cluster's network
  coordinates (Vivaldi, maintained by gossip).

  At least one node name is required; without a second one, the agent's own
  node is used. Names are node names as `proconsul members` shows them, not
  IP addresses.

  By default both nodes are in the local datacenter and LAN coordinates are
  used. With -wan, WAN coordinates are used and each name must carry its
  datacenter as a suffix, as in "server1.dc1". LAN and WAN coordinates come
  from different gossip pools and cannot be compared with each other.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.bool("wan", "Use WAN coordinates instead of LAN coordinates.")

    def run(self, ctx: Context) -> int:
        nodes = list(ctx.args)
        if not 1 <= len(nodes) <= 2:
            ctx.ui.error("One or two node names must be specified")
            ctx.ui.error("")
            return RUN_RESULT_HELP
        client = ctx.connect()
        if client is None:
            return 1
        wan = bool(ctx.opts.values.get("wan"))
        if len(nodes) < 2:
            try:
                config = client.get_json("/v1/agent/self")["Config"]
            except (APIError, KeyError, TypeError) as exc:
                ctx.ui.error(f"Unable to look up agent info: {exc}")
                return 1
            own = str(config["NodeName"])
            nodes.append(f"{own}.{config['Datacenter']}" if wan else own)
        try:
            found = self._wan(ctx, client, nodes) if wan else self._lan(client, nodes)
        except APIError as exc:
            ctx.ui.error(f"Error getting coordinates: {exc}")
            return 1
        if found is None:
            return 1
        first, second = found
        if first is None:
            ctx.ui.error(f'Could not find a coordinate for node "{nodes[0]}"')
            return 1
        if second is None:
            ctx.ui.error(f'Could not find a coordinate for node "{nodes[1]}"')
            return 1
        if not first.compatible_with(second):
            ctx.ui.error("Coordinates of the two nodes have different dimensions and cannot be compared")
            return 1
        millis = first.distance_to(second) * 1000.0
        source = "WAN" if wan else "LAN"
        ctx.ui.output(f"Estimated {nodes[0]} <-> {nodes[1]} rtt: {millis:.3f} ms (using {source} coordinates)")
        return 0

    @staticmethod
    def _lan(client: Client, nodes: list[str]) -> tuple[Coordinate | None, Coordinate | None]:
        by_segment: list[dict[str, Coordinate]] = [{}, {}]
        for entry in client.get_json("/v1/coordinate/nodes") or []:
            coord = _coord(entry.get("Coord"))
            if coord is None:
                continue
            for i, name in enumerate(nodes):
                if str(entry.get("Node", "")).casefold() == name.casefold():
                    by_segment[i][str(entry.get("Segment", ""))] = coord
        # Coordinates compare only within one network segment: the default one, unless a side
        # has a single segment (a client agent), whose segment then decides.
        segment = ""
        for side in by_segment:
            if len(side) == 1:
                segment = next(iter(side))
        return by_segment[0].get(segment), by_segment[1].get(segment)

    @staticmethod
    def _wan(ctx: Context, client: Client, nodes: list[str]) -> tuple[Coordinate | None, Coordinate | None] | None:
        parts = [n.split(".") for n in nodes]
        if any(len(p) != 2 for p in parts):
            ctx.ui.error("Node names must be specified as <node name>.<datacenter> with -wan")
            return None
        (node1, dc1), (node2, dc2) = parts
        first = second = None
        area1 = area2 = None
        for dc in client.get_json("/v1/coordinate/datacenters") or []:
            for entry in dc.get("Coordinates") or []:
                name = str(entry.get("Node", "")).casefold()
                if dc.get("Datacenter") == dc1 and name == node1.casefold():
                    first, area1 = _coord(entry.get("Coord")), dc.get("AreaID")
                if dc.get("Datacenter") == dc2 and name == node2.casefold():
                    second, area2 = _coord(entry.get("Coord")), dc.get("AreaID")
                if first is not None and second is not None and area1 == area2:
                    return first, second
        # Coordinates from different areas are not comparable: report neither as found.
        return None, None


COMMANDS: list[type[Command]] = [RTTCommand]
