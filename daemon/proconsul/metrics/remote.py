"""Reports of one process's metrics to another's registry: how an HTTP worker's telemetry reaches
the agent's `/v1/agent/metrics`, Prometheus view and statsd sinks.

Owns the report's content and encoding. The reporting process keeps its registry's outbox open
(every recorded value, `Metrics.open_outbox`); `take_report` swaps it out and folds it per series
into one row: kind, the name without the reporter's prefix, help, label names and values, the
aggregate (count, sum, sum of squares, min, max) and up to `VALUES_PER_SERIES` of the values
themselves (quantile windows and statsd timers want values, not sums). `merge_report` adds each
row to the receiving registry as if recorded there at that moment (`Metrics.merge`), under the
receiver's own prefix and host name. Gauges are not reported: a worker's gauge describes the
worker process, and summing or overwriting the agent's would be wrong.

JSON rather than pickle: the receiver is the agent, and nothing a worker sends should be able to
run code in it.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from proconsul.metrics.inmem import Aggregate
from proconsul.metrics.registry import COUNTER, SAMPLE, Metrics, Series

__all__ = ["VALUES_PER_SERIES", "merge_report", "take_report"]

logger = logging.getLogger(__name__)

# Individual values kept per series per report. A worker reports every 100 ms, so this keeps up
# to 2,560 values a second per series for quantiles, more than the receiver's window holds.
VALUES_PER_SERIES = 256


def _parts(metrics: Metrics, series: Series) -> tuple[str, ...]:
    name = series.family.bare_name
    if metrics.prefix:
        name = name[len(metrics.prefix) + 1:]
    return tuple(name.split("."))


def take_report(metrics: Metrics) -> bytes | None:
    """What `metrics` recorded since the last report, encoded; None when nothing was."""
    recorded = metrics.take_outbox()
    if not recorded:
        return None
    folded: dict[Series, tuple[Aggregate, list[float]]] = {}
    for series, value in recorded:
        kind = series.family.kind
        if kind != COUNTER and kind != SAMPLE:
            continue
        entry = folded.get(series)
        if entry is None:
            entry = folded[series] = (Aggregate(), [])
        entry[0].ingest(value)
        if len(entry[1]) < VALUES_PER_SERIES:
            entry[1].append(value)
    if not folded:
        return None
    rows = []
    for series, (agg, values) in folded.items():
        family = series.family
        rows.append([
            family.kind, ".".join(_parts(metrics, series)), family.help, list(family.label_names),
            list(series.label_values), agg.count, agg.total, agg.sumsq, agg.min, agg.max, values,
        ])
    return orjson.dumps(rows)


def merge_report(metrics: Metrics, payload: bytes) -> int:
    """Add a report's rows to `metrics`; returns how many merged. A row this registry cannot
    take (malformed, or a family declared here with another kind or labels) is skipped."""
    try:
        rows: Any = orjson.loads(payload)
    except orjson.JSONDecodeError:
        logger.warning("metrics: an undecodable report from a worker was dropped")
        return 0
    merged = 0
    for row in rows if isinstance(rows, list) else ():
        try:
            kind, name, help_text, label_names, label_values, count, total, sumsq, lo, hi, values = row
            if kind not in (COUNTER, SAMPLE) or not isinstance(name, str) or not name:
                raise ValueError(f"bad row kind or name: {kind!r} {name!r}")
            agg = Aggregate()
            agg.count, agg.total, agg.sumsq, agg.min, agg.max = int(count), float(total), float(sumsq), float(lo), float(hi)
            metrics.merge(kind, tuple(name.split(".")), str(help_text), tuple(map(str, label_names)),
                          tuple(map(str, label_values)), agg, [float(v) for v in values])
        except (ValueError, TypeError) as exc:
            logger.debug("metrics: a worker's report row was skipped: %s", exc)
            continue
        merged += 1
    return merged
