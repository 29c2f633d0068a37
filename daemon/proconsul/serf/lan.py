"""The agent's LAN gossip membership: the serf layer between the gossip driver and the agent.

Owns:
- the LAN ``GossipNode`` of every agent (tags: role, dc, id, build, vsn, and port for servers),
  encrypted when ``encrypt`` or a persisted keyring says so; its life cycle, joins and member
  table are those of every pool (:class:`~proconsul.serf.pool.SerfPool`, shared with the WAN pool);
- the member table as ``/v1/agent/members`` reports it (serf keeps failed members until
  ``reconnect_timeout`` and left ones for a day; memberlist forgets them after 30 s, so this
  table outlives the core's);
- ``-join``/``-retry-join`` (``retry_interval``, ``retry_max``: exhausted means exit 1);
- serf's reconnect loop and reaper on this table (:mod:`proconsul.serf.reconnect`): failed members
  are retried by a join now and then, and reaped after ``reconnect_timeout``;
- ``leave`` and ``force-leave``;
- what the leader's reconcile of gossip members into the catalog reads (:func:`members`, the
  ``reaped`` table and the ``changed`` event); the loop itself is the server's
  (:func:`proconsul.server.leader.reconcile_loop`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import msgpack

from proconsul.gossip.config import GossipConfig
from proconsul.gossip.core import (
    Event,
    MemberEvent,
    MemberEventKind,
    MemberState,
    NameConflict,
    QueryReceived,
    UserEventReceived,
)
from proconsul.gossip.keyring import Keyring, setup_keyring
from proconsul.serf.member import STATUS_ALIVE, TOMBSTONE_TIMEOUT_S, MemberRecord
from proconsul.serf.pool import SerfPool
from proconsul.serf.snapshot import Snapshot

if TYPE_CHECKING:
    from proconsul.config import RuntimeConfig
    from proconsul.metrics.registry import Metrics

logger = logging.getLogger(__name__)

class Membership(SerfPool):
    """One agent's LAN pool membership."""

    # Consul agents join with serf's ignoreOld: a (re)joining agent does not replay old events.
    join_ignores_old_events = True

    def __init__(
        self,
        config: Callable[[], RuntimeConfig],
        node_name: str,
        node_id: str,
        address: str,
        tags: dict[str, str],
        metrics: Metrics | None = None,
    ) -> None:
        cfg = config()
        self.node_name = node_name
        self.node_id = node_id
        self.keyring = setup_keyring(cfg.encrypt, cfg.data_dir)
        super().__init__(
            config, metrics, "LAN", node_name, cfg.ports.serf_lan,
            bind_host=cfg.serf_lan or cfg.bind_addr,
            advertise_host=address,
            gossip_config=GossipConfig.local() if cfg.dev else GossipConfig.lan(),
            tags=tags,
            keyring=self.keyring,
            save_keyring=self.save_keyring,
            merge_check=self._merge_check,
        )
        # Peers to rejoin after a restart (serf's snapshot); dev agents keep nothing.
        self.snapshot = Snapshot(cfg.data_dir, cfg.rejoin_after_leave) if cfg.data_dir and not cfg.dev else None
        self.changed = asyncio.Event()
        # Called with each member event (the leader's reconcile and client server lists).
        self.listeners: list[Callable[[MemberRecord], None]] = []
        # Called with each user event the pool delivers (ours included), see proconsul.local.events.
        self.user_event_listeners: list[Callable[[UserEventReceived], None]] = []
        # Members reaped from the table, by name, with when: the leader deregisters them from the
        # catalog (Consul's handleReapMember), even when it became leader after the reap.
        self.reaped: dict[str, tuple[MemberRecord, float]] = {}
        self._resolving = False  # a name-conflict resolution is under way

    def on_member_event(self, listener: Callable[[MemberRecord], None]) -> None:
        """Call `listener` with each member event, after the table is updated."""
        self.listeners.append(listener)

    def on_user_event(self, listener: Callable[[UserEventReceived], None]) -> None:
        """Call `listener` with each user event the pool delivers, ours included."""
        self.user_event_listeners.append(listener)

    # --- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self.snapshot is not None:
            self.node.restore_clocks(self.snapshot.event_clock, self.snapshot.query_clock)
        await self._bind()
        logger.info("gossip: LAN pool on %s:%d", *self.node.address)
        self._start_reconnect(lambda: self.config.reconnect_timeout_s, on_reap=self._on_reaped)
        previous = self.snapshot.previous_peers(self.node_name) if self.snapshot is not None else []
        if previous:
            self._tasks.append(asyncio.get_running_loop().create_task(self._rejoin(previous), name="serf-rejoin"))

    async def _rejoin(self, previous: list[tuple[str, str]]) -> None:
        """serf's handleRejoin: try the peers of the snapshot in random order until one answers."""
        random.shuffle(previous)
        for name, addr in previous:
            logger.info("serf: Attempting re-join to previously known node: %s: %s", name, addr)
            if await self.node.join([addr], self.config.ports.serf_lan) > 0:
                logger.info("serf: Re-joined to previously known node: %s: %s", name, addr)
                return
        logger.warning("serf: Failed to re-join any previously known node")

    def start_retry_join(self, on_exhausted: Callable[[], None]) -> None:
        cfg = self.config
        self._start_retry_join([*cfg.start_join, *cfg.retry_join], cfg.retry_max, cfg.retry_interval_s, on_exhausted)

    def _on_reaped(self, rec: MemberRecord) -> None:
        now = time.time()
        for name, (_, when) in list(self.reaped.items()):
            if now - when > TOMBSTONE_TIMEOUT_S:  # no leader took it in a day: stop holding it
                del self.reaped[name]
        self.reaped[rec.member.name] = (rec, now)
        self.changed.set()

    async def leave(self) -> None:
        if self.snapshot is not None:
            self.snapshot.leave()
        await super().leave()

    async def stop(self) -> None:
        await super().stop()
        if self.snapshot is not None:
            self.snapshot.close()

    # --- events ------------------------------------------------------------------------------

    def save_keyring(self, ring: Keyring) -> None:
        """Persist the keyring after a key change (the WAN pool shares the LAN pool's ring and file)."""
        if self.config.data_dir and not self.config.disable_keyring_file:
            ring.save(self.config.data_dir)

    def _merge_check(self, members: Sequence[tuple[str, Mapping[str, str]]]) -> str | None:
        """Consul's LAN merge delegate: refuse members that reuse a node ID under another name
        (ours, one another's, or a live member's) or belong to another datacenter."""
        me, my_id = self.node_name, self.node_id
        live = {m.tags.get("id", ""): m.name for m in self.node.members()
                if m.state in (MemberState.ALIVE, MemberState.SUSPECT) and m.tags.get("id")}
        seen: dict[str, str] = {}
        for name, tags in members:
            node_id = tags.get("id", "")
            if node_id:
                if node_id == my_id and name.lower() != me.lower():
                    return f"Member '{name}' has conflicting node ID '{node_id}' with this agent's ID"
                other = seen.get(node_id) or live.get(node_id)
                if other is not None and other.lower() != name.lower():
                    return f"Member '{name}' has conflicting node ID '{node_id}' with member '{other}'"
                seen[node_id] = name
            dc = tags.get("dc", "")
            if dc and dc != self.config.datacenter:
                return f"Member '{name}' part of wrong datacenter '{dc}'"
        return None

    async def _resolve_name_conflict(self) -> None:
        """serf's conflict resolution: ask everyone which address they hold for our name; in the
        minority we step out of the pool (the other holder keeps the name)."""
        me = self.node.address
        result = await self.queries.ask("_serf_conflict", self.node_name.encode())
        matching = 0
        for payload in result.responses.values():
            try:
                answer = msgpack.unpackb(payload, raw=False)
            except Exception:
                continue
            if isinstance(answer, dict) and (answer.get("Addr"), answer.get("Port")) == tuple(me):
                matching += 1
        # The disputed node does not vote (it does not answer its own query), as in serf.
        responses = len(result.responses)
        if matching >= responses // 2 + 1:
            logger.info("serf: majority in name conflict resolution [%d / %d]", matching, responses)
            self._resolving = False
            return
        logger.error("serf: minority in name conflict resolution, quiting [%d / %d]", matching, responses)
        logger.error("agent: node name %s is in use by another agent; this agent left the LAN pool, "
                     "restart it with a unique -node", self.node_name)
        await self.node.stop()

    def _on_event(self, event: Event) -> None:
        if self.snapshot is not None:
            if isinstance(event, UserEventReceived):
                self.snapshot.event_seen(event.ltime)
            elif isinstance(event, QueryReceived):
                self.snapshot.query_seen(event.ltime)
        if self.queries.handle_event(event) or self.keyring_queries.handle_event(event):
            return
        if isinstance(event, NameConflict):
            if event.name == self.node_name:
                logger.error("serf: Node name conflicts with another node at %s:%d. Names must be unique! "
                             "(Resolution enabled: true)", *event.theirs)
                if not self._resolving:
                    self._resolving = True
                    self._tasks.append(asyncio.get_running_loop().create_task(
                        self._resolve_name_conflict(), name="serf-conflict"))
            else:
                logger.warning("serf: Name conflict for '%s' both %s:%d and %s:%d are claiming",
                               event.name, *event.ours, *event.theirs)
            return
        if isinstance(event, UserEventReceived):
            for on_user_event in self.user_event_listeners:
                try:
                    on_user_event(event)
                except Exception:
                    logger.exception("gossip: user event listener failed")
            return
        if not isinstance(event, MemberEvent):
            return
        m = event.member
        if self.snapshot is not None and m.name != self.node_name:
            if event.kind is MemberEventKind.JOIN:
                self.snapshot.member_alive(m.name, m.addr[0], m.addr[1])
            elif event.kind in (MemberEventKind.LEAVE, MemberEventKind.FAIL):
                self.snapshot.member_gone(m.name)
        if event.kind is MemberEventKind.REAP:
            return  # serf keeps the member listed (failed until reconnect_timeout, left for a day)
        rec, _ = self._record(m)
        self.reaped.pop(m.name, None)  # back after a reap: it is a member again
        if event.kind in (MemberEventKind.FAIL, MemberEventKind.LEAVE, MemberEventKind.JOIN):
            logger.info("gossip: member %s %s", m.name, {1: "joined", 3: "left", 4: "failed"}.get(rec.status, "changed"))
        self._notify(rec)

    def _notify(self, rec: MemberRecord) -> None:
        self.changed.set()
        for listener in self.listeners:
            try:
                listener(rec)
            except Exception:
                logger.exception("gossip: member listener failed")

    # --- views -------------------------------------------------------------------------------

    def servers(self) -> list[tuple[str, str]]:
        """Alive servers of our datacenter as (name, "host:port") for RPC, sorted by name."""
        out = []
        for rec in self.members():
            tags = rec.member.tags
            if rec.status == STATUS_ALIVE and tags.get("role") == "consul" and tags.get("dc") == self.config.datacenter:
                out.append((rec.member.name, f"{rec.member.addr[0]}:{tags.get('port', '8300')}"))
        return out

