"""Flap detection for health checks: a check that keeps changing state is held critical.

Owns the flap score and the hold. Consul only has per-check thresholds
(`success_before_passing`, `failures_before_*`), which delay a change but let a check that
alternates every interval flip the catalog and DNS back and forth forever. Here, as Nagios
does, each check keeps its last `window` reported results and scores how often consecutive
results differed, newer changes weighing more (weights rise linearly from 0.8 for the oldest
transition to 1.2 for the newest). A check whose score reaches `high_threshold` is flapping: it
is reported critical, with `flapping` and the score in its output, until its score falls below
`low_threshold` (the gap between the two keeps the hold itself from flapping); then its real
result is reported again. Nothing is decided before half a window of results has been seen.

Off by default, as in Consul. The agent's `check_flap_detection { window, high_threshold,
low_threshold }` block turns it on for every check; a check's `FlapDetection` (true/false)
overrides that either way. Pure logic, no clock: the check runners feed it results.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from proconsul.structs import HEALTH_CRITICAL

logger = logging.getLogger(__name__)

OLDEST_WEIGHT, NEWEST_WEIGHT = 0.8, 1.2

Report = Callable[[str, str, str], None]  # (check ID, status, output), as the check runners report


@dataclass(frozen=True)
class FlapSettings:
    enabled: bool = False  # for checks that do not say; their FlapDetection wins
    window: int = 20  # results remembered
    high_threshold: float = 0.5  # weighted share of changes at which a check starts flapping
    low_threshold: float = 0.25  # ... and below which it stops

    def applies_to(self, check_setting: bool | None) -> bool:
        return self.enabled if check_setting is None else check_setting


def flap_score(history: list[str]) -> float:
    """Weighted share of transitions between consecutive results (0: steady, 1: every one changed)."""
    transitions = len(history) - 1
    if transitions < 1:
        return 0.0
    step = (NEWEST_WEIGHT - OLDEST_WEIGHT) / max(transitions - 1, 1)
    changed = total = 0.0
    for i in range(transitions):
        weight = OLDEST_WEIGHT + i * step if transitions > 1 else 1.0
        total += weight
        if history[i] != history[i + 1]:
            changed += weight
    return changed / total


class FlapDetector:
    """One check's recent results and whether it is flapping now."""

    def __init__(self, settings: FlapSettings) -> None:
        self.settings = settings
        self.history: deque[str] = deque(maxlen=max(settings.window, 2))
        self.flapping = False
        self.score = 0.0

    def observe(self, status: str) -> bool:
        """Record one result; True while the check is flapping."""
        self.history.append(status)
        if len(self.history) < max(self.settings.window // 2, 2):
            return self.flapping
        self.score = flap_score(list(self.history))
        if not self.flapping and self.score >= self.settings.high_threshold:
            self.flapping = True
        elif self.flapping and self.score < self.settings.low_threshold:
            self.flapping = False
        return self.flapping


class FlapGate:
    """Sits between a check's status handler and the report: passes results, or holds critical."""

    def __init__(self, check_id: str, settings: FlapSettings, report: Report) -> None:
        self.check_id = check_id
        self.detector = FlapDetector(settings)
        self.report = report

    def __call__(self, check_id: str, status: str, output: str) -> None:
        was = self.detector.flapping
        flapping = self.detector.observe(status)
        if flapping != was:
            logger.info("check %s %s flapping (score %.2f over %d results)", check_id,
                        "started" if flapping else "stopped", self.detector.score, len(self.detector.history))
        if flapping:
            share = round(self.detector.score * 100)
            output = f"flapping: state changed in {share}% (weighted) of the last {len(self.detector.history)} " \
                     f"results; held critical until stable. Last result {status}: {output}"
            status = HEALTH_CRITICAL
        self.report(check_id, status, output)
