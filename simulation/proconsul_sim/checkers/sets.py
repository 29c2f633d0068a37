"""Grow-only set: an acknowledged add is never lost, and nothing appears that was not added.

Workloads record `add` operations (value: the element, key: the set's name) and, once the
adds are over, a `read-all` (completed value: the elements read, as a list or set). Per set:

- an add completed `ok` before the final read started must be in it (else it is *lost*);
- an element whose every add `fail`ed, or that was never added, must not be in any read (else
  it is *unexpected*): `fail` means the add definitely did not happen;
- an `info` add may be present or not; the result counts how many were (*recovered*, in
  Jepsen's words), and so does an `ok` add concurrent with the final read.
"""

from __future__ import annotations

from typing import Any

from ..history import FAIL, INFO, OK, History, Op, jsonable
from .base import UNKNOWN, CheckResult

ADD = "add"
READ_ALL = "read-all"


def _elements(op: Op) -> set[Any]:
    value = op.value
    if value is None:
        return set()
    if isinstance(value, (list, tuple, set, frozenset)):
        return {_hashable(v) for v in value}
    raise ValueError(f"a read-all must complete with a list or set of elements, not {value!r}: {op}")


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _sorted(items: set[Any]) -> list[Any]:
    return jsonable(set(items))  # type: ignore[no-any-return]


def check_grow_only_set(history: History) -> CheckResult:
    sets: dict[str, dict[str, list[Op]]] = {}
    for op in history.ops:
        if op.f in (ADD, READ_ALL):
            sets.setdefault(str(op.key), {ADD: [], READ_ALL: []})[op.f].append(op)
    per_set: dict[str, dict[str, Any]] = {}
    verdicts: list[bool | str] = []
    for name in sorted(sets):
        adds, reads = sets[name][ADD], [r for r in sets[name][READ_ALL] if r.type == OK]
        attempted = {_hashable(a.value) for a in adds if a.type != FAIL}
        acked = [a for a in adds if a.type == OK]
        failed_only = {_hashable(a.value) for a in adds if a.type == FAIL} - attempted
        unexpected: set[Any] = set()
        for r in reads:
            unexpected |= _elements(r) - attempted
        d: dict[str, Any] = {
            "adds": len(adds), "ok": len(acked), "fail": sum(a.type == FAIL for a in adds),
            "info": sum(a.type == INFO for a in adds), "reads": len(reads),
            "unexpected": _sorted(unexpected),
            "unexpected_failed_adds": _sorted(unexpected & failed_only),
        }
        if not reads:
            d["reason"] = "no read-all completed: nothing to compare the adds with"
            per_set[name] = d
            verdicts.append(UNKNOWN if not unexpected else False)
            continue
        final = max(reads, key=lambda r: (r.start, r.end or r.start))
        present = _elements(final)
        required = {_hashable(a.value) for a in acked if a.end is not None and a.end < final.start}
        lost = required - present
        maybe = {_hashable(a.value) for a in adds if a.type != FAIL} - required
        d.update(final_read={"start": final.start, "end": final.end, "size": len(present)},
                 lost=_sorted(lost), present=len(required & present),
                 recovered=len(maybe & present), absent_indeterminate=len(maybe - present))
        per_set[name] = d
        verdicts.append(not lost and not unexpected)
    valid: bool | str
    if any(v is False for v in verdicts):
        valid = False
    elif any(v == UNKNOWN for v in verdicts) or not verdicts:
        valid = UNKNOWN
    else:
        valid = True
    return CheckResult("grow-only-set", valid, {"sets": per_set})
