"""systemd integration: sd_notify state messages, the watchdog and the pid file.

Owns telling systemd what the agent is doing through sdnotify when `NOTIFY_SOCKET` is set:
`READY=1` (listeners up, local state loaded; not waiting for a join), `STATUS=` lines naming what
the agent waits for (a join, a leader), `RELOADING=1` with `MONOTONIC_USEC` (as
`Type=notify-reload` expects; plain `Type=notify` accepts it too) then `READY=1` around a reload,
`STOPPING=1` on shutdown, and `WATCHDOG=1` every half `WATCHDOG_USEC` when systemd's
`WatchdogSec=` is set. The watchdog is pet from the event loop, and also from a thread while the
loop runs work declared long on purpose (`tasks.blocking_work`: a snapshot restore), for at most
`MAX_BLOCKING_S`, so a large restore does not get a healthy server killed. Also the pid file's life cycle: written atomically once the agent runs,
a stale file from a dead process replaced, a live one refused, removed on exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable

import sdnotify

from proconsul.tasks import blocking_work_in_progress

logger = logging.getLogger(__name__)


# s, 1800: the longest declared blocking work (a restore) the watchdog thread covers; past it the
# loop is taken as hung and systemd's watchdog fires as it would for any stuck loop.
MAX_BLOCKING_S = 1800.0


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """sd_notify sender; every method is a no-op when systemd did not give a NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self._enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self._enabled else None
        if self._notifier is not None and self._notifier.socket is not None:
            # Never block the event loop on a full receiver queue; a lost STATUS is harmless.
            self._notifier.socket.setblocking(False)
        self._status = ""

    @property
    def enabled(self) -> bool:
        return self._enabled

    def notify(self, *states: str) -> None:
        if self._notifier is not None:
            self._notifier.notify("\n".join(states))

    def ready(self, status: str = "") -> None:
        if status:
            self._status = status
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, status: str) -> None:
        """Send `STATUS=` only when the text changed (a poll loop calls this every second)."""
        if status != self._status:
            self._status = status
            self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        self._status = "reloading configuration"
        self.notify("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}", "STATUS=reloading configuration")

    def stopping(self) -> None:
        self._status = "shutting down"
        self.notify("STOPPING=1", "STATUS=shutting down")

    def watchdog_interval_s(self) -> float | None:
        """Half of systemd's `WATCHDOG_USEC` (sd_watchdog_enabled's rule), or None when unset."""
        if not self._enabled:
            return None
        try:
            usec = int(os.environ.get("WATCHDOG_USEC", "0"))
        except ValueError:
            return None
        pid = os.environ.get("WATCHDOG_PID", "")
        if usec <= 0 or (pid and pid != str(os.getpid())):
            return None
        return usec / 2e6

    async def run(self, status: Callable[[], str], poll_s: float = 1.0) -> None:
        """Keep `STATUS=` current and pet the watchdog until cancelled.

        The watchdog is pet from the event loop, so a loop blocked for longer than `WatchdogSec`
        gets the agent restarted by systemd, which is the point of it. Without systemd there is
        nobody to tell: it returns at once rather than compute a status line every second (which
        lists the servers among every LAN member; with many agents in one process, 7 % of them).
        """
        if not self._enabled:
            return
        interval = self.watchdog_interval_s()
        step = min(poll_s, interval) if interval else poll_s
        next_pet = 0.0
        stop = threading.Event()
        if interval:
            threading.Thread(target=self._pet_during_blocking_work, args=(interval, stop),
                             name="watchdog", daemon=True).start()
        try:
            while True:
                now = time.monotonic()
                if interval and now >= next_pet:
                    self.notify("WATCHDOG=1")
                    next_pet = now + interval
                try:
                    self.status(status())
                except Exception:  # a status text must never stop the watchdog
                    logger.debug("systemd: status text failed", exc_info=True)
                await asyncio.sleep(step)
        finally:
            stop.set()

    def _pet_during_blocking_work(self, interval: float, stop: threading.Event) -> None:
        """The watchdog thread: pets only while declared blocking work runs (and not too long)."""
        while not stop.wait(interval):
            work = blocking_work_in_progress()
            if work is not None and work[1] < MAX_BLOCKING_S:
                self.notify("WATCHDOG=1")


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
        raise PidFileError(f"pid file {path} belongs to running process {old}; is another agent running?")
    if old and old != os.getpid():
        logger.warning("agent: replacing stale pid file %s of dead process %d", path, old)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def remove_pid_file(path: str) -> None:
    """Remove the pid file if it is still ours (never another agent's)."""
    try:
        with open(path, encoding="ascii") as fh:
            if int(fh.read().strip() or "0") != os.getpid():
                return
        os.unlink(path)
    except (OSError, ValueError):
        pass
