"""Real processes: a client agent remembers its LAN peers in `data_dir/serf/local.snapshot` and
rejoins them after a restart without any `-join`; after `proconsul leave` it stays alone unless
started with `-rejoin` (serf's snapshot and `rejoin_after_leave`)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cluster_helpers import free_subnet, member_statuses
from helpers import AgentProcess, proconsul_command, wait_for


def _client(ip: str, data_dir: Path, *extra: str) -> AgentProcess:
    agent = AgentProcess(*extra, dev=False, ip=ip, node="c1", data_dir=str(data_dir))
    agent.wait_for_leader = False
    return agent


def _up(agent: AgentProcess) -> bool:
    assert agent.proc is not None and agent.proc.poll() is None, agent.log()
    return "gossip: LAN pool on" in agent.log() and agent.http("GET", "/v1/agent/self")[0] == 200


def _leave(agent: AgentProcess) -> None:
    run = subprocess.run([proconsul_command(), "leave", f"-http-addr={agent.addr}"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run
    assert agent.proc is not None
    agent.proc.wait(60)


@dataclass
class _Pair:
    """A bootstrapped server and client `c1` (data dir `data`) that joined it; `running` is every
    agent started so far, stopped when the test ends."""

    server: AgentProcess
    first: AgentProcess
    data: Path
    server_ip: str
    client_ip: str
    running: list[AgentProcess]

    def start(self, agent: AgentProcess) -> AgentProcess:
        self.running.append(agent.start())
        return agent


@contextmanager
def _server_and_joined_client(tmp_path: Path) -> Iterator[_Pair]:
    prefix = free_subnet(2)
    sip, cip = f"{prefix}.1", f"{prefix}.2"
    data = tmp_path / "c1"
    server = AgentProcess("-server", "-bootstrap", "-hcl", "performance { raft_multiplier = 1 }", dev=False,
                          ip=sip, node="srv", data_dir=str(tmp_path / "srv"))
    running: list[AgentProcess] = []
    try:
        running.append(server.start())
        first = _client(cip, data, f"-retry-join={sip}", "-retry-interval=1s")
        running.append(first.start())
        wait_for(lambda: member_statuses(server) == {"srv": 1, "c1": 1}, timeout=60, what=lambda: first.log())
        yield _Pair(server, first, data, sip, cip, running)
    finally:
        for agent in running:
            agent.stop()


def test_restarted_client_rejoins_from_its_snapshot(tmp_path: Path) -> None:
    with _server_and_joined_client(tmp_path) as pair:
        server, first, data, sip, cip = pair.server, pair.first, pair.data, pair.server_ip, pair.client_ip
        # The snapshot is appended by its own writer task: it follows the member event shortly.
        wait_for(lambda: "alive: srv " in (data / "serf" / "local.snapshot").read_text(), timeout=30,
                 what="the server recorded in c1's snapshot")

        # kill -9, then a restart with no join flags at all: it finds the server by itself.
        first.kill()
        wait_for(lambda: member_statuses(server)["c1"] == 4, timeout=60, what="c1 failed")
        second = _client(cip, data)
        pair.start(second)
        wait_for(lambda: member_statuses(server).get("c1") == 1 and member_statuses(second).get("srv") == 1, timeout=60,
                 what=lambda: f"c1 rejoined\n{second.log()}")
        assert "Re-joined to previously known node: srv" in second.log()

        # A graceful leave is remembered: the next start stays alone.
        _leave(second)
        wait_for(lambda: member_statuses(server).get("c1") == 3, timeout=30, what="c1 left")
        assert (data / "serf" / "local.snapshot").read_text().endswith("leave\n")
        third = _client(cip, data)
        pair.start(third)
        wait_for(lambda: _up(third), timeout=60, what=lambda: third.log())
        assert "Attempting re-join" not in third.log()
        assert member_statuses(third) == {"c1": 1}
        assert member_statuses(server).get("c1") == 3

        # Join once more, leave, and start with -rejoin: the leave is ignored and it rejoins.
        third.stop()
        fourth = _client(cip, data, f"-retry-join={sip}", "-retry-interval=1s")
        pair.start(fourth)
        wait_for(lambda: member_statuses(server).get("c1") == 1, timeout=60, what=lambda: fourth.log())
        _leave(fourth)
        wait_for(lambda: member_statuses(server).get("c1") == 3, timeout=30, what="c1 left again")
        fifth = _client(cip, data, "-rejoin")
        pair.start(fifth)
        wait_for(lambda: member_statuses(server).get("c1") == 1, timeout=60, what=lambda: f"rejoin\n{fifth.log()}")
        assert "Ignoring previous leave in snapshot" in fifth.log()


def _event_names(agent: AgentProcess) -> list[str]:
    status, _, body = agent.http("GET", "/v1/event/list")
    assert status == 200, body
    return [e["Name"] for e in json.loads(body)]


def test_restarted_client_does_not_replay_events_it_handled(tmp_path: Path) -> None:
    """serf's event clock in the snapshot: after kill -9 and a restart, the user events the client
    had already received are not delivered again by the cluster's push-pull (its watches would
    fire twice), while one fired while it was down still arrives."""
    with _server_and_joined_client(tmp_path) as pair:
        server, first, data, cip = pair.server, pair.first, pair.data, pair.client_ip
        assert server.http("PUT", "/v1/event/fire/before-restart")[0] == 200
        wait_for(lambda: _event_names(first) == ["before-restart"], timeout=30, what="c1 got the event")
        wait_for(lambda: "event-clock: " in (data / "serf" / "local.snapshot").read_text(), timeout=30,
                 what="the event clock in c1's snapshot")

        first.kill()
        wait_for(lambda: member_statuses(server)["c1"] == 4, timeout=60, what="c1 failed")
        assert server.http("PUT", "/v1/event/fire/while-down")[0] == 200
        second = _client(cip, data)
        pair.start(second)
        wait_for(lambda: "while-down" in _event_names(second), timeout=60,
                 what=lambda: f"the event fired while c1 was down\n{second.log()}")
        assert _event_names(second) == ["while-down"]
