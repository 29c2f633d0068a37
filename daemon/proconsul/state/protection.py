"""The protection threshold: proconsul's guard against a health filter that empties a service.

Owns one rule, applied wherever a caller asks for the healthy instances of a service
(`/v1/health/service/:name?passing` and DNS service lookups): when fewer than the service's
`ProtectionThreshold` fraction of its instances are healthy, the filter is not applied and every
instance is returned. A mass failure of health checks is more often the checks' fault (a
partitioned agent, a broken dependency of the check itself) than every instance dying at once;
sending all traffic to the last healthy instance, or to none, turns that into an outage. The
idea is Eureka's self-preservation and Nacos's protect threshold; Consul has no equivalent, so
the setting is off (0) unless a service definition sets it.

The threshold travels with the service in the catalog (`ServiceInstance.extra`), so every
server and agent applies the same rule. Instances of one service may disagree (a rolling change
of the definition); the highest threshold among the candidates wins, so protection is never
lost while a change rolls out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from proconsul.state.records import ServiceInstance

# The key under which a service's threshold is kept in ServiceInstance.extra and rendered.
THRESHOLD_FIELD = "ProtectionThreshold"
# The response header saying the filter was not applied (HTTP).
APPLIED_HEADER = "X-Proconsul-Protection-Threshold-Applied"

# Bounds the memory of which services are protected (a flood of distinct names cannot grow it).
MAX_TRACKED_SERVICES = 10_000

T = TypeVar("T")


def threshold_of(svc: ServiceInstance) -> float:
    value = svc.extra.get(THRESHOLD_FIELD) if svc.extra else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < value <= 1.0:
        return float(value)
    return 0.0


def extra_for(threshold: float) -> dict[str, Any]:
    """The `extra` entries that carry `threshold` into the catalog (none when off)."""
    return {THRESHOLD_FIELD: threshold} if threshold > 0.0 else {}


def select_healthy(
    candidates: Sequence[T], service_of: Callable[[T], ServiceInstance], healthy: Callable[[T], bool]
) -> tuple[list[T], bool]:
    """(the instances to answer with, whether protection applied).

    `candidates` are the instances matching every other filter (tags, metadata); `healthy` says
    which pass the health filter. Protection applies when the service has a threshold and the
    healthy fraction is below it; then every candidate is returned, healthy or not.
    """
    kept = [c for c in candidates if healthy(c)]
    if not candidates or len(kept) == len(candidates):
        return kept, False
    threshold = max(threshold_of(service_of(c)) for c in candidates)
    if threshold > 0.0 and len(kept) / len(candidates) < threshold:
        return list(candidates), True
    return kept, False


class ProtectionLog:
    """Logs when a service enters and leaves protection, once per transition, not per query.

    Each answering component (the HTTP API, the DNS server) keeps one; a query that answers
    for a service reports whether protection applied, and only changes are logged.
    """

    def __init__(self, logger: logging.Logger, where: str) -> None:
        self.logger = logger
        self.where = where
        self.protected: set[str] = set()

    def note(self, service: str, applied: bool) -> None:
        if applied and service not in self.protected:
            if len(self.protected) < MAX_TRACKED_SERVICES:
                self.protected.add(service)
            self.logger.warning(
                "%s: service %r is below its protection threshold; answering with every instance, "
                "healthy or not", self.where, service,
            )
        elif not applied and service in self.protected:
            self.protected.discard(service)
            self.logger.info("%s: service %r is above its protection threshold again", self.where, service)
