"""What crosses the RPC boundary between the HTTP/DNS front ends, servers and client agents.

Owns the errors a server answers with (each mapped to an HTTP status in `http.server`), the query
options and metadata of Consul's reads (`?index`, `?wait`, `?stale`, `?consistent`, `?dc`) and
writes, the `Consensus` protocol (the replicated log as the RPC layer sees it) and the
`ServerAccess` protocol (a datacenter's servers as the agent's front ends see them). A leaf: it
imports nothing of proconsul, so the Raft driver, the servers and the client agents share it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


class Consensus(Protocol):
    """The replicated log as the RPC layer uses it.

    `apply` returns only after the command is committed and applied to the local FSM, with the
    log index and the FSM's result. It raises `NotLeader` when this server cannot propose and
    `UnknownOutcome` when leadership was lost after proposing (the write may or may not commit).
    """

    def is_leader(self) -> bool: ...

    def ready_for_reads(self) -> bool:
        """Leader only: its state machine holds every acknowledged write (see RaftServer)."""
        ...

    def leader_address(self) -> str: ...

    def last_contact_ms(self) -> int: ...

    def voters(self) -> list[tuple[str, str, str]]: ...

    async def apply(self, command: Any, encoded: bytes | None = None) -> tuple[int, Any]:
        """`command` is a `state.commands.Command`; the replicated log itself only carries its
        bytes. `encoded`, when given, is `command`'s encoding already (a forwarded write's body)."""
        ...

    async def apply_batch(self, batch: list[tuple[Any, bytes]]) -> list[Any]:
        """Propose `(command, its encoding)` pairs together (the writes a follower forwards in
        one frame) and wait for all; each outcome is what `apply` returns, or the `RPCError` it
        would raise. Raises `NotLeader` (or another RPCError) only before proposing any."""
        ...

    async def verify_leader(self) -> None: ...


# A server RPC method's implementation: the decoded request body in, the reply body out.
RPCHandler = Callable[[Any], Awaitable[Any]]


class HandlerRegistry(Protocol):
    """Where an agent's parts register the server RPC methods they answer (the in-process
    `Server`; a client agent's `RemoteServer` accepts and ignores them, as it answers none)."""

    def register(self, method: str, handler: RPCHandler) -> None: ...


@runtime_checkable
class ServerAccess(Protocol):
    """This agent's way to its datacenter's servers: what the HTTP API, DNS, checks and
    anti-entropy call. Two implementations: the in-process `server.rpc.Server` (servers and
    `-dev`; it answers from its own store, forwards to the leader, and to other datacenters
    through the WAN `DatacenterRouter`) and the client agent's `server.remote.RemoteServer`
    (every call is an RPC to a server found by gossip).

    `query` answers the named read (server/queries.py) under `opts`, blocking while
    `opts.min_index` is set and not passed; `write` proposes a `state.commands.Command` (in
    `datacenter` when another one is named) and returns once it applied; `read` runs a function
    of the store, which only the in-process server can (the remote one refuses, so DNS on a
    client agent uses named queries, as `catalog_is_remote` tells it). `register` adds a server
    RPC method (the remote server, which answers none, drops it).
    """

    datacenter: str
    consensus: Consensus
    # True on client agents: the local store is empty, ask a server instead of reading it.
    catalog_is_remote: bool

    async def query(self, name: str, args: dict[str, Any], opts: QueryOptions) -> tuple[QueryMeta, Any]: ...

    async def write(self, command: Any, datacenter: str = "") -> tuple[WriteMeta, Any]: ...

    async def read(self, opts: QueryOptions, run: Callable[[Any], tuple[int, Any]], tables: Iterable[str],
                   kv_prefix: str | None = None) -> tuple[QueryMeta, Any]: ...

    async def list_datacenters(self) -> list[str]:
        """Every datacenter this agent can reach (for a client agent, as its server knows them)."""
        ...

    def known_datacenters(self) -> list[str]:
        """The datacenters known here without asking anyone (a client agent: its own)."""
        ...

    def wait_time(self, opts: QueryOptions) -> float:
        """A blocking read's deadline in seconds (?wait, capped, plus jitter)."""
        ...

    async def wait_for_leader(self) -> str:
        """The leader's address ("" when this server is the leader), waiting through an
        election up to rpc_hold_timeout; raises `NoLeader` when there is none."""
        ...

    def register(self, method: str, handler: RPCHandler) -> None: ...

    def leader(self) -> str: ...

    def peers(self) -> list[str]: ...

    def check_datacenter(self, dc: str | None) -> None: ...


class ServerCaller(Protocol):
    """A client agent's way to one of its datacenter's servers (`RemoteServer.call`)."""

    async def call(self, method: str, body: Any, timeout_s: float = 10.0) -> Any: ...


class DatacenterRouter(Protocol):
    """A server's way to the servers of other datacenters (the WAN `Router`)."""

    def datacenters(self) -> list[str]: ...

    async def call(self, dc: str, method: str, body: Any, timeout_s: float = 30.0,
                   retry_sent: bool = True) -> Any: ...


class RPCError(Exception):
    """An error answered to the caller; HTTP maps it to 500 with this text (Consul's behaviour)."""


class NoLeader(RPCError):
    def __init__(self) -> None:
        super().__init__("No cluster leader")


class NotLeader(RPCError):
    def __init__(self, leader: str = "") -> None:
        super().__init__("node is not the leader")
        self.leader = leader


class UnknownOutcome(RPCError):
    """Leadership was lost after the command was proposed: it may or may not have committed."""


class NoPathToDatacenter(RPCError):
    def __init__(self, dc: str) -> None:
        super().__init__("No path to datacenter")
        self.dc = dc


@dataclass(frozen=True, slots=True)
class QueryOptions:
    min_index: int = 0  # ?index: block until the result's index exceeds it
    max_wait_s: float = 0.0  # ?wait, already clamped to max_query_time; 0 = default
    allow_stale: bool = False  # ?stale
    require_consistent: bool = False  # ?consistent
    datacenter: str = ""  # ?dc: answered by a server of that datacenter ("" = ours)
    # ?max_stale / discovery_max_stale (seconds, 0 = none): a stale read from a server that has
    # not heard from the leader for longer is answered by the leader instead (Consul's
    # MaxStaleDuration).
    max_stale_s: float = 0.0

    def too_stale(self, last_contact_ms: int) -> bool:
        return self.allow_stale and self.max_stale_s > 0 and last_contact_ms > self.max_stale_s * 1000

    def wire(self) -> list[Any]:
        """The `opts` list of a Query RPC; readers accept it without the fifth element."""
        opts = [self.min_index, self.max_wait_s, self.allow_stale, self.require_consistent]
        # Only when set, so that a server of an older build (which expects four) still answers.
        return [*opts, self.max_stale_s] if self.max_stale_s > 0 else opts

    @staticmethod
    def from_wire(opts: list[Any], datacenter: str = "") -> QueryOptions:
        min_index, max_wait_s, stale, consistent = opts[:4]
        max_stale_s = float(opts[4]) if len(opts) > 4 else 0.0
        return QueryOptions(min_index, max_wait_s, stale, consistent, datacenter, max_stale_s)


@dataclass(frozen=True, slots=True)
class QueryMeta:
    index: int
    known_leader: bool
    last_contact_ms: int
    consistency: str  # "leader" | "stale" | "consistent"
    # The answering server left out what the caller's token may not read (ACLs; Consul's
    # ResultsFilteredByACLs): the HTTP API says so with X-Consul-Results-Filtered-By-ACLs.
    results_filtered: bool = False


@dataclass(frozen=True, slots=True)
class WriteMeta:
    index: int


# The ACL token (SecretID) of the request being served, set by the HTTP layer while ACLs are on. A
# client agent's write to a server carries it, so the server authorises the caller's token; work
# the agent does on its own (anti-entropy, timers) runs outside any request and carries the
# agent token instead (None here).
CALLER_TOKEN: ContextVar[str | None] = ContextVar("caller_token", default=None)
