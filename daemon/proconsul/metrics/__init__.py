"""Telemetry: the registry every subsystem records into, and its two read-out views.

Owns nothing itself; `registry` records (counters, gauges, samples with labels), `inmem` keeps
go-metrics' interval aggregation behind `/v1/agent/metrics`, `prometheus` renders the same series
through prometheus-client, `runtime` samples the process (memory, tasks, GC, loop lag).
A leaf layer: it imports nothing of proconsul, so raft/, server/, http/, dns/ and serf/ can use it.
"""

from proconsul.metrics.registry import Counter, Gauge, Metrics, Sample

__all__ = ["Counter", "Gauge", "Metrics", "Sample"]
