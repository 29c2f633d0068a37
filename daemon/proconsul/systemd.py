"""systemd integration: sd_notify state messages and the pid file.

Owns telling systemd what the agent is doing (`READY=1`, `STATUS=`, `RELOADING=1`,
`STOPPING=1`) through sdnotify when `NOTIFY_SOCKET` is set, and the pid file's life cycle:
written atomically once the agent runs, a stale file from a dead process replaced, a live one
refused, removed on exit.
"""

from __future__ import annotations

import os

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self._enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self._enabled else None

    def notify(self, *states: str) -> None:
        if self._notifier is not None:
            self._notifier.notify("\n".join(states))

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *( [f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        self.notify("RELOADING=1", "STATUS=reloading configuration")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=shutting down")


class PidFileError(Exception):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_pid_file(path: str) -> None:
    """Write our pid atomically; refuse when the file names another live process."""
    try:
        with open(path, encoding="ascii") as fh:
            old = int(fh.read().strip() or "0")
    except (OSError, ValueError):
        old = 0
    if old and old != os.getpid() and _alive(old):
        raise PidFileError(f"pid file {path} belongs to running process {old}")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pid_file(path: str) -> None:
    try:
        with open(path, encoding="ascii") as fh:
            if int(fh.read().strip() or "0") != os.getpid():
                return
        os.unlink(path)
    except (OSError, ValueError):
        pass
