"""Server-mode wiring: the server port, bootstrap, joining, and leadership-driven duties.

Owns how a non-dev server becomes part of a Raft cluster:
- the listener on `bind_addr:ports.server`, multiplexing client RPC and Raft traffic;
- bootstrap: `-bootstrap` (or `-bootstrap-expect=1`) starts a one-server cluster;
  `-bootstrap-expect=N` counts the servers of this datacenter seen alive in the LAN pool (tags
  role=consul, id, port, expect) and asks the `-join`/`-retry-join` addresses who they are
  (`Status.Identify` on their server port) until N servers expecting N are known, then every one
  of them starts with the same initial voters (Consul's expect bootstrap); a server expecting
  another number or in `-bootstrap` mode stops it, as in Consul's maybeBootstrap;
- joining: a server with no state and no bootstrap asks the join addresses for the leader and
  requests to be added as a voter (`Raft.Join`);
- a restarted server uses what is on disk and needs no flags beyond its config; it asks the
  leader to count it as a voter again (it may have left, or been removed, meanwhile);
- on gaining leadership: TTL timers for every session are re-armed; every server registers
  itself (node, `serfHealth`, service `consul`) through the leader;
- the leader's dead-server cleanup (`proconsul.server.autopilot`): left servers, and failed ones within
  the quorum rules, are removed from the Raft configuration.

Until the gossip issue lands, join addresses are contacted on this agent's server port
(`ports.server`), whatever port they carry: they name hosts, not gossip endpoints.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import proconsul
from proconsul.raft.node import RaftServer
from proconsul.rpc_api import RPCError
from proconsul.server.autopilot import DeadServerCleanup, LANServers, ServerHealthView
from proconsul.server.leader import SessionTimers, reconcile_alive_server
from proconsul.server.rpc import SERVER_ONLY_METHODS, Server
from proconsul.state.records import Node
from proconsul.tasks import cancel_and_wait
from proconsul.transport import ConnectionPool, Listener, RPCSecurity, rpc_stream_handler
from proconsul.wire import ConnType

if TYPE_CHECKING:
    from proconsul.config import RuntimeConfig

logger = logging.getLogger(__name__)


def join_targets(addresses: list[str], server_port: int) -> list[str]:
    out = []
    for addr in addresses:
        host = addr
        if addr.startswith("[") and "]" in addr:
            host = addr[1 : addr.index("]")]
        elif addr.count(":") == 1:
            host = addr.split(":", 1)[0]
        out.append(f"{host}:{server_port}")
    return out


def server_identity(cfg: RuntimeConfig, node_id: str, node_name: str, raft_address: str) -> dict[str, Any]:
    """What a server answers to `Status.Identify` (bootstrap_expect counts these)."""
    return {
        "id": node_id,
        "name": node_name,
        "addr": raft_address,
        "dc": cfg.datacenter,
        "expect": cfg.bootstrap_expect,
        "server": True,
        "version": proconsul.__version__,
    }


class ClusterMember:
    """A server agent's membership in its datacenter's Raft cluster.

    Args:
        config: the agent's configuration as it is now.
        node_id, node_name: ours.
        raft, server, session_timers: this server's Raft driver, RPC server and session TTLs.
        security: TLS on the server port (proconsul.tls.rpc; None: plaintext only): the same
            policy dials other servers (forwarding, joins) and accepts their connections.
        lan: the LAN pool (servers seen there count for bootstrap_expect; dead-server cleanup).
        node_record, service_meta: this node's catalog record and the `consul` service's meta,
            which the server registers through the leader.
        health: the autopilot health tracker (built after this, hence a getter).
        pool: RPC to the other servers of this datacenter (joins, bootstrap, autopilot), shared
            with the RPC server's forwarding to the leader; closed by `stop`.

    The Raft driver is built before this and calls `leadership_changed` (the agent passes it
    as the driver's `on_leadership`).
    """

    def __init__(
        self,
        config: Callable[[], RuntimeConfig],
        node_id: str,
        node_name: str,
        raft: RaftServer,
        server: Server,
        session_timers: SessionTimers,
        security: RPCSecurity | None,
        lan: LANServers,
        node_record: Callable[[], Node],
        service_meta: Callable[[], dict[str, str]],
        health: Callable[[], ServerHealthView],
        pool: ConnectionPool,
    ) -> None:
        self._config = config
        self.node_id = node_id
        self.node_name = node_name
        self.raft = raft
        self.server = server
        self.session_timers = session_timers
        self.lan = lan
        self._node_record = node_record
        self._service_meta = service_meta
        self._health = health
        cfg = config()
        self.pool = pool
        self.listener = Listener(
            cfg.bind_addr,
            cfg.ports.server,
            {
                ConnType.RPC: rpc_stream_handler(server.handle_rpc, security, SERVER_ONLY_METHODS,
                                                 dispatch_now=server.handle_rpc_now),
                ConnType.RAFT: raft.serve_stream,
            },
            security=security,
            server_only=(ConnType.RAFT,),  # with verify_incoming, only a server certificate streams Raft
        )
        self.joins = join_targets(list(cfg.retry_join) + list(cfg.start_join), cfg.ports.server)
        self._tasks: list[asyncio.Task[None]] = []
        self._logged: set[str] = set()  # conflict lines already logged (the loop repeats every second)
        self.status = "starting"
        # Leader only: servers that left or died come out of the Raft configuration.
        self.autopilot = DeadServerCleanup(node_id, cfg.datacenter, raft, server, self.pool, lan, health)

    @property
    def config(self) -> RuntimeConfig:
        return self._config()

    async def start(self) -> None:
        await self.listener.start()
        cfg = self.config
        loop = asyncio.get_running_loop()
        if self.raft.has_state:
            self.status = "rejoining from the state on disk"
            await self.raft.start()
            if self.joins:
                self._tasks.append(loop.create_task(self._rejoin(), name="rejoin"))
        elif cfg.bootstrap or cfg.bootstrap_expect == 1:
            self.raft.bootstrap({self.node_id: self.raft.address})
            self.status = "bootstrapped a single-server cluster"
            await self.raft.start()
        elif cfg.bootstrap_expect > 1:
            self.status = f"waiting for {cfg.bootstrap_expect} servers to bootstrap"
            self._tasks.append(loop.create_task(self._expect_bootstrap(cfg.bootstrap_expect), name="bootstrap"))
        else:
            self.status = "waiting to join a cluster"
            await self.raft.start()
            self._tasks.append(loop.create_task(self._join_loop(), name="join"))
        self._tasks.append(loop.create_task(self._register_self_loop(), name="register-self"))
        self._tasks.append(loop.create_task(self.autopilot.run(), name="autopilot"))
        self._tasks.append(loop.create_task(self._health().run(), name="autopilot-health"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        await self.raft.stop()
        await self.listener.stop()
        await self.pool.close()

    # ------------------------------------------------------------------------------ bootstrap

    async def _identify(self, target: str) -> dict[str, Any] | None:
        try:
            reply = await self.pool.call(target, "Status.Identify", None, timeout_s=5.0)
        except Exception:  # not up yet, or not ours: try again later
            return None
        return reply if isinstance(reply, dict) else None

    def _gossip_servers(self, expect: int) -> dict[str, str] | None:
        """Servers of our datacenter seen alive in the LAN pool, by node ID (Consul's
        maybeBootstrap); None when one of them rules a bootstrap out (another expect value, or
        a server in bootstrap mode)."""
        cfg = self.config
        found: dict[str, str] = {}
        for rec in self.lan.members():
            m, tags = rec.member, rec.member.tags
            if tags.get("role") != "consul" or m.name == self.node_name or rec.status != 1:
                continue
            if tags.get("dc") != cfg.datacenter:
                self._log_once(f"cluster: Member {m.name} has a conflicting datacenter, ignoring")
                continue
            try:
                their_expect = int(tags.get("expect", "0"))
            except ValueError:
                their_expect = 0
            if their_expect and their_expect != expect:
                self._log_once(f"cluster: Member {m.name} has a conflicting expect value. "
                               "All nodes should expect the same number.")
                return None
            if tags.get("bootstrap") == "1":
                self._log_once(f"cluster: Member {m.name} has bootstrap mode. Expect disabled.")
                return None
            if tags.get("id"):
                found[tags["id"]] = f"{m.addr[0]}:{tags.get('port', str(cfg.ports.server))}"
        return found

    def _log_once(self, line: str) -> None:
        if line not in self._logged:
            self._logged.add(line)
            logger.error("%s", line)

    async def _expect_bootstrap(self, expect: int) -> None:
        cfg = self.config
        interval = min(cfg.retry_interval_s, 1.0)
        while True:
            peers: dict[str, str] = {self.node_id: self.raft.address}
            # Servers the LAN pool told us about count as much as the join addresses.
            from_gossip = self._gossip_servers(expect)
            if from_gossip is None:
                await asyncio.sleep(interval)
                continue
            peers.update(from_gossip)
            for target in self.joins:
                info = await self._identify(target)
                if info and info.get("dc") == cfg.datacenter and info.get("server"):
                    if info.get("expect") not in (expect, 0):
                        logger.error(
                            "cluster: %s expects %s servers, we expect %d; not bootstrapping with it",
                            target, info.get("expect"), expect,
                        )
                        continue
                    peers[str(info["id"])] = str(info["addr"])
            if self.raft.has_state:
                break  # someone added us meanwhile
            if len(peers) >= expect:
                logger.info("cluster: found %d servers, bootstrapping: %s", len(peers), sorted(peers))
                self.raft.bootstrap(peers)
                break
            logger.info("cluster: found %d of %d expected servers; retrying", len(peers), expect)
            await asyncio.sleep(interval)
        self.status = "bootstrapped"
        await self.raft.start()

    async def _join_loop(self) -> None:
        """Ask a known server's leader to add us, until we are part of a configuration."""
        interval = min(self.config.retry_interval_s, 2.0)
        while self.raft.core is not None and self.node_id not in self.raft.core.config.voters:
            for target in self.joins:
                info = await self._identify(target)
                if not info:
                    continue
                try:
                    await self.pool.call(target, "Raft.Join", {"id": self.node_id, "addr": self.raft.address},
                                         timeout_s=10.0)
                    logger.info("cluster: joined through %s", target)
                    break
                except Exception as exc:
                    logger.info("cluster: join through %s failed: %s", target, exc)
            await asyncio.sleep(interval)
        self.status = "joined"

    async def _rejoin(self) -> None:
        """A restarted server asks the leader to count it as a voter, once one answers.

        It may have left gracefully or been removed while it was away, which its own log need
        not show (a leader stops replicating to a server as it removes it). Consul's leader
        re-adds an alive server it sees in the LAN pool; here the server asks, and `Raft.Join`
        changes nothing for a server that is still a member.
        """
        interval = min(self.config.retry_interval_s, 2.0)
        while not self.raft.is_leader():  # a leader is a member by definition
            for target in self.joins:
                try:
                    await self.pool.call(target, "Raft.Join", {"id": self.node_id, "addr": self.raft.address},
                                         timeout_s=10.0)
                    logger.info("cluster: the leader (through %s) counts this server as a voter", target)
                    return
                except Exception as exc:  # not the leader, not up yet: try the next one
                    logger.debug("cluster: rejoin through %s: %s", target, exc)
            await asyncio.sleep(interval)

    # --------------------------------------------------------------------------- leadership

    def leadership_changed(self, is_leader: bool) -> None:
        """Raft's `on_leadership`: a new leader re-arms session TTLs and registers itself."""
        if is_leader:
            _, sessions = self.server.store.list_sessions()
            self.session_timers.arm_all([s for s in sessions if s.ttl])
            self._tasks.append(asyncio.get_running_loop().create_task(self._register_self_loop(), name="reconcile"))
        else:
            self.session_timers.stop()

    async def _register_self_loop(self) -> None:
        """Register this server (serfHealth, service consul) through the leader, retrying."""
        backoff = 0.2
        while True:
            try:
                await reconcile_alive_server(
                    self.server, self._node_record(), self.config.ports.server, self._service_meta(),
                )
                return
            except RPCError as exc:
                logger.debug("cluster: self-registration not possible yet: %s", exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
