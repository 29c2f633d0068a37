"""Vivaldi coordinates (proconsul.coordinate): convergence on a simulated network, distances,
encodings, and refusal of bad input."""

from __future__ import annotations

import math
import random
import statistics

import msgpack
import pytest
from proconsul.coordinate import (
    DEFAULT_CONFIG,
    Coordinate,
    InvalidCoordinate,
    PeerCoordinates,
    VivaldiClient,
    decode_ack_payload,
    distance,
    encode_ack_payload,
)


def _network(seed: int, n: int) -> tuple[random.Random, list[tuple[float, float]], list[float]]:
    """Nodes on a 50 ms x 50 ms plane, each behind an access link of 0.5-2 ms (the height)."""
    rng = random.Random(seed)
    positions = [(rng.uniform(0, 0.05), rng.uniform(0, 0.05)) for _ in range(n)]
    access = [rng.uniform(0.0005, 0.002) for _ in range(n)]
    return rng, positions, access


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_coordinates_converge_to_the_true_latencies(seed: int) -> None:
    n = 12
    rng, positions, access = _network(seed, n)

    def true_rtt(i: int, j: int) -> float:
        return math.dist(positions[i], positions[j]) + access[i] + access[j]

    clients = [VivaldiClient(rng=random.Random(seed * 100 + i)) for i in range(n)]
    for _ in range(1000):
        for i in range(n):
            j = rng.choice([k for k in range(n) if k != i])
            # 2% measurement jitter, as real probes have.
            clients[i].update(f"n{j}", clients[j].coordinate, true_rtt(i, j) * rng.uniform(0.98, 1.02))
    errors = [
        abs(clients[i].coordinate.distance_to(clients[j].coordinate) - true_rtt(i, j)) / true_rtt(i, j)
        for i in range(n) for j in range(i + 1, n)
    ]
    # Stated bound: estimates are within 5% on average and 15% for the worst pair.
    assert statistics.mean(errors) < 0.05, errors
    assert max(errors) < 0.15, errors
    # Confidence grew from the initial 1.5 as the model fit.
    assert all(c.coordinate.error < 0.5 for c in clients)


def test_nearest_node_is_found_through_ack_payloads() -> None:
    """The whole gossip path in miniature: coordinates only travel as ack payloads."""
    rng, positions, access = _network(7, 6)
    peers = [PeerCoordinates(f"n{i}", rng=random.Random(i)) for i in range(6)]
    for _ in range(600):
        for i, me in enumerate(peers):
            j = rng.choice([k for k in range(6) if k != i])
            rtt = math.dist(positions[i], positions[j]) + access[i] + access[j]
            assert me.observe(f"n{j}", rtt, peers[j].ack_payload()) is not None
    me = peers[0]
    # Each node's cache holds what its peers last sent, and its own current coordinate.
    assert set(me.known()) <= {f"n{i}" for i in range(6)} and me.known()["n0"] == me.coordinate
    by_estimate = sorted(range(1, 6), key=lambda j: distance(me.coordinate, peers[j].coordinate))
    by_truth = sorted(range(1, 6), key=lambda j: math.dist(positions[0], positions[j]) + access[j])
    assert by_estimate[0] == by_truth[0]


def test_distance_includes_heights_and_positive_adjustments() -> None:
    a = Coordinate((0.0,) * 8, 0.2, 0.0, 0.001)
    b = Coordinate((0.003, 0.004) + (0.0,) * 6, 0.2, 0.0, 0.002)
    assert a.raw_distance_to(b) == pytest.approx(0.005 + 0.003)
    assert a.distance_to(b) == pytest.approx(0.008)
    adjusted = Coordinate(b.vec, 0.2, 0.001, 0.002)
    assert a.distance_to(adjusted) == pytest.approx(0.009)
    # An adjustment that would make the estimate non-positive is ignored.
    negative = Coordinate(b.vec, 0.2, -1.0, 0.002)
    assert a.distance_to(negative) == pytest.approx(0.008)
    assert distance(a, None) == math.inf and distance(None, b) == math.inf
    assert distance(a, Coordinate((0.0,) * 3, 0.2, 0.0, 0.0)) == math.inf


def test_fresh_coordinate_matches_consul_defaults() -> None:
    origin = Coordinate.origin()
    assert origin.to_json() == {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05}
    assert DEFAULT_CONFIG.latency_filter_size == 3 and DEFAULT_CONFIG.gravity_rho == 150.0


def test_json_and_wire_round_trip() -> None:
    c = Coordinate(tuple(float(i) / 1000 for i in range(8)), 0.3, -0.0001, 0.0002)
    assert Coordinate.from_json(c.to_json()) == c
    assert Coordinate.from_wire(c.to_wire()) == c
    # Go's decoder matches field names case-insensitively.
    assert Coordinate.from_json({"vec": list(c.vec), "error": 0.3, "adjustment": -0.0001, "height": 0.0002}) == c
    assert decode_ack_payload(encode_ack_payload(c)) == c


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"Vec": [0.0] * 7, "Error": 1.5}, "dimensions"),
        ({"Vec": [0.0] * 7 + [float("nan")], "Error": 1.5}, "finite"),
        ({"Vec": [0.0] * 8, "Error": float("inf")}, "finite"),
        ({"Vec": [0.0] * 8, "Height": "1"}, "number"),
        ({"Vec": [0.0] * 8, "Adjustment": True}, "number"),
        ({"Vec": "zero"}, "list"),
        ([1, 2], "object"),
    ],
)
def test_bad_coordinates_are_refused(body: object, reason: str) -> None:
    with pytest.raises(InvalidCoordinate, match=reason):
        Coordinate.from_json(body)


def test_client_refuses_bad_observations_and_keeps_its_state() -> None:
    client = VivaldiClient(rng=random.Random(1))
    peer = Coordinate.origin()
    before = client.coordinate
    with pytest.raises(InvalidCoordinate):
        client.update("p", Coordinate((math.nan,) + (0.0,) * 7, 1.5, 0.0, 1e-5), 0.01)
    with pytest.raises(InvalidCoordinate):
        client.update("p", Coordinate((0.0,) * 3, 1.5, 0.0, 1e-5), 0.01)
    for rtt in (-0.001, 11.0, math.inf, math.nan):
        with pytest.raises(InvalidCoordinate):
            client.update("p", peer, rtt)
    assert client.coordinate == before
    # A zero RTT (coarse clocks) is fine and moves the coincident nodes apart.
    after = client.update("p", peer, 0.0)
    assert after.is_valid() and after != before


def test_peer_coordinates_reject_bad_payloads() -> None:
    me = PeerCoordinates("me", rng=random.Random(3))
    good = encode_ack_payload(Coordinate.origin())
    assert me.observe("a", 0.001, b"") is None  # a peer without coordinates: nothing to learn
    assert me.observe("a", 0.001, b"\x02" + good[1:]) is None  # unknown payload version
    assert me.observe("a", 0.001, b"\x01\xc1") is None  # not msgpack
    bad = b"\x01" + msgpack.packb({"Vec": [0.0] * 4, "Error": 1.5})
    assert me.observe("a", 0.001, bad) is None
    assert me.rejected == 3 and me.get("a") is None
    assert me.observe("a", 0.001, good) is not None
    assert me.get("a") == Coordinate.origin() and me.get("me") == me.coordinate
    assert me.ack_payload() == encode_ack_payload(me.coordinate)
    me.forget("a")
    assert me.get("a") is None
