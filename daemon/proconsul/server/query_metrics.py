"""The per-service counters of the service discovery reads a server answers.

Owns Consul's ``health.service.query``, ``health.service.query-tags``,
``health.service.not-found`` and the ``catalog.service.*`` three (counters): every
``Health.ServiceNodes`` / ``Catalog.ServiceNodes`` read this server answers itself (not one it
forwards to the leader, which counts it), labelled with the ``service`` and, for a read with
``?tag=``, the ``tag``; ``not-found`` when the answer is empty. Counted once per reader when its
answer is ready (a blocking read when it returns), as Consul counts each RPC after its blocking
query, so every path that answers these reads counts them: ``Server.query`` (the HTTP API, the
fast path, client agents' and followers' RPCs) and ``Server.park_query`` (parked fast-path reads).

Several tags: Consul gives each its own ``tag`` label, which go-metrics' JSON view collapses to
the last and Prometheus refuses; here the one ``tag`` label holds them sorted and joined by ``,``.

Each service's series are looked up once and kept (`_Service`), so counting a read is a dict
lookup and one or two additions.
"""

from __future__ import annotations

from typing import Any

from proconsul.metrics import Metrics

# The named reads counted, and the first part of their metric names.
_QUERIES = {"Health.ServiceNodes": "health", "Catalog.ServiceNodes": "catalog"}


class _Service:
    __slots__ = ("not_found", "query")

    def __init__(self, query: Any, not_found: Any) -> None:
        self.query = query
        self.not_found = not_found


class _Kind:
    """One read's families (health or catalog) and the series cached per service and tags."""

    __slots__ = ("_not_found", "_query", "_tags", "services", "tagged")

    def __init__(self, m: Metrics, what: str) -> None:
        self._query = m.counter(what, "service", "query", labels=("service",),
                                help=f"{what} queries for the given service")
        self._tags = m.counter(what, "service", "query-tags", labels=("service", "tag"),
                               help=f"{what} queries for the given service with the given tags")
        self._not_found = m.counter(what, "service", "not-found", labels=("service",),
                                    help=f"{what} queries where the given service could not be found")
        self.services: dict[str, _Service] = {}
        self.tagged: dict[tuple[str, tuple[str, ...]], Any] = {}

    def record(self, service: str, tags: Any, result: Any) -> None:
        series = self.services.get(service)
        if series is None:
            series = self.services[service] = _Service(
                self._query.with_labels(service), self._not_found.with_labels(service))
        series.query.incr()
        if tags:
            key = (service, tuple(tags))
            counter = self.tagged.get(key)
            if counter is None:
                counter = self.tagged[key] = self._tags.with_labels(service, ",".join(sorted(tags)))
            counter.incr()
        if not result:
            series.not_found.incr()


class ServiceQueryCounters:
    """The counters of both reads; declared when the server is built."""

    def __init__(self, metrics: Metrics) -> None:
        self._kinds = {name: _Kind(metrics, what) for name, what in _QUERIES.items()}

    def record(self, name: str, args: dict[str, Any], result: Any) -> None:
        """The named read `name` with `args` was answered with `result` (other reads: nothing)."""
        kind = self._kinds.get(name)
        if kind is not None:
            kind.record(str(args.get("service", "")), args.get("tags"), result)

    def counts(self, name: str) -> bool:
        """Whether `record` counts the read `name` (a parked read then keeps what it needs)."""
        return name in self._kinds
