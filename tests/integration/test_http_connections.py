"""HTTP connection limits on a real agent: the per-IP cap, the request-head deadline, idle close.

A client may hold at most `limits.http_max_conns_per_client` connections (the next one is
answered 429 and closed, while other client IPs are served); a client that trickles its request
head is cut off after the head deadline; a keep-alive connection left idle is closed after the
idle timeout; and requests that arrive in time, including a blocking query that runs longer
than the head deadline, are unaffected (issue 13).
"""

from __future__ import annotations

import json
import socket
import threading
import time

from helpers import AgentProcess, wait_for
from proconsul.http.conn_guard import HEADER_READ_TIMEOUT_S, IDLE_TIMEOUT_S

CAP = 5
MARGIN_S = 15.0  # generous: the deadline fires on a loaded 2-core machine, not to the millisecond


def _connect(agent: AgentProcess, source_ip: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.bind((source_ip, 0))
    sock.connect((agent.ip, agent.http_port))
    return sock


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length body (all the agent sends here)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a response body")
        body += chunk
    return status, body[:length]


def _request(sock: socket.socket, path: str) -> tuple[int, bytes]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n".encode())
    return _read_response(sock)


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_connections_beyond_the_per_ip_cap_are_refused_other_ips_served() -> None:
    agent = AgentProcess("-hcl", f"limits {{ http_max_conns_per_client = {CAP} }}").start()
    held: list[socket.socket] = []
    try:
        for _ in range(CAP):
            sock = _connect(agent)
            assert _request(sock, "/v1/status/leader")[0] == 200  # answered: counted by the agent
            held.append(sock)
        extra = _connect(agent)
        status, body = _read_response(extra)  # refused before it sends anything
        assert status == 429, (status, body)
        assert _closed_by_peer(extra)
        extra.close()
        # Another client IP has its own allowance.
        other = _connect(agent, "127.0.0.2")
        assert _request(other, "/v1/status/leader")[0] == 200
        other.close()
        # The held connections still work, and closing one frees a slot.
        assert _request(held[0], "/v1/agent/self")[0] == 200
        held.pop().close()

        def one_more_is_served() -> bool:
            sock = _connect(agent)
            try:
                return _request(sock, "/v1/status/leader")[0] == 200
            finally:
                sock.close()

        wait_for(one_more_is_served, timeout=30, what="a slot freed by closing a connection")
        assert "Traceback" not in agent.log()
    finally:
        for sock in held:
            sock.close()
        agent.stop()


def test_trickled_heads_and_idle_connections_are_closed_in_flight_requests_are_not(
    dev_agent: AgentProcess,
) -> None:
    results: dict[str, object] = {}

    def trickle() -> None:
        # One header byte per second, never finishing the head: a slowloris client.
        sock = _connect(dev_agent)
        started = time.monotonic()
        head = b"GET /v1/status/leader HTTP/1.1\r\nX-Slow: " + b"a" * 10_000
        try:
            for byte in head:
                sock.sendall(bytes([byte]))
                sock.settimeout(1.0)
                try:
                    if sock.recv(1) == b"":
                        break
                except TimeoutError:
                    continue
            results["trickle_s"] = time.monotonic() - started
        except (ConnectionResetError, BrokenPipeError):
            results["trickle_s"] = time.monotonic() - started
        finally:
            sock.close()

    def blocking_query() -> None:
        # A request in flight longer than the head deadline is never cut.
        sock = _connect(dev_agent)
        try:
            status, _ = _request(sock, "/v1/kv/conn-test")
            wait = int(HEADER_READ_TIMEOUT_S) + 3
            sock.settimeout(wait + 60)
            started = time.monotonic()
            results["blocking"] = (_request(sock, f"/v1/kv/conn-test?index=1000000&wait={wait}s")[0],
                                   time.monotonic() - started)  # fmt: skip
        finally:
            sock.close()

    threads = [threading.Thread(target=trickle), threading.Thread(target=blocking_query)]
    for thread in threads:
        thread.start()
    # A keep-alive connection that answered one request and then sits idle.
    idle = _connect(dev_agent)
    assert _request(idle, "/v1/status/leader")[0] == 200
    idle_started = time.monotonic()
    idle.settimeout(IDLE_TIMEOUT_S + MARGIN_S)
    assert _closed_by_peer(idle), "idle keep-alive connection not closed"
    idle_s = time.monotonic() - idle_started
    idle.close()
    for thread in threads:
        thread.join(timeout=IDLE_TIMEOUT_S + 2 * MARGIN_S)
    assert "trickle_s" in results, "the trickling client was never cut off"
    assert float(results["trickle_s"]) <= HEADER_READ_TIMEOUT_S + MARGIN_S, results  # type: ignore[arg-type]
    assert idle_s <= IDLE_TIMEOUT_S + MARGIN_S, idle_s
    # The idle connection had a whole idle period, not just the head deadline.
    assert idle_s >= IDLE_TIMEOUT_S - 1.0, idle_s
    status, elapsed = results["blocking"]  # type: ignore[misc]
    assert status == 404 and elapsed >= HEADER_READ_TIMEOUT_S, results
    # Normal requests, many on one keep-alive connection, are unaffected.
    sock = _connect(dev_agent)
    try:
        for _ in range(50):
            status, body = _request(sock, "/v1/status/leader")
            assert status == 200 and json.loads(body), body
    finally:
        sock.close()
    assert "Traceback" not in dev_agent.log()


def test_expect_headers_are_answered_not_500(dev_agent: AgentProcess) -> None:
    # A header byte that is not UTF-8 used to reach aiohttp's 417 text and fail to encode (fuzz).
    # A routed path, a path no route matches and a known path with the wrong method.
    for request_line in (b"PUT /v1/kv/expect", b"GET /v1/health/checks/", b"DELETE /v1/status/leader"):
        sock = _connect(dev_agent)
        try:
            sock.sendall(request_line + b" HTTP/1.1\r\nHost: a\r\nExpect: \xe9\r\nContent-Length: 1\r\n\r\nv")
            status, body = _read_response(sock)
            assert status == 417, (request_line, status, body)
        finally:
            sock.close()
    sock = _connect(dev_agent)
    try:
        sock.sendall(
            b"PUT /v1/kv/expect HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
        )
        interim, _ = _read_response(sock)
        assert interim == 100
        sock.sendall(b"v")
        status, body = _read_response(sock)
        assert (status, body) == (200, b"true"), (status, body)
    finally:
        sock.close()
    assert "Traceback" not in dev_agent.log()
