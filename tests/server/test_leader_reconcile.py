"""The leader's reconcile of catalog nodes that the LAN pool does not know (ghosts)."""

from __future__ import annotations

import asyncio

from proconsul.server.leader import reconcile_member, reconcile_non_members
from proconsul.server.rpc import Server
from proconsul.server.single import SingleNodeLog
from proconsul.state import commands
from proconsul.state.fsm import FSM
from proconsul.state.records import Node, ServiceInstance
from proconsul.state.store import Store

ALIVE = 1
SERVER_TAGS = {"dc": "dc1", "role": "consul", "port": "8300", "id": ""}


def test_nodes_with_serf_health_that_are_not_members_are_deregistered() -> None:
    async def scenario() -> None:
        store = Store()
        server = Server(store, SingleNodeLog(FSM(store), "127.0.0.1:8300", "id", "s1"), "dc1")
        for name in ("s1", "s2", "ghost"):  # ghost: a restored snapshot's server, never in our pool
            await reconcile_member(server, name, "127.0.0.1", SERVER_TAGS, ALIVE, "s1")
        # A node registered through the catalog API has no serfHealth and is left alone.
        await server.write(commands.Register(Node("external", address="127.0.0.2"),
                                             ServiceInstance("external", "db", "db")))
        assert await reconcile_non_members(server, {"s1", "s2"}, "s1") == ["ghost"]
        assert sorted(store.nodes) == ["external", "s1", "s2"]
        assert [s.node for s in store.service_instances("consul")] == ["s1", "s2"]
        # Ourselves, even before the pool lists us, are never reaped; a second pass writes nothing.
        assert await reconcile_non_members(server, {"s2"}, "s1") == []

    asyncio.run(scenario())
