"""Graceful leave: what an agent does between a leave request and its shutdown.

Owns the steps of Consul's `agent.Leave` (agent/consul/server.go `Server.Leave`, and the
client's, which only leaves the LAN pool), run when SIGTERM arrives with `leave_on_terminate`,
SIGINT without `skip_leave_on_interrupt`, or `PUT /v1/agent/leave` (`proconsul leave`):

1. A server that is a Raft member alongside other servers has itself removed from the Raft
   configuration, so the remaining servers' quorum shrinks before this one goes away and they
   keep a leader. A leader first hands leadership to the most up-to-date other voter (and, if
   that fails, removes itself); a follower asks the leader. The last server keeps its
   configuration: removing it would leave no cluster to come back to.
2. Every agent leaves the LAN gossip pool: the leave is broadcast and the agent waits (bounded
   by the gossip leave timeout) until it was sent enough times, so the other members record it
   as left (status 3), not failed, and the leader deregisters it from the catalog.
3. A server keeps serving for `leave_drain_time` (Consul: "Waiting to drain RPC traffic"), so
   clients that picked it retry elsewhere.

Consul leaves gossip first and lets the leader's reconcile take a left server out of Raft; here
the leaving server asks for its removal itself and the leader's reply (the change committed) is
the confirmation, so no member ever sees a left server that still counts towards quorum.

Steps 1 and 2 are bounded by Consul's graceful timeout (15 s); past it the agent gives up the
leave ("Timeout on graceful leave"), shuts down anyway and exits 1, as Consul does. A second
signal during the leave exits at once (the agent's signal handler).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from proconsul.config import RuntimeConfig
    from proconsul.raft.node import RaftServer

logger = logging.getLogger(__name__)

# Consul's gracefulTimeout (command/agent): the leave must be done within it.
GRACEFUL_LEAVE_TIMEOUT_S = 15.0
# How long the Raft removal may take before the leave goes on without it (Consul waits up to
# raftRemoveGracePeriod, 5 s, for its removal; a forwarded removal also needs the RPC round).
RAFT_REMOVE_TIMEOUT_S = 8.0
# Upper bound on waiting for a leadership transfer (it normally takes one round trip).
LEADERSHIP_TRANSFER_TIMEOUT_S = 3.0
# Pause between attempts at the removal while the cluster cannot take it yet (no leader, or a
# new leader that has not committed an entry of its term).
RAFT_REMOVE_RETRY_S = 0.2


class Leaver(Protocol):
    """A gossip pool as the leave uses it (its `node.core` is None until it started)."""

    node: Any

    async def leave(self) -> None: ...


class GracefulLeave:
    """One agent's leave; `status` says which step runs (systemd's `STATUS=` shows it)."""

    def __init__(
        self,
        node_id: str,
        config: RuntimeConfig,
        lan: Leaver,
        wan: Leaver | None = None,
        raft: RaftServer | None = None,
        remove_peer: Callable[[str], Awaitable[Any]] | None = None,
    ) -> None:
        """`raft` and `remove_peer` (asks the leader to remove a server by ID) on servers; `wan`
        on servers with a WAN pool."""
        self.node_id = node_id
        self.config = config
        self.lan = lan
        self.wan = wan
        self.raft = raft
        self.remove_peer = remove_peer
        self.status = "leaving the cluster"
        self.done = asyncio.Event()  # set once the leave finished (or gave up)
        self.completed = False
        self._last_remove_error = ""

    async def run(self) -> bool:
        """Leave; True when every step finished within the graceful timeout."""
        try:
            self.completed = await self._run()
        finally:
            self.done.set()
        return self.completed

    async def _run(self) -> bool:
        cfg = self.config
        logger.info("agent: gracefully leaving the cluster")
        try:
            async with asyncio.timeout(GRACEFUL_LEAVE_TIMEOUT_S):
                await self._leave_raft()
                await self._leave_gossip()
        except TimeoutError:
            logger.error("agent: timeout on graceful leave after %gs; shutting down anyway", GRACEFUL_LEAVE_TIMEOUT_S)
            return False
        if cfg.server and cfg.performance.leave_drain_time_s > 0:
            self.status = "left the cluster; draining RPC traffic"
            logger.info("agent: waiting %gs to drain RPC traffic", cfg.performance.leave_drain_time_s)
            await asyncio.sleep(cfg.performance.leave_drain_time_s)
        logger.info("agent: graceful leave complete")
        return True

    async def _leave_raft(self) -> None:
        raft = self.raft
        if raft is None or raft.core is None:
            return  # a client agent, or -dev's single in-memory log
        conf = raft.core.config
        if self.node_id not in conf.members():
            return  # never joined, or already removed
        others = [v for v in conf.voters if v != self.node_id]
        if not others:
            logger.info("agent: last server of the cluster; keeping the Raft configuration")
            return
        self.status = "leaving the Raft configuration"
        logger.info("agent: removing this server from the Raft configuration (%d other voters)", len(others))
        try:
            async with asyncio.timeout(RAFT_REMOVE_TIMEOUT_S):
                if raft.is_leader():
                    # Consul first hands leadership over, so the others need not wait out an
                    # election timeout; if that fails, the leader removes itself.
                    election_s = raft.tick_s * raft.election_tick
                    new_leader = await raft.transfer_leadership(min(2 * election_s, LEADERSHIP_TRANSFER_TIMEOUT_S))
                    if new_leader:
                        logger.info("agent: transferred Raft leadership to %s", new_leader)
                    else:
                        logger.warning("agent: leadership transfer failed; removing this server as the leader")
                await self._remove_self_from_raft()
        except TimeoutError:
            logger.error(
                "agent: failed to leave the Raft configuration within %gs: %s",
                RAFT_REMOVE_TIMEOUT_S,
                self._last_remove_error or "no answer",
            )
        else:
            logger.info("agent: left the Raft configuration")

    async def _remove_self_from_raft(self) -> None:
        """Asks the leader (perhaps this server) to remove this server, until it is done.

        Right after a leadership transfer, or while an election runs, the cluster refuses the
        change for a moment (no leader yet, or a leader that has not committed an entry of its
        term); those refusals are transient, so the request is repeated until the caller's
        deadline. Once this server is no longer in the configuration it has left.
        """
        assert self.remove_peer is not None, "a server's leave needs remove_peer"
        while True:
            try:
                await self.remove_peer(self.node_id)
                return
            except Exception as exc:  # no leader, a change in flight: try again shortly
                if "was not found in the Raft configuration" in str(exc):
                    return  # an earlier attempt committed after its answer was lost
                if str(exc) != self._last_remove_error:
                    logger.info("agent: Raft removal not accepted yet (%s); retrying", exc)
                self._last_remove_error = str(exc)
            await asyncio.sleep(RAFT_REMOVE_RETRY_S)

    async def _leave_gossip(self) -> None:
        wan = self.wan
        if wan is not None and wan.node.core is not None:
            self.status = "leaving the WAN gossip pool"
            try:
                await wan.leave()
            except Exception as exc:  # the other datacenters will see us fail instead
                logger.error("agent: failed to leave the WAN gossip pool: %s", exc)
            else:
                logger.info("agent: left the WAN gossip pool")
        self.status = "leaving the LAN gossip pool"
        try:
            await self.lan.leave()
        except Exception as exc:  # the others will see us fail instead of leave
            logger.error("agent: failed to leave the LAN gossip pool: %s", exc)
        else:
            logger.info("agent: left the LAN gossip pool")
