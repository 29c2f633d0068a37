"""Leader-only duties: what the cluster leader writes into the catalog on its own behalf.

Owns the leader's reconciliation of servers into the catalog: each server node carries the
`serfHealth` check and the `consul` service (port `ports.server`), which DNS
(`consul.service.consul`) and clients use to find servers; and the membership reconcile loop
(`reconcile_loop`: alive/failed/left/reaped LAN members -> serfHealth status, deregistration),
which reads the LAN pool through the narrow `LANMembers` protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from proconsul.durations import parse_duration
from proconsul.serf.member import STATUS_ALIVE, STATUS_FAILED, STATUS_LEFT, MemberRecord
from proconsul.server.rpc import Server
from proconsul.state import commands
from proconsul.state.records import HealthCheck, Node, ServiceInstance, Session
from proconsul.structs import HEALTH_CRITICAL, HEALTH_PASSING, SERF_CHECK_ID, SERF_CHECK_NAME

logger = logging.getLogger(__name__)

CONSUL_SERVICE = "consul"


async def reconcile_alive_server(server: Server, node: Node, server_port: int, meta: dict[str, str]) -> None:
    """Register `node` as an alive server: node record, `consul` service, passing serfHealth."""
    service = ServiceInstance(
        node=node.node,
        id=CONSUL_SERVICE,
        service=CONSUL_SERVICE,
        address="",
        port=server_port,
        meta=meta,
    )
    check = HealthCheck(
        node=node.node,
        check_id=SERF_CHECK_ID,
        name=SERF_CHECK_NAME,
        status=HEALTH_PASSING,
        output="Agent alive and reachable",
    )
    await server.write(commands.Register(node=node, service=service, checks=(check,)))
    logger.info("leader: member %s is an alive server; catalog reconciled", node.node)


# Consul expires a session at TTL x 2, so a client renewing on time never races the leader.
SESSION_TTL_MULTIPLIER = 2


class SessionTimers:
    """Leader-side TTL timers: a session not renewed within TTL x 2 is destroyed through the log.

    Timers live only on the leader and are re-armed for every TTL session when leadership is
    gained, so a failover extends TTLs rather than expiring sessions early (as Consul does).
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def arm(self, session: Session) -> None:
        if not session.ttl:
            return
        self.disarm(session.id)
        ttl_s = parse_duration(session.ttl) * SESSION_TTL_MULTIPLIER
        loop = asyncio.get_running_loop()
        self._timers[session.id] = loop.call_later(ttl_s, self._expire, session.id)

    def arm_all(self, sessions: list[Session]) -> None:
        for session in sessions:
            self.arm(session)

    def disarm(self, session_id: str) -> None:
        handle = self._timers.pop(session_id, None)
        if handle is not None:
            handle.cancel()

    def _expire(self, session_id: str) -> None:
        self._timers.pop(session_id, None)
        task = asyncio.get_running_loop().create_task(self._destroy(session_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _destroy(self, session_id: str) -> None:
        try:
            await self.server.write(commands.SessionOp("destroy", Session(id=session_id)))
            logger.info("leader: session %s expired (TTL) and was invalidated", session_id)
        except Exception as exc:  # the next leader re-arms; log and move on
            logger.warning("leader: could not expire session %s: %s", session_id, exc)

    def stop(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()


# --- gossip membership -> catalog (Consul's leader reconcile) --------------------------------

SERF_ALIVE_OUTPUT = "Agent alive and reachable"
SERF_FAILED_OUTPUT = "Agent not live or unreachable"


async def reconcile_member(server: Server, name: str, addr: str, tags: dict[str, str], status: int,
                           self_name: str) -> bool:
    """Bring one gossip member's catalog state in line with its status; True if it wrote.

    alive (1) -> node registered with ``serfHealth`` passing (servers also get the ``consul``
    service); failed (4) -> ``serfHealth`` critical; left (3) -> the node is deregistered
    (never ourselves). Members of other datacenters or with other roles are ignored. Writes
    only when something differs, so it is cheap to run over every member on every pass.
    """
    store = server.store
    if tags.get("dc") != server.datacenter or tags.get("role") not in ("consul", "node"):
        return False
    existing = store.nodes.get(name)
    serf = store.checks.get(name, {}).get(SERF_CHECK_ID)
    if status == STATUS_LEFT:
        if name == self_name or existing is None:
            return False
        await server.write(commands.Deregister(name))
        logger.info("leader: member %s left, deregistered", name)
        return True
    if status == STATUS_ALIVE:
        wanted, output = HEALTH_PASSING, SERF_ALIVE_OUTPUT
    elif status == STATUS_FAILED:
        wanted, output = HEALTH_CRITICAL, SERF_FAILED_OUTPUT
    else:
        return False
    is_server = tags.get("role") == "consul"
    has_consul = CONSUL_SERVICE in store.services.get(name, {})
    if existing is not None and serf is not None and serf.status == wanted and (not is_server or has_consul):
        return False
    node = Node(node=name, id=tags.get("id", ""), address=addr, datacenter=server.datacenter)
    service = None
    if is_server and not has_consul and wanted == HEALTH_PASSING:
        service = ServiceInstance(node=name, id=CONSUL_SERVICE, service=CONSUL_SERVICE, address="",
                                  port=int(tags.get("port", "8300") or 8300))
    check = HealthCheck(node=name, check_id=SERF_CHECK_ID, name=SERF_CHECK_NAME, status=wanted, output=output)
    await server.write(commands.Register(node=node, service=service, checks=(check,),
                                         skip_node_update=existing is not None))
    logger.info("leader: member %s is %s; serfHealth %s", name, "alive" if wanted == HEALTH_PASSING else "failed",
                wanted)
    return True


async def reconcile_non_members(server: Server, members: set[str], self_name: str) -> list[str]:
    """Deregister catalog nodes that carry ``serfHealth`` but are not gossip members; their names.

    As Consul's leader reconcile: ``serfHealth`` is only ever written for a gossip member, so a
    node carrying it that the pool does not know is a ghost: brought in by a snapshot restored
    from another cluster, or left behind by a leave this leader never saw. Nodes without the
    check (registered through the catalog API, external services) are not the pool's to reap.
    """
    store = server.store
    ghosts = [
        name
        for name in sorted(store.checks)
        if SERF_CHECK_ID in store.checks[name] and name not in members and name != self_name
    ]
    for name in ghosts:
        await server.write(commands.Deregister(name))
        logger.info("leader: node %s has serfHealth but is not a gossip member; deregistered", name)
    return ghosts


class LANMembers(Protocol):
    """What the reconcile loop reads of the LAN pool (`proconsul.serf.lan.Membership`)."""

    changed: asyncio.Event  # set on every member change; the loop clears it
    reaped: dict[str, tuple[MemberRecord, float]]  # name -> (record, when reaped); the loop pops

    def members(self) -> list[MemberRecord]: ...


Reconcile = Callable[[Server, str, str, dict[str, str], int, str], Awaitable[bool]]


async def reconcile_loop(members: LANMembers, server: Server, is_leader: Callable[[], bool], self_name: str,
                         reconcile: Reconcile = reconcile_member) -> None:
    """Leader only: every member event (and at least every few seconds, so a new leader
    catches up at once) turns gossip membership into catalog state."""
    while True:
        try:
            async with asyncio.timeout(2.0):
                await members.changed.wait()
        except TimeoutError:
            pass
        members.changed.clear()
        if not is_leader():
            continue
        await _reconcile_reaped(members, server, self_name, reconcile)
        for rec in members.members():
            m = rec.member
            try:
                await reconcile(server, m.name, m.addr[0], dict(m.tags), rec.status, self_name)
            except Exception as exc:  # no leader, lost leadership: the next pass retries
                logger.debug("leader: reconcile of %s failed: %s", m.name, exc)
        known = {rec.member.name for rec in members.members()} | set(members.reaped)
        try:
            await reconcile_non_members(server, known, self_name)
        except Exception as exc:  # no leader, lost leadership: the next pass retries
            logger.debug("leader: reconcile of non-members failed: %s", exc)


async def _reconcile_reaped(members: LANMembers, server: Server, self_name: str, reconcile: Reconcile) -> None:
    """Consul's handleReapMember: a reaped member's node leaves the catalog (never ours)."""
    for name in sorted(members.reaped):
        rec, _ = members.reaped[name]
        m = rec.member
        try:
            # Deregistered exactly as a left member is; a node already gone writes nothing.
            if await reconcile(server, m.name, m.addr[0], dict(m.tags), STATUS_LEFT, self_name):
                logger.info("leader: member %s was reaped; deregistered", name)
        except Exception as exc:  # no leader, lost leadership: the next pass retries
            logger.debug("leader: reconcile of reaped %s failed: %s", name, exc)
            continue
        members.reaped.pop(name, None)
