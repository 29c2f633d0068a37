"""The client-side history of a chaos run: every operation's invocation and its outcome.

Workload threads call `History.invoke` before they send a request and then exactly one of
`ok` (it happened, with its result), `fail` (it definitely did not happen: the server refused
it before doing anything) or `info` (indeterminate: a timeout or a connection reset after the
request was sent, so it may have happened, or may still happen later). This is Jepsen's
convention; the checkers in `proconsul_sim.checkers` rely on it, so a workload must only say
`fail` when it knows the operation had no effect.

Times are seconds since the history was created, from a monotonic clock, so they can be
compared with the nemesis timeline the harness records against the same clock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

INVOKE = "invoke"
OK = "ok"
FAIL = "fail"
INFO = "info"
OUTCOMES = (OK, FAIL, INFO)


@dataclass
class Op:
    """One client operation; `type` is "invoke" until it completes as ok, fail or info.

    `value` is what the operation carries: the written value, a cas's (expected, new) pair, an
    added element; a completed read replaces it with what it read. A cas that the server
    answered with `false` is recorded either as `fail` (it did not happen, as Jepsen does) or as
    `ok(op, False)`, which keeps (expected, new) and sets `extra["result"] = False` so the
    linearizability checker can also use the fact that the register differed from `expected`.
    """

    process: int
    f: str
    key: str | None
    value: Any
    type: str = INVOKE
    start: float = 0.0
    end: float | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def latency(self) -> float | None:
        return None if self.end is None else self.end - self.start

    def to_json(self) -> dict:
        return {"process": self.process, "f": self.f, "key": self.key, "value": jsonable(self.value),
                "type": self.type, "start": self.start, "end": self.end, "error": self.error,
                "extra": jsonable(self.extra)}

    @classmethod
    def from_json(cls, d: dict) -> Op:
        value = d.get("value")
        if d["f"] == "cas" and isinstance(value, list):
            value = tuple(value)  # JSON has no tuples; the cas pair is one
        return cls(process=d["process"], f=d["f"], key=d.get("key"), value=value,
                   type=d.get("type", INVOKE), start=float(d.get("start", 0.0)), end=d.get("end"),
                   error=d.get("error"), extra=dict(d.get("extra") or {}))


def jsonable(value: Any) -> Any:
    """`value` in a form strict JSON accepts, deterministic: sets become sorted lists, an
    infinite or NaN float (an open-ended time) becomes None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset)):
        items = [jsonable(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=repr)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return repr(value)


class History:
    """An append-only, thread-safe list of operations in invocation order."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        if clock is None:
            origin = time.monotonic()

            def clock() -> float:
                return time.monotonic() - origin

        self.clock: Callable[[], float] = clock
        self.ops: list[Op] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(list(self.ops))

    def invoke(self, process: int, f: str, key: str | None, value: Any = None, **extra: Any) -> Op:
        """Record that `process` is about to send `f`; complete the returned Op exactly once."""
        with self._lock:
            op = Op(process, f, key, value, INVOKE, self.clock(), None, None, dict(extra))
            self.ops.append(op)
        return op

    def ok(self, op: Op, value: Any = None) -> None:
        """The operation happened; `value` is its result (a read's value), None keeps the invoke value."""
        if op.f == "cas" and isinstance(value, bool):
            op.extra["result"] = value  # the server's answer; (expected, new) stays in value
            value = None
        self._complete(op, OK, value, None)

    def fail(self, op: Op, error: str) -> None:
        """The operation definitely did not take effect."""
        self._complete(op, FAIL, None, error)

    def info(self, op: Op, error: str) -> None:
        """The outcome is unknown: it may have taken effect, now or at any later time."""
        self._complete(op, INFO, None, error)

    def _complete(self, op: Op, outcome: str, value: Any, error: str | None) -> None:
        with self._lock:
            if op.type != INVOKE:
                raise ValueError(f"operation completed twice ({op.type} then {outcome}): {op}")
            op.end = max(self.clock(), op.start)
            op.type = outcome
            op.error = error
            if value is not None:
                op.value = value

    def completed(self) -> list[Op]:
        return [op for op in self.ops if op.type != INVOKE]

    def to_json(self) -> list[dict]:
        with self._lock:
            return [op.to_json() for op in self.ops]

    @classmethod
    def from_json(cls, data: list[dict]) -> History:
        h = cls()
        h.ops = [Op.from_json(d) for d in data]
        return h
