"""Endpoints of Consul features proconsul leaves out (Connect, gateways, peering, ACLs).

Owns answering them the way a Consul agent answers when the feature holds nothing or is
disabled, so that clients probing them (consul-template, the Go api client, py-consul) get an
ordinary empty answer instead of a 404 they do not expect:

- `/v1/health/connect/:s`, `/v1/health/ingress/:s` and `/v1/catalog/connect/:s`: `[]` (Consul's
  handlers turn a nil result into an empty list), with the blocking-query headers of the plain
  service query for the same name, so `?index=` blocks and wakes as the catalog changes.
- `/v1/catalog/gateway-services/:gw`: `null` (that handler returns the nil list as it is).
- `?peer=<name>` (see `peer_requested`): no peering exists, so every peer is unknown and the
  catalog and health reads answer as Consul does for a peer with nothing imported.
- `/v1/acl/...`: 401 "ACL support disabled", which every ACL handler answers while ACLs are off
  (with `acl.enabled`, http/acl.py serves them instead).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proconsul.http.appkeys import AGENT
from proconsul.http.common import HTTPError, bad_request, json_response, query_options

ACL_DISABLED = "ACL support disabled"


def peer_requested(request: web.Request) -> bool:
    """True when the read names a cluster peer: proconsul has none, so the answer is empty."""
    return bool(request.query.get("peer"))


async def _service_meta(request: web.Request, name: str) -> Any:
    agent = request.app[AGENT]
    args = {"service": name, "tags": [], "node_meta": {}, "near": ""}
    meta, _ = await agent.server.query("Catalog.ServiceNodes", args, query_options(request))
    return meta


def _empty_list_for(missing: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        name = request.match_info.get("service", "")
        if not name:
            raise bad_request(missing)
        return json_response(request, [], await _service_meta(request, name))

    return handler


async def gateway_services(request: web.Request) -> web.Response:
    name = request.match_info.get("gateway", "")
    if not name:
        raise bad_request("Missing gateway name")
    return json_response(request, None, await _service_meta(request, name))


async def acl_disabled(request: web.Request) -> web.Response:
    raise HTTPError(401, ACL_DISABLED)


# Consul's ACL routes and the methods each accepts (another method is a 405 before the handler).
_ACL_ROUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("/v1/acl/bootstrap", ("PUT",)),
    ("/v1/acl/replication", ("GET",)),
    ("/v1/acl/policies", ("GET",)),
    ("/v1/acl/policy", ("PUT",)),
    ("/v1/acl/policy/{rest:.*}", ("GET", "PUT", "DELETE")),
    ("/v1/acl/roles", ("GET",)),
    ("/v1/acl/role", ("PUT",)),
    ("/v1/acl/role/{rest:.*}", ("GET", "PUT", "DELETE")),
    ("/v1/acl/binding-rules", ("GET",)),
    ("/v1/acl/binding-rule", ("PUT",)),
    ("/v1/acl/binding-rule/{rest:.*}", ("GET", "PUT", "DELETE")),
    ("/v1/acl/auth-methods", ("GET",)),
    ("/v1/acl/auth-method", ("PUT",)),
    ("/v1/acl/auth-method/{rest:.*}", ("GET", "PUT", "DELETE")),
    ("/v1/acl/login", ("POST",)),
    ("/v1/acl/logout", ("POST",)),
    ("/v1/acl/tokens", ("GET",)),
    ("/v1/acl/token", ("PUT",)),
    ("/v1/acl/token/self", ("GET",)),
    ("/v1/acl/token/{rest:.*}", ("GET", "PUT", "DELETE")),
    ("/v1/internal/acl/authorize", ("POST",)),
)


def routes(acl_enabled: bool = False) -> list[web.RouteDef]:
    out = [
        web.get("/v1/health/connect/{service:.*}", _empty_list_for("Missing service name")),
        web.get("/v1/health/ingress/{service:.*}", _empty_list_for("Missing service name")),
        web.get("/v1/catalog/connect/{service:.*}", _empty_list_for("Missing service name")),
        web.get("/v1/catalog/gateway-services/{gateway:.*}", gateway_services),
    ]
    if acl_enabled:
        return out  # http/acl.py serves them
    for path, methods in _ACL_ROUTES:
        out.extend(web.route(method, path, acl_disabled) for method in methods)
    return out
