"""Token resolution (server/acl_resolver.py): default and anonymous tokens, caching for
token_ttl, expired tokens, the agent recovery token and down_policy when no server answers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from proconsul.acl.records import ACLPolicy, ACLToken, Link
from proconsul.rpc_api import NoLeader, QueryMeta, QueryOptions
from proconsul.server.acl_resolver import ACLNotFound, ACLResolver

POLICY = ACLPolicy("p1", "kv", rules='key "k" { policy = "write" }')


class FakeServer:
    def __init__(self) -> None:
        self.tokens: dict[str, ACLToken] = {"s1": ACLToken("a1", "s1", policies=(Link("p1"),))}
        # Tokens the leader committed that this (follower) server has not applied yet.
        self.leader_only: dict[str, ACLToken] = {}
        self.calls = 0
        self.leader_calls = 0
        self.down = False

    async def query(self, name: str, args: dict[str, Any], opts: QueryOptions) -> tuple[QueryMeta, Any]:
        assert name == "ACL.Resolve"
        self.calls += 1
        self.leader_calls += not opts.allow_stale
        if self.down:
            raise NoLeader()
        t = self.tokens.get(args["secret"])
        if t is None and not opts.allow_stale:
            t = self.leader_only.get(args["secret"])
        found = {"token": t.to_wire() if t else None, "policies": [POLICY.to_wire()] if t else [], "roles": []}
        return QueryMeta(1, True, 0, "stale"), found


def _resolver(server: FakeServer, clock: list[float], down_policy: str = "extend-cache",
              tokens: dict[str, str] | None = None, ttl: float = 30.0) -> ACLResolver:
    live = tokens if tokens is not None else {"default": "", "agent_recovery": "rec"}
    return ACLResolver(server.query, "dc1", "deny", down_policy, lambda: live, ttl,
                       monotonic=lambda: clock[0], wall=lambda: 1000.0 + clock[0])


def test_tokens_resolve_and_cache_for_the_ttl() -> None:
    server, clock = FakeServer(), [0.0]
    r = _resolver(server, clock)
    a = asyncio.run(r.resolve("s1"))
    assert a.allowed("key", "k", "write") and not a.allowed("key", "x", "read") and a.accessor == "a1"
    asyncio.run(r.resolve("s1"))
    assert server.calls == 1
    clock[0] = 31.0
    asyncio.run(r.resolve("s1"))
    assert server.calls == 2


def test_policy_and_role_ttls_shorten_the_entry_of_a_token_that_has_them() -> None:
    """One cache entry per token, never kept longer than the TTL of any part it holds: a token
    with policies for policy_ttl when shorter; roles (none here) leave it alone."""
    server, clock = FakeServer(), [0.0]
    r = ACLResolver(server.query, "dc1", "deny", "extend-cache", lambda: {"default": ""}, 30.0,
                    monotonic=lambda: clock[0], wall=lambda: 1000.0 + clock[0], policy_ttl_s=5.0, role_ttl_s=1.0)
    asyncio.run(r.resolve("s1"))
    clock[0] = 4.0
    asyncio.run(r.resolve("s1"))
    assert server.calls == 1  # within policy_ttl; role_ttl does not apply (no roles)
    clock[0] = 6.0
    asyncio.run(r.resolve("s1"))
    assert server.calls == 2


def test_servers_do_not_cache() -> None:
    server, clock = FakeServer(), [0.0]
    r = _resolver(server, clock, ttl=0.0)
    asyncio.run(r.resolve("s1"))
    del server.tokens["s1"]
    with pytest.raises(ACLNotFound):
        asyncio.run(r.resolve("s1"))


def test_a_token_the_answering_server_has_not_applied_yet_is_asked_of_the_leader() -> None:
    server, clock = FakeServer(), [0.0]
    server.leader_only["new"] = ACLToken("a3", "new", policies=(Link("p1"),))
    r = _resolver(server, clock, ttl=0.0)
    assert asyncio.run(r.resolve("new")).accessor == "a3"
    assert server.leader_calls == 1
    asyncio.run(r.resolve("s1"))  # known locally: the leader is not asked
    assert server.leader_calls == 1
    with pytest.raises(ACLNotFound):  # unknown to the leader too
        asyncio.run(r.resolve("nope"))
    assert server.leader_calls == 2


def test_no_token_is_the_default_token_then_anonymous() -> None:
    server, clock = FakeServer(), [0.0]
    tokens = {"default": "s1", "agent_recovery": ""}
    assert _resolver(server, clock, tokens=tokens).effective_secret("") == "s1"
    tokens["default"] = ""
    r = _resolver(server, clock, tokens=tokens)
    assert r.effective_secret("") == "anonymous"
    anon = asyncio.run(r.resolve(""))  # the anonymous token is not written yet: default policy
    assert not anon.allowed("key", "k", "read")


def test_unknown_and_expired_tokens_are_not_found() -> None:
    server, clock = FakeServer(), [0.0]
    server.tokens["old"] = ACLToken("a2", "old", expires_at=1000.5)
    r = _resolver(server, clock, ttl=0.0)
    with pytest.raises(ACLNotFound):
        asyncio.run(r.resolve("nope"))
    asyncio.run(r.resolve("old"))
    clock[0] = 1.0
    with pytest.raises(ACLNotFound):
        asyncio.run(r.resolve("old"))


def test_agent_recovery_token_needs_no_server() -> None:
    server, clock = FakeServer(), [0.0]
    server.down = True
    a = asyncio.run(_resolver(server, clock).resolve("rec"))
    assert a.allowed("agent", "any-node", "write") and not a.allowed("key", "k", "read")
    assert server.calls == 0


@pytest.mark.parametrize(("policy", "cached_ok", "fresh_allowed"), [
    ("extend-cache", True, False), ("async-cache", True, False), ("deny", False, False), ("allow", False, True),
])
def test_down_policy(policy: str, cached_ok: bool, fresh_allowed: bool) -> None:
    server, clock = FakeServer(), [0.0]
    r = _resolver(server, clock, down_policy=policy)
    asyncio.run(r.resolve("s1"))
    server.down = True
    clock[0] = 100.0  # the cached entry expired
    a = asyncio.run(r.resolve("s1"))
    assert a.allowed("key", "k", "write") is cached_ok or (policy == "allow")
    fresh = asyncio.run(r.resolve("never-seen"))
    assert fresh.allowed("key", "x", "write") is fresh_allowed
    assert not fresh.allowed_single("acl", "write")


def test_servers_reuse_a_resolution_while_the_acl_tables_are_unchanged() -> None:
    server, clock = FakeServer(), [0.0]
    version = [1]
    server.tokens["exp"] = ACLToken("a3", "exp", expires_at=1005.0)
    r = ACLResolver(server.query, "dc1", "deny", "deny", lambda: {}, 0.0,
                    monotonic=lambda: clock[0], wall=lambda: 1000.0 + clock[0], version=lambda: version[0])
    asyncio.run(r.resolve("s1"))
    asyncio.run(r.resolve("s1"))
    assert server.calls == 1
    del server.tokens["s1"]
    version[0] = 2  # a token write changed the tables: resolved again, and now unknown
    with pytest.raises(ACLNotFound):
        asyncio.run(r.resolve("s1"))
    asyncio.run(r.resolve("exp"))
    clock[0] = 10.0  # past its expiration: not reused even though nothing was written
    with pytest.raises(ACLNotFound):
        asyncio.run(r.resolve("exp"))


def test_resolve_cached_answers_only_what_resolve_would_answer_without_asking() -> None:
    server, clock = FakeServer(), [0.0]
    version = [1]
    server.tokens["exp"] = ACLToken("a3", "exp", expires_at=1005.0)
    r = ACLResolver(server.query, "dc1", "deny", "deny", lambda: {"agent_recovery": "rec"}, 0.0,
                    monotonic=lambda: clock[0], wall=lambda: 1000.0 + clock[0], version=lambda: version[0])
    assert r.resolve_cached("s1") is None and server.calls == 0  # never resolved: the caller must ask
    assert r.resolve_cached("rec") is not None  # the recovery token needs no server
    a = asyncio.run(r.resolve("s1"))
    assert r.resolve_cached("s1") is a and server.calls == 1
    version[0] = 2  # a token, policy or role write: not reused until resolved again
    assert r.resolve_cached("s1") is None
    asyncio.run(r.resolve("exp"))
    assert r.resolve_cached("exp") is not None
    clock[0] = 10.0  # expired
    assert r.resolve_cached("exp") is None
    # A client agent's TTL cache: reused until the TTL runs out.
    client = _resolver(FakeServer(), clock)
    b = asyncio.run(client.resolve("s1"))
    assert client.resolve_cached("s1") is b
    clock[0] = 41.0
    assert client.resolve_cached("s1") is None
