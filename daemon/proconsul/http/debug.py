"""`/v1/agent/debug/pprof/*`: profiles of the agent's event loop, the analogue of Consul's Go pprof.

Owns the two profiles `proconsul debug` collects, served only with `enable_debug` (true in -dev),
as Consul serves pprof (a 404 otherwise, as if the routes were absent):

- `profile?seconds=N` (default 30, at most 600): a cProfile of the event-loop thread, where every
  request, gossip and Raft task runs, over N seconds; the body is the `marshal` stats file that
  `pstats.Stats(path)` and tools such as snakeviz read. One profile at a time: Python has one
  profiler hook per thread, so a second request waits for the first.
- `goroutine`: the stack of every asyncio task (the Go goroutine dump's counterpart), as text.

Each profile costs the agent while it runs (cProfile slows Python code severalfold), which is
why they stay off unless `enable_debug` is set.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import marshal
from typing import Any

from aiohttp import web

from proconsul.http.appkeys import AGENT
from proconsul.http.common import HTTPError, bad_request

MAX_PROFILE_S = 600
_PROFILE_LOCK = web.AppKey("profile_lock", asyncio.Lock)


def _enabled(request: web.Request) -> None:
    if not request.app[AGENT].config.enable_debug:
        raise HTTPError(404, "")


async def profile(request: web.Request) -> web.Response:
    _enabled(request)
    raw = request.query.get("seconds", "30")
    try:
        seconds = float(raw)
    except ValueError:
        raise bad_request(f"Invalid seconds value: {raw!r}") from None
    if not 0 < seconds <= MAX_PROFILE_S:
        raise bad_request(f"seconds must be above 0 and at most {MAX_PROFILE_S}")
    async with request.app[_PROFILE_LOCK]:
        prof = cProfile.Profile()
        prof.enable()
        try:
            await asyncio.sleep(seconds)
        finally:
            prof.disable()
    prof.create_stats()
    stats: Any = prof.stats  # type: ignore[attr-defined]
    return web.Response(body=marshal.dumps(stats), content_type="application/octet-stream")


async def goroutine(request: web.Request) -> web.Response:
    _enabled(request)
    out = io.StringIO()
    tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    out.write(f"tasks: total {len(tasks)}\n\n")
    for task in tasks:
        out.write(f"task {task.get_name()} [{'done' if task.done() else 'pending'}]:\n")
        task.print_stack(file=out)
        out.write("\n")
    return web.Response(text=out.getvalue())


def install(app: web.Application) -> None:
    app[_PROFILE_LOCK] = asyncio.Lock()


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/agent/debug/pprof/profile", profile),
        web.get("/v1/agent/debug/pprof/goroutine", goroutine),
    ]
