"""`proconsul operator raft recover` on real servers: 5 servers, 3 lost for good, 2 survivors.

One survivor (Y) is lost from view first and misses the last writes; the other (X) holds every
acknowledged write. Then three servers, the leader among them, are killed for good.

- Stopped survivors (`-data-dir`): `recover` refuses to keep Y alone (it lacks writes X knows are
  committed), then, with both as voters, writes the new configuration; started again with their
  usual flags, the two elect a leader and every acknowledged write reads back.
- Running survivors (`-server`, their HTTP addresses; Y restarted after the loss): a refusal
  while a leader exists, the same refusal to keep Y alone, then the survivors install the
  configuration in place and elect without a restart.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from cluster_helpers import free_subnet, get, put
from helpers import AgentProcess, proconsul_command, wait_for


class FiveServers:
    def __init__(self, root: Path) -> None:
        self.prefix = free_subnet(5)
        self.root = root
        self.ips = [f"{self.prefix}.{i}" for i in range(1, 6)]
        self.nodes: dict[str, AgentProcess] = {}

    @staticmethod
    def name(ip: str) -> str:
        return f"s{ip.rsplit('.', 1)[1]}"

    def data_dir(self, ip: str) -> Path:
        return self.root / self.name(ip)

    def node_id(self, ip: str) -> str:
        return (self.data_dir(ip) / "node-id").read_text().strip()

    def server(self, ip: str) -> AgentProcess:
        joins = [f"-retry-join={other}" for other in self.ips if other != ip]
        agent = AgentProcess("-server", "-bootstrap-expect=5", *joins, "-hcl", "performance { raft_multiplier = 1 }",
                             dev=False, ip=ip, node=self.name(ip), data_dir=str(self.data_dir(ip)))
        agent.wait_for_leader = False
        return agent

    def start(self) -> None:
        for ip in self.ips:
            self.nodes[ip] = self.server(ip).start()
        for agent in self.nodes.values():
            wait_for(agent._leader_known, timeout=90, what=f"a leader seen by {agent.ip}\n{agent.log()}")

    def leader_ip(self, via: AgentProcess) -> str:
        status, _, body = via.http("GET", "/v1/status/leader")
        assert status == 200
        return str(json.loads(body)).rsplit(":", 1)[0]

    def stop(self) -> None:
        for agent in self.nodes.values():
            if agent.proc is not None and agent.proc.poll() is None:
                agent.stop()


def recover(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([proconsul_command(), "operator", "raft", "recover", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def _stale(agent: AgentProcess, key: str) -> str | None:
    try:
        return get(agent, key, "?stale")
    except (OSError, AssertionError):
        return None


def test_recover_two_survivors_of_five(tmp_path: Path) -> None:
    c = FiveServers(tmp_path)
    try:
        c.start()
        first = c.nodes[c.ips[0]]
        leader_ip = c.leader_ip(first)
        followers = [ip for ip in c.ips if ip != leader_ip]
        x_ip, y_ip = followers[0], followers[1]
        x, y = c.nodes[x_ip], c.nodes[y_ip]
        writer = c.nodes[leader_ip]
        for i in range(20):
            assert put(writer, f"before/{i}", str(i))
        wait_for(lambda: _stale(y, "before/19") == "19", timeout=60, what="Y to hold the first writes")
        y.kill()  # Y is gone from view; the other four still make a quorum
        for i in range(10):
            assert put(writer, f"later/{i}", str(i))
        # X holds every acknowledged write (and has heard that they are committed).
        wait_for(lambda: _stale(x, "later/9") == "9", timeout=60, what="X to hold the later writes")
        for ip in c.ips:
            if ip not in (x_ip, y_ip):
                c.nodes[ip].kill()  # lost for good, the leader among them
        x.kill()  # the survivors are stopped for the recovery
        x_dir, y_dir = str(c.data_dir(x_ip)), str(c.data_dir(y_ip))
        x_id, y_id = c.node_id(x_ip), c.node_id(y_ip)

        # Keeping only Y would drop writes X knows were acknowledged: refused, nothing written.
        out = recover(f"-data-dir={x_dir}", f"-data-dir={y_dir}", f"-voters={y_id}", "-yes")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "Refusing" in out.stderr and "acknowledged" in out.stderr and "Nothing was changed" in out.stderr
        for d in (x_dir, y_dir):
            assert not (Path(d) / "raft" / "recovery.json").exists()

        # Not confirmed: nothing written either.
        out = recover(f"-data-dir={x_dir}", f"-data-dir={y_dir}", stdin="no\n")
        assert out.returncode == 1 and "Aborted" in out.stderr, out.stdout + out.stderr
        assert not (Path(x_dir) / "raft" / "recovery.json").exists()

        # Both survivors as voters, confirmed at the prompt.
        out = recover(f"-data-dir={x_dir}", f"-data-dir={y_dir}", stdin="yes\n")
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"New voters: {min(x_id, y_id)}, {max(x_id, y_id)}" in out.stdout
        assert f"Kept: the log of {x_id}" in out.stdout
        assert "majority of the old voters is gone" in out.stdout
        for d in (x_dir, y_dir):
            assert (Path(d) / "raft" / "recovery.json").exists()

        # Started again with their usual flags: they elect, and every acknowledged write is there.
        x2, y2 = c.server(x_ip), c.server(y_ip)
        c.nodes[x_ip], c.nodes[y_ip] = x2.start(), y2.start()
        for agent in (x2, y2):
            wait_for(agent._leader_known, timeout=90, what=f"a leader after recovery on {agent.ip}\n{agent.log()}")
        _assert_recovered(c, x2, y2, (x_ip, y_ip), (x_id, y_id))
    finally:
        c.stop()


def _recover_state(agent: AgentProcess) -> dict:
    status, _, body = agent.http("GET", "/v1/operator/raft/recover")
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def test_live_recover_two_running_survivors_of_five(tmp_path: Path) -> None:
    c = FiveServers(tmp_path)
    try:
        c.start()
        first = c.nodes[c.ips[0]]
        leader_ip = c.leader_ip(first)
        x_ip, y_ip = [ip for ip in c.ips if ip != leader_ip][:2]
        x, y = c.nodes[x_ip], c.nodes[y_ip]
        writer = c.nodes[leader_ip]
        for i in range(20):
            assert put(writer, f"before/{i}", str(i))
        wait_for(lambda: _stale(y, "before/19") == "19", timeout=60, what="Y to hold the first writes")

        # While the cluster has a leader, the command and the endpoint both refuse.
        out = recover(f"-server={x.addr}", f"-server={y.addr}", "-yes")
        assert out.returncode == 1 and "has a leader" in out.stderr, out.stdout + out.stderr
        state = _recover_state(x)
        status, _, body = x.http("PUT", "/v1/operator/raft/recover", json.dumps(
            {"Term": state["Term"] + 5000, "Voters": {state["ID"]: state["Address"]}}).encode())
        assert status == 409 and b"has a leader" in body, (status, body)
        status, _, body = x.http("PUT", "/v1/operator/raft/recover", b'{"Term": "soon"}')
        assert status == 400 and b"Voters" in body, (status, body)

        y.kill()  # Y misses the later writes...
        for i in range(10):
            assert put(writer, f"later/{i}", str(i))
        wait_for(lambda: _stale(x, "later/9") == "9", timeout=60, what="X to hold the later writes")
        for ip in c.ips:
            if ip not in (x_ip, y_ip):
                c.nodes[ip].kill()  # lost for good, by pid, the leader among them
        y = c.nodes[y_ip] = c.server(y_ip).start()  # ... and is back, running, after the loss
        for agent in (x, y):
            wait_for(lambda agent=agent: _recover_state(agent)["Leader"] == "", timeout=60,
                     what=f"{agent.ip} to notice it has no leader")
        x_id, y_id = _recover_state(x)["ID"], _recover_state(y)["ID"]
        terms_before = {_recover_state(a)["Term"] for a in (x, y)}

        # Keeping only Y would drop writes X knows were acknowledged: refused, nothing changed.
        out = recover(f"-server={x.addr}", f"-server={y.addr}", f"-voters={y_id}", "-yes")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "Refusing" in out.stderr and "acknowledged" in out.stderr and "Nothing was changed" in out.stderr
        assert "HTTP Address" in out.stdout and x.addr in out.stdout
        # (Pre-vote keeps a minority's terms where they were, so the term is a witness too.)
        assert {_recover_state(a)["Term"] for a in (x, y)} == terms_before
        for agent in (x, y):
            assert not (Path(agent.data_dir or "") / "raft" / "recovery.json").exists()

        # Both survivors as voters: installed in place, a leader is elected, nothing is lost.
        out = recover(f"-server={x.addr}", f"-server={y.addr}", "-yes", "-timeout=60s")
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"Kept: the log of {x_id}" in out.stdout
        assert "majority of the old voters is gone" in out.stdout
        assert "Leader elected: " in out.stdout
        assert out.stdout.count("Installed the new configuration on") == 2
        for agent in (x, y):
            assert (Path(agent.data_dir or "") / "raft" / "recovery.json").exists()
            wait_for(agent._leader_known, timeout=60, what=f"a leader after recovery on {agent.ip}\n{agent.log()}")
        _assert_recovered(c, x, y, (x_ip, y_ip), (x_id, y_id))
    finally:
        c.stop()


def _assert_recovered(c: Any, x: Any, y: Any, ips: tuple[str, str], ids: tuple[str, str]) -> None:
    """The two survivors lead, hold every write acknowledged before the loss, take new ones, and
    are the whole Raft configuration."""
    assert c.leader_ip(y) in ips
    for i in range(20):
        assert get(y, f"before/{i}") == str(i)
    for i in range(10):
        assert get(y, f"later/{i}") == str(i)
    assert put(y, "after-recovery", "ok")
    assert get(x, "after-recovery") == "ok"
    status, _, body = x.http("GET", "/v1/operator/raft/configuration")
    assert status == 200, body
    assert sorted(s["ID"] for s in json.loads(body)["Servers"]) == sorted(ids)
