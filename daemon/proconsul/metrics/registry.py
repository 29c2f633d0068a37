"""The metrics registry: declared families, their labelled series, and recording into both views.

Owns naming as go-metrics does it for Consul (the `metrics_prefix` first, the host name after it
for gauges unless `disable_hostname`, parts joined with dots), declaration (every family a part
will use is declared when that part is built, so its unlabelled series exists from start-up, as
Consul's Prometheus definitions do; hashicorp/consul#5140), and the cumulative per-series state the
Prometheus view reads (counter totals, sample counts/sums and a recent window for quantiles, last
gauge values, last update for `prometheus_retention_time` expiry), and the outbox the statsd and
DogStatsD sinks drain (`proconsul.metrics.statsd`): every recorded value, as go-metrics hands
each one to its sinks, in a bounded list so a stalled sender costs no more than the bound.

Filtering as go-metrics does it for `telemetry { prefix_filter, filter_default }`: a family whose
full name's longest matching rule is a "-" rule (or that no rule matches, with `filter_default =
false`) records nothing and is not shown, decided at declaration and again when the rules are
replaced on reload (`set_filter`), so a recording pays one flag test.

Recording happens on the event loop thread only (no locks): one clock read, one dict lookup in
the current interval, a few float operations. A labelled series is looked up once by the caller
(`with_labels`) and kept, so the hot path allocates nothing after warm-up.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from proconsul.metrics.inmem import Aggregate, Inmem, Interval

__all__ = [
    "COUNTER", "GAUGE", "OUTBOX_CAP", "SAMPLE", "Counter", "CounterBatch", "Gauge", "Metrics", "Sample", "SampleBatch",
    "Series", "parse_prefix_filter",
]  # fmt: skip

COUNTER = "counter"
GAUGE = "gauge"
SAMPLE = "sample"

# A summary's quantiles are computed over roughly the last 10-20 s (go-metrics' Prometheus
# summaries use a 10 s max age), from at most this many kept values per window: a bound on
# memory per series whatever the request rate.
WINDOW_S = 10.0
WINDOW_CAP = 2048
# Values recorded between two flushes of the statsd sinks (every 100 ms) beyond this many are
# dropped (go-metrics' statsd sink drops past a queue of 4096 the same way).
OUTBOX_CAP = 16384


class Series:
    """One name + label values: what the in-memory intervals key on, and its cumulative state."""

    __slots__ = (
        "count", "declared", "family", "key", "label_values", "labels", "name", "prev_window", "total",
        "updated", "value", "window", "window_start",
    )  # fmt: skip

    def __init__(self, family: Family, label_values: tuple[str, ...], declared: bool) -> None:
        self.family = family
        self.name = family.name
        self.label_values = label_values
        self.labels = dict(zip(family.label_names, label_values, strict=True))
        # go-metrics' series key: the name then ";label=value" for each label, spaces as "_".
        self.key = (self.name + "".join(f";{k}={v}" for k, v in self.labels.items())).replace(" ", "_")
        self.declared = declared  # a definition: never expires from the Prometheus view
        self.total = 0.0  # counter: running total; sample: running sum
        self.count = 0  # sample: observations
        self.value = 0.0  # gauge: last value
        self.updated = 0.0
        self.window: list[float] = []
        self.prev_window: list[float] = []
        self.window_start = 0.0


class Family:
    """A declared metric: kind, dotted name (prefix included), help, label names."""

    __slots__ = ("bare_name", "blocked", "help", "kind", "label_names", "name", "prom_name")

    def __init__(self, kind: str, name: str, help: str, label_names: tuple[str, ...], bare_name: str = "") -> None:
        self.kind = kind
        self.name = name
        # The name without the host name go-metrics puts in gauge names: DogStatsD splices it out.
        self.bare_name = bare_name or name
        self.help = help
        self.label_names = label_names
        self.prom_name = prometheus_name(name)
        self.blocked = False  # by telemetry.prefix_filter / filter_default: records nothing


def parse_prefix_filter(rules: tuple[str, ...] | list[str]) -> tuple[list[str], list[str], list[str]]:
    """`telemetry.prefix_filter` as Consul reads it: (allowed prefixes, blocked prefixes,
    warnings); an empty rule or one not starting with "+" or "-" is skipped with a warning."""
    allowed: list[str] = []
    blocked: list[str] = []
    warnings: list[str] = []
    for rule in rules:
        if not rule:
            warnings.append("Cannot have empty filter rule in prefix_filter")
        elif rule[0] == "+":
            allowed.append(rule[1:])
        elif rule[0] == "-":
            blocked.append(rule[1:])
        else:
            warnings.append(f"Filter rule must begin with either '+' or '-': {json.dumps(rule)}")
    return allowed, blocked, warnings


def prometheus_name(name: str) -> str:
    # The characters go-metrics' Prometheus sink replaces with "_".
    for ch in " .=-/":
        name = name.replace(ch, "_")
    return name


class _Handle:
    __slots__ = ("_children", "_family", "_metrics", "_series")

    def __init__(self, metrics: Metrics, family: Family, series: Series) -> None:
        self._metrics = metrics
        self._family = family
        self._series = series
        self._children: dict[tuple[str, ...], Any] = {}

    @property
    def name(self) -> str:
        return self._family.name

    def with_labels(self, *values: str) -> Any:
        """The handle of this family's series with these label values (cached: look it up once)."""
        child = self._children.get(values)
        if child is None:
            series = self._metrics.series_for(self._family, values)
            child = self._children[values] = type(self)(self._metrics, self._family, series)
        return child


class Counter(_Handle):
    __slots__ = ()

    def incr(self, value: float = 1.0) -> None:
        if self._family.blocked:
            return
        m = self._metrics
        now = m.clock()
        s = self._series
        self._aggregate(now).ingest(value)
        s.total += value
        s.updated = now
        out = m.outbox
        if out is not None and len(out) < OUTBOX_CAP:
            out.append((s, value))

    def _aggregate(self, now: float) -> Aggregate:
        """This series' aggregate in the in-memory interval holding `now`."""
        inmem = self._metrics.inmem
        counters = (inmem.newest if now < inmem.end else inmem.current(now)).counters
        agg = counters.get(self._series)
        if agg is None:
            agg = counters[self._series] = Aggregate()
        return agg

    def incr_each(self, times: int, value: float = 1.0) -> None:
        """`incr(value)` `times` times, at one clock reading: every view as if each had been
        recorded (the interval aggregate counts `times` values, the statsd outbox gets `times`
        lines), for a caller that counts a batch's events once per batch."""
        if self._family.blocked or times <= 0:
            return
        m = self._metrics
        now = m.clock()
        s = self._series
        agg = self._aggregate(now)
        if agg.count == 0 or value < agg.min:
            agg.min = value
        if agg.count == 0 or value > agg.max:
            agg.max = value
        agg.count += times
        total, sumsq, square = agg.total, agg.sumsq, value * value
        for _ in range(times):  # the sums `incr` would have built, term by term
            total += value
            sumsq += square
        agg.total, agg.sumsq = total, sumsq
        total = s.total
        for _ in range(times):
            total += value
        s.total = total
        s.updated = now
        out = m.outbox
        if out is not None and len(out) < OUTBOX_CAP:
            entry = (s, value)
            out.extend([entry] * min(times, OUTBOX_CAP - len(out)))


class Gauge(_Handle):
    __slots__ = ()

    def set(self, value: float) -> None:
        if self._family.blocked:
            return
        m = self._metrics
        now = m.clock()
        s = self._series
        inmem = m.inmem
        (inmem.newest if now < inmem.end else inmem.current(now)).gauges[s] = value
        s.value = value
        s.updated = now
        out = m.outbox
        if out is not None and len(out) < OUTBOX_CAP:
            out.append((s, value))


class Sample(_Handle):
    """A timer or any distribution; durations are recorded in milliseconds, as go-metrics does."""

    __slots__ = ()

    def observe(self, value: float) -> None:
        if self._family.blocked:
            return
        m = self._metrics
        now = m.clock()
        s = self._series
        inmem = m.inmem
        samples = (inmem.newest if now < inmem.end else inmem.current(now)).samples
        agg = samples.get(s)
        if agg is None:
            agg = samples[s] = Aggregate()
        agg.ingest(value)
        s.total += value
        s.count += 1
        s.updated = now
        out = m.outbox
        if out is not None and len(out) < OUTBOX_CAP:
            out.append((s, value))
        if m.keep_quantiles:
            if now - s.window_start >= WINDOW_S:
                s.prev_window = s.window if now - s.window_start < 2 * WINDOW_S else []
                s.window = []
                s.window_start = now
            window = s.window
            if len(window) < WINDOW_CAP:
                window.append(value)
            else:
                window[s.count % WINDOW_CAP] = value

    def since(self, start: float) -> None:
        """Observe the milliseconds elapsed since `start`, a `time.perf_counter()` reading."""
        self.observe((time.perf_counter() - start) * 1000.0)

    def observe_many(self, values: list[float]) -> None:
        """`observe` each of `values`, in order, at one clock reading: what a caller that
        measures every entry of a batch records once per batch (the Raft driver's per-entry
        timers) instead of paying a clock read, an interval lookup and a call per value."""
        if self._family.blocked or not values:
            return
        m = self._metrics
        now = m.clock()
        s = self._series
        inmem = m.inmem
        samples = (inmem.newest if now < inmem.end else inmem.current(now)).samples
        agg = samples.get(s)
        if agg is None:
            agg = samples[s] = Aggregate()
        agg.ingest_many(values)
        total = s.total
        for value in values:
            total += value
        s.total = total
        s.updated = now
        out = m.outbox
        if out is not None and len(out) < OUTBOX_CAP:
            out.extend([(s, value) for value in values[: OUTBOX_CAP - len(out)]])
        if not m.keep_quantiles:
            s.count += len(values)
            return
        if now - s.window_start >= WINDOW_S:
            s.prev_window = s.window if now - s.window_start < 2 * WINDOW_S else []
            s.window = []
            s.window_start = now
        window = s.window
        count = s.count
        for value in values:
            count += 1
            if len(window) < WINDOW_CAP:
                window.append(value)
            else:
                window[count % WINDOW_CAP] = value
        s.count = count


class Metrics:
    """The registry. One per agent, built from its `telemetry` configuration."""

    def __init__(
        self,
        *,
        prefix: str = "consul",
        hostname: str = "",
        interval_s: float = 10.0,
        retain_s: float = 60.0,
        prometheus_retention_s: float = 0.0,
        prefix_filter: tuple[str, ...] = (),
        filter_default: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prefix = prefix
        self.hostname = hostname  # "" = disable_hostname
        self.clock = clock
        self.inmem = Inmem(interval_s, retain_s)
        self.prometheus_retention_s = prometheus_retention_s
        # Quantile windows cost an append per observation: kept only when Prometheus is served.
        self.keep_quantiles = prometheus_retention_s > 0
        self.families: dict[str, Family] = {}
        self.series: dict[tuple[str, tuple[str, ...]], Series] = {}
        # (series, value) of every recording since the sinks' last flush; None without a sink.
        self.outbox: list[tuple[Series, float]] | None = None
        self.filter_default = filter_default
        self._rules: list[tuple[str, bool]] = []  # (prefix, allowed?), longest prefix first
        self.set_filter(prefix_filter)

    # ------------------------------------------------------------------------- filtering

    def set_filter(self, prefix_filter: tuple[str, ...] | list[str]) -> None:
        """Replace the `prefix_filter` rules (start-up and reload) and re-decide every family."""
        allowed, blocked, _ = parse_prefix_filter(prefix_filter)
        rules = {prefix: True for prefix in allowed}
        rules.update((prefix, False) for prefix in blocked)  # a prefix in both is blocked
        self._rules = sorted(rules.items(), key=lambda rule: len(rule[0]), reverse=True)
        for family in self.families.values():
            family.blocked = not self.allows(family.name)

    def allows(self, name: str) -> bool:
        """Whether the series named `name` (full dotted name) is recorded: the longest rule that
        prefixes it decides, else `filter_default`."""
        for prefix, allowed in self._rules:
            if name.startswith(prefix):
                return allowed
        return self.filter_default

    # ------------------------------------------------------------------------- declaring

    def _full_name(self, parts: tuple[str, ...], kind: str) -> str:
        head: list[str] = [self.prefix] if self.prefix else []
        if kind == GAUGE and self.hostname:
            head.append(self.hostname)
        return ".".join([*head, *parts]).replace(" ", "_")

    def _bare_name(self, parts: tuple[str, ...]) -> str:
        return ".".join([self.prefix, *parts] if self.prefix else parts).replace(" ", "_")

    def _declare(self, kind: str, parts: tuple[str, ...], help: str, labels: tuple[str, ...]) -> tuple[Family, Series]:
        name = self._full_name(parts, kind)
        family = self.families.get(name)
        if family is None:
            bare = self._bare_name(parts)
            family = self.families[name] = Family(kind, name, help or prometheus_name(name), labels, bare)
            family.blocked = not self.allows(name)
            series = self.series[(name, ())] = Series(Family(kind, name, family.help, (), bare), (), declared=True)
        elif family.kind != kind or family.label_names != labels:
            raise ValueError(f"metrics: {name} declared twice, differently")
        else:
            series = self.series[(name, ())]
        return family, series

    def counter(self, *parts: str, help: str = "", labels: tuple[str, ...] = ()) -> Counter:
        family, series = self._declare(COUNTER, parts, help, labels)
        return Counter(self, family, series)

    def gauge(self, *parts: str, help: str = "", labels: tuple[str, ...] = ()) -> Gauge:
        family, series = self._declare(GAUGE, parts, help, labels)
        return Gauge(self, family, series)

    def sample(self, *parts: str, help: str = "", labels: tuple[str, ...] = ()) -> Sample:
        family, series = self._declare(SAMPLE, parts, help, labels)
        return Sample(self, family, series)

    def series_for(self, family: Family, values: tuple[str, ...]) -> Series:
        """The series of `family` with these label values, made on first use (`with_labels`)."""
        if len(values) != len(family.label_names):
            raise ValueError(f"metrics: {family.name} takes labels {family.label_names}, got {values}")
        series = self.series.get((family.name, values))
        if series is None:
            series = self.series[(family.name, values)] = Series(family, values, declared=False)
        return series

    # --------------------------------------------------------------------------- the outbox

    def open_outbox(self) -> None:
        """Queue every recording from now on, for the sinks to drain (`take_outbox`)."""
        if self.outbox is None:
            self.outbox = []

    def take_outbox(self) -> list[tuple[Series, float]]:
        """What was recorded since the last take; queueing goes on."""
        out = self.outbox or []
        if self.outbox is not None:
            self.outbox = []
        return out

    def close_outbox(self) -> list[tuple[Series, float]]:
        """What was recorded since the last take; nothing is queued from now on."""
        out, self.outbox = self.outbox or [], None
        return out

    # ------------------------------------------------------------- another process's values

    def merge(self, kind: str, parts: tuple[str, ...], help: str, label_names: tuple[str, ...],
              label_values: tuple[str, ...], agg: Aggregate, values: list[float]) -> None:
        """Add what another process recorded for one counter or sample series (`agg`: its
        count, sum, sum of squares, min and max since its last report; `values`: some or all of
        the individual values, for quantile windows and the statsd sinks) into this registry's
        current interval and running totals, as if recorded here now. The family is declared if
        this process has not; one declared here differently raises ValueError."""
        if kind == GAUGE or agg.count <= 0:
            raise ValueError("metrics: only counters and samples with values merge")
        family, declared = self._declare(kind, parts, help, label_names)
        if family.blocked:
            return
        s = self.series_for(family, label_values) if label_values else declared
        now = self.clock()
        interval = self.inmem.newest if now < self.inmem.end else self.inmem.current(now)
        table = interval.counters if kind == COUNTER else interval.samples
        mine = table.get(s)
        if mine is None:
            mine = table[s] = Aggregate()
        mine.merge(agg)
        s.total += agg.total
        if kind == SAMPLE:
            s.count += agg.count
        s.updated = now
        out = self.outbox
        if out is not None:
            # A counter's report is one increment by its sum (what a statsd server adds up anyway).
            for value in (values if kind == SAMPLE else (agg.total,)):
                if len(out) >= OUTBOX_CAP:
                    break
                out.append((s, value))
        if kind == SAMPLE and self.keep_quantiles:
            if now - s.window_start >= WINDOW_S:
                s.prev_window = s.window if now - s.window_start < 2 * WINDOW_S else []
                s.window = []
                s.window_start = now
            room = WINDOW_CAP - len(s.window)
            s.window.extend(values[:room])

    # --------------------------------------------------------------------------- reading

    def summary(self) -> dict[str, Any]:
        """`/v1/agent/metrics` as JSON (go-metrics' `MetricsSummary`)."""
        return self.inmem.summary(self.clock(), _describe)

    def interval_summary(self, interval: Interval) -> dict[str, Any]:
        """The same document for one given interval (`/v1/agent/metrics/stream`)."""
        return self.inmem.summarize(interval, _describe)

    def live_series(self) -> list[Series]:
        """Series the Prometheus view shows now: definitions, and others updated within the
        retention time (go-metrics drops those; here they are only hidden, since callers keep
        their handles, and they show again with their running totals once updated)."""
        now = self.clock()
        retention = self.prometheus_retention_s
        families = self.families
        return [
            s for s in self.series.values()
            if not families[s.name].blocked and (s.declared or retention <= 0 or now - s.updated <= retention)
        ]


def _describe(series: Series) -> tuple[str, str, dict[str, str]]:
    return series.key, series.name, series.labels


class _Deferred:
    """The batches of one owner with recordings waiting for the end of this loop iteration:
    one `call_soon` records them all (in the order they were first touched)."""

    __slots__ = ("_dirty",)

    def __init__(self) -> None:
        self._dirty: list[SampleBatch | CounterBatch] = []

    def mark(self, batch: SampleBatch | CounterBatch) -> bool:
        """Schedule `batch`'s flush; False when no loop runs (the caller records at once)."""
        if not self._dirty:
            try:
                loop = asyncio.get_running_loop()  # once per loop iteration, not per recording
            except RuntimeError:
                return False
            loop.call_soon(self.flush)
        self._dirty.append(batch)
        return True

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for batch in dirty:
            batch.flush()


class SampleBatch:
    """A `Sample` whose per-event values (one per write on a hot path) are kept in a list and
    recorded with one `observe_many` in a callback scheduled when the first one of a loop
    iteration arrives: what is recorded, and every view of it, is what `observe` per value
    would have recorded, a moment later (before anything that callback's iteration reads)."""

    __slots__ = ("_deferred", "_sample", "_values")

    def __init__(self, sample: Sample, deferred: _Deferred | None = None) -> None:
        self._sample = sample
        self._deferred = deferred if deferred is not None else _Deferred()
        self._values: list[float] = []

    @property
    def sample(self) -> Sample:
        return self._sample

    def observe(self, value: float) -> None:
        values = self._values
        if not values and not self._deferred.mark(self):
            self._sample.observe(value)
            return
        values.append(value)

    def since(self, start: float) -> None:
        """Observe the milliseconds elapsed since `start`, a `time.perf_counter()` reading."""
        self.observe((time.perf_counter() - start) * 1000.0)

    def flush(self) -> None:
        values = self._values
        if values:
            self._values = []
            self._sample.observe_many(values)


class CounterBatch:
    """A `Counter` whose `incr()`s within a loop iteration are recorded at its end by one
    `Counter.incr_each` (as `SampleBatch` does for a sample); each view is what one `incr` per
    event would have recorded."""

    __slots__ = ("_counter", "_deferred", "_times")

    def __init__(self, counter: Counter, deferred: _Deferred | None = None) -> None:
        self._counter = counter
        self._deferred = deferred if deferred is not None else _Deferred()
        self._times = 0

    def incr(self) -> None:
        if self._times == 0 and not self._deferred.mark(self):
            self._counter.incr()
            return
        self._times += 1

    def flush(self) -> None:
        times = self._times
        if times:
            self._times = 0
            self._counter.incr_each(times)


def deferred_group() -> _Deferred:
    """A group for `SampleBatch`/`CounterBatch`es that flush in one shared callback."""
    return _Deferred()
