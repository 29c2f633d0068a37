"""A burst of connections while the agent is busy is held by the kernel, not dropped.

Every TCP listener of the agent (HTTP, DNS over TCP, server RPC, LAN gossip's stream port) asks
for the kernel's full accept backlog (`net.core.somaxconn`, as Go's listeners and so Consul's do).
With asyncio's default of 100, the 102nd handshake arriving while the event loop is busy is
dropped, and the client retries only after 1, 3, 7, 15 s...: thousands of watchers reconnecting at
once waited up to a minute for an idle agent (bench/catalog_scale.py, issue 16).

The agent is stopped (SIGSTOP), so nothing is accepted: the connections beyond the first hundred
can only complete if the listen queue holds them. Then it continues and answers every one.
"""

from __future__ import annotations

import select
import signal
import socket
import time

from helpers import AgentProcess
from proconsul.listen import listen_backlog

BURST = 150  # above asyncio's default backlog (100), below http_max_conns_per_client (200)
IP = "127.77.41.1"


def _connect_all(port: int, count: int, deadline_s: float = 30.0) -> list[socket.socket]:
    """`count` connections to IP:port, each finished by the kernel (handshake done) or a failure."""
    pending: dict[int, socket.socket] = {}
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex((IP, port))
        pending[sock.fileno()] = sock
    done: list[socket.socket] = []
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLOUT)
    end = time.monotonic() + deadline_s
    while pending and time.monotonic() < end:
        for fd, _ in poller.poll(500):
            sock = pending.pop(fd)
            poller.unregister(fd)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            assert err == 0, f"connect to {IP}:{port} failed: {err}"
            done.append(sock)
    stuck = len(pending)
    for sock in pending.values():
        sock.close()
    assert not stuck, f"{stuck} of {count} handshakes to port {port} never completed while the agent was busy"
    return done


def _listening_ports(ip: str) -> set[int]:
    """The TCP ports in LISTEN state on `ip` (from /proc/net/tcp: whatever the agent opened)."""
    want = socket.inet_aton(ip)[::-1].hex().upper()  # the kernel prints the address little-endian
    ports = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if address == want and fields[3] == "0A":
                ports.add(int(port, 16))
    return ports


def _answer(sock: socket.socket) -> bytes:
    sock.setblocking(True)
    sock.settimeout(60)
    sock.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: agent\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


def test_the_listeners_hold_a_burst_of_connections_while_the_agent_is_stopped() -> None:
    assert listen_backlog() > BURST  # the kernel's somaxconn (4096 on Debian 12)
    agent = AgentProcess(ip=IP, node="backlog").start()
    held: list[socket.socket] = []
    try:
        ports = _listening_ports(IP)
        # HTTP, DNS and both gossip pools' stream ports (and server RPC where one listens).
        assert {agent.http_port, agent.dns_port, agent.serf_lan_port} <= ports and len(ports) >= 4, ports
        agent.signal(signal.SIGSTOP)
        try:
            http = _connect_all(agent.http_port, BURST)
            held += http
            for port in sorted(ports - {agent.http_port}):
                held += _connect_all(port, BURST)
        finally:
            agent.signal(signal.SIGCONT)
        statuses = [_answer(sock) for sock in http]
        assert statuses == [b"HTTP/1.1 200 OK"] * BURST, set(statuses)
    finally:
        for sock in held:
            sock.close()
        agent.stop()
