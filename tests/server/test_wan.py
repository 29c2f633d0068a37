"""The router of remote datacenters (proconsul.server.wan.Router) and the remote DNS records path.

The router is driven with WAN member records and a scripted connection pool, so each Consul
behaviour is one test: the datacenter order, "No path to datacenter" for an unknown one, "Remote
DC has no server currently reachable" when all of its servers failed, failover between servers
for reads, no retry of a write that may have been sent.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest
from dnslib import QTYPE
from proconsul.coordinate import Coordinate, PeerCoordinates
from proconsul.dns.answer import Question, Resolver
from proconsul.dns.remote import records_store
from proconsul.gossip.core import Member, MemberState
from proconsul.rpc_api import NoPathToDatacenter, QueryOptions, RPCError, UnknownOutcome
from proconsul.serf.member import STATUS_ALIVE, STATUS_FAILED, STATUS_LEFT, MemberRecord
from proconsul.server import queries
from proconsul.server.rpc import Server
from proconsul.server.wan import DC_NOT_AVAILABLE, DatacenterNotAvailable, Router, wan_name
from proconsul.state import commands
from proconsul.state.records import DirEntry, HealthCheck, Node, ServiceInstance
from proconsul.state.store import Store
from proconsul.transport import RemoteError


def record(name: str, dc: str, ip: str, status: int = STATUS_ALIVE, role: str = "consul") -> MemberRecord:
    tags = {"role": role, "dc": dc, "port": "8300"}
    return MemberRecord(Member(wan_name(name, dc), (ip, 8302), tags, 1, MemberState.ALIVE, 0.0), status, 0.0)


class ScriptedPool:
    """Answers per address: an exception to raise or a value to return; records every call."""

    def __init__(self, script: dict[str, Any]) -> None:
        self.script = script
        self.calls: list[tuple[str, str]] = []

    async def call(self, address: str, method: str, body: Any, timeout_s: float = 30.0, datacenter: str = "") -> Any:
        self.calls.append((address, method))
        outcome = self.script[address]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def close(self) -> None:
        pass


QUERY_REPLY = {"meta": [7, True, 0, "leader"], "result": ["dc2-answer"]}


def make_router(members: list[MemberRecord], script: dict[str, Any]) -> tuple[Router, ScriptedPool]:
    pool = ScriptedPool(script)
    return Router("dc1", lambda: members, pool, random.Random(1)), pool  # type: ignore[arg-type]


def test_datacenters_local_first_then_by_name_including_failed() -> None:
    router, _ = make_router(
        [record("c", "dc3", "127.0.0.3", STATUS_FAILED), record("b", "dc2", "127.0.0.2"),
         record("a", "dc1", "127.0.0.1"), record("z", "aaa", "127.0.0.4"),
         record("client", "dc9", "127.0.0.9", role="node")],
        {},
    )
    assert router.datacenters() == ["dc1", "aaa", "dc2", "dc3"]


def test_unknown_datacenter_is_no_path() -> None:
    router, pool = make_router([record("b", "dc2", "127.0.0.2")], {})
    with pytest.raises(NoPathToDatacenter, match="^No path to datacenter$"):
        asyncio.run(router.query("dc3", "KVS.Get", {"key": "k"}, QueryOptions(), 0.0))
    assert pool.calls == []


def test_datacenter_with_only_failed_or_left_servers_is_not_available() -> None:
    router, pool = make_router(
        [record("b", "dc2", "127.0.0.2", STATUS_FAILED), record("c", "dc2", "127.0.0.3", STATUS_LEFT)], {}
    )
    with pytest.raises(DatacenterNotAvailable) as err:
        asyncio.run(router.write("dc2", commands.KVS(commands.KVOp.SET, DirEntry(key="k"))))
    assert str(err.value) == DC_NOT_AVAILABLE == "Remote DC has no server currently reachable"
    assert pool.calls == []


def test_read_fails_over_to_the_next_server_and_sticks_to_it() -> None:
    members = [record("b", "dc2", "127.0.0.2"), record("c", "dc2", "127.0.0.3")]
    first = router_first_choice(members)
    other = "127.0.0.3:8300" if first == "127.0.0.2:8300" else "127.0.0.2:8300"
    router, pool = make_router(members, {first: ConnectionRefusedError(), other: QUERY_REPLY})
    meta, result = asyncio.run(router.query("dc2", "KVS.Get", {"key": "k"}, QueryOptions(), 0.0))
    assert (meta.index, result) == (7, ["dc2-answer"])
    assert pool.calls == [(first, "Client.Query"), (other, "Client.Query")]
    pool.calls.clear()
    asyncio.run(router.query("dc2", "KVS.Get", {"key": "k"}, QueryOptions(), 0.0))
    assert pool.calls == [(other, "Client.Query")]


def router_first_choice(members: list[MemberRecord]) -> str:
    router, _ = make_router(members, {})
    return router.candidates("dc2")[0]


def test_write_lost_after_sending_is_unknown_and_not_retried() -> None:
    members = [record("b", "dc2", "127.0.0.2"), record("c", "dc2", "127.0.0.3")]
    router, pool = make_router(members, {"127.0.0.2:8300": ConnectionResetError("reset"),
                                         "127.0.0.3:8300": ConnectionResetError("reset")})
    with pytest.raises(UnknownOutcome):
        asyncio.run(router.write("dc2", commands.KVS(commands.KVOp.SET, DirEntry(key="k"))))
    assert len(pool.calls) == 1


def test_write_refused_is_retried_on_another_server() -> None:
    members = [record("b", "dc2", "127.0.0.2"), record("c", "dc2", "127.0.0.3")]
    first = router_first_choice(members)
    other = "127.0.0.3:8300" if first == "127.0.0.2:8300" else "127.0.0.2:8300"
    router, pool = make_router(members, {first: ConnectionRefusedError(), other: {"index": 9, "result": True}})
    meta, ok = asyncio.run(router.write("dc2", commands.KVS(commands.KVOp.SET, DirEntry(key="k"))))
    assert (meta.index, ok) == (9, True)
    assert [m for _, m in pool.calls] == ["Client.Write", "Client.Write"]


def test_remote_error_is_the_remote_datacenters_answer() -> None:
    router, _ = make_router([record("b", "dc2", "127.0.0.2")], {"127.0.0.2:8300": RemoteError("No cluster leader")})
    with pytest.raises(RPCError, match="^No cluster leader$"):
        asyncio.run(router.query("dc2", "KVS.Get", {"key": "k"}, QueryOptions(), 0.0))


def test_server_without_wan_has_no_path() -> None:
    server = Server(Store(), consensus=None, datacenter="dc1")  # type: ignore[arg-type]
    with pytest.raises(NoPathToDatacenter):
        asyncio.run(server.query("KVS.Get", {"key": "k"}, QueryOptions(datacenter="dc2")))
    with pytest.raises(NoPathToDatacenter):
        asyncio.run(server.write(commands.KVS(commands.KVOp.SET, DirEntry(key="k")), datacenter="dc2"))


def test_server_forwards_to_the_router_and_answers_its_own_dc_locally() -> None:
    router, pool = make_router([record("b", "dc2", "127.0.0.2")], {"127.0.0.2:8300": QUERY_REPLY})
    server = Server(Store(), consensus=None, datacenter="dc1", router=router)  # type: ignore[arg-type]
    meta, result = asyncio.run(server.query("KVS.Get", {"key": "k"}, QueryOptions(datacenter="dc2")))
    assert result == ["dc2-answer"] and pool.calls == [("127.0.0.2:8300", "Client.Query")]


def _remote_store() -> Store:
    store = Store()
    node = Node(node="Web-Node", address="10.2.0.1", datacenter="dc2")
    web = ServiceInstance(node="Web-Node", id="web-1", service="Web", port=80, tags=("v1",))
    store.ensure_registration(1, node, web, (HealthCheck(node="Web-Node", check_id="serfHealth", status="passing"),),
                              skip_node_update=False)
    store.ensure_registration(2, node, ServiceInstance(node="Web-Node", id="db-1", service="db", port=5432), (), skip_node_update=True)
    store.finish(2)
    return store


def test_dns_records_carry_one_service_and_resolve_for_that_datacenter() -> None:
    from proconsul.config import RuntimeConfig

    _, records = queries.spec("Internal.DNSRecords").run(_remote_store(), {"service": "web"})
    assert [s[1] for s in records["services"]] == ["web-1"]  # db stays home
    assert [c[1] for c in records["checks"]] == ["serfHealth"]
    store = records_store(records)
    resolver = Resolver(RuntimeConfig(), "dc2", random.Random(1), 0.0)
    answer = resolver.resolve(store, Question("v1.web.service.dc2.consul.", QTYPE.SRV, "consul."))
    rendered = [str(rr) for g in answer.groups for rr in g.answer]
    assert any("80 web-node.node.dc2.consul." in r for r in rendered), rendered


def test_resolver_marks_other_datacenter_names_for_remote_lookup() -> None:
    from proconsul.config import RuntimeConfig

    resolver = Resolver(RuntimeConfig(), "dc1", random.Random(1), 0.0)
    for name, expected in (("web.service.dc2.consul.", ("dc2", "service", "web")),
                           ("v1.web.service.dc2.dc.consul.", ("dc2", "service", "web")),
                           ("_web._tcp.service.dc2.consul.", ("dc2", "service", "web")),
                           ("db1.node.dc2.consul.", ("dc2", "node", "db1"))):
        answer = resolver.resolve(Store(), Question(name, QTYPE.SRV if "_" in name else QTYPE.A, "consul."))
        assert answer.remote == expected, name
    assert resolver.resolve(Store(), Question("web.service.consul.", QTYPE.A, "consul.")).remote is None


# --- RTT order and WAN coordinate maps (Consul's GetDatacentersByDistance / GetDatacenterMaps) ---


def _coord(x: float) -> Coordinate:
    """A coordinate x seconds along the first axis (heights at the floor, no adjustment)."""
    return Coordinate((x,) + (0.0,) * 7, 0.1, 0.0, 1e-5)


def _peers(me: str, mine: Coordinate, others: dict[str, Coordinate]) -> PeerCoordinates:
    peers = PeerCoordinates(me)
    peers.client.set_coordinate(mine)
    peers._peers.update(others)
    return peers


def test_datacenters_sorted_by_median_rtt_local_first() -> None:
    members = [record("a", "dc1", "127.0.0.1"), record("a2", "dc1", "127.0.0.5"),
               record("far1", "dc2", "127.0.0.2"), record("far2", "dc2", "127.0.0.6"),
               record("far3", "dc2", "127.0.0.7"), record("near", "dc3", "127.0.0.3"),
               record("gone", "dc0", "127.0.0.8", STATUS_LEFT), record("nocoord", "aaa", "127.0.0.4")]
    peers = _peers("a.dc1", _coord(0.0), {
        "far1.dc2": _coord(0.010), "far2.dc2": _coord(0.200), "far3.dc2": _coord(0.300),
        "near.dc3": _coord(0.050), "gone.dc0": _coord(0.001),
    })
    router = Router("dc1", lambda: members, coordinates=lambda: peers)
    distances = router.distances()
    # dc2's median server is far2 (0.2 s), above dc3's only one (0.05 s).
    assert distances["dc1"] == 0.0 and distances["dc2"] == pytest.approx(0.2, abs=1e-3)
    assert distances["dc3"] == pytest.approx(0.05, abs=1e-3) and math.isinf(distances["aaa"])
    assert "dc0" not in distances  # its only server left
    assert router.datacenters() == ["dc1", "dc3", "dc2", "aaa"]
    # Coordinates move: the order follows.
    peers._peers["near.dc3"] = _coord(0.9)
    assert router.datacenters() == ["dc1", "dc2", "dc3", "aaa"]
    # No coordinates at all: ours first, the rest by name (every RTT unknown).
    assert Router("dc1", lambda: members).datacenters() == ["dc1", "aaa", "dc2", "dc3"]


def test_datacenter_maps_strip_suffix_and_skip_unknown() -> None:
    members = [record("a", "dc1", "127.0.0.1"), record("b", "dc2", "127.0.0.2"),
               record("c", "dc2", "127.0.0.3"), record("left", "dc2", "127.0.0.4", STATUS_LEFT),
               record("x", "dc3", "127.0.0.5")]
    peers = _peers("a.dc1", _coord(0.0), {"c.dc2": _coord(0.02), "b.dc2": _coord(0.01), "left.dc2": _coord(0.1)})
    router = Router("dc1", lambda: members, coordinates=lambda: peers)
    maps = router.datacenter_maps()
    assert [(m["Datacenter"], m["AreaID"], [c["Node"] for c in m["Coordinates"]]) for m in maps] == [
        ("dc1", "wan", ["a"]), ("dc2", "wan", ["b", "c"]),
    ]
    assert maps[1]["Coordinates"][0] == {"Node": "b", "Segment": "", "Coord": _coord(0.01).to_json()}
    assert Router("dc1", lambda: members).datacenter_maps() == []  # coordinates disabled
