"""ACLs on the server RPC port, and blocking queries re-checked when they wake, on a real agent.

A `-server` agent with `acl { enabled = true default_policy = "deny" }` and no TLS. A raw RPC
client on its server port (as an attacker who reaches port 8300 would, speaking the agent's own
protocol) calls what client agents and other servers call: `Client.Query`, `Query`,
`Raft.Apply`, `Raft.ApplyBatch`, the operator, keyring and event calls. Without a token, or with a token lacking the permission, reads
are refused or filtered exactly as over HTTP and writes change nothing; with the management
token they work. Then the audit's blocking-query case: a parked `GET /v1/kv/...?index=` whose
token is deleted while it waits answers 403 "ACL not found" when the key changes, on the server
itself and through a client agent.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cluster_helpers import LanCluster
from helpers import AgentProcess, free_port, wait_for
from proconsul.state import commands
from proconsul.state.records import DirEntry
from proconsul.transport import ConnectionPool, RemoteError

MGMT = "11111111-2222-3333-4444-555555555555"
DENIED = "Permission denied"
ANONYMOUS = "00000000-0000-0000-0000-000000000002"


def _hcl() -> str:
    return (f'acl {{ enabled = true  default_policy = "deny" '
            f'tokens {{ initial_management = "{MGMT}" }} }}')


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[AgentProcess]:
    port = free_port()
    a = AgentProcess("-server", "-bootstrap-expect=1", f"-server-port={port}", "-hcl", _hcl(),
                     dev=False, data_dir=str(tmp_path / "data"))
    a.rpc = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    a.start()
    try:
        wait_for(lambda: _http(a, "GET", "/v1/acl/token/self", MGMT)[0] == 200, timeout=60,
                 what="the initial management token")
        yield a
    finally:
        a.stop()


def _http(agent: AgentProcess, method: str, path: str, token: str = "", body: bytes | None = None,
          timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"{agent.url}{path}", data=body, method=method)
    if token:
        req.add_header("X-Consul-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def _rpc(agent: AgentProcess, method: str, body: Any) -> Any:
    """One RPC to the agent's server port: the reply, or the RemoteError it answered with."""
    async def call() -> Any:
        pool = ConnectionPool()
        try:
            return await pool.call(agent.rpc, method, body, timeout_s=30)  # type: ignore[attr-defined]
        except RemoteError as exc:
            return exc
        finally:
            await pool.close()

    return asyncio.run(call())


def _query(agent: AgentProcess, method: str, name: str, args: dict[str, Any], token: str = "") -> Any:
    body: dict[str, Any] = {"name": name, "args": args, "opts": [0, 0.0, False, False]}
    if token:
        body["token"] = token
    return _rpc(agent, method, body)


def _set(key: str, value: bytes) -> bytes:
    return commands.encode(commands.KVS(commands.KVOp.SET, DirEntry(key=key, value=value)))


def _kv(agent: AgentProcess, key: str) -> bytes | None:
    status, _, body = _http(agent, "GET", f"/v1/kv/{key}?raw", MGMT)
    return body if status == 200 else None


def _token(agent: AgentProcess, rules: dict[str, Any], name: str) -> dict[str, Any]:
    status, _, body = _http(agent, "PUT", "/v1/acl/policy", MGMT, json.dumps({"Name": name, "Rules": json.dumps(rules)}).encode())
    assert status == 200, body
    status, _, body = _http(agent, "PUT", "/v1/acl/token", MGMT, json.dumps({"Policies": [{"Name": name}]}).encode())
    assert status == 200, body
    return dict(json.loads(body))


def test_server_rpc_port_enforces_acls_without_tls(server: AgentProcess) -> None:
    a = server
    reader = _token(a, {"key_prefix": {"app/": {"policy": "read"}}, "service_prefix": {"": {"policy": "read"}},
                        "node_prefix": {"": {"policy": "read"}}}, "app-read")["SecretID"]
    for key, value in (("app/a", b"1"), ("sec/a", b"s")):
        assert _http(a, "PUT", f"/v1/kv/{key}", MGMT, value)[0] == 200
    reg = {"Node": "n1", "Address": "10.0.0.1", "Service": {"Service": "db", "Port": 5432}}
    assert _http(a, "PUT", "/v1/catalog/register", MGMT, json.dumps(reg).encode())[0] == 200

    for method in ("Client.Query", "Query"):
        # The ACL tables: acl:read, which neither an anonymous caller nor the reader has.
        for tok in ("", reader):
            refused = _query(a, method, "ACL.TokenList", {}, tok)
            assert isinstance(refused, RemoteError) and "lacks permission 'acl:read'" in str(refused), refused
            refused = _query(a, method, "ACL.TokenRead", {"secret": MGMT}, tok)
            assert isinstance(refused, RemoteError) and DENIED in str(refused), refused
        listed = _query(a, method, "ACL.TokenList", {}, MGMT)["result"]
        assert MGMT in [t["SecretID"] for t in listed]
        # A token reads itself; resolving a secret tells only the one who presents it.
        own = _query(a, method, "ACL.TokenRead", {"secret": reader}, reader)["result"]
        assert own["SecretID"] == reader
        assert _query(a, method, "ACL.Resolve", {"secret": "not-a-token"})["result"]["token"] is None
        # An unknown token is "ACL not found", as over HTTP.
        assert str(_query(a, method, "KVS.Get", {"key": "app/a"}, "not-a-token")) == "ACL not found"

        # KV: key:read on the key; a listing keeps what the token may read and says so.
        refused = _query(a, method, "KVS.Get", {"key": "sec/a"})
        assert isinstance(refused, RemoteError) and f"token with AccessorID '{ANONYMOUS}'" in str(refused)
        assert isinstance(_query(a, method, "KVS.Get", {"key": "sec/a"}, reader), RemoteError)
        assert _query(a, method, "KVS.Get", {"key": "app/a"}, reader)["result"]["Key"] == "app/a"
        reply = _query(a, method, "KVS.List", {"prefix": ""}, reader)
        assert [e["Key"] for e in reply["result"]] == ["app/a"] and reply.get("filtered") is True
        anonymous = _query(a, method, "KVS.List", {"prefix": ""})
        assert anonymous["result"] == [] and "filtered" not in anonymous  # anonymous is not told
        assert [e["Key"] for e in _query(a, method, "KVS.List", {"prefix": ""}, MGMT)["result"]] == ["app/a", "sec/a"]
        assert _query(a, method, "KVS.ListKeys", {"prefix": ""}, reader)["result"] == ["app/a"]

        # Catalog: filtered by node and service read.
        assert "db" not in _query(a, method, "Catalog.ListServices", {})["result"]
        assert "db" in _query(a, method, "Catalog.ListServices", {}, reader)["result"]
        assert _query(a, method, "Catalog.ServiceNodes", {"service": "db"})["result"] == []
        assert [e["Node"] for e in _query(a, method, "Catalog.ServiceNodes", {"service": "db"}, MGMT)["result"]] == ["n1"]
        assert _query(a, method, "Catalog.ListNodes", {})["result"] == []

    # Writes: Raft.Apply and Raft.ApplyBatch are authorised with the token they carry.
    refused = _rpc(a, "Raft.Apply", _set("sec/a", b"pwned"))
    assert isinstance(refused, RemoteError) and "lacks permission 'key:write'" in str(refused)
    refused = _rpc(a, "Raft.Apply", {"command": _set("app/a", b"pwned"), "token": reader})
    assert isinstance(refused, RemoteError) and "lacks permission 'key:write'" in str(refused)
    assert _kv(a, "sec/a") == b"s" and _kv(a, "app/a") == b"1"
    done = _rpc(a, "Raft.Apply", {"command": _set("sec/b", b"ok"), "token": MGMT})
    assert not isinstance(done, RemoteError) and _kv(a, "sec/b") == b"ok"

    results = _rpc(a, "Raft.ApplyBatch", {"commands": [_set("sec/a", b"x"), _set("app/a", b"x")]})["results"]
    assert all(isinstance(r, str) and DENIED in r for r in results), results
    results = _rpc(a, "Raft.ApplyBatch", {"commands": [_set("app/a", b"y"), _set("sec/c", b"z")],
                                          "tokens": [reader, MGMT]})["results"]
    assert isinstance(results[0], str) and "key:write" in results[0] and isinstance(results[1], list), results
    assert _kv(a, "app/a") == b"1" and _kv(a, "sec/a") == b"s" and _kv(a, "sec/c") == b"z"

    # Client.Write was already checked; it still is.
    refused = _rpc(a, "Client.Write", {"command": _set("sec/a", b"x"), "token": reader})
    assert isinstance(refused, RemoteError) and DENIED in str(refused) and _kv(a, "sec/a") == b"s"

    # The operator calls a follower forwards to its leader: their HTTP endpoint's permission.
    for method, body in (("Snapshot.Save", {}), ("Operator.RaftConfiguration", {}),
                         ("Keyring.Operation", {"op": "list", "key": "", "local_only": True, "forwarded": False}),
                         ("Internal.EventFire", {"Name": "deploy", "Payload": msgpack.packb(
                             {"ID": "00000000-0000-0000-0000-00000000000e", "n": "deploy", "v": 1})})):
        for tok in ("", reader):
            refused = _rpc(a, method, {**body, "token": tok} if tok else body)
            assert isinstance(refused, RemoteError) and DENIED in str(refused), (method, refused)
        assert not isinstance(_rpc(a, method, {**body, "token": MGMT}), RemoteError)

    # Over HTTP nothing changed: 403 with Consul's body, the filtered header on a listing.
    status, _, body = _http(a, "GET", "/v1/kv/sec/a", reader)
    assert status == 403 and b"lacks permission 'key:read'" in body
    status, headers, body = _http(a, "GET", "/v1/kv/?recurse", reader)
    assert status == 200 and headers.get("x-consul-results-filtered-by-acls") == "true"
    assert [e["Key"] for e in json.loads(body)] == ["app/a"]


def _blocking_now(agent: AgentProcess) -> float:
    status, _, body = _http(agent, "GET", "/v1/agent/metrics", MGMT)
    assert status == 200, body
    return sum(g["Value"] for g in json.loads(body)["Gauges"] if g["Name"].endswith("rpc.queries_blocking"))


def _parked_read_of_a_deleted_token(via: AgentProcess, server: AgentProcess) -> tuple[int, bytes]:
    """Park `GET /v1/kv/sec/a?index=` on `via` with a read token, delete the token, write the
    key: the parked request's (status, body)."""
    made = _token(server, {"key_prefix": {"sec/": {"policy": "read"}}}, "sec-read")
    reader, accessor = made["SecretID"], made["AccessorID"]
    assert _http(server, "PUT", "/v1/kv/sec/a", MGMT, b"1")[0] == 200
    status, headers, _ = _http(via, "GET", "/v1/kv/sec/a", reader)
    assert status == 200
    index = int(headers["x-consul-index"])

    answer: list[tuple[int, dict[str, str], bytes]] = []
    before = _blocking_now(server)
    parked = threading.Thread(target=lambda: answer.append(
        _http(via, "GET", f"/v1/kv/sec/a?index={index}&wait=20s", reader, timeout=60)))
    parked.start()
    try:
        wait_for(lambda: _blocking_now(server) > before, timeout=30, what="the blocking query parked")
        assert _http(server, "DELETE", f"/v1/acl/token/{accessor}", MGMT)[0] == 200
        assert _http(server, "PUT", "/v1/kv/sec/a", MGMT, b"2")[0] == 200
    finally:
        parked.join(timeout=60)
    # A fresh request with that token is refused the same way (on a server at once).
    assert _http(server, "GET", "/v1/kv/sec/a", reader)[:3:2] == (403, b"ACL not found")
    status, _, body = answer[0]
    return status, body


def test_a_parked_blocking_query_is_refused_once_its_token_is_deleted(server: AgentProcess) -> None:
    assert _parked_read_of_a_deleted_token(server, server) == (403, b"ACL not found")


def test_through_a_client_agent_the_server_refuses_the_woken_read(tmp_path: Path) -> None:
    """The client agent caches the token's resolution (token_ttl), but the server that answers
    its blocking read checks the token again when it wakes."""
    cluster = LanCluster(tmp_path, ("c1",), "-hcl", _hcl())
    try:
        srv, c1 = cluster.start()
        wait_for(lambda: _http(c1, "GET", "/v1/acl/token/self", MGMT)[0] == 200, timeout=60,
                 what="the management token through the client agent")
        assert _parked_read_of_a_deleted_token(c1, srv) == (403, b"ACL not found")

        # A catalog write through the client agent is judged by the server against the whole
        # catalog: service:write alone registers a service on an existing, unchanged node the
        # token may not even read; anything more is Consul's 403, and nothing is written.
        node = {"Node": "n9", "Address": "10.0.0.9"}
        assert _http(srv, "PUT", "/v1/catalog/register", MGMT, json.dumps(node).encode())[0] == 200
        web = _token(srv, {"service": {"web": {"policy": "write"}}}, "web-write")["SecretID"]
        status, _, body = _http(c1, "PUT", "/v1/catalog/register", web,
                                json.dumps({**node, "Service": {"Service": "web", "Port": 80}}).encode())
        assert status == 200, body
        status, _, body = _http(c1, "PUT", "/v1/catalog/register", web,
                                json.dumps({**node, "Service": {"Service": "db", "Port": 5432}}).encode())
        assert status == 403 and b"lacks permission 'service:write' on \"db\"" in body, body
        status, _, body = _http(c1, "PUT", "/v1/catalog/register", web,
                                json.dumps({"Node": "n9", "Address": "10.9.9.9"}).encode())
        assert status == 403 and b"lacks permission 'node:write' on \"n9\"" in body, body
        services = json.loads(_http(srv, "GET", "/v1/catalog/node-services/n9", MGMT)[2])["Services"]
        assert [s["Service"] for s in services] == ["web"]
        assert json.loads(_http(srv, "GET", "/v1/catalog/node/n9", MGMT)[2])["Node"]["Address"] == "10.0.0.9"
    finally:
        cluster.stop()


def test_coordinate_updates_and_session_renewals_carry_a_token(server: AgentProcess) -> None:
    """Coordinate.Update needs node:write on its node and Session.Renew session:write on the
    session's node, with the token the call carries; none is the anonymous token."""
    a = server
    node = json.loads(_http(a, "GET", "/v1/agent/self", MGMT)[2])["Config"]["NodeName"]
    update = {"Node": node, "Segment": "", "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05}}
    refused = _rpc(a, "Coordinate.Update", update)
    assert isinstance(refused, RemoteError) and "lacks permission 'node:write'" in str(refused), refused
    assert _rpc(a, "Coordinate.Update", {**update, "token": MGMT}) is True

    status, _, body = _http(a, "PUT", "/v1/session/create", MGMT, json.dumps({"Node": node, "TTL": "30s"}).encode())
    assert status == 200, body
    sid = json.loads(body)["ID"]
    for anonymous in (sid, {"ID": sid}):  # an older agent's bare ID, or no token
        refused = _rpc(a, "Session.Renew", anonymous)
        assert isinstance(refused, RemoteError) and "lacks permission 'session:write'" in str(refused), refused
    renewed = _rpc(a, "Session.Renew", {"ID": sid, "token": MGMT})
    assert [s["ID"] for s in renewed] == [sid]
