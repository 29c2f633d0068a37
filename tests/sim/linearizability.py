"""The Raft simulation's view of linearizability: its KV history records, checked by the harness's checker.

The search itself (Wing & Gong with Lowe's memo set, over a CAS register per key) lives in
`proconsul_sim.checkers.linearizability`, shared with the chaos harness; this module keeps the
simulation's own record type (`Op`: client, key, put/get/cas, logical call and return ticks,
ok/fail/info status) and report (`Result`), and translates the records for the search:
`put`/`get` are the register's write/read, an `info` operation has no return, a failed one and
an `info` get are left out.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from proconsul_sim.checkers.linearizability import RegisterOp, decide, step
from proconsul_sim.history import FAIL, INFO, OK

__all__ = ["FAIL", "INFO", "OK", "KeyResult", "Op", "Result", "check", "check_key"]

_KINDS = {"put": "write", "get": "read", "cas": "cas"}


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation as the history records it.

    `call` and `ret` are points on one logical clock (strictly increasing per event); `ret` is
    None for an `info` operation. `value` is the put value, the get output, or for a cas the
    pair (expected, new); `output` is the cas result (True/False) when known.
    """

    client: int
    key: str
    kind: str  # "put" | "get" | "cas"
    value: Any
    call: int
    ret: int | None
    status: str = OK
    output: Any = None
    note: str = ""  # free text for reports (node, mode, index)


@dataclass
class KeyResult:
    key: str
    ok: bool | None  # None: the budget ran out
    ops: int
    steps: int


@dataclass
class Result:
    """Linearizable iff every key is; `unknown` counts keys whose search ran out of budget."""

    ok: bool
    keys: list[KeyResult] = field(default_factory=list)
    unknown: int = 0
    bad_key: str | None = None
    bad_ops: list[Op] = field(default_factory=list)

    def describe(self) -> str:
        if self.ok:
            return f"linearizable ({len(self.keys)} keys, {self.unknown} unknown)"
        lines = [f"history of key {self.bad_key!r} is not linearizable:"]
        for op in sorted(self.bad_ops, key=lambda o: o.call):
            end = "open" if op.ret is None else str(op.ret)
            out = "" if op.kind != "cas" or op.status != OK else f" -> {op.output}"
            lines.append(f"  [{op.call}, {end}] c{op.client} {op.kind} {op.value!r}{out}"
                         f" {op.status} {op.note}")
        return "\n".join(lines)


def _register_op(op: Op) -> RegisterOp:
    kind = _KINDS.get(op.kind)
    if kind is None:
        raise ValueError(f"unknown operation {op.kind!r}")
    ret = op.ret if op.status == OK else None
    output = None
    if kind == "cas" and op.status == OK:
        output = bool(op.output)
    return RegisterOp(kind, op.value, op.call, ret, output, op)


def _step(state: Hashable, op: Op) -> tuple[bool, Hashable]:
    """The register model: (accepted, new state) for applying `op` in `state`."""
    return step(state, _register_op(op))


def _prepare(ops: Iterable[Op]) -> list[Op]:
    """Drop what constrains nothing: failed operations and reads with unknown outcome."""
    keep = []
    for op in ops:
        if op.status == FAIL:
            continue
        if op.status != OK and op.kind == "get":
            continue
        keep.append(op)
    return keep


def check_key(ops: list[Op], budget: int = 200_000, init: Hashable = None) -> tuple[bool | None, int]:
    """WGL search over one key's operations; (linearizable or None if out of budget, steps)."""
    # `decide` shares its steps between two searches restarted with quotas growing fourfold;
    # three times the budget lets plain WGL alone run a full round of more than `budget` steps.
    r = decide([_register_op(o) for o in _prepare(ops)], init=init, max_steps=3 * budget)
    return r.valid, r.steps


def check(history: Iterable[Op], budget: int = 200_000) -> Result:
    """Check a whole history, one register per key."""
    by_key: dict[str, list[Op]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    res = Result(ok=True)
    for key in sorted(by_key):
        ops = by_key[key]
        ok, steps = check_key(ops, budget)
        res.keys.append(KeyResult(key, ok, len(ops), steps))
        if ok is None:
            res.unknown += 1
        elif not ok and res.ok:
            res.ok = False
            res.bad_key = key
            res.bad_ops = _prepare(ops)
    return res
