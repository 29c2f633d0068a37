"""The discovery checker: a faulted node leaves `?passing`, a healed one comes back, within the bound."""

from __future__ import annotations

from proconsul_sim.checkers import check_discovery


def samples(times, passing):
    return [{"event": "sample", "time": t, "passing": list(passing)} for t in times]


def fault(t, node):
    return {"event": "fault", "time": t, "node": node}


def heal(t, node=None):
    return {"event": "heal", "time": t, "node": node} if node else {"event": "heal", "time": t}


def test_leaving_and_returning_within_the_bound_with_measured_delays():
    obs = (samples([1, 2, 3], ["a", "b"]) + [fault(3.5, "b")] + samples([4, 5], ["a", "b"])
           + samples([6, 7, 8, 9], ["a"]) + [heal(9.5, "b")] + samples([10, 11], ["a"])
           + samples([12, 13, 14], ["a", "b"]))
    res = check_discovery(obs, bound_s=5)
    assert res.valid is True, res.details
    d = res.details
    assert d["max_leave_delay_s"] == 2.5 and d["max_return_delay_s"] == 2.5
    assert [(e["node"], e["event"], e["verdict"]) for e in d["events"]] == [("b", "fault", "ok"), ("b", "heal", "ok")]


def test_a_node_still_passing_after_the_bound_is_a_violation():
    obs = [fault(0, "b")] + samples([1, 2, 3, 4, 5, 6, 7], ["a", "b"]) + samples([8], ["a"])
    res = check_discovery(obs, bound_s=5)
    assert res.valid is False
    (e,) = res.details["events"]
    assert e["verdict"] == "violation" and e["wrong_samples_after_bound"] == [6, 7]
    assert e["delay_s"] == 8  # it did leave, late


def test_a_healed_node_that_never_returns_or_flaps_is_a_violation():
    obs = [fault(0, "b")] + samples([1, 2], ["a"]) + [heal(3, "b")] + samples([4, 6, 8, 10], ["a"])
    assert check_discovery(obs, bound_s=5).valid is False
    obs = ([fault(0, "b")] + samples([1, 2], ["a"]) + [heal(3, "b")] + samples([4, 5], ["a", "b"])
           + samples([9], ["a"]) + samples([10], ["a", "b"]))
    res = check_discovery(obs, bound_s=5)
    assert res.valid is False and res.details["events"][1]["wrong_samples_after_bound"] == [9]


def test_a_flap_before_the_bound_is_tolerated():
    obs = [fault(0, "b")] + samples([1], ["a"]) + samples([2], ["a", "b"]) + samples([3, 8, 9], ["a"])
    res = check_discovery(obs, bound_s=5)
    assert res.valid is True and res.details["events"][0]["delay_s"] == 3


def test_a_change_cut_short_before_the_samples_agree_is_inconclusive():
    obs = [fault(0, "b")] + samples([1], ["a", "b"]) + [heal(2, "b")] + samples([3, 4], ["a", "b"])
    res = check_discovery(obs, bound_s=5)
    assert res.valid is True
    assert [e["verdict"] for e in res.details["events"]] == ["inconclusive", "ok"]
    assert res.details["inconclusive"] == 1
    only = [fault(0, "b")] + samples([1], ["a", "b"])
    assert check_discovery(only, bound_s=5).valid == "unknown"
    assert check_discovery(samples([1], ["a"]), bound_s=5).valid == "unknown"


def test_heal_without_a_node_heals_every_faulted_node():
    obs = ([fault(0, "b"), fault(0.5, "c"), fault(0.7, "c")] + samples([1, 2], ["a"]) + [heal(3)]
           + samples([4, 5, 9], ["a", "b", "c"]))
    res = check_discovery(obs, bound_s=5)
    assert res.valid is True
    assert sorted((e["node"], e["event"]) for e in res.details["events"]) == [
        ("b", "fault"), ("b", "heal"), ("c", "fault"), ("c", "heal")]


def test_bad_observations_are_clear_errors():
    import pytest

    with pytest.raises(ValueError, match="unknown event"):
        check_discovery([{"event": "boom", "time": 1}], 5)
    with pytest.raises(ValueError, match="no time"):
        check_discovery([{"event": "sample", "passing": []}], 5)
    with pytest.raises(ValueError, match="name its node"):
        check_discovery([{"event": "fault", "time": 1}], 5)
