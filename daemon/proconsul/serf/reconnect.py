"""Serf's reconnect loop and reaper for one gossip pool (the LAN pool and a server's WAN pool).

Owns what happens to members after they stop being alive:

- **reconnect** (serf's ``handleReconnect``): every ``reconnect_interval`` (30 s, a hidden
  test-only knob) one random *failed* member may be tried with an ordinary join to its gossip
  address. Whether a pass tries at all is random: with probability
  ``failed / (members - failed - left)`` (a zero denominator counts as one). Every agent runs this,
  so the pool as a whole expects to try each failed member about once per interval whatever its
  size, and a partition that outlived the failure detector heals without anyone running
  ``consul join``. Left members are never retried: a leave is a permanent intent.
- **reap** (serf's ``handleReap``, every 15 s): a failed member whose failure is older than
  ``reconnect_timeout`` and a left member older than the tombstone time (24 h) are forgotten.
  A member may advertise its own timeout in the ``rc_tm`` tag (Consul's
  ``advertise_reconnect_timeout``, a Go duration); when it parses and is not zero it replaces
  both timeouts for that member, as Consul's reconnect override does.

The policy (:func:`reconnect_candidate`, :func:`reap`, :func:`member_timeout`) is pure: time
and randomness come in as arguments. :class:`Reconnector` is the thin asyncio loop around it;
the pool hands it its member table, a join function and what to do with a reaped member.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from proconsul.durations import parse_duration
from proconsul.serf.member import STATUS_FAILED, STATUS_LEFT, TOMBSTONE_TIMEOUT_S, MemberRecord

logger = logging.getLogger(__name__)

# Serf's ReapInterval: how often failed and left members are checked against their timeouts.
REAP_INTERVAL_S = 15.0
# Consul's ReconnectTimeoutTag: the member tag carrying advertise_reconnect_timeout.
RECONNECT_TIMEOUT_TAG = "rc_tm"


def member_timeout(rec: MemberRecord, default_s: float) -> float:
    """How long `rec` may stay failed (or left) before it is reaped: its advertised ``rc_tm``
    when that is a non-zero Go duration, else `default_s` (a malformed tag is logged and ignored)."""
    advertised = rec.member.tags.get(RECONNECT_TIMEOUT_TAG)
    if advertised is None:
        return default_s
    try:
        seconds = parse_duration(advertised)
    except ValueError:
        logger.warning("serf: member %s is advertising a malformed reconnect timeout %r", rec.member.name, advertised)
        return default_s
    return seconds if seconds != 0 else default_s


def reconnect_candidate(records: MutableMapping[str, MemberRecord], rng: random.Random) -> MemberRecord | None:
    """serf's reconnect pass: the failed member to try now, or None (none failed, or the dice
    said to leave this round to the other members).

    The table includes ourselves, so an agent alone with one failed peer always tries it.
    Members are taken in name order before the random pick, so a seeded `rng` is reproducible.
    """
    failed = [records[name] for name in sorted(records) if records[name].status == STATUS_FAILED]
    if not failed:
        return None
    left = sum(1 for rec in records.values() if rec.status == STATUS_LEFT)
    alive = len(records) - len(failed) - left
    probability = len(failed) / (alive or 1)
    if rng.random() > probability:
        logger.debug("serf: forgoing reconnect for random throttling")
        return None
    return rng.choice(failed)


def reap(
    records: MutableMapping[str, MemberRecord], now: float, reconnect_timeout_s: float,
    tombstone_timeout_s: float = TOMBSTONE_TIMEOUT_S,
) -> list[MemberRecord]:
    """Remove from `records` (and return, in name order) the failed members whose failure is
    older than their reconnect timeout and the left ones older than their tombstone time.
    ``rec.since`` is the wall-clock time of the member's last status change."""
    gone = []
    for name in sorted(records):
        rec = records[name]
        if rec.status == STATUS_FAILED:
            limit = member_timeout(rec, reconnect_timeout_s)
        elif rec.status == STATUS_LEFT:
            limit = member_timeout(rec, tombstone_timeout_s)
        else:
            continue
        if now - rec.since > limit:
            del records[name]
            gone.append(rec)
    return gone


class Reconnector:
    """The two periodic loops of one pool.

    Args:
        pool: "LAN" or "WAN", for log lines.
        records: the pool's member table (name -> record), shared with the pool and mutated here
            only by reaping.
        join: joins one "host:port" gossip address; returns how many members answered.
        reconnect_interval: seconds between reconnect passes (read each pass: reloadable knobs).
        reconnect_timeout: seconds a failed member is kept (read each reap pass).
        on_reap: called with every reaped record, after it left the table.
        clock: wall-clock seconds (``time.time``), as ``rec.since`` is.
    """

    def __init__(
        self,
        pool: str,
        records: MutableMapping[str, MemberRecord],
        join: Callable[[str], Awaitable[int]],
        reconnect_interval: Callable[[], float],
        reconnect_timeout: Callable[[], float],
        on_reap: Callable[[MemberRecord], None] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        reap_interval_s: float = REAP_INTERVAL_S,
    ) -> None:
        self.pool = pool
        self.records = records
        self.join = join
        self.reconnect_interval = reconnect_interval
        self.reconnect_timeout = reconnect_timeout
        self.on_reap = on_reap
        self.rng = rng or random.Random()
        self.clock = clock
        self.reap_interval_s = reap_interval_s

    async def reconnect_once(self) -> bool:
        """One reconnect pass; True if a join was attempted (whatever its outcome)."""
        rec = reconnect_candidate(self.records, self.rng)
        if rec is None:
            return False
        host, port = rec.member.addr
        logger.info("serf: attempting reconnect to %s %s:%d (%s pool)", rec.member.name, host, port, self.pool)
        try:
            answered = await self.join(f"{host}:{port}")
        except Exception as exc:  # an unreachable member is the normal case; try again next pass
            logger.debug("serf: reconnect to %s failed: %s", rec.member.name, exc)
            return True
        if not answered:
            logger.debug("serf: reconnect to %s got no answer", rec.member.name)
        return True

    def reap_once(self) -> list[MemberRecord]:
        """One reap pass: forget expired members and hand each to ``on_reap``."""
        gone = reap(self.records, self.clock(), self.reconnect_timeout())
        for rec in gone:
            logger.info("serf: EventMemberReap: %s (%s pool)", rec.member.name, self.pool)
            if self.on_reap is not None:
                try:
                    self.on_reap(rec)
                except Exception:
                    logger.exception("serf: reap listener failed")
        return gone

    async def run_reconnect(self) -> None:
        while True:
            await asyncio.sleep(self.reconnect_interval())
            await self.reconnect_once()

    async def run_reap(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval_s)
            self.reap_once()

    def start(self, tasks: list[asyncio.Task[Any]]) -> None:
        """Start both loops on the running loop; the pool owns (and cancels) the tasks."""
        loop = asyncio.get_running_loop()
        tasks.append(loop.create_task(self.run_reconnect(), name=f"serf-reconnect-{self.pool}"))
        tasks.append(loop.create_task(self.run_reap(), name=f"serf-reap-{self.pool}"))
