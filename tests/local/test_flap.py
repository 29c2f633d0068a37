"""Flap detection (local/flap.py): the score, the hysteresis and the gate in front of a report."""

from __future__ import annotations

import pytest
from proconsul.local.flap import FlapDetector, FlapGate, FlapSettings, flap_score
from proconsul.structs import HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING

P, C = HEALTH_PASSING, HEALTH_CRITICAL
ON = FlapSettings(enabled=True, window=20, high_threshold=0.5, low_threshold=0.25)


def test_score_is_the_weighted_share_of_changes() -> None:
    assert flap_score([]) == 0.0 and flap_score([P]) == 0.0
    assert flap_score([P] * 10) == 0.0
    assert flap_score([P, C] * 10) == pytest.approx(1.0)
    # One change: worth more when recent than when old (weights 0.8 .. 1.2).
    old, recent = flap_score([C] + [P] * 10), flap_score([P] * 10 + [C])
    assert old < 0.1 < recent < 0.15
    assert old == pytest.approx(0.8 / 10) and recent == pytest.approx(1.2 / 10)


def test_alternating_results_start_flapping_and_steady_ones_end_it() -> None:
    detector = FlapDetector(ON)
    seen = [detector.observe(P if i % 2 else C) for i in range(20)]
    assert not any(seen[:9])  # nothing is decided before half a window
    assert seen[-1] and detector.score == pytest.approx(1.0)
    # Stable again: the hold lasts until the score drops below the low threshold, not the high one.
    released_after = next(i for i in range(1, 40) if not detector.observe(P))
    assert detector.score < ON.low_threshold
    assert 10 < released_after < 20


def test_hysteresis_keeps_a_borderline_check_held() -> None:
    detector = FlapDetector(FlapSettings(True, 10, 0.5, 0.2))
    for status in [P, C] * 5:
        detector.observe(status)
    assert detector.flapping
    # A pattern scoring between the thresholds changes nothing in either direction.
    for status in [P, P, C, C, P, P, C, C]:
        detector.observe(status)
        assert 0.2 <= detector.score or not detector.flapping
    assert detector.flapping


def test_an_occasional_failure_is_not_flapping() -> None:
    detector = FlapDetector(ON)
    results = ([P] * 9 + [C]) * 6
    assert not any(detector.observe(s) for s in results)


def test_the_gate_holds_critical_with_the_reason_and_then_lets_results_through() -> None:
    reports: list[tuple[str, str, str]] = []
    gate = FlapGate("web-check", ON, lambda cid, status, output: reports.append((cid, status, output)))
    for i in range(20):
        gate("web-check", P if i % 2 else HEALTH_WARNING, f"probe {i}")
    cid, status, output = reports[-1]
    assert (cid, status) == ("web-check", C)
    assert output.startswith("flapping: state changed in 100% (weighted) of the last 20 results")
    assert output.endswith("Last result passing: probe 19")
    assert [r[1] for r in reports[:9]] == [HEALTH_WARNING, P] * 4 + [HEALTH_WARNING]  # before a verdict
    for _ in range(20):
        gate("web-check", P, "steady")
    assert reports[-1] == ("web-check", P, "steady")


@pytest.mark.parametrize(
    ("agent_on", "check", "expected"),
    [(False, None, False), (True, None, True), (True, False, False), (False, True, True)],
)
def test_a_checks_own_setting_wins(agent_on: bool, check: bool | None, expected: bool) -> None:
    assert FlapSettings(enabled=agent_on).applies_to(check) is expected
