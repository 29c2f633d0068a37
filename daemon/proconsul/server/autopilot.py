"""Autopilot's dead-server cleanup: the leader keeps the Raft configuration in line with the LAN pool.

Owns the leader-only loop that removes servers from the Raft configuration, as Consul does:

- a server of our datacenter that **left** the LAN pool (graceful leave, or force-leave) and is
  still in the configuration is removed at once (Consul's ``handleLeftMember`` ->
  ``removeConsulServer``);
- with ``autopilot.cleanup_dead_servers`` (default true), a server that is **failed** in the LAN
  pool and still a voter is removed when the quorum check of raft-autopilot's
  ``adjudicateRemoval`` allows it: at most ``(voters - 1) // 2`` voters per pass (never a
  majority), and never below ``autopilot.min_quorum`` voters, and only once the leader has seen
  it unhealthy (``proconsul.server.autopilot_health``: no answer within ``LastContactThreshold``,
  behind by more than ``MaxTrailingLogs``, or not alive) for ``ServerStabilizationTime``: gossip
  marking it failed is not enough, so a member that flaps keeps its vote. The failed member is then
  force-left in the LAN pool (raft-autopilot's ``RemoveFailedServer`` is serf's
  ``RemoveFailedNode``), so ``members`` shows it ``left`` and the catalog drops it.

An **alive** server of our datacenter that is not in the configuration (typically one removed
while it was down, then restarted from its data dir) is added back as a voter, as Consul's
leader does for every alive server (``handleAliveMember`` -> ``joinConsulServer``); only once it
says its Raft is running (``Autopilot.ServerState``), so a server still waiting for
``bootstrap_expect`` peers is never made a voter it cannot yet be, and once it has been alive for
``ServerStabilizationTime``.

The settings are the effective autopilot configuration (replicated once an operator set it through
``/v1/operator/autopilot/configuration``, else the agent's ``autopilot { }`` block).

The pass runs every ``RECONCILE_INTERVAL_S`` (Consul's ``AutopilotInterval``) and on every LAN
member event. The leader never removes itself. Servers in the Raft configuration that the LAN
pool does not know at all ("stale" servers in raft-autopilot) are left alone: a server whose
gossip has not joined yet looks the same, and removing it would be far worse than keeping one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from proconsul.rpc_api import HandlerRegistry
from proconsul.serf.member import STATUS_ALIVE, STATUS_FAILED, STATUS_LEFT, MemberRecord

logger = logging.getLogger(__name__)

# s, 10: how often the leader reconsiders the configuration without a member event (Consul's
# AutopilotInterval).
RECONCILE_INTERVAL_S = 10.0


@dataclass(frozen=True)
class Removal:
    """One server to take out of the Raft configuration, and why."""

    server_id: str
    name: str
    reason: str  # "left" or "failed"


def plan_removals(
    self_id: str,
    voters: frozenset[str] | set[str],
    learners: frozenset[str] | set[str],
    servers: dict[str, tuple[str, int]],
    cleanup_dead_servers: bool,
    min_quorum: int,
    refused: list[tuple[str, str]] | None = None,
    settled: Callable[[str], bool] | None = None,
) -> list[Removal]:
    """Which servers to remove now (pure; the quorum rules live here).

    Args:
        self_id: the leader's own server ID (never removed).
        voters, learners: the Raft configuration.
        servers: LAN-pool servers of our datacenter by server ID: (member name, serf status).
        cleanup_dead_servers: also remove failed voters (within the quorum rules).
        min_quorum: never leave fewer voters than this (0: no floor).
        refused: if given, receives (name, reason) for each failed voter the rules keep.
        settled: if given, a failed server is only removed once this says its failure has
            lasted (unhealthy for ServerStabilizationTime), so a flapping member keeps its vote.
    """
    members = set(voters) | set(learners)
    out: list[Removal] = []
    for sid in sorted(members):
        name, status = servers.get(sid, ("", 0))
        if sid != self_id and status == STATUS_LEFT:
            out.append(Removal(sid, name, "left"))
    if not cleanup_dead_servers:
        return out
    remaining = len(set(voters) - {r.server_id for r in out})
    if settled is not None:
        servers = {sid: (name, status) for sid, (name, status) in servers.items()
                   if status != STATUS_FAILED or settled(sid)}
    for sid in sorted(set(learners) - {r.server_id for r in out}):
        name, status = servers.get(sid, ("", 0))
        if sid != self_id and status == STATUS_FAILED:
            out.append(Removal(sid, name, "failed"))  # non-voters never count towards quorum
    # raft-autopilot's adjudicateRemoval: a minority of the voters at a time, above min_quorum.
    max_removal = (remaining - 1) // 2
    for sid in sorted(voters):
        name, status = servers.get(sid, ("", 0))
        if sid == self_id or status != STATUS_FAILED or any(r.server_id == sid for r in out):
            continue
        if remaining - 1 < min_quorum:
            if refused is not None:
                refused.append((name, f"it would leave fewer voters than the minimum of {min_quorum}"))
            continue
        if max_removal < 1:
            if refused is not None:
                refused.append((name, "removing a majority of the voters is not safe"))
            continue
        out.append(Removal(sid, name, "failed"))
        max_removal -= 1
        remaining -= 1
    return out


class ServerHealthView(Protocol):
    """The leader's autopilot health tracking (`autopilot_health.AutopilotOperator`) as the
    cleanup and the cluster membership use it."""

    def effective(self) -> Any:
        """The autopilot settings in force (replicated once set, else the agent's config)."""
        ...

    def unhealthy_for_s(self, server_id: str) -> float: ...

    async def run(self) -> None: ...


class LANServers(Protocol):
    """The LAN pool as the cleanup uses it."""

    def members(self) -> list[MemberRecord]: ...

    def force_leave(self, name: str, prune: bool = False) -> bool: ...

    def on_member_event(self, listener: Callable[[MemberRecord], None]) -> None: ...


class DeadServerCleanup:
    """The leader's loop; a no-op on followers.

    Args:
        node_id, datacenter: ours (servers of other datacenters are never counted).
        raft: this server's Raft driver.
        registry: where it registers ``Autopilot.ServerState``.
        pool: server RPC to the other servers.
        lan: the LAN pool (which servers gossip sees, and force-leave of removed ones).
        health: the autopilot health tracker, built after this (hence a getter).
    """

    def __init__(self, node_id: str, datacenter: str, raft: Any, registry: HandlerRegistry, pool: Any,
                 lan: LANServers, health: Callable[[], ServerHealthView]) -> None:
        self.node_id = node_id
        self.datacenter = datacenter
        self.raft = raft
        self.pool = pool  # server RPC to the other servers (ServerState)
        self.lan = lan
        self._health = health
        self._wake = asyncio.Event()
        self._refused: list[tuple[str, str]] = []
        self._alive_since: dict[str, float] = {}  # server ID -> monotonic time first seen alive
        lan.on_member_event(self._on_member)
        registry.register("Autopilot.ServerState", self._server_state)

    async def _server_state(self, _body: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.node_id, "raft_running": self.raft.core is not None}
        if self.raft.core is not None:
            out.update(self.raft.log_stats())  # the leader's health checks (autopilot_health)
        return out

    def _settings(self) -> Any:
        """The effective autopilot configuration (replicated once set; autopilot_health)."""
        return self._health().effective()

    def _on_member(self, rec: MemberRecord) -> None:
        if rec.member.tags.get("role") == "consul":
            self._wake.set()

    def _lan_records(self) -> dict[str, MemberRecord]:
        """LAN-pool servers of our datacenter by server ID."""
        dc = self.datacenter
        out: dict[str, MemberRecord] = {}
        for rec in self.lan.members():
            tags = rec.member.tags
            if tags.get("role") == "consul" and tags.get("dc") == dc and tags.get("id"):
                out[tags["id"]] = rec
        return out

    def _lan_servers(self) -> dict[str, tuple[str, int]]:
        return {sid: (rec.member.name, rec.status) for sid, rec in self._lan_records().items()}

    async def add_alive(self) -> list[str]:
        """Leader only: add alive servers missing from the configuration whose Raft runs."""
        core = self.raft.core
        if core is None or not self.raft.is_leader():
            return []
        added = []
        members = set(core.config.voters) | set(core.config.learners)
        now = time.monotonic()
        stabilization = self._settings().server_stabilization_time_s
        records = self._lan_records()
        self._alive_since = {sid: self._alive_since.get(sid, now) for sid, rec in records.items()
                             if rec.status == STATUS_ALIVE}
        for sid, rec in sorted(records.items()):
            if sid in members or sid == self.raft.id or rec.status != STATUS_ALIVE:
                continue
            if now - self._alive_since[sid] < stabilization:
                self._wake_later(stabilization)
                continue  # ServerStabilizationTime: alive that long before it gets a vote
            addr = f"{rec.member.addr[0]}:{rec.member.tags.get('port', '8300')}"
            try:
                state = await self.pool.call(addr, "Autopilot.ServerState", None, timeout_s=5.0)
            except Exception as exc:  # not reachable yet: the next pass asks again
                logger.debug("autopilot: server %s not ready to be added: %s", rec.member.name, exc)
                continue
            if not isinstance(state, dict) or state.get("id") != sid or not state.get("raft_running"):
                continue
            logger.info("leader: adding alive server %s (id %s, %s) back to the configuration",
                        rec.member.name, sid, addr)
            try:
                await self.raft.add_voter(sid, addr)
            except Exception as exc:  # a conf change in flight, leadership lost: retried next pass
                logger.warning("leader: could not add server %s: %s", rec.member.name, exc)
                break
            added.append(rec.member.name)
        return added

    async def prune(self) -> list[Removal]:
        """One pass (leader only): remove what :func:`plan_removals` allows; returns it."""
        core = self.raft.core
        if core is None or not self.raft.is_leader():
            return []
        settings = self._settings()
        health = self._health()
        refused: list[tuple[str, str]] = []

        def settled(sid: str) -> bool:
            # Gossip's "failed" alone is not enough: the leader must have seen the server
            # unhealthy (no contact, behind) for ServerStabilizationTime, as long as a flap lasts.
            return health.unhealthy_for_s(sid) >= max(settings.server_stabilization_time_s,
                                                      settings.last_contact_threshold_s)

        plan = plan_removals(self.raft.id, core.config.voters, core.config.learners, self._lan_servers(),
                             settings.cleanup_dead_servers, settings.min_quorum, refused, settled)
        if refused != self._refused:  # one line per change, not one per pass
            for name, reason in refused:
                logger.info("autopilot: not removing failed server %s: %s", name, reason)
            self._refused = refused
        done = []
        for removal in plan:
            if removal.reason == "failed":
                logger.info("autopilot: Attempting removal of failed server node %s (id %s)",
                            removal.name, removal.server_id)
                self.lan.force_leave(removal.name)
            else:
                logger.info("leader: removing server %s (id %s) that left", removal.name, removal.server_id)
            try:
                await self.raft.remove_voter(removal.server_id)
            except Exception as exc:  # a conf change in flight, leadership lost: the next pass retries
                logger.warning("autopilot: could not remove server %s: %s", removal.name, exc)
                break
            done.append(removal)
        return done

    def _wake_later(self, delay_s: float) -> None:
        asyncio.get_running_loop().call_later(delay_s, self._wake.set)

    async def run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(RECONCILE_INTERVAL_S):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.prune()
                await self.add_alive()
            except Exception:
                logger.exception("autopilot: dead server cleanup failed")
