"""Linearizability of a CAS register per key: Wing & Gong's search with Lowe's memo set.

This is the one linearizability checker of the repository: the chaos harness checks real
clusters' KV histories with `check_cas_register`, and the in-process Raft simulation
(`tests/sim/linearizability.py`) adapts its own history records onto `search`.

The algorithm is the one Porcupine (anishathalye/porcupine, `checker.go`) and Knossos use:
lay every call and return event on a doubly linked list in real-time order, then walk it
depth-first, at each call trying to linearize that operation next (apply it to the model; if
the model accepts its observed output, lift its call and return out of the list); reaching a
return whose operation was not linearized yet means backtracking. Lowe's memo set of
(linearized-ops bitset, model state) prunes the states already explored. Histories are
partitioned by key first (a register per key is a local property, Herlihy & Wing's locality
theorem, which is what makes P-compositional checking sound).

The model, with None meaning "the key does not exist":

- `write v`: the register becomes v;
- `read -> v`: the output must equal the register;
- `cas (expected, new)`: if the register equals `expected` it becomes `new` (the cas
  succeeded); otherwise nothing changes (it failed).

Consul's CAS compares a ModifyIndex, not a value; a client builds `expected` from the value a
previous read returned together with that index, which names the same write as long as every
written value is unique (the workloads' are), so the value form is equivalent.

Outcomes: an `ok` operation has a return time; a `fail` operation definitely did not take
effect and is left out; an `info` operation (indeterminate: timeout, connection reset after
sending, leadership lost after proposing) may take effect at any time after its call, or
never, so its return is at +infinity and, for a cas, its success is unknown. A read that did
not complete `ok` constrains nothing and is dropped.

Indeterminate writes are what make plain WGL blow up (each pending one doubles the states: a
leader kill's sixty timed-out writes made one key undecidable in a minute). `prune_unobserved`
drops the ones nothing observed, and `search` places the others only immediately before an
operation that depends on them; both arguments are in the docstrings. Reads allowed some staleness overlap many
operations each, and would make the search try every subset of them; `search` linearizes a
read-only operation that fits the register without trying the alternatives, which is sound
and complete (see its docstring). The search has a step and a time budget and answers None
("unknown") rather than hanging.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..history import FAIL, OK, History, Op
from .base import UNKNOWN, CheckResult

WRITE = "write"
READ = "read"
CAS = "cas"


@dataclass(frozen=True, slots=True, eq=False)
class RegisterOp:
    """One operation on one register, as the search sees it.

    `ret` is None for an indeterminate operation (it returns at +infinity). `value` is the
    written value, the read's output, or a cas's (expected, new); `output` is a cas's result
    when known (True: it swapped; False: the register differed from `expected`), None when the
    cas is indeterminate. `label` is the caller's record of the operation, for reports.
    """

    kind: str
    value: Hashable
    call: float
    ret: float | None
    output: bool | None = None
    label: Any = None

    def written(self) -> Hashable:
        """The value this operation puts in the register if it takes effect."""
        return self.value[1] if self.kind == CAS else self.value  # type: ignore[index]


def step(state: Hashable, op: RegisterOp) -> tuple[bool, Hashable]:
    """The register model: (accepted, new state) for applying `op` in `state`."""
    if op.kind == WRITE:
        return True, op.value
    if op.kind == READ:
        return op.value == state, state
    if op.kind == CAS:
        expected, new = op.value  # type: ignore[misc]
        matches = state == expected
        if op.output is None:  # indeterminate: it swapped iff it matched
            return True, new if matches else state
        if op.output:
            return matches, new
        return not matches, state
    raise ValueError(f"unknown register operation {op.kind!r}")


def prune_unobserved(ops: list[RegisterOp]) -> list[RegisterOp]:
    """Drop indeterminate writes and cas whose effect no other operation can have observed.

    An indeterminate operation w writing v may be dropped when no read returned v, no cas
    expected v, no other operation writes v, and no cas known to have failed could be
    linearized after it (none returned at or after w's call). Proof that the history stays
    linearizable iff it was: dropping w from a valid linearization L, the operations between
    w and the next state change saw v, so they include no read (it would have returned v), no
    successful cas (it would have expected v), no failed cas (by the last condition), only
    indeterminate cas that did not match v; moving those to the end of L (allowed: an
    indeterminate operation has no return, so nothing must follow it) leaves every other
    operation seeing the same state. The converse holds because an indeterminate operation may
    never take effect. The conditions do not depend on other pruned operations, so they can
    all be dropped at once.
    """
    writers = Counter(op.written() for op in ops if op.kind in (WRITE, CAS))
    observed = {op.value for op in ops if op.kind == READ}
    observed.update(op.value[0] for op in ops if op.kind == CAS)  # type: ignore[index]
    last_failed_cas = max((op.ret for op in ops if op.kind == CAS and op.output is False
                           and op.ret is not None), default=-math.inf)

    def prunable(op: RegisterOp) -> bool:
        if op.ret is not None or op.kind == READ:
            return False
        v = op.written()
        return v not in observed and writers[v] == 1 and last_failed_cas < op.call

    return [op for op in ops if not prunable(op)]


@dataclass
class SearchResult:
    """The verdict for one register: True, False, or None (out of budget).

    When it is False, `prefix` is the longest sequence of operations the search managed to
    linearize, `state` the register after it, and `blocker` the operation whose return was
    reached while it could not be placed after any extension of that prefix.
    """

    valid: bool | None
    steps: int
    ops: int
    pruned: int
    prefix: list[RegisterOp] = field(default_factory=list)
    state: Hashable = None
    blocker: RegisterOp | None = None


class _Node:
    __slots__ = ("op", "id", "is_call", "match", "prev", "next")

    def __init__(self, op: RegisterOp | None, id: int, is_call: bool) -> None:
        self.op = op
        self.id = id
        self.is_call = is_call
        self.match: _Node | None = None  # a call's return event
        self.prev: _Node | None = None
        self.next: _Node | None = None


def _event_list(ops: list[RegisterOp]) -> _Node:
    """Calls and returns in real-time order behind a head node; an equal time means overlap."""
    events: list[tuple[float, int, int]] = []
    for i, o in enumerate(ops):
        if o.ret is not None and o.ret < o.call:
            raise ValueError(f"operation returns before it is called: {o}")
        events.append((o.call, 0, i))
        events.append((math.inf if o.ret is None else o.ret, 1, i))
    events.sort()  # at equal times calls go first, so the operations overlap (Porcupine's rule)
    head = _Node(None, -1, False)
    calls: dict[int, _Node] = {}
    prev = head
    for _, is_return, i in events:
        n = _Node(ops[i], i, not is_return)
        if is_return:
            calls[i].match = n
        else:
            calls[i] = n
        prev.next = n
        n.prev = prev
        prev = n
    return head


def _lift(n: _Node) -> None:
    assert n.prev is not None and n.match is not None and n.match.prev is not None
    n.prev.next = n.next
    if n.next is not None:
        n.next.prev = n.prev
    m = n.match
    m.prev.next = m.next
    if m.next is not None:
        m.next.prev = m.prev


def _unlift(n: _Node) -> None:
    assert n.prev is not None and n.match is not None and n.match.prev is not None
    m = n.match
    m.prev.next = m
    if m.next is not None:
        m.next.prev = m
    n.prev.next = n
    if n.next is not None:
        n.next.prev = n


def _read_only(op: RegisterOp) -> bool:
    """An operation that never changes the register: a read, or a cas known to have failed."""
    return op.kind == READ or (op.kind == CAS and op.output is False)


_NO_DEP = object()  # the last linearized operation was determinate: nothing waits to be observed


def _placement(state: Hashable, dep: Hashable, op: RegisterOp, lazy: bool) -> tuple[bool, Hashable]:
    """Whether `op` may be linearized next, and the register after it.

    `dep` is the register before the last linearized operation when that one was indeterminate
    (`_NO_DEP` otherwise): the operation placed now must then be one that depends on it. See
    `search` for why this restriction loses no linearization. Without `lazy`, any operation
    the model accepts may go next (plain WGL)."""
    accepted, new_state = step(state, op)
    if not accepted:
        return False, state
    if not lazy:
        return True, new_state
    if op.ret is None:
        # Indeterminate: only where it changes the register, and after another indeterminate
        # operation only as a cas that consumes what that one wrote (a write would erase it).
        allowed = new_state != state and (dep is _NO_DEP or op.kind == CAS)
        return allowed, new_state
    if dep is not _NO_DEP and step(dep, op)[0]:
        return False, state  # it fits without the indeterminate operation just placed
    return True, new_state


def search(ops: Iterable[RegisterOp], *, init: Hashable = None, max_steps: int | None = None,
           deadline: float | None = None, prune: bool = True, lazy: bool = True) -> SearchResult:
    """WGL search over one register's operations (already filtered: no failed ones, no
    indeterminate reads). Stops with valid=None after `max_steps` steps or at the monotonic
    time `deadline`.

    Two reductions on top of WGL, both sound and complete.

    Forced read-only operations: a read-only operation that the model accepts at the current
    point is linearized there without trying the alternatives. It is a candidate, so every
    operation that returned before it was called is already linearized, and it changes no
    state; so any valid order extending the current prefix stays valid with it moved to the
    front. If the rest fails with it forced, the prefix fails. Without this, stale-tolerant
    default reads (each concurrent with everything in a 3 s window) make the search try every
    subset of them before it can say "not linearizable".

    Indeterminate operations only where observed: an indeterminate operation (no return) is
    linearized only where it changes the register and immediately before an operation that
    depends on it: a determinate one the model would reject without it (a read of its value,
    a cas expecting it, a failed cas that needs the register changed), or an indeterminate cas
    that consumes its value (which in turn must be followed by a dependant). Any valid order
    can be rewritten into that shape, one indeterminate operation w at a time: if w changes
    nothing, or is last, or is followed by a write (which erases it), drop w (an indeterminate
    operation may never take effect); if it is followed by an indeterminate cas that does not
    match w's value, that cas changes nothing there, so drop it; if it is followed by a
    determinate read-only operation that fits the register as it was before w, swap the two
    (nothing must follow w in real time, as it never returned, and the read-only operation
    leaves the register as it found it). Each rewrite removes an operation or moves a
    determinate one earlier, so the rewriting ends. Without this, every indeterminate write
    doubles the orders tried (whether it took effect, and where), which is what a leader
    kill's dozens of timed-out writes did to the old search. The search ends as soon as every
    determinate operation is linearized.
    """
    all_ops = list(ops)
    kept = prune_unobserved(all_ops) if prune else all_ops
    result = SearchResult(True, 0, len(kept), len(all_ops) - len(kept))
    if not kept:
        return result
    head = _event_list(kept)
    state: Hashable = init
    dep: Hashable = _NO_DEP
    linearized = 0
    cache: set[tuple[int, Hashable, Hashable]] = set()
    # (linearized call, state before it, dep before it, forced)
    stack: list[tuple[_Node, Hashable, Hashable, bool]] = []
    best_depth = -1
    entry = head.next
    steps = 0
    while entry is not None:
        steps += 1
        if (max_steps is not None and steps > max_steps) or (
                deadline is not None and steps % 1024 == 0 and time.monotonic() > deadline):
            result.valid, result.steps = None, steps
            return result
        assert entry.op is not None
        dead_end = False
        if entry.is_call:
            allowed, new_state = _placement(state, dep, entry.op, lazy)
            if allowed:
                forced = _read_only(entry.op)
                new_dep = state if lazy and entry.op.ret is None else _NO_DEP
                new_lin = linearized | (1 << entry.id)
                if (new_lin, new_state, new_dep) not in cache:
                    cache.add((new_lin, new_state, new_dep))
                    stack.append((entry, state, dep, forced))
                    state, dep = new_state, new_dep
                    linearized = new_lin
                    _lift(entry)
                    entry = head.next
                    continue
                # Explored before and failed; for a forced operation that fails this prefix.
                dead_end = forced
            if not dead_end:
                entry = entry.next
                continue
        elif entry.op.ret is None:
            # The first return left is an indeterminate operation's, at +infinity: every
            # determinate operation is linearized (an indeterminate one placed last, still
            # waiting for a dependant, is simply dropped: it may never have taken effect).
            break
        elif entry.op.ret is not None and len(stack) > best_depth:
            # A return whose operation is not linearized yet: that operation cannot be placed
            # after the current prefix. Remember the deepest such dead end.
            best_depth = len(stack)
            result.prefix = [n.op for n, _, _, _ in stack if n.op is not None]
            result.state = state
            result.blocker = entry.op
        # Backtrack: undo choices until one whose alternatives are still open (a forced
        # operation has none, so undoing it fails its prefix too).
        while True:
            if not stack:
                result.valid, result.steps = False, steps
                return result
            node, state, dep, forced = stack.pop()
            linearized &= ~(1 << node.id)
            _unlift(node)
            if not forced:
                entry = node.next
                break
    result.valid, result.steps = True, steps
    result.prefix, result.state, result.blocker = [], None, None
    return result


def decide(ops: Iterable[RegisterOp], *, init: Hashable = None, max_steps: int | None = None,
           deadline: float | None = None, prune: bool = True) -> SearchResult:
    """Both searches, plain WGL and the lazy placement of indeterminate operations, taking
    turns with a budget that grows fourfold each round, until one decides or the budget
    (`max_steps` in all, the monotonic `deadline`) is spent.

    Each is sound and complete, so whichever decides first is right. Neither wins everywhere:
    the lazy one decides a leader kill's dozens of timed-out writes in a few thousand steps
    where WGL needs millions, while on histories dense in reads with few indeterminate writes
    (the in-process Raft simulation's) plain WGL's memo set prunes better. Restarting from
    scratch each round costs at most a constant factor over the better of the two.
    """
    ops = list(ops)
    spent = 0
    quota = 4096
    while True:
        for lazy in (False, True):
            limit = quota if max_steps is None else min(quota, max_steps - spent)
            r = search(ops, init=init, max_steps=limit, deadline=deadline, prune=prune, lazy=lazy)
            spent += r.steps
            out_of_budget = (max_steps is not None and spent >= max_steps) or (
                deadline is not None and time.monotonic() > deadline)
            if r.valid is not None or out_of_budget:
                r.steps = spent
                return r
        quota *= 4


# ---------------------------------------------------------------------------- chaos histories


def freeze(value: Any) -> Hashable:
    """A hashable, comparable form of a value read back from JSON (lists become tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return frozenset(freeze(v) for v in value)
    return value  # type: ignore[no-any-return]


def register_op(index: int, op: Op, staleness_s: float = 0.0) -> RegisterOp | None:
    """The search's view of a history operation, or None when it constrains nothing.

    A read allowed to be `staleness_s` stale is placed as if it had been invoked that much
    earlier: it may then take effect anywhere from `start - staleness_s` to its return, which
    is exactly "it saw a state the register held at most `staleness_s` before it was sent"."""
    if op.f not in (READ, WRITE, CAS) or op.type == FAIL:
        return None
    done = op.type == OK  # "info", and "invoke" (never completed), are indeterminate
    if op.f == READ and not done:
        return None
    ret = op.end if done else None
    if ret is None and done:
        raise ValueError(f"completed operation without an end time: {op}")
    if op.f == CAS:
        if not isinstance(op.value, (list, tuple)) or len(op.value) != 2:
            raise ValueError(f"a cas value must be (expected, new), not {op.value!r}: {op}")
        output = bool(op.extra.get("result", True)) if done else None
        return RegisterOp(CAS, freeze(op.value), op.start, ret, output, (index, op))
    call = max(0.0, op.start - staleness_s) if op.f == READ else op.start
    return RegisterOp(op.f, freeze(op.value), call, ret, None, (index, op))


def describe_op(r: RegisterOp) -> dict[str, Any]:
    """A register operation as a report line: its history index (in history.json) and what it
    did; `call` is when it was sent (a stale-tolerant read's search window starts earlier)."""
    index, op = r.label if isinstance(r.label, tuple) else (None, r.label)
    call = op.start if isinstance(op, Op) else r.call
    d: dict[str, Any] = {"index": index, "kind": r.kind, "value": r.value, "call": call, "ret": r.ret}
    if call != r.call:
        d["may_take_effect_from"] = r.call
    if r.kind == CAS:
        d["result"] = {True: "swapped", False: "mismatch", None: "unknown"}[r.output]
    if isinstance(op, Op):
        d.update(process=op.process, type=op.type)
        if op.extra:
            d["extra"] = op.extra
    return d


def _node_of(r: RegisterOp) -> str:
    op = r.label[1] if isinstance(r.label, tuple) else r.label
    node = op.extra.get("node") if isinstance(op, Op) else None
    return f" through {node}" if node else ""


def stale_read_account(key: str, read: RegisterOp, ops: list[RegisterOp]) -> dict[str, Any] | None:
    """For a read that cannot be placed, when it is a plain stale read: the acknowledged write
    it missed (the last write or successful cas that was sent after every write of the value
    the read saw had returned, and itself returned before the read's window opened), and the
    write of the value it did see. None when the history does not show it that simply (say,
    the value seen was written by an indeterminate operation that may have landed late)."""
    seen = [o for o in ops if o.kind in (WRITE, CAS) and o.written() == read.value]
    if any(o.ret is None for o in seen):
        return None
    seen_done = max((o.ret for o in seen), default=-math.inf)  # type: ignore[type-var]
    missed = [o for o in ops if o.kind in (WRITE, CAS) and o.ret is not None and o.output is not False
              and o.written() != read.value and seen_done < o.call and o.ret < read.call]
    if not missed:
        return None
    last = max(missed, key=lambda o: o.ret)  # type: ignore[arg-type, return-value]
    sent = describe_op(read)["call"]
    age = sent - last.ret  # type: ignore[operator]
    saw = "nothing (the key absent)" if read.value is None else f"{read.value!r}"
    sentence = (f"key {key}: a read sent at {sent:.2f}s{_node_of(read)} returned {saw}, but the write of "
                f"{last.written()!r}{_node_of(last)} had been acknowledged at {last.ret:.2f}s, {age:.2f}s "
                f"before the read was sent")
    if read.call != sent:
        sentence += f" (default reads may be {sent - read.call:g}s stale)"
    return {
        "summary": sentence,
        "stale_read": describe_op(read),
        "missed_write": describe_op(last),
        "missed_by_s": age,
        "value_seen_written_by": [describe_op(o) for o in seen[:3]],
    }


def explain(key: str, r: SearchResult, ops: list[RegisterOp], tail: int = 8) -> dict[str, Any]:
    """A short account of why a key's history is not linearizable."""
    blocker = r.blocker
    why = ""
    stale: dict[str, Any] | None = None
    if blocker is not None:
        if blocker.kind == READ:
            why = f"it read {blocker.value!r} but the register holds {r.state!r}"
            stale = stale_read_account(key, blocker, ops)
        elif blocker.kind == CAS and blocker.output:
            why = f"it swapped from {blocker.value[0]!r} but the register holds {r.state!r}"  # type: ignore[index]
        elif blocker.kind == CAS:
            why = f"it found the register different from {blocker.value[0]!r}, which it holds"  # type: ignore[index]
        else:
            why = "no order of the concurrent operations leads to its place"
    placed = set(map(id, r.prefix))
    horizon = blocker.ret if blocker is not None and blocker.ret is not None else -math.inf
    concurrent = [o for o in ops if id(o) not in placed and o is not blocker and o.call <= horizon]
    account: dict[str, Any] = {
        "key": key,
        "linearized_prefix_length": len(r.prefix),
        "linearized_prefix_tail": [describe_op(o) for o in r.prefix[-tail:]],
        "register_after_prefix": r.state,
        "cannot_place": describe_op(blocker) if blocker is not None else None,
        "why": why,
        "concurrent_unplaced": [describe_op(o) for o in concurrent[:tail]],
    }
    if stale is not None:
        account["stale_read"] = stale
    return account


def check_cas_register(history: History, budget_s: float = 60.0, *,
                       include: Callable[[Op], bool] | None = None,
                       read_staleness_s: Callable[[Op], float] | None = None,
                       name: str = "cas-register") -> CheckResult:
    """Per-key linearizability of the read/write/cas operations in `history`.

    `include` selects the operations to check (say, only `?consistent` reads);
    `read_staleness_s(op)` is how stale a read may be (default 0: linearizable). The check
    shares `budget_s` seconds between keys: a first pass gives each key an equal share of what
    is left (so one hard key cannot starve the rest), a second pass gives the keys still
    undecided everything that remains. A key undecided after both is "unknown", and so is the
    whole check unless some key is not linearizable.
    """
    deadline = time.monotonic() + budget_s
    by_key: dict[str, list[RegisterOp]] = {}
    dropped = 0
    for i, op in enumerate(history.ops):
        if op.f not in (READ, WRITE, CAS) or (include is not None and not include(op)):
            continue
        staleness = read_staleness_s(op) if read_staleness_s is not None and op.f == READ else 0.0
        r = register_op(i, op, staleness)
        if r is None:
            dropped += 1
            continue
        by_key.setdefault(str(op.key), []).append(r)
    per_key: dict[str, dict[str, Any]] = {}
    results: dict[str, SearchResult] = {}
    indeterminate = sum(1 for ops in by_key.values() for o in ops if o.ret is None)
    keys = sorted(by_key)
    for pass_no in (1, 2):
        pending = [k for k in keys if k not in results or results[k].valid is None]
        for n, key in enumerate(pending):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            share = left / (len(pending) - n) if pass_no == 1 else left
            steps_before = results[key].steps if key in results else 0
            r = decide(by_key[key], deadline=time.monotonic() + share)
            r.steps += steps_before
            results[key] = r
    failures: list[dict[str, Any]] = []
    unknown: list[str] = []
    for key in keys:
        ops = by_key[key]
        r = results.get(key)
        if r is None or r.valid is None:
            unknown.append(key)
            per_key[key] = {"ops": len(ops), "valid": UNKNOWN, "steps": r.steps if r else 0,
                            "pruned": r.pruned if r else 0}
            continue
        per_key[key] = {"ops": len(ops), "valid": r.valid, "steps": r.steps, "pruned": r.pruned}
        if not r.valid:
            failures.append(explain(key, r, ops))
    valid: bool | str = False if failures else (UNKNOWN if unknown else True)
    details: dict[str, Any] = {
        "keys": len(by_key), "ops": sum(len(v) for v in by_key.values()),
        "indeterminate": indeterminate, "dropped": dropped,
        "max_ops_per_key": max((len(v) for v in by_key.values()), default=0),
        "decided_keys": len(keys) - len(unknown), "per_key": per_key,
        "unknown_keys": unknown, "failures": failures,
    }
    return CheckResult(name, valid, details)
