"""Network coordinates: Vivaldi, as Serf keeps one client per gossip pool (pure, no I/O).

Owns the coordinate model every part of proconsul shares:

- :class:`Coordinate`, a point in an 8-dimensional Euclidean space plus a non-Euclidean
  ``height`` (the access link every packet crosses twice) and an ``adjustment`` (a per-node
  offset learned from recent residuals), with its ``error`` estimate. Distances are estimated
  round-trip times in seconds.
- :class:`VivaldiClient`, which moves our coordinate after each probe's RTT: a spring between
  us and the peer, stretched or compressed by the gap between the measured RTT (through a small
  per-peer median filter, so one delayed ack does not yank us around) and the estimated one,
  weighted by how sure each side is; then the adjustment window and a weak gravity towards the
  origin so the whole system does not drift away over time.
- :class:`PeerCoordinates`, one gossip pool's coordinate state: our client, the coordinate each
  peer last sent on its probe ack, and the ack payload we send (a version byte and a msgpack
  map with Serf's field names).
- the JSON shape Consul uses (``Vec``, ``Error``, ``Adjustment``, ``Height``) and the checks
  that keep NaN, infinities and foreign dimensionality out.

The tuning defaults are Serf's (``coordinate.DefaultConfig``) so estimates behave as operators
of Consul expect. Randomness (a direction when two coordinates coincide) comes from an injected
``random.Random``. Time never enters: callers pass the measured RTT.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

# Below this, distances and weights count as zero (avoids dividing by nothing).
ZERO_THRESHOLD = 1.0e-6
# RTT observations outside [0, 10 s] are measurement accidents, not network facts (Serf's bound).
MAX_RTT_S = 10.0
# First byte of the ack payload; a different one means a format we do not understand.
PING_PAYLOAD_VERSION = 1
# Consul CE has one network segment, named by the empty string.
DEFAULT_SEGMENT = ""


class InvalidCoordinate(ValueError):
    """A coordinate (or an RTT) that must not enter the model; the message says why."""


@dataclass(frozen=True, slots=True)
class VivaldiConfig:
    """Vivaldi tuning; the defaults are Serf's, which Consul ships."""

    # count, 8: dimensions of the Euclidean part; more fit real networks better, cost more bytes.
    dimensionality: int = 8
    # unitless, 1.5: error of a fresh coordinate, and the cap on the error estimate.
    vivaldi_error_max: float = 1.5
    # unitless, 0.25: how fast the error estimate follows new observations.
    vivaldi_ce: float = 0.25
    # unitless, 0.25: how far one observation moves the coordinate (the spring constant).
    vivaldi_cc: float = 0.25
    # count, 20: residuals averaged into the adjustment term; 0 disables adjustments.
    adjustment_window_size: int = 20
    # s, 10 us: the floor of the height term, so no node sits on the plane itself.
    height_min: float = 10.0e-6
    # count, 3: RTT samples per peer whose median is used (filters single outliers).
    latency_filter_size: int = 3
    # s, 150: gravity radius; the pull to the origin grows with (distance / rho)^2.
    gravity_rho: float = 150.0


DEFAULT_CONFIG = VivaldiConfig()


def _finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))


def _number(raw: Any, what: str) -> float:
    # bool is an int subclass in Python, but `true` is not a number in Consul's JSON.
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidCoordinate(f"{what} must be a number, got {raw!r}")
    value = float(raw)
    if not _finite(value):
        raise InvalidCoordinate(f"{what} must be finite, got {raw!r}")
    return value


def _field(obj: Mapping[str, Any], name: str) -> Any:
    # Go's JSON decoder matches field names case-insensitively; so do we.
    if name in obj:
        return obj[name]
    lowered = name.lower()
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == lowered:
            return value
    return None


@dataclass(frozen=True, slots=True)
class Coordinate:
    """One node's estimated network position; immutable, so stores can share it."""

    vec: tuple[float, ...]
    error: float
    adjustment: float
    height: float

    @classmethod
    def origin(cls, config: VivaldiConfig = DEFAULT_CONFIG) -> Coordinate:
        """Where every node starts: the origin, with the largest error and the smallest height."""
        return cls((0.0,) * config.dimensionality, config.vivaldi_error_max, 0.0, config.height_min)

    def is_valid(self) -> bool:
        """No NaN or infinity anywhere (a bad peer or an arithmetic blow-up)."""
        return all(_finite(x) for x in self.vec) and all(
            _finite(x) for x in (self.error, self.adjustment, self.height)
        )

    def compatible_with(self, other: Coordinate) -> bool:
        return len(self.vec) == len(other.vec)

    def raw_distance_to(self, other: Coordinate) -> float:
        """Euclidean distance plus both heights, in seconds (no adjustment)."""
        if not self.compatible_with(other):
            raise InvalidCoordinate("coordinate dimensionality does not match")
        euclid = math.sqrt(sum((a - b) ** 2 for a, b in zip(self.vec, other.vec, strict=True)))
        return euclid + self.height + other.height

    def distance_to(self, other: Coordinate) -> float:
        """Estimated RTT in seconds: the raw distance plus both adjustments, unless that would
        make it non-positive (adjustments correct estimates, they never cancel them)."""
        raw = self.raw_distance_to(other)
        adjusted = raw + self.adjustment + other.adjustment
        return adjusted if adjusted > 0.0 else raw

    # --- encodings ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Consul's JSON shape (field order as Serf's struct)."""
        return {"Vec": list(self.vec), "Error": self.error, "Adjustment": self.adjustment, "Height": self.height}

    @classmethod
    def from_json(cls, obj: Any, dimensionality: int | None = DEFAULT_CONFIG.dimensionality) -> Coordinate:
        """Decode Consul's JSON shape (or the same map from msgpack), refusing anything invalid.

        ``dimensionality`` (None: any) is the length ``Vec`` must have to be comparable with ours.
        """
        if not isinstance(obj, Mapping):
            raise InvalidCoordinate(f"coordinate must be an object, got {type(obj).__name__}")
        raw_vec = _field(obj, "Vec")
        if not isinstance(raw_vec, list | tuple):
            raise InvalidCoordinate("coordinate Vec must be a list of numbers")
        vec = tuple(_number(x, f"Vec[{i}]") for i, x in enumerate(raw_vec))
        if dimensionality is not None and len(vec) != dimensionality:
            raise InvalidCoordinate(
                f"incompatible coordinate: Vec has {len(vec)} dimensions, expected {dimensionality}"
            )
        values = []
        for name in ("Error", "Adjustment", "Height"):
            raw = _field(obj, name)
            values.append(0.0 if raw is None else _number(raw, name))
        return cls(vec, values[0], values[1], values[2])

    def to_wire(self) -> list[Any]:
        """Compact positional form for Raft commands and snapshots."""
        return [list(self.vec), self.error, self.adjustment, self.height]

    @classmethod
    def from_wire(cls, raw: Any) -> Coordinate:
        vec, error, adjustment, height = raw
        return cls(tuple(float(x) for x in vec), float(error), float(adjustment), float(height))


def distance(a: Coordinate | None, b: Coordinate | None) -> float:
    """Estimated RTT in seconds; infinite when either side has no (comparable) coordinate, so
    nodes without coordinates sort last."""
    if a is None or b is None or not a.compatible_with(b):
        return math.inf
    return a.distance_to(b)


def _unit_vector_from(rng: random.Random, towards: Iterable[float], origin: Iterable[float]) -> tuple[list[float], float]:
    """Unit vector pointing from ``origin`` to ``towards`` and the distance between them.

    Coincident points (every node starts at the origin) get a random direction and distance 0,
    so the first observations push nodes apart instead of leaving them stacked.
    """
    diff = [a - b for a, b in zip(towards, origin, strict=True)]
    mag = math.sqrt(sum(x * x for x in diff))
    if mag > ZERO_THRESHOLD:
        return [x / mag for x in diff], mag
    for _ in range(8):
        diff = [rng.random() - 0.5 for _ in diff]
        mag = math.sqrt(sum(x * x for x in diff))
        if mag > ZERO_THRESHOLD:
            return [x / mag for x in diff], 0.0
    unit = [0.0] * len(diff)
    unit[0] = 1.0
    return unit, 0.0


def _pushed(config: VivaldiConfig, rng: random.Random, me: Coordinate, force: float, other: Coordinate) -> Coordinate:
    """``me`` moved ``force`` seconds along the line away from ``other`` (negative: towards it).

    The height takes its share of the move in proportion to how much of the distance it makes
    up, and never falls below ``height_min``.
    """
    unit, mag = _unit_vector_from(rng, me.vec, other.vec)
    vec = tuple(x + u * force for x, u in zip(me.vec, unit, strict=True))
    height = me.height
    if mag > ZERO_THRESHOLD:
        height = max(config.height_min, height + (height + other.height) * force / mag)
    return Coordinate(vec, me.error, me.adjustment, height)


class VivaldiClient:
    """Our coordinate in one pool, moved by every RTT observation (not thread-safe; one owner)."""

    def __init__(self, config: VivaldiConfig = DEFAULT_CONFIG, rng: random.Random | None = None) -> None:
        if config.dimensionality < 1:
            raise ValueError("dimensionality must be > 0")
        self.config = config
        self._rng = rng or random.Random()
        self._coord = Coordinate.origin(config)
        self._origin = Coordinate.origin(config)
        self._residuals = [0.0] * config.adjustment_window_size
        self._residual_next = 0
        self._samples: dict[str, list[float]] = {}
        # How many times an update produced an invalid coordinate and we started over.
        self.resets = 0

    @property
    def coordinate(self) -> Coordinate:
        return self._coord

    def set_coordinate(self, coord: Coordinate) -> None:
        self._check(coord)
        self._coord = coord

    def forget(self, node: str) -> None:
        """Drop a peer's RTT samples (it left or was reaped)."""
        self._samples.pop(node, None)

    def distance_to(self, other: Coordinate) -> float:
        return self._coord.distance_to(other)

    def _check(self, other: Coordinate) -> None:
        if not self._coord.compatible_with(other):
            raise InvalidCoordinate("dimensions aren't compatible")
        if not other.is_valid():
            raise InvalidCoordinate("coordinate is invalid")

    def _filtered_rtt(self, node: str, rtt_s: float) -> float:
        samples = self._samples.setdefault(node, [])
        samples.append(rtt_s)
        if len(samples) > self.config.latency_filter_size:
            del samples[0]
        return sorted(samples)[len(samples) // 2]

    def update(self, node: str, other: Coordinate, rtt_s: float) -> Coordinate:
        """Fold in one observation: ``node`` at ``other`` answered a probe after ``rtt_s``.

        Returns our new coordinate. Raises :class:`InvalidCoordinate` for an unusable peer
        coordinate or an RTT outside [0, 10 s]; our state is then unchanged.
        """
        self._check(other)
        if not (_finite(rtt_s) and 0.0 <= rtt_s <= MAX_RTT_S):
            raise InvalidCoordinate(f"round trip time {rtt_s!r}s is not within [0, {MAX_RTT_S:g}]s")
        rtt = self._filtered_rtt(node, rtt_s)
        self._move(other, rtt)
        self._adjust(other, rtt)
        self._gravity()
        if not self._coord.is_valid():
            # Arithmetic went astray (it should not): start over rather than spread garbage.
            self.resets += 1
            self._coord = Coordinate.origin(self.config)
        return self._coord

    def _move(self, other: Coordinate, rtt: float) -> None:
        cfg = self.config
        rtt = max(rtt, ZERO_THRESHOLD)
        me = self._coord
        estimate = me.distance_to(other)
        relative_error = abs(estimate - rtt) / rtt
        # The less sure we are compared with the peer, the more we move and the more the new
        # sample counts in our error estimate.
        weight = me.error / max(me.error + other.error, ZERO_THRESHOLD)
        error = cfg.vivaldi_ce * weight * relative_error + me.error * (1.0 - cfg.vivaldi_ce * weight)
        error = min(error, cfg.vivaldi_error_max)
        force = cfg.vivaldi_cc * weight * (rtt - estimate)
        moved = _pushed(cfg, self._rng, me, force, other)
        self._coord = Coordinate(moved.vec, error, me.adjustment, moved.height)

    def _adjust(self, other: Coordinate, rtt: float) -> None:
        window = self.config.adjustment_window_size
        if window == 0:
            return
        # The residual against the raw distance: adjustments must not feed on themselves.
        self._residuals[self._residual_next] = rtt - self._coord.raw_distance_to(other)
        self._residual_next = (self._residual_next + 1) % window
        # Half of the mean: the other side of every pair carries the other half.
        adjustment = sum(self._residuals) / (2.0 * window)
        c = self._coord
        self._coord = Coordinate(c.vec, c.error, adjustment, c.height)

    def _gravity(self) -> None:
        dist = self._origin.distance_to(self._coord)
        force = -((dist / self.config.gravity_rho) ** 2)
        c = self._coord
        moved = _pushed(self.config, self._rng, c, force, self._origin)
        self._coord = Coordinate(moved.vec, c.error, c.adjustment, moved.height)


def encode_ack_payload(coord: Coordinate) -> bytes:
    """What we attach to probe acks: a version byte and the coordinate as a msgpack map."""
    return bytes((PING_PAYLOAD_VERSION,)) + msgpack.packb(coord.to_json(), use_bin_type=True)


def decode_ack_payload(payload: bytes, dimensionality: int = DEFAULT_CONFIG.dimensionality) -> Coordinate:
    """The peer's coordinate from its ack payload; :class:`InvalidCoordinate` if unusable."""
    if not payload:
        raise InvalidCoordinate("empty ack payload")
    if payload[0] != PING_PAYLOAD_VERSION:
        raise InvalidCoordinate(f"unsupported ping payload version {payload[0]}")
    try:
        raw = msgpack.unpackb(payload[1:], raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise InvalidCoordinate(f"undecodable coordinate: {exc}") from None
    return Coordinate.from_json(raw, dimensionality)


class PeerCoordinates:
    """One gossip pool's coordinates: ours (a :class:`VivaldiClient`) and each peer's latest.

    The gossip driver attaches :meth:`ack_payload` to the acks it sends and feeds every direct
    probe's RTT and the peer's payload to :meth:`observe`; :meth:`forget` when a peer is reaped.
    """

    def __init__(self, name: str, config: VivaldiConfig = DEFAULT_CONFIG, rng: random.Random | None = None) -> None:
        self.name = name
        self.client = VivaldiClient(config, rng)
        self._peers: dict[str, Coordinate] = {}
        self._payload = encode_ack_payload(self.client.coordinate)
        # Rejected observations (bad payloads, wild RTTs): visible to tests and debugging.
        self.rejected = 0

    @property
    def coordinate(self) -> Coordinate:
        return self.client.coordinate

    def ack_payload(self) -> bytes:
        return self._payload

    def observe(self, peer: str, rtt_s: float, payload: bytes) -> Coordinate | None:
        """A direct probe of ``peer`` was acked after ``rtt_s`` with ``payload``.

        Returns our updated coordinate, or None when the observation was refused (logged by the
        caller, as it was the peer's fault or a clock accident, never fatal).
        """
        if not payload:
            return None  # a peer that does not send coordinates
        try:
            theirs = decode_ack_payload(payload, self.client.config.dimensionality)
            ours = self.client.update(peer, theirs, rtt_s)
        except InvalidCoordinate:
            self.rejected += 1
            return None
        self._peers[peer] = theirs
        self._payload = encode_ack_payload(ours)
        return ours

    def forget(self, peer: str) -> None:
        self._peers.pop(peer, None)
        self.client.forget(peer)

    def get(self, name: str) -> Coordinate | None:
        """The last coordinate ``name`` sent us (our own current one for our name)."""
        if name == self.name:
            return self.client.coordinate
        return self._peers.get(name)

    def known(self) -> dict[str, Coordinate]:
        """Every cached coordinate, ours included, by node name (sorted)."""
        out = dict(self._peers)
        out[self.name] = self.client.coordinate
        return {k: out[k] for k in sorted(out)}
