"""The agent as a host daemon, driven as systemd would: a real `proconsul agent` process.

sd_notify messages arrive on a NOTIFY_SOCKET datagram socket the test binds; syslog lines on a
datagram socket named by PROCONSUL_SYSLOG_SOCKET; SIGHUP reloads a changed drop-in (an invalid
one keeps the old config and says so in STATUS=); SIGTERM exits 0 and removes the pid file;
log_file rotates by size and keeps log_rotate_max_files.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import free_port, proconsul_command, wait_for


class Datagrams:
    """A bound unix datagram socket collecting what the agent sends (sd_notify or syslog)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(65536).decode(errors="replace"))
            except (TimeoutError, BlockingIOError):
                return self.messages

    def wait(self, predicate, timeout: float = 30.0, what: str = "") -> str:
        def found() -> str | None:
            for message in self.drain():
                if predicate(message):
                    return message
            return None

        return wait_for(found, timeout=timeout, what=lambda: f"{what}; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


class Daemon:
    def __init__(self, tmp: Path, config: str, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.conf_dir = tmp / "proconsul.d"
        self.conf_dir.mkdir(exist_ok=True)
        self.http_port = free_port()
        self.dns_port = free_port()
        (self.conf_dir / "00-base.hcl").write_text(
            f'node_name = "daemon-test"\nclient_addr = "127.0.0.1"\nbind_addr = "127.0.0.1"\n'
            f"ports {{\n  http = {self.http_port}\n  dns = {self.dns_port}\n  server = {free_port()}\n}}\n"
            + config
        )
        self.notify = Datagrams(tmp / "notify.sock")
        self.log_path = tmp / "stderr.log"
        self.env = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path), PYTHONUNBUFFERED="1", **(env or {}))
        self.env.pop("JOURNAL_STREAM", None)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> Daemon:
        args = [proconsul_command(), "agent", "-dev", f"-config-dir={self.conf_dir}", *extra]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.tmp)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> str:
        return self.notify.wait(lambda m: "READY=1" in m.split("\n"), what=f"READY=1\n{self.log()}")

    def get(self, path: str) -> object:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            self.notify.close()


@pytest.fixture
def tmp() -> Path:
    with tempfile.TemporaryDirectory(prefix="proconsul-daemon-") as name:
        yield Path(name)


def test_notify_ready_reload_and_stop(tmp: Path) -> None:
    pid_file = tmp / "proconsul.pid"
    daemon = Daemon(tmp, f'pid_file = "{pid_file}"\nlog_level = "INFO"\n').start()
    try:
        ready = daemon.wait_ready()
        assert any(line.startswith("STATUS=serving") for line in ready.split("\n")), ready
        # READY=1 means the listeners answer and the pid file is in place.
        assert daemon.get("/v1/agent/self")["Config"]["NodeName"] == "daemon-test"
        assert int(pid_file.read_text()) == daemon.proc.pid

        # A new drop-in with a service and a log level change, then SIGHUP.
        (daemon.conf_dir / "10-web.hcl").write_text(
            'service {\n  name = "web"\n  port = 8080\n}\nlog_level = "DEBUG"\n'
        )
        daemon.notify.drain()
        daemon.notify.messages.clear()
        daemon.proc.send_signal(signal.SIGHUP)
        reloading = daemon.notify.wait(lambda m: "RELOADING=1" in m, what="RELOADING=1")
        usec = [int(x.split("=", 1)[1]) for x in reloading.split("\n") if x.startswith("MONOTONIC_USEC=")]
        assert usec and abs(usec[0] / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 60
        daemon.notify.wait(lambda m: "READY=1" in m, what="READY after reload")
        wait_for(lambda: "web" in daemon.get("/v1/agent/services"), what="service web after reload")
        wait_for(lambda: "[DEBUG]" in daemon.log(), what=f"debug lines after reload\n{daemon.log()}")

        # An invalid drop-in: the old config stays, the error is logged and shown in STATUS=.
        daemon.notify.messages.clear()
        (daemon.conf_dir / "20-bad.hcl").write_text('service {\n  name = "db"\n  port = "not-a-port"\n}\n')
        daemon.proc.send_signal(signal.SIGHUP)
        failed = daemon.notify.wait(lambda m: "READY=1" in m and "reload failed" in m, what="failed-reload status")
        assert "20-bad.hcl" in failed or "port" in failed, failed
        wait_for(lambda: "reload failed" in daemon.log(), what="reload error in the log")
        services = daemon.get("/v1/agent/services")
        assert "web" in services and "db" not in services

        assert daemon.proc.poll() is None
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(30) == 0, daemon.log()
        assert any("STOPPING=1" in m for m in daemon.notify.drain())
        assert not pid_file.exists()
    finally:
        daemon.stop()


def test_watchdog_pings_when_watchdog_usec_set(tmp: Path) -> None:
    daemon = Daemon(tmp, "", env={"WATCHDOG_USEC": "400000"}).start()
    try:
        daemon.wait_ready()
        # Half of 0.4s: several pings within two seconds.
        wait_for(lambda: sum("WATCHDOG=1" in m for m in daemon.notify.drain()) >= 3, timeout=20, what="WATCHDOG=1")
    finally:
        assert daemon.stop() == 0


def test_pid_file_stale_replaced_live_refused(tmp: Path) -> None:
    pid_file = tmp / "agent.pid"
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file.write_text(f"{dead.pid}\n")
    first = Daemon(tmp, f'pid_file = "{pid_file}"\n').start()
    try:
        first.wait_ready()
        assert int(pid_file.read_text()) == first.proc.pid
        second_dir = tmp / "second"
        second_dir.mkdir()
        second = Daemon(second_dir, f'pid_file = "{pid_file}"\n').start()
        assert second.proc.wait(60) == 1
        second.notify.close()
        assert "belongs to running process" in second.log(), second.log()
        assert int(pid_file.read_text()) == first.proc.pid
    finally:
        assert first.stop() == 0
    assert not pid_file.exists()


def test_second_signal_exits_at_once(tmp: Path) -> None:
    daemon = Daemon(tmp, "").start()
    try:
        daemon.wait_ready()
        # Two signals back to back: the second one must not wait for the graceful path.
        os.kill(daemon.proc.pid, signal.SIGINT)
        os.kill(daemon.proc.pid, signal.SIGINT)
        assert daemon.proc.wait(30) in (0, 1)
    finally:
        daemon.stop()


def test_syslog_lines_with_facility(tmp: Path) -> None:
    syslog = Datagrams(tmp / "syslog.sock")
    daemon = Daemon(
        tmp,
        'enable_syslog = true\nsyslog_facility = "LOCAL3"\n',
        env={"PROCONSUL_SYSLOG_SOCKET": str(syslog.path)},
    ).start()
    try:
        daemon.wait_ready()
        line = syslog.wait(lambda m: "agent: started" in m, what="syslog line")
        # <PRI> = facility*8 + severity: LOCAL3 is 19, INFO is 6.
        assert line.startswith(f"<{19 * 8 + 6}>"), line
        assert " proconsul[" in line, line
    finally:
        assert daemon.stop() == 0
        syslog.close()


def test_log_file_rotates_by_size_and_keeps_max_files(tmp: Path) -> None:
    log_dir = tmp / "logs"
    daemon = Daemon(
        tmp,
        f'log_file = "{log_dir}/"\nlog_rotate_bytes = 600\nlog_rotate_max_files = 2\nlog_level = "DEBUG"\n',
    ).start()
    try:
        daemon.wait_ready()
        for _ in range(30):  # each reload logs a few lines
            daemon.proc.send_signal(signal.SIGHUP)
            time.sleep(0.05)

        def rotated() -> list[str]:
            return sorted(p.name for p in log_dir.iterdir() if p.name != "proconsul.log")

        wait_for(lambda: len(rotated()) == 2, what=lambda: f"two rotated files, got {rotated()}")
        assert (log_dir / "proconsul.log").exists()
        time.sleep(0.5)
        assert len(rotated()) == 2, rotated()
        for name in rotated():
            assert name.startswith("proconsul-") and name.endswith(".log")
            assert (log_dir / name).stat().st_size <= 600 + 300
    finally:
        assert daemon.stop() == 0
