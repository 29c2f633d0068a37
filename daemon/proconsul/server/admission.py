"""Who the leader lets into the Raft configuration: live servers of this datacenter's LAN pool.

Owns the decision behind `Raft.Join`. Without TLS, anyone who reaches the server port could ask
the leader to add a voter (or to point an existing voter's ID at another address) and take the
cluster's quorum away. The LAN pool is the identity the cluster already trusts (joining it needs
the gossip key when `encrypt` is set), so, as Consul's leader only adds servers it sees in the LAN
pool, a join is admitted only for a member that is alive, is a server (`role=consul`) of this
datacenter, carries the requested node ID in its `id` tag, and advertises exactly the requested
address (its gossip host and its `port` tag). Anything else is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

from proconsul.serf.member import STATUS_ALIVE, MemberRecord


def split_host_port(addr: str) -> tuple[str, str]:
    """("10.0.0.1", "8300") from "10.0.0.1:8300"; IPv6 hosts may be bracketed."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), port


def voter_refusal(members: list[MemberRecord], datacenter: str, node_id: str, addr: str) -> str:
    """Why `node_id` at `addr` may not become a voter, or "" when a live LAN server vouches for it."""
    host, port = split_host_port(addr)
    for record in members:
        tags = record.member.tags
        if tags.get("id") != node_id:
            continue
        if record.status != STATUS_ALIVE:
            return f"server {node_id} is not an alive member of the LAN pool"
        if tags.get("role") != "consul" or tags.get("dc") != datacenter:
            return f"node {node_id} is not a server of datacenter {datacenter!r} in the LAN pool"
        if (record.member.addr[0], tags.get("port")) != (host, port):
            return f"server {node_id} advertises {record.member.addr[0]}:{tags.get('port')}, not {addr}"
        return ""
    return f"no server with ID {node_id} is a member of the LAN pool"


def lan_admission(members: Callable[[], list[MemberRecord]], datacenter: str) -> Callable[[str, str], str]:
    """The check `Server` runs on `Raft.Join`, reading the LAN pool at the time of each request."""
    return lambda node_id, addr: voter_refusal(members(), datacenter, node_id, addr)
