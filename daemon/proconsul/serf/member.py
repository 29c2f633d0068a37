"""One member of a serf pool (the LAN pool, a server's WAN pool) as the agent reports it.

Owns serf's member statuses (the numbers ``/v1/agent/members`` shows) and how a gossip member
state maps to one, the record a pool keeps per member (member, status, since when), the
tombstone time for left members, and a member's JSON in ``/v1/agent/members``. Pure data: the
pools (:mod:`proconsul.serf.pool`) and their reaper (:mod:`proconsul.serf.reconnect`) build on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proconsul.gossip.core import Member, MemberState

# Serf member status numbers (serf.MemberStatus), as /v1/agent/members reports them.
STATUS_NONE, STATUS_ALIVE, STATUS_LEAVING, STATUS_LEFT, STATUS_FAILED = 0, 1, 2, 3, 4
# Serf's TombstoneTimeout: how long a left member stays listed.
TOMBSTONE_TIMEOUT_S = 24 * 3600.0
# The memberlist and serf protocol versions every member reports (Consul's, which tools check).
PROTOCOL_VERSIONS = {
    "ProtocolMin": 1,
    "ProtocolMax": 5,
    "ProtocolCur": 2,
    "DelegateMin": 2,
    "DelegateMax": 5,
    "DelegateCur": 4,
}


@dataclass
class MemberRecord:
    member: Member
    status: int
    since: float  # wall clock of the last status change


def member_status(state: MemberState) -> int:
    """The serf status of a member in gossip state `state` (a suspect member is still alive)."""
    if state in (MemberState.ALIVE, MemberState.SUSPECT):
        return STATUS_ALIVE
    if state == MemberState.LEFT:
        return STATUS_LEFT
    return STATUS_FAILED


def member_json(rec: MemberRecord) -> dict[str, Any]:
    m = rec.member
    return {
        "Name": m.name,
        "Addr": m.addr[0],
        "Port": m.addr[1],
        "Tags": dict(m.tags),
        "Status": rec.status,
        **PROTOCOL_VERSIONS,
    }
