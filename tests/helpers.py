"""Test helpers: free loopback ports, condition polling, and a real `proconsul agent` process.

Tests wait on conditions with generous deadlines (the machines are small and noisy), never on
fixed sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def proconsul_command() -> str:
    """The installed `proconsul` console script, as an operator would run it."""
    script = Path(sys.executable).parent / "proconsul"
    assert script.exists(), f"{script} is missing: install the package (scripts/setup-env test)"
    return str(script)


def free_port() -> int:
    """A loopback port free for both TCP and UDP (DNS and gossip listen on both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port for TCP and UDP")


def wait_for(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str | Callable[[], str] = ""
) -> Any:
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise  # a broken precondition (the process died) fails at once
        except Exception as exc:  # the condition may raise while the system settles
            last_exc = exc
        time.sleep(interval)
    if callable(what):
        what = what()  # e.g. a process log, read at the moment of failure
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: {last_exc!r}")


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "",
                     interval: float = 0.05) -> None:
    """`wait_for` for tests on the running event loop: poll `predicate` every `interval`
    seconds without blocking the loop; fail after `timeout` seconds, saying `what` was awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached in time: {what}" if what else "condition not reached in time")
        await asyncio.sleep(interval)


class AgentProcess:
    """A real `proconsul agent` child process on loopback addresses chosen for this test."""

    def __init__(
        self,
        *extra_args: str,
        dev: bool = True,
        ip: str = "127.0.0.1",
        node: str = "test-node",
        data_dir: str | None = None,
    ) -> None:
        self.ip = ip
        self.node = node
        # On 127.0.0.1 other tests run too, so ports are picked free; a cluster test gets its
        # own 127.x.y.z addresses and uses the standard ports there.
        self.http_port = free_port() if ip == "127.0.0.1" else 8500
        self.dns_port = free_port() if ip == "127.0.0.1" else 8600
        self.serf_lan_port = free_port() if ip == "127.0.0.1" else 8301
        self.serf_wan_port = free_port() if ip == "127.0.0.1" else 8302
        self.tmp = tempfile.TemporaryDirectory(prefix="proconsul-test-")
        self.data_dir = data_dir
        self.log_path = Path(self.tmp.name) / "agent.log"
        self.args = [proconsul_command(), "agent"]
        if dev:
            self.args.append("-dev")
        if data_dir:
            self.args.append(f"-data-dir={data_dir}")
        self.args += [
            f"-http-port={self.http_port}",
            f"-dns-port={self.dns_port}",
            f"-serf-lan-port={self.serf_lan_port}",
            f"-serf-wan-port={self.serf_wan_port}",
            f"-client={ip}",
            f"-bind={ip}",
            f"-node={node}",
            *extra_args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.wait_for_leader = True

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def start(self) -> AgentProcess:
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.tmp.name)
        if self.wait_for_leader:
            wait_for(self._leader_known, timeout=60, what=f"agent on {self.addr} to elect a leader\n{self.log()}")
        return self

    def kill(self) -> None:
        """kill -9: no chance to flush or leave."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def _leader_known(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
        with urllib.request.urlopen(f"{self.url}/v1/status/leader", timeout=5) as resp:
            return resp.read() not in (b'""', b"")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.tmp.cleanup()
        return code

    def http(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(f"{self.url}{path}", data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()
