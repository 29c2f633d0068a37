"""The linearizability checker on small hand-written histories, and against a brute force."""

from __future__ import annotations

import itertools
import random

from linearizability import FAIL, INFO, OK, Op, _prepare, _step, check, check_key


def put(c: int, v: str, call: int, ret: int | None, status: str = OK, key: str = "k") -> Op:
    return Op(c, key, "put", v, call, ret, status)


def get(c: int, v: str | None, call: int, ret: int | None, status: str = OK, key: str = "k") -> Op:
    return Op(c, key, "get", v, call, ret, status)


def cas(c: int, exp: str | None, new: str, out: bool | None, call: int, ret: int | None,
        status: str = OK, key: str = "k") -> Op:
    return Op(c, key, "cas", (exp, new), call, ret, status, out)


def test_empty_and_sequential():
    assert check([]).ok
    h = [put(1, "a", 1, 2), get(1, "a", 3, 4), cas(1, "a", "b", True, 5, 6), get(1, "b", 7, 8)]
    assert check(h).ok


def test_read_of_initial_absent_value():
    assert check([get(1, None, 1, 2)]).ok
    assert not check([get(1, "x", 1, 2)]).ok


def test_stale_read_after_write_completed_is_not_linearizable():
    h = [put(1, "a", 1, 2), put(1, "b", 3, 4), get(2, "a", 5, 6)]
    r = check(h)
    assert not r.ok and r.bad_key == "k"
    assert "not linearizable" in r.describe()


def test_concurrent_read_may_see_either_value():
    h = [put(1, "a", 1, 2), put(1, "b", 3, 10), get(2, "a", 4, 5), get(3, "b", 6, 7)]
    assert check(h).ok
    # ... but once a read saw the new value, a later read may not see the old one.
    h = [put(1, "a", 1, 2), put(1, "b", 3, 10), get(2, "b", 4, 5), get(3, "a", 6, 7)]
    assert not check(h).ok


def test_cas_semantics():
    assert check([cas(1, None, "a", True, 1, 2), get(1, "a", 3, 4)]).ok
    assert not check([put(1, "a", 1, 2), cas(1, None, "b", True, 3, 4)]).ok
    assert check([put(1, "a", 1, 2), cas(1, "x", "b", False, 3, 4), get(1, "a", 5, 6)]).ok
    # A failed cas must have seen a value different from its expectation.
    assert not check([put(1, "a", 1, 2), cas(1, "a", "b", False, 3, 4)]).ok
    # Two concurrent cas from the same expected value: only one may win.
    h = [put(1, "a", 1, 2), cas(2, "a", "b", True, 3, 6), cas(3, "a", "c", True, 4, 5)]
    assert not check(h).ok
    h = [put(1, "a", 1, 2), cas(2, "a", "b", True, 3, 6), cas(3, "a", "c", False, 4, 5)]
    assert check(h).ok


def test_info_write_may_or_may_not_have_happened():
    # Unknown outcome, never observed: fine.
    assert check([put(1, "a", 1, None, INFO), get(2, None, 5, 6)]).ok
    # Unknown outcome, observed much later (its effect may land any time after its call).
    assert check([put(1, "a", 1, None, INFO), get(2, None, 5, 6), get(2, "a", 7, 8)]).ok
    # ... but not before it was called.
    assert not check([get(2, "a", 1, 2), put(1, "a", 3, None, INFO)]).ok
    # And once observed it cannot be un-observed.
    h = [put(1, "a", 1, None, INFO), get(2, "a", 5, 6), get(2, None, 7, 8)]
    assert not check(h).ok


def test_info_cas_has_unknown_result():
    h = [put(1, "a", 1, 2), cas(2, "a", "b", None, 3, None, INFO), get(3, "b", 10, 11)]
    assert check(h).ok
    h = [put(1, "a", 1, 2), cas(2, "x", "b", None, 3, None, INFO), get(3, "b", 10, 11)]
    assert not check(h).ok


def test_failed_operations_are_ignored():
    h = [put(1, "a", 1, 2, FAIL), get(2, None, 3, 4)]
    assert check(h).ok
    # An info read constrains nothing either.
    assert check([put(1, "a", 1, 2), get(2, "zzz", 3, None, INFO)]).ok


def test_keys_are_independent():
    h = [put(1, "a", 1, 2, key="x"), put(1, "b", 3, 4, key="y"), get(2, "a", 5, 6, key="x"),
         get(2, None, 5, 6, key="z")]
    r = check(h)
    assert r.ok and len(r.keys) == 3
    h.append(get(3, "zzz", 7, 8, key="y"))
    r = check(h)
    assert not r.ok and r.bad_key == "y"


def test_budget_reports_unknown_instead_of_hanging():
    # Many overlapping writes with a read that matches none of them: exhaustive search.
    h = [put(i, f"v{i}", i, 100 + i) for i in range(18)] + [get(99, "nope", 50, 200)]
    ok, steps = check_key(h, budget=500)
    assert ok is None and steps > 500
    r = check(h, budget=500)
    assert r.ok and r.unknown == 1  # unknown is not a failure, but it is counted


def test_equal_times_overlap():
    # A call at the time of another's return overlaps it (Porcupine's convention).
    assert check([put(1, "a", 1, 5), get(2, None, 5, 6)]).ok


def _brute_force(ops: list[Op]) -> bool:
    """Try every order of the (non-dropped) operations that respects real time."""
    ops = _prepare(ops)
    for perm in itertools.permutations(ops):
        fine = True
        for i, a in enumerate(perm):
            for b in perm[i + 1:]:
                if b.ret is not None and b.ret < a.call:
                    fine = False
                    break
            if not fine:
                break
        if not fine:
            continue
        # Info ops may be left out entirely: try all subsets of them.
        infos = [k for k, o in enumerate(perm) if o.ret is None]
        for mask in range(1 << len(infos)):
            skip = {infos[j] for j in range(len(infos)) if mask >> j & 1}
            state = None
            good = True
            for k, o in enumerate(perm):
                if k in skip:
                    continue
                good, state = _step(state, o)
                if not good:
                    break
            if good:
                return True
    return False


def test_agrees_with_brute_force_on_random_small_histories():
    rng = random.Random(1)
    for _ in range(300):
        ops = []
        t = 0
        vals = ["a", "b", "c"]
        for c in range(rng.randint(1, 5)):
            t += rng.randint(0, 2)
            call = t + rng.randint(0, 3)
            ret = call + rng.randint(1, 6)
            kind = rng.choice(["put", "get", "cas"])
            status = OK if rng.random() < 0.8 else INFO
            if kind == "put":
                ops.append(put(c, rng.choice(vals), call, None if status == INFO else ret, status))
            elif kind == "get":
                ops.append(get(c, rng.choice([None, *vals]), call, ret))
            else:
                out = rng.random() < 0.5 if status == OK else None
                ops.append(cas(c, rng.choice([None, *vals]), rng.choice(vals), out, call,
                               None if status == INFO else ret, status))
        ok, _ = check_key(ops)
        assert ok == _brute_force(ops), ops
