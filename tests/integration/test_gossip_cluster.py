"""Real processes: one server and two client agents in one LAN gossip pool.

Clients find the server through gossip tags and forward every RPC to it; the leader turns
gossip membership into the catalog (serfHealth). Each agent has its own 127.a.b.x address with
the standard ports, joined with `-retry-join` as an operator would.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import dns.message
import dns.query
from cluster_helpers import free_subnet
from helpers import AgentProcess, proconsul_command, wait_for


def _json(agent: AgentProcess, method: str, path: str, body: bytes | None = None) -> object:
    status, _, raw = agent.http(method, path, body)
    assert status == 200, raw
    return json.loads(raw) if raw else None


def _members(agent: AgentProcess) -> dict[str, int]:
    return {m["Name"]: m["Status"] for m in _json(agent, "GET", "/v1/agent/members")}  # type: ignore[union-attr]


def _serf_status(server: AgentProcess, node: str) -> str | None:
    checks = _json(server, "GET", f"/v1/health/node/{node}")
    for c in checks:  # type: ignore[union-attr]
        if c["CheckID"] == "serfHealth":
            return str(c["Status"])
    return None


def _passing_nodes(server: AgentProcess, service: str) -> list[str]:
    entries = _json(server, "GET", f"/v1/health/service/{service}?passing")
    return sorted(e["Node"]["Node"] for e in entries)  # type: ignore[union-attr]


def test_server_and_two_clients(tmp_path: Path) -> None:
    prefix = free_subnet(3)
    sip, c1ip, c2ip = (f"{prefix}.{i}" for i in (1, 2, 3))
    fast = ("-hcl", "performance { raft_multiplier = 1 }")
    server = AgentProcess("-server", "-bootstrap", *fast, dev=False, ip=sip, node="srv",
                          data_dir=str(tmp_path / "srv"))
    clients = [
        AgentProcess(f"-retry-join={sip}", "-retry-interval=1s", dev=False, ip=ip, node=name,
                     data_dir=str(tmp_path / name))
        for ip, name in ((c1ip, "c1"), (c2ip, "c2"))
    ]
    started: list[AgentProcess] = []
    try:
        started.append(server.start())
        for c in clients:
            started.append(c.start())
        c1, c2 = clients
        wait_for(lambda: _members(server) == {"srv": 1, "c1": 1, "c2": 1}, timeout=30,
                 what=lambda: f"3 alive members\n{server.log()}")
        wait_for(lambda: _members(c2) == {"srv": 1, "c1": 1, "c2": 1}, timeout=30, what="members on a client")
        run = subprocess.run([proconsul_command(), "members", f"-http-addr={c1.addr}"],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0 and run.stdout.count(" alive ") == 3, run
        assert "server" in run.stdout and "client" in run.stdout

        # Services registered on clients reach the server's catalog, DNS and health.
        for c in clients:
            _json(c, "PUT", "/v1/agent/service/register",
                  json.dumps({"Name": "web", "Port": 80, "Check": {"TTL": "600s", "Status": "passing"}}).encode())
        wait_for(lambda: _passing_nodes(server, "web") == ["c1", "c2"], timeout=30,
                 what=lambda: f"web on both clients\n{c1.log()}")
        # Reads on a client are forwarded to the server.
        assert sorted(n["Node"] for n in _json(c1, "GET", "/v1/catalog/service/web")) == ["c1", "c2"]  # type: ignore[union-attr]
        _json(c1, "PUT", "/v1/kv/from-client", b"hello")
        assert server.http("GET", "/v1/kv/from-client?raw")[2] == b"hello"
        query = dns.message.make_query("web.service.consul", "A")
        reply = dns.query.udp(query, sip, port=8600, timeout=5)
        assert sorted(str(r) for rr in reply.answer for r in rr) == sorted([c1ip, c2ip])
        assert _serf_status(server, "c1") == "passing"

        # kill -9: the client fails; serfHealth critical; its service leaves ?passing.
        c2.kill()
        wait_for(lambda: _serf_status(server, "c2") == "critical", timeout=60,
                 what=lambda: f"c2 critical\n{server.log()}")
        assert _members(server)["c2"] == 4
        assert _passing_nodes(server, "web") == ["c1"]

        # Graceful leave: left (3), and deregistered from the catalog.
        c1.http("PUT", "/v1/agent/leave")
        wait_for(lambda: _members(server).get("c1") == 3, timeout=30, what="c1 left")
        wait_for(lambda: _json(server, "GET", "/v1/catalog/node/c1") is None, timeout=30, what="c1 deregistered")

        # force-leave turns the failed client into left.
        run = subprocess.run([proconsul_command(), "force-leave", f"-http-addr={server.addr}", "c2"],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run
        wait_for(lambda: _members(server).get("c2") == 3, timeout=10, what="c2 force-left")
    finally:
        for agent in started:
            agent.stop()
