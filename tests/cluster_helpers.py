"""Real-process clusters for integration tests, and the HTTP reads their tests share.

- `Cluster`: three servers (shared by the operator tests).
- `LanCluster`: one server and client agents in one LAN gossip pool (shared by the gossip,
  client-agent, keyring and coordinate tests).
- `agent_json`, `member_statuses`, `serf_health`, `passing_nodes`: what those tests read back.

Each cluster gets its own loopback subnet (127.a.b.1-N) with the standard ports, so agents find
each other through `-retry-join` exactly as an operator configures them. Same layout as
`tests/integration/test_raft_cluster.py`.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import AgentProcess, proconsul_command, wait_for


def free_subnet(hosts: int = 3) -> str:
    """A 127.a.b.0/24 prefix whose .1-.N have the server and HTTP ports free."""
    for _ in range(50):
        prefix = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}"
        ok = True
        for i in range(1, hosts + 1):
            for port in (8300, 8500):
                with socket.socket() as s:
                    try:
                        s.bind((f"{prefix}.{i}", port))
                    except OSError:
                        ok = False
        if ok:
            return prefix
    raise RuntimeError("no free loopback subnet")


class Cluster:
    """Three `proconsul agent -server -bootstrap-expect=3` processes with raft_multiplier 1."""

    def __init__(self, root: Path, hcl: str = "") -> None:
        self.prefix = free_subnet()
        self.root = root
        self.ips = [f"{self.prefix}.{i}" for i in (1, 2, 3)]
        self.nodes: dict[str, AgentProcess] = {}
        self.hcl = hcl  # extra HCL given to every server

    @staticmethod
    def name(ip: str) -> str:
        return f"s{ip.rsplit('.', 1)[1]}"

    def data_dir(self, ip: str) -> Path:
        return self.root / self.name(ip)

    def node_id(self, ip: str) -> str:
        return (self.data_dir(ip) / "node-id").read_text().strip()

    def server(self, ip: str, *extra: str, expect: bool = True) -> AgentProcess:
        joins = [f"-retry-join={other}" for other in self.ips if other != ip]
        flags = ["-bootstrap-expect=3", *joins] if expect else []
        hcl = ["-hcl", self.hcl] if self.hcl else []
        agent = AgentProcess(
            "-server", *flags, "-hcl", "performance { raft_multiplier = 1 }", *hcl, *extra,
            dev=False, ip=ip, node=self.name(ip), data_dir=str(self.data_dir(ip)),
        )
        agent.wait_for_leader = False
        return agent

    def start(self) -> None:
        for ip in self.ips:
            self.nodes[ip] = self.server(ip).start()
        for agent in self.nodes.values():
            wait_for(agent._leader_known, timeout=60, what=f"a leader seen by {agent.ip}\n{agent.log()}")

    def leader_ip(self, via: AgentProcess) -> str:
        status, _, body = via.http("GET", "/v1/status/leader")
        assert status == 200
        return json.loads(body).rsplit(":", 1)[0]

    def stop(self) -> None:
        for agent in self.nodes.values():
            agent.stop()


class LanCluster:
    """A `-server -bootstrap` agent `srv` (x.1, raft_multiplier 1) and client agents (x.2, x.3,
    ...) that `-retry-join` it every second, each with its data dir under `root`.

    `extra` flags go to every agent (the server and each client made by `client`); `hosts`
    reserves more addresses than the first agents need, for clients a test adds later. Every
    agent started through `start` or `add` is stopped by `stop`.
    """

    def __init__(self, root: Path, clients: tuple[str, ...] = ("c1", "c2"), *extra: str, hosts: int = 0) -> None:
        self.root = root
        self.extra = extra
        self.prefix = free_subnet(max(hosts, 1 + len(clients)))
        self.server_ip = f"{self.prefix}.1"
        self.server = AgentProcess("-server", "-bootstrap", "-hcl", "performance { raft_multiplier = 1 }", *extra,
                                   dev=False, ip=self.server_ip, node="srv", data_dir=str(root / "srv"))
        self.clients = [self.client(name, host=i) for i, name in enumerate(clients, start=2)]
        self.started: list[AgentProcess] = []

    def client(self, name: str, *flags: str, host: int, extra: tuple[str, ...] | None = None) -> AgentProcess:
        """A client agent `name` at x.`host` joining the server (not started); `extra` replaces
        the cluster's flags for it (an agent with another key, say)."""
        return AgentProcess(f"-retry-join={self.server_ip}", "-retry-interval=1s",
                            *(self.extra if extra is None else extra), *flags,
                            dev=False, ip=f"{self.prefix}.{host}", node=name, data_dir=str(self.root / name))

    def start(self) -> list[AgentProcess]:
        """Start the server, then the clients (each once it knows the leader); [srv, *clients]."""
        try:
            for agent in (self.server, *self.clients):
                self.add(agent)
        except BaseException:
            self.stop()
            raise
        return [self.server, *self.clients]

    def add(self, agent: AgentProcess) -> AgentProcess:
        """Start `agent` and stop it with the cluster."""
        self.started.append(agent.start())
        return agent

    def stop(self) -> None:
        for agent in self.started:
            agent.stop()


def agent_json(agent: AgentProcess, method: str, path: str, body: bytes | None = None) -> Any:
    """The JSON answer of a request that must succeed (200)."""
    status, _, raw = agent.http(method, path, body)
    assert status == 200, raw
    return json.loads(raw) if raw else None


def member_statuses(agent: AgentProcess, wan: bool = False) -> dict[str, int]:
    """Name -> serf status (1 alive, 3 left, 4 failed) of every member `agent` lists."""
    members = agent_json(agent, "GET", "/v1/agent/members" + ("?wan=1" if wan else ""))
    return {m["Name"]: m["Status"] for m in members}


def serf_health(agent: AgentProcess, node: str) -> str | None:
    """The status of `node`'s serfHealth check in the catalog (None: no such check)."""
    for check in agent_json(agent, "GET", f"/v1/health/node/{node}"):
        if check["CheckID"] == "serfHealth":
            return str(check["Status"])
    return None


def passing_nodes(agent: AgentProcess, service: str) -> list[str]:
    """The nodes of `service`'s passing instances, sorted."""
    return sorted(e["Node"]["Node"] for e in agent_json(agent, "GET", f"/v1/health/service/{service}?passing"))


def put(agent: AgentProcess, key: str, value: str) -> bool:
    status, _, body = agent.http("PUT", f"/v1/kv/{key}", value.encode())
    assert status == 200, body
    return json.loads(body) is True


def get(agent: AgentProcess, key: str, query: str = "") -> str | None:
    import base64

    status, _, body = agent.http("GET", f"/v1/kv/{key}{query}")
    if status == 404:
        return None
    assert status == 200, body
    return base64.b64decode(json.loads(body)[0]["Value"]).decode()


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `proconsul ARGS...` and capture its output."""
    return subprocess.run([proconsul_command(), *args], capture_output=True, text=True, timeout=timeout)


@dataclass
class Federation:
    """Two single-server datacenters joined over the WAN, plus a client agent of dc1."""

    dc1: AgentProcess
    dc2: AgentProcess
    client: AgentProcess  # a client agent of dc1

    def py(self, agent: AgentProcess) -> Any:
        import consul  # py-consul: only the tests that drive it need it

        return consul.Consul(host=agent.ip, port=agent.http_port)


def _federated_server(ip: str, dc: str, other: str, root: Path) -> AgentProcess:
    name = f"srv-{dc}"
    return AgentProcess(
        "-server", "-bootstrap-expect=1", f"-datacenter={dc}", f"-retry-join-wan={other}",
        "-retry-interval-wan=1s", "-hcl", "performance { raft_multiplier = 1 }",
        dev=False, ip=ip, node=name, data_dir=str(root / name),
    )


@contextlib.contextmanager
def federation(root: Path) -> Iterator[Federation]:
    """Starts srv-dc1 and srv-dc2 (each WAN-joining the other) and client-dc1; stops them after."""
    prefix = free_subnet(hosts=3)
    ip1, ip2, ip3 = (f"{prefix}.{i}" for i in (1, 2, 3))
    dc1 = _federated_server(ip1, "dc1", ip2, root)
    dc2 = _federated_server(ip2, "dc2", ip1, root)
    client = AgentProcess("-datacenter=dc1", f"-retry-join={ip1}", "-retry-interval=1s",
                          dev=False, ip=ip3, node="client-dc1", data_dir=str(root / "client"))
    started: list[AgentProcess] = []
    try:
        for agent in (dc1, dc2, client):
            started.append(agent.start())
        yield Federation(dc1, dc2, client)
    finally:
        for agent in started:
            agent.stop()
