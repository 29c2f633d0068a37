"""What every checker returns: a named verdict with the evidence behind it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

UNKNOWN = "unknown"


@dataclass
class CheckResult:
    """`valid` is True, False, or "unknown" (the checker could not decide, e.g. out of budget).

    `details` holds counts and, for a failure, a minimal explanation naming the operations
    involved; it must be JSON-serialisable after `proconsul_sim.history.jsonable`.
    """

    name: str
    valid: bool | str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        from ..history import jsonable

        return {"name": self.name, "valid": self.valid, "details": jsonable(self.details)}


def combine(verdicts: list[bool | str]) -> bool | str:
    """Overall verdict: False if any is False, else "unknown" if any is unknown, else True."""
    if any(v is False for v in verdicts):
        return False
    if any(v is not True for v in verdicts):
        return UNKNOWN
    return True
