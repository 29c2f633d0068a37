"""The CAS-register linearizability checker on known-good and known-bad chaos histories."""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import Counter

from history_builders import history, op, random_register_history
from proconsul_sim.checkers import check_cas_register
from proconsul_sim.checkers.linearizability import (
    CAS,
    READ,
    WRITE,
    RegisterOp,
    decide,
    prune_unobserved,
    search,
    step,
)
from proconsul_sim.history import FAIL, INFO, History


def verdict(*ops) -> bool | str:
    return check_cas_register(history(*ops)).valid


def test_sequential_history_and_absent_key():
    assert verdict() is True
    assert verdict(op(1, "read", None, 0, 1)) is True
    assert verdict(op(1, "write", "a", 0, 1), op(1, "read", "a", 2, 3),
                   op(1, "cas", ("a", "b"), 4, 5), op(2, "read", "b", 6, 7)) is True
    assert verdict(op(1, "read", "x", 0, 1)) is False


def test_stale_read_after_acknowledged_write_is_reported_with_the_ops_involved():
    res = check_cas_register(history(op(1, "write", "a", 0, 1), op(1, "write", "b", 2, 3),
                                     op(2, "read", "a", 4, 5, consistency="default", node="n2")))
    assert res.valid is False
    (failure,) = res.details["failures"]
    assert failure["key"] == "k"
    assert failure["cannot_place"]["kind"] == READ and failure["cannot_place"]["value"] == "a"
    assert failure["cannot_place"]["index"] == 2
    assert failure["cannot_place"]["extra"] == {"consistency": "default", "node": "n2"}
    assert failure["register_after_prefix"] == "b"
    assert [o["value"] for o in failure["linearized_prefix_tail"]] == ["a", "b"]
    assert "holds 'b'" in failure["why"]
    json.dumps(res.to_json())  # the explanation goes into result.json as is


def test_concurrent_write_and_read_may_be_ordered_either_way():
    w = op(1, "write", "b", 2, 10)
    base = op(1, "write", "a", 0, 1)
    assert verdict(base, w, op(2, "read", "a", 3, 4)) is True
    assert verdict(base, w, op(2, "read", "b", 3, 4)) is True
    # ... but once a read saw the new value, a later read must not see the old one.
    assert verdict(base, w, op(2, "read", "b", 3, 4), op(3, "read", "a", 5, 6)) is False


def test_lost_acknowledged_write_is_not_linearizable():
    assert verdict(op(1, "write", "a", 0, 1), op(2, "read", None, 2, 3)) is False
    assert verdict(op(1, "cas", (None, "a"), 0, 1), op(2, "read", None, 2, 3)) is False


def test_cas_success_and_failure_patterns():
    a = op(1, "write", "a", 0, 1)
    assert verdict(op(1, "cas", (None, "a"), 0, 1), op(1, "read", "a", 2, 3)) is True
    assert verdict(a, op(2, "cas", (None, "b"), 2, 3)) is False  # swapped from a value it could not see
    # A cas the server refused: as `fail` it is dropped; as ok(False) the register must have differed.
    assert verdict(a, op(2, "cas", ("x", "b"), 2, 3, FAIL), op(1, "read", "a", 4, 5)) is True
    assert verdict(a, op(2, "cas", ("x", "b"), 2, 3, result=False), op(1, "read", "a", 4, 5)) is True
    assert verdict(a, op(2, "cas", ("a", "b"), 2, 3, result=False)) is False
    # Two concurrent swaps from the same expected value: only one may win.
    assert verdict(a, op(2, "cas", ("a", "b"), 2, 6), op(3, "cas", ("a", "c"), 3, 5)) is False
    assert verdict(a, op(2, "cas", ("a", "b"), 2, 6), op(3, "cas", ("a", "c"), 3, 5, FAIL)) is True
    # A chain of swaps, each from the previous one's value.
    assert verdict(a, op(2, "cas", ("a", "b"), 2, 6), op(3, "cas", ("b", "c"), 3, 7),
                   op(1, "read", "c", 8, 9)) is True


def test_indeterminate_writes_that_did_and_did_not_happen_are_both_fine():
    # Never observed: it may never have happened.
    assert verdict(op(1, "write", "a", 0, 1, INFO), op(2, "read", None, 5, 6)) is True
    # Observed much later than the client gave up on it: it may land any time after its start.
    assert verdict(op(1, "write", "a", 0, 1, INFO), op(2, "read", None, 5, 6),
                   op(2, "read", "a", 7, 8)) is True
    # A cas with unknown outcome may have swapped.
    assert verdict(op(1, "write", "a", 0, 1), op(2, "cas", ("a", "b"), 2, 3, INFO),
                   op(3, "read", "b", 10, 11)) is True
    # ... but never before it started, and never un-happen once observed.
    assert verdict(op(2, "read", "a", 0, 1), op(1, "write", "a", 2, 3, INFO)) is False
    assert verdict(op(1, "write", "a", 0, 1, INFO), op(2, "read", "a", 5, 6),
                   op(2, "read", None, 7, 8)) is False
    # An operation never completed (the run ended first) is indeterminate too.
    assert verdict(op(1, "write", "a", 0, None, "invoke"), op(2, "read", "a", 5, 6)) is True


def test_failed_operations_and_indeterminate_reads_constrain_nothing():
    assert verdict(op(1, "write", "a", 0, 1, FAIL), op(2, "read", None, 2, 3)) is True
    assert verdict(op(1, "write", "a", 0, 1), op(2, "read", "zzz", 2, 3, INFO)) is True
    res = check_cas_register(history(op(1, "write", "a", 0, 1, FAIL), op(2, "add", 1, 0, 1, key="s")))
    assert res.details["dropped"] == 1 and res.details["ops"] == 0  # the set's add is not ours


def test_many_keys_are_checked_independently_and_the_bad_one_is_named():
    ops = [op(1, "write", "a", 0, 1, key="x"), op(1, "write", "b", 2, 3, key="y"),
           op(2, "read", "a", 4, 5, key="x"), op(2, "read", None, 4, 5, key="z")]
    res = check_cas_register(history(*ops))
    assert res.valid is True and res.details["keys"] == 3
    res = check_cas_register(history(*ops, op(3, "read", "zzz", 6, 7, key="y")))
    assert res.valid is False
    assert [f["key"] for f in res.details["failures"]] == ["y"]
    assert res.details["per_key"]["x"]["valid"] is True


def test_include_selects_operations_to_check():
    ops = [op(1, "write", "a", 0, 1), op(1, "write", "b", 2, 3),
           op(2, "read", "a", 4, 5, consistency="stale"), op(2, "read", "b", 6, 7, consistency="consistent")]
    assert check_cas_register(history(*ops)).valid is False
    res = check_cas_register(history(*ops), include=lambda o: o.extra.get("consistency") != "stale",
                             name="cas-register-consistent")
    assert res.valid is True and res.name == "cas-register-consistent"


def test_long_random_history_from_a_correct_register_is_linearizable_and_fast():
    h = random_register_history(7, processes=5, keys=10, ops=3000)
    assert sum(o.type == INFO for o in h.ops) > 10
    t0 = time.monotonic()
    res = check_cas_register(h, budget_s=120)
    elapsed = time.monotonic() - t0
    assert res.valid is True, res.details["failures"]
    assert res.details["ops"] > 2500
    assert elapsed < 60, f"the check of 3000 ops took {elapsed:.1f}s"


def _mutated(h: History, rng: random.Random, stale: bool) -> tuple[History, int]:
    """Change one ok read: to a never-written value, or to a value provably overwritten before it."""
    reads = [i for i, o in enumerate(h.ops) if o.f == "read" and o.type == "ok"]
    rng.shuffle(reads)
    for i in reads:
        r = h.ops[i]
        if not stale:
            new_value = "never-written"
        else:
            # w, then an acknowledged w2 entirely after it, both entirely before the read.
            writes = [o for o in h.ops if o.key == r.key and o.f == "write" and o.type == "ok"
                      and o.end < r.start]
            pairs = [(w, w2) for w in writes for w2 in writes if w.end < w2.start and w.value != r.value]
            if not pairs:
                continue
            new_value = pairs[0][0].value
        ops = list(h.ops)
        ops[i] = op(r.process, "read", new_value, r.start, r.end, key=r.key)
        return history(*ops), i
    raise AssertionError("no read to mutate")


def test_one_mutated_read_makes_the_long_history_fail_naming_it():
    rng = random.Random(3)
    h = random_register_history(11, ops=2000)
    for stale in (False, True):
        bad, index = _mutated(h, rng, stale)
        res = check_cas_register(bad, budget_s=120)
        assert res.valid is False, stale
        (failure,) = res.details["failures"]
        assert failure["key"] == bad.ops[index].key
        # The search gets as far as the mutated read and names it as the operation it cannot place.
        assert failure["cannot_place"]["index"] == index
        assert failure["cannot_place"]["kind"] == READ
        assert failure["linearized_prefix_length"] > 10


def test_budget_returns_unknown_instead_of_hanging():
    # Many overlapping writes and a read that matches none of them: an exhaustive search.
    ops = [op(i, "write", f"v{i}", i * 0.01, 100 + i) for i in range(24)]
    ops.append(op(99, "read", "nope", 50, 200))
    ops.append(op(1, "write", "a", 0, 1, key="later"))  # an easy key: its share decides it
    t0 = time.monotonic()
    res = check_cas_register(history(*ops), budget_s=0.3)
    assert time.monotonic() - t0 < 10
    assert res.valid == "unknown"
    assert res.details["unknown_keys"] == ["k"]
    assert res.details["per_key"]["later"]["valid"] is True and res.details["decided_keys"] == 1
    # With no budget at all nothing is searched, and nothing is called valid.
    res = check_cas_register(history(*ops), budget_s=0)
    assert res.valid == "unknown" and res.details["unknown_keys"] == ["k", "later"]
    assert search([RegisterOp(WRITE, "a", 0, 1)], max_steps=0).valid is None


def test_a_key_left_unsearched_makes_the_verdict_unknown_never_true():
    ops = [op(i, "write", f"v{i}", i * 0.01, 100 + i, key="a-slow") for i in range(24)]
    ops.append(op(99, "read", "nope", 50, 200, key="a-slow"))
    ops += [op(1, "write", "x", 0, 1, key="b"), op(1, "read", "x", 2, 3, key="b")]
    res = check_cas_register(history(*ops), budget_s=0.3)
    # Every other key is fine, but the slow one stays undecided: unknown, not True.
    assert res.valid == "unknown" and res.details["unknown_keys"] == ["a-slow"]


def test_a_slow_key_does_not_starve_a_bad_one():
    # Keys are searched in name order; "a-slow" alone would eat any budget. Each key's equal
    # first share lets "b" be searched, and its stale read found.
    ops = [op(i, "write", f"v{i}", i * 0.01, 100 + i, key="a-slow") for i in range(24)]
    ops.append(op(99, "read", "nope", 50, 200, key="a-slow"))
    ops += [op(1, "write", "x", 0, 1, key="b"), op(1, "read", None, 2, 3, key="b")]
    res = check_cas_register(history(*ops), budget_s=0.5)
    assert res.valid is False
    assert [f["key"] for f in res.details["failures"]] == ["b"]
    assert res.details["unknown_keys"] == ["a-slow"]


def test_stale_default_read_is_explained_with_the_write_it_missed():
    ops = [op(1, "write", 1, 0.0, 0.1, node="s1"), op(2, "read", 1, 0.5, 0.6, mode="default", node="s3"),
           op(1, "write", 2, 1.0, 1.1, node="s1"),
           # 2.9 s after the write of 2 was acknowledged: within a 3 s bound, so fine ...
           op(2, "read", 1, 4.0, 4.05, mode="default", node="s3")]
    def staleness(o):
        return 3.0 if o.extra.get("mode") == "default" else 0.0

    assert check_cas_register(history(*ops), read_staleness_s=staleness).valid is True
    # ... but 5 s after it, the read missed an acknowledged write by more than the bound.
    late = op(2, "read", 1, 6.1, 6.2, mode="default", node="s3")
    res = check_cas_register(history(*ops, late), read_staleness_s=staleness)
    assert res.valid is False
    (failure,) = res.details["failures"]
    stale = failure["stale_read"]
    assert stale["stale_read"]["index"] == 4 and stale["stale_read"]["call"] == 6.1
    assert stale["stale_read"]["may_take_effect_from"] == 6.1 - 3.0
    assert stale["missed_write"]["index"] == 2 and stale["missed_write"]["value"] == 2
    assert [w["index"] for w in stale["value_seen_written_by"]] == [0]
    assert abs(stale["missed_by_s"] - 5.0) < 1e-9
    assert stale["summary"] == ("key k: a read sent at 6.10s through s3 returned 1, but the write of 2 through "
                                "s1 had been acknowledged at 1.10s, 5.00s before the read was sent "
                                "(default reads may be 3s stale)")
    # A read of an absent key after the key's first write is the same story.
    absent = check_cas_register(history(op(1, "write", 7, 0, 0.1), op(2, "read", None, 1, 1.1)))
    assert "returned nothing (the key absent)" in absent.details["failures"][0]["stale_read"]["summary"]


def test_history_survives_json_round_trip_with_the_same_verdicts():
    h = random_register_history(5, ops=400)
    again = History.from_json(json.loads(json.dumps(h.to_json())))
    assert check_cas_register(again).valid is True
    assert all(type(o.value) is tuple for o in again.ops if o.f == "cas")


def test_bad_input_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="expected, new"):
        check_cas_register(history(op(1, "cas", "a", 0, 1)))
    with pytest.raises(ValueError, match="returns before"):
        check_cas_register(history(op(1, "write", "a", 5, 1)))


# ---------------------------------------------------------------------------- against brute force


def _brute_force(ops: list[RegisterOp]) -> bool:
    """Every real-time-respecting order of the operations, with every subset of indeterminate ones."""
    for perm in itertools.permutations(ops):
        if any(b.ret is not None and b.ret < a.call for i, a in enumerate(perm) for b in perm[i + 1:]):
            continue
        open_ops = [k for k, o in enumerate(perm) if o.ret is None]
        for mask in range(1 << len(open_ops)):
            skip = {open_ops[j] for j in range(len(open_ops)) if mask >> j & 1}
            state, good = None, True
            for k, o in enumerate(perm):
                if k not in skip:
                    good, state = step(state, o)
                    if not good:
                        break
            if good:
                return True
    return False


def _random_ops(rng: random.Random, vals: list[str], *, sizes: tuple[int, int], spread: int, length: int,
                open_p: float, kinds: list[str], open_reads: str) -> list[RegisterOp]:
    """A small random register history: `open_p` of the operations indeterminate; an
    indeterminate read (which constrains nothing) is dropped or turned into a write."""
    ops: list[RegisterOp] = []
    t = 0
    for _c in range(rng.randint(*sizes)):
        t += rng.randint(0, 2)
        call = t + rng.randint(0, spread)
        ret = None if rng.random() < open_p else call + rng.randint(0, length)
        kind = rng.choice(kinds)
        if kind == READ and ret is None:
            if open_reads == "drop":
                continue
            kind = WRITE
        if kind == CAS:
            out = None if ret is None else rng.random() < 0.5
            ops.append(RegisterOp(CAS, (rng.choice([None, *vals]), rng.choice(vals)), call, ret, out))
        else:
            ops.append(RegisterOp(kind, rng.choice(vals if kind == WRITE else [None, *vals]), call, ret))
    return ops


def test_search_and_pruning_agree_with_brute_force_on_random_small_histories():
    rng = random.Random(2)
    pruned_some = 0
    for _ in range(400):
        ops = _random_ops(rng, ["a", "b", "c", "d", "e"], sizes=(1, 6), spread=3, length=6, open_p=0.3,
                          kinds=[WRITE, READ, CAS], open_reads="drop")
        expected = _brute_force(ops)
        assert search(ops, prune=False).valid == expected, ops
        assert search(ops).valid == expected, ops
        pruned_some += len(ops) - len(prune_unobserved(ops))
    assert pruned_some > 50  # the pruning was exercised, not vacuously agreed with


def test_search_agrees_with_brute_force_when_most_operations_are_indeterminate():
    # Indeterminate operations are only linearized right before an operation that depends on
    # them; this drives that rule through chains of indeterminate cas and failed cas that need
    # the register changed, with repeated values and None among them.
    rng = random.Random(7)
    verdicts = Counter()
    for _ in range(1500):
        ops = _random_ops(rng, ["a", "b", "c"], sizes=(2, 6), spread=2, length=4, open_p=0.55,
                          kinds=[WRITE, READ, CAS, CAS], open_reads="write")
        expected = _brute_force(ops)
        verdicts[expected] += 1
        assert search(ops, prune=False).valid == expected, ops
        assert search(ops).valid == expected, ops
        assert search(ops, lazy=False).valid == expected, ops
        assert decide(ops).valid == expected, ops
    assert verdicts[True] > 300 and verdicts[False] > 300


def test_a_leader_outage_full_of_timed_out_writes_is_decided_quickly():
    # Sixty writes time out during an outage and each is read back afterwards: every one of
    # them took effect, in call order. Trying every subset of them (as plain WGL does) never
    # ends; placing each only right before its reader takes a few steps per operation.
    def outage(extra=()):
        ops = [RegisterOp(WRITE, 0, 0.0, 0.1)]
        ops += [RegisterOp(WRITE, i, 1.0 + i * 0.01, None) for i in range(1, 61)]
        ops += [RegisterOp(READ, i, 2.0 + i * 0.01, 2.005 + i * 0.01) for i in range(1, 61)]
        ops += [RegisterOp(WRITE, 1000, 5.0, 5.1), RegisterOp(READ, 1000, 5.2, 5.3), *extra]
        return ops

    fine = search(outage(), max_steps=1_000_000)
    assert fine.valid is True and fine.steps < 20_000
    assert search(outage(), max_steps=100_000, lazy=False).valid is None  # plain WGL: out of budget
    assert decide(outage(), max_steps=100_000).valid is True  # the portfolio takes the lazy one
    # A read after the last write that returns a value from the outage is a violation; saying
    # so means ruling out every placement, which stays polynomial (~n^2 list scans here).
    broken = search(outage([RegisterOp(READ, 7, 6.0, 6.1)]), max_steps=1_000_000)
    assert broken.valid is False and broken.steps < 200_000
    assert broken.blocker is not None and broken.blocker.value == 7


def test_many_overlapping_stale_tolerant_reads_are_decided_quickly():
    # A write every 0.1 s; reads every 0.02 s that see the value of 1 s ago, each allowed 3 s
    # of staleness, so ~150 reads overlap every point. One read sees a value 7 s old.
    ops = [op(1, "write", i, i * 0.1, i * 0.1 + 0.05) for i in range(100)]
    ops += [op(2 + n % 4, "read", max(0, int((n * 0.02 - 1.0) / 0.1)), n * 0.02, n * 0.02 + 0.01, mode="default")
            for n in range(60, 500)]

    def staleness(o):
        return 3.0 if o.extra.get("mode") == "default" else 0.0

    fine = check_cas_register(history(*ops), budget_s=20, read_staleness_s=staleness)
    assert fine.valid is True and fine.details["per_key"]["k"]["steps"] < 50_000
    stale = op(9, "read", 20, 9.0, 9.01, mode="default", node="s3")
    res = check_cas_register(history(*ops, stale), budget_s=20, read_staleness_s=staleness)
    assert res.valid is False, res.details["unknown_keys"]
    assert res.details["per_key"]["k"]["steps"] < 50_000
    (failure,) = res.details["failures"]
    assert failure["cannot_place"]["call"] == 9.0 and failure["cannot_place"]["value"] == 20
    assert failure["stale_read"]["missed_by_s"] > 3.0
