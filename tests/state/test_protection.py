"""The protection-threshold rule on its own: when it applies, what it returns, what it logs."""

from __future__ import annotations

import logging

import pytest
from proconsul.state.protection import ProtectionLog, extra_for, select_healthy, threshold_of
from proconsul.state.records import ServiceInstance


def _instances(threshold: float, healthy: int, total: int) -> list[tuple[ServiceInstance, bool]]:
    return [
        (ServiceInstance(node=f"n{i}", id=f"web-{i}", service="web", extra=extra_for(threshold)), i < healthy)
        for i in range(total)
    ]


def _select(items: list[tuple[ServiceInstance, bool]]) -> tuple[list[str], bool]:
    kept, applied = select_healthy(items, lambda c: c[0], lambda c: c[1])
    return [svc.id for svc, _ in kept], applied


@pytest.mark.parametrize(
    ("threshold", "healthy", "total", "applied"),
    [
        (0.0, 1, 4, False),  # off: Consul's filter
        (0.5, 1, 4, True),  # 0.25 < 0.5
        (0.5, 2, 4, False),  # 0.5 is not below 0.5
        (1.0, 3, 4, True),  # any failure
        (1.0, 4, 4, False),  # nothing filtered, nothing to protect
        (0.3, 0, 3, True),  # all failing: answer all rather than none
        (0.5, 0, 0, False),  # no instances
    ],
)
def test_when_protection_applies(threshold: float, healthy: int, total: int, applied: bool) -> None:
    kept, got = _select(_instances(threshold, healthy, total))
    assert got is applied
    assert len(kept) == (total if applied else healthy)


def test_the_highest_threshold_among_the_instances_wins() -> None:
    items = _instances(0.0, 1, 4)
    items[3] = (ServiceInstance(node="n3", id="web-3", service="web", extra=extra_for(0.4)), False)
    assert _select(items) == (["web-0", "web-1", "web-2", "web-3"], True)


def test_malformed_stored_thresholds_are_off() -> None:
    for value in (True, "0.5", 2.0, -1, None, float("nan")):
        svc = ServiceInstance(node="n", id="s", service="s", extra={"ProtectionThreshold": value})
        assert threshold_of(svc) == 0.0, value
    assert extra_for(0.0) == {}


def test_the_log_says_each_transition_once(caplog: pytest.LogCaptureFixture) -> None:
    log = ProtectionLog(logging.getLogger("test.protection"), "http")
    caplog.set_level(logging.INFO, "test.protection")
    for applied in (True, True, True, False, False, True):
        log.note("web", applied)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "http: service 'web' is below its protection threshold; answering with every instance, healthy or not",
        "http: service 'web' is above its protection threshold again",
        "http: service 'web' is below its protection threshold; answering with every instance, healthy or not",
    ]
