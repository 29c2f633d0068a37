"""A stopped three-server cluster logs no traceback.

Servers that served writes, forwarded RPCs and replicated Raft are stopped with SIGTERM (the
leader first, while the followers still stream to it; then the followers) and every log is read
after the process exited: no "Traceback", no "Unhandled exception", no "Task exception was never
retrieved", and every process exits 0.
"""

from __future__ import annotations

import signal
from pathlib import Path

from cluster_helpers import Cluster, put

BAD = ("Traceback", "Unhandled exception", "Task exception was never retrieved", "Task was destroyed")


def test_sigterm_of_a_cluster_logs_no_traceback(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        cluster.start()
        agents = [cluster.nodes[ip] for ip in cluster.ips]
        for i, agent in enumerate(agents * 3):
            assert put(agent, f"stop/{i}", "x")  # followers forward: RPC connections in use
        leader_ip = cluster.leader_ip(agents[0])
        order = [cluster.nodes[leader_ip]] + [a for a in agents if a.ip != leader_ip]
        logs = {}
        for agent in order:
            assert agent.proc is not None
            agent.signal(signal.SIGTERM)
            code = agent.proc.wait(timeout=120)
            logs[agent.node] = (code, agent.log())
        for node, (code, log) in logs.items():
            assert code == 0, f"{node} exited {code}\n{log}"
            found = [bad for bad in BAD if bad in log]
            assert not found, f"{node} logged {found} on SIGTERM:\n{log}"
    finally:
        cluster.stop()
