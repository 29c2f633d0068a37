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
from cluster_helpers import LanCluster, agent_json, member_statuses, passing_nodes, serf_health
from helpers import proconsul_command, wait_for


def test_server_and_two_clients(tmp_path: Path) -> None:
    lan = LanCluster(tmp_path)
    server, c1, c2 = lan.start()
    clients = [c1, c2]
    try:
        wait_for(lambda: member_statuses(server) == {"srv": 1, "c1": 1, "c2": 1}, timeout=30,
                 what=lambda: f"3 alive members\n{server.log()}")
        wait_for(lambda: member_statuses(c2) == {"srv": 1, "c1": 1, "c2": 1}, timeout=30, what="members on a client")
        run = subprocess.run([proconsul_command(), "members", f"-http-addr={c1.addr}"],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0 and run.stdout.count(" alive ") == 3, run
        assert "server" in run.stdout and "client" in run.stdout

        # Services registered on clients reach the server's catalog, DNS and health.
        for c in clients:
            agent_json(c, "PUT", "/v1/agent/service/register",
                       json.dumps({"Name": "web", "Port": 80, "Check": {"TTL": "600s", "Status": "passing"}}).encode())
        wait_for(lambda: passing_nodes(server, "web") == ["c1", "c2"], timeout=30,
                 what=lambda: f"web on both clients\n{c1.log()}")
        # Reads on a client are forwarded to the server.
        assert sorted(n["Node"] for n in agent_json(c1, "GET", "/v1/catalog/service/web")) == ["c1", "c2"]  # type: ignore[union-attr]
        agent_json(c1, "PUT", "/v1/kv/from-client", b"hello")
        assert server.http("GET", "/v1/kv/from-client?raw")[2] == b"hello"
        query = dns.message.make_query("web.service.consul", "A")
        reply = dns.query.udp(query, server.ip, port=8600, timeout=5)
        assert sorted(str(r) for rr in reply.answer for r in rr) == sorted([c1.ip, c2.ip])
        assert serf_health(server, "c1") == "passing"

        # kill -9: the client fails; serfHealth critical; its service leaves ?passing.
        c2.kill()
        wait_for(lambda: serf_health(server, "c2") == "critical", timeout=60,
                 what=lambda: f"c2 critical\n{server.log()}")
        assert member_statuses(server)["c2"] == 4
        assert passing_nodes(server, "web") == ["c1"]

        # Graceful leave: left (3), and deregistered from the catalog.
        c1.http("PUT", "/v1/agent/leave")
        wait_for(lambda: member_statuses(server).get("c1") == 3, timeout=30, what="c1 left")
        wait_for(lambda: agent_json(server, "GET", "/v1/catalog/node/c1") is None, timeout=30, what="c1 deregistered")

        # force-leave turns the failed client into left.
        run = subprocess.run([proconsul_command(), "force-leave", f"-http-addr={server.addr}", "c2"],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run
        wait_for(lambda: member_statuses(server).get("c2") == 3, timeout=10, what="c2 force-left")
    finally:
        lan.stop()
