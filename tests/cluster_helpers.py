"""Real-process server clusters for integration tests (shared by the operator tests).

Each cluster gets its own loopback subnet (127.a.b.1-3) with the standard ports, so servers find
each other through `-retry-join` exactly as an operator configures them. Same layout as
`tests/integration/test_raft_cluster.py`.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
from pathlib import Path

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
