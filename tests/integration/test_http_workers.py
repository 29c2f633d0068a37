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
import select
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster_helpers import Cluster, free_subnet
from helpers import AgentProcess, wait_for
from prometheus_client.parser import text_string_to_metric_families

# Writes only from loopback: a write forwarded by a worker passes only if the agent sees the
# client's real address (a unix-socket peer has none, and is refused).
WORKERS_HCL = 'http_workers = 3\nhttp_config { allow_write_http_from = ["127.0.0.0/8"] }'


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


def _wait_for_restart(scan: Callable[[], set[int]], before: set[int], victim: int,
                      what: str | Callable[[], str] = "") -> set[int]:
    """The workers started since `before` (which held the killed `victim`): waits until one scan
    of /proc no longer lists the victim and lists as many workers as before. The count and the
    victim's absence come from the same scan: with two scans, a first one taken before the
    victim has run to its exit (a loaded box) still lists it beside the survivor ("as many as
    before"), the next one no longer does ("the victim is gone"), and the restart, 0.2 s later
    at least, is in neither; a CI run then waited 60 s for reads from an empty set of new
    workers."""

    def restarted() -> set[int]:
        now = scan()
        return now - before if len(now) == len(before) and victim not in now else set()

    return wait_for(restarted, timeout=60, what=what)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    ip = f"{free_subnet(1)}.1"
    root = tmp_path_factory.mktemp("workers")
    agent = AgentProcess(
        "-server", "-bootstrap-expect=1", "-hcl", "performance { raft_multiplier = 1 }", "-hcl", WORKERS_HCL,
        "-hcl", 'telemetry { prometheus_retention_time = "60s" }',
        dev=False, ip=ip, node="w1", data_dir=str(root / "data"),
    ).start()
    wait_for(lambda: len(_worker_pids(agent)) == 2, timeout=60, what=f"two workers\n{agent.log()}")
    yield agent
    agent.stop()


def _a_worker_answers(agent: AgentProcess, path: str, workers: set[int] | None = None) -> bool:
    """Whether one of up to 30 reads on fresh connections was answered by a worker (of `workers`)."""
    # An empty `workers` could never match: waiting on it only times out, telling nothing.
    assert workers is None or workers, "no worker pid to look for"
    pids = {str(p) for p in (workers if workers is not None else _worker_pids(agent))}
    for _ in range(30):
        status, headers, _ = _request(agent.addr, "GET", path)
        assert status in (200, 404), status
        if headers.get("x-proconsul-worker") in pids:
            return True
    return False


def test_reads_are_answered_by_several_processes(server: AgentProcess) -> None:
    assert _request(server.addr, "PUT", "/v1/kv/w/spread", b"x")[0] == 200
    for path in ("/v1/kv/w/spread", "/v1/catalog/services", "/v1/catalog/nodes", "/v1/health/service/consul",
                 "/v1/catalog/service/consul", "/v1/kv/w/spread?stale"):
        wait_for(lambda path=path: _a_worker_answers(server, path), timeout=60,
                 what=f"{path} answered by a worker\n{server.log()}")
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


def _tcp_hex(addr: tuple[str, int]) -> str:
    ip, port = addr
    return "".join(f"{int(b):02X}" for b in reversed(ip.split("."))) + f":{port:04X}"


def _server_side(sock: socket.socket) -> tuple[int, int] | None:
    """(inode, bytes not yet read by the server) of the server's end of the client `sock`."""
    here, there = _tcp_hex(sock.getsockname()), _tcp_hex(sock.getpeername())
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == there and fields[2] == here and fields[3] == "01":  # ESTABLISHED
            inode = int(fields[9])
            return (inode, int(fields[4].split(":")[1], 16)) if inode else None
    return None


def _owner(inode: int, pids: set[int]) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                if os.readlink(fd) == target:
                    return pid
        except OSError:
            continue
    return None


def test_the_forwarded_client_header_is_believed_only_from_the_unix_socket(server: AgentProcess) -> None:
    """From TCP (on the agent or on a worker) the header is dropped or overwritten: claiming an
    address outside allow_write_http_from changes nothing, nor does one inside it."""
    for i in range(20):
        status, _, body = _request_with(server.addr, "PUT", f"/v1/kv/w/spoof{i}", b"x",
                                        {"X-Proconsul-Forwarded-Client": "10.9.9.9"})
        assert (status, body) == (200, b"true"), body


def _request_with(addr: str, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_blocking_query_on_a_worker_wakes_on_a_write(server: AgentProcess) -> None:
    """A blocking read accepted by a worker (its connection's socket is in the worker's fd table,
    found through /proc) that has consumed the request and not answered wakes on a write made on
    another connection, answered by the worker with the new value and index."""
    assert server.proc is not None
    _request(server.addr, "PUT", "/v1/kv/w/block", b"0")
    status, headers, _ = _request(server.addr, "GET", "/v1/kv/w/block")
    index = int(headers["x-consul-index"])
    workers = _worker_pids(server)
    host, port = server.addr.rsplit(":", 1)
    everyone = workers | {server.proc.pid}
    for _attempt in range(40):
        sock = socket.create_connection((host, int(port)), timeout=90)
        try:
            side = wait_for(lambda s=sock: _server_side(s), timeout=30, what="the accepted connection")
            owner = wait_for(lambda i=side[0]: _owner(i, everyone), timeout=30, what="the process that accepted it")
            if owner not in workers:
                continue
            sock.sendall(f"GET /v1/kv/w/block?index={index}&wait=60s&raw HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            wait_for(lambda s=sock: (_server_side(s) or (0, 1))[1] == 0, timeout=30, what="the worker reading the request")
            assert not select.select([sock], [], [], 0)[0], "answered at once: the read did not block"
            assert _request(server.addr, "PUT", "/v1/kv/w/block", b"woken")[0] == 200
            answer = b""
            while b"woken" not in answer:
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
            head = answer.split(b"\r\n\r\n", 1)[0].decode().lower()
            assert head.startswith("http/1.1 200") and f"x-proconsul-worker: {owner}" in head, head
            new_index = int(head.split("x-consul-index: ", 1)[1].split("\r\n", 1)[0])
            assert new_index > index
            return
        finally:
            sock.close()
    pytest.fail("no connection landed on a worker in 40 attempts")


def test_a_killed_worker_is_restarted(server: AgentProcess) -> None:
    before = _worker_pids(server)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)  # a worker this test's agent started: its child, found by ppid
    new = _wait_for_restart(lambda: _worker_pids(server), before, victim,
                            what=lambda: f"the worker restarted\n{server.log()}")
    assert _request(server.addr, "PUT", "/v1/kv/w/after", b"a")[0] == 200
    # (The agent's log says whether the new worker bootstrapped its replica: a CI run once timed
    # out here with no log to tell.)
    wait_for(lambda: _a_worker_answers(server, "/v1/kv/w/after", new), timeout=60,
             what=lambda: f"the new worker {new} answering\n{server.log()}")
    for _ in range(30):
        status, _, body = _request(server.addr, "GET", "/v1/kv/w/after?raw")
        assert (status, body) == (200, b"a")


def test_the_restart_wait_is_not_fooled_by_a_victim_dying_between_two_scans() -> None:
    """/proc as a loaded box may show it: the killed victim still listed by the first scan after
    the kill, gone from the next ones, the restarted worker there only later. The wait returns
    the restarted worker, never an empty set."""
    victim, survivor, restarted = 101, 102, 103
    scans = [{victim, survivor}, {survivor}, {survivor}, {survivor}, {survivor, restarted}]

    def scan() -> set[int]:
        return scans.pop(0) if len(scans) > 1 else scans[0]

    assert _wait_for_restart(scan, {victim, survivor}, victim) == {restarted}


def test_a_followers_default_reads_still_go_to_the_leader(tmp_path: Path) -> None:
    """Three servers with workers: on a follower, default reads are forwarded (worker -> its agent
    -> the leader) and see a write acknowledged by the leader; `?stale` reads are answered by the
    follower's worker from its replica."""
    cluster = Cluster(tmp_path, hcl="http_workers = 2")
    try:
        cluster.start()
        some = next(iter(cluster.nodes.values()))
        leader_ip = cluster.leader_ip(some)
        follower = next(a for ip, a in cluster.nodes.items() if ip != leader_ip)
        leader = cluster.nodes[leader_ip]
        wait_for(lambda: len(_worker_pids(follower)) == 1, timeout=60, what="the follower's worker")
        for i in range(40):
            assert _request(leader.addr, "PUT", "/v1/kv/f/k", str(i).encode())[0] == 200
            status, headers, body = _request(follower.addr, "GET", "/v1/kv/f/k?raw")
            assert (status, body) == (200, str(i).encode()), (i, headers)
            assert "x-proconsul-worker" not in headers  # the follower's worker forwarded it
        wait_for(lambda: _a_worker_answers(follower, "/v1/kv/f/k?stale"), timeout=60,
                 what=f"a stale read answered by the follower's worker\n{follower.log()}")
    finally:
        cluster.stop()


def _prometheus_count(agent: AgentProcess, method: str, path_label: str) -> float:
    status, _, body = _request(agent.addr, "GET", "/v1/agent/metrics?format=prometheus")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if (sample.name == "consul_api_http_count"
                    and sample.labels == {"method": method, "path": path_label}):
                return sample.value
    return 0.0


def test_the_agents_metrics_count_the_requests_every_process_answered(server: AgentProcess) -> None:
    """Each worker reports its telemetry to the agent: the agent's `api.http` timer counts the
    requests its workers answered as well as its own, each once."""
    wait_for(lambda: _a_worker_answers(server, "/v1/kv/w/metrics-warmup?stale"), timeout=60, what="workers serving")
    # A route no other test here reads (the worker-answered warm-up above is a KV read).
    path, label = "/v1/health/checks/metrics-probe", "v1_health_checks_"
    assert _prometheus_count(server, "GET", label) == 0
    by_worker = by_agent = 0
    total = 60
    for _ in range(total):
        status, headers, _ = _request(server.addr, "GET", path)
        assert status == 200
        if "x-proconsul-worker" in headers:
            by_worker += 1
        else:
            by_agent += 1
    assert by_worker > 0, "no read was answered by a worker"
    wait_for(lambda: _prometheus_count(server, "GET", label) >= total, timeout=30,
             what=f"{total} reads counted ({by_worker} by workers, {by_agent} by the agent)")
    assert _prometheus_count(server, "GET", label) == total


def test_a_write_with_expect_100_continue_goes_through(server: AgentProcess) -> None:
    """curl sends `Expect: 100-continue` before a large body and waits: whichever process the
    connection lands on says 100 Continue once (a worker does not pass the expectation on)."""
    host, port = server.addr.rsplit(":", 1)
    for i in range(12):
        body = f"payload-{i}".encode()
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(f"PUT /v1/kv/w/expect HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                         "Expect: 100-continue\r\n\r\n".encode())
            interim = sock.recv(65536)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
            sock.sendall(body)
            answer = b""
            while not answer.endswith(b"true"):
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer
        assert _request(server.addr, "GET", "/v1/kv/w/expect?raw")[2] == body


def test_with_acls_every_request_is_forwarded_and_enforced(tmp_path: Path) -> None:
    """ACLs on: workers answer nothing themselves, so every read is checked by the agent: no
    token is refused on every connection, the management token reads, no answer names a worker."""
    ip = f"{free_subnet(1)}.1"
    acl = 'acl { enabled = true  default_policy = "deny"  tokens { initial_management = "root" } }'
    agent = AgentProcess(
        "-server", "-bootstrap-expect=1", "-hcl", "performance { raft_multiplier = 1 }", "-hcl", "http_workers = 2",
        "-hcl", acl, dev=False, ip=ip, node="a1", data_dir=str(tmp_path / "data"),
    )
    agent.wait_for_leader = False
    try:
        agent.start()
        wait_for(lambda: len(_worker_pids(agent)) == 1, timeout=60, what=f"the worker\n{agent.log()}")
        wait_for(lambda: _request_with(agent.addr, "PUT", "/v1/kv/secret", b"s", {"X-Consul-Token": "root"})[0] == 200,
                 timeout=60, what=f"the management token accepted\n{agent.log()}")
        for _ in range(30):
            status, headers, body = _request(agent.addr, "GET", "/v1/kv/secret?stale")
            assert status == 403 and "x-proconsul-worker" not in headers, (status, body)
            status, headers, body = _request_with(agent.addr, "GET", "/v1/kv/secret?raw", b"", {"X-Consul-Token": "root"})
            assert (status, body) == (200, b"s") and "x-proconsul-worker" not in headers
    finally:
        agent.stop()


def test_a_reload_keeps_the_workers_and_their_answers(server: AgentProcess) -> None:
    """SIGHUP (systemctl reload) reaches the agent only: the workers stay (same pids), get the
    configuration again and keep answering."""
    before = _worker_pids(server)
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reloadable settings changed" in server.log() or "TLS certificates re-read" in server.log(),
             timeout=30, what=f"the reload\n{server.log()}")
    assert _request(server.addr, "PUT", "/v1/kv/w/reloaded", b"r")[0] == 200
    wait_for(lambda: _a_worker_answers(server, "/v1/kv/w/reloaded", before), timeout=60,
             what="a worker answering after the reload")
    assert _worker_pids(server) == before


def test_a_dev_agent_serves_alone_and_says_so() -> None:
    agent = AgentProcess("-hcl", "http_workers = 2").start()
    try:
        assert "http_workers = 2 is used on servers only" in agent.log()
        assert _worker_pids(agent) == set()
        status, headers, _ = _request(agent.addr, "GET", "/v1/catalog/services")
        assert status == 200 and "x-proconsul-worker" not in headers
    finally:
        agent.stop()


def test_a_snapshot_restore_reaches_the_replicas(server: AgentProcess) -> None:
    """PUT /v1/snapshot is a Raft entry like any other: the replicas apply it too, so a key
    written after the snapshot is gone from every process's answers once it is restored."""
    assert _request(server.addr, "PUT", "/v1/kv/w/snap", b"before")[0] == 200
    wait_for(lambda: _a_worker_answers(server, "/v1/kv/w/snap"), timeout=60, what="workers serving")
    status, _, archive = _request(server.addr, "GET", "/v1/snapshot")
    assert status == 200 and archive
    assert _request(server.addr, "PUT", "/v1/kv/w/after-snap", b"later")[0] == 200
    assert _request(server.addr, "PUT", "/v1/snapshot", archive, timeout=60)[0] == 200
    workers = {str(p) for p in _worker_pids(server)}

    def restored_answer_from_a_worker() -> bool:
        status, headers, _ = _request(server.addr, "GET", "/v1/kv/w/after-snap")
        assert status == 404, headers
        status, headers, body = _request(server.addr, "GET", "/v1/kv/w/snap?raw")
        assert (status, body) == (200, b"before")
        return headers.get("x-proconsul-worker") in workers

    wait_for(restored_answer_from_a_worker, timeout=60, what="a worker answering from the restored state")
