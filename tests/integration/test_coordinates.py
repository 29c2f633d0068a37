"""Network coordinates end to end, on real `proconsul agent` processes.

A dev agent for the endpoint details (shapes, 404, validation, blocking, `?near=`, the CLI's
errors), then one server and two client agents in one LAN gossip pool: gossip probes move each
agent's Vivaldi coordinate, every agent pushes it to the servers (`Coordinate.Update`, clients
over RPC), the leader commits them through Raft, and py-consul, `?near=_agent` and
`proconsul rtt` read them back. Hidden knobs shorten Consul's 15 s push interval for the test.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import consul
import pytest
from cluster_helpers import LanCluster, cli
from helpers import AgentProcess, wait_for

FAST_SYNC = ("-hcl", 'sync_coordinate_interval_min = "1s"')


def _get(agent: AgentProcess, path: str) -> tuple[int, dict[str, str], object]:
    status, headers, raw = agent.http("GET", path)
    return status, headers, (json.loads(raw) if raw else None)


def _coordinate(vec0: float, height: float = 1e-5) -> dict[str, object]:
    return {"Vec": [vec0] + [0.0] * 7, "Error": 0.2, "Adjustment": 0.0, "Height": height}


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    a = AgentProcess(*FAST_SYNC).start()
    try:
        yield a
    finally:
        a.stop()


def _coordinate_nodes(agent: AgentProcess) -> dict[str, dict[str, object]]:
    status, _, body = _get(agent, "/v1/coordinate/nodes")
    assert status == 200, body
    return {e["Node"]: e for e in body}  # type: ignore[union-attr]


def test_agent_pushes_its_own_coordinate(agent: AgentProcess) -> None:
    wait_for(lambda: "test-node" in _coordinate_nodes(agent), timeout=60,
             what=lambda: f"the agent's coordinate in the catalog\n{agent.log()}")
    entry = _coordinate_nodes(agent)["test-node"]
    assert set(entry) == {"Node", "Segment", "Coord"} and entry["Segment"] == ""
    coord = entry["Coord"]
    assert set(coord) == {"Vec", "Error", "Adjustment", "Height"}  # type: ignore[arg-type]
    assert len(coord["Vec"]) == 8  # type: ignore[index]
    status, headers, body = _get(agent, "/v1/coordinate/node/test-node")
    assert status == 200 and body == [entry] and int(headers["X-Consul-Index"]) > 0
    status, _, body = _get(agent, "/v1/coordinate/node/no-such-node")
    assert status == 404 and body is None
    # ?segment filters (CE has only the default segment).
    assert _get(agent, "/v1/coordinate/nodes?segment=alpha")[2] == []
    # The agent's own coordinate is also in /v1/agent/self, in the same shape.
    assert set(_get(agent, "/v1/agent/self")[2]["Coord"]) == set(coord)  # type: ignore[index, arg-type]
    status, _, dcs = _get(agent, "/v1/coordinate/datacenters")
    assert status == 200
    assert [(d["Datacenter"], d["AreaID"], [c["Node"] for c in d["Coordinates"]]) for d in dcs] == [  # type: ignore[union-attr]
        ("dc1", "wan", ["test-node"])
    ]


def test_update_validates_and_near_sorts(agent: AgentProcess) -> None:
    for node, ip in (("far", "10.0.0.1"), ("near", "10.0.0.2"), ("nocoord", "10.0.0.3")):
        body = {"Node": node, "Address": ip, "Service": {"Service": "geo", "Port": 80},
                "Check": {"CheckID": f"geo-{node}", "Name": "geo", "Status": "passing", "ServiceID": "geo"}}
        assert agent.http("PUT", "/v1/catalog/register", json.dumps(body).encode())[0] == 200
    index = int(_get(agent, "/v1/coordinate/nodes")[1]["X-Consul-Index"])
    # A blocking read wakes when the leader commits the next batch.
    woke: dict[str, object] = {}

    def block() -> None:
        woke["result"] = _get(agent, f"/v1/coordinate/nodes?index={index}&wait=60s")

    waiter = threading.Thread(target=block)
    waiter.start()
    for node, x in (("far", 0.050), ("near", 0.002), ("test-node", 0.0)):
        status, _, raw = agent.http("PUT", "/v1/coordinate/update",
                                    json.dumps({"Node": node, "Coord": _coordinate(x)}).encode())
        assert status == 200 and raw == b"", raw
    waiter.join(timeout=90)
    assert not waiter.is_alive()
    status, headers, _ = woke["result"]  # type: ignore[misc]
    assert status == 200 and int(headers["X-Consul-Index"]) > index
    wait_for(lambda: {"far", "near"} <= set(_coordinate_nodes(agent)), timeout=30, what="pushed coordinates")
    assert "nocoord" not in _coordinate_nodes(agent)

    # ?near=<node>: closest first, nodes without coordinates last; the source itself is closest.
    def order(path: str, node_of=lambda e: e["Node"]) -> list[str]:  # type: ignore[no-untyped-def]
        status, _, body = _get(agent, path)
        assert status == 200, body
        return [node_of(e) for e in body if node_of(e) in ("far", "near", "nocoord")]  # type: ignore[union-attr]

    assert order("/v1/catalog/nodes?near=far") == ["far", "near", "nocoord"]
    assert order("/v1/catalog/nodes?near=near") == ["near", "far", "nocoord"]
    assert order("/v1/catalog/service/geo?near=near") == ["near", "far", "nocoord"]
    assert order("/v1/health/service/geo?near=far", lambda e: e["Node"]["Node"]) == ["far", "near", "nocoord"]
    assert order("/v1/health/checks/geo?near=near") == ["near", "far", "nocoord"]
    assert order("/v1/health/state/passing?near=far") == ["far", "near", "nocoord"]
    # A source without coordinates (or unknown) leaves the usual name order.
    assert order("/v1/catalog/nodes?near=nocoord") == ["far", "near", "nocoord"]

    # Bad updates: 400 with a reason, nothing stored.
    for bad, reason in (
        ({"Coord": _coordinate(0.1)}, "Must provide node"),
        ({"Node": "far"}, "Must provide a coordinate"),
        ({"Node": "far", "Coord": {"Vec": [0.0] * 3}}, "dimensions"),
        ({"Node": "far", "Coord": {"Vec": ["x"] * 8}}, "must be a number"),
        # json.dumps writes Infinity, which is not JSON: refused at decoding, as Go's decoder does.
        ({"Node": "far", "Coord": _coordinate(math.inf)}, "invalid JSON literal Infinity"),
    ):
        raw_body = json.dumps(bad).encode()
        status, _, raw = agent.http("PUT", "/v1/coordinate/update", raw_body)
        assert status == 400 and reason.encode() in raw, (bad, status, raw)
    assert agent.http("PUT", "/v1/coordinate/update", b"{nope")[0] == 400

    # The CLI: an unknown node is named in the error; known ones give Consul's line.
    run = cli("rtt", f"-http-addr={agent.addr}", "ghost", "far")
    assert run.returncode == 1 and 'Could not find a coordinate for node "ghost"' in run.stderr, run
    run = cli("rtt", f"-http-addr={agent.addr}", "far", "near")
    assert run.returncode == 0, run
    assert re.fullmatch(r"Estimated far <-> near rtt: \d+\.\d{3} ms \(using LAN coordinates\)\n", run.stdout), run
    assert abs(float(run.stdout.split()[5]) - 48.0) < 0.1  # |0.050 - 0.002| s + two 10 us heights
    run = cli("rtt", f"-http-addr={agent.addr}")
    assert run.returncode == 1 and "One or two node names must be specified" in run.stderr
    # -wan: servers from /v1/coordinate/datacenters, names as node.datacenter.
    run = cli("rtt", "-wan", f"-http-addr={agent.addr}", "test-node.dc1")
    assert run.returncode == 0, run
    assert re.fullmatch(r"Estimated test-node\.dc1 <-> test-node\.dc1 rtt: \d+\.\d{3} ms \(using WAN coordinates\)\n",
                        run.stdout), run
    run = cli("rtt", "-wan", f"-http-addr={agent.addr}", "test-node")
    assert run.returncode == 1 and "Node names must be specified as <node name>.<datacenter> with -wan" in run.stderr
    run = cli("rtt", "-wan", f"-http-addr={agent.addr}", "far.dc1")
    assert run.returncode == 1 and 'Could not find a coordinate for node "far.dc1"' in run.stderr, run


def test_disabled_coordinates_answer_401() -> None:
    a = AgentProcess("-hcl", "disable_coordinates = true").start()
    try:
        for method, path in (("GET", "/v1/coordinate/nodes"), ("GET", "/v1/coordinate/datacenters"),
                             ("GET", "/v1/coordinate/node/test-node"), ("PUT", "/v1/coordinate/update")):
            status, _, raw = a.http(method, path, b"{}" if method == "PUT" else None)
            assert status == 401 and raw == b"Coordinate support disabled", (path, status, raw)
        assert cli("rtt", f"-http-addr={a.addr}", "test-node").returncode == 1
    finally:
        a.stop()


def test_server_and_two_clients_share_coordinates(tmp_path: Path) -> None:
    lan = LanCluster(tmp_path, ("c1", "c2"), *FAST_SYNC)
    server, c1, c2 = lan.start()
    try:
        api = consul.Consul(host=c1.ip, port=c1.http_port)

        def moved_nodes() -> set[str]:
            # A coordinate off the origin was moved by real probe RTTs.
            _, entries = api.coordinate.nodes()
            return {e["Node"] for e in entries if any(v != 0.0 for v in e["Coord"]["Vec"])}

        wait_for(lambda: moved_nodes() == {"srv", "c1", "c2"}, timeout=120,
                 what=lambda: f"moved coordinates of all three nodes\n{server.log()}\n{c1.log()}")
        _, entries = api.coordinate.nodes()
        assert [e["Node"] for e in entries] == ["c1", "c2", "srv"]
        for e in entries:
            coord = e["Coord"]
            assert len(coord["Vec"]) == 8 and 0 < coord["Error"] <= 1.5 and coord["Height"] >= 1e-5
        dcs = api.coordinate.datacenters()
        assert [d["Datacenter"] for d in dcs] == ["dc1"]
        assert [c["Node"] for c in dcs[0]["Coordinates"]] == ["srv"]

        # ?near=_agent puts the asking agent's own node first, on every agent.
        for agent, name in ((c1, "c1"), (c2, "c2"), (server, "srv")):
            status, _, body = _get(agent, "/v1/catalog/nodes?near=_agent")
            assert status == 200 and body[0]["Node"] == name, body  # type: ignore[index]
            status, _, body = _get(agent, "/v1/health/service/consul?near=_agent")
            assert status == 200 and [e["Node"]["Node"] for e in body] == ["srv"]  # type: ignore[union-attr]

        run = cli("rtt", f"-http-addr={c1.addr}", "c2", "srv")
        assert run.returncode == 0, run
        match = re.fullmatch(r"Estimated c2 <-> srv rtt: (\d+\.\d{3}) ms \(using LAN coordinates\)\n", run.stdout)
        assert match and 0 < float(match.group(1)) < 100.0, run.stdout
        # One name: the second is the agent's own node.
        run = cli("rtt", f"-http-addr={c2.addr}", "srv")
        assert run.returncode == 0 and run.stdout.startswith("Estimated srv <-> c2 rtt: "), run
    finally:
        lan.stop()
