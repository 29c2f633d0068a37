"""Linearizability checker for KV client histories: Wing & Gong's search with Lowe's cache.

The algorithm is the one Porcupine (anishathalye/porcupine, `checker.go`) and Knossos use:
lay every call and return event on a doubly linked list in real-time order, then walk it
depth-first, at each call trying to linearize that operation next (apply it to the model; if
the model accepts its observed output, lift its call and return out of the list); reaching a
return whose operation was not linearized yet means backtracking. Lowe's memo set of
(linearized-ops bitset, model state) prunes the states already explored.

The model is a register per key, with the operations the simulation's clients issue:

- `put(v)`: the register becomes v;
- `get() -> v`: the output must equal the register (None: the key does not exist);
- `cas(expected, new) -> bool`: if the register equals `expected` (None: the key must not
  exist), it becomes `new` and the output is True; otherwise nothing changes and it is False.

Consul's CAS compares a ModifyIndex, not a value; a client builds `expected` from the value a
previous get returned together with that index, which names the same write as long as every
written value is unique (the simulation's are), so the value form is equivalent.

Outcomes: an operation that is `ok` has a return time; a `fail` operation definitely did not
take effect and is left out; an `info` operation (unknown outcome: timeout, leadership lost,
crash after proposing) may or may not have taken effect, so it has no return (an open end)
and, for a cas, no known output. An `info` read constrains nothing and is dropped.

Histories are partitioned by key (a register per key is a local property, Herlihy & Wing's
locality theorem) and each partition gets a step budget; a search that exceeds it reports
`unknown` rather than hanging.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

OK = "ok"
FAIL = "fail"
INFO = "info"

_NONE = object()  # "no output known" (a cas whose outcome is unknown)


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


def _step(state: Hashable, op: Op) -> tuple[bool, Hashable]:
    """The register model: (accepted, new state) for applying `op` in `state`."""
    if op.kind == "put":
        return True, op.value
    if op.kind == "get":
        return op.value == state, state
    if op.kind == "cas":
        expected, new = op.value
        matches = state == expected
        out = op.output if op.status == OK else _NONE
        if out is _NONE:
            return True, new if matches else state
        if out:
            return matches, new
        return not matches, state
    raise ValueError(f"unknown operation {op.kind!r}")


class _Node:
    __slots__ = ("op", "id", "is_call", "match", "prev", "next")

    def __init__(self, op: Op | None, id: int, is_call: bool) -> None:
        self.op = op
        self.id = id
        self.is_call = is_call
        self.match: _Node | None = None  # a call's return event
        self.prev: _Node | None = None
        self.next: _Node | None = None


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
    ops = _prepare(ops)
    if not ops:
        return True, 0
    # Events in real-time order; an open-ended operation returns after everything else.
    inf = 1 + max(max(o.call for o in ops), max((o.ret or 0) for o in ops))
    # (time, tie-break, op id, is_call): at equal times calls go first (the ops overlap).
    events: list[tuple[int, int, int, bool]] = []
    for i, o in enumerate(ops):
        events.append((o.call, 0, i, True))
        ret = o.ret if o.ret is not None else inf + i
        if ret <= o.call:
            raise ValueError(f"operation returns before it is called: {o}")
        events.append((ret, 1, i, False))
    events.sort()
    head = _Node(None, -1, False)
    calls: dict[int, _Node] = {}
    prev = head
    for _, _, i, is_call in events:
        n = _Node(ops[i], i, is_call)
        if is_call:
            calls[i] = n
        else:
            calls[i].match = n
        prev.next = n
        n.prev = prev
        prev = n

    def lift(n: _Node) -> None:
        assert n.prev is not None and n.match is not None and n.match.prev is not None
        n.prev.next = n.next
        if n.next is not None:
            n.next.prev = n.prev
        m = n.match
        m.prev.next = m.next
        if m.next is not None:
            m.next.prev = m.prev

    def unlift(n: _Node) -> None:
        assert n.prev is not None and n.match is not None and n.match.prev is not None
        m = n.match
        m.prev.next = m
        if m.next is not None:
            m.next.prev = m
        n.prev.next = n
        if n.next is not None:
            n.next.prev = n

    state: Hashable = init
    linearized = 0
    cache: set[tuple[int, Hashable]] = set()
    stack: list[tuple[_Node, Hashable]] = []
    entry = head.next
    steps = 0
    while head.next is not None:
        steps += 1
        if steps > budget:
            return None, steps
        assert entry is not None
        if entry.is_call:
            assert entry.op is not None
            accepted, new_state = _step(state, entry.op)
            if accepted:
                new_lin = linearized | (1 << entry.id)
                if (new_lin, new_state) not in cache:
                    cache.add((new_lin, new_state))
                    stack.append((entry, state))
                    state = new_state
                    linearized = new_lin
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # A return whose operation is not linearized yet: undo the last choice.
            if not stack:
                return False, steps
            entry, state = stack.pop()
            linearized &= ~(1 << entry.id)
            unlift(entry)
            entry = entry.next
    return True, steps


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
