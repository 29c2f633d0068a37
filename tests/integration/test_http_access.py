"""`http_config` access rules on a real agent: blocked endpoints, writes only from allowed networks,
and extra response headers (Consul's texts and status codes)."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import AgentProcess


@pytest.fixture(scope="module")
def restricted_agent() -> Iterator[AgentProcess]:
    conf = Path(tempfile.mkdtemp(prefix="proconsul-access-")) / "access.hcl"
    conf.write_text(
        "http_config {\n"
        '  block_endpoints = ["/v1/agent/self", "/v1/event"]\n'
        '  allow_write_http_from = ["127.0.0.2/32"]\n'
        '  response_headers = { "X-Frame-Options" = "DENY" }\n'
        "}\n"
    )
    agent = AgentProcess(f"-config-file={conf}").start()
    try:
        yield agent
    finally:
        agent.stop()


def _request(agent: AgentProcess, method: str, path: str, source: str, body: bytes = b"") -> tuple[int, bytes, bytes]:
    """One request from `source` (a loopback address); answers (status, head, body)."""
    host, port = agent.addr.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(30)
        sock.bind((source, 0))
        sock.connect((host, int(port)))
        head = f"{method} {path} HTTP/1.1\r\nHost: {agent.addr}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        sock.sendall(head.encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), head_bytes, payload


def test_writes_only_from_allowed_networks(restricted_agent: AgentProcess) -> None:
    status, _, body = _request(restricted_agent, "PUT", "/v1/kv/locked", "127.0.0.1", b"x")
    assert (status, body) == (403, b"Access is restricted")
    status, _, _ = _request(restricted_agent, "GET", "/v1/kv/locked", "127.0.0.1")
    assert status == 404  # reads stay open, and the refused write stored nothing
    status, _, body = _request(restricted_agent, "PUT", "/v1/kv/locked", "127.0.0.2", b"x")
    assert (status, body) == (200, b"true")
    status, _, body = _request(restricted_agent, "DELETE", "/v1/kv/locked", "127.0.0.1")
    assert (status, body) == (403, b"Access is restricted")


def test_blocked_endpoints_by_prefix(restricted_agent: AgentProcess) -> None:
    for path in ("/v1/agent/self", "/v1/event/list"):
        status, _, body = _request(restricted_agent, "GET", path, "127.0.0.2")
        assert (status, body) == (403, b"Endpoint is blocked by agent configuration"), path
    status, _, _ = _request(restricted_agent, "GET", "/v1/agent/members", "127.0.0.2")
    assert status == 200


def test_response_headers_on_every_answer(restricted_agent: AgentProcess) -> None:
    for path in ("/v1/status/leader", "/v1/kv/missing", "/v1/agent/self"):
        _, head, _ = _request(restricted_agent, "GET", path, "127.0.0.1")
        assert b"\r\nX-Frame-Options: DENY" in head, path
