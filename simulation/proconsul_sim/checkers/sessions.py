"""Read-your-writes for default-mode KV reads: a client sees its own acknowledged writes.

The session guarantee (Terry et al., "Session Guarantees for Weakly Consistent Replicated
Data"), per client process and key: a read that starts after the process's own write (or
successful cas) of value v was acknowledged must return v or a value written after v.

Default-mode reads may be stale in one documented window (a deposed leader answering for up to
about one election timeout, docs/DURABILITY.md), which the linearizability checker tolerates
with its `stale_read_bound_s`; this checker tolerates nothing: the leader a process's write
went through applied it before acknowledging it, every later leader holds it and answers only
after applying its own term's first entry, so a process can only miss its own write through a
server still following a leader deposed before the write was sent. A new leader answering
before its first apply (the bug class of hashicorp/consul#2644) is caught here even when it
is off by milliseconds, which the bounded linearizability check cannot see.

"Written after v" is decided without a linearizability search, from what the history proves
about the order of a key's values (every written value is unique, and no workload deletes):
value a is *before* value b when
- a's write returned `ok` before b's write was sent (real-time order), or
- a successful cas swapped a for b (the register held a immediately before b),
and transitively. A read of v's predecessor (or of nothing, the key absent) is then a violation;
a read of a value whose order against v the history does not settle passes, so the check never
reports a correct run. Reads of a value nobody wrote are the linearizability checker's business.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from ..history import OK, History, Op
from .base import CheckResult
from .linearizability import freeze

READ = "read"
WRITERS = ("write", "cas")


def _written(op: Op) -> Hashable | None:
    """The value `op` puts in the register if it takes effect, or None (a read, a failed cas)."""
    if op.f == "write":
        return freeze(op.value)
    if op.f == "cas" and isinstance(op.value, (list, tuple)) and len(op.value) == 2:
        if op.type == OK and op.extra.get("result", True) is False:
            return None
        return freeze(op.value[1])
    return None


def _acknowledged_write(op: Op) -> bool:
    """A write or cas that completed `ok` and changed the register."""
    return op.type == OK and op.f in WRITERS and _written(op) is not None


class KeyOrder:
    """What a key's history proves about the order of its values (see the module docstring)."""

    def __init__(self, ops: Iterable[Op]) -> None:
        self.writer: dict[Hashable, Op] = {}
        self.cas_next: dict[Hashable, set[Hashable]] = {}
        for op in ops:
            if op.f not in WRITERS or op.type not in (OK, "info", "invoke"):
                continue
            v = _written(op)
            if v is None:
                continue
            self.writer.setdefault(v, op)
            if op.f == "cas" and op.type == OK:
                self.cas_next.setdefault(freeze(op.value[0]), set()).add(v)
        # Real-time edges need the writers sorted by when they were sent.
        ranked = sorted(self.writer.items(), key=lambda kv: kv[1].start)
        self._values = [v for v, _ in ranked]
        self._starts = [op.start for _, op in ranked]
        self._after: dict[Hashable, frozenset[Hashable]] = {}

    def after(self, a: Hashable) -> frozenset[Hashable]:
        """Every value the history proves came after `a` (memoized per value).

        Real-time order is an interval order, so the values reachable through it from a set of
        values are exactly those sent after the earliest acknowledgement among them: the walk
        keeps that threshold and adds writers as it falls, so each key costs O(n log n)."""
        if a in self._after:
            return self._after[a]
        seen: set[Hashable] = set()
        todo = [a]
        threshold = len(self._starts)  # writers at positions >= threshold are reached
        while todo:
            x = todo.pop()
            for nxt in self.cas_next.get(x, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
            w = self.writer.get(x)
            if w is None or w.type != OK or w.end is None:
                continue
            first = bisect.bisect_right(self._starts, w.end)
            for pos in range(first, threshold):
                v = self._values[pos]
                if v not in seen:
                    seen.add(v)
                    todo.append(v)
            threshold = min(threshold, first)
        seen.discard(a)
        self._after[a] = frozenset(seen)
        return self._after[a]

    def before(self, a: Hashable, b: Hashable) -> bool:
        """Whether the history proves the register held `a` before it held `b` (a != b)."""
        if a == b:
            return False
        if a is None:
            return b in self.writer  # no deletes: absent is before every written value
        return b in self.after(a)


def _describe(index: int, op: Op) -> dict[str, Any]:
    d: dict[str, Any] = {"index": index, "process": op.process, "f": op.f, "value": op.value,
                         "start": op.start, "end": op.end, "type": op.type}
    if op.extra:
        d["extra"] = op.extra
    return d


def check_read_your_writes(history: History, *, modes: tuple[str, ...] = ("default",),
                           include: Callable[[Op], bool] | None = None,
                           name: str = "read-your-writes") -> CheckResult:
    """Every `ok` read in one of `modes` (op.extra["mode"]) by a process returns that process's
    latest acknowledged write of the key (before the read was sent) or a value after it."""
    by_key: dict[str, list[tuple[int, Op]]] = {}
    for i, op in enumerate(history.ops):
        if op.key is None or (include is not None and not include(op)):
            continue
        if op.f in WRITERS or (op.f == READ and op.extra.get("mode") in modes):
            by_key.setdefault(str(op.key), []).append((i, op))
    violations: list[dict[str, Any]] = []
    checked = 0
    with_own_write = 0
    for key in sorted(by_key):
        entries = by_key[key]
        order = KeyOrder(op for _, op in entries)
        own: dict[int, list[tuple[int, Op]]] = {}
        for i, op in entries:
            if _acknowledged_write(op):
                own.setdefault(op.process, []).append((i, op))
        for i, op in entries:
            if op.f != READ or op.type != OK or op.end is None:
                continue
            checked += 1
            mine = [(j, w) for j, w in own.get(op.process, []) if w.end is not None and w.end < op.start]
            if not mine:
                continue
            with_own_write += 1
            got = freeze(op.value)
            for j, w in mine:
                v = _written(w)
                if got != v and order.before(got, v):
                    saw = "nothing (the key absent)" if got is None else repr(got)
                    violations.append({
                        "summary": (f"key {key}: process {op.process} read {saw} at {op.start:.3f}s"
                                    f"{_through(op)}, but its own write of {v!r} had been acknowledged at "
                                    f"{w.end:.3f}s and {saw} is older"),
                        "key": key, "read": _describe(i, op), "own_write": _describe(j, w),
                        "read_value_written_by": (_describe(-1, order.writer[got])
                                                  if got in order.writer else None),
                    })
                    break
    details: dict[str, Any] = {"keys": len(by_key), "reads_checked": checked,
                               "reads_after_own_write": with_own_write,
                               "violations": len(violations), "failures": violations[:20]}
    return CheckResult(name, not violations, details)


def _through(op: Op) -> str:
    node = op.extra.get("node")
    return f" through {node}" if node else ""
