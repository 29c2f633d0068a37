"""Raft.Join admission: only a live LAN server of this datacenter, at the address it advertises."""

from __future__ import annotations

from proconsul.gossip.core import Member, MemberState
from proconsul.serf.member import STATUS_ALIVE, STATUS_FAILED, STATUS_LEFT, MemberRecord
from proconsul.server.admission import lan_admission, split_host_port, voter_refusal


def record(name: str, host: str, status: int = STATUS_ALIVE, **tags: str) -> MemberRecord:
    base = {"role": "consul", "dc": "dc1", "id": f"id-{name}", "port": "8300"}
    base.update(tags)
    return MemberRecord(Member(name, (host, 8301), base, 1, MemberState.ALIVE, 0.0), status, 0.0)


MEMBERS = [
    record("s1", "10.0.0.1"),
    record("s2", "10.0.0.2", port="9300"),
    record("gone", "10.0.0.3", status=STATUS_FAILED),
    record("left", "10.0.0.4", status=STATUS_LEFT),
    record("client", "10.0.0.5", role="node"),
    record("other-dc", "10.0.0.6", dc="dc2"),
    record("v6", "fd00::7"),
]


def test_a_live_server_at_its_advertised_address_is_admitted() -> None:
    assert voter_refusal(MEMBERS, "dc1", "id-s1", "10.0.0.1:8300") == ""
    assert voter_refusal(MEMBERS, "dc1", "id-s2", "10.0.0.2:9300") == ""
    assert voter_refusal(MEMBERS, "dc1", "id-v6", "[fd00::7]:8300") == ""


def test_everything_else_is_refused_with_a_reason() -> None:
    cases = {
        ("id-stranger", "10.9.9.9:8300"): "no server with ID id-stranger is a member of the LAN pool",
        ("id-gone", "10.0.0.3:8300"): "not an alive member",
        ("id-left", "10.0.0.4:8300"): "not an alive member",
        ("id-client", "10.0.0.5:8300"): "is not a server of datacenter 'dc1'",
        ("id-other-dc", "10.0.0.6:8300"): "is not a server of datacenter 'dc1'",
        # An existing server's ID pointed at another address: the hijack of a voter.
        ("id-s1", "10.6.6.6:8300"): "advertises 10.0.0.1:8300, not 10.6.6.6:8300",
        ("id-s2", "10.0.0.2:8300"): "advertises 10.0.0.2:9300",
    }
    for (node_id, addr), reason in cases.items():
        assert reason in voter_refusal(MEMBERS, "dc1", node_id, addr), (node_id, addr)


def test_admission_reads_the_pool_at_each_request() -> None:
    members: list[MemberRecord] = []
    check = lan_admission(lambda: members, "dc1")
    assert check("id-s1", "10.0.0.1:8300") != ""
    members.append(MEMBERS[0])  # the server's gossip join arrived
    assert check("id-s1", "10.0.0.1:8300") == ""


def test_split_host_port() -> None:
    assert split_host_port("10.0.0.1:8300") == ("10.0.0.1", "8300")
    assert split_host_port("[fd00::1]:8300") == ("fd00::1", "8300")
