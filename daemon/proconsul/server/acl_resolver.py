"""Token resolution: a SecretID to an Authorizer, for the HTTP API, DNS and the agent itself.

Owns asking a server for a token (`ACL.Resolve`, answered from the server's own replicated state:
servers resolve locally, client agents over RPC), building the Authorizer from the token, its
policies and roles, caching it on client agents (servers read their own store on every request,
so a revoked token stops working at once there): one entry per token, kept for `acl.token_ttl`,
or `policy_ttl` / `role_ttl` when shorter and the token has policies / roles, so no part of it is
used longer than Consul's separate caches would keep it, Consul's special tokens (no
token means the agent's default token, then anonymous; `acl.tokens.agent_recovery` works even
when no server answers), and `acl.down_policy` when no server can be reached.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from proconsul.acl.authorizer import Authorizer
from proconsul.acl.records import (
    ANONYMOUS_ACCESSOR,
    ANONYMOUS_SECRET,
    ACLPolicy,
    ACLRole,
    ACLToken,
    resolve,
)
from proconsul.acl.rules import READ, WRITE, Rules
from proconsul.rpc_api import QueryMeta, QueryOptions, RPCError

logger = logging.getLogger(__name__)

Query = Callable[[str, dict[str, Any], QueryOptions], Awaitable[tuple[QueryMeta, Any]]]
_STALE = QueryOptions(allow_stale=True)
_LEADER = QueryOptions()


class ACLNotFound(Exception):
    """The SecretID names no token (or an expired one): Consul's 403 "ACL not found"."""

    def __init__(self) -> None:
        super().__init__("ACL not found")


class ACLResolver:
    def __init__(
        self,
        query: Query,
        datacenter: str,
        default_policy: str,
        down_policy: str,
        tokens: Callable[[], dict[str, str]],
        cache_ttl_s: float,
        monotonic: Callable[[], float] = time.monotonic,
        policy_ttl_s: float | None = None,
        role_ttl_s: float | None = None,
        wall: Callable[[], float] = time.time,
        version: Callable[[], Any] | None = None,
    ) -> None:
        self._query = query
        self.datacenter = datacenter
        self.default_allow = default_policy == "allow"
        self.down_policy = down_policy
        self._tokens = tokens  # the agent's live tokens (set by config, reload or /v1/agent/token)
        self.cache_ttl_s = cache_ttl_s
        self.policy_ttl_s = cache_ttl_s if policy_ttl_s is None else policy_ttl_s
        self.role_ttl_s = cache_ttl_s if role_ttl_s is None else role_ttl_s
        self._monotonic = monotonic
        self._wall = wall
        self._cache: dict[str, tuple[float, Authorizer]] = {}
        # Servers: the ACL tables' indexes. A resolved token is reused while they are unchanged
        # (any token, policy or role write changes them), so a revocation applies at once.
        self._version = version
        self._versioned: dict[str, tuple[Any, float, Authorizer]] = {}

    def effective_secret(self, secret: str) -> str:
        """The token a request acts with: its own, else the agent's default token, else anonymous."""
        return secret or self._tokens().get("default", "") or ANONYMOUS_SECRET

    def resolve_cached(self, secret: str) -> Authorizer | None:
        """What `resolve` would answer without asking anyone (the recovery token, a token
        resolved since the ACL tables last changed, a client agent's unexpired cache entry);
        None when `resolve` would have to query. For callers that cannot wait (the leader's
        task-less `Raft.ApplyBatch`): they fall back to `resolve` on None."""
        secret = self.effective_secret(secret)
        recovery = self._tokens().get("agent_recovery", "")
        if recovery and secret == recovery:
            # Consul's agent recovery token: local agent operations only, even with no servers.
            return Authorizer(Rules(prefix={"agent": {"": WRITE}, "node": {"": READ}}), False, False,
                              "agent-recovery-token")
        if self._version is not None:
            seen = self._versioned.get(secret)
            if seen is not None and seen[0] == self._version() and not (seen[1] and self._wall() >= seen[1]):
                return seen[2]
        hit = self._cache.get(secret)
        if hit is not None and hit[0] > self._monotonic():
            return hit[1]
        return None

    async def resolve(self, secret: str) -> Authorizer:
        cached = self.resolve_cached(secret)
        if cached is not None:
            return cached
        secret = self.effective_secret(secret)
        current = self._version() if self._version is not None else None
        now = self._monotonic()
        hit = self._cache.get(secret)
        try:
            _, found = await self._query("ACL.Resolve", {"secret": secret}, _STALE)
            if found["token"] is None and secret != ANONYMOUS_SECRET:
                # A server that answered from its own state may not have applied a token the
                # leader just committed (followers learn commits a moment later): before saying
                # "ACL not found", ask again in the default mode, which the leader answers.
                _, found = await self._query("ACL.Resolve", {"secret": secret}, _LEADER)
        except RPCError as exc:
            return self._down(secret, hit, exc)
        authz = self._build(secret, found)
        if self._version is not None:
            if len(self._versioned) >= 4096:
                self._versioned.clear()  # bounded: random secrets must not grow it without end
            expires = ACLToken.from_wire(found["token"]).expires_at if found.get("token") else 0.0
            self._versioned[secret] = (current, expires, authz)
        ttl = self.cache_ttl_s
        if found.get("policies"):
            ttl = min(ttl, self.policy_ttl_s)
        if found.get("roles"):
            ttl = min(ttl, self.role_ttl_s)
        if ttl > 0:
            self._cache[secret] = (now + ttl, authz)
        return authz

    def _build(self, secret: str, found: dict[str, Any]) -> Authorizer:
        if found["token"] is None:
            if secret == ANONYMOUS_SECRET:
                # Before the leader has written the built-ins: the anonymous token has no policies.
                return Authorizer(Rules(), self.default_allow, False, ANONYMOUS_ACCESSOR)
            raise ACLNotFound()
        token = ACLToken.from_wire(found["token"])
        if token.expired(self._wall()):
            raise ACLNotFound()
        policies = {p.id: p for p in (ACLPolicy.from_wire(w) for w in found["policies"])}
        roles = {r.id: r for r in (ACLRole.from_wire(w) for w in found["roles"])}
        return resolve(token, policies.get, roles.get, self.default_allow, self.datacenter)

    def _down(self, secret: str, hit: tuple[float, Authorizer] | None, exc: Exception) -> Authorizer:
        logger.warning("acl: could not resolve a token (%s); applying down_policy %s", exc, self.down_policy)
        if self.down_policy in ("extend-cache", "async-cache") and hit is not None:
            return hit[1]
        allow = self.down_policy == "allow"
        return Authorizer(Rules(), allow, False, "")

    def invalidate(self) -> None:
        """Forget cached tokens (after this agent changed a token, policy or role)."""
        self._cache.clear()
        self._versioned.clear()
