"""`proconsul operator raft list-peers|remove-peer|transfer-leader`: the Raft configuration from the
command line.

Owns these commands' flags, their `/v1/operator/raft/...` calls and their output, which follows
`consul operator raft ...`: list-peers prints the columns `Node  ID  Address  State  Voter
RaftProtocol` (columnized like ryanuber/columnize); remove-peer takes `-id` or `-address` and
prints `Removed peer with id "..."` / `Removed peer with address "..."`; transfer-leader takes an
optional `-id` and prints `Success` (Consul's spelling of its error, "transfering", is kept).
"""

from __future__ import annotations

from typing import Any

from proconsul.api_client import APIError
from proconsul.cli.base import HTTP_SERVER, Command, Context, FlagSpec, GroupCommand
from proconsul.cli.output import columnize


class OperatorCommand(GroupCommand):
    name = "operator"
    synopsis = "Provides cluster-level tools for Consul operators"
    usage = """
Usage: proconsul operator <subcommand> [options]

  Provides cluster-level tools for operators, such as interacting with the Raft
  subsystem. These are advanced tools: operate on the cluster with care.
"""


class OperatorRaftCommand(GroupCommand):
    name = "operator raft"
    synopsis = "Provides cluster-level tools for Consul operators"
    usage = """
Usage: proconsul operator raft <subcommand> [options]

  The Raft operator command is used to interact with Consul's Raft subsystem. The
  command can be used to verify Raft peers or in rare cases to recover quorum by
  removing invalid peers.
"""


def format_peers(conf: dict[str, Any]) -> str:
    sep = "\x1f"  # as Consul: node names may hold any printable character
    rows = [sep.join(["Node", "ID", "Address", "State", "Voter", "RaftProtocol"])]
    for s in conf.get("Servers") or []:
        state = "leader" if s.get("Leader") else "follower"
        protocol = s.get("ProtocolVersion") or "<=1"
        voter = "true" if s.get("Voter") else "false"
        rows.append(sep.join([str(s.get("Node", "")), str(s.get("ID", "")), str(s.get("Address", "")), state,
                              voter, str(protocol)]))
    return columnize(rows, delim=sep)


class OperatorRaftListPeers(Command):
    name = "operator raft list-peers"
    synopsis = "Display the current Raft peer configuration"
    http = HTTP_SERVER
    usage = """
Usage: proconsul operator raft list-peers [options]

  Displays the current Raft peer configuration.
"""

    def run(self, ctx: Context) -> int:
        client = ctx.connect()
        if client is None:
            return 1
        try:
            conf = client.get_json("/v1/operator/raft/configuration")
        except APIError as exc:
            ctx.ui.error(f"Error getting peers: Failed to retrieve raft configuration: {exc}")
            return 1
        ctx.ui.output(format_peers(conf or {}))
        return 0


class OperatorRaftRemovePeer(Command):
    name = "operator raft remove-peer"
    synopsis = "Remove a Consul server from the Raft configuration"
    http = HTTP_SERVER
    usage = """
Usage: proconsul operator raft remove-peer [options]

  Remove the Consul server with given -address from the Raft configuration.

  There are rare cases where a peer may be left behind in the Raft quorum even
  though the server is no longer present and known to the cluster. This command
  can be used to remove the failed server so that it no longer affects the Raft
  quorum.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.string("address", "The address to remove from the Raft configuration.", example="string")
        spec.string("id", "The ID to remove from the Raft configuration.", example="string")

    def run(self, ctx: Context) -> int:
        address = ctx.opts.values.get("address") or ""
        peer_id = ctx.opts.values.get("id") or ""
        if not address and not peer_id:
            ctx.ui.error("Error removing peer: an address or id is required for the peer to remove")
            return 1
        if address and peer_id:
            ctx.ui.error("Error removing peer: cannot give both an address and id")
            return 1
        client = ctx.connect()
        if client is None:
            return 1
        params = [("address", address)] if address else [("id", peer_id)]
        try:
            client.request("DELETE", "/v1/operator/raft/peer", params)
        except APIError as exc:
            ctx.ui.error(f"Error removing peer: {exc}")
            return 1
        if address:
            ctx.ui.output(f'Removed peer with address "{address}"')
        else:
            ctx.ui.output(f'Removed peer with id "{peer_id}"')
        return 0


class OperatorRaftTransferLeader(Command):
    name = "operator raft transfer-leader"
    synopsis = "Transfer raft leadership to another node"
    http = HTTP_SERVER
    usage = """
Usage: proconsul operator raft transfer-leader [options]

  Transfer raft leadership to another node: the one given with -id, or else the
  most up-to-date other voter.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.string("id", "The ID of the node to transfer leadership to.", example="string")

    def run(self, ctx: Context) -> int:
        peer_id = ctx.opts.values.get("id") or ""
        client = ctx.connect()
        if client is None:
            return 1
        params = [("id", peer_id)] if peer_id else []
        try:
            reply = client.request("POST", "/v1/operator/raft/transfer-leader", params, b"").json()
        except APIError as exc:
            ctx.ui.error(f"Error transfering leadership: Failed to transfer leadership {exc}")
            return 1
        if not (isinstance(reply, dict) and reply.get("Success")):
            ctx.ui.error("Error transfering leadership: Failed to transfer leadership")
            return 1
        ctx.ui.output("Success")
        return 0


COMMANDS: list[type[Command]] = [
    OperatorCommand, OperatorRaftCommand, OperatorRaftListPeers, OperatorRaftRemovePeer, OperatorRaftTransferLeader,
]
