"""Client agents: the RPC path to servers learned from gossip.

Owns what a client agent (no ``-server``) puts where a server agent has its ``rpc.Server``:
:class:`RemoteServer` answers ``query``/``write`` by calling a server of our datacenter over
the connection pool (``Client.Query`` / ``Client.Write``; the server forwards to its leader
once), choosing among the alive ``role=consul`` gossip members with Consul's router policy
(``server_manager.ServerList``: stick to one, move a failing one to the end, reshuffle every
few minutes). :class:`ClientConsensus` stands in for
the replicated log where the agent asks "who leads?" (refreshed from a server every few
seconds) and never leads itself.

Writes are retried on another server only when the connection could not be opened (the
command was never sent); once sent, a lost connection is an unknown outcome, as on servers.
Identical blocking reads travel as one call (`rpc.SharedCalls`), so a thousand local watchers
of one service cost the server one parked read and one answer.

Consul's client metrics: ``client.rpc`` counts every RPC sent to a server (each attempt, a retry
on another server included), ``client.rpc.failed`` (label ``server``, the server's node name)
every one that failed, whether the connection failed or the server answered with an error.
Consul's ``client.rpc.exceeded`` has no counterpart: client agents have no RPC rate limit here.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

from proconsul.metrics import Metrics
from proconsul.rpc_api import (
    CALLER_TOKEN,
    NoLeader,
    NoPathToDatacenter,
    QueryMeta,
    QueryOptions,
    RPCError,
    RPCHandler,
    UnknownOutcome,
    WriteMeta,
)
from proconsul.server.rpc import ReadFn, SharedCalls, args_key, decode_result
from proconsul.server.server_manager import ServerList
from proconsul.state import commands
from proconsul.state.store import Store
from proconsul.transport import ConnectionPool, RemoteError, RPCSecurity

logger = logging.getLogger(__name__)

# How often a client asks a server who leads (for /v1/status/leader and `members`-style views).
LEADER_REFRESH_S = 2.0


class NoServers(RPCError):
    def __init__(self) -> None:
        super().__init__("No known Consul servers")


class ClientConsensus:
    """The consensus view of a client: never the leader; the leader as a server last said."""

    def __init__(self) -> None:
        self.leader = ""
        self.voter_list: list[tuple[str, str, str]] = []
        self.commit_index = 0

    def learn(self, leader: str, voters: list[tuple[str, str, str]] | None = None) -> None:
        """What a server said (`Status.Leader`): the leader's address ("" for none) and, when
        given, the voters."""
        self.leader = leader
        if voters is not None:
            self.voter_list = voters

    def is_leader(self) -> bool:
        return False

    def ready_for_reads(self) -> bool:
        return False

    def leader_address(self) -> str:
        return self.leader

    def last_contact_ms(self) -> int:
        return 0

    def voters(self) -> list[tuple[str, str, str]]:
        return list(self.voter_list)

    async def apply(self, command: commands.Command, encoded: bytes | None = None) -> tuple[int, Any]:
        raise RPCError("client agents do not apply commands")

    async def apply_batch(self, batch: list[tuple[commands.Command, bytes]]) -> list[Any]:
        raise RPCError("client agents do not apply commands")

    async def verify_leader(self) -> None:
        raise RPCError("client agents do not lead")


class RemoteServer:
    """``rpc.Server``'s surface for client agents, served by a remote server."""

    # Readers that would look at `store` (DNS) must ask a server instead (see dns_remote).
    catalog_is_remote = True

    def __init__(
        self,
        membership: Any,
        datacenter: str,
        rng: random.Random | None = None,
        security: RPCSecurity | None = None,
        agent_token: Callable[[], str] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.membership = membership
        self.datacenter = datacenter
        self.consensus = ClientConsensus()
        self.pool = ConnectionPool(security=security)  # TLS to the servers when verify_outgoing
        self.store = Store()  # empty: a client holds no catalog
        self.rng = rng or random.Random()
        # The token this agent's own reads and writes carry (anti-entropy): acl.tokens.agent, else default
        # (read at each write: the tokens change at run time); none with ACLs off.
        self._agent_token: Callable[[], str] = agent_token or (lambda: "")
        self.server_list = ServerList(self.rng)
        self._task: asyncio.Task[None] | None = None
        # Identical blocking reads (same query, arguments and options) share one call to a server.
        self._blocking_calls = SharedCalls()
        m = metrics or Metrics()  # without a registry (tests): a private one nobody reads
        self._m_rpc = m.counter("client", "rpc", help="RPCs this agent sent to a server")
        self._m_rpc_failed = m.counter("client", "rpc", "failed", labels=("server",),
                                       help="RPCs this agent sent to a server that failed")

    # --- server choice -----------------------------------------------------------------------

    def _candidates(self) -> list[str]:
        servers = self.server_list
        servers.update([addr for _, addr in self.membership.servers()])
        members = sum(1 for r in self.membership.members() if r.status == 1)
        if servers.maybe_rebalance(asyncio.get_running_loop().time(), members):
            logger.debug("client: rebalanced servers, now preferring %s", servers.servers[0])
        return servers.candidates()

    async def _call(self, method: str, body: Any, timeout_s: float, retry_sent: bool) -> Any:
        candidates = self._candidates()
        if not candidates:
            raise NoServers()
        last: Exception | None = None
        for addr in candidates:
            self._m_rpc.incr()
            try:
                return await self.pool.call(addr, method, body, timeout_s=timeout_s)
            except RemoteError as exc:
                self._rpc_failed(addr)
                raise RPCError(str(exc)) from None
            except ConnectionRefusedError as exc:
                self._rpc_failed(addr)
                last = exc  # never sent: safe to try the next server
            except (TimeoutError, ConnectionError, OSError) as exc:
                self._rpc_failed(addr)
                if not retry_sent:
                    raise UnknownOutcome(f"rpc error: lost the server {addr} mid-write: {exc}") from None
                last = exc
            self.server_list.notify_failed(addr)
            logger.info("client: server %s failed (%s); trying another", addr, last)
        raise RPCError(f"rpc error: no server answered: {last}")

    def _rpc_failed(self, addr: str) -> None:
        """Count a failed RPC to the server at `addr`, labelled with its node name (Consul's)."""
        name = next((n for n, a in self.membership.servers() if a == addr), addr)
        self._m_rpc_failed.with_labels(name).incr()

    # --- Server surface ----------------------------------------------------------------------

    async def query(self, name: str, args: dict[str, Any], opts: QueryOptions) -> tuple[QueryMeta, Any]:
        body = {
            "name": name,
            "args": args,
            "opts": opts.wire(),
        }
        if opts.datacenter and opts.datacenter != self.datacenter:
            body["dc"] = opts.datacenter  # our server forwards it over the WAN
        token = self._token()
        if token:
            body["token"] = token  # the server resolves it, checks the read and filters the answer
        timeout = (self.wait_time(opts) if opts.min_index else 0) + 30.0
        if opts.min_index:
            key = (name, args_key(args), tuple(opts.wire()), opts.datacenter, token)
            reply = await self._blocking_calls.call(key, lambda: self._call("Client.Query", body, timeout, True))
        else:
            reply = await self._call("Client.Query", body, timeout, retry_sent=True)
        index, known_leader, last_contact, consistency = reply["meta"]
        return QueryMeta(index, known_leader, last_contact, consistency, "filtered" in reply), reply["result"]

    def _token(self) -> str:
        """The token a call carries: the request's (CALLER_TOKEN), else the agent's own."""
        caller = CALLER_TOKEN.get()
        return caller if caller is not None else self._agent_token()

    async def write(self, command: commands.Command, datacenter: str = "") -> tuple[WriteMeta, Any]:
        token = self._token()
        if datacenter and datacenter != self.datacenter:
            body = {"dc": datacenter, "command": commands.encode(command), "token": token}
            reply = await self._call("Client.WriteDC", body, 50.0, retry_sent=False)
            return WriteMeta(reply["index"]), decode_result(reply["result"])
        body = {"command": commands.encode(command), "token": token}
        reply = await self._call("Client.Write", body, 40.0, retry_sent=False)
        return WriteMeta(reply["index"]), decode_result(reply["result"])

    async def forward_rpc(self, method: str, body: Any, timeout_s: float = 30.0) -> Any:
        """Send one RPC a server answers itself (e.g. Internal.EventFire, Session.Renew).

        Not retried on another server once sent: the outcome of a lost call is unknown.
        """
        return await self._call(method, body, timeout_s, retry_sent=False)

    async def read(self, opts: QueryOptions, run: ReadFn, tables: Iterable[str],
                   kv_prefix: str | None = None) -> tuple[QueryMeta, Any]:
        # Arbitrary store functions cannot travel; DNS on clients needs named queries.
        raise RPCError("this read is not available on client agents")

    async def call(self, method: str, body: Any, timeout_s: float = 10.0) -> Any:
        """Any other server RPC (e.g. ``Coordinate.Update``); must be safe to resend."""
        return await self._call(method, body, timeout_s, retry_sent=True)

    async def list_datacenters(self) -> list[str]:
        """Every known datacenter, as our server's WAN pool knows them."""
        return list(await self._call("Catalog.ListDatacenters", None, 10.0, retry_sent=True))

    def wait_time(self, opts: QueryOptions) -> float:
        wait = opts.max_wait_s or 300.0
        return wait + wait / 16

    def register(self, method: str, handler: RPCHandler) -> None:
        """A client agent answers no server RPC: what the agent's parts register is dropped."""

    async def handle_rpc(self, method: str, body: Any) -> Any:
        raise RPCError(f"rpc: can't find method {method}")

    def leader(self) -> str:
        return self.consensus.leader_address()

    def peers(self) -> list[str]:
        return [addr for _, _, addr in self.consensus.voters()]

    def check_datacenter(self, dc: str | None) -> None:
        if dc and dc != self.datacenter:
            raise NoPathToDatacenter(dc)

    def known_datacenters(self) -> list[str]:
        """Ours only: the others are known to our server (`list_datacenters` asks it)."""
        return [self.datacenter]

    async def wait_for_leader(self) -> str:
        if not self.consensus.leader:
            raise NoLeader()
        return self.consensus.leader

    # --- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop(), name="client-leader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self.pool.close()

    async def _refresh_loop(self) -> None:
        while True:
            try:
                info = await self._call("Status.Leader", None, 5.0, retry_sent=True)
                voters = [tuple(v) for v in info.get("voters", [])]
                self.consensus.learn(str(info.get("leader", "")), voters)  # type: ignore[arg-type]
            except Exception as exc:
                logger.debug("client: cannot learn the leader yet: %s", exc)
                self.consensus.learn("")
            await asyncio.sleep(LEADER_REFRESH_S)
