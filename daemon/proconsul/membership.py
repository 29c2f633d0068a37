"""The agent's LAN gossip membership: the serf layer between the gossip driver and the agent.

Owns:
- the LAN ``GossipNode`` of every agent (tags: role, dc, id, build, vsn, and port for servers),
  encrypted when ``encrypt`` or a persisted keyring says so;
- the member table as ``/v1/agent/members`` reports it (serf keeps failed members until
  ``reconnect_timeout`` and left ones for a day; memberlist forgets them after 30 s, so this
  table outlives the core's);
- ``-join``/``-retry-join`` (``retry_interval``, ``retry_max``: exhausted means exit 1);
- serf's reconnect loop and reaper on this table (:mod:`proconsul.reconnect`): failed members
  are retried by a join now and then, and reaped after ``reconnect_timeout``;
- ``leave`` and ``force-leave``;
- the leader's reconcile of gossip members into the catalog (``serfHealth``), see
  :func:`proconsul.leader.reconcile_member`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from proconsul.gossip.config import GossipConfig
from proconsul.gossip.core import (
    Event,
    Member,
    MemberEvent,
    MemberEventKind,
    MemberState,
    NameConflict,
    UserEventReceived,
)
from proconsul.gossip.keyring import Keyring, setup_keyring
from proconsul.gossip.node import GossipNode
from proconsul.serf_queries import KeyringQueries, QueryAsker
from proconsul.serf_snapshot import Snapshot

logger = logging.getLogger(__name__)

# Serf member status numbers (serf.MemberStatus), as /v1/agent/members reports them.
STATUS_NONE, STATUS_ALIVE, STATUS_LEAVING, STATUS_LEFT, STATUS_FAILED = 0, 1, 2, 3, 4
# Serf's TombstoneTimeout: how long a left member stays listed.
TOMBSTONE_TIMEOUT_S = 24 * 3600.0
# How often the leader re-runs the full reconcile even without gossip events (Consul: 60 s).
RECONCILE_INTERVAL_S = 60.0


@dataclass
class MemberRecord:
    member: Member
    status: int
    since: float  # wall clock of the last status change


def _status(state: MemberState) -> int:
    if state in (MemberState.ALIVE, MemberState.SUSPECT):
        return STATUS_ALIVE
    if state == MemberState.LEFT:
        return STATUS_LEFT
    return STATUS_FAILED


class Membership:
    """One agent's LAN pool membership."""

    def __init__(self, agent: Any, tags: dict[str, str]) -> None:
        self.agent = agent
        cfg = agent.config
        self.config = cfg
        bind_host = cfg.serf_lan or cfg.bind_addr
        self.keyring = setup_keyring(cfg.encrypt, cfg.data_dir)
        self.gossip_config = GossipConfig.local() if cfg.dev else GossipConfig.lan()
        self.node = GossipNode(
            agent.node_name,
            (bind_host, cfg.ports.serf_lan),
            self.gossip_config,
            tags=tags,
            on_event=self._on_event,
            advertise=(agent.address, cfg.ports.serf_lan),
            keyring=self.keyring,
            disable_coordinates=cfg.disable_coordinates,
            merge_check=self._merge_check,
        )
        self.queries = QueryAsker(self.node)
        self.keyring_queries = KeyringQueries(self.node, self.queries, self._save_keyring)
        # Peers to rejoin after a restart (serf's snapshot); dev agents keep nothing.
        self.snapshot = Snapshot(cfg.data_dir, cfg.rejoin_after_leave) if cfg.data_dir and not cfg.dev else None
        self.records: dict[str, MemberRecord] = {}
        self.changed = asyncio.Event()
        # Called with each member event (the leader's reconcile and client server lists).
        self.listeners: list[Callable[[MemberRecord], None]] = []
        # Called with each user event the pool delivers (ours included), see proconsul.events.
        self.user_event_listeners: list[Callable[[UserEventReceived], None]] = []
        self.leaving = False
        # Members reaped from the table, by name, with when: the leader deregisters them from the
        # catalog (Consul's handleReapMember), even when it became leader after the reap.
        self.reaped: dict[str, tuple[MemberRecord, float]] = {}
        self._resolving = False  # a name-conflict resolution is under way
        self._tasks: list[asyncio.Task[Any]] = []

    # --- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.node.start()
        except OSError as exc:
            if not (self.config.dev and exc.errno == errno.EADDRINUSE):
                raise
            # Dev agents are throwaway: another one already holds 8301 on this host.
            logger.warning("gossip: port %d in use, dev agent gossips on a random port", self.config.ports.serf_lan)
            self.node.bind = (self.node.bind[0], 0)
            self.node.advertise = (self.agent.address, 0)
            await self.node.start()
        logger.info("gossip: LAN pool on %s:%d", *self.node.address)
        from proconsul.reconnect import Reconnector

        Reconnector(
            "LAN", self.records, self._reconnect_join,
            reconnect_interval=lambda: self.config.reconnect_interval_s,
            reconnect_timeout=lambda: self.config.reconnect_timeout_s,
            on_reap=self._on_reaped,
        ).start(self._tasks)
        previous = self.snapshot.previous_peers(self.agent.node_name) if self.snapshot is not None else []
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
        addrs = list(dict.fromkeys([*self.config.start_join, *self.config.retry_join]))
        if addrs:
            self._tasks.append(asyncio.get_running_loop().create_task(self._retry_join(addrs, on_exhausted)))

    async def _retry_join(self, addrs: list[str], on_exhausted: Callable[[], None]) -> None:
        cfg = self.config
        attempt = 0
        while True:
            attempt += 1
            n = await self.join(addrs)
            if n > 0:
                logger.info("agent: join LAN completed; synced with %d initial agents", n)
                return
            if cfg.retry_max and attempt >= cfg.retry_max:
                logger.error("agent: max join LAN retry exhausted, exiting")
                on_exhausted()
                return
            logger.warning("agent: join LAN failed, retrying in %gs (attempt %d)", cfg.retry_interval_s, attempt)
            await asyncio.sleep(cfg.retry_interval_s)

    async def join(self, addrs: list[str]) -> int:
        targets = [a for a in addrs if not a.startswith("provider=")]
        # Consul agents join with serf's ignoreOld: a (re)joining agent does not replay old events.
        return await self.node.join(targets, self.config.ports.serf_lan, ignore_old=True)

    async def _reconnect_join(self, addr: str) -> int:
        # serf's reconnect joins at the memberlist level: events missed meanwhile are delivered.
        if self.leaving:
            return 0
        return await self.node.join([addr], self.config.ports.serf_lan)

    def _on_reaped(self, rec: MemberRecord) -> None:
        now = time.time()
        for name, (_, when) in list(self.reaped.items()):
            if now - when > TOMBSTONE_TIMEOUT_S:  # no leader took it in a day: stop holding it
                del self.reaped[name]
        self.reaped[rec.member.name] = (rec, now)
        self.changed.set()

    async def leave(self) -> None:
        self.leaving = True
        if self.snapshot is not None:
            self.snapshot.leave()
        me = self.records.get(self.agent.node_name)
        if me is not None:
            me.status = STATUS_LEAVING
        await self.node.leave()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await self.node.stop()
        if self.snapshot is not None:
            self.snapshot.close()

    def force_leave(self, name: str, prune: bool = False) -> bool:
        known = self.node.force_leave(name)
        rec = self.records.get(name)
        if rec is not None and rec.status == STATUS_FAILED:
            rec.status = STATUS_LEFT
            rec.since = time.time()
            self._notify(rec)
        if prune and rec is not None and rec.status == STATUS_LEFT:
            del self.records[name]
        return known or rec is not None

    # --- events ------------------------------------------------------------------------------

    def _save_keyring(self, ring: Keyring) -> None:
        if self.config.data_dir and not self.config.disable_keyring_file:
            ring.save(self.config.data_dir)

    def _merge_check(self, members: Sequence[tuple[str, Mapping[str, str]]]) -> str | None:
        """Consul's LAN merge delegate: refuse members that reuse a node ID under another name
        (ours, one another's, or a live member's) or belong to another datacenter."""
        me, my_id = self.agent.node_name, self.agent.node_id
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
        result = await self.queries.ask("_serf_conflict", self.agent.node_name.encode())
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
                     "restart it with a unique -node", self.agent.node_name)
        await self.node.stop()

    def _on_event(self, event: Event) -> None:
        if self.queries.handle_event(event) or self.keyring_queries.handle_event(event):
            return
        if isinstance(event, NameConflict):
            if event.name == self.agent.node_name:
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
        if self.snapshot is not None and m.name != self.agent.node_name:
            if event.kind is MemberEventKind.JOIN:
                self.snapshot.member_alive(m.name, m.addr[0], m.addr[1])
            elif event.kind in (MemberEventKind.LEAVE, MemberEventKind.FAIL):
                self.snapshot.member_gone(m.name)
        if event.kind is MemberEventKind.REAP:
            return  # serf keeps the member listed (failed until reconnect_timeout, left for a day)
        status = _status(m.state)
        if m.name == self.agent.node_name and self.leaving and status == STATUS_LEFT:
            status = STATUS_LEFT
        rec = self.records.get(m.name)
        if rec is None or rec.status != status:
            rec = MemberRecord(m, status, time.time())
            self.records[m.name] = rec
        else:
            rec.member = m
        self.reaped.pop(m.name, None)  # back after a reap: it is a member again
        if event.kind in (MemberEventKind.FAIL, MemberEventKind.LEAVE, MemberEventKind.JOIN):
            logger.info("gossip: member %s %s", m.name, {1: "joined", 3: "left", 4: "failed"}.get(status, "changed"))
        self._notify(rec)

    def _notify(self, rec: MemberRecord) -> None:
        self.changed.set()
        for listener in self.listeners:
            try:
                listener(rec)
            except Exception:
                logger.exception("gossip: member listener failed")

    def start_reconcile(self, server: Any, is_leader: Callable[[], bool]) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._reconcile_loop(server, is_leader)))

    async def _reconcile_loop(self, server: Any, is_leader: Callable[[], bool]) -> None:
        """Leader only: every member event (and at least every few seconds, so a new leader
        catches up at once) turns gossip membership into catalog state."""
        from proconsul.leader import reconcile_member

        while True:
            try:
                async with asyncio.timeout(2.0):
                    await self.changed.wait()
            except TimeoutError:
                pass
            self.changed.clear()
            if not is_leader():
                continue
            await self._reconcile_reaped(server, reconcile_member)
            for rec in self.members():
                await self._reconcile_one(server, reconcile_member, rec)

    async def _reconcile_reaped(self, server: Any, fn: Any) -> None:
        """Consul's handleReapMember: a reaped member's node leaves the catalog (never ours)."""
        for name in sorted(self.reaped):
            rec, _ = self.reaped[name]
            m = rec.member
            try:
                # Deregistered exactly as a left member is; a node already gone writes nothing.
                if await fn(server, m.name, m.addr[0], dict(m.tags), STATUS_LEFT, self.agent.node_name):
                    logger.info("leader: member %s was reaped; deregistered", name)
            except Exception as exc:  # no leader, lost leadership: the next pass retries
                logger.debug("leader: reconcile of reaped %s failed: %s", name, exc)
                continue
            self.reaped.pop(name, None)

    async def _reconcile_one(self, server: Any, fn: Any, rec: MemberRecord) -> None:
        m = rec.member
        try:
            await fn(server, m.name, m.addr[0], dict(m.tags), rec.status, self.agent.node_name)
        except Exception as exc:  # no leader, lost leadership: the next pass retries
            logger.debug("leader: reconcile of %s failed: %s", m.name, exc)

    # --- views -------------------------------------------------------------------------------

    def members(self) -> list[MemberRecord]:
        return [self.records[n] for n in sorted(self.records)]

    def counts(self) -> dict[str, str]:
        recs = list(self.records.values())
        return {
            "members": str(sum(1 for r in recs if r.status in (STATUS_ALIVE, STATUS_LEAVING))),
            "failed": str(sum(1 for r in recs if r.status == STATUS_FAILED)),
            "left": str(sum(1 for r in recs if r.status == STATUS_LEFT)),
        }

    def servers(self) -> list[tuple[str, str]]:
        """Alive servers of our datacenter as (name, "host:port") for RPC, sorted by name."""
        out = []
        for rec in self.members():
            tags = rec.member.tags
            if rec.status == STATUS_ALIVE and tags.get("role") == "consul" and tags.get("dc") == self.config.datacenter:
                out.append((rec.member.name, f"{rec.member.addr[0]}:{tags.get('port', '8300')}"))
        return out


def member_json(rec: MemberRecord) -> dict[str, Any]:
    m = rec.member
    return {
        "Name": m.name,
        "Addr": m.addr[0],
        "Port": m.addr[1],
        "Tags": dict(m.tags),
        "Status": rec.status,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    }
