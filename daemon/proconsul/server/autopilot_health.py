"""Autopilot's configuration and server health: what `/v1/operator/autopilot/*` answers.

Owns three things, as Consul's leader does:

- **the configuration** (`CleanupDeadServers`, `LastContactThreshold`, `MaxTrailingLogs`,
  `MinQuorum`, `ServerStabilizationTime`, and the Enterprise-only fields, kept and shown but
  without effect). It lives in the replicated state (`commands.AutopilotSetConfig`, with CAS on
  its ModifyIndex); until an operator first sets it, the agent's `autopilot { }` block is in
  force and is shown with indexes 0, so `?cas=0` succeeds only on the first write. Every server
  reads the same effective configuration (`effective()`), which the dead-server cleanup honours.
- **server health**, tracked by the leader once a second (`HEALTH_INTERVAL_S`): every server of
  the Raft configuration reports its log position (`Autopilot.ServerState`), gossip gives its
  serf status. A server is healthy when it is alive in the LAN pool, answered the leader within
  `LastContactThreshold` plus one heartbeat interval (the leader measures LastContact as the time
  since the follower last answered; an idle follower only hears a heartbeat per interval), is on
  the leader's term and trails the leader's last index by at most `MaxTrailingLogs`.
  `StableSince` is when its health last changed. The cluster is healthy when every server is;
  `FailureTolerance` is the healthy voters beyond a quorum. The gauges `autopilot.healthy` and
  `autopilot.failure_tolerance` exist from start-up (0 until a leader computed them) and are
  updated by the leader only, as in Consul.
- **the RPCs** that answer these reads and the configuration write on the leader, so any agent
  can serve the HTTP API (forwarded like the other operator endpoints).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import proconsul
from proconsul.durations import format_duration, parse_duration
from proconsul.metrics import Metrics
from proconsul.rpc_api import RPCError
from proconsul.serf.member import STATUS_ALIVE, STATUS_FAILED, STATUS_LEFT
from proconsul.server.autopilot import LANServers
from proconsul.state import commands

if TYPE_CHECKING:
    from proconsul.config import RuntimeConfig
    from proconsul.raft.node import RaftServer
    from proconsul.state.store import Store
    from proconsul.transport import ConnectionPool

logger = logging.getLogger(__name__)

# s, 1: how often the leader refreshes every server's health (Consul's ServerHealthInterval is 2s;
# a shorter one makes failure_tolerance follow a failure sooner).
HEALTH_INTERVAL_S = 1.0
# s, 1: how long the leader waits for one server's log position before counting it silent.
STATS_TIMEOUT_S = 1.0

_SERF_STATUS = {STATUS_ALIVE: "alive", STATUS_FAILED: "failed", STATUS_LEFT: "left"}
_BOOLS = ("CleanupDeadServers", "DisableUpgradeMigration")
_UINTS = ("MaxTrailingLogs", "MinQuorum")
_DURATIONS = ("LastContactThreshold", "ServerStabilizationTime")
_STRINGS = ("RedundancyZoneTag", "UpgradeVersionTag")


@dataclass(frozen=True)
class Settings:
    """The effective autopilot configuration in proconsul's units (durations in seconds)."""

    cleanup_dead_servers: bool = True
    last_contact_threshold_s: float = 0.2
    max_trailing_logs: int = 250
    min_quorum: int = 0
    server_stabilization_time_s: float = 10.0
    redundancy_zone_tag: str = ""
    disable_upgrade_migration: bool = False
    upgrade_version_tag: str = ""
    create_index: int = 0
    modify_index: int = 0

    def fields(self) -> dict[str, Any]:
        """Consul's field names, durations in seconds (what the replicated command carries)."""
        return {
            "CleanupDeadServers": self.cleanup_dead_servers,
            "LastContactThreshold": self.last_contact_threshold_s,
            "MaxTrailingLogs": self.max_trailing_logs,
            "MinQuorum": self.min_quorum,
            "ServerStabilizationTime": self.server_stabilization_time_s,
            "RedundancyZoneTag": self.redundancy_zone_tag,
            "DisableUpgradeMigration": self.disable_upgrade_migration,
            "UpgradeVersionTag": self.upgrade_version_tag,
        }

    def render(self) -> dict[str, Any]:
        """Consul's JSON (durations as Go duration strings, as its ReadableDuration marshals)."""
        out = self.fields()
        for key in _DURATIONS:
            out[key] = format_duration(out[key])
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out


def from_fields(fields: dict[str, Any], create_index: int = 0, modify_index: int = 0) -> Settings:
    return Settings(
        cleanup_dead_servers=bool(fields.get("CleanupDeadServers", False)),
        last_contact_threshold_s=float(fields.get("LastContactThreshold", 0.0)),
        max_trailing_logs=int(fields.get("MaxTrailingLogs", 0)),
        min_quorum=int(fields.get("MinQuorum", 0)),
        server_stabilization_time_s=float(fields.get("ServerStabilizationTime", 0.0)),
        redundancy_zone_tag=str(fields.get("RedundancyZoneTag", "")),
        disable_upgrade_migration=bool(fields.get("DisableUpgradeMigration", False)),
        upgrade_version_tag=str(fields.get("UpgradeVersionTag", "")),
        create_index=create_index,
        modify_index=modify_index,
    )


def parse_body(body: Any) -> dict[str, Any]:
    """A PUT body as replicated fields. As Consul decodes it, a field left out takes its zero
    value; a duration is a Go duration string or a number of nanoseconds. ValueError: 400."""
    if not isinstance(body, dict):
        raise ValueError("Error parsing autopilot config: the body must be a JSON object")
    out: dict[str, Any] = {}
    for key in _BOOLS:
        value = body.get(key, False)
        if not isinstance(value, bool):
            raise ValueError(f"Error parsing autopilot config: {key} must be a boolean")
        out[key] = value
    for key in _UINTS:
        value = body.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"Error parsing autopilot config: {key} must be a non-negative integer")
        out[key] = value
    for key in _DURATIONS:
        value = body.get(key, 0)
        if isinstance(value, bool):
            raise ValueError(f"Error parsing autopilot config: {key} must be a duration")
        try:
            seconds = value / 1e9 if isinstance(value, (int, float)) else parse_duration(str(value))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"Error parsing autopilot config: {key}: {exc}") from None
        if seconds < 0:
            raise ValueError(f"Error parsing autopilot config: {key} must not be negative")
        out[key] = seconds
    for key in _STRINGS:
        value = body.get(key, "")
        if not isinstance(value, str):
            raise ValueError(f"Error parsing autopilot config: {key} must be a string")
        out[key] = value
    return out


@dataclass
class ServerHealth:
    """The leader's view of one server (Consul's autopilot ServerHealth)."""

    id: str
    name: str = ""
    address: str = ""
    serf_status: str = "none"
    version: str = ""
    leader: bool = False
    voter: bool = True
    last_contact_s: float | None = None
    last_term: int = 0
    last_index: int = 0
    healthy: bool = False
    stable_since: float = field(default_factory=time.time)  # wall time (display only)
    changed_at: float = field(default_factory=time.monotonic)  # the same moment, for timing

    def render_health(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Address": self.address,
            "SerfStatus": self.serf_status,
            "Version": self.version,
            "Leader": self.leader,
            "LastContact": _contact(self.last_contact_s),
            "LastTerm": self.last_term,
            "LastIndex": self.last_index,
            "Healthy": self.healthy,
            "Voter": self.voter,
            "StableSince": _rfc3339(self.stable_since),
        }

    def render_state(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Address": self.address,
            "NodeStatus": self.serf_status,
            "Version": self.version,
            "LastContact": _contact(self.last_contact_s),
            "LastTerm": self.last_term,
            "LastIndex": self.last_index,
            "Healthy": self.healthy,
            "StableSince": _rfc3339(self.stable_since),
            "Status": "leader" if self.leader else ("voter" if self.voter else "non-voter"),
            "Meta": {},
            "NodeType": "voter",
        }


def _contact(seconds: float | None) -> str:
    # Consul shows a server never heard from as a negative duration; -1ns is the least surprising.
    return "-1ns" if seconds is None else format_duration(round(seconds, 6))


def _rfc3339(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def failure_tolerance(voters_healthy: int, voters: int) -> int:
    """Healthy voters beyond a quorum of all voters (never negative)."""
    return max(0, voters_healthy - (voters // 2 + 1))


class AutopilotOperator:
    """The configuration and health reads/writes, with their RPCs; the leader's health loop."""

    def __init__(
        self,
        operator: Any,
        store: Store,
        raft: RaftServer | None,
        node_id: str,
        node_name: str,
        config: Callable[[], RuntimeConfig],
        lan: LANServers,
        pool: ConnectionPool | None,
        metrics: Metrics | None,
    ) -> None:
        self.operator = operator  # forwarding to the leader (Operator.on_leader)
        self.store = store
        self.raft = raft  # None in -dev and on client agents
        self.node_id = node_id
        self.node_name = node_name
        self._config = config
        self.lan = lan
        self.pool = pool
        self.servers: dict[str, ServerHealth] = {}
        self._computed = False
        m = metrics or Metrics()
        self._m_healthy = m.gauge("autopilot", "healthy", help="1 when every server is healthy (leader only)")
        self._m_tolerance = m.gauge(
            "autopilot", "failure_tolerance", help="voters that can fail with quorum kept (leader only)"
        )
        self._m_healthy.set(0)
        self._m_tolerance.set(0)
        registry = operator.server
        registry.register("Operator.AutopilotGetConfiguration", self._rpc_get_config)
        registry.register("Operator.AutopilotSetConfiguration", self._rpc_set_config)
        registry.register("Operator.ServerHealth", self._rpc_health)
        registry.register("Operator.AutopilotState", self._rpc_state)

    # ------------------------------------------------------------------------- configuration

    def effective(self) -> Settings:
        """The replicated configuration once set, else the agent's `autopilot { }` block."""
        stored = self.store.autopilot_config
        if stored:
            fields, create, modify = stored
            return from_fields(fields, create, modify)
        a = self._config().autopilot
        return Settings(
            cleanup_dead_servers=a.cleanup_dead_servers,
            last_contact_threshold_s=a.last_contact_threshold_s,
            max_trailing_logs=a.max_trailing_logs,
            min_quorum=a.min_quorum,
            server_stabilization_time_s=a.server_stabilization_time_s,
        )

    async def get_config(self, stale: bool) -> dict[str, Any]:
        forwarded, reply = await self.operator.on_leader("Operator.AutopilotGetConfiguration", {}, stale)
        return reply if forwarded else self.effective().render()  # type: ignore[no-any-return]

    async def _rpc_get_config(self, body: Any) -> dict[str, Any]:
        self.operator.require_leader()
        return self.effective().render()

    async def set_config(self, fields: dict[str, Any], cas_index: int | None) -> bool:
        body = {"fields": fields, "cas": cas_index is not None, "index": cas_index or 0}
        forwarded, reply = await self.operator.on_leader("Operator.AutopilotSetConfiguration", body, False)
        return bool(reply) if forwarded else await self._set_here(body)

    async def _rpc_set_config(self, body: Any) -> bool:
        self.operator.require_leader()
        return await self._set_here(body)

    async def _set_here(self, body: dict[str, Any]) -> bool:
        fields = dict(body["fields"])  # parsed by the HTTP layer (parse_body), durations in seconds
        command = commands.AutopilotSetConfig(tuple(sorted(fields.items())), bool(body["cas"]), int(body["index"]))
        _, result = await self.operator.server.write(command)
        if result:
            logger.info("autopilot: configuration updated: %s", self.effective().render())
        return bool(result)

    # --------------------------------------------------------------------------------- health

    async def health(self, stale: bool = False) -> dict[str, Any]:
        forwarded, reply = await self.operator.on_leader("Operator.ServerHealth", {}, stale)
        return reply if forwarded else self._health_here()  # type: ignore[no-any-return]

    async def _rpc_health(self, body: Any) -> dict[str, Any]:
        self.operator.require_leader()
        return self._health_here()

    async def state(self, stale: bool = False) -> dict[str, Any]:
        forwarded, reply = await self.operator.on_leader("Operator.AutopilotState", {}, stale)
        return reply if forwarded else self._state_here()  # type: ignore[no-any-return]

    async def _rpc_state(self, body: Any) -> dict[str, Any]:
        self.operator.require_leader()
        return self._state_here()

    def _ensure_computed(self) -> None:
        if self.raft is None:
            self._compute_single()
        elif not self._computed:
            raise RPCError("autopilot: server health not yet known; try again shortly")

    def _summary(self) -> tuple[bool, int]:
        servers = list(self.servers.values())
        voters = [s for s in servers if s.voter]
        healthy = bool(servers) and all(s.healthy for s in servers)
        return healthy, failure_tolerance(sum(1 for s in voters if s.healthy), len(voters))

    def _health_here(self) -> dict[str, Any]:
        self._ensure_computed()
        healthy, tolerance = self._summary()
        return {
            "Healthy": healthy,
            "FailureTolerance": tolerance,
            "Servers": [self.servers[sid].render_health() for sid in sorted(self.servers)],
        }

    def _state_here(self) -> dict[str, Any]:
        self._ensure_computed()
        healthy, tolerance = self._summary()
        leader = next((sid for sid, s in sorted(self.servers.items()) if s.leader), "")
        return {
            "Healthy": healthy,
            "FailureTolerance": tolerance,
            "OptimisticFailureTolerance": failure_tolerance(
                sum(1 for s in self.servers.values() if s.voter and s.serf_status == "alive"),
                sum(1 for s in self.servers.values() if s.voter),
            ),
            "Servers": {sid: self.servers[sid].render_state() for sid in sorted(self.servers)},
            "Leader": leader,
            "Voters": sorted(sid for sid, s in self.servers.items() if s.voter),
        }

    def _compute_single(self) -> None:
        """-dev: one in-memory server, the leader of itself, always healthy."""
        sid = self.node_id
        prev = self.servers.get(sid)
        self.servers = {sid: ServerHealth(
            id=sid, name=self.node_name, address=self.operator.server.consensus.leader_address(),
            serf_status="alive", version=proconsul.CONSUL_COMPAT_VERSION, leader=True, voter=True,
            last_contact_s=0.0, last_term=1, last_index=self.store.last_index, healthy=True,
            stable_since=prev.stable_since if prev else time.time(),
            changed_at=prev.changed_at if prev else time.monotonic(),
        )}
        self._m_healthy.set(1)
        self._m_tolerance.set(0)

    def _serf(self) -> dict[str, tuple[str, str]]:
        """LAN-pool servers of our datacenter by server ID: (serf status, version)."""
        dc = self._config().datacenter
        out: dict[str, tuple[str, str]] = {}
        for rec in self.lan.members():
            tags = rec.member.tags
            if tags.get("role") == "consul" and tags.get("dc") == dc and tags.get("id"):
                build = tags.get("build", "")
                out[tags["id"]] = (_SERF_STATUS.get(rec.status, "none"), build.split(":", 1)[0])
        return out

    async def _stats(self, sid: str, addr: str) -> dict[str, Any] | None:
        if sid == self.raft.id:
            return dict(self.raft.log_stats())
        pool = self.pool
        if pool is None or not addr:
            return None
        try:
            reply = await pool.call(addr, "Autopilot.ServerState", None, timeout_s=STATS_TIMEOUT_S)
        except Exception:  # silent or down: its last position stands, its contact ages
            return None
        return reply if isinstance(reply, dict) and reply.get("id") == sid else None

    async def refresh(self) -> None:
        """Leader only: recompute every server's health and the gauges."""
        raft = self.raft
        core = raft.core if raft is not None else None
        if core is None or not raft.is_leader():
            self._computed = False
            return
        settings = self.effective()
        conf = core.config
        members = sorted(set(conf.voters) | set(conf.learners))
        names = self.operator.node_names()
        gossip = self.operator.gossip_names()
        serf = self._serf()
        addrs = {sid: raft.addresses.addrs.get(sid, "") for sid in members}
        stats = await asyncio.gather(*(self._stats(sid, addrs[sid]) for sid in members))
        if not raft.is_leader() or raft.core is None:
            self._computed = False
            return
        leader_stats = raft.log_stats()
        heartbeat_s = raft.tick_s * core.heartbeat_tick
        now = time.time()
        fresh: dict[str, ServerHealth] = {}
        for sid, st in zip(members, stats, strict=True):
            prev = self.servers.get(sid)
            h = ServerHealth(id=sid, stable_since=prev.stable_since if prev else now,
                             changed_at=prev.changed_at if prev else time.monotonic())
            h.name = self.operator.server_name(sid, addrs[sid], gossip, names)
            h.address = addrs[sid]
            h.serf_status, h.version = serf.get(sid, ("none", ""))
            if sid == raft.id:
                h.serf_status, h.version = "alive", proconsul.CONSUL_COMPAT_VERSION
            h.leader = sid == raft.id
            h.voter = sid in conf.voters
            h.last_contact_s = 0.0 if h.leader else raft.follower_contact_age_s(sid)
            if st is not None:
                h.last_term, h.last_index = int(st.get("last_term", 0)), int(st.get("last_index", 0))
            elif prev is not None:
                h.last_term, h.last_index = prev.last_term, prev.last_index
            h.healthy = (
                h.serf_status == "alive"
                and h.last_contact_s is not None
                and h.last_contact_s <= settings.last_contact_threshold_s + heartbeat_s
                and h.last_term == leader_stats["term"]
                and leader_stats["last_index"] - h.last_index <= settings.max_trailing_logs
            )
            if prev is not None and prev.healthy != h.healthy:
                h.stable_since, h.changed_at = now, time.monotonic()
                logger.info("autopilot: server %s is now %s", h.name, "healthy" if h.healthy else "unhealthy")
            fresh[sid] = h
        self.servers = fresh
        self._computed = True
        healthy, tolerance = self._summary()
        self._m_healthy.set(1 if healthy else 0)
        self._m_tolerance.set(tolerance)

    def unhealthy_for_s(self, sid: str) -> float:
        """Seconds `sid` has been continuously unhealthy in the leader's view (0: healthy/unknown)."""
        h = self.servers.get(sid)
        if h is None or h.healthy or not self._computed:
            return 0.0
        return max(0.0, time.monotonic() - h.changed_at)

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                logger.exception("autopilot: server health refresh failed")
            await asyncio.sleep(HEALTH_INTERVAL_S)
