"""The Prometheus view of the registry, rendered by prometheus-client.

Owns mapping series to metric families the way Consul's go-metrics Prometheus sink exposes them:
names with `.`/`-`/` ` turned into `_`; samples as summaries with the 0.5/0.9/0.99 quantiles
(NaN while the window is empty), `_sum` and `_count`; gauges as gauges. Counters keep Consul's
exact names (`consul_raft_apply`, no `_total`): prometheus-client always writes a counter family
as `<name>_total`, which would break every dashboard and alert written for Consul, so counters
are exposed untyped under their Consul names (PromQL's `rate()` treats them the same).
The text itself is produced by `prometheus_client.generate_latest`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric

from proconsul.metrics.registry import COUNTER, GAUGE, Metrics, Series

__all__ = ["CONTENT_TYPE", "QUANTILES", "render"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
QUANTILES = (0.5, 0.9, 0.99)


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    # Nearest rank: an observed value, as a summary reports.
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class _Collector:
    """A prometheus-client collector over one registry's live series."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for s in sorted(self._metrics.live_series(), key=lambda s: s.key):
            name = s.family.prom_name
            family = families.get(name)
            kind = s.family.kind
            if family is None:
                typ = "unknown" if kind == COUNTER else "gauge" if kind == GAUGE else "summary"
                family = families[name] = Metric(name, s.family.help, typ)
            _add(family, name, kind, s)
        return list(families.values())


def _add(family: Metric, name: str, kind: str, s: Series) -> None:
    labels = s.labels
    if kind == COUNTER:
        family.add_sample(name, labels, s.total)
    elif kind == GAUGE:
        family.add_sample(name, labels, s.value)
    else:
        ordered = sorted(s.prev_window + s.window)
        for q in QUANTILES:
            family.add_sample(name, {**labels, "quantile": str(q)}, _quantile(ordered, q))
        family.add_sample(name + "_sum", labels, s.total)
        family.add_sample(name + "_count", labels, float(s.count))


def render(metrics: Metrics) -> bytes:
    """The Prometheus text exposition of every live series."""
    return generate_latest(_Collector(metrics))  # type: ignore[arg-type]
