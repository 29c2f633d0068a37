"""ACLs on a server's RPC port: the token an RPC carries, and the read check where it lands.

Owns, while `acl.enabled` is on, Consul's model for server RPC: every read or write that leaves
an agent for a server carries a token (`outgoing_token`: the token of the HTTP request being
served, else, for the agent's own work such as anti-entropy, the agent token, then the default
token), and the server that finally answers it, after any forwarding to the leader, resolves
that token itself and authorises the call. Writes are checked by `acl_authz.authorize` (wired as
`Server.authorize_write`); reads by `RPCACL.check` before the read and `RPCACL.filter`
after it (the rules of server/acl_reads.py, the same the HTTP API applies). A call with no token
acts as the anonymous token (a server does not substitute its own default token for a caller),
and one with an unknown or deleted token is refused with "ACL not found", as Consul answers.

The operator calls a server forwards to its leader (`Operator.*`, `Snapshot.Save`) and the
keyring operations (`Keyring.Operation`) and user events (`Internal.EventFire`), each a dict body with the caller's `token`, are
checked with the permission of their HTTP endpoint (`OPERATOR_CALLS`) before their handler runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from proconsul.acl.authorizer import Authorizer, PermissionDenied
from proconsul.acl.records import ANONYMOUS_ACCESSOR, ANONYMOUS_SECRET
from proconsul.acl.rules import READ, WRITE
from proconsul.rpc_api import CALLER_TOKEN, RPCError
from proconsul.server import acl_reads
from proconsul.server.acl_resolver import ACLNotFound

Resolve = Callable[[str], Awaitable[Authorizer]]

# Registered RPC methods that read or change cluster state, with what their HTTP endpoint needs,
# from the call's body: (resource, access, name) for a named resource, name None for a
# single-valued one (operator, keyring), resource "" for a management token (a snapshot holds
# every secret, as Consul's).
Need = tuple[str, str, str | None]
OPERATOR_CALLS: dict[str, Callable[[Any], Need]] = {
    "Snapshot.Save": lambda body: ("", "", None),
    "Operator.RaftConfiguration": lambda body: ("operator", READ, None),
    "Operator.AutopilotGetConfiguration": lambda body: ("operator", READ, None),
    "Operator.ServerHealth": lambda body: ("operator", READ, None),
    "Operator.AutopilotState": lambda body: ("operator", READ, None),
    "Operator.RaftRemovePeer": lambda body: ("operator", WRITE, None),
    "Operator.RaftTransferLeader": lambda body: ("operator", WRITE, None),
    "Operator.AutopilotSetConfiguration": lambda body: ("operator", WRITE, None),
    # The gossip keyring (serf/keyring.py): listing needs keyring:read, changing it keyring:write.
    "Keyring.Operation": lambda body: ("keyring", READ if _field(body, "op") == "list" else WRITE, None),
    # A user event (local/events.py): event:write on its name (watch handlers run on it).
    "Internal.EventFire": lambda body: ("event", WRITE, _field(body, "Name")),
    # A node's network coordinate (local/coordinate_sync.py): node:write on that node, as Consul's
    # Coordinate.Update; the agent sends it with its agent token.
    "Coordinate.Update": lambda body: ("node", WRITE, _field(body, "Node")),
}


def _field(body: Any, name: str) -> str:
    return str(body.get(name) or "") if type(body) is dict else ""


def with_token(body: Any) -> Any:
    """An operator call's body with the token of the request being served (none outside one)."""
    token = CALLER_TOKEN.get()
    if token and type(body) is dict:
        return {**body, "token": token}
    return body


class RPCACL:
    """A server's ACL check of the reads (and the token of the calls) it makes or answers.

    Args:
        resolve: SecretID -> Authorizer (`ACLResolver.resolve`; a server reads its own store).
        tokens: the agent's live tokens (`agent`, `default`, ...).
        key_list_policy: `acl.enable_key_list_policy`.
    """

    def __init__(self, resolve: Resolve, tokens: Callable[[], dict[str, str]], key_list_policy: bool = False) -> None:
        self._resolve = resolve
        self._tokens = tokens
        self.key_list_policy = key_list_policy

    def outgoing_token(self) -> str:
        """The token a call to another server carries: the request's, else the agent's own."""
        caller = CALLER_TOKEN.get()
        if caller is not None:
            return caller
        tokens = self._tokens()
        return tokens.get("agent") or tokens.get("default") or ""

    async def authorizer(self, secret: str) -> Authorizer:
        """The caller's Authorizer; no token is the anonymous token. RPCError when unknown."""
        try:
            return await self._resolve(secret or ANONYMOUS_SECRET)
        except ACLNotFound as exc:
            raise RPCError(str(exc)) from None

    async def check(self, secret: str, name: str, args: dict[str, Any]) -> Authorizer | None:
        """Authorise the read `name` for `secret`; None for reads that need no token. Raises
        RPCError with Consul's text ("Permission denied: ...", "ACL not found") when refused."""
        if name in acl_reads.TOKENLESS:
            return None
        authz = await self.authorizer(secret)
        try:
            acl_reads.check(authz, name, args, secret or ANONYMOUS_SECRET, self.key_list_policy)
        except PermissionDenied as exc:
            raise RPCError(str(exc)) from None
        return authz

    async def check_call(self, method: str, body: Any) -> None:
        """Authorise an operator call (`OPERATOR_CALLS`) with the token in its body."""
        need = OPERATOR_CALLS.get(method)
        if need is None:
            return
        secret = str(body.get("token") or "") if type(body) is dict else ""
        authz = await self.authorizer(secret)
        resource, access, name = need(body)
        try:
            if not resource:
                authz.require_management()
            elif name is None:
                authz.require_single(resource, access)
            else:
                authz.require(resource, name, access)
        except PermissionDenied as exc:
            raise RPCError(str(exc)) from None
        CALLER_TOKEN.set(secret)  # carried on where the call goes next (another datacenter's servers)

    async def filter_answer(self, authz: Authorizer | None, name: str, args: dict[str, Any],
                            result: Any) -> tuple[Any, bool]:
        """`filter`, except that an executed prepared query with a token of its own is filtered
        by that token's rights, not the caller's (Consul's PreparedQuery.Execute)."""
        if authz is not None and name == "PreparedQuery.ExecuteLocal" and isinstance(result, dict):
            own = (result.get("Query") or {}).get("Token")
            if own:
                authz = await self.authorizer(str(own))
        return self.filter(authz, name, args, result)

    @staticmethod
    def filter(authz: Authorizer | None, name: str, args: dict[str, Any], result: Any) -> tuple[Any, bool]:
        """The answer the token may see, and whether to tell the caller something was left out
        (never the anonymous token, as Consul's HTTP API does not tell it)."""
        if authz is None:
            return result, False
        kept, filtered = acl_reads.filter_result(authz, name, args, result)
        return kept, filtered and authz.accessor != ANONYMOUS_ACCESSOR
