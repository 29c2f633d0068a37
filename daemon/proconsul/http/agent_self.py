"""`/v1/agent/self` and `/v1/agent/version`: the views of this agent's own configuration, gossip
member record and statistics.

Owns building those answers (Consul's `Config`, `DebugConfig`, `Coord`, `Member`, `Stats` and
`Meta` sections, the `Stats` of the agent, consensus, Raft, runtime and gossip pools) from the
narrow parts `AgentSelf` is built with; the agent (the composition root) builds it once and hands
it to the HTTP API. The member record itself stays the agent's (`Agent.member`): its tags are
what the agent advertises over gossip, and this view shows them as they are.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import proconsul
from proconsul.coordinate import Coordinate

if TYPE_CHECKING:
    from proconsul.config import RuntimeConfig
    from proconsul.local.state import LocalState
    from proconsul.raft.node import RaftServer
    from proconsul.rpc_api import ServerAccess


class PoolCounts(Protocol):
    """A gossip pool's member counts by status (serf.pool.SerfPool.counts: members, failed, left)."""

    def counts(self) -> dict[str, str]: ...


class CountedLog(Protocol):
    """A log without Raft under it (-dev's `SingleNodeLog`, a client agent's `ClientConsensus`):
    how many entries it has committed (a client: as far as it knows)."""

    commit_index: int


def version_info() -> dict[str, Any]:
    """`/v1/agent/version`."""
    return {
        "SHA": "",
        "BuildDate": "",
        "HumanVersion": proconsul.CONSUL_COMPAT_VERSION,
        "FIPS": "",
        "ProconsulVersion": proconsul.__version__,
    }


class AgentSelf:
    """`/v1/agent/self` of one agent.

    `config` is read at each request (a reload replaces it); `server` is the agent's
    `ServerAccess` (its consensus says whether this agent leads and who does); `raft` is the Raft
    driver on a server, None on -dev and on a client agent, whose `log` then counts the commits
    (the composition root passes exactly one of the two); `lan`/`wan` are the gossip pools (no
    WAN pool on a client agent); `coordinate` is this node's network coordinate once it has one;
    `member` is the agent's gossip member record.
    """

    def __init__(
        self,
        config: Callable[[], RuntimeConfig],
        node_name: str,
        node_id: str,
        address: str,
        *,
        local: LocalState,
        server: ServerAccess,
        raft: RaftServer | None,
        log: CountedLog | None,
        lan: PoolCounts,
        wan: PoolCounts | None,
        coordinate: Callable[[], Coordinate | None],
        member: Callable[[], dict[str, Any]],
    ) -> None:
        self.config = config
        self.node_name = node_name
        self.node_id = node_id
        self.address = address
        self.local = local
        self.server = server
        self.raft = raft
        self.log = log
        self.lan = lan
        self.wan = wan
        self.coordinate = coordinate
        self.member = member

    def self_info(self) -> dict[str, Any]:
        cfg = self.config()
        return {
            "Config": {
                "Datacenter": cfg.datacenter,
                "PrimaryDatacenter": cfg.primary_datacenter or cfg.datacenter,
                "NodeName": self.node_name,
                "NodeID": self.node_id,
                "Partition": "",
                "Revision": "",
                "Server": cfg.server,
                "Version": proconsul.CONSUL_COMPAT_VERSION,
                "BuildDate": "",
            },
            "DebugConfig": {
                "Datacenter": cfg.datacenter,
                "NodeName": self.node_name,
                "NodeID": self.node_id,
                "ServerMode": cfg.server,
                "DevMode": cfg.dev,
                "EnableDebug": cfg.enable_debug,
                "Bootstrap": cfg.bootstrap,
                "BootstrapExpect": cfg.bootstrap_expect,
                "DataDir": cfg.data_dir or "",
                "ClientAddrs": list(cfg.client_addr),
                "AdvertiseAddrLAN": self.address,
                "HTTPPort": cfg.ports.http,
                "HTTPSPort": cfg.ports.https,
                "DNSPort": cfg.ports.dns,
                "ServerPort": cfg.ports.server,
                "SerfPortLAN": cfg.ports.serf_lan,
                "SerfPortWAN": cfg.ports.serf_wan,
                "DNSDomain": cfg.domain,
                "LogLevel": cfg.log_level,
                "EnableScriptChecks": cfg.enable_script_checks,
                "EnableLocalScriptChecks": cfg.enable_local_script_checks,
                "KVMaxValueSize": cfg.limits.kv_max_value_size,
                "TxnMaxReqLen": cfg.limits.txn_max_req_len,
                "ConfigFiles": list(cfg.sources),
            },
            "Coord": (self.coordinate() or Coordinate.origin()).to_json(),
            "Member": self.member(),
            "Stats": self.stats(cfg),
            "Meta": dict(self.local.node_meta),
            "xDS": None,
        }

    def stats(self, cfg: RuntimeConfig) -> dict[str, dict[str, str]]:
        local = self.local
        consensus = self.server.consensus
        return {
            "agent": {
                "check_monitors": str(sum(1 for c in local.checks.values() if c.definition.type == "script")),
                "check_ttls": str(sum(1 for c in local.checks.values() if c.definition.type == "ttl")),
                "checks": str(len(local.checks)),
                "services": str(len(local.services)),
            },
            "build": {"prerelease": "", "revision": "", "version": proconsul.CONSUL_COMPAT_VERSION},
            "consul": {
                "bootstrap": str(cfg.bootstrap).lower(),
                "known_datacenters": str(len(self.server.known_datacenters())),
                "leader": str(consensus.is_leader()).lower(),
                "leader_addr": consensus.leader_address(),
                "server": str(cfg.server).lower(),
            },
            "raft": self.raft_stats(),
            "runtime": {
                "arch": platform.machine(),
                "os": sys.platform,
                "version": f"python{platform.python_version()}",
                "cpu_count": str(os.cpu_count() or 1),
            },
            "serf_lan": self.lan.counts(),
            **({"serf_wan": self.wan.counts()} if self.wan is not None else {}),
        }

    def raft_stats(self) -> dict[str, str]:
        raft = self.raft
        if raft is None or raft.core is None:
            # -dev's single-node log and a client's consensus view count commits; a server
            # whose Raft has not started yet has none.
            index = str(self.log.commit_index if self.log is not None else 0)
            return {"applied_index": index, "commit_index": index, "last_log_index": index,
                    "num_peers": "0", "state": "Leader", "protocol_version": "3"}
        core = raft.core
        return {
            "applied_index": str(raft.applied_index),
            "commit_index": str(core.commit_index),
            "last_log_index": str(core.last_index),
            "term": str(core.term),
            "num_peers": str(max(len(core.config.voters) - 1, 0)),
            "state": core.role.value.capitalize(),
            "protocol_version": "3",
        }
