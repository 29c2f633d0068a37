"""The mutex checker: hold windows from acquire(ok) to release invoke never overlap across processes."""

from __future__ import annotations

from history_builders import history, op
from proconsul_sim.checkers import check_mutex
from proconsul_sim.history import FAIL, INFO


def acq(p, start, end, type="ok", key="lock"):
    return op(p, "acquire", None, start, end, type, key=key, session=f"s{p}")


def rel(p, start, end, type="ok", key="lock"):
    return op(p, "release", None, start, end, type, key=key)


def test_alternating_holders_are_valid():
    h = history(acq(1, 0, 1), rel(1, 2, 3), acq(2, 2.5, 3.5), rel(2, 4, 5), acq(1, 4.5, 6), rel(1, 7, 8))
    res = check_mutex(h)
    assert res.valid is True
    assert res.details["locks"]["lock"]["acquired"] == 3 and res.details["overlaps"] == 0


def test_two_holders_at_once_are_reported_as_a_pair():
    h = history(acq(1, 0, 1), acq(2, 0.5, 2), rel(2, 3, 4), rel(1, 5, 6))
    res = check_mutex(h)
    assert res.valid is False
    (pair,) = res.details["overlapping_pairs"]
    assert {pair["first"]["process"], pair["second"]["process"]} == {1, 2}
    assert pair["second"]["held_from"] == 2 and pair["overlap_s"] == 1  # 2 .. 3, when 2 released
    assert pair["first"]["acquire"]["index"] == 0


def test_acquire_acknowledged_while_a_release_is_in_flight_is_not_an_overlap():
    # The release took effect somewhere in [3, 6]; the acquire may have come after it.
    assert check_mutex(history(acq(1, 0, 1), rel(1, 3, 6), acq(2, 2, 4))).valid is True
    # Same with a release whose outcome is unknown: it may have taken effect at any time after 3.
    assert check_mutex(history(acq(1, 0, 1), rel(1, 3, 6, INFO), acq(2, 2, 4))).valid is True
    # But an acquire acknowledged before the holder even started releasing is a violation.
    assert check_mutex(history(acq(1, 0, 1), rel(1, 3, 6, INFO), acq(2, 2, 2.5))).valid is False


def test_indeterminate_or_refused_acquire_is_not_a_hold():
    h = history(acq(1, 0, 1, INFO), acq(2, 0.5, 2), acq(3, 1, 1.5, FAIL), rel(2, 5, 6))
    res = check_mutex(h)
    assert res.valid is True and res.details["locks"]["lock"]["acquires_indeterminate"] == 1


def test_a_hold_never_released_lasts_to_the_end():
    h = history(acq(1, 0, 1), acq(2, 10, 11), rel(2, 12, 13))
    res = check_mutex(h)
    assert res.valid is False
    assert res.details["locks"]["lock"]["open_windows"] == 1
    assert res.details["overlapping_pairs"][0]["first"]["held_until"] is None


def test_locks_are_independent_and_reacquire_by_the_holder_is_fine():
    h = history(acq(1, 0, 1, key="a"), acq(2, 0, 1, key="b"), acq(1, 1.5, 2, key="a"),
                rel(1, 3, 4, key="a"), rel(2, 3, 4, key="b"), rel(2, 5, 6, key="b"))
    res = check_mutex(h)
    assert res.valid is True
    assert res.details["locks"]["b"]["stray_releases"] == 1
