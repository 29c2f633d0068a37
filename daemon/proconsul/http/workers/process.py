"""An HTTP worker process: `python -m proconsul.http.workers.process PARENT CONTROL FORWARD FD[,FD]`.

Owns a worker's life: it dies with the agent that started it (PR_SET_PDEATHSIG, and the control
stream's end), takes its configuration from the agent over CONTROL, accepts on the agent's
listening HTTP sockets it inherited (FD...), answers the hot reads from its replica (http/fast.py
first, then http/workers/app.py) and forwards the rest to FORWARD; SIGTERM stops it. It never
talks to systemd (the agent alone notifies), ignores SIGHUP (a reload reaches it as a new
configuration) and SIGINT (a terminal's Ctrl-C is the agent's to handle).
"""

from __future__ import annotations

import asyncio
import ctypes
import faulthandler
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web

from proconsul.http import fast
from proconsul.http.conn_guard import (
    HEADER_READ_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    ConnectionCounter,
    guarded_factory,
)
from proconsul.http.server import refuse_unknown_expectations
from proconsul.http.workers.app import SERVED_BY, WorkerAgent, WorkerReads, apply_config, build_worker_app
from proconsul.http.workers.proxy import Forwarder
from proconsul.http.workers.replica import Replica
from proconsul.listen import listen_backlog
from proconsul.metrics.registry import Metrics
from proconsul.metrics.remote import take_report

logger = logging.getLogger("proconsul.http.worker")
PR_SET_PDEATHSIG = 1
# How often a worker reports its telemetry to the agent (the statsd sinks' flush interval too).
METRICS_REPORT_S = 0.1


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the control stream's end still stops us
        pass
    if os.getppid() != parent:  # the agent died before the request above took effect
        sys.exit(0)


class Worker:
    """A worker's serving parts: its replica, its application with the fast path in front, its
    listeners. A worker process runs one; tests run one in their own event loop."""

    def __init__(self, control: str, forward: str, own_log_level: bool = False) -> None:
        self.metrics = Metrics()
        # Every value recorded here is reported to the agent (`_report_metrics`), whose
        # registry is the one operators read.
        self.metrics.open_outbox()
        self.replica = Replica(control, self._on_hello)
        self.agent = WorkerAgent(self.replica, self.metrics)
        self.forwarder = Forwarder(forward)
        self.own_log_level = own_log_level  # the process's: follows the agent's log_level
        self.app: web.Application | None = None
        self.routes: fast.FastRoutes | None = None  # None: aiohttp answers everything
        self.runner: web.AppRunner | None = None
        self.listeners: list[asyncio.AbstractServer] = []
        self._follow: asyncio.Task[None] | None = None
        self._reports: asyncio.Task[None] | None = None

    def _on_hello(self, hello: dict[str, Any]) -> None:
        self.agent.configure(hello)
        if self.own_log_level:
            logging.getLogger("proconsul").setLevel(_level(self.agent.config.log_level))
        if self.app is not None:
            apply_config(self.app, self.agent)
            if self.routes is not None:
                self.routes.refresh()

    def follow(self, gone: Callable[[], None]) -> None:
        """Connect to the agent's feed and keep the replica; `gone` when the agent has exited."""
        loop = asyncio.get_running_loop()
        self._follow = loop.create_task(self.replica.run(gone), name="replica")
        self._reports = loop.create_task(self._report_metrics(), name="metrics-reports")

    async def _report_metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_REPORT_S)
            payload = take_report(self.metrics)
            if payload is not None:
                self.replica.report(payload)

    async def listen(self, socks: list[socket.socket]) -> None:
        """Serve on `socks` (after the first configuration arrived: `replica.hello_seen`)."""
        app = self.app = build_worker_app(self.agent, self.forwarder)
        apply_config(app, self.agent)
        kwargs: dict[str, Any] = {"access_log": None, "keepalive_timeout": IDLE_TIMEOUT_S}
        runner = self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0,
                                             handler_cancellation=True, **kwargs)
        await runner.setup()
        assert runner.server is not None
        runner.server.request_handler = refuse_unknown_expectations(runner.server.request_handler)
        counter = ConnectionCounter(lambda: int(self.agent.config.limits.http_max_conns_per_client))
        # The hot reads go through http/fast.py over the replica, as the agent's go over its store;
        # the worker's answers name it, as its application's do.
        routes = fast.FastRoutes(app, IDLE_TIMEOUT_S, reads=WorkerReads(self.agent),
                                 own_headers=f"{SERVED_BY}: {os.getpid()}\r\n")
        factory: Callable[[], Any]
        if fast.aiohttp_supported():
            # Also while the response headers keep it off (`routes.on`): a reload may turn it on.
            self.routes = routes
            factory = fast.fast_factory(runner.server, routes, counter, HEADER_READ_TIMEOUT_S, **kwargs)
        else:
            factory = guarded_factory(runner.server, counter, HEADER_READ_TIMEOUT_S, **kwargs)
        loop = asyncio.get_running_loop()
        for sock in socks:
            self.listeners.append(await loop.create_server(factory, sock=sock, backlog=listen_backlog()))

    async def close(self) -> None:
        for listener in self.listeners:
            listener.close()
        if self.runner is not None:
            await self.runner.cleanup()
        await self.forwarder.close()
        if self._reports is not None:
            self._reports.cancel()
            # What was recorded since the last report (the requests answered while stopping).
            payload = take_report(self.metrics)
            if payload is not None:
                self.replica.report(payload)
        if self._follow is not None:
            self._follow.cancel()


async def serve(control: str, forward: str, fds: list[int]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Ctrl-C in a terminal reaches the whole process group: the agent decides (a graceful leave
    # while its workers keep serving, then SIGTERM to each), so the worker ignores it; SIGHUP too.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    worker = Worker(control, forward, own_log_level=True)
    worker.follow(stop.set)
    hello = loop.create_task(worker.replica.hello_seen.wait())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait((hello, stopping), return_when=asyncio.FIRST_COMPLETED)
    hello.cancel()
    if not stop.is_set():
        await worker.listen([socket.socket(fileno=fd) for fd in fds])
        logger.info("http worker %d: serving", os.getpid())
    await stopping
    await worker.close()
    logger.info("http worker %d: stopped", os.getpid())


def _level(name: str) -> int:
    return {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
            "warning": logging.WARNING, "err": logging.ERROR, "error": logging.ERROR}.get(str(name).lower(), logging.INFO)


def main(argv: list[str]) -> int:
    parent, control, forward, fds = int(argv[0]), argv[1], argv[2], [int(f) for f in argv[3].split(",") if f]
    _die_with_parent(parent)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <worker>` dumps its stacks, as for the agent's loop
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format=f"%(asctime)s [%(levelname)s] http-worker[{os.getpid()}] %(name)s: %(message)s")
    asyncio.run(serve(control, forward, fds))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
