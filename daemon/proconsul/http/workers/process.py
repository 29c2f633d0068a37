"""An HTTP worker process: `python -m proconsul.http.workers.process PARENT CONTROL FORWARD FD[,FD]`.

Owns a worker's life: it dies with the agent that started it (PR_SET_PDEATHSIG, and the control
stream's end), takes its configuration from the agent over CONTROL, accepts on the agent's
listening HTTP sockets it inherited (FD...), answers the hot reads from its replica and forwards
the rest to FORWARD (http/workers/app.py); SIGTERM stops it. It never talks to systemd (the
agent alone notifies), ignores SIGHUP (a reload reaches it as a new configuration) and SIGINT
(a terminal's Ctrl-C is the agent's to handle).
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
from typing import Any

from aiohttp import web

from proconsul.http.conn_guard import (
    HEADER_READ_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    ConnectionCounter,
    guarded_factory,
)
from proconsul.http.server import refuse_unknown_expectations
from proconsul.http.workers.app import WorkerAgent, apply_config, build_worker_app
from proconsul.http.workers.proxy import Forwarder
from proconsul.http.workers.replica import Replica
from proconsul.listen import listen_backlog
from proconsul.metrics.registry import Metrics

logger = logging.getLogger("proconsul.http.worker")
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the control stream's end still stops us
        pass
    if os.getppid() != parent:  # the agent died before the request above took effect
        sys.exit(0)


async def serve(control: str, forward: str, fds: list[int]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Ctrl-C in a terminal reaches the whole process group: the agent decides (a graceful leave
    # while its workers keep serving, then SIGTERM to each), so the worker ignores it; SIGHUP too.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    metrics = Metrics()
    app: web.Application | None = None

    def on_hello(hello: dict[str, Any]) -> None:
        agent.configure(hello)
        logging.getLogger("proconsul").setLevel(_level(agent.config.log_level))
        if app is not None:
            apply_config(app, agent)

    replica = Replica(control, on_hello)
    agent = WorkerAgent(replica, metrics)
    follow = loop.create_task(replica.run(stop.set), name="replica")
    hello = loop.create_task(replica.hello_seen.wait())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait((hello, stopping), return_when=asyncio.FIRST_COMPLETED)
    hello.cancel()
    forwarder = Forwarder(forward)
    listeners: list[asyncio.AbstractServer] = []
    runner: web.AppRunner | None = None
    if not stop.is_set():
        app = build_worker_app(agent, forwarder)
        apply_config(app, agent)
        kwargs: dict[str, Any] = {"access_log": None, "keepalive_timeout": IDLE_TIMEOUT_S}
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0, handler_cancellation=True, **kwargs)
        await runner.setup()
        assert runner.server is not None
        runner.server.request_handler = refuse_unknown_expectations(runner.server.request_handler)
        counter = ConnectionCounter(lambda: int(agent.config.limits.http_max_conns_per_client))
        factory = guarded_factory(runner.server, counter, HEADER_READ_TIMEOUT_S, **kwargs)
        for fd in fds:
            sock = socket.socket(fileno=fd)
            listeners.append(await loop.create_server(factory, sock=sock, backlog=listen_backlog()))
        logger.info("http worker %d: serving", os.getpid())
    await stopping
    for listener in listeners:
        listener.close()
    if runner is not None:
        await runner.cleanup()
    await forwarder.close()
    follow.cancel()
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
