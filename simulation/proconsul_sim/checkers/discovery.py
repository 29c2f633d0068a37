"""Service discovery convergence: a faulted node's services leave `?passing`, a healed one's come back.

The harness records observations as dicts, in any order:

- `{"event": "fault", "time": t, "node": name}`: the node was partitioned away or killed;
- `{"event": "heal", "time": t, "node": name}`: it is reachable (and running) again; without a
  `node` (or with `"nodes": [...]`) the heal applies to every node faulted at that time;
- `{"event": "sample", "time": t, "passing": [names]}`: the nodes whose service
  `GET /v1/health/service/<name>?passing` returned at time t (read from a healthy node).

For each change of a node's state at time t, until its next change (or the end): after a fault,
the node must be absent from every sample later than t + bound_s; after a heal, present in
every sample later than t + bound_s. The measured delay of the change is the time from t to the
first sample from which on every sample agrees (an upper bound at the sampling resolution).
A change that the samples could not judge (the next change, or the end of the run, came first
and the samples never agreed) is counted as inconclusive, not as a failure.

The bound is the operator's: Consul marks a partitioned client's `serfHealth` critical once
gossip declares it failed (suspicion, then the leader's reconcile), so the harness derives it
from the gossip timing it configured.
"""

from __future__ import annotations

import math
from typing import Any

from .base import UNKNOWN, CheckResult

FAULT = "fault"
HEAL = "heal"
SAMPLE = "sample"


def _transitions(observations: list[dict]) -> tuple[list[tuple[float, str, str]], list[tuple[float, set[str]]]]:
    """(time, node, fault|heal) state changes in time order, and the (time, passing) samples."""
    samples: list[tuple[float, set[str]]] = []
    events: list[tuple[float, int, dict]] = []
    for i, o in enumerate(observations):
        kind = o.get("event")
        if "time" not in o:
            raise ValueError(f"observation {i} has no time: {o}")
        if kind == SAMPLE:
            samples.append((float(o["time"]), set(o.get("passing") or ())))
        elif kind in (FAULT, HEAL):
            events.append((float(o["time"]), i, o))
        else:
            raise ValueError(f"observation {i} has an unknown event {kind!r}: {o}")
    samples.sort(key=lambda s: s[0])
    events.sort(key=lambda e: (e[0], e[1]))
    faulted: set[str] = set()
    changes: list[tuple[float, str, str]] = []
    for t, _, o in events:
        nodes = o.get("nodes") or ([o["node"]] if o.get("node") is not None else None)
        if o["event"] == FAULT:
            if not nodes:
                raise ValueError(f"a fault observation must name its node: {o}")
            for n in nodes:
                if n not in faulted:  # a second fault of a faulted node changes nothing expected
                    faulted.add(n)
                    changes.append((t, n, FAULT))
        else:
            for n in sorted(faulted if nodes is None else set(nodes) & faulted):
                faulted.discard(n)
                changes.append((t, n, HEAL))
    return changes, samples


def check_discovery(observations: list[dict], bound_s: float) -> CheckResult:
    changes, samples = _transitions(observations)
    next_change: dict[int, float] = {}
    last_seen: dict[str, int] = {}
    for k, (_, node, _) in enumerate(changes):
        if node in last_seen:
            next_change[last_seen[node]] = changes[k][0]
        last_seen[node] = k
    results: list[dict[str, Any]] = []
    for k, (t, node, kind) in enumerate(changes):
        until = next_change.get(k, math.inf)
        want_present = kind == HEAL
        window = [(st, node in passing) for st, passing in samples if t < st < until]
        wrong_late = [st for st, present in window if present != want_present and st > t + bound_s]
        last_wrong = max((i for i, (_, present) in enumerate(window) if present != want_present), default=-1)
        converged_at = window[last_wrong + 1][0] if last_wrong + 1 < len(window) else None
        r: dict[str, Any] = {"node": node, "event": kind, "time": t,
                             "next_change": None if until == math.inf else until,
                             "samples": len(window),
                             "delay_s": None if converged_at is None else converged_at - t}
        if wrong_late:
            r["verdict"] = "violation"
            r["wrong_samples_after_bound"] = wrong_late[:10]
            r["wrong_samples_after_bound_count"] = len(wrong_late)
        elif converged_at is None:
            r["verdict"] = "inconclusive"
        else:
            r["verdict"] = "ok"
        results.append(r)

    def max_delay(kind: str) -> float | None:
        return max((r["delay_s"] for r in results if r["event"] == kind and r["delay_s"] is not None),
                   default=None)

    violations = sum(r["verdict"] == "violation" for r in results)
    judged = sum(r["verdict"] == "ok" for r in results)
    valid: bool | str = False if violations else (True if judged else UNKNOWN)
    details: dict[str, Any] = {
        "bound_s": bound_s, "changes": len(results), "samples": len(samples),
        "violations": violations, "inconclusive": sum(r["verdict"] == "inconclusive" for r in results),
        "max_leave_delay_s": max_delay(FAULT), "max_return_delay_s": max_delay(HEAL),
        "events": results,
    }
    if not results:
        details["reason"] = "no fault or heal observed: nothing to judge"
    return CheckResult("discovery", valid, details)
