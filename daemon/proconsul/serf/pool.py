"""What the LAN pool and a server's WAN pool have in common: one serf pool around a GossipNode.

Owns, for :class:`proconsul.serf.lan.Membership` and :class:`proconsul.server.wan.WANPool`:
- the pool's ``GossipNode`` and its serf internal queries (``QueryAsker``, the keyring ones);
- binding, with the dev-agent fallback to a random port when the standard one is taken;
- the member table (name -> :class:`~proconsul.serf.member.MemberRecord`) and how a gossip
  member event updates it;
- serf's reconnect loop and reaper on that table (:mod:`proconsul.serf.reconnect`);
- joining (``-join``/``-retry-join`` with their retry count and interval), leave and force-leave;
- the views ``/v1/agent/members`` and ``/v1/agent/self`` read (members in name order, counts);
- serf's metrics of the pool (:mod:`proconsul.serf.metrics`), counted from every gossip event
  before the pool handles it.

What differs stays in the pools, explicitly: their names, ports, timing profiles and config
keys, the LAN pool's snapshot, merge check, name-conflict resolution, user events and listeners,
the WAN pool's expiry on read.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proconsul.gossip.config import GossipConfig
from proconsul.gossip.core import Event, Member, MergeCheck
from proconsul.gossip.keyring import Keyring
from proconsul.gossip.node import GossipNode
from proconsul.serf.member import (
    STATUS_ALIVE,
    STATUS_FAILED,
    STATUS_LEAVING,
    STATUS_LEFT,
    MemberRecord,
    member_json,
    member_status,
)
from proconsul.serf.metrics import SerfMetrics
from proconsul.serf.queries import KeyringQueries, QueryAsker
from proconsul.serf.reconnect import Reconnector
from proconsul.tasks import cancel_and_wait

if TYPE_CHECKING:
    from proconsul.config import RuntimeConfig
    from proconsul.metrics.registry import Metrics

logger = logging.getLogger(__name__)


class SerfPool:
    """One gossip pool of this agent, as serf layers it over memberlist.

    Args:
        config: the agent's configuration as it is now (a reload replaces what it returns).
        metrics: where the gossip driver and serf record this pool's metrics (None: nowhere).
        label: "LAN" or "WAN", for log lines and task names.
        name: our member name in the pool.
        port: the pool's gossip port; join addresses without a port get it too.
        bind_host, advertise_host: where we listen, and the address others reach us on.
        gossip_config: the pool's timing profile.
        tags: our member tags.
        keyring: encrypt the pool with it (None: plaintext).
        save_keyring: persists the keyring after a key change made through the pool.
        merge_check: refuses members at join time (None: everyone may join).
    """

    @property
    def config(self) -> RuntimeConfig:
        """The agent's configuration as it is now: a reload (reconnect_* settings) reaches the
        pool's reconnect loop and reaper, which read it on every pass."""
        return self._config()

    # Whether a join skips user events sent before it (serf's ignoreOld); the LAN pool's does.
    join_ignores_old_events = False

    def __init__(
        self,
        config: Callable[[], RuntimeConfig],
        metrics: Metrics | None,
        label: str,
        name: str,
        port: int,
        bind_host: str,
        advertise_host: str,
        gossip_config: GossipConfig,
        tags: dict[str, str],
        keyring: Keyring | None,
        save_keyring: Callable[[Keyring], None],
        merge_check: MergeCheck | None = None,
    ) -> None:
        self._config = config
        self.label = label
        self.advertise_host = advertise_host
        self.name = name
        self.port = port
        self.gossip_config = gossip_config
        self.node = GossipNode(
            name,
            (bind_host, port),
            gossip_config,
            tags=tags,
            on_event=self._on_gossip_event,
            advertise=(advertise_host, port),
            keyring=keyring,
            disable_coordinates=self.config.disable_coordinates,
            merge_check=merge_check,
            metrics=metrics,
            network=label.lower(),
        )
        self.queries = QueryAsker(self.node)
        self.keyring_queries = KeyringQueries(self.node, self.queries, save_keyring)
        self.records: dict[str, MemberRecord] = {}
        self.leaving = False
        self._tasks: list[asyncio.Task[Any]] = []
        self.serf_metrics = SerfMetrics(metrics, label.lower())

    def _on_gossip_event(self, event: Event) -> None:
        member = getattr(event, "member", None)  # a MemberEvent's: its record before the event
        self.serf_metrics.record(event, self.records.get(member.name) if member is not None else None)
        self._on_event(event)

    def _on_event(self, event: Event) -> None:
        raise NotImplementedError  # each pool handles its own events

    def _notify(self, rec: MemberRecord) -> None:
        """A member's record changed outside a gossip event (force-leave); the LAN pool tells
        its listeners."""

    # --- life cycle --------------------------------------------------------------------------

    async def _bind(self) -> None:
        """Start the gossip node; a dev agent whose port is taken gossips on a random one."""
        try:
            await self.node.start()
        except OSError as exc:
            if not (self.config.dev and exc.errno == errno.EADDRINUSE):
                raise
            # Dev agents are throwaway: another one already holds the port on this host.
            logger.warning("gossip: port %d in use, dev agent gossips %s on a random port", self.port, self.label)
            self.node.use_random_port(self.advertise_host)
            await self.node.start()
        self._tasks.append(asyncio.get_running_loop().create_task(
            self.serf_metrics.run_queue_checks(self.node.queue_depth), name=f"serf-queue-depth-{self.label}"))

    def _start_reconnect(
        self, reconnect_timeout: Callable[[], float], on_reap: Callable[[MemberRecord], None] | None = None
    ) -> None:
        """serf's reconnect loop and reaper on this pool's table (``reconnect_interval`` is
        shared by both pools; the timeout is each pool's own)."""
        Reconnector(
            self.label, self.records, self._reconnect_join,
            reconnect_interval=lambda: self.config.reconnect_interval_s,
            reconnect_timeout=reconnect_timeout,
            on_reap=on_reap,
        ).start(self._tasks)

    async def _reconnect_join(self, addr: str) -> int:
        # serf's reconnect joins at the memberlist level: events missed meanwhile are delivered.
        if self.leaving:
            return 0
        return await self.node.join([addr], self.port)

    def _start_retry_join(
        self, addrs: list[str], retry_max: int, retry_interval_s: float, on_exhausted: Callable[[], None]
    ) -> None:
        """Join `addrs` (duplicates dropped) in the background, every `retry_interval_s` until one
        answers; after `retry_max` attempts (0: no limit) call `on_exhausted`."""
        addrs = list(dict.fromkeys(addrs))
        if addrs:
            self._tasks.append(asyncio.get_running_loop().create_task(
                self._retry_join(addrs, retry_max, retry_interval_s, on_exhausted)))

    async def _retry_join(
        self, addrs: list[str], retry_max: int, retry_interval_s: float, on_exhausted: Callable[[], None]
    ) -> None:
        attempt = 0
        while True:
            attempt += 1
            n = await self.join(addrs)
            if n > 0:
                logger.info("agent: join %s completed; synced with %d initial agents", self.label, n)
                return
            if retry_max and attempt >= retry_max:
                logger.error("agent: max join %s retry exhausted, exiting", self.label)
                on_exhausted()
                return
            logger.warning("agent: join %s failed, retrying in %gs (attempt %d)", self.label, retry_interval_s, attempt)
            await asyncio.sleep(retry_interval_s)

    async def join(self, addrs: list[str]) -> int:
        """Join every address (cloud auto-join ``provider=`` entries are skipped); returns how
        many answered."""
        targets = [a for a in addrs if not a.startswith("provider=")]
        return await self.node.join(targets, self.port, ignore_old=self.join_ignores_old_events)

    async def leave(self) -> None:
        self.leaving = True
        me = self.records.get(self.name)
        if me is not None:
            me.status = STATUS_LEAVING
        await self.node.leave()

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        await self.node.stop()

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

    # --- member table ------------------------------------------------------------------------

    def _record(self, member: Member) -> tuple[MemberRecord, bool]:
        """Take `member`'s latest gossip state into the table: (its record, whether its status
        changed). A new status starts a new record (``since`` is now)."""
        status = member_status(member.state)
        rec = self.records.get(member.name)
        if rec is None or rec.status != status:
            rec = MemberRecord(member, status, time.time())
            self.records[member.name] = rec
            return rec, True
        rec.member = member
        return rec, False

    # --- views -------------------------------------------------------------------------------

    def members(self) -> list[MemberRecord]:
        return [self.records[n] for n in sorted(self.records)]

    def members_json(self) -> list[dict[str, Any]]:
        return [member_json(rec) for rec in self.members()]

    def counts(self) -> dict[str, str]:
        recs = self.members()
        return {
            "members": str(sum(1 for r in recs if r.status in (STATUS_ALIVE, STATUS_LEAVING))),
            "failed": str(sum(1 for r in recs if r.status == STATUS_FAILED)),
            "left": str(sum(1 for r in recs if r.status == STATUS_LEFT)),
        }
