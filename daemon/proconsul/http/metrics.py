"""`/v1/agent/metrics`, `/v1/agent/metrics/stream` and the per-route HTTP timer (`consul.api.http`).

Owns the endpoints (go-metrics' JSON summary, or `?format=prometheus` through prometheus-client
when `telemetry.prometheus_retention_time` is positive, else Consul's 415 answer; the stream:
go-metrics' `InmemSink.Stream` as Consul serves it, the summary of each interval as it finishes,
JSON with a four-space indent and a newline, until the client leaves or the agent stops) and
`HTTPMetrics`, which the one HTTP middleware calls after each routed request. Consul labels the
timer with the method and the registered pattern, leading "/" dropped and "/" turned into "_"
(`/v1/kv/` -> `v1_kv_`); here the pattern is the aiohttp route's canonical path cut at its first
variable part, which names the same prefix.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from proconsul.http.appkeys import METRICS
from proconsul.http.common import json_response
from proconsul.metrics import Metrics, Sample
from proconsul.metrics.prometheus import CONTENT_TYPE, render

__all__ = ["HTTPMetrics", "routes"]

PROMETHEUS_DISABLED = "Prometheus is not enabled since its retention time is not positive"


class HTTPMetrics:
    """The `api.http` timer, with one cached series per (method, route)."""

    def __init__(self, metrics: Metrics) -> None:
        self._timer: Sample = metrics.sample(
            "api", "http", help="time to answer an HTTP API request, ms", labels=("method", "path")
        )
        self._series: dict[tuple[str, object], Sample] = {}

    def observe(self, request: web.Request, start: float) -> None:
        """Record the request begun at `start` (a perf_counter reading); unrouted requests are not."""
        resource = request.match_info.route.resource
        if resource is None:
            return
        key = (request.method, resource)
        series = self._series.get(key)
        if series is None:
            pattern = resource.canonical.split("{", 1)[0]
            series = self._series[key] = self._timer.with_labels(request.method, pattern[1:].replace("/", "_"))
        series.observe((time.perf_counter() - start) * 1000.0)

    def route_series(self, method: str, pattern: str) -> Sample:
        """The series `observe` feeds for a route whose canonical path starts with `pattern`
        (e.g. "/v1/kv/"), for http/fast.py, which answers without a routed request."""
        return self._timer.with_labels(method, pattern[1:].replace("/", "_"))  # type: ignore[no-any-return]


async def agent_metrics(request: web.Request) -> web.StreamResponse:
    metrics: Metrics = request.app[METRICS]
    if request.query.get("format") == "prometheus":
        if metrics.prometheus_retention_s <= 0:
            return web.Response(status=415, text=PROMETHEUS_DISABLED)
        return web.Response(body=render(metrics), headers={"Content-Type": CONTENT_TYPE})
    return json_response(request, metrics.summary())


STOPPING = web.AppKey("metrics_streams_stopping", asyncio.Event)
# seconds: how often a waiting stream looks whether its client is still there.
_POLL_S = 1.0


async def agent_metrics_stream(request: web.Request) -> web.StreamResponse:
    metrics: Metrics = request.app[METRICS]
    stopping = request.app[STOPPING]
    inmem = metrics.inmem
    # Consul sets no content type (Go writes the header before any body byte); each document is
    # JSON, so say so.
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(b"")  # the headers go out now: the client knows it is attached
    interval = inmem.current(metrics.clock())
    try:
        while not stopping.is_set():
            remaining = interval.start + inmem.interval_s - metrics.clock()
            if remaining > 0:
                try:
                    async with asyncio.timeout(min(remaining, _POLL_S)):
                        await stopping.wait()
                except TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        break
                continue
            # The interval is over (nothing records into it any more): send it, follow the next.
            body = json.dumps(metrics.interval_summary(interval), indent=4).encode() + b"\n"
            await resp.write(body)
            interval = inmem.current(metrics.clock())
    except ConnectionError:
        pass  # the client went away
    return resp


async def _end_streams(app: web.Application) -> None:
    app[STOPPING].set()


def install(app: web.Application) -> None:
    """Let the app's shutdown end its metrics streams at once (else the agent waits for them)."""
    app[STOPPING] = asyncio.Event()
    app.on_shutdown.append(_end_streams)


def routes() -> list[web.RouteDef]:
    return [web.get("/v1/agent/metrics", agent_metrics), web.get("/v1/agent/metrics/stream", agent_metrics_stream)]
