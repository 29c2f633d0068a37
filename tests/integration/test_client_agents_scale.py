"""Hundreds of client agents join, fail, leave and rejoin; the leader's catalog follows (issue 16).

Real processes and sockets: a `-server -bootstrap` agent, and the client agents spread over four
`agent_host.py` processes (many real `Agent`s on one event loop, each on its own 127.a.b.x
address with the standard ports). The steps, each checked through py-consul on the
server (`/v1/agent/members` for gossip, `/v1/catalog/nodes` and `/v1/health/state/...` for the
catalog):

1. every client joins: gossip lists them alive, and the leader's reconcile registers each node
   with `serfHealth` passing;
2. one host is killed (SIGKILL: its agents fail without a word): gossip marks them failed and the
   catalog's `serfHealth` goes critical for exactly those nodes;
3. another host shuts down (SIGTERM: a client's leave_on_terminate): gossip marks its agents
   left and the leader deregisters their nodes;
4. the killed host comes back with the same names and data: its agents rejoin and pass again.

How long gossip and then the catalog took at each step, and the server's CPU, RSS and event
loop lag, are printed (`-s` shows them; docs/PERFORMANCE.md has a 200-agent run); nothing
timed is asserted, every wait has a generous deadline.

Size: PROCONSUL_CLIENT_AGENTS (default 8, two per host, what CI runs; 200 for the issue's run, by hand:
`PROCONSUL_CLIENT_AGENTS=200 pytest -s tests/integration/test_client_agents_scale.py`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import consul
import pytest
from cluster_helpers import LanCluster
from helpers import wait_for

AGENTS = int(os.environ.get("PROCONSUL_CLIENT_AGENTS", "8"))
HOSTS = 4  # host 0 fails and comes back, host 1 leaves, hosts 2 and 3 stay
HOST_SCRIPT = str(Path(__file__).with_name("agent_host.py"))
# Generous: a 200-agent join storm is about a minute of gossip work on a quiet 2-core box.
DEADLINE_S = 120 + 3 * AGENTS

assert AGENTS >= HOSTS and AGENTS + 1 <= 254, "one /24 holds the server and every client"


class Host:
    """One `agent_host.py` process: `count` client agents at prefix.first .. first+count-1."""

    def __init__(self, root: Path, prefix: str, first: int, count: int, join: str) -> None:
        self.root = root
        self.args = [sys.executable, HOST_SCRIPT, prefix, str(first), str(count), join, str(root)]
        self.names = [f"{root.name}-{i}" for i in range(first, first + count)]
        self.log_path = root.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Host:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, f"host exited:\n{self.log()[-3000:]}"
        return True

    def stats(self) -> dict[str, Any]:
        """The host's latest CPU / RSS / loop-lag line (none yet: {})."""
        lines = [x for x in self.log().splitlines() if x.startswith('{"cpu_s"')]
        return json.loads(lines[-1]) if lines else {}

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


class Observer:
    """What the server says, sampled while waiting: gossip statuses, catalog, its own cost."""

    def __init__(self, api: consul.Consul, server_pid: int) -> None:
        self.api = api
        self.pid = server_pid
        self.worst_lag_ms = 0.0

    def members(self) -> dict[str, int]:
        return {m["Name"]: m["Status"] for m in self.api.agent.members()}

    def serf_health(self, state: str) -> set[str]:
        _, checks = self.api.health.state(state)
        return {c["Node"] for c in checks if c["CheckID"] == "serfHealth"}

    def catalog_nodes(self) -> set[str]:
        _, nodes = self.api.catalog.nodes()
        return {n["Node"] for n in nodes}

    def sample_lag(self) -> None:
        for s in self.api.agent.metrics()["Samples"]:
            if s["Name"].endswith("runtime.loop_lag"):
                self.worst_lag_ms = max(self.worst_lag_ms, s["Max"])

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def step(name: str, obs: Observer, hosts: list[Host], gossip: Callable[[], bool], catalog: Callable[[], bool],
         what: Callable[[], str]) -> dict[str, Any]:
    """Wait until the server's gossip view, then its catalog, shows the step done; log the times."""
    t0, cpu0 = time.monotonic(), obs.cpu_s()
    obs.worst_lag_ms = 0.0
    seen: dict[str, float] = {}

    def done() -> bool:
        for host in hosts:
            host.alive()
        obs.sample_lag()
        for part, check in (("gossip", gossip), ("catalog", catalog)):
            if part not in seen and check():
                seen[part] = time.monotonic() - t0
        return len(seen) == 2

    wait_for(done, timeout=DEADLINE_S, interval=0.5, what=what)
    result = {
        "step": name, "gossip_s": round(seen["gossip"], 1), "catalog_s": round(seen["catalog"], 1),
        "server_cpu_s": round(obs.cpu_s() - cpu0, 1), "server_rss_mb": round(obs.rss_mb()),
        "server_worst_loop_lag_ms": round(obs.worst_lag_ms), "load_avg": os.getloadavg()[0],
    }
    print(json.dumps(result), flush=True)
    return result


@pytest.mark.timeout(6 * DEADLINE_S)
def test_client_agents_join_fail_leave_and_rejoin(tmp_path: Path) -> None:
    lan = LanCluster(tmp_path, (), hosts=AGENTS + 1)
    per_host = AGENTS // HOSTS
    hosts: list[Host] = []
    first = 2
    for k in range(HOSTS):
        count = per_host + (1 if k < AGENTS % HOSTS else 0)
        hosts.append(Host(tmp_path / f"h{k}", lan.prefix, first, count, lan.server_ip))
        first += count
    try:
        lan.start()
        srv = lan.server
        assert srv.proc is not None
        obs = Observer(consul.Consul(host=srv.ip, port=srv.http_port), srv.proc.pid)
        clients = {name for host in hosts for name in host.names}
        everyone = clients | {"srv"}

        def view() -> str:
            members = obs.members()
            statuses: dict[int, int] = {}
            for status in members.values():
                statuses[status] = statuses.get(status, 0) + 1
            return (f"members by status {statuses}; catalog {len(obs.catalog_nodes())} nodes, "
                    f"{len(obs.serf_health('critical'))} critical\n" + hosts[0].log()[-2000:])

        # 1. Everyone joins.
        for host in hosts:
            host.start()
        step("join", obs, hosts,
             lambda: obs.members() == dict.fromkeys(everyone, 1),
             lambda: obs.serf_health("passing") == everyone and obs.catalog_nodes() == everyone, view)
        for host in hosts:
            wait_for(lambda h=host: "ready" in h.log(), timeout=DEADLINE_S, what=host.log)  # type: ignore[misc]

        # 2. Host 0 dies: its agents fail; serfHealth critical for exactly them.
        failed, leaving, staying = set(hosts[0].names), set(hosts[1].names), set(hosts[2].names + hosts[3].names)
        assert hosts[0].stop(signal.SIGKILL) == -signal.SIGKILL
        step("fail", obs, hosts[1:],
             lambda: {n for n, s in obs.members().items() if s == 4} == failed,
             lambda: obs.serf_health("critical") == failed, view)
        assert obs.serf_health("passing") == everyone - failed

        # 3. Host 1 shuts down: its agents leave; the leader deregisters their nodes.
        hosts[1].proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        step("leave", obs, hosts[2:],
             lambda: {n for n, s in obs.members().items() if s == 3} == leaving,
             lambda: obs.catalog_nodes() == everyone - leaving, view)
        assert hosts[1].proc.wait(DEADLINE_S) == 0, hosts[1].log()[-3000:]  # type: ignore[union-attr]

        # 4. Host 0 comes back with the same names and data: its agents rejoin and pass.
        hosts[0].start()
        step("rejoin", obs, [hosts[0], *hosts[2:]],
             lambda: {n for n, s in obs.members().items() if s == 1} == staying | failed | {"srv"},
             lambda: obs.serf_health("passing") == staying | failed | {"srv"} and not obs.serf_health("critical"),
             view)
        for host in (hosts[0], *hosts[2:]):
            # A host reports every 5 s once ready: {} if none yet (a host just restarted).
            print(f"{host.root.name}: {json.dumps(host.stats())}", flush=True)
    finally:
        for host in hosts:
            host.stop()
        lan.stop()
