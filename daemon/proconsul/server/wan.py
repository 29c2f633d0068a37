"""The WAN gossip pool of a server and the router of remote datacenters built from it.

Owns:
- :class:`WANPool`: the second ``GossipNode`` every server runs (Consul's serf WAN; a
  :class:`~proconsul.serf.pool.SerfPool`, like the LAN pool), on
  ``serf_wan``/``ports.serf_wan`` (8302) with memberlist's WAN timing profile and the LAN pool's
  keyring object (one gossip key, rotated for both pools at once). Its member is named
  ``<node>.<dc>`` and carries the server's tags (``role=consul``, ``dc``, ``port``, ...), so every
  server in every federated datacenter knows how to reach every other one. It keeps serf's
  member table (failed members stay listed, left ones for a day), ``-join-wan`` /
  ``retry_join_wan`` / ``start_join_wan``, leave and force-leave for the WAN pool, and serf's
  reconnect loop and reaper on it (:mod:`proconsul.serf.reconnect`, ``reconnect_timeout_wan``).
- :class:`Router`: remote datacenters as the WAN members describe them, and forwarding of a
  named read (``Client.Query``) or a write (``Client.Write``) to an alive server of one of them
  over the server RPC port. Consul's behaviours kept (agent/router, agent/consul/rpc.go):
  a datacenter nobody in the WAN pool belongs to is ``No path to datacenter``; a known one whose
  servers are all failed is ``Remote DC has no server currently reachable``; a server that fails
  to answer is skipped in favour of the next (reads), while a write is retried elsewhere only
  when it was never sent; the datacenter list is sorted by estimated round-trip time
  (Consul's ``GetDatacentersByDistance``): for each datacenter the median of the RTTs this
  server's WAN coordinate estimates to that datacenter's servers (left ones skipped; the local
  datacenter counts as zero; a server whose coordinate we do not know counts as +Inf), ties and
  unknowns in name order. The same WAN coordinates, per datacenter, are
  ``/v1/coordinate/datacenters`` (:meth:`Router.datacenter_maps`, Consul's ``GetDatacenterMaps``
  with the ``.<dc>`` suffix stripped from node names, area ``wan``).
- serf's internal queries on the WAN pool (the keyring ones, for ``/v1/operator/keyring``),
  answered and asked as on the LAN pool (:mod:`proconsul.serf.queries`).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proconsul.coordinate import PeerCoordinates, distance
from proconsul.gossip.config import GossipConfig
from proconsul.gossip.core import Event, MemberEvent, MemberEventKind, NameConflict
from proconsul.rpc_api import (
    CALLER_TOKEN,
    NoPathToDatacenter,
    QueryMeta,
    QueryOptions,
    RPCError,
    UnknownOutcome,
    WriteMeta,
)
from proconsul.serf.member import STATUS_ALIVE, STATUS_LEFT, MemberRecord
from proconsul.serf.pool import SerfPool
from proconsul.serf.reconnect import reap
from proconsul.server.rpc import decode_result
from proconsul.state import commands
from proconsul.transport import ConnectionPool, RemoteError

if TYPE_CHECKING:
    from proconsul.config import RuntimeConfig
    from proconsul.gossip.keyring import Keyring
    from proconsul.metrics.registry import Metrics

logger = logging.getLogger(__name__)

# Consul's ErrDCNotAvailable: the datacenter is known but none of its servers is reachable.
DC_NOT_AVAILABLE = "Remote DC has no server currently reachable"
# Cross-datacenter writes wait at most this long for the remote leader's answer.
WRITE_TIMEOUT_S = 40.0
# Consul's built-in WAN network area (types.AreaWAN), as /v1/coordinate/datacenters names it.
AREA_WAN = "wan"


class DatacenterNotAvailable(RPCError):
    def __init__(self, dc: str) -> None:
        super().__init__(DC_NOT_AVAILABLE)
        self.dc = dc


def wan_name(node: str, datacenter: str) -> str:
    """A server's member name in the WAN pool (Consul: ``<node>.<dc>``)."""
    return f"{node}.{datacenter}"


class WANPool(SerfPool):
    """A server's WAN pool membership."""

    def __init__(
        self,
        config: Callable[[], RuntimeConfig],
        node_name: str,
        address: str,
        tags: dict[str, str],
        keyring: Keyring | None,
        save_keyring: Callable[[Keyring], None],
        metrics: Metrics | None = None,
    ) -> None:
        cfg = config()
        super().__init__(
            config, metrics, "WAN", wan_name(node_name, cfg.datacenter), cfg.ports.serf_wan,
            bind_host=cfg.serf_wan or cfg.bind_addr,
            advertise_host=cfg.advertise_addr_wan or address,
            # Dev agents gossip on one host, where the WAN profile's 5 s probes only slow things down.
            gossip_config=GossipConfig.local() if cfg.dev else GossipConfig.wan(),
            tags=tags,
            keyring=keyring,
            # The keyring object is the LAN pool's, so a WAN key change is persisted to the same file.
            save_keyring=save_keyring,
        )

    # --- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self._bind()
        logger.info("gossip: WAN pool on %s:%d as %s", *self.node.address, self.name)
        self._start_reconnect(lambda: self.config.reconnect_timeout_wan_s)

    def start_retry_join(self, on_exhausted: Callable[[], None]) -> None:
        cfg = self.config
        self._start_retry_join(
            [*cfg.start_join_wan, *cfg.retry_join_wan], cfg.retry_max_wan, cfg.retry_interval_wan_s, on_exhausted
        )

    # --- events ------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if self.queries.handle_event(event) or self.keyring_queries.handle_event(event):
            return
        if isinstance(event, NameConflict):
            if event.name == self.name:
                logger.error("agent: WAN member name %s is in use by another server at %s:%d", event.name, *event.theirs)
            return
        if not isinstance(event, MemberEvent) or event.kind is MemberEventKind.REAP:
            return  # serf keeps reaped members listed (failed until reconnect_timeout_wan)
        m = event.member
        rec, changed = self._record(m)
        if changed and event.kind in (MemberEventKind.FAIL, MemberEventKind.LEAVE, MemberEventKind.JOIN):
            logger.info("gossip: WAN member %s %s", m.name, {1: "joined", 3: "left", 4: "failed"}.get(rec.status, "changed"))
        self.expire()

    def expire(self) -> None:
        """Forget failed members past reconnect_timeout_wan and left ones past the tombstone time."""
        reap(self.records, time.time(), self.config.reconnect_timeout_wan_s)

    # --- views -------------------------------------------------------------------------------

    def members(self) -> list[MemberRecord]:
        """Members in name order; failed and left ones past their time are forgotten first."""
        self.expire()
        return super().members()


class Router:
    """Remote datacenters from WAN membership, and forwarding of RPCs to them.

    ``members`` returns the WAN pool's records (any order); servers of a datacenter are the
    records tagged ``role=consul`` and ``dc=<name>``, reached at their gossip address and the
    ``port`` tag. Requests go over one pipelined connection per server (``ConnectionPool``).
    ``coordinates`` returns the WAN pool's :class:`PeerCoordinates` (None: coordinates are
    disabled or unknown, and every remote datacenter is equally far).
    """

    def __init__(
        self,
        datacenter: str,
        members: Callable[[], list[MemberRecord]],
        pool: ConnectionPool | None = None,
        rng: random.Random | None = None,
        coordinates: Callable[[], PeerCoordinates | None] | None = None,
    ) -> None:
        self.datacenter = datacenter
        self.members = members
        self.coordinates = coordinates or (lambda: None)
        self.pool = pool or ConnectionPool()
        self.rng = rng or random.Random()
        # Per datacenter, the server that answered last: kept while it works (Consul's manager
        # sticks to one server and rotates on failure).
        self._preferred: dict[str, str] = {}

    def _servers(self) -> list[tuple[str, int, str]]:
        """(dc, status, "host:port") of every server in the WAN pool."""
        out = []
        for rec in self.members():
            tags = rec.member.tags
            if tags.get("role") != "consul" or not tags.get("dc"):
                continue
            out.append((tags["dc"], rec.status, f"{rec.member.addr[0]}:{tags.get('port', '8300')}"))
        return out

    def _wan_servers(self) -> list[tuple[str, str]]:
        """(dc, WAN member name) of every server in the WAN pool that has not left."""
        out = []
        for rec in self.members():
            tags = rec.member.tags
            if tags.get("role") == "consul" and tags.get("dc") and rec.status != STATUS_LEFT:
                out.append((tags["dc"], rec.member.name))
        return out

    def distances(self) -> dict[str, float]:
        """Estimated RTT in seconds to each known datacenter: the median over its servers of
        the distance from our WAN coordinate (0 for ours, +Inf where a coordinate is missing)."""
        peers = self.coordinates()
        ours = peers.coordinate if peers is not None else None
        rtts: dict[str, list[float]] = {self.datacenter: []}
        for dc, name in self._wan_servers():
            if dc == self.datacenter:
                rtts.setdefault(dc, []).append(0.0)
            else:
                rtts.setdefault(dc, []).append(distance(ours, peers.get(name) if peers is not None else None))
        out = {}
        for dc, values in rtts.items():
            values.sort()
            out[dc] = values[len(values) // 2] if values else (0.0 if dc == self.datacenter else math.inf)
        return out

    def sort_key(self, dc: str, distances: dict[str, float] | None = None) -> tuple[float, str]:
        """Where ``dc`` goes in the datacenter list: by estimated RTT, then by name."""
        rtt = (distances if distances is not None else self.distances()).get(dc, math.inf)
        return (rtt, dc)

    def datacenters(self) -> list[str]:
        """Every datacenter with a server in the WAN pool (failed ones too, as serf lists them),
        nearest first by median RTT; ours is at distance zero, so it leads unless another one
        also estimates to zero and sorts before it by name (as Consul's stable sort does)."""
        distances = self.distances()
        return sorted(distances, key=lambda dc: self.sort_key(dc, distances))

    def datacenter_maps(self) -> list[dict[str, Any]]:
        """``/v1/coordinate/datacenters``: per datacenter, its servers' WAN coordinates as this
        server's WAN pool holds them (names without the ``.<dc>`` suffix; servers with no known
        coordinate are left out), datacenters and nodes in name order."""
        peers = self.coordinates()
        if peers is None:
            return []
        index: dict[str, list[dict[str, Any]]] = {}
        for dc, name in self._wan_servers():
            coord = peers.get(name)
            if coord is None:
                continue
            suffix = f".{dc}"
            node = name[: -len(suffix)] if name.endswith(suffix) else name
            index.setdefault(dc, []).append({"Node": node, "Segment": "", "Coord": coord.to_json()})
        return [
            {"Datacenter": dc, "AreaID": AREA_WAN, "Coordinates": sorted(index[dc], key=lambda e: e["Node"])}
            for dc in sorted(index)
        ]

    def candidates(self, dc: str) -> list[str]:
        """Alive servers of `dc` to try in order: the last one that worked, then at random."""
        servers = self._servers()
        if not any(d == dc for d, _, _ in servers):
            raise NoPathToDatacenter(dc)
        alive = sorted(addr for d, status, addr in servers if d == dc and status == STATUS_ALIVE)
        if not alive:
            raise DatacenterNotAvailable(dc)
        self.rng.shuffle(alive)
        preferred = self._preferred.get(dc)
        if preferred in alive:
            alive.remove(preferred)
            alive.insert(0, preferred)
        return alive

    async def _call(self, dc: str, method: str, body: Any, timeout_s: float, retry_sent: bool) -> Any:
        last: Exception | None = None
        for addr in self.candidates(dc):
            try:
                reply = await self.pool.call(addr, method, body, timeout_s=timeout_s, datacenter=dc)
                self._preferred[dc] = addr
                return reply
            except RemoteError as exc:
                raise RPCError(str(exc)) from None  # the remote datacenter's own answer
            except (ConnectionRefusedError, TimeoutError) as exc:
                # Refused: never sent. A connect timeout in the pool is also "never sent", but a
                # reply timeout is not: a write is retried only when allowed.
                last = exc
                if isinstance(exc, TimeoutError) and not retry_sent:
                    raise UnknownOutcome(f"rpc error: no answer from {addr} in {dc}; the write may have applied") from None
            except (ConnectionError, OSError) as exc:
                if not retry_sent:
                    raise UnknownOutcome(f"rpc error: lost the server {addr} in {dc} mid-write: {exc}") from None
                last = exc
            if self._preferred.get(dc) == addr:
                del self._preferred[dc]
            logger.warning("rpc: server %s in datacenter %s failed (%s); trying another", addr, dc, last)
        raise RPCError(f"rpc error: no server in datacenter {dc} answered: {last}")

    async def call(self, dc: str, method: str, body: Any, timeout_s: float = 30.0, retry_sent: bool = True) -> Any:
        """One RPC to a server of datacenter `dc`, tried on the next one on failure; with
        `retry_sent` False, not once it may have been delivered (not idempotent)."""
        return await self._call(dc, method, body, timeout_s, retry_sent=retry_sent)

    async def query(self, dc: str, name: str, args: dict[str, Any], opts: QueryOptions,
                    wait_s: float) -> tuple[QueryMeta, Any]:
        """Answer a named read in datacenter `dc` (its servers apply their own leader rules)."""
        body = {
            "name": name,
            "args": args,
            "opts": opts.wire(),
            "dc": dc,
        }
        token = CALLER_TOKEN.get()
        if token:
            body["token"] = token  # the other datacenter's server authorises the read
        reply = await self._call(dc, "Client.Query", body, wait_s + 30.0, retry_sent=True)
        index, known_leader, last_contact, consistency = reply["meta"]
        return QueryMeta(index, known_leader, last_contact, consistency, "filtered" in reply), reply["result"]

    async def write(self, dc: str, command: commands.Command) -> tuple[WriteMeta, Any]:
        """Propose `command` in datacenter `dc` (its server forwards once to its leader)."""
        body = {"command": commands.encode(command), "token": CALLER_TOKEN.get() or ""}
        reply = await self._call(dc, "Client.Write", body, WRITE_TIMEOUT_S, retry_sent=False)
        return WriteMeta(reply["index"]), decode_result(reply["result"])

    async def close(self) -> None:
        await self.pool.close()
