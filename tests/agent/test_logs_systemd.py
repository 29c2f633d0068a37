"""proconsul.agent.logs (file rotation, syslog priorities) and proconsul.agent.systemd (sd_notify, pid file)."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import pytest
from proconsul.agent import logs, systemd


def _record(msg: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("proconsul.test", level, __file__, 1, msg, (), None)


def test_log_file_directory_name_and_size_rotation(tmp_path: Path) -> None:
    handler = logs.RotatingLogFile(f"{tmp_path}/", rotate_bytes=100, max_files=0)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(20):
        handler.emit(_record(f"line {i:02d} " + "x" * 30))
    handler.close()
    assert handler.path == str(tmp_path / "proconsul.log")
    rotated = handler.rotated_files()
    assert len(rotated) >= 5
    text = "".join(Path(p).read_text() for p in [*rotated, handler.path])
    assert [f"line {i:02d}" in text for i in range(20)] == [True] * 20  # nothing lost
    assert all(os.path.getsize(p) <= 100 for p in rotated)


def test_log_file_max_files(tmp_path: Path) -> None:
    keep_two = logs.RotatingLogFile(str(tmp_path / "a.log"), rotate_bytes=50, max_files=2)
    keep_none = logs.RotatingLogFile(str(tmp_path / "b"), rotate_bytes=50, max_files=-1)
    for handler in (keep_two, keep_none):
        handler.setFormatter(logging.Formatter("%(message)s"))
        for _ in range(10):
            handler.emit(_record("y" * 40))
        handler.close()
    assert len(keep_two.rotated_files()) == 2
    assert keep_none.path == str(tmp_path / "b.log") and keep_none.rotated_files() == []


def test_log_file_duration_rotation(tmp_path: Path) -> None:
    handler = logs.RotatingLogFile(str(tmp_path / "d.log"), rotate_duration_s=0.05)
    handler.emit(_record("first"))
    time.sleep(0.1)
    handler.emit(_record("second"))
    handler.close()
    assert len(handler.rotated_files()) == 1


def test_syslog_handler_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv(logs.SYSLOG_SOCKET_ENV, str(path))
    try:
        assert logs.setup("INFO", syslog=True, facility="LOCAL1") == []
        logging.getLogger("proconsul.x").error("boom")
        data = sock.recv(4096).decode()
        assert data.startswith(f"<{17 * 8 + 3}>") and "proconsul[" in data and "boom" in data
    finally:
        logs.setup("INFO")
        sock.close()


def test_syslog_missing_socket_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(logs.SYSLOG_SOCKET_ENV, str(tmp_path / "nothing"))
    try:
        warnings = logs.setup("INFO", syslog=True)
        assert warnings and "syslog" in warnings[0]
    finally:
        logs.setup("INFO")


def test_notifier_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        n = systemd.Notifier()
        n.ready("serving")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
        n.status("serving")  # unchanged: not sent
        n.status("waiting")
        assert sock.recv(4096) == b"STATUS=waiting"
        n.reloading()
        msg = sock.recv(4096).decode().split("\n")
        assert msg[0] == "RELOADING=1" and msg[1].startswith("MONOTONIC_USEC=")
        n.stopping()
        assert sock.recv(4096).startswith(b"STOPPING=1")
        assert n.watchdog_interval_s() == 1.0
        monkeypatch.setenv("WATCHDOG_PID", "1")
        assert n.watchdog_interval_s() is None  # meant for another process
    finally:
        sock.close()


def test_pid_file_live_refused_stale_replaced(tmp_path: Path) -> None:
    path = tmp_path / "p.pid"
    path.write_text(f"{os.getppid()}\n")
    with pytest.raises(systemd.PidFileError):
        systemd.write_pid_file(str(path))
    path.write_text("999999999\n")
    systemd.write_pid_file(str(path))
    assert path.read_text().strip() == str(os.getpid())
    systemd.remove_pid_file(str(path))
    assert not path.exists()


def test_watchdog_is_pet_while_declared_blocking_work_holds_the_loop(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot restore holds the event loop; the watchdog thread keeps systemd from killing the
    server meanwhile, and pets nothing while the loop is held by undeclared work (a real hang)."""
    import asyncio

    from proconsul.tasks import blocking_work

    path = str(tmp_path / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # pets every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    def drain() -> int:
        pets = 0
        while True:
            try:
                pets += receiver.recv(4096).decode().split("\n").count("WATCHDOG=1")
            except BlockingIOError:
                return pets

    async def main() -> tuple[int, int]:
        notifier = systemd.Notifier()
        task = asyncio.get_running_loop().create_task(notifier.run(lambda: "serving"))
        while drain() == 0:  # the loop's own pets are flowing
            await asyncio.sleep(0.05)
        drain()  # no await from here to the end of each block: only the thread can pet
        with blocking_work("restoring a snapshot"):
            time.sleep(1.0)  # the restore, holding the loop
        during_restore = drain()
        time.sleep(1.0)  # undeclared: a hung loop
        during_hang = drain()
        task.cancel()
        return during_restore, during_hang

    during_restore, during_hang = asyncio.run(main())
    receiver.close()
    assert during_restore >= 3
    assert during_hang == 0


def test_without_systemd_the_status_poll_does_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NOTIFY_SOCKET: nobody reads STATUS=, so the loop ends at once and never computes it."""
    import asyncio

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    asked: list[str] = []

    def status() -> str:
        asked.append("status")
        return "serving"

    asyncio.run(asyncio.wait_for(systemd.Notifier().run(status, poll_s=0.01), timeout=5))
    assert asked == []
