"""Flood-joining this datacenter's servers into the WAN pool (Consul's LAN -> WAN join flooder).

Owns:
- :func:`flood_targets`: which servers the LAN pool knows that the WAN pool lacks, and the
  address to join each one at. A target is an alive LAN member tagged ``role=consul`` of our
  datacenter (default segment) that is not an alive server of our datacenter in the WAN pool
  (WAN names are ``<node>.<dc>``, so the suffix is stripped to compare). It is joined at its LAN
  host and the WAN serf port its LAN tags advertise (``wan_join_port``); a server that does not
  advertise one (an older agent, or one with the WAN pool disabled) is left alone, as Consul does.
  Client agents (``role=node``) are never targets.
- :class:`WANFlooder`: the loop a server runs whatever its Raft role (flooding is not a leader
  duty): it floods when a LAN member that is a server of our datacenter joins or changes
  (:meth:`WANFlooder.on_lan_member`, a LAN pool listener, or :meth:`WANFlooder.notify`) and every
  ``interval_s`` (Consul's ``SerfFloodInterval``, 60 s) to catch what an event missed, for
  example a WAN member that failed and came back only on the LAN side.

Once every server of a datacenter is in the WAN pool, one ``join -wan`` between any two servers
of two datacenters federates all of them: WAN gossip spreads the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from proconsul.serf.member import STATUS_ALIVE, MemberRecord
from proconsul.tasks import wait_event

logger = logging.getLogger(__name__)

# Consul's SerfFloodInterval: the periodic pass behind the event-driven one.
FLOOD_INTERVAL_S = 60.0
# The LAN tag through which a server advertises its WAN serf port (Consul's name for it).
WAN_JOIN_PORT_TAG = "wan_join_port"


@dataclass(frozen=True)
class FloodTarget:
    """A server of our datacenter to join into the WAN pool: its LAN name and "host:port"."""

    name: str
    address: str


def _is_local_server(rec: MemberRecord, datacenter: str) -> bool:
    tags = rec.member.tags
    # A non-default network segment is not a server pool member (Consul skips those too).
    return tags.get("role") == "consul" and tags.get("dc") == datacenter and not tags.get("segment")


def _wan_join_port(tags: Mapping[str, str]) -> int | None:
    raw = tags.get(WAN_JOIN_PORT_TAG)
    try:
        port = int(raw) if raw is not None else 0
    except ValueError:
        return None
    return port if 0 < port < 65536 else None


def flood_targets(
    datacenter: str, lan: Iterable[MemberRecord], wan: Iterable[MemberRecord]
) -> list[FloodTarget]:
    """The alive servers of `datacenter` in `lan` that are not alive in `wan`, in name order.

    Only alive WAN members count as joined: a failed or left one must not stop the rejoin of a
    server the LAN pool sees alive (that is how a WAN partition heals from the LAN side)."""
    suffix = f".{datacenter}"
    joined: set[str] = set()
    for rec in wan:
        if rec.status == STATUS_ALIVE and _is_local_server(rec, datacenter):
            name = rec.member.name
            joined.add(name[: -len(suffix)] if name.endswith(suffix) else name)
    out: list[FloodTarget] = []
    for rec in sorted(lan, key=lambda r: r.member.name):
        name = rec.member.name
        if rec.status != STATUS_ALIVE or not _is_local_server(rec, datacenter) or name in joined:
            continue
        port = _wan_join_port(rec.member.tags)
        if port is None:
            logger.debug("flood: server %s advertises no usable %s; not joining it", name, WAN_JOIN_PORT_TAG)
            continue
        host = rec.member.addr[0]
        out.append(FloodTarget(name, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"))
    return out


class WANFlooder:
    """Keeps every server of our datacenter that the LAN pool sees in the WAN pool.

    Args:
        datacenter: ours.
        lan_members, wan_members: the two pools' member records (any order).
        join: joins the WAN pool at the given "host:port" addresses; returns how many answered.
        active: False while the agent leaves (a leaving server must not pull itself or others
            back in); the loop then skips its passes.
        interval_s: seconds between periodic passes, read before each wait (FLOOD_INTERVAL_S).

    Passes never overlap: the loop runs one at a time, and a trigger that arrives during a pass
    causes exactly one more pass after it (triggers coalesce, as Consul's non-blocking notify).
    """

    def __init__(
        self,
        datacenter: str,
        lan_members: Callable[[], Iterable[MemberRecord]],
        wan_members: Callable[[], Iterable[MemberRecord]],
        join: Callable[[list[str]], Awaitable[int]],
        active: Callable[[], bool] = lambda: True,
        interval_s: Callable[[], float] = lambda: FLOOD_INTERVAL_S,
    ) -> None:
        self.datacenter = datacenter
        self.lan_members = lan_members
        self.wan_members = wan_members
        self.join = join
        self.active = active
        self.interval_s = interval_s
        self._wake = asyncio.Event()
        self.passes = 0  # completed passes, for tests and `info`-style introspection

    def notify(self) -> None:
        """Ask for a pass now (coalesced with any pending one)."""
        self._wake.set()

    @property
    def pending(self) -> bool:
        """Whether a triggered pass is still to run."""
        return self._wake.is_set()

    def on_lan_member(self, rec: MemberRecord) -> None:
        """LAN pool listener: a server of our datacenter joined or changed (Consul floods on
        member join and update); failures and leaves of servers, and clients, do not trigger."""
        if rec.status == STATUS_ALIVE and _is_local_server(rec, self.datacenter):
            self.notify()

    async def flood_once(self) -> list[FloodTarget]:
        """One pass: join each missing server (one at a time, so one unreachable server does not
        hide the others); returns the servers that answered."""
        targets = flood_targets(self.datacenter, self.lan_members(), self.wan_members())
        if not targets:
            logger.debug("flood: every server of %s is in the WAN pool", self.datacenter)
            return []
        logger.info("flood: joining %d server(s) of %s into the WAN pool: %s", len(targets), self.datacenter,
                    ", ".join(f"{t.name} at {t.address}" for t in targets))
        joined: list[FloodTarget] = []
        for target in targets:
            try:
                answered = await self.join([target.address])
            except Exception as exc:  # a name that does not resolve, a send error: retried next pass
                logger.warning("flood: failed to join %s at %s: %s", target.name, target.address, exc)
                continue
            if answered > 0:
                joined.append(target)
            else:
                logger.warning("flood: %s at %s did not answer the WAN join", target.name, target.address)
        return joined

    async def run(self) -> None:
        """Pass on every trigger and every `interval_s`, until cancelled."""
        while True:
            await wait_event(self._wake, self.interval_s())  # a trigger, or the periodic pass
            self._wake.clear()
            if self.active():
                await self.flood_once()
            self.passes += 1
