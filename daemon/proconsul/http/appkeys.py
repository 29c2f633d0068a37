"""The typed keys of the HTTP application's shared state, and the agent surface HTTP may use.

Owns what a route module may read from `request.app`: the `AgentSurface` protocol (every part
and method of the agent that a handler touches, named in one place instead of an untyped
back-pointer) and the objects `server.build_app` builds once per application (response headers,
access rules, the ACL resolver and default policy, the metrics registry and the per-route HTTP
metrics). aiohttp's `web.AppKey` makes each key typed and unique, so a handler and
`build_app` cannot disagree on a string.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from proconsul.config import RuntimeConfig
    from proconsul.http.access import AccessRules
    from proconsul.http.agent_self import AgentSelf
    from proconsul.local.cache import AgentCache
    from proconsul.local.checks import CheckManager
    from proconsul.local.coordinate_sync import CoordinateSync
    from proconsul.local.events import AgentEvents
    from proconsul.local.state import LocalState
    from proconsul.metrics.registry import Metrics
    from proconsul.rpc_api import ServerAccess
    from proconsul.serf.keyring import KeyringOperations
    from proconsul.serf.lan import Membership
    from proconsul.server.acl_resolver import ACLResolver
    from proconsul.server.leader import SessionTimers
    from proconsul.server.operator import Operator
    from proconsul.server.wan import WANPool
    from proconsul.state.store import Store


class AgentSurface(Protocol):
    """The agent as the HTTP API uses it: its parts, and the few operations that span them.

    `server` is the in-process `Server` on servers and dev agents, the client agent's
    `RemoteServer` otherwise; both are an `rpc_api.ServerAccess` (`query`, `write`, `read` and
    the other entry points the handlers call).
    """

    config: RuntimeConfig
    node_name: str
    node_id: str
    server: ServerAccess
    store: Store
    local: LocalState
    checks: CheckManager
    membership: Membership
    wan: WANPool | None
    events: AgentEvents
    coordinate_sync: CoordinateSync
    keyring_ops: KeyringOperations
    operator: Operator
    session_timers: SessionTimers
    metrics: Metrics
    cache: AgentCache | None
    acl_resolver: ACLResolver | None
    tokens: dict[str, str]
    self_view: AgentSelf  # /v1/agent/self

    def members(self, wan: bool = False) -> list[dict[str, Any]]: ...

    async def reload(self) -> list[str]: ...

    def request_leave(self) -> Any:
        """Start (or join) the graceful leave; its `done` event is set when it ends."""
        ...

    def set_agent_token(self, kind: str, value: str) -> None: ...

    async def touch_session(self, session: Any) -> None: ...

    async def renew_session(self, session_id: str) -> list[dict[str, Any]]: ...

    def server_for_dc(self, dc: str) -> ServerAccess: ...

    def check_script_allowed(self, checks: Any, source: str) -> None: ...


# Annotated rather than given a runtime type: the annotations are never evaluated, so the route
# modules these types live in can import this module without a cycle.
AGENT: web.AppKey[AgentSurface] = web.AppKey("agent")
RESPONSE_HEADERS: web.AppKey[dict[str, str]] = web.AppKey("response_headers")
ACCESS_RULES: web.AppKey[AccessRules] = web.AppKey("access_rules")
ACL_RESOLVER: web.AppKey[ACLResolver | None] = web.AppKey("acl_resolver")
DEFAULT_ACL_POLICY: web.AppKey[str] = web.AppKey("default_acl_policy")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
# http.metrics.HTTPMetrics (not named here: that module imports the ones that import this).
HTTP_METRICS: web.AppKey[Any] = web.AppKey("http_metrics")
