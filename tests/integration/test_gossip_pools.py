"""Real processes: three servers and three clients in one LAN pool (issue 4's acceptance test).

Servers find each other with `-retry-join` and `-bootstrap-expect=3`; clients join the servers,
register a service each and forward every RPC to a server learned from gossip. Then:
`kill -9` of a client makes it `failed`, `serfHealth` critical and drops its service from
`?passing`; `proconsul leave` on another makes it `left` (Status 3) and deregisters it; a server
killed under the clients' feet is failed over; the killed client, restarted with its data dir
and no `-join`, rejoins by itself and its service is passing again.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cluster_helpers import agent_json, free_subnet, member_statuses, passing_nodes, serf_health
from helpers import AgentProcess, proconsul_command, wait_for

SERVERS = ("s1", "s2", "s3")
CLIENTS = ("c4", "c5", "c6")


def test_three_servers_three_clients(tmp_path: Path) -> None:
    prefix = free_subnet(6)
    ip = {name: f"{prefix}.{i}" for i, name in enumerate((*SERVERS, *CLIENTS), start=1)}
    server_ips = [ip[s] for s in SERVERS]

    def client(name: str, *joins: str) -> AgentProcess:
        agent = AgentProcess(*joins, "-retry-interval=1s", dev=False, ip=ip[name], node=name,
                             data_dir=str(tmp_path / name))
        agent.wait_for_leader = False
        return agent

    servers = {
        s: AgentProcess("-server", "-bootstrap-expect=3", "-hcl", "performance { raft_multiplier = 1 }",
                        "-retry-interval=1s", *(f"-retry-join={o}" for o in server_ips if o != ip[s]),
                        dev=False, ip=ip[s], node=s, data_dir=str(tmp_path / s))
        for s in SERVERS
    }
    for agent in servers.values():
        agent.wait_for_leader = False
    clients = {c: client(c, *(f"-retry-join={o}" for o in server_ips)) for c in CLIENTS}
    running: list[AgentProcess] = []
    try:
        for agent in [*servers.values(), *clients.values()]:
            running.append(agent.start())
        s1 = servers["s1"]
        everyone = {n: 1 for n in (*SERVERS, *CLIENTS)}
        wait_for(lambda: member_statuses(s1) == everyone, timeout=90, what=lambda: f"six alive\n{s1.log()}")
        for agent in clients.values():
            wait_for(agent._leader_known, timeout=60, what=lambda a=agent: f"{a.node} sees a leader\n{a.log()}")
            wait_for(lambda a=agent: member_statuses(a) == everyone, timeout=60, what="members on a client")

        # Each client registers its service through its own agent; the servers see all three.
        for agent in clients.values():
            agent_json(agent, "PUT", "/v1/agent/service/register",
                       json.dumps({"Name": "web", "Port": 80, "Check": {"TTL": "600s", "Status": "passing"}}).encode())
        wait_for(lambda: passing_nodes(s1, "web") == list(CLIENTS), timeout=60, what="web passing on three clients")
        wait_for(lambda: all(serf_health(s1, c) == "passing" for c in CLIENTS), timeout=60,
                 what="serfHealth passing on the clients")

        # kill -9 of c4: failed, serfHealth critical, its service leaves ?passing.
        clients["c4"].kill()
        wait_for(lambda: member_statuses(s1).get("c4") == 4, timeout=60, what=lambda: f"c4 failed\n{s1.log()}")
        wait_for(lambda: serf_health(s1, "c4") == "critical", timeout=60, what="serfHealth critical")
        wait_for(lambda: passing_nodes(s1, "web") == ["c5", "c6"], timeout=30, what="c4 out of ?passing")
        wait_for(lambda: member_statuses(servers["s3"]).get("c4") == 4, timeout=60, what="c4 failed on s3 too")

        # proconsul leave on c5: left (3), not failed, and gone from the catalog.
        run = subprocess.run([proconsul_command(), "leave", f"-http-addr={clients['c5'].addr}"],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run
        wait_for(lambda: member_statuses(s1).get("c5") == 3, timeout=60, what="c5 left")
        wait_for(lambda: agent_json(s1, "GET", "/v1/catalog/node/c5") is None, timeout=60, what="c5 deregistered")
        assert passing_nodes(s1, "web") == ["c6"]

        # A server killed under the clients: c6 fails over to another server and keeps working.
        leader = json.loads(s1.http("GET", "/v1/status/leader")[2]).rsplit(":", 1)[0]
        victim = next(s for s in SERVERS if ip[s] != leader and s != "s1")
        servers[victim].kill()
        c6 = clients["c6"]
        for i in range(6):  # enough calls that the victim would have been picked at least once
            wait_for(lambda i=i: c6.http("PUT", f"/v1/kv/failover/{i}", b"x")[0] == 200, timeout=60,
                     what=lambda: f"c6 writes with {victim} down\n{c6.log()}")
        assert c6.http("GET", "/v1/kv/failover/5?raw")[2] == b"x"

        # c4 restarted with its data dir and no -join: it rejoins alone; its service is back.
        again = client("c4")
        running.append(again.start())
        wait_for(lambda: member_statuses(s1).get("c4") == 1, timeout=60, what=lambda: f"c4 rejoined\n{again.log()}")
        wait_for(lambda: serf_health(s1, "c4") == "passing", timeout=60, what="c4 serfHealth passing")
        wait_for(lambda: passing_nodes(s1, "web") == ["c4", "c6"], timeout=60, what=lambda: f"c4 passing\n{again.log()}")
        assert "Re-joined to previously known node" in again.log()
    finally:
        for agent in running:
            agent.stop()
