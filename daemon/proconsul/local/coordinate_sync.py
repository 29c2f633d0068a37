"""Network coordinates from gossip into the catalog: Consul's ``Coordinate.Update`` path.

Owns both ends of it:

- **every agent** (:meth:`CoordinateSync.run`): every ``sync_coordinate_interval_min``, or
  ``members / sync_coordinate_rate_target`` seconds when that is longer (so a big cluster sends
  at most that many updates per second in total), plus a random stagger of up to one interval,
  send our LAN coordinate (``proconsul.coordinate``, kept by the gossip driver) to the servers.
  Client agents call a server over RPC; servers call their own endpoint in-process.
- **servers** (:class:`CoordinateEndpoint`): answer ``Coordinate.ListDatacenters`` from the
  WAN pool (``Router.datacenter_maps``; client agents forward it), and validate an update (finite numbers, our
  dimensionality), forward it to the leader, and on the leader keep only the latest update per
  ``node:segment``; every ``COORDINATE_UPDATE_PERIOD_S`` the leader commits what it holds as
  ``CoordinateBatchUpdate`` Raft entries of at most ``COORDINATE_UPDATE_BATCH_SIZE`` updates,
  at most ``COORDINATE_UPDATE_MAX_BATCHES`` of them; anything beyond is dropped with a warning
  (the nodes send again soon). Writing every probe's result through Raft would swamp the log.

The timings are Consul's defaults (``agent/consul/config.go``, ``agent/config/default.go``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proconsul.coordinate import DEFAULT_CONFIG, DEFAULT_SEGMENT, Coordinate, InvalidCoordinate
from proconsul.rpc_api import CALLER_TOKEN, HandlerRegistry, NotLeader, RPCError, ServerCaller
from proconsul.state import commands
from proconsul.tasks import cancel_and_wait

if TYPE_CHECKING:
    from proconsul.config import RuntimeConfig
    from proconsul.coordinate import PeerCoordinates
    from proconsul.server.wan import Router

logger = logging.getLogger(__name__)

# s, 5: how often the leader commits the coordinates it holds (Consul's CoordinateUpdatePeriod).
COORDINATE_UPDATE_PERIOD_S = 5.0
# count, 128: updates per Raft entry (CoordinateUpdateBatchSize).
COORDINATE_UPDATE_BATCH_SIZE = 128
# count, 5: entries per period; above batch size x batches, updates are dropped (CoordinateUpdateMaxBatches).
COORDINATE_UPDATE_MAX_BATCHES = 5


class CoordinatesDisabled(RPCError):
    def __init__(self) -> None:
        super().__init__("Coordinate support disabled")


def rate_scaled_interval(rate_per_s: float, min_s: float, members: int) -> float:
    """Seconds between updates so that ``members`` nodes send ``rate_per_s`` in total, never
    below ``min_s``."""
    if rate_per_s <= 0:
        return min_s
    return max(min_s, members / rate_per_s)


def decode_update(body: Any) -> tuple[str, str, Coordinate]:
    """(node, segment, coordinate) from an update body ``{Node, Segment, Coord}``.

    Raises :class:`InvalidCoordinate` naming what is wrong (the HTTP layer answers 400 with it).
    """
    if not isinstance(body, dict):
        raise InvalidCoordinate("Request decode failed: expected a JSON object")

    def field(name: str) -> Any:
        for key, value in body.items():
            if isinstance(key, str) and key.lower() == name.lower():
                return value
        return None

    node = field("Node")
    if not isinstance(node, str) or not node:
        raise InvalidCoordinate("Must provide node")
    segment = field("Segment") or DEFAULT_SEGMENT
    if not isinstance(segment, str):
        raise InvalidCoordinate("Segment must be a string")
    raw = field("Coord")
    if raw is None:
        raise InvalidCoordinate("Must provide a coordinate (Coord)")
    try:
        coord = Coordinate.from_json(raw, DEFAULT_CONFIG.dimensionality)
    except InvalidCoordinate as exc:
        raise InvalidCoordinate(f"invalid coordinate: {exc}") from None
    return node, segment, coord


def encode_update(node: str, segment: str, coord: Coordinate) -> dict[str, Any]:
    return {"Node": node, "Segment": segment, "Coord": coord.to_json()}


class CoordinateEndpoint:
    """A server's ``Coordinate.Update``: forward to the leader; the leader batches into Raft."""

    def __init__(self, server: Any) -> None:
        self.server = server
        # "node:segment" -> the latest update, in order of each key's first arrival.
        self.pending: dict[str, tuple[str, str, Coordinate]] = {}

    async def update(self, body: Any) -> bool:
        node, segment, coord = decode_update(body)
        consensus = self.server.consensus
        if not consensus.is_leader():
            leader = await self.server.wait_for_leader()
            if leader and self.server.pool is None:
                raise NotLeader(leader)
            if leader:
                try:
                    forwarded = encode_update(node, segment, coord)
                    if isinstance(body, dict) and body.get("token"):
                        forwarded["token"] = body["token"]  # the leader checks it again (ACLs on)
                    await self.server.pool.call(leader, "Coordinate.Update", forwarded, timeout_s=10.0)
                except (TimeoutError, ConnectionError, OSError) as exc:
                    raise RPCError(f"rpc error forwarding to the leader {leader}: {exc}") from None
                except Exception as exc:  # the leader's own refusal
                    raise RPCError(str(exc)) from None
                return True
        # Only the latest update per node and segment matters; it keeps the node's place in
        # line, so a chatty node cannot push others past the per-period limit.
        self.pending[f"{node}:{segment}"] = (node, segment, coord)
        return True

    async def handle(self, body: Any) -> bool:
        """The RPC entry point (registered with the server); bad input is the caller's error."""
        try:
            return await self.update(body)
        except InvalidCoordinate as exc:
            raise RPCError(str(exc)) from None

    async def flush(self) -> int:
        """Commit what is pending (leader only); returns how many updates were written."""
        pending, self.pending = list(self.pending.values()), {}
        if not pending:
            return 0
        if not self.server.consensus.is_leader():
            return 0  # leadership moved: the nodes resend to the new leader soon
        limit = COORDINATE_UPDATE_BATCH_SIZE * COORDINATE_UPDATE_MAX_BATCHES
        if len(pending) > limit:
            logger.warning("coordinate: discarded %d coordinate updates", len(pending) - limit)
            pending = pending[:limit]
        written = 0
        for start in range(0, len(pending), COORDINATE_UPDATE_BATCH_SIZE):
            batch = tuple(pending[start : start + COORDINATE_UPDATE_BATCH_SIZE])
            await self.server.write(commands.CoordinateBatchUpdate(batch))
            written += len(batch)
        return written

    async def run(self) -> None:
        while True:
            await asyncio.sleep(COORDINATE_UPDATE_PERIOD_S)
            try:
                n = await self.flush()
                if n:
                    logger.debug("coordinate: committed %d coordinate updates", n)
            except Exception as exc:  # lost leadership mid-write: the next period retries
                logger.warning("coordinate: batch update failed: %s", exc)


class CoordinateSync:
    """An agent's side: its coordinate source and the periodic push to the servers.

    Args:
        config: the agent's configuration as it is now (the sync rate settings are read each time).
        node_name: ours, as the updates name it.
        coordinates: the LAN pool's :class:`~proconsul.coordinate.PeerCoordinates` (None when
            coordinates are disabled).
        member_count: how many LAN members there are (the send interval scales with it).
        endpoint: a server's ``Coordinate.Update`` batcher (None on client agents).
        router: a server's WAN router, whose pool knows every datacenter's coordinates.
        forward: a client agent's way to a server (None on servers).
    """

    def __init__(
        self,
        config: Callable[[], RuntimeConfig],
        node_name: str,
        coordinates: Callable[[], PeerCoordinates | None],
        member_count: Callable[[], int],
        endpoint: CoordinateEndpoint | None = None,
        router: Router | None = None,
        forward: ServerCaller | None = None,
        rng: random.Random | None = None,
        token: Callable[[], str] | None = None,
    ) -> None:
        self._config = config
        # The agent's own token (acl.tokens.agent, else default) its periodic updates carry; a
        # request's own token (CALLER_TOKEN) wins for the HTTP endpoint's updates.
        self._token = token or (lambda: "")
        self.node_name = node_name
        self._coordinates = coordinates
        self._member_count = member_count
        self.endpoint = endpoint
        self.router = router
        self.forward = forward
        self.rng = rng or random.Random()
        self._tasks: list[asyncio.Task[Any]] = []

    def register_rpc(self, registry: HandlerRegistry) -> None:
        """A server answers ``Coordinate.Update`` and ``Coordinate.ListDatacenters``."""
        if self.endpoint is not None:
            registry.register("Coordinate.Update", self.endpoint.handle)
            registry.register("Coordinate.ListDatacenters", self._rpc_list_datacenters)

    @property
    def disabled(self) -> bool:
        return bool(self._config().disable_coordinates)

    def coordinates(self) -> PeerCoordinates | None:
        """The LAN pool's :class:`~proconsul.coordinate.PeerCoordinates` (None when disabled)."""
        return self._coordinates()

    def local_coordinate(self) -> Coordinate | None:
        peers = self.coordinates()
        return peers.coordinate if peers is not None else None

    def datacenter_maps(self) -> list[dict[str, Any]]:
        """Every datacenter's servers with their WAN coordinates, from this server's WAN pool
        (none without one: a client agent asks a server, see :meth:`list_datacenters`)."""
        return self.router.datacenter_maps() if self.router is not None else []

    async def _rpc_list_datacenters(self, _body: Any) -> list[dict[str, Any]]:
        if self.disabled:
            raise CoordinatesDisabled()
        return self.datacenter_maps()

    async def list_datacenters(self) -> list[dict[str, Any]]:
        """Consul's ``Coordinate.ListDatacenters``: answered by a server's WAN pool, so a
        client agent forwards it to one."""
        if self.forward is not None:
            return list(await self.forward.call("Coordinate.ListDatacenters", None, timeout_s=10.0) or [])
        return self.datacenter_maps()

    async def send(self, body: Any) -> None:
        """One ``Coordinate.Update`` to the servers (in-process on a server), with the token the
        servers check (node:write on the node) when their ACLs are on."""
        if self.disabled:
            raise CoordinatesDisabled()
        caller = CALLER_TOKEN.get()
        secret = caller if caller is not None else self._token()
        if secret and isinstance(body, dict):
            body = {**body, "token": secret}
        if self.endpoint is not None:
            await self.endpoint.update(body)
            return
        if self.forward is None:
            raise RPCError("coordinate: no server to send the update to")
        decode_update(body)  # refuse bad input here rather than after a network round trip
        await self.forward.call("Coordinate.Update", body, timeout_s=10.0)

    def start(self) -> None:
        if self.disabled:
            return
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._send_loop(), name="coordinate-sync"))
        if self.endpoint is not None:
            self._tasks.append(loop.create_task(self.endpoint.run(), name="coordinate-batch"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()

    def interval(self) -> float:
        cfg = self._config()
        members = self._member_count()
        base = rate_scaled_interval(cfg.sync_coordinate_rate_target, cfg.sync_coordinate_interval_min_s, members)
        return base + self.rng.uniform(0, base)

    async def _send_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval())
            coord = self.local_coordinate()
            if coord is None:
                continue
            try:
                await self.send(encode_update(self.node_name, DEFAULT_SEGMENT, coord))
            except Exception as exc:  # no server or leader yet: the next interval retries
                logger.warning("agent: coordinate update error: %s", exc)
