"""The HTTP worker's application: which requests a worker answers itself, and how.

Owns the routing decision of a worker process. The hottest reads (KV GET, health and catalog
service, default and `?stale`) are answered ahead of aiohttp by http/fast.py over `WorkerReads`
(the replica; a default read parks on a barrier); what the fast path leaves reaches this
application. It answers locally, from its replica
(http/workers/replica.py), only GETs of the hot reads in `LOCAL_ROUTES`, through the very
handlers of http/kv.py, health.py and catalog.py and a `server.rpc.Server` over the replica
(the same named queries, blocking and jitter as the agent):
- `?stale` (and `max_stale`, `discovery_max_stale`): straight from the replica;
- default mode: only while the agent is the leader, after a barrier, so the read sees every
  write the agent had applied when the read arrived (read-your-writes across processes);
- blocking queries park on the replica's own watches.
Everything else goes to the agent unchanged (http/workers/proxy.py): writes, `?consistent`,
`?cached`, another `?dc`, every other route, every request while ACLs are enabled or while the
replica is not serving, and a default read when the agent is not the leader (the agent forwards
it to the leader, as before). A local read that finds the agent no longer leader is forwarded too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from aiohttp import web

from proconsul.http import catalog, health, kv
from proconsul.http.access import AccessRules
from proconsul.http.appkeys import (
    ACCESS_RULES,
    ACL_RESOLVER,
    AGENT,
    DEFAULT_ACL_POLICY,
    HTTP_METRICS,
    METRICS,
    RESPONSE_HEADERS,
)
from proconsul.http.common import HTTPError, query_options
from proconsul.http.fast import BARRIER, FALLBACK, BarrierResult
from proconsul.http.metrics import HTTPMetrics
from proconsul.http.server import Handler, consul_middleware
from proconsul.http.workers.proxy import Forwarder
from proconsul.http.workers.replica import BarrierFailed, Replica
from proconsul.metrics.registry import Metrics
from proconsul.rpc_api import NoLeader, NotLeader
from proconsul.server.rpc import Server
from proconsul.state import protection

# Says which process answered (its pid): tests and operators can tell a worker's answer.
SERVED_BY = "X-Proconsul-Worker"

LOCAL_ROUTES: tuple[tuple[str, Handler], ...] = (
    ("/v1/kv/{key:.*}", kv.kv_get),
    ("/v1/health/service/{service}", health.service_health),
    ("/v1/health/node/{node}", health.node_health),
    ("/v1/health/checks/{service}", health.service_checks),
    ("/v1/catalog/service/{service}", catalog.service_nodes),
    ("/v1/catalog/services", catalog.services),
    ("/v1/catalog/nodes", catalog.nodes),
    ("/v1/catalog/node/{node}", catalog.node_detail),
)
# Parameters whose meaning only the agent can give (its cache, its coordinates, another DC).
_FORWARDED_PARAMS = ("consistent", "cached", "near")


class _Forward(Exception):
    """Raised inside a local read that must be answered by the agent after all."""


class WorkerAgent:
    """The part of `AgentSurface` the local read handlers touch, over the replica."""

    def __init__(self, replica: Replica, metrics: Metrics) -> None:
        self.replica = replica
        self.metrics = metrics
        self.config: Any = None
        self.node_name = ""
        self.node_id = ""
        self.cache = None
        self.acl_resolver = None
        self.store = replica.store
        self.server: Server | None = None

    def configure(self, hello: dict[str, Any]) -> None:
        cfg = hello["config"]
        self.config = cfg
        self.node_name = hello["node_name"]
        self.node_id = hello["node_id"]
        if self.server is None:
            self.server = Server(self.replica.store, self.replica, cfg.datacenter,
                                 default_query_time_s=cfg.default_query_time_s,
                                 max_query_time_s=cfg.max_query_time_s, metrics=self.metrics)


class WorkerReads:
    """http/fast.py's `ReadGate` over the replica: `?stale` reads at once, default reads after a
    barrier while the agent is the leader and ready, nothing while ACLs are on or the replica is
    not following the agent; writes are forwarded."""

    writes = False

    def __init__(self, agent: WorkerAgent) -> None:
        self.agent = agent
        self.replica = agent.replica

    def reader(self) -> Server | None:
        agent = self.agent
        if not self.replica.serving or agent.config is None or agent.config.acl.enabled:
            return None
        return agent.server

    def default_read(self) -> int:
        replica = self.replica
        return BARRIER if replica.leader and replica.ready else FALLBACK

    def barrier(self, done: Callable[[BarrierResult], None]) -> bool:
        return self.replica.barrier_then(done)

    def consistent_read(self) -> int:
        return FALLBACK  # forwarded to the agent, which runs ReadIndex

    def consistent_barrier(self, done: Callable[[BarrierResult], None]) -> bool:
        return False

    def write_now(self, command: Any, done: Callable[..., None]) -> bool:
        return False  # a worker forwards every write to the agent (`writes` is False)


def _local(handler: Handler) -> Handler:
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (NotLeader, NoLeader):
            raise _Forward() from None

    return run


def build_worker_app(agent: WorkerAgent, forwarder: Forwarder) -> web.Application:
    replica = agent.replica
    pid = str(os.getpid())
    local_handlers = {path: _local(handler) for path, handler in LOCAL_ROUTES}
    local_set = set(local_handlers.values())

    @web.middleware
    async def route(request: web.Request, handler: Handler) -> web.StreamResponse:
        local = (
            request.method == "GET"
            and request.match_info.handler in local_set
            and replica.serving
            and agent.config is not None
            and not agent.config.acl.enabled
        )
        if local and request.query_string:
            query = request.query
            if any(p in query for p in _FORWARDED_PARAMS) or query.get("dc", agent.config.datacenter) != agent.config.datacenter:
                local = False
        if local:
            try:
                opts = query_options(request)
            except HTTPError:
                opts = None  # the handler answers the 400 itself
            try:
                if opts is not None and not opts.allow_stale:
                    leader, ready = await replica.barrier()
                    if not (leader and ready):
                        raise _Forward()
                resp = await consul_middleware(request, handler)
                resp.headers[SERVED_BY] = pid
                return resp
            except (_Forward, BarrierFailed):
                pass
        return await forwarder.forward(request)

    app = web.Application(middlewares=[route])
    app[AGENT] = agent  # type: ignore[assignment]
    for path, wrapped in local_handlers.items():
        app.router.add_get(path, wrapped, allow_head=False)
    app[RESPONSE_HEADERS] = {}
    app[ACCESS_RULES] = _Rules()  # type: ignore[assignment]
    app[ACL_RESOLVER] = None
    app[DEFAULT_ACL_POLICY] = "allow"
    app[METRICS] = agent.metrics
    app[HTTP_METRICS] = HTTPMetrics(agent.metrics)
    app[health.PROTECTION_LOG] = protection.ProtectionLog(health.logger, "http")
    return app


class _Rules:
    """The access rules of the configuration in force (replaced on the agent's reload; the
    frozen application keeps this holder)."""

    def __init__(self) -> None:
        self.rules = AccessRules.build((), ())

    @property
    def blocked_prefixes(self) -> tuple[str, ...]:
        return self.rules.blocked_prefixes

    @property
    def write_networks(self) -> tuple[Any, ...]:
        return self.rules.write_networks

    def refusal(self, method: str, path: str, remote: str | None) -> str | None:
        return self.rules.refusal(method, path, remote)


def apply_config(app: web.Application, agent: WorkerAgent) -> None:
    """Take the agent's (reloaded) HTTP settings: response headers, endpoint blocks, write sources."""
    http_config = agent.config.http_config
    headers = app[RESPONSE_HEADERS]
    headers.clear()
    headers.update(http_config.response_headers)
    app[ACCESS_RULES].rules = AccessRules.build(  # type: ignore[attr-defined]
        http_config.block_endpoints, http_config.allow_write_http_from
    )
