"""The coordinates table: batch updates through the FSM, Consul's skip rules, deletion with the
node, snapshots, the coordinate queries and `?near=` sorting; and the leader's batching."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
import state_helpers
from proconsul.coordinate import Coordinate, InvalidCoordinate
from proconsul.local import coordinate_sync
from proconsul.server import queries
from proconsul.server.snapshot import state_stats
from proconsul.state import commands as cmd
from proconsul.state.records import Node, ServiceInstance
from proconsul.state.store import Store


def coord(x: float) -> Coordinate:
    return Coordinate((x,) + (0.0,) * 7, 0.2, 0.0, 1e-5)


class Log(state_helpers.Log):
    def node(self, name: str, service: str = "") -> None:
        svc = ServiceInstance(node=name, id=service, service=service) if service else None
        self.apply(cmd.Register(Node(node=name, address="10.0.0.1"), svc))


def test_batch_update_skips_unknown_nodes_and_invalid_coordinates() -> None:
    log = Log()
    log.node("a")
    log.node("b")
    bad = Coordinate((math.nan,) + (0.0,) * 7, 0.2, 0.0, 1e-5)
    log.apply(cmd.CoordinateBatchUpdate((("a", "", coord(0.01)), ("ghost", "", coord(0.02)), ("b", "", bad))))
    index, entries = log.store.list_coordinates()
    assert index == 3 and entries == [("a", "", coord(0.01))]
    # Later updates replace earlier ones; the table index moves even when all are skipped.
    log.apply(cmd.CoordinateBatchUpdate((("a", "", coord(0.03)),)))
    log.apply(cmd.CoordinateBatchUpdate((("ghost", "", coord(0.02)),)))
    index, per = log.store.node_coordinates("a")
    assert index == 5 and per == {"": coord(0.03)}
    assert log.store.node_coordinates("ghost") == (5, {})


def test_coordinates_go_with_the_node_and_survive_snapshots() -> None:
    log = Log()
    log.node("a")
    log.node("b")
    log.apply(cmd.CoordinateBatchUpdate((("a", "", coord(0.01)), ("b", "", coord(0.02)))))
    copy = Store()
    copy.restore(log.store.snapshot())
    assert copy.list_coordinates() == log.store.list_coordinates()
    # `snapshot inspect` counts them as Consul's "Coordinate" records.
    assert ("Coordinate", 2) in [(name, count) for name, count, _ in state_stats(log.store.snapshot())]
    fired: list[int] = []
    log.store.watch(["coordinates"], lambda: fired.append(1))
    log.apply(cmd.Deregister("a"))
    assert fired == [1]
    assert log.store.list_coordinates() == (4, [("b", "", coord(0.02))])
    # Deregistering a service leaves the node's coordinates alone.
    log.apply(cmd.Deregister("b", service_id="nothing"))
    assert [n for n, _, _ in log.store.list_coordinates()[1]] == ["b"]


def test_snapshots_from_before_coordinates_restore_empty() -> None:
    import msgpack

    old = msgpack.unpackb(Store().snapshot(), raw=False)
    del old["coordinates"]
    store = Store()
    store.restore(msgpack.packb(old, use_bin_type=True))
    assert store.list_coordinates() == (0, [])


def test_coordinate_queries_and_near_sorting() -> None:
    log = Log()
    for name in ("a", "b", "c", "d"):
        log.node(name, service="web")
    log.apply(cmd.CoordinateBatchUpdate((("a", "", coord(0.0)), ("b", "", coord(0.050)), ("c", "", coord(0.010)))))
    store = log.store
    _, listed = queries.coordinate_list_nodes(store, {})
    assert [e["Node"] for e in listed] == ["a", "b", "c"]
    assert listed[0] == {"Node": "a", "Segment": "", "Coord": coord(0.0).to_json()}
    assert queries.coordinate_node(store, {"node": "d"})[1] == []

    def names(result: tuple[int, Any], key: Any = lambda e: e["Node"]) -> list[str]:
        return [key(e) for e in result[1]]

    assert names(queries.catalog_nodes(store, {"near": "b"})) == ["b", "c", "a", "d"]
    assert names(queries.catalog_nodes(store, {"near": "a"})) == ["a", "c", "b", "d"]
    assert names(queries.catalog_service_nodes(store, {"service": "web", "near": "c"})) == ["c", "a", "b", "d"]
    assert names(queries.health_service_nodes(store, {"service": "web", "near": "b"}),
                 lambda e: e["Node"]["Node"]) == ["b", "c", "a", "d"]
    # No source coordinate, or no ?near: the usual name order.
    assert names(queries.catalog_nodes(store, {"near": "d"})) == ["a", "b", "c", "d"]
    assert names(queries.catalog_nodes(store, {})) == ["a", "b", "c", "d"]


class FakeConsensus:
    def __init__(self, leader: bool) -> None:
        self.leader = leader

    def is_leader(self) -> bool:
        return self.leader


class FakeServer:
    def __init__(self, leader: bool = True) -> None:
        self.consensus = FakeConsensus(leader)
        self.written: list[cmd.CoordinateBatchUpdate] = []

    async def write(self, command: cmd.CoordinateBatchUpdate) -> None:
        self.written.append(command)


def test_leader_keeps_the_latest_update_per_node_and_batches_them() -> None:
    async def scenario() -> FakeServer:
        server = FakeServer()
        endpoint = coordinate_sync.CoordinateEndpoint(server)
        for i in range(700):
            await endpoint.handle(coordinate_sync.encode_update(f"n{i:03}", "", coord(0.001)))
        await endpoint.handle(coordinate_sync.encode_update("n000", "", coord(0.002)))
        assert len(endpoint.pending) == 700
        assert await endpoint.flush() == 640  # 5 batches of 128; the rest is dropped
        assert endpoint.pending == {} and await endpoint.flush() == 0
        return server

    server = asyncio.run(scenario())
    assert [len(c.updates) for c in server.written] == [128] * 5
    latest = {n: c for batch in server.written for n, _, c in batch.updates}
    assert latest["n000"] == coord(0.002)


def test_update_validation_and_follower_without_leadership() -> None:
    async def scenario() -> None:
        endpoint = coordinate_sync.CoordinateEndpoint(FakeServer(leader=True))
        with pytest.raises(coordinate_sync.RPCError, match="invalid coordinate"):
            await endpoint.handle({"Node": "a", "Coord": {"Vec": [0.0] * 2}})
        with pytest.raises(InvalidCoordinate, match="Must provide node"):
            coordinate_sync.decode_update({"Coord": coord(0.0).to_json()})
        assert coordinate_sync.decode_update({"node": "a", "coord": coord(0.0).to_json()}) == ("a", "", coord(0.0))
        # Leadership lost before the flush: the pending updates are dropped, nothing written.
        server = FakeServer(leader=True)
        endpoint = coordinate_sync.CoordinateEndpoint(server)
        await endpoint.handle(coordinate_sync.encode_update("a", "", coord(0.0)))
        server.consensus.leader = False
        assert await endpoint.flush() == 0 and server.written == []

    asyncio.run(scenario())


def test_rate_scaled_interval() -> None:
    assert coordinate_sync.rate_scaled_interval(64.0, 15.0, 3) == 15.0
    assert coordinate_sync.rate_scaled_interval(64.0, 15.0, 6400) == 100.0
