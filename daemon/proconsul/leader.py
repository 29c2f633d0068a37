"""Leader-only duties: what the cluster leader writes into the catalog on its own behalf.

Owns the leader's reconciliation of servers into the catalog: each server node carries the
`serfHealth` check and the `consul` service (port `ports.server`), which DNS
(`consul.service.consul`) and clients use to find servers. The gossip issue extends this into
the full membership reconcile loop (alive/failed/left members -> serfHealth status, reaping).
"""

from __future__ import annotations

import logging

from proconsul.rpc import Server
from proconsul.state import commands
from proconsul.state.records import HealthCheck, Node, ServiceInstance
from proconsul.structs import HEALTH_PASSING, SERF_CHECK_ID, SERF_CHECK_NAME

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
