"""go-metrics' in-memory sink: fixed intervals of aggregates, and the JSON summary of one.

Owns the interval arithmetic (an interval starts at wall time truncated to `interval_s`, the last
`retain_s / interval_s` are kept) and the `/v1/agent/metrics` document: `Timestamp`, `Gauges`,
`Points`, `Counters`, `Samples`, each entry with go-metrics' field names, sorted by the series key
(name, then `;label=value` pairs), reporting the most recent *finished* interval once one exists.
Consul runs this sink with a 10 s interval and one minute of retention.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Any

__all__ = ["Aggregate", "Inmem", "Interval", "go_timestamp"]


class Aggregate:
    """Count, sum, sum of squares, min and max of the values seen in one interval."""

    __slots__ = ("count", "max", "min", "sumsq", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.sumsq = 0.0
        self.min = 0.0
        self.max = 0.0

    def ingest(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.sumsq += value * value
        if self.count == 1 or value < self.min:
            self.min = value
        if self.count == 1 or value > self.max:
            self.max = value

    def ingest_many(self, values: list[float]) -> None:
        """`ingest` each of `values` in order (one call for a batch's values)."""
        count, total, sumsq, lo, hi = self.count, self.total, self.sumsq, self.min, self.max
        for value in values:
            count += 1
            total += value
            sumsq += value * value
            if count == 1 or value < lo:
                lo = value
            if count == 1 or value > hi:
                hi = value
        self.count, self.total, self.sumsq, self.min, self.max = count, total, sumsq, lo, hi

    def merge(self, other: Aggregate) -> None:
        """Fold in another aggregate's values (as if each had been ingested here)."""
        if other.count <= 0:
            return
        if self.count == 0 or other.min < self.min:
            self.min = other.min
        if self.count == 0 or other.max > self.max:
            self.max = other.max
        self.count += other.count
        self.total += other.total
        self.sumsq += other.sumsq

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def stddev(self) -> float:
        # The sample standard deviation from running sums, as go-metrics computes it.
        div = self.count * (self.count - 1)
        if div == 0:
            return 0.0
        num = self.count * self.sumsq - self.total * self.total
        return math.sqrt(num / div) if num > 0 else 0.0


class Interval:
    """What was recorded during [start, start + interval_s)."""

    __slots__ = ("counters", "gauges", "samples", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        # Keys are the registry's series objects; the values are this interval's aggregates.
        self.gauges: dict[Hashable, float] = {}
        self.counters: dict[Hashable, Aggregate] = {}
        self.samples: dict[Hashable, Aggregate] = {}


def go_timestamp(epoch_s: float) -> str:
    """Go's `time.Time.String()` of a UTC instant rounded to the second ("2006-01-02 15:04:05 +0000 UTC")."""
    return datetime.fromtimestamp(round(epoch_s), UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


class Inmem:
    """The retained intervals. `current(now)` rotates; recording code calls it on every event."""

    def __init__(self, interval_s: float = 10.0, retain_s: float = 60.0) -> None:
        if interval_s <= 0 or retain_s < interval_s:
            raise ValueError("inmem: need 0 < interval <= retain")
        self.interval_s = interval_s
        self.max_intervals = int(retain_s // interval_s)
        self.intervals: list[Interval] = []
        # The newest interval and when it ends: recording code reads these two attributes and
        # calls `current` only when `now >= end` (one comparison on the hot path).
        self.end = -math.inf
        self.newest = Interval(-math.inf)

    def current(self, now: float) -> Interval:
        if now < self.end:
            return self.newest
        start = now - math.fmod(now, self.interval_s)
        interval = Interval(start)
        self.intervals.append(interval)
        if len(self.intervals) > self.max_intervals:
            del self.intervals[: len(self.intervals) - self.max_intervals]
        self.end = start + self.interval_s
        self.newest = interval
        return interval

    def reported(self, now: float) -> Interval:
        """The interval `/v1/agent/metrics` shows: the last finished one, else the current one."""
        self.current(now)
        return self.intervals[-2] if len(self.intervals) > 1 else self.intervals[-1]

    def summary(self, now: float, describe: Any) -> dict[str, Any]:
        """The go-metrics JSON document. `describe(series) -> (sort key, name, labels dict)`."""
        return self.summarize(self.reported(now), describe)

    def summarize(self, interval: Interval, describe: Any) -> dict[str, Any]:
        """The go-metrics JSON document of one interval (what `/v1/agent/metrics/stream` sends)."""
        rate_denominator = self.interval_s
        gauges = []
        for series, value in interval.gauges.items():
            key, name, labels = describe(series)
            gauges.append((key, {"Name": name, "Value": value, "Labels": labels}))

        def sampled(source: dict[Hashable, Aggregate]) -> list[dict[str, Any]]:
            out = []
            for series, agg in source.items():
                key, name, labels = describe(series)
                out.append((key, {
                    "Name": name,
                    "Count": agg.count,
                    "Rate": agg.total / rate_denominator,
                    "Sum": agg.total,
                    "Min": agg.min,
                    "Max": agg.max,
                    "Mean": agg.mean,
                    "Stddev": agg.stddev,
                    "Labels": labels,
                }))
            out.sort(key=lambda kv: kv[0])
            return [entry for _, entry in out]

        gauges.sort(key=lambda kv: kv[0])
        return {
            "Timestamp": go_timestamp(interval.start),
            "Gauges": [entry for _, entry in gauges],
            # EmitKey is not used by anything Consul reports through this view; always empty.
            "Points": [],
            "Counters": sampled(interval.counters),
            "Samples": sampled(interval.samples),
        }
