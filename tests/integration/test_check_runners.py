"""Check runners against real targets: an HTTP server stopped and started, TTL expiry and
renewal, and a script check's warning and timeout, on a real agent."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import AgentProcess, wait_for


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    a = AgentProcess("-hcl", "enable_script_checks = true").start()
    try:
        yield a
    finally:
        a.stop()


def put(agent: AgentProcess, path: str, body: Any = None) -> None:
    status, _, text = agent.http("PUT", path, json.dumps(body).encode() if body is not None else None)
    assert status == 200, text


def check(agent: AgentProcess, cid: str) -> dict[str, Any]:
    return json.loads(agent.http("GET", "/v1/agent/checks")[2])[cid]


def wait_result(agent: AgentProcess, cid: str, status: str, needle: str = "") -> dict[str, Any]:
    """Wait for a probe's verdict (every check starts critical with no output)."""
    return wait_for(
        lambda: (c := check(agent, cid))["Status"] == status and c["Output"] and needle in c["Output"] and c,
        timeout=60,
        what=lambda: f"{cid} {status} {needle!r}: {check(agent, cid)}",
    )


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def _serve(port: int) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_http_check_follows_a_server_that_stops_and_starts(agent: AgentProcess) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = _serve(port)
    put(agent, "/v1/agent/check/register",
        {"ID": "web-up", "Name": "web", "HTTP": f"http://127.0.0.1:{port}/", "Interval": "1s", "Timeout": "2s"})
    try:
        wait_result(agent, "web-up", "passing", "200")
        server.shutdown()
        server.server_close()
        wait_result(agent, "web-up", "critical", "refused")
        server = _serve(port)  # the same port comes back
        wait_result(agent, "web-up", "passing", "200")
    finally:
        server.shutdown()
        server.server_close()
        put(agent, "/v1/agent/check/deregister/web-up")


def test_ttl_check_expires_and_is_renewed(agent: AgentProcess) -> None:
    put(agent, "/v1/agent/check/register", {"ID": "beat", "Name": "beat", "TTL": "1s"})
    try:
        put(agent, "/v1/agent/check/pass/beat?note=alive")
        assert check(agent, "beat")["Status"] == "passing"
        wait_result(agent, "beat", "critical", "TTL expired")
        put(agent, "/v1/agent/check/pass/beat?note=back")
        assert check(agent, "beat")["Status"] == "passing" and check(agent, "beat")["Output"] == "back"
    finally:
        put(agent, "/v1/agent/check/deregister/beat")


def _running(path: Path) -> list[str]:
    """PIDs whose command line names `path` (the script and any subshell it forked)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(path) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(proc.name)
        except OSError:
            pass
    return found


def test_script_check_warning_and_timeout(agent: AgentProcess, tmp_path: Path) -> None:
    warn = tmp_path / "warn.sh"
    warn.write_text("#!/bin/sh\necho disk 91% full\nexit 1\n")
    warn.chmod(0o755)
    slow = tmp_path / "slow.sh"
    # A forked subshell that outlives its parent unless the whole process group is killed.
    slow.write_text("#!/bin/sh\n(sleep 30; true) &\nsleep 30\n")
    slow.chmod(0o755)
    put(agent, "/v1/agent/check/register", {"ID": "disk", "Name": "disk", "Args": [str(warn)], "Interval": "1s"})
    put(agent, "/v1/agent/check/register",
        {"ID": "slow", "Name": "slow", "Args": [str(slow)], "Interval": "60s", "Timeout": "1s"})
    try:
        wait_result(agent, "disk", "warning", "disk 91% full")
        wait_result(agent, "slow", "critical", "Timed out (1s)")
        # Killed at the timeout with its process group: nothing of it is left running.
        wait_for(lambda: not _running(slow), timeout=10, what=lambda: f"slow.sh processes gone: {_running(slow)}")
    finally:
        put(agent, "/v1/agent/check/deregister/disk")
        put(agent, "/v1/agent/check/deregister/slow")
