"""The grow-only set checker: acknowledged adds are never lost, failed ones never appear."""

from __future__ import annotations

from history_builders import history, op
from proconsul_sim.checkers import check_grow_only_set
from proconsul_sim.history import FAIL, INFO


def adds(*specs):
    """(element, outcome) pairs as adds by process 1, one second each."""
    return [op(1, "add", e, i, i + 0.5, t, key="s") for i, (e, t) in enumerate(specs)]


def test_every_acknowledged_add_present_is_valid():
    res = check_grow_only_set(history(*adds((1, "ok"), (2, "ok")), op(2, "read-all", [2, 1], 10, 11, key="s")))
    assert res.valid is True
    assert res.details["sets"]["s"]["present"] == 2 and res.details["sets"]["s"]["lost"] == []


def test_lost_acknowledged_add_is_reported():
    res = check_grow_only_set(history(*adds((1, "ok"), (2, "ok"), (3, "ok")),
                                      op(2, "read-all", [1, 3], 10, 11, key="s")))
    assert res.valid is False and res.details["sets"]["s"]["lost"] == [2]


def test_failed_add_must_not_appear_and_unknown_elements_are_reported():
    res = check_grow_only_set(history(*adds((1, "ok"), (2, FAIL)), op(2, "read-all", [1, 2, 9], 10, 11, key="s")))
    assert res.valid is False
    d = res.details["sets"]["s"]
    assert d["unexpected"] == [2, 9] and d["unexpected_failed_adds"] == [2] and d["lost"] == []


def test_indeterminate_adds_may_be_present_or_not():
    h = history(*adds((1, INFO), (2, INFO), (3, "ok")), op(2, "read-all", [1, 3], 10, 11, key="s"))
    res = check_grow_only_set(h)
    assert res.valid is True
    assert res.details["sets"]["s"]["recovered"] == 1 and res.details["sets"]["s"]["absent_indeterminate"] == 1


def test_add_acknowledged_during_the_final_read_is_not_required():
    h = history(op(1, "add", 1, 0, 12, key="s"), op(2, "read-all", [], 10, 11, key="s"))
    assert check_grow_only_set(h).valid is True
    h = history(op(1, "add", 1, 0, 9, key="s"), op(2, "read-all", [], 10, 11, key="s"))
    assert check_grow_only_set(h).valid is False


def test_the_last_read_is_the_final_one_and_sets_are_independent():
    h = history(*adds((1, "ok")), op(2, "read-all", [], 0.1, 0.2, key="s"),  # before the add completed
                op(2, "read-all", [1], 5, 6, key="s"),
                op(1, "add", "x", 0, 1, key="t"), op(2, "read-all", ["x"], 5, 6, key="t"),
                op(2, "read-all", None, 7, 8, INFO, key="s"))  # an indeterminate read tells nothing
    res = check_grow_only_set(h)
    assert res.valid is True and sorted(res.details["sets"]) == ["s", "t"]


def test_without_a_final_read_the_verdict_is_unknown():
    res = check_grow_only_set(history(*adds((1, "ok"))))
    assert res.valid == "unknown" and "no read-all" in res.details["sets"]["s"]["reason"]
    assert check_grow_only_set(history()).valid == "unknown"
