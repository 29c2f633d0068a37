"""Cluster-wide gossip keyring operations: Consul's ``Internal.KeyringOperation``.

Owns which pools a keyring list/install/use/remove reaches and in what order, as Consul's
servers run it:

- a server asked directly (not ``local_only``, not already forwarded, with a WAN pool) runs the
  operation on the **WAN pool** first (every server of every federated datacenter), then on its
  own **LAN pool**, then forwards it, marked forwarded, to one server of every other known
  datacenter, which runs it on that datacenter's LAN pool only;
- ``local_only`` (list only), a forwarded request or a server without a WAN pool: the LAN pool
  only;
- a client agent forwards the whole request to a server of its datacenter (``Keyring.Operation``
  over the server RPC port), as a Consul client agent does.

Each pool's answer is one Consul ``KeyringResponse`` (``WAN``, ``Datacenter`` (the answering
server's datacenter, also for the WAN entry, as Consul fills it), ``Segment``, ``Messages``,
``Keys``, ``PrimaryKeys``, ``NumNodes``) plus the pool's ``Error`` text, which the HTTP layer
turns into Consul's multi-error 500. The per-pool queries themselves are serf's internal
keyring queries (:mod:`proconsul.serf.queries`).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from proconsul.gossip.keyring import KeyringError
from proconsul.rpc_api import CALLER_TOKEN, DatacenterRouter, RPCError, ServerCaller
from proconsul.serf.queries import KEYRING_OPERATIONS, KeyringQueries

logger = logging.getLogger(__name__)

# The server RPC method (proconsul's name for Consul's Internal.KeyringOperation).
KEYRING_RPC = "Keyring.Operation"
# A keyring query waits for every member's answer up to its gossip deadline; leave room for it.
KEYRING_RPC_TIMEOUT_S = 60.0


def _entry(summary: dict[str, Any], datacenter: str, wan: bool) -> dict[str, Any]:
    return {
        "WAN": wan,
        "Datacenter": datacenter,
        "Segment": "",
        "Messages": summary["Messages"],
        "Keys": summary["Keys"],
        "PrimaryKeys": summary["PrimaryKeys"],
        "NumNodes": summary["NumNodes"],
        "Error": summary["Error"],
    }


def validate(op: str, key: str, local_only: bool) -> None:
    """Refuse what Consul refuses before anything is sent; :class:`KeyringError` (the operator's
    input, a 400) or ValueError (our misuse)."""
    if op not in KEYRING_OPERATIONS:
        raise ValueError(f"unknown keyring operation {op!r}")
    if local_only and op != "list":
        raise KeyringError("argument error: LocalOnly can only be used for List operations")
    if op != "list":
        try:
            base64.b64decode(key, validate=True)
        except ValueError:
            raise KeyringError(f"Invalid key: {key!r} is not valid base64") from None


class KeyringOperations:
    """One agent's entry point for keyring operations, and a server's ``Keyring.Operation``.

    Args:
        datacenter: ours, as each pool's answer names it.
        lan: the LAN pool's keyring queries.
        wan: the WAN pool's (servers with a WAN pool only).
        router: the way to other datacenters' servers (servers with a WAN pool only).
        forward: a client agent's way to a server, which runs the operation for it (None on
            servers, which run it themselves and answer `handle_rpc`).
    """

    def __init__(
        self,
        datacenter: str,
        lan: KeyringQueries,
        wan: KeyringQueries | None = None,
        router: DatacenterRouter | None = None,
        forward: ServerCaller | None = None,
    ) -> None:
        self.datacenter = datacenter
        self.lan = lan
        self.wan = wan
        self.router = router
        self.forward = forward

    async def run(self, op: str, key: str = "", local_only: bool = False) -> list[dict[str, Any]]:
        """Run `op` where Consul runs it; one entry per pool reached (WAN first)."""
        validate(op, key, local_only)
        body = {"op": op, "key": key, "local_only": local_only, "forwarded": False}
        token = CALLER_TOKEN.get()
        if token:
            body["token"] = token  # servers with ACLs on check it (keyring:read / keyring:write)
        if self.forward is not None:
            reply = await self.forward.call(KEYRING_RPC, body, timeout_s=KEYRING_RPC_TIMEOUT_S)
            return list(reply or [])
        return await self._on_server(op, key, local_only, forwarded=False)

    async def handle_rpc(self, body: Any) -> list[dict[str, Any]]:
        """``Keyring.Operation`` on a server (registered by the agent under `KEYRING_RPC`)."""
        if not isinstance(body, dict):
            raise RPCError("keyring: malformed request")
        op, key = str(body.get("op", "")), str(body.get("key", ""))
        local_only, forwarded = bool(body.get("local_only")), bool(body.get("forwarded"))
        try:
            validate(op, key, local_only)
        except (KeyringError, ValueError) as exc:
            raise RPCError(str(exc)) from None
        return await self._on_server(op, key, local_only, forwarded)

    async def _pool(self, queries: KeyringQueries, op: str, key: str, wan: bool) -> dict[str, Any]:
        summary = await queries.operation(op, key)
        return _entry(summary, self.datacenter, wan)

    async def _on_server(self, op: str, key: str, local_only: bool, forwarded: bool) -> list[dict[str, Any]]:
        if local_only or forwarded or self.wan is None:
            return [await self._pool(self.lan, op, key, wan=False)]
        entries = [await self._pool(self.wan, op, key, wan=True)]
        entries.append(await self._pool(self.lan, op, key, wan=False))
        if self.router is None:
            return entries
        remote = [dc for dc in self.router.datacenters() if dc != self.datacenter]
        body = {"op": op, "key": key, "local_only": False, "forwarded": True}
        token = CALLER_TOKEN.get()
        if token:
            body["token"] = token  # the other datacenters' servers check it
        for dc in remote:
            reply = await self.router.call(dc, KEYRING_RPC, body, timeout_s=KEYRING_RPC_TIMEOUT_S)
            entries.extend(reply or [])
        return entries
