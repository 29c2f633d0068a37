"""The LAN -> WAN join flooder (proconsul.server.flood), driven with member records and a
recording join function: no sockets.

Which servers are flood-joined (alive servers of our datacenter missing from the WAN pool, at
their LAN host and advertised WAN join port; never clients, other datacenters, failed members or
servers without the port), and when (on a LAN server join/update, on the periodic pass, never
while the agent leaves; passes do not overlap and triggers coalesce).
"""

from __future__ import annotations

import asyncio

from helpers import wait_until
from proconsul.gossip.core import Member, MemberState
from proconsul.serf.member import STATUS_ALIVE, STATUS_FAILED, STATUS_LEFT, MemberRecord
from proconsul.server.flood import WAN_JOIN_PORT_TAG, FloodTarget, WANFlooder, flood_targets
from proconsul.server.wan import wan_name


def lan(name: str, ip: str, dc: str = "dc1", role: str = "consul", status: int = STATUS_ALIVE,
        wan_port: str | None = "8302", **extra: str) -> MemberRecord:
    tags = {"role": role, "dc": dc, "port": "8300", **extra}
    if wan_port is not None and role == "consul":
        tags[WAN_JOIN_PORT_TAG] = wan_port
    return MemberRecord(Member(name, (ip, 8301), tags, 1, MemberState.ALIVE, 0.0), status, 0.0)


def wan(name: str, dc: str, ip: str, status: int = STATUS_ALIVE) -> MemberRecord:
    tags = {"role": "consul", "dc": dc, "port": "8300"}
    return MemberRecord(Member(wan_name(name, dc), (ip, 8302), tags, 1, MemberState.ALIVE, 0.0), status, 0.0)


# --------------------------------------------------------------------------- flood_targets


def test_servers_missing_from_wan_are_targets_at_lan_host_and_wan_join_port() -> None:
    lan_pool = [lan("s1", "127.0.0.1"), lan("s3", "127.0.0.3", wan_port="9302"), lan("s2", "127.0.0.2")]
    wan_pool = [wan("s1", "dc1", "127.0.0.1")]
    assert flood_targets("dc1", lan_pool, wan_pool) == [
        FloodTarget("s2", "127.0.0.2:8302"),
        FloodTarget("s3", "127.0.0.3:9302"),
    ]


def test_nothing_to_do_when_every_server_is_in_wan() -> None:
    lan_pool = [lan("s1", "127.0.0.1"), lan("s2", "127.0.0.2")]
    wan_pool = [wan("s1", "dc1", "127.0.0.1"), wan("s2", "dc1", "127.0.0.2"), wan("x", "dc2", "127.0.1.1")]
    assert flood_targets("dc1", lan_pool, wan_pool) == []


def test_client_agents_are_never_targets() -> None:
    client = lan("c1", "127.0.0.9", role="node", **{WAN_JOIN_PORT_TAG: "8302"})  # even with a port tag
    assert flood_targets("dc1", [client, lan("s1", "127.0.0.1")], []) == [FloodTarget("s1", "127.0.0.1:8302")]


def test_other_datacenters_segments_and_non_alive_lan_members_are_skipped() -> None:
    lan_pool = [
        lan("other-dc", "127.0.0.4", dc="dc2"),
        lan("segmented", "127.0.0.5", segment="alpha"),
        lan("failed", "127.0.0.6", status=STATUS_FAILED),
        lan("left", "127.0.0.7", status=STATUS_LEFT),
    ]
    assert flood_targets("dc1", lan_pool, []) == []


def test_servers_without_a_usable_wan_join_port_are_skipped() -> None:
    lan_pool = [lan("none", "127.0.0.1", wan_port=None), lan("zero", "127.0.0.2", wan_port="0"),
                lan("junk", "127.0.0.3", wan_port="x"), lan("big", "127.0.0.4", wan_port="70000")]
    assert flood_targets("dc1", lan_pool, []) == []


def test_a_failed_or_left_wan_member_is_joined_again() -> None:
    # Only alive WAN members count as joined: the LAN side heals a WAN failure.
    lan_pool = [lan("s2", "127.0.0.2"), lan("s3", "127.0.0.3")]
    wan_pool = [wan("s2", "dc1", "127.0.0.2", STATUS_FAILED), wan("s3", "dc1", "127.0.0.3", STATUS_LEFT)]
    assert [t.name for t in flood_targets("dc1", lan_pool, wan_pool)] == ["s2", "s3"]


def test_a_same_named_server_of_another_datacenter_does_not_count_as_joined() -> None:
    # s2.dc2 in the WAN pool is not our s2.
    assert flood_targets("dc1", [lan("s2", "127.0.0.2")], [wan("s2", "dc2", "127.0.1.2")]) == [
        FloodTarget("s2", "127.0.0.2:8302")
    ]


def test_ipv6_hosts_are_bracketed() -> None:
    rec = lan("s6", "::1")
    assert flood_targets("dc1", [rec], []) == [FloodTarget("s6", "[::1]:8302")]


# --------------------------------------------------------------------------- WANFlooder


class FakePools:
    """The two pools' tables, and a WAN join that records its addresses and makes the joined
    server an alive WAN member (as a successful WAN join does)."""

    def __init__(self, lan_pool: list[MemberRecord]) -> None:
        self.lan = lan_pool
        self.wan: list[MemberRecord] = []
        self.joins: list[list[str]] = []
        self.unreachable: set[str] = set()
        self.broken: set[str] = set()
        self.gate: asyncio.Event | None = None  # when set: joins wait on it

    async def join(self, addrs: list[str]) -> int:
        self.joins.append(addrs)
        if self.gate is not None:
            await self.gate.wait()
        if addrs[0] in self.broken:
            raise OSError("no route")
        if addrs[0] in self.unreachable:
            return 0
        for rec in self.lan:
            if f"{rec.member.addr[0]}:{rec.member.tags[WAN_JOIN_PORT_TAG]}" == addrs[0]:
                self.wan.append(wan(rec.member.name, rec.member.tags["dc"], rec.member.addr[0]))
        return 1

    def flooder(self, active: bool = True, interval_s: float = 3600.0) -> WANFlooder:
        # An hour between periodic passes: within a test only a trigger causes one.
        return WANFlooder("dc1", lambda: self.lan, lambda: self.wan, self.join,
                          active=lambda: active, interval_s=lambda: interval_s)


async def test_flood_once_joins_each_missing_server_separately_and_reports_who_answered() -> None:
    pools = FakePools([lan("s1", "127.0.0.1"), lan("s2", "127.0.0.2"), lan("s3", "127.0.0.3"),
                       lan("s4", "127.0.0.4")])
    pools.unreachable.add("127.0.0.2:8302")
    pools.broken.add("127.0.0.3:8302")
    joined = await pools.flooder().flood_once()
    assert pools.joins == [["127.0.0.1:8302"], ["127.0.0.2:8302"], ["127.0.0.3:8302"], ["127.0.0.4:8302"]]
    assert [t.name for t in joined] == ["s1", "s4"]
    # The next pass retries only the ones still missing.
    pools.joins.clear()
    pools.unreachable.clear()
    await pools.flooder().flood_once()
    assert pools.joins == [["127.0.0.2:8302"], ["127.0.0.3:8302"]]


async def test_a_lan_server_join_triggers_a_pass() -> None:
    pools = FakePools([lan("s1", "127.0.0.1")])
    pools.wan.append(wan("s1", "dc1", "127.0.0.1"))
    flooder = pools.flooder()
    task = asyncio.create_task(flooder.run())
    try:
        new = lan("s2", "127.0.0.2")
        pools.lan.append(new)
        flooder.on_lan_member(new)
        await wait_until(lambda: flooder.passes >= 1, timeout=30)
        assert pools.joins == [["127.0.0.2:8302"]]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_client_and_failed_server_events_do_not_trigger() -> None:
    pools = FakePools([lan("s2", "127.0.0.2")])  # missing from WAN: any pass would join it
    flooder = pools.flooder()
    flooder.on_lan_member(lan("c1", "127.0.0.9", role="node"))
    flooder.on_lan_member(lan("s3", "127.0.0.3", status=STATUS_FAILED))
    flooder.on_lan_member(lan("x1", "127.0.1.1", dc="dc2"))
    assert not flooder.pending
    task = asyncio.create_task(flooder.run())
    try:
        # A server join afterwards is what wakes it; the pass count shows there was exactly one.
        flooder.on_lan_member(lan("s2", "127.0.0.2"))
        await wait_until(lambda: flooder.passes >= 1, timeout=30)
        assert flooder.passes == 1 and pools.joins == [["127.0.0.2:8302"]]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_periodic_pass_without_any_event() -> None:
    pools = FakePools([lan("s2", "127.0.0.2")])
    flooder = pools.flooder(interval_s=0.05)
    task = asyncio.create_task(flooder.run())
    try:
        await wait_until(lambda: pools.joins, timeout=30)
        assert pools.joins[0] == ["127.0.0.2:8302"]
        # Once joined, later periodic passes find nothing to do.
        await wait_until(lambda: flooder.passes >= 3, timeout=30)
        assert pools.joins == [["127.0.0.2:8302"]]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_no_pass_joins_while_the_agent_leaves() -> None:
    pools = FakePools([lan("s2", "127.0.0.2")])
    flooder = pools.flooder(active=False)
    task = asyncio.create_task(flooder.run())
    try:
        flooder.notify()
        await wait_until(lambda: flooder.passes >= 1, timeout=30)
        assert pools.joins == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_triggers_during_a_pass_coalesce_into_one_more_pass() -> None:
    pools = FakePools([lan("s2", "127.0.0.2")])
    pools.gate = asyncio.Event()
    flooder = pools.flooder()
    task = asyncio.create_task(flooder.run())
    try:
        flooder.notify()
        await wait_until(lambda: pools.joins, timeout=30)  # the first pass is inside its join
        pools.lan.append(lan("s3", "127.0.0.3"))
        for _ in range(5):
            flooder.notify()
        pools.gate.set()
        await wait_until(lambda: flooder.passes >= 2, timeout=30)
        assert pools.joins == [["127.0.0.2:8302"], ["127.0.0.3:8302"]]
        # No third pass is pending: the five triggers were one.
        assert not flooder.pending
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
