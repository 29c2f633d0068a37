"""Server-side operator actions: the Raft configuration, removing a peer, leadership transfer,
snapshots, and this server's part in a leaderless recovery.

Owns what `/v1/operator/raft/*` and `/v1/snapshot` do on a server, and their RPC endpoints
(`Operator.RaftConfiguration`, `Operator.RaftRemovePeer`, `Operator.RaftTransferLeader`,
`Snapshot.Save`, registered in
`Server.register`), so that a request arriving at a follower is forwarded once to the leader,
as writes and default-mode reads are. `?stale` answers from the local server.

Node names in the Raft configuration come first from the LAN gossip pool, as Consul's
`RaftGetConfiguration` indexes the serf LAN members that are servers by their Raft address: gossip
is right even when the catalog is not, for instance just after a restore of another cluster's
snapshot replaced the catalog and before the leader's reconcile re-registered this cluster's
servers (issue 15). A server gossip does not know (yet) is named from the replicated catalog
(every server registers its node name and ID there), then by its ID.

`/v1/operator/raft/recover` is never forwarded: there is no leader to forward to. GET answers
this server's Raft position (`proconsul.raft.recovery.live_state`) and PUT installs a recovery
planned by `proconsul operator raft recover` (`RaftServer.recover_live`).

A restore is one FSM command (`commands.Restore`) carrying the store snapshot: it goes through
the log like any write, so every server replaces its state at the same index. The archive is
verified (checksums, then a full decode of the state) before anything is proposed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proconsul.raft import recovery
from proconsul.rpc_api import HandlerRegistry, NotLeader, RPCError
from proconsul.server import snapshot as archive
from proconsul.server.acl_rpc import with_token
from proconsul.server.autopilot import LANServers
from proconsul.server.autopilot_health import AutopilotOperator
from proconsul.server.consensus import raft_errors
from proconsul.state import commands
from proconsul.state.store import Store
from proconsul.tasks import collector_paused

if TYPE_CHECKING:
    from proconsul.config import RuntimeConfig
    from proconsul.metrics import Metrics
    from proconsul.raft.node import RaftServer
    from proconsul.state.fsm import FSM
    from proconsul.transport import ConnectionPool

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = "3"


class Operator:
    """The operator endpoints' server side (see the module docstring).

    Args:
        server: this agent's RPC server (a client agent's RemoteServer forwards everything).
        store: the state store (the snapshot's source, the node names of Raft peers).
        fsm: the state machine over it (a restore it applies adopts the store decoded here).
        raft: this server's Raft driver; None in -dev (the single in-memory log) and on clients.
        node_id, node_name: ours.
        config: the agent's configuration as it is now (the autopilot block, the datacenter).
        lan: the LAN pool (the servers autopilot's health reports).
        pool: server RPC to the other servers (None without a Raft cluster).
        metrics: where autopilot's gauges go.
    """

    def __init__(
        self,
        server: Any,
        store: Store,
        fsm: FSM,
        raft: RaftServer | None,
        node_id: str,
        node_name: str,
        config: Callable[[], RuntimeConfig],
        lan: LANServers,
        pool: ConnectionPool | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.server = server
        self.store = store
        self.fsm = fsm
        self.raft = raft
        self.node_id = node_id
        self.node_name = node_name
        self.lan = lan
        registry: HandlerRegistry = server
        registry.register("Operator.RaftConfiguration", self._rpc_configuration)
        registry.register("Operator.RaftRemovePeer", self._rpc_remove_peer)
        registry.register("Snapshot.Save", self._rpc_snapshot_save)
        registry.register("Operator.RaftTransferLeader", self._rpc_transfer_leader)
        # /v1/operator/autopilot/*: configuration, server health, state (+ the leader's gauges).
        self.autopilot = AutopilotOperator(self, store, raft, node_id, node_name, config, lan, pool, metrics)

    # ------------------------------------------------------------------------- forwarding

    async def on_leader(self, method: str, body: Any, stale: bool) -> tuple[bool, Any]:
        """(True, reply) when the leader (another server) answered; (False, None): do it here."""
        server = self.server
        if server.catalog_is_remote:
            stale = False  # a client agent holds no state to answer from: the leader answers
        if stale or server.consensus.is_leader() or server.pool is None:
            return False, None
        leader = await server.wait_for_leader()
        if not leader:
            return False, None
        try:
            # With ACLs on, the leader checks the caller's token (server/acl_rpc.py).
            return True, await server.pool.call(leader, method, with_token(body), timeout_s=60.0)
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise RPCError(f"rpc error forwarding to the leader {leader}: {exc}") from None
        except Exception as exc:  # RemoteError: the leader's own answer
            raise RPCError(str(exc)) from None

    def require_leader(self) -> None:
        c = self.server.consensus
        if not c.is_leader():
            raise NotLeader(c.leader_address())

    # ------------------------------------------------------------------ leaderless recovery

    def _local_raft(self) -> Any:
        if self.raft is None:
            raise recovery.RecoveryError("this agent runs no Raft server with a data directory (a client agent or -dev)")
        return self.raft

    def recovery_state(self) -> dict[str, Any]:
        """`GET /v1/operator/raft/recover`: this server's log position and the leader it knows."""
        raft = self._local_raft()
        state = recovery.live_state(raft, self.node_name).to_json()
        leader = raft.core.leader if raft.core is not None else None
        state["Leader"] = leader or ""
        state["LeaderAddress"] = raft.addresses.addrs.get(leader, "") if leader else ""
        state["NodeName"] = self.node_name
        return state

    async def recover(self, body: Any) -> dict[str, Any]:
        """`PUT /v1/operator/raft/recover`: install the planned recovery here (ValueError: bad
        body; RecoveryError: refused, nothing changed)."""
        raft = self._local_raft()
        marker, expect = recovery.marker_from_json(body)
        core = raft.core
        if expect is not None and core is not None and (core.last_term, core.last_index) != expect:
            raise recovery.RecoveryError(
                f"this server's log moved since the plan was made (last term {core.last_term}, index "
                f"{core.last_index}; the plan saw term {expect[0]}, index {expect[1]}): run recover again")
        logger.warning("operator: leaderless recovery requested: voters %s, new term %d",
                       sorted(marker.voters), marker.term)
        await raft.recover_live(marker)
        return {"ID": raft.id, "Term": marker.term, "Voters": sorted(marker.voters)}

    # ----------------------------------------------------------------- raft configuration

    async def raft_configuration(self, stale: bool) -> dict[str, Any]:
        forwarded, reply = await self.on_leader("Operator.RaftConfiguration", {}, stale)
        return reply if forwarded else self.local_configuration()

    async def _rpc_configuration(self, body: Any) -> dict[str, Any]:
        self.require_leader()
        return self.local_configuration()

    def node_names(self) -> dict[str, str]:
        """Server names by node ID, from the catalog (and ours)."""
        names = {n.id: n.node for n in self.store.nodes.values() if n.id}
        names[self.node_id] = self.node_name
        return names

    def gossip_names(self) -> dict[str, str]:
        """Names of the LAN pool's servers keyed by their Raft address ("ip:port") and by their ID."""
        names: dict[str, str] = {}
        for rec in self.lan.members():
            tags = rec.member.tags
            if tags.get("role") != "consul":
                continue
            names[f"{rec.member.addr[0]}:{tags.get('port') or 8300}"] = rec.member.name
            if tags.get("id"):
                names.setdefault(tags["id"], rec.member.name)
        return names

    def server_name(self, sid: str, address: str, gossip: dict[str, str], catalog: dict[str, str]) -> str:
        return gossip.get(address) or gossip.get(sid) or catalog.get(sid, sid)

    def local_configuration(self) -> dict[str, Any]:
        names = self.node_names()
        gossip = self.gossip_names()
        if self.raft is None:
            c = self.server.consensus
            servers = [
                {"ID": sid, "Address": addr, "Leader": True, "Voter": True, "LastIndex": self.store.last_index}
                for sid, _, addr in c.voters()
            ]
            conf: dict[str, Any] = {"Servers": servers, "Index": 1}
        else:
            conf = self.raft.configuration()
        out = []
        for s in conf["Servers"]:
            out.append({
                "ID": s["ID"],
                "Node": self.server_name(s["ID"], s["Address"], gossip, names),
                "Address": s["Address"],
                "Leader": s["Leader"],
                "ProtocolVersion": PROTOCOL_VERSION,
                "Voter": s["Voter"],
                "LastIndex": s["LastIndex"],
            })
        return {"Servers": out, "Index": conf["Index"]}

    # ------------------------------------------------------------------------ remove peer

    async def remove_peer(self, peer_id: str = "", address: str = "") -> None:
        forwarded, _ = await self.on_leader("Operator.RaftRemovePeer", {"id": peer_id, "address": address}, False)
        if not forwarded:
            await self._remove_here(peer_id, address)

    async def _rpc_remove_peer(self, body: Any) -> bool:
        self.require_leader()
        await self._remove_here(str(body.get("id") or ""), str(body.get("address") or ""))
        return True

    async def _remove_here(self, peer_id: str, address: str) -> None:
        if self.raft is None:
            raise RPCError("cannot remove a peer from a single in-memory (-dev) server")
        members = self.raft.core.config.members() if self.raft.core is not None else []
        if address:
            matches = [m for m in members if self.raft.addresses.addrs.get(m) == address]
            if not matches:
                raise RPCError(f'address "{address}" was not found in the Raft configuration')
            peer_id = matches[0]
        elif peer_id not in members:
            raise RPCError(f'id "{peer_id}" was not found in the Raft configuration')
        logger.info("operator: removing raft peer %s (%s)", peer_id, self.raft.addresses.addrs.get(peer_id, "?"))
        with raft_errors():
            await self.raft.remove_voter(peer_id)

    # -------------------------------------------------------------------- transfer leader

    async def transfer_leader(self, peer_id: str = "") -> str:
        """Move leadership to server `peer_id` (any other voter when empty); the new leader's ID."""
        forwarded, reply = await self.on_leader("Operator.RaftTransferLeader", {"id": peer_id}, False)
        if forwarded:
            return str(reply)
        return await self._transfer_here(peer_id)

    async def _rpc_transfer_leader(self, body: Any) -> str:
        self.require_leader()
        return await self._transfer_here(str(body.get("id") or ""))

    async def _transfer_here(self, peer_id: str) -> str:
        if self.raft is None:
            raise RPCError("cannot transfer leadership from a single in-memory (-dev) server")
        if peer_id and peer_id not in self.raft.core.config.members():
            raise RPCError(f'id "{peer_id}" was not found in the Raft configuration')
        logger.info("operator: transferring raft leadership to %s", peer_id or "the most up-to-date voter")
        with raft_errors():
            # Two election timeouts: the transferee catches up, then wins one election.
            new_leader = await self.raft.transfer_leadership(
                max(5.0, 2 * self.raft.tick_s * self.raft.election_tick), target=peer_id
            )
        if not new_leader:
            raise RPCError("leadership transfer did not complete: no other voter took over in time")
        logger.info("operator: raft leadership transferred to %s", new_leader)
        return new_leader

    # -------------------------------------------------------------------------- snapshots

    async def snapshot_save(self, stale: bool) -> tuple[int, bytes]:
        """(index, archive bytes) of the leader's state (any server's with `stale`)."""
        forwarded, reply = await self.on_leader("Snapshot.Save", {}, stale)
        if forwarded:
            return int(reply["index"]), bytes(reply["archive"])
        return await self.local_snapshot()

    async def _rpc_snapshot_save(self, body: Any) -> dict[str, Any]:
        self.require_leader()
        index, blob = await self.local_snapshot()
        return {"index": index, "archive": blob}

    async def local_snapshot(self) -> tuple[int, bytes]:
        """The archive of this server's state. The view is taken on the loop at one index;
        serialising, checksumming and compressing it run in a worker thread while the loop
        keeps serving (and applying writes, which the view does not see)."""
        store = self.store
        encode = store.snapshot_view()
        index = max(store.last_index, 1)
        term = 1
        servers: list[dict[str, Any]] = []
        conf_index = 0
        if self.raft is not None and self.raft.core is not None:
            term = self.raft.core.term
            conf = self.raft.configuration()
            conf_index = conf["Index"]
            servers = [
                {"Suffrage": 0 if s["Voter"] else 1, "ID": s["ID"], "Address": s["Address"]}
                for s in conf["Servers"]
            ]
        else:
            servers = [{"Suffrage": 0, "ID": sid, "Address": addr} for sid, _, addr in self.server.consensus.voters()]
        now_ms = int(time.time() * 1000)

        def build() -> bytes:
            return archive.build(
                encode(), index=index, term=term, now_ms=now_ms, servers=servers, configuration_index=conf_index
            )

        return index, await asyncio.get_running_loop().run_in_executor(None, build)

    async def snapshot_restore(self, blob: bytes) -> int:
        """Verify the archive, then replace the state on every server; returns the new index.

        Raises `snapshot.SnapshotError` (a ValueError: HTTP 400) when the archive is damaged;
        nothing has been proposed then.
        """
        def verify() -> tuple[archive.Archive, Store]:
            # Off the loop: decompressing, checksumming and decoding a large state take seconds.
            snap = archive.read(blob)
            try:
                with collector_paused():
                    return snap, Store.decode(snap.state)
            except Exception as exc:
                raise archive.SnapshotError(f"failed to decode {archive.STATE}: {exc}") from None

        snap, decoded = await asyncio.get_running_loop().run_in_executor(None, verify)
        # Where this server applies the Restore entry it adopts the decoded store instead of
        # decoding again on the loop (other servers decode it while applying).
        self.fsm.offer_decoded(snap.state, decoded)
        meta, result = await self.server.write(commands.Restore(snap.state))
        logger.info("operator: restored snapshot %s (index %s) at index %d", snap.meta.get("ID"),
                    snap.meta.get("Index"), meta.index)
        return int(result) if isinstance(result, int) else meta.index
