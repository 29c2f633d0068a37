"""A run's result file: what happened (op counts, latencies, nemesis timeline) and each checker's verdict.

`write_result` writes `result.json` (the summary a person or CI reads) and `history.json` (every
operation, so the checkers can be re-run offline with `History.from_json`) into the run's
directory. The overall verdict is False if any checker found a violation, "unknown" if none
did but some could not decide, True otherwise.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from .checkers.base import CheckResult, combine
from .history import INVOKE, OUTCOMES, History, jsonable

RESULT_FILE = "result.json"
HISTORY_FILE = "history.json"


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def op_counts(history: History) -> dict[str, Any]:
    """Operations by outcome, and by function then outcome (`invoke`: never completed)."""
    by_outcome = Counter(op.type for op in history.ops)
    by_f: dict[str, Counter[str]] = {}
    for op in history.ops:
        by_f.setdefault(op.f, Counter())[op.type] += 1
    outcome_names = [*OUTCOMES, INVOKE]
    return {
        "total": len(history.ops),
        "by_outcome": {k: by_outcome.get(k, 0) for k in outcome_names},
        "by_f": {f: {k: c.get(k, 0) for k in outcome_names} for f, c in sorted(by_f.items())},
    }


def latency_summary(history: History) -> dict[str, dict[str, float]]:
    """Latency of `ok` operations per function, in milliseconds."""
    lat: dict[str, list[float]] = {}
    for op in history.ops:
        if op.type == "ok" and op.latency is not None:
            lat.setdefault(op.f, []).append(op.latency * 1000)
    out = {}
    for f, values in sorted(lat.items()):
        values.sort()
        out[f] = {"count": len(values), "p50_ms": _percentile(values, 50), "p95_ms": _percentile(values, 95),
                  "p99_ms": _percentile(values, 99), "max_ms": values[-1]}
    return out


def nemesis_timeline(nemesis: list[dict]) -> list[dict[str, Any]]:
    """Each nemesis window as {"name", "start", "end", "params"}, in start order."""
    out = []
    for i, n in enumerate(nemesis):
        if "name" not in n or "start" not in n:
            raise ValueError(f"nemesis entry {i} needs a name and a start: {n}")
        out.append({"name": n["name"], "start": n["start"], "end": n.get("end"),
                    "params": jsonable(n.get("params") or {})})
    return sorted(out, key=lambda n: (n["start"], n["name"]))


def write_result(out_dir: str | Path, *, scenario: str, seed: int, history: History,
                 checks: list[CheckResult], nemesis: list[dict], meta: dict) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    starts = [op.start for op in history.ops]
    ends = [op.end for op in history.ops if op.end is not None]
    result: dict[str, Any] = {
        "scenario": scenario,
        "seed": seed,
        "valid": combine([c.valid for c in checks]) if checks else "unknown",
        "verdicts": {c.name: c.valid for c in checks},
        "ops": op_counts(history),
        "latency": latency_summary(history),
        "span_s": {"first_invoke": min(starts, default=None), "last_completion": max(ends, default=None)},
        "checks": [c.to_json() for c in checks],
        "nemesis": nemesis_timeline(nemesis),
        "meta": jsonable(meta),
        "history_file": HISTORY_FILE,
    }
    result = jsonable(result)
    (out / HISTORY_FILE).write_text(json.dumps(history.to_json(), allow_nan=False) + "\n")
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result  # type: ignore[no-any-return]


def summary_lines(result: dict) -> list[str]:
    """A few human lines for the end of a run: verdicts and op counts."""
    o = result["ops"]["by_outcome"]
    lines = [f"{result['scenario']} seed={result['seed']}: valid={result['valid']}",
             f"  ops: {result['ops']['total']} (ok {o['ok']}, fail {o['fail']}, info {o['info']})"]
    lines += [f"  {name}: {valid}" for name, valid in result["verdicts"].items()]
    for n in result["nemesis"]:
        end = "" if n["end"] is None else f"{n['end']:.1f}s"
        lines.append(f"  nemesis {n['name']} {n['start']:.1f}s..{end}")
    return lines
