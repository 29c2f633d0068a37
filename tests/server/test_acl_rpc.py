"""ACLs on server RPC, deterministically (server/acl_rpc.py, server/acl_reads.py).

A follower `Server` forwards writes and reads to a leader `Server` through a msgpack loopback
pool (as in test_write_forwarding): each write carries the token of the request that made it (or the
agent token for the agent's own work), the leader authorises each one with it (a refused write
in a batch is answered in its place, the others apply), and a forwarded read is checked and
filtered on the leader with the caller's token. Every named read has an ACL rule or is
management-only by decision; filtering an answer twice changes nothing, and the HTTP gate
filters exactly as the server does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
from proconsul.acl.authorizer import Authorizer, PermissionDenied
from proconsul.acl.records import ANONYMOUS_ACCESSOR
from proconsul.acl.rules import READ, WRITE, Rules
from proconsul.http import acl_gate
from proconsul.rpc_api import CALLER_TOKEN, QueryOptions, RPCError
from proconsul.server import acl_authz, acl_reads, queries
from proconsul.server.acl_resolver import ACLNotFound
from proconsul.server.acl_rpc import RPCACL
from proconsul.server.forwarding import WriteForwarder
from proconsul.server.remote import ClientConsensus
from proconsul.server.rpc import Server
from proconsul.server.single import SingleNodeLog
from proconsul.state import commands
from proconsul.state.fsm import FSM
from proconsul.state.records import DirEntry, Node, ServiceInstance
from proconsul.state.store import Store
from proconsul.transport import RemoteError

LEADER = "127.0.0.1:8300"


def kv_set(key: str, value: bytes = b"v") -> commands.KVS:
    return commands.KVS(commands.KVOp.SET, DirEntry(key, value))


class LoopbackPool:
    """Calls go through msgpack as on the wire; the far side's error comes back as the
    transport's RemoteError with its text."""

    def __init__(self, servers: dict[str, Any]) -> None:
        self.servers = servers
        self.calls: list[tuple[str, str, Any]] = []

    async def call(self, address: str, method: str, body: Any, timeout_s: float = 30.0) -> Any:
        self.calls.append((address, method, body))
        body = msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False)
        try:
            reply = await self.servers[address].handle_rpc(method, body)
        except Exception as exc:
            raise RemoteError(str(exc) or type(exc).__name__) from None
        return msgpack.unpackb(msgpack.packb(reply, use_bin_type=True), raw=False)


class Answering:
    """A leader that answers every batch with success, recording the bodies."""

    async def handle_rpc(self, method: str, body: Any) -> Any:
        return {"results": [[1, True]] * len(body["commands"])}


MGMT, APP, AGENT = "mgmt-secret", "app-secret", "agent-secret"
AUTHZ = {
    MGMT: Authorizer(Rules(), False, True, "mgmt"),
    APP: Authorizer(Rules(prefix={"key": {"app/": WRITE}, "node": {"": READ}, "service": {"web": READ}}), False, False, "app"),
    AGENT: Authorizer(Rules(prefix={"key": {"agent/": WRITE}}), False, False, "agent"),
    "anonymous": Authorizer(Rules(), False, False, ANONYMOUS_ACCESSOR),
}


async def resolve(secret: str) -> Authorizer:
    if secret not in AUTHZ:
        raise ACLNotFound()
    return AUTHZ[secret]


async def authorize_write(secret: str, command: Any) -> None:
    try:
        acl_authz.authorize(await resolve(secret or "anonymous"), command)
    except (ACLNotFound, PermissionDenied) as exc:
        raise RPCError(str(exc)) from None


def acl_cluster() -> tuple[Server, Server, LoopbackPool]:
    store = Store()
    leader = Server(store, SingleNodeLog(FSM(store), LEADER, "id-leader", "leader"), "dc1",
                    authorize_write=authorize_write, acl_gate=RPCACL(resolve, lambda: {}))
    pool = LoopbackPool({LEADER: leader})
    view = ClientConsensus()  # a follower's view of the log: never leads
    view.learn(LEADER)
    follower = Server(Store(), view, "dc1", pool=pool, rpc_hold_timeout_s=30.0,
                      authorize_write=authorize_write, acl_gate=RPCACL(resolve, lambda: {"agent": AGENT}))
    return leader, follower, pool


async def _as(token: str | None, work: Any) -> Any:
    async def run() -> Any:
        CALLER_TOKEN.set(token)
        return await work()

    return await asyncio.create_task(run())


async def test_forwarded_writes_carry_their_token_and_the_leader_authorises_each() -> None:
    leader, follower, pool = acl_cluster()
    got = await asyncio.gather(
        _as(APP, lambda: follower.write(kv_set("app/a"))),
        _as(APP, lambda: follower.write(kv_set("secret/a"))),
        _as(MGMT, lambda: follower.write(kv_set("secret/b"))),
        _as(None, lambda: follower.write(kv_set("agent/x"))),  # the agent's own: its agent token
        _as(None, lambda: follower.write(kv_set("other/x"))),
        _as("deleted", lambda: follower.write(kv_set("app/b"))),
        return_exceptions=True,
    )
    assert [(m, len(b["commands"])) for _, m, b in pool.calls] == [("Raft.ApplyBatch", 6)]  # one batch, as without ACLs
    assert [isinstance(g, RPCError) for g in got] == [False, True, False, False, True, True]
    assert "lacks permission 'key:write' on \"secret/a\"" in str(got[1])
    assert "token with AccessorID 'agent'" in str(got[4]) and str(got[5]) == "ACL not found"
    keys = {k for k in ("app/a", "secret/a", "secret/b", "agent/x", "other/x", "app/b")
            if leader.store.kv_get(k)[1] is not None}
    assert keys == {"app/a", "secret/b", "agent/x"}


async def test_a_batch_without_tokens_is_anonymous_on_the_leader() -> None:
    leader, _, _ = acl_cluster()
    body = {"commands": [commands.encode(kv_set("app/a")), b"\x00junk"]}
    results = (await leader.handle_rpc("Raft.ApplyBatch", body))["results"]
    assert f"token with AccessorID '{ANONYMOUS_ACCESSOR}'" in results[0] and isinstance(results[1], str)
    with pytest.raises(RPCError, match="Permission denied"):
        await leader.handle_rpc("Raft.Apply", commands.encode(kv_set("app/a")))
    reply = await leader.handle_rpc("Raft.Apply", {"command": commands.encode(kv_set("app/a")), "token": APP})
    assert reply["result"] is True and leader.store.kv_get("app/a")[1] is not None


async def test_the_forwarder_sends_tokens_only_when_given() -> None:
    pool = LoopbackPool({LEADER: Answering()})
    fwd = WriteForwarder(pool)
    await asyncio.gather(fwd.submit(LEADER, b"a"), fwd.submit(LEADER, b"b"))
    await asyncio.gather(fwd.submit(LEADER, b"c", "t1"), fwd.submit(LEADER, b"d", ""))
    assert [body for _, _, body in pool.calls] == [{"commands": [b"a", b"b"]},
                                                    {"commands": [b"c", b"d"], "tokens": ["t1", ""]}]
    assert not fwd._tokens  # forgotten once answered


async def test_forwarded_reads_are_checked_and_filtered_on_the_leader() -> None:
    leader, follower, _ = acl_cluster()
    for key in ("app/a", "secret/a"):
        await _as(MGMT, lambda key=key: follower.write(kv_set(key)))
    meta, listed = await _as(APP, lambda: follower.query("KVS.List", {"prefix": ""}, QueryOptions()))
    assert [e["Key"] for e in listed] == ["app/a"] and meta.results_filtered
    meta, listed = await _as(MGMT, lambda: follower.query("KVS.List", {"prefix": ""}, QueryOptions()))
    assert len(listed) == 2 and not meta.results_filtered
    with pytest.raises(RPCError, match="lacks permission 'key:read' on \"secret/a\""):
        await _as(APP, lambda: follower.query("KVS.Get", {"key": "secret/a"}, QueryOptions()))
    with pytest.raises(RPCError, match="acl:read"):
        await _as(APP, lambda: follower.query("ACL.TokenList", {}, QueryOptions()))
    # Resolving a token needs none: the secret is the proof.
    _, found = await _as("", lambda: follower.query("ACL.Resolve", {"secret": "nope"}, QueryOptions()))
    assert found["token"] is None


def test_every_read_has_a_rule_or_needs_management() -> None:
    for name in queries.READS:
        assert (name in acl_reads.RULES) + (name in acl_reads.TOKENLESS) == 1, name
    app = AUTHZ[APP]
    for name in {"No.Such"}:
        with pytest.raises(PermissionDenied):
            acl_reads.check(app, name, {}, APP)
    acl_reads.check(AUTHZ[MGMT], "No.Such", {}, MGMT)


def test_filtering_twice_changes_nothing_and_matches_the_http_gate() -> None:
    a = AUTHZ[APP]
    services = [{"Node": "n1", "ServiceName": "web"}, {"Node": "n1", "ServiceName": "db"}]
    health = [{"Node": {"Node": "n1"}, "Service": {"Service": s}} for s in ("web", "db")]
    checks = [{"Node": "n1", "ServiceName": ""}, {"Node": "n1", "ServiceName": "db"}]
    node = {"Node": {"Node": "n1"}, "Services": [{"Service": "web"}, {"Service": "db"}]}
    cases = [
        ("KVS.List", "/v1/kv/{key}", [{"Key": "app/a"}, {"Key": "secret/a"}]),
        ("KVS.ListKeys", "/v1/kv/{key}", ["app/a", "secret/a"]),
        ("Catalog.ServiceNodes", "/v1/catalog/service/{service}", services),
        ("Health.ServiceNodes", "/v1/health/service/{service}", health),
        ("Health.NodeChecks", "/v1/health/node/{node}", checks),
        ("Catalog.NodeServices", "/v1/catalog/node-services/{node}", node),
        ("Catalog.ListServices", "/v1/catalog/services", {"web": [], "db": ["x"]}),
    ]
    for name, route, body in cases:
        once, filtered = acl_reads.filter_result(a, name, {}, body)
        assert filtered, name
        assert acl_reads.filter_result(a, name, {}, once) == (once, False), name
        assert acl_gate.FILTERS[route](None, a, body)[0] == once, name  # type: ignore[arg-type]
        assert acl_gate.FILTERS[route](None, a, once) == (once, False), name  # type: ignore[arg-type]


def test_prepared_queries_over_rpc_follow_query_rules() -> None:
    """List/Get/Explain answer what `query` read covers (tokens hidden without acl:write, unnamed
    queries never); an execution with a token of its own is filtered by that token's rights."""
    reader = Authorizer(Rules(prefix={"query": {"web-": READ}}), False, False, "reader")
    queries_ = [
        {"ID": "1", "Name": "web-a", "Token": "t-1", "Template": {"Type": ""}},
        {"ID": "2", "Name": "db-a", "Token": "", "Template": {"Type": ""}},
        {"ID": "3", "Name": "", "Token": "", "Template": {"Type": ""}, "Session": "s"},
    ]
    kept, filtered = acl_reads.filter_result(reader, "PreparedQuery.List", {}, queries_)
    assert [(q["Name"], q["Token"]) for q in kept] == [("web-a", "<hidden>")] and filtered
    kept, _ = acl_reads.filter_result(AUTHZ[MGMT], "PreparedQuery.List", {}, queries_)
    assert kept == queries_
    assert acl_reads.filter_result(reader, "PreparedQuery.Get", {}, [queries_[1]])[0] == []
    assert acl_reads.filter_result(reader, "PreparedQuery.Explain", {}, queries_[1])[0] == {}
    assert acl_reads.filter_result(reader, "PreparedQuery.Explain", {}, queries_[0])[0]["Token"] == "<hidden>"

    gate = RPCACL(resolve, lambda: {})
    node = Node("n1", address="10.0.0.1").to_wire()
    instances = [[node, ServiceInstance("n1", name, name).to_wire(), []] for name in ("web", "db")]
    body = {"Query": {"Name": "q", "Token": APP}, "Nodes": instances}

    def services(answer: Any) -> list[str]:
        return [ServiceInstance.from_wire(n[1]).service for n in answer["Nodes"]]

    # The caller (anonymous) may read nothing; the query's own token (APP) reads web.
    answer, _ = asyncio.run(gate.filter_answer(AUTHZ["anonymous"], "PreparedQuery.ExecuteLocal", {}, body))
    assert services(answer) == ["web"] and answer["Query"]["Token"] == "<hidden>"
    no_token = {**body, "Query": {"Name": "q", "Token": ""}}
    answer, _ = asyncio.run(gate.filter_answer(AUTHZ["anonymous"], "PreparedQuery.ExecuteLocal", {}, no_token))
    assert services(answer) == []
