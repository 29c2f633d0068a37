"""`GET /v1/agent/monitor`: the agent's log lines streamed as they happen, as Consul does.

Owns the log hub (`LogHub`, a handler on the root logger while at least one monitor is attached)
and the streaming handler. A request names a level (`?loglevel=`, default info; Consul's names
trace, debug, info, warn, err/error; anything else is a 400 `Unknown log level: <level>`) and
optionally `?logjson` for JSON lines. The answer is a chunked `text/plain` stream, one log line
per chunk, until the client goes away or the agent stops.

A monitor may ask for more detail than the agent logs: while it is attached the root logger is
lowered to its level and every other handler is held at the agent's level, so the journal, syslog
and log file see exactly what they saw before. Lines are queued per monitor (bounded); a monitor
too slow to keep up loses lines, and is told how many, instead of slowing the agent down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import web

from proconsul.http.common import bad_request

TRACE = 5
LEVELS = {"TRACE": TRACE, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
          "WARNING": logging.WARNING, "ERR": logging.ERROR, "ERROR": logging.ERROR}
# lines, 512: what one monitor may have queued before lines are dropped (Consul's buffer too).
QUEUE_LINES = 512
_TEXT = logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s")


def _json_line(record: logging.LogRecord) -> str:
    out: dict[str, Any] = {
        "@timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)),
        "@level": record.levelname.lower(),
        "@module": record.name,
        "@message": record.getMessage(),
    }
    if record.exc_info:
        out["@error"] = _TEXT.formatException(record.exc_info)
    return json.dumps(out)


class _Subscriber:
    def __init__(self, loop: asyncio.AbstractEventLoop, level: int, as_json: bool) -> None:
        self.loop = loop
        self.level = level
        self.as_json = as_json
        self.queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_LINES)
        self.dropped = 0

    def _put(self, line: str) -> None:
        try:
            self.queue.put_nowait(line)
        except asyncio.QueueFull:
            self.dropped += 1

    def offer(self, line: str) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._put(line)
        else:  # a record logged from another thread (executor, resolver)
            self.loop.call_soon_threadsafe(self._put, line)


class LogHub(logging.Handler):
    """Fans log records out to the attached monitors."""

    def __init__(self) -> None:
        super().__init__(level=0)
        self._subs: list[_Subscriber] = []
        self._agent_level: int | None = None  # the root level before any monitor lowered it
        self._held: dict[logging.Handler, int] = {}

    def subscribe(self, level: int, as_json: bool) -> _Subscriber:
        sub = _Subscriber(asyncio.get_running_loop(), level, as_json)
        root = logging.getLogger()
        if not self._subs:
            self._agent_level = root.level
            root.addHandler(self)
        self._subs.append(sub)
        self._apply_levels()
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        root = logging.getLogger()
        self._apply_levels()
        if not self._subs:
            root.removeHandler(self)
            self._agent_level = None

    def agent_level_changed(self, level: int) -> None:
        """The agent's level changed (reload) while monitors may be attached: keep both right."""
        if not self._subs:
            return
        for handler, held in self._held.items():
            handler.setLevel(held)
        self._held = {}
        self._agent_level = level
        self._apply_levels()

    def _apply_levels(self) -> None:
        root = logging.getLogger()
        agent_level = self._agent_level if self._agent_level is not None else root.level
        wanted = min([s.level for s in self._subs], default=agent_level)
        if wanted < agent_level:
            for handler in root.handlers:
                if handler is not self and handler not in self._held:
                    self._held[handler] = handler.level
                    handler.setLevel(max(handler.level, agent_level))
            root.setLevel(wanted)
        else:
            root.setLevel(agent_level)
            for handler, level in self._held.items():
                handler.setLevel(level)
            self._held = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = json_line = None
        for sub in list(self._subs):
            if record.levelno < sub.level:
                continue
            try:
                if sub.as_json:
                    json_line = json_line or _json_line(record)
                    sub.offer(json_line)
                else:
                    text = text or _TEXT.format(record)
                    sub.offer(text)
            except Exception:  # a closed loop at shutdown: the monitor is gone anyway
                continue


HUB = LogHub()


async def monitor(request: web.Request) -> web.StreamResponse:
    name = request.query.get("loglevel", "") or "INFO"
    level = LEVELS.get(name.upper())
    if level is None:
        raise bad_request(f"Unknown log level: {name}")
    as_json = "logjson" in request.query and request.query["logjson"].lower() not in ("false", "0")
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    resp.enable_chunked_encoding()
    sub = HUB.subscribe(level, as_json)
    request.app[MONITORS].add(sub)
    try:
        await resp.prepare(request)
        await resp.write(b"")  # the headers go out now, so the client knows it is attached
        while True:
            try:
                async with asyncio.timeout(1.0):
                    line = await sub.queue.get()
                if line is _END:
                    break
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break
                continue
            if sub.dropped:
                line = f"Monitor dropped {sub.dropped} logs during monitor request\n{line}"
                sub.dropped = 0
            await resp.write(line.encode("utf-8", "replace") + b"\n")
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away
    finally:
        request.app[MONITORS].discard(sub)
        HUB.unsubscribe(sub)
    return resp


MONITORS = web.AppKey("monitors", set)
_END = "\x00end"  # queued by the app's shutdown: the stream ends before aiohttp waits for handlers


async def _end_streams(app: web.Application) -> None:
    for sub in list(app[MONITORS]):
        while sub.queue.full():
            sub.queue.get_nowait()
        sub.queue.put_nowait(_END)


def install(app: web.Application) -> None:
    """Let the app's shutdown end its monitor streams at once (else the agent waits for them)."""
    app[MONITORS] = set()
    app.on_shutdown.append(_end_streams)


def routes() -> list[web.RouteDef]:
    return [web.get("/v1/agent/monitor", monitor)]
