"""The agent: composition root that builds, starts, reloads and stops every part.

Owns the start order (state and consensus, leadership, local state, checks, anti-entropy, then
the listeners, then READY), the reaction to signals at safe points (SIGHUP reload, SIGTERM and
SIGINT leave/stop, a second signal exits at once), reload of the reloadable settings, and the
agent's identity (node name, persisted node ID) as `/v1/agent/self` and `members` report it.

Three modes: `-dev` (in-memory, single voter, leader at once, see server/single.py), servers
(`-server`: Raft, see server/cluster.py and server/consensus.py) and client agents (no `-server`:
local state, checks, HTTP and DNS, with every RPC sent to a server learned from LAN gossip, see
server/remote.py). Every agent runs the LAN gossip pool (serf/lan.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
import uuid
from typing import Any

import proconsul
from proconsul import config as configmod
from proconsul.acl.authorizer import Authorizer, PermissionDenied
from proconsul.acl.rules import WRITE
from proconsul.agent import gc_policy, logs
from proconsul.agent.leave import GracefulLeave
from proconsul.agent.systemd import Notifier, PidFileError, remove_pid_file, write_pid_file
from proconsul.agent.tokens import load_persisted_tokens, persist_tokens
from proconsul.dns.server import DNSServer
from proconsul.durations import format_duration
from proconsul.flags import FlagError, HelpRequested, ParsedFlags
from proconsul.http import fast
from proconsul.http.agent_self import AgentSelf
from proconsul.http.common import HTTPError
from proconsul.http.server import HTTPServer
from proconsul.http.workers.feed import ApplyFeed
from proconsul.http.workers.supervisor import WorkerSupervisor
from proconsul.local.cache import AgentCache
from proconsul.local.checks import CheckManager
from proconsul.local.coordinate_sync import CoordinateEndpoint, CoordinateSync
from proconsul.local.events import AgentEvents
from proconsul.local.flap import FlapSettings
from proconsul.local.state import AntiEntropy, LocalCheck, LocalState
from proconsul.local.watch import WatchManager, agent_http_addr, start_agent_watches
from proconsul.metrics import Metrics
from proconsul.metrics.runtime import RuntimeSampler
from proconsul.metrics.statsd import StatsdSinks
from proconsul.raft.node import PeersFileError, RaftServer
from proconsul.raft.recovery import RecoveryError
from proconsul.rpc_api import (
    CALLER_TOKEN,
    NoPathToDatacenter,
    QueryMeta,
    QueryOptions,
    RPCError,
    ServerAccess,
)
from proconsul.serf.keyring import KEYRING_RPC, KeyringOperations
from proconsul.serf.lan import Membership
from proconsul.serf.member import PROTOCOL_VERSIONS, member_json
from proconsul.server import acl_authz, acl_leader, acl_queries
from proconsul.server.acl_authz import same_node
from proconsul.server.acl_resolver import ACLNotFound, ACLResolver
from proconsul.server.acl_rpc import RPCACL
from proconsul.server.admission import lan_admission
from proconsul.server.cluster import ClusterMember, server_identity
from proconsul.server.consensus import CommandStateMachine, RaftLog
from proconsul.server.flood import WAN_JOIN_PORT_TAG, WANFlooder
from proconsul.server.leader import SessionTimers, reconcile_alive_server, reconcile_loop
from proconsul.server.operator import Operator
from proconsul.server.remote import RemoteServer
from proconsul.server.rpc import Server
from proconsul.server.single import SingleNodeLog
from proconsul.server.wan import Router, WANPool
from proconsul.state import render
from proconsul.state.fsm import FSM
from proconsul.state.store import Store
from proconsul.structs import DecodeError, decode_check, decode_service
from proconsul.tls import context as tls_context
from proconsul.tls.rpc import TLSConfigurator
from proconsul.transport import ConnectionPool, set_dial_overrides

logger = logging.getLogger(__name__)

# Consul's refusals of script checks (agent.addCheck), from config files and from the API.
SCRIPTS_DISABLED_LOCAL = (
    "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or "
    "'enable_local_script_checks' to true"
)
SCRIPTS_DISABLED_REMOTE = (
    "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true"
)

# Serf member status numbers as `/v1/agent/members` reports them.
MEMBER_ALIVE = 1


class AgentError(Exception):
    """The agent cannot start; the message says why."""


def _node_id(cfg: configmod.RuntimeConfig) -> str:
    if cfg.node_id:
        return cfg.node_id
    if not cfg.data_dir:
        return str(uuid.uuid4())
    path = os.path.join(cfg.data_dir, "node-id")
    try:
        with open(path, encoding="ascii") as fh:
            existing = fh.read().strip()
        uuid.UUID(existing)
        return existing
    except FileNotFoundError:
        pass
    except ValueError as exc:
        raise AgentError(f"node ID in {path} is invalid: {exc}") from None
    new = str(uuid.uuid4())
    os.makedirs(cfg.data_dir, mode=0o700, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(new)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return new


class Agent:
    def __init__(self, cfg: configmod.RuntimeConfig, flags: ParsedFlags | None = None) -> None:
        self.config = cfg
        self.flags = flags
        self.started_at = time.time()
        self.node_name = cfg.node_name or configmod.hostname()
        self.node_id = _node_id(cfg)
        self.address = cfg.advertise_addr or (cfg.bind_addr if cfg.bind_addr not in ("0.0.0.0", "::") else "127.0.0.1")
        self.tokens: dict[str, str] = {
            "default": cfg.acl.tokens.default,
            "agent": cfg.acl.tokens.agent,
            "agent_recovery": cfg.acl.tokens.agent_recovery,
            "dns": cfg.acl.tokens.dns,
        }
        if cfg.acl.enabled and cfg.acl.enable_token_persistence:
            self.tokens.update(load_persisted_tokens(cfg.data_dir))
        telemetry = cfg.telemetry
        # go-metrics names gauges "<prefix>.<host name>.<name>" unless disable_hostname.
        self.metrics = Metrics(
            prefix=telemetry.metrics_prefix,
            hostname="" if telemetry.disable_hostname else configmod.hostname(),
            prometheus_retention_s=telemetry.prometheus_retention_time_s,
            prefix_filter=telemetry.prefix_filter,
            filter_default=telemetry.filter_default,
        )
        self.runtime_metrics = RuntimeSampler(self.metrics)
        # statsd_address / dogstatsd_addr / statsite_address: every recorded value also goes out
        # as a line to that collector.
        self.statsd_sinks = StatsdSinks.from_config(
            self.metrics, telemetry.statsd_address, telemetry.dogstatsd_addr, telemetry.dogstatsd_tags,
            telemetry.statsite_address,
        )
        # Lock delays are timed on this server's monotonic clock.
        self.store = Store(now=time.monotonic)
        self.fsm = FSM(self.store)
        server_addr = f"{self.address}:{cfg.ports.server}"
        # TLS material of server RPC and HTTPS, replaced on reload (proconsul.tls.rpc).
        try:
            self.tls = TLSConfigurator(
                cfg.tls.internal_rpc,
                cfg.tls.https if cfg.ports.https > 0 else None,
                cfg.datacenter,
                cfg.domain,
                server=cfg.server and not cfg.dev,
                handshake_timeout_s=cfg.limits.rpc_handshake_timeout_s,
            )
        except tls_context.TLSSettingError as exc:
            raise AgentError(f"tls: {exc}") from exc
        # http_workers > 1 on a server: worker processes with read replicas fed by the apply
        # stream (http/workers/, docs/HTTP-WORKERS.md). Client and dev agents serve alone.
        self.http_feed: ApplyFeed | None = None
        self.http_workers: WorkerSupervisor | None = None
        if cfg.http_workers > 1 and cfg.server and not cfg.dev:
            # Raft's status is read late: the driver is built below, with the feed's subscriber.
            self.http_feed = ApplyFeed(self.store, self._worker_hello, status=lambda: self.log if self.raft is not None else None,
                                       metrics=self.metrics)
            self.http_workers = WorkerSupervisor(cfg.http_workers - 1, self.http_feed)
        elif cfg.http_workers > 1:
            logger.warning("agent: http_workers = %d is used on servers only; this agent serves HTTP alone",
                           cfg.http_workers)
        self.membership = Membership(  # LAN gossip pool
            lambda: self.config, self.node_name, self.node_id, self.address, self.member()["Tags"], self.metrics,
        )
        # Servers also gossip in the WAN pool, which routes ?dc= requests to other datacenters
        # (built before the RPC server, which forwards through the router).
        self.wan: WANPool | None = None
        self.router: Router | None = None
        self.flooder: WANFlooder | None = None
        if cfg.server and cfg.ports.serf_wan > 0:
            # The WAN join port is a LAN tag only (Consul's WAN members do not carry it).
            wan_tags = {k: v for k, v in self.member()["Tags"].items() if k != WAN_JOIN_PORT_TAG}
            self.wan = wan = WANPool(
                lambda: self.config, self.node_name, self.address, wan_tags,
                self.membership.keyring, self.membership.save_keyring, self.metrics,
            )
            self.router = Router(
                cfg.datacenter, wan.members, pool=ConnectionPool(security=self.tls),
                coordinates=lambda: wan.node.coordinates,
            )
            # Every server of this datacenter the LAN pool sees is flood-joined into the WAN pool
            # (Consul's LAN -> WAN flooder), on LAN server events and every minute.
            membership = self.membership
            self.flooder = WANFlooder(
                cfg.datacenter, membership.members, wan.members, wan.join,
                active=lambda: not (wan.leaving or membership.leaving),
            )
            membership.on_member_event(self.flooder.on_lan_member)
        self.raft: RaftServer | None = None
        self.log: Any
        raft_log: RaftLog | None = None  # the Raft server's log: its ReadIndex serves the HTTP fast path
        self.remote: RemoteServer | None = None
        if cfg.dev:
            self.log = SingleNodeLog(self.fsm, server_addr, self.node_id, self.node_name)
        elif not cfg.server:
            # A client agent: no Raft, no catalog; every RPC goes to a server found by gossip.
            # With ACLs on, its own writes (anti-entropy) carry the agent token, else the default.
            agent_token = (lambda: self.tokens["agent"] or self.tokens["default"]) if cfg.acl.enabled else None
            self.remote = RemoteServer(self.membership, cfg.datacenter, security=self.tls, agent_token=agent_token,
                                       metrics=self.metrics)
            self.log = self.remote.consensus
        else:
            assert cfg.data_dir, "config validation requires data_dir outside -dev"
            # Consul's timing: 1s heartbeat/election base scaled by raft_multiplier (5 unless
            # tuned for production); one tick is a tenth of it.
            multiplier = cfg.performance.raft_multiplier or 5
            self.raft = RaftServer(
                self.node_id,
                self.node_name,
                server_addr,
                CommandStateMachine(self.fsm, self.http_feed.on_applied if self.http_feed else None),
                cfg.data_dir,
                tick_s=0.1 * multiplier,
                election_tick=10,
                snapshot_threshold=cfg.raft_snapshot_threshold,
                trailing_logs=cfg.raft_trailing_logs,
                snapshot_interval_s=cfg.raft_snapshot_interval_s,
                metrics=self.metrics,
                security=self.tls,
                # The cluster member and the anti-entropy loop are built after the driver (the
                # first takes it, the second the RPC server over it), so these two are called
                # late-bound; Raft calls neither before `cluster.start()` starts it.
                on_leadership=self._leadership_changed,
                # A leader appearing is the moment a waiting anti-entropy sync can succeed.
                on_leader_change=lambda leader: self.anti_entropy.trigger() if leader else None,
                fatal=self._fatal,
            )
            self.log = raft_log = RaftLog(self.raft)
        # ACLs (acl.enabled): every request's token is resolved to an Authorizer (http/acl_gate.py);
        # servers read their own replicated state each time, client agents cache for token_ttl.
        self.acl_resolver: ACLResolver | None = None
        if cfg.acl.enabled:
            # Servers resolve from their own store directly (Consul's servers do; no RPC counted).
            lookup = self.remote.query if self.remote is not None else self._resolve_locally
            self.acl_resolver = ACLResolver(
                lookup, cfg.datacenter, cfg.acl.default_policy, cfg.acl.down_policy,
                lambda: self.tokens, cache_ttl_s=cfg.acl.token_ttl_s if self.remote is not None else 0.0,
                policy_ttl_s=cfg.acl.policy_ttl_s, role_ttl_s=cfg.acl.role_ttl_s,
                version=None if self.remote is not None else self._acl_tables_version,
            )
        # Server-to-server RPC (forwarding to the leader, joins, autopilot): one pipelined pool,
        # shared by the RPC server and the cluster member (which closes it).
        server_pool = ConnectionPool(security=self.tls) if self.raft is not None else None
        # What the HTTP API, DNS, checks and anti-entropy call (`server`): the in-process RPC server
        # (`rpc_server`) on servers and in -dev, the client agent's remote server otherwise.
        self.server: ServerAccess
        self.rpc_server: Server | None = None
        if self.remote is not None:
            self.server = self.remote
        else:
            acl_on = cfg.acl.enabled
            self.rpc_server = Server(
                self.store,
                self.log,
                cfg.datacenter,
                default_query_time_s=cfg.default_query_time_s,
                max_query_time_s=cfg.max_query_time_s,
                voter_refusal=lan_admission(self.membership.members, cfg.datacenter) if self.raft else None,
                metrics=self.metrics,
                pool=server_pool,
                router=self.router,
                rpc_hold_timeout_s=cfg.performance.rpc_hold_timeout_s,
                identity=server_identity(cfg, self.node_id, self.node_name, server_addr) if self.raft else None,
                # A client agent's write over RPC: the caller's token must allow it.
                authorize_write=self._authorize_write if acl_on else None,
                authorize_write_now=self._authorize_write_now if acl_on else None,
                # Reads over RPC are checked with the caller's token; calls to other servers carry one.
                acl_gate=RPCACL(self.acl_resolver.resolve, lambda: self.tokens, cfg.acl.enable_key_list_policy)
                if self.acl_resolver is not None else None,
                acl_bootstrap_reset=acl_leader.BootstrapResetFile(cfg.data_dir) if acl_on and cfg.data_dir else None,
                unsafe_follower_local_reads=cfg.unsafe_follower_local_reads,
                propose_now=raft_log.propose_now if raft_log is not None else None,
                propose_batch_now=raft_log.propose_batch_now if raft_log is not None else None,
                unsafe_reads_before_first_apply=cfg.unsafe_reads_before_first_apply,
            )
            self.server = self.rpc_server
        # What the HTTP fast path reads: the in-process server's store (Raft's ReadIndex behind a
        # `?consistent` read, none on -dev's single voter); a client agent's reads all take the
        # normal path (an RPC to a server).
        self.fast_reads: fast.ReadGate = (
            fast.ClientReads() if self.rpc_server is None else fast.AgentReads(self.rpc_server, raft_log)
        )
        self.local = LocalState(
            self.node_name,
            self.node_id,
            self.address,
            cfg.datacenter,
            dict(cfg.node_meta),
            cfg.data_dir,
            output_max_size=cfg.check_output_max_size,
            # The check manager and the anti-entropy loop both take this local state, and it tells
            # them of its changes: a cycle, broken by calling them late-bound (both exist before
            # anything is added, in start()).
            on_change=lambda: self.anti_entropy.trigger(),
            on_check_added=self._check_added,
            on_check_removed=lambda check_id: self.checks.remove(check_id),
            check_update_interval=lambda: self.config.check_update_interval_s,
        )
        self.checks = CheckManager(
            self._report_check, cfg.enable_script_checks, cfg.enable_local_script_checks, self.local, self.server,
            flap=self._flap_settings,
        )
        self.anti_entropy = AntiEntropy(
            self.local, self.server,
            base_interval=lambda: self.config.ae_interval_s, cluster_size=lambda: len(self.membership.members()),
        )
        self.session_timers = SessionTimers(self.server)
        self.watches = WatchManager()  # the config's `watches` (proconsul.local.watch), started after HTTP
        self.cluster: ClusterMember | None = None
        if self.raft is not None:
            assert self.rpc_server is not None and server_pool is not None
            self.cluster = ClusterMember(
                lambda: self.config, self.node_id, self.node_name, self.raft, self.rpc_server, self.session_timers,
                self.tls, self.membership, self.local.node_record, self.consul_service_meta,
                health=lambda: self.operator.autopilot, pool=server_pool,
            )
            self.rpc_server.register("Session.Renew", self._renew_rpc)
        # Operator raft / snapshot / autopilot endpoints (+ their RPCs).
        self.operator = Operator(
            self.server, self.store, self.fsm, self.raft, self.node_id, self.node_name, lambda: self.config,
            self.membership, pool=server_pool, metrics=self.metrics,
        )
        router = self.router  # servers with a WAN pool
        # User events: fired through a server, received by gossip.
        self.events = AgentEvents(
            cfg.datacenter, self.node_name, lambda: self.local.services, self.membership.node.send_user_event,
            router=router, forward=self.remote.forward_rpc if self.remote is not None else None,
        )
        self.membership.on_user_event(self.events.on_gossip)
        # Network coordinates to the catalog (a server batches Coordinate.Update into Raft).
        self.coordinate_sync = CoordinateSync(
            lambda: self.config, self.node_name, lambda: self.membership.node.coordinates,
            lambda: len(self.membership.members()),
            endpoint=CoordinateEndpoint(self.rpc_server) if self.rpc_server is not None else None,
            router=router, forward=self.remote,
            token=lambda: self.tokens.get("agent") or self.tokens.get("default") or "",
        )
        # Keyring operations over LAN, WAN and other datacenters (+ Keyring.Operation).
        self.keyring_ops = KeyringOperations(
            cfg.datacenter, self.membership.keyring_queries,
            wan=self.wan.keyring_queries if self.wan is not None else None, router=router, forward=self.remote,
        )
        for part in (self.events, self.coordinate_sync):
            part.register_rpc(self.server)
        if self.rpc_server is not None:
            self.rpc_server.register(KEYRING_RPC, self.keyring_ops.handle_rpc)
        # `/v1/agent/self` (http/agent_self.py): with Raft, its driver's statistics; without, the log's count.
        self.self_view = AgentSelf(
            lambda: self.config, self.node_name, self.node_id, self.address, local=self.local, server=self.server,
            raft=self.raft, log=self.log if self.raft is None else None, lan=self.membership, wan=self.wan,
            coordinate=self.coordinate_sync.local_coordinate, member=self.member,
        )
        self.notifier = Notifier()
        # `?cached` reads (http/cached.py); http_config.use_cache = false leaves them uncached.
        self.cache = AgentCache(metrics=self.metrics) if cfg.http_config.use_cache else None
        self.http: Any = None
        self.dns: Any = None
        self._stop = asyncio.Event()
        self._leave_requested = False
        self.leaving: GracefulLeave | None = None  # the graceful leave, once one started
        self._tasks: list[asyncio.Task[Any]] = []
        self._signals_seen = 0
        self.exit_code = 0
        self.reload_errors: list[str] = []

    # --------------------------------------------------------------------------- life cycle

    def _check_added(self, check: LocalCheck) -> None:
        if self.checks.session is not None:
            self.checks.add(check.definition, check.source)

    def _report_check(self, check_id: str, status: str, output: str) -> None:
        if self.config.discard_check_output:
            output = ""
        self.local.update_check(check_id, status, output)

    def _graceful_leave(self) -> GracefulLeave:
        return GracefulLeave(
            self.node_id, self.config, self.membership, self.wan, self.raft,
            remove_peer=lambda peer_id: self.operator.remove_peer(peer_id=peer_id),
        )

    def _start_watches(self, cfg: configmod.RuntimeConfig) -> list[str]:
        """(Re)start the config's watches against our own HTTP API with the agent's token."""
        http_addr = agent_http_addr(self.http.bound if self.http else [], cfg.ports.http)
        token = self.tokens.get("agent") or self.tokens.get("default") or ""
        return start_agent_watches(self.watches, cfg.watches, http_addr, token, http_enabled=cfg.ports.http > 0)

    async def start(self) -> None:
        cfg = self.config
        set_dial_overrides(cfg.dial_overrides)
        try:
            await self.membership.start()
        except OSError as exc:
            raise AgentError(f"Failed to start LAN gossip on port {cfg.ports.serf_lan}: {exc}") from None
        if self.wan is not None:
            try:
                await self.wan.start()
            except OSError as exc:
                raise AgentError(f"Failed to start WAN gossip on port {cfg.ports.serf_wan}: {exc}") from None
        if self.cluster is not None:
            await self.cluster.start()
        elif self.remote is not None:
            self.remote.start()
        elif self.rpc_server is not None:  # -dev
            await reconcile_alive_server(
                self.rpc_server, self.local.node_record(), cfg.ports.server, self.consul_service_meta()
            )
        self._tasks.append(asyncio.get_running_loop().create_task(self.runtime_metrics.run(), name="runtime-metrics"))
        if self.statsd_sinks is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self.statsd_sinks.run(), name="statsd-sinks"))
        await self.checks.open()
        errors = self._load_config_definitions(cfg)
        if errors:
            raise AgentError("; ".join(errors))
        for warning in self.local.load_persisted():
            logger.warning("agent: %s", warning)
        # In dev mode the first full sync runs before the listeners open, so what the config
        # file defines is in the catalog by the time a client can ask. A cluster server may
        # have no leader yet: its anti-entropy loop syncs (with back-off) once there is one.
        if cfg.dev:
            await self.local.sync_full(self.server)
        self._tasks.append(asyncio.get_running_loop().create_task(self.anti_entropy.run(), name="anti-entropy"))
        reaper = self.local.run_reaper(
            lambda: self.config.check_reap_interval_s, lambda: self.config.check_deregister_interval_min_s
        )
        self._tasks.append(asyncio.get_running_loop().create_task(reaper, name="check-reaper"))
        addresses = list(cfg.addresses.http or cfg.client_addr)
        https = None
        context = self.tls.https_context()
        if context is not None:
            # Built in __init__ (config validation built it once before); the same object serves
            # for the agent's life, handing new handshakes the certificate of the last reload.
            https = (list(cfg.addresses.https or cfg.client_addr), cfg.ports.https, context)
        if self.cache is not None:
            self.cache.start()
        self.http = HTTPServer(self, addresses, cfg.ports.http, https, reads=self.fast_reads)
        await self.http.start()
        if self.http_workers is not None:
            await self.http_workers.start(self.http)
        if errors := self._start_watches(cfg):
            raise AgentError("; ".join(errors))
        if cfg.ports.dns > 0:
            self.dns = DNSServer(self.server, lambda: self.config, metrics=self.metrics, node_name=self.node_name,
                                 acl=self._dns_authorizer if self.acl_resolver is not None else None,
                                 resolve=self.acl_resolver.resolve if self.acl_resolver is not None else None)
            await self.dns.start(list(cfg.addresses.dns or cfg.client_addr), cfg.ports.dns)
        self.membership.start_retry_join(self._join_exhausted)
        if self.wan is not None:
            self.wan.start_retry_join(self._join_exhausted)
        if self.flooder is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self.flooder.run(), name="wan-flood"))
            self.flooder.notify()  # the servers the LAN pool already knows (a restart, a snapshot rejoin)
        reconcile = reconcile_loop(self.membership, self.server, self.log.is_leader, self.node_name)
        self._tasks.append(asyncio.get_running_loop().create_task(reconcile, name="leader-reconcile"))
        if cfg.acl.enabled and self.rpc_server is not None:
            acl_init = acl_leader.init_loop(self.rpc_server, self.log.is_leader,
                                            lambda: self.config.acl.tokens.initial_management)
            self._tasks.append(asyncio.get_running_loop().create_task(acl_init, name="acl-init"))
        self.coordinate_sync.start()
        if cfg.pid_file:
            write_pid_file(cfg.pid_file)
        logger.info("agent: started; node=%s datacenter=%s server=%s", self.node_name, cfg.datacenter, cfg.server)
        self.notifier.ready(self.status_text())
        self._tasks.append(asyncio.get_running_loop().create_task(self.notifier.run(self.status_text), name="systemd"))

    def _serving_text(self) -> str:
        if self.remote is not None:
            leader = self.log.leader_address()
            servers = len(self.membership.servers())
            return f"serving as a client; {servers} servers known" + (f", leader {leader}" if leader else "")
        if self.cluster is None:
            return f"serving; leader of {self.config.datacenter} (dev)"
        leader = self.log.leader_address()
        if leader:
            return f"serving; leader {leader}" + (" (this server)" if self.log.is_leader() else "")
        return f"serving; waiting for a leader ({self.cluster.status})"

    def status_text(self) -> str:
        """What the agent serves or waits for, as systemd's `STATUS=` shows it."""
        if self.leaving is not None:
            return self.leaving.status
        text = self._serving_text()
        if self.reload_errors:
            text += f"; last reload failed, running the previous configuration: {self.reload_errors[0]}"
        return text

    def _load_config_definitions(self, cfg: configmod.RuntimeConfig) -> list[str]:
        errors: list[str] = []
        scripts_ok = cfg.enable_script_checks or cfg.enable_local_script_checks
        for i, raw in enumerate(cfg.services):
            try:
                definition = decode_service(raw)
            except DecodeError as exc:
                errors.extend(f"services[{i}].{e}" for e in exc.errors)
                continue
            if not scripts_ok and any(c.args for c in definition.checks):
                errors.append(f'Failed to register service "{definition.name}": {SCRIPTS_DISABLED_LOCAL}')
                continue
            self.local.add_service(definition, "config", cfg.acl.tokens.config_file_service_registration, persist=False)
        for i, raw in enumerate(cfg.checks):
            try:
                check = decode_check(raw)
                if check.args and not scripts_ok:
                    errors.append(f'Failed to register check "{check.name}": {SCRIPTS_DISABLED_LOCAL}')
                    continue
                self.local.add_check(check, "config", persist=False)
            except DecodeError as exc:
                errors.extend(f"checks[{i}].{e}" for e in exc.errors)
            except KeyError as exc:
                errors.append(f"checks[{i}]: {exc.args[0]}")
        return errors

    def _join_exhausted(self) -> None:
        self.exit_code = 1
        self._stop.set()

    async def stop(self) -> None:
        self.notifier.stopping()
        if self._leave_requested:
            self.leaving = self.leaving or self._graceful_leave()
            if not await self.leaving.run():
                self.exit_code = 1  # Consul: a leave past the graceful timeout exits 1
        if self.http_workers is not None:
            await self.http_workers.stop()
        if self.http is not None:
            await self.http.stop()
        if self.dns is not None:
            await self.dns.stop()
        if self.cache is not None:
            await self.cache.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.session_timers.stop()
        self.watches.stop()
        await self.coordinate_sync.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        await self.membership.stop()
        if self.wan is not None:
            await self.wan.stop()
        if self.router is not None:
            await self.router.close()
        if self.remote is not None:
            await self.remote.stop()
        await self.checks.close()
        if self.config.pid_file:
            remove_pid_file(self.config.pid_file)
        logger.info("agent: stopped")

    def _leadership_changed(self, is_leader: bool) -> None:
        """Raft's `on_leadership`, handed to the cluster member (built after the driver)."""
        assert self.cluster is not None, "Raft starts only in cluster.start()"
        self.cluster.leadership_changed(is_leader)

    def _worker_hello(self) -> dict[str, Any]:
        """What an HTTP worker process is told about this agent (http/workers/feed.py)."""
        return {"config": self.config, "node_name": self.node_name, "node_id": self.node_id}

    def _fatal(self, exc: BaseException) -> None:
        self.exit_code = 1
        self._stop.set()

    def request_leave(self) -> GracefulLeave:
        """Leave, then shut down (`PUT /v1/agent/leave`); wait on the result's `done`."""
        self._leave_requested = True
        self.leaving = self.leaving or self._graceful_leave()
        self._stop.set()
        return self.leaving

    def handle_signal(self, signum: int) -> None:
        """Signals only set flags; the main loop acts on them at a safe point."""
        if signum == signal.SIGHUP:
            asyncio.get_running_loop().create_task(self._reload_from_signal())
            return
        self._signals_seen += 1
        if self._signals_seen > 1:
            logger.warning("agent: caught second signal, exiting now")
            if self.config.pid_file:
                remove_pid_file(self.config.pid_file)
            os._exit(1)
        leave = self.config.leave_on_terminate if signum == signal.SIGTERM else not self.config.skip_leave_on_interrupt
        logger.info("agent: caught signal %s; %s", signal.Signals(signum).name,
                    "graceful leave" if leave else "shutting down without leaving")
        self._leave_requested = leave
        self._stop.set()

    async def _reload_from_signal(self) -> None:
        errors = await self.reload()
        for error in errors:
            logger.error("agent: reload failed, keeping the running configuration: %s", error)

    async def wait(self) -> None:
        await self._stop.wait()
        if self._leave_requested:
            logger.info("agent: gracefully leaving")

    # -------------------------------------------------------------------------------- reload

    async def reload(self) -> list[str]:
        """Re-read the configuration and apply the reloadable part; returns errors, if any.

        systemd sees `RELOADING=1` then `READY=1`; a failed reload keeps the running config and
        says so in `STATUS=` until the next successful one.
        """
        if self.flags is None:
            return []
        self.notifier.reloading()
        errors = await self._reload_config()
        self.reload_errors = errors
        self.notifier.ready(self.status_text())
        return errors

    async def _reload_config(self) -> list[str]:
        try:
            new = configmod.load_from(self.flags).config
        except configmod.ConfigError as exc:
            return list(exc.errors)
        old = self.config
        reloadable, restart = configmod.diff(old, new)
        for name in restart:
            logger.warning("agent: %s changed; it takes effect after a restart", name)
        if watch_errors := WatchManager.validate(new.watches)[1]:
            return watch_errors
        # Certificates, keys and CAs are re-read whether or not their paths changed (rotation
        # replaces the files in place); a bad set keeps the one in use for new connections too.
        try:
            self.tls.reload(new.tls.internal_rpc, new.tls.https if old.ports.https > 0 else None,
                            new.limits.rpc_handshake_timeout_s)
        except tls_context.TLSSettingError as exc:
            logger.error("agent: TLS reload refused, keeping the certificates in use: %s", exc)
            return [f"tls: {exc}"]
        logger.info("agent: TLS certificates re-read for new connections")
        # Replace the config-file services and checks with the new definitions.
        for sid in [s for s, v in self.local.services.items() if v.source == "config"]:
            self.local.remove_service(sid, notify=False)
        for cid in [c for c, v in self.local.checks.items() if v.source == "config"]:
            self.local.remove_check(cid, notify=False)
        errors = self._load_config_definitions(new)
        if errors:
            self._load_config_definitions(old)
            return errors
        logs.set_level(new.log_level)
        if new.log_level != old.log_level:
            logger.info("agent: log level is now %s", new.log_level)
        logger.debug("agent: reloadable settings changed: %s", ", ".join(reloadable) or "none")
        self.local.set_node_meta(dict(new.node_meta))
        if new.telemetry.prefix_filter != old.telemetry.prefix_filter:
            self.metrics.set_filter(new.telemetry.prefix_filter)
        self.tokens["default"] = new.acl.tokens.default or self.tokens["default"]
        self.tokens["agent"] = new.acl.tokens.agent or self.tokens["agent"]
        self.tokens["agent_recovery"] = new.acl.tokens.agent_recovery or self.tokens["agent_recovery"]
        self.tokens["dns"] = new.acl.tokens.dns or self.tokens.get("dns", "")
        if self.acl_resolver is not None:
            self.acl_resolver.invalidate()
        self.config = new
        if self.http_feed is not None:
            self.http_feed.config_changed()
        self._start_watches(new)
        self.anti_entropy.trigger()
        logger.info("agent: reloaded configuration (%d reloadable settings changed)", len(reloadable))
        return []

    # ------------------------------------------------------------------------------- queries

    def _acl_tables_version(self) -> tuple[int, int, int, int]:
        t = self.store.table_index
        return (t["acl_tokens"], t["acl_policies"], t["acl_roles"], self.store.index_offset)

    async def _resolve_locally(self, name: str, args: dict[str, Any], opts: QueryOptions) -> tuple[QueryMeta, Any]:
        assert name == "ACL.Resolve", name  # the only query the ACL resolver makes
        if not opts.allow_stale and not self.log.is_leader():
            # The resolver's second try for a token this server does not know (yet): the leader's.
            assert self.rpc_server is not None  # servers resolve here; client agents ask one
            return await self.rpc_server.query(name, args, opts)
        index, found = acl_queries.resolve(self.store, args)
        return QueryMeta(index, bool(self.log.leader_address()), 0, "stale"), found

    async def _dns_authorizer(self) -> Authorizer:
        """DNS answers with `acl.tokens.dns`, else the default token, else anonymous (Consul's);
        the reads it sends to a server (client agents) carry that token, so the server filters
        them alike."""
        assert self.acl_resolver is not None
        secret = self.acl_resolver.effective_secret(self.tokens.get("dns", ""))
        CALLER_TOKEN.set(secret)  # this DNS question's task only
        return await self.acl_resolver.resolve(secret)

    async def _authorize_write(self, secret: str, command: Any) -> None:
        """A client agent's write over RPC: the caller's token must allow it (ACLs on, servers)."""
        assert self.acl_resolver is not None
        try:
            authz = await self.acl_resolver.resolve(secret)
        except ACLNotFound as exc:
            raise RPCError(str(exc)) from None
        refusal = self._write_refusal(authz, command)
        if refusal:
            raise RPCError(refusal)

    def _authorize_write_now(self, secret: str, command: Any) -> str | None:
        """`_authorize_write` without waiting: "" when the token allows the write, the refusal
        text when it does not, None when the token is not resolved yet (the caller then takes
        `_authorize_write`, which asks for it)."""
        assert self.acl_resolver is not None
        authz = self.acl_resolver.resolve_cached(secret)
        if authz is None:
            return None
        return self._write_refusal(authz, command)

    def _write_refusal(self, authz: Any, command: Any) -> str:
        """"" when `authz` may apply `command`, else the refusal's text."""
        try:
            store = self.store

            def service_name(node: str, sid: str) -> str | None:
                svc = store.services.get(node, {}).get(sid)
                return svc.service if svc is not None else None

            def session_node(sid: str) -> str | None:
                sess = store.sessions.get(sid)
                return sess.node if sess is not None else None

            def node_unchanged(node: Any) -> bool:
                return same_node(store.nodes.get(node.node), node)

            acl_authz.authorize(authz, command, service_name, session_node, node_unchanged)
        except (ACLNotFound, PermissionDenied) as exc:
            return str(exc) or type(exc).__name__
        return ""

    def set_agent_token(self, kind: str, value: str) -> None:
        """`PUT /v1/agent/token/:kind`: replace one of this agent's tokens (persisted with
        acl.enable_token_persistence, as Consul's acl-tokens.json)."""
        self.tokens[kind] = value
        if self.acl_resolver is not None:
            self.acl_resolver.invalidate()
        if self.config.acl.enabled and self.config.acl.enable_token_persistence and self.config.data_dir:
            persist_tokens(self.config.data_dir, self.tokens)

    def consul_service_meta(self) -> dict[str, str]:
        return {
            "raft_version": "3",
            "serf_protocol_current": "2",
            "serf_protocol_max": "5",
            "serf_protocol_min": "1",
            "version": proconsul.CONSUL_COMPAT_VERSION,
        }

    async def touch_session(self, session: Any) -> None:
        """(Re)arm a TTL session's timer on the leader, which is the one that expires it."""
        if not session.ttl:
            return
        await self.renew_session(session.id)

    async def renew_session(self, session_id: str) -> list[dict[str, Any]]:
        """Consul's Session.Renew: the leader re-arms the TTL timer; the session as rendered, or []."""
        if self.remote is not None:
            # A client agent holds no sessions and runs no timers: a server forwards to its leader.
            body = {"ID": session_id, "token": self._outgoing_token()}
            return list(await self.remote.forward_rpc("Session.Renew", body, timeout_s=10.0))
        return await self._renew_on_leader(session_id, self._outgoing_token())

    def _outgoing_token(self) -> str:
        """The token a call to a server carries: the request's, else this agent's own."""
        caller = CALLER_TOKEN.get()
        if caller is not None:
            return caller
        return self.tokens.get("agent") or self.tokens.get("default") or ""

    async def _renew_rpc(self, body: Any) -> list[dict[str, Any]]:
        """Session.Renew over RPC: `{"ID", "token"}` (a bare ID from an older agent carries no
        token). With ACLs on, the token needs session:write on the session's node, as Consul's."""
        session_id, token = (body.get("ID"), str(body.get("token") or "")) if isinstance(body, dict) else (body, "")
        gate = self.rpc_server.acl_gate if self.rpc_server is not None else None
        if gate is not None:
            _, session = self.store.get_session(str(session_id))
            if session is not None:
                authz = await gate.authorizer(token)
                try:
                    authz.require("session", session.node, WRITE)
                except PermissionDenied as exc:
                    raise RPCError(str(exc)) from None
        return await self._renew_on_leader(session_id, token)

    async def _renew_on_leader(self, session_id: Any, token: str = "") -> list[dict[str, Any]]:
        if self.cluster is not None and not self.log.is_leader():
            leader = await self.server.wait_for_leader()
            if leader:
                body = {"ID": session_id, "token": token}
                return list(await self.cluster.pool.call(leader, "Session.Renew", body, timeout_s=10.0))
        _, session = self.store.get_session(str(session_id))
        if session is None:
            return []
        self.session_timers.arm(session)
        return [render.session(session)]

    def server_for_dc(self, dc: str) -> ServerAccess:
        if dc == self.config.datacenter:
            return self.server
        raise NoPathToDatacenter(dc)

    def check_script_allowed(self, checks: Any, source: str) -> None:
        """Consul: script checks from the API need enable_script_checks (a 500, as Consul)."""
        if self.config.enable_script_checks:
            return
        for check in checks:
            if check.args:  # script checks, and docker ones (their args run in the container)
                raise HTTPError(500, SCRIPTS_DISABLED_REMOTE)

    def _flap_settings(self) -> FlapSettings:
        """The agent's check_flap_detection, as the check runners take it (read at each check start)."""
        f = self.config.check_flap_detection
        return FlapSettings(f.enabled, f.window, f.high_threshold, f.low_threshold)

    def member(self) -> dict[str, Any]:
        cfg = self.config
        tags = {
            "role": "consul" if cfg.server else "node",
            "dc": cfg.datacenter,
            "segment": "",
            "id": self.node_id,
            "vsn": "2",
            "vsn_min": "2",
            "vsn_max": "3",
            "build": f"{proconsul.CONSUL_COMPAT_VERSION}:proconsul-{proconsul.__version__}",
        }
        if cfg.server:
            tags.update({"port": str(cfg.ports.server), "raft_vsn": "3", "expect": str(cfg.bootstrap_expect)})
            if cfg.ports.serf_wan > 0:
                # Where the other servers of this datacenter flood-join us into the WAN pool.
                tags[WAN_JOIN_PORT_TAG] = str(cfg.ports.serf_wan)
            if cfg.bootstrap:
                tags["bootstrap"] = "1"
        elif cfg.advertise_reconnect_timeout_s:
            # Consul's advertise_reconnect_timeout: the others reap us after this, not theirs.
            tags["rc_tm"] = format_duration(cfg.advertise_reconnect_timeout_s)
        return {
            "Name": self.node_name,
            "Addr": self.address,
            "Port": cfg.ports.serf_lan,
            "Tags": tags,
            "Status": MEMBER_ALIVE,
            **PROTOCOL_VERSIONS,
        }

    def members(self, wan: bool = False) -> list[dict[str, Any]]:
        me = self.member()
        if wan:
            # Client agents are in no WAN pool (Consul lists nothing for them).
            return self.wan.members_json() if self.wan is not None else []
        return [member_json(rec) for rec in self.membership.members()] or [me]


def _print_banner(agent: Agent) -> None:
    cfg = agent.config
    lines = [
        "==> Starting Proconsul agent...",
        f"              Version: '{proconsul.__version__}' (Consul API {proconsul.CONSUL_COMPAT_VERSION})",
        f"              Node ID: '{agent.node_id}'",
        f"            Node name: '{agent.node_name}'",
        f"           Datacenter: '{cfg.datacenter}' (Segment: '<all>')",
        f"               Server: {str(cfg.server).lower()} (Bootstrap: {str(cfg.bootstrap).lower()})",
        f"          Client Addr: {list(cfg.client_addr)} (HTTP: {cfg.ports.http}, HTTPS: {cfg.ports.https}, "
        f"gRPC: {cfg.ports.grpc}, DNS: {cfg.ports.dns})",
        f"         Cluster Addr: {agent.address} (LAN: {cfg.ports.serf_lan}, WAN: {cfg.ports.serf_wan})",
        "",
        "==> Proconsul agent running!",
    ]
    print("\n".join(lines), flush=True)


async def _run(cfg: configmod.RuntimeConfig, flags: ParsedFlags) -> int:
    try:
        loop = asyncio.get_running_loop()
        agent = Agent(cfg, flags)
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, agent.handle_signal, signum)
        loop.add_signal_handler(signal.SIGPIPE, lambda: None)
        try:
            await agent.start()
        except (AgentError, PidFileError, OSError) as exc:
            print(f"==> Error starting agent: {exc}", file=sys.stderr, flush=True)
            await agent.stop()
            return 1
        _print_banner(agent)
        gc_policy.POLICY.install()  # the startup heap is never scanned again (agent/gc_policy.py)
        await agent.wait()
        await agent.stop()
        return agent.exit_code
    except (AgentError, PeersFileError, RecoveryError) as exc:
        print(f"==> Error starting agent: {exc}", file=sys.stderr, flush=True)
        return 1


def run_agent(argv: list[str]) -> int:
    """`proconsul agent ARGS...`: load the config, refuse bad input, run until stopped."""
    flagset = configmod.agent_flagset()
    try:
        flags = flagset.parse(argv)
    except HelpRequested as exc:
        print(str(exc), end="")
        return 0
    except FlagError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    try:
        result = configmod.load_from(flags)
    except configmod.ConfigError as exc:
        print("==> Config validation failed:", file=sys.stderr)
        for error in exc.errors:
            print(f"    {error}", file=sys.stderr)
        return 1
    cfg = result.config
    for warning in logs.setup_from_config(cfg):
        logger.warning("%s", warning)
    for warning in result.warnings:
        logger.warning("config: %s", warning)
    try:
        import uvloop  # type: ignore[import-not-found]  # optional: a faster event loop when installed

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_run(cfg, flags))
