"""The agent's side of its HTTP workers: start them, restart them, stop them.

Owns the private directory (mkdtemp, mode 0700) holding the two unix sockets (the apply feed's
control socket and the agent's forwarding HTTP listener), and N-1 worker processes for
`http_workers = N`, each started as `python -m proconsul.http.workers.process` with the agent's
plain HTTP listening sockets inherited (pass_fds): the kernel spreads new connections over every
process accepting on them. A worker that exits is started again (after a back-off); stop() sends
SIGTERM to each worker it started, by pid, and SIGKILL to one still there after a grace period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from proconsul.http.server import HTTPServer
from proconsul.http.workers.feed import ApplyFeed

logger = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
RESTART_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


class WorkerSupervisor:
    def __init__(self, count: int, feed: ApplyFeed) -> None:
        self.count = count
        self.feed = feed
        self.procs: dict[int, asyncio.subprocess.Process] = {}  # slot -> process
        self.restarts = 0
        self._dir = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.returncode is None]

    async def start(self, http: HTTPServer) -> None:
        self._dir = tempfile.mkdtemp(prefix="proconsul-http-")  # 0700: only this user connects
        self.control = os.path.join(self._dir, "feed.sock")
        self.forward = os.path.join(self._dir, "http.sock")
        await self.feed.start(self.control)
        await http.listen_unix(self.forward)
        self.fds = [s.fileno() for s in http.plain_sockets()]
        if not self.fds:
            logger.warning("http workers: no plain HTTP listener to share; http_workers has no effect")
            return
        loop = asyncio.get_running_loop()
        for slot in range(self.count):
            self._tasks.append(loop.create_task(self._keep(slot), name=f"http-worker-{slot}"))

    async def _spawn(self) -> asyncio.subprocess.Process:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")}
        args: list[Any] = [sys.executable, "-m", "proconsul.http.workers.process", str(os.getpid()),
                           self.control, self.forward, ",".join(map(str, self.fds))]
        return await asyncio.create_subprocess_exec(*args, pass_fds=self.fds, env=env, stdin=asyncio.subprocess.DEVNULL)

    async def _keep(self, slot: int) -> None:
        failures = 0
        while not self._stopping:
            proc = self.procs[slot] = await self._spawn()
            logger.info("http workers: started worker %d (pid %d)", slot, proc.pid)
            loop = asyncio.get_running_loop()
            began = loop.time()
            code = await proc.wait()
            if self._stopping:
                return
            failures = 0 if loop.time() - began > 30 else failures + 1
            delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
            logger.warning("http workers: worker %d (pid %d) exited with %s; restarting in %.1fs",
                           slot, proc.pid, code, delay)
            self.restarts += 1
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        self._stopping = True
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        await self.feed.stop()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
