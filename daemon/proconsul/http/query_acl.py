"""Prepared-query permissions, as Consul's PreparedQuery endpoints apply them (ACLs on).

Owns the decisions `http/query.py` asks for, from the request's Authorizer:

- A query's ACL prefix is its `Name`, or "" for a template without one (Consul's
  `GetACLPrefix`); an unnamed session-bound query has none.
- Writes (create, update, delete) need `query` write on the prefix of the definition sent and, for
  update and delete, of the stored query; a query with no prefix needs nothing more.
- Reads (get, list, explain): a token with `acl:write` sees everything; any other sees the named
  queries its `query` read covers, with their `Token` shown as `<hidden>`, and never an unnamed
  one. A get or explain that finds nothing it may see is "Permission denied".
- Execution needs no `query` rule: its instances are filtered by the query's own `Token` when it
  has one, else by the caller's, to those whose service and node that token may read.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proconsul.acl.authorizer import Authorizer
from proconsul.acl.rules import READ, WRITE
from proconsul.http.acl_gate import acl_enabled, authorizer, require
from proconsul.http.appkeys import ACL_RESOLVER
from proconsul.server.acl_reads import query_acl_prefix, readable_queries
from proconsul.state.prepared_query import REDACTED_TOKEN


def require_write(request: web.Request, query: dict[str, Any]) -> None:
    """403 unless the token may write a query with this definition's prefix."""
    prefix = query_acl_prefix(query)
    if prefix is not None:
        require(request, lambda a: a.require("query", prefix, WRITE))


def readable(request: web.Request, queries: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """(the queries this token may see, redacted; whether a named one was left out)."""
    return readable_queries(authorizer(request), queries)


async def execution_authorizer(request: web.Request, query: dict[str, Any]) -> Authorizer | None:
    """The Authorizer that filters an execution's instances: the query's token, else the
    caller's. None when ACLs are off."""
    if not acl_enabled(request):
        return None
    if query.get("Token") == REDACTED_TOKEN:
        return None  # hidden by the server that ran it, which filtered with the query's token
    if query.get("Token"):
        return await request.app[ACL_RESOLVER].resolve(str(query["Token"]))  # type: ignore[union-attr]
    return authorizer(request)


def visible_nodes(authz: Authorizer, nodes: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """(the CheckServiceNodes whose node and service `authz` may read, whether any was removed)."""
    kept = [
        n for n in nodes
        if authz.allowed("node", str(n["Node"]["Node"]), READ) and authz.allowed("service", str(n["Service"]["Service"]), READ)
    ]
    return kept, len(kept) != len(nodes)
