"""The server's RPC surface records Consul's rpc.* and apply metrics into the registry it is given."""

from __future__ import annotations

import pytest
from proconsul.metrics import Metrics
from proconsul.rpc_api import QueryOptions, RPCError
from proconsul.server.rpc import Server
from proconsul.server.single import SingleNodeLog
from proconsul.state import commands
from proconsul.state.fsm import FSM
from proconsul.state.records import DirEntry
from proconsul.state.store import Store


def _total(m: Metrics, name: str) -> float:
    series = m.series[(f"consul.{name}", ())]
    return series.count if series.family.kind == "sample" else series.total


async def test_requests_queries_applies_and_errors_are_counted() -> None:
    metrics = Metrics()
    store = Store()
    server = Server(store, SingleNodeLog(FSM(store), "127.0.0.1:8300", "id", "s1"), "dc1", metrics=metrics)
    await server.write(commands.KVS(commands.KVOp.SET, DirEntry(key="k", value=b"v")))
    await server.query("KVS.Get", {"key": "k"}, QueryOptions())
    assert _total(metrics, "rpc.request") == 2
    assert _total(metrics, "rpc.query") == 1
    assert _total(metrics, "kvs.apply") == 1
    assert _total(metrics, "txn.apply") == 0
    assert _total(metrics, "rpc.request_error") == 0
    with pytest.raises(RPCError):
        await server.handle_rpc("No.Such", None)
    assert _total(metrics, "rpc.request_error") == 1


async def test_prepared_query_applies_are_timed() -> None:
    from proconsul.state import prepared_query as pq
    from proconsul.state.records import PreparedQuery

    metrics = Metrics()
    store = Store()
    server = Server(store, SingleNodeLog(FSM(store), "127.0.0.1:8300", "id", "s1"), "dc1", metrics=metrics)
    definition = pq.normalize({"Name": "q", "Service": {"Service": "web"}})
    query = PreparedQuery("11111111-1111-1111-1111-111111111111", "q", "", definition)
    await server.write(commands.PreparedQueryOp("create", query))
    await server.write(commands.PreparedQueryOp("delete", query))
    assert _total(metrics, "prepared-query.apply") == 2
