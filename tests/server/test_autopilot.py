"""Autopilot's removal rules (proconsul.server.autopilot.plan_removals), one Consul behaviour per test:
left servers go at once, failed voters only a minority at a time and never below min_quorum,
the leader never removes itself, servers the LAN pool does not know are kept."""

from __future__ import annotations

from proconsul.serf.member import STATUS_ALIVE, STATUS_FAILED, STATUS_LEFT
from proconsul.server.autopilot import Removal, plan_removals

ALIVE, FAILED, LEFT = STATUS_ALIVE, STATUS_FAILED, STATUS_LEFT


def lan(**status: int) -> dict[str, tuple[str, int]]:
    """Server IDs are the names here: {"a": ALIVE} -> {"a": ("a", ALIVE)}."""
    return {sid: (sid, st) for sid, st in status.items()}


def test_a_failed_fourth_voter_is_removed() -> None:
    plan = plan_removals("a", {"a", "b", "c", "d"}, set(), lan(a=ALIVE, b=ALIVE, c=ALIVE, d=FAILED), True, 0)
    assert plan == [Removal("d", "d", "failed")]


def test_left_servers_go_at_once_even_without_cleanup() -> None:
    plan = plan_removals("a", {"a", "b", "c"}, set(), lan(a=ALIVE, b=ALIVE, c=LEFT), False, 0)
    assert plan == [Removal("c", "c", "left")]
    assert plan_removals("a", {"a", "b", "c"}, set(), lan(a=ALIVE, b=ALIVE, c=FAILED), False, 0) == []


def test_only_a_minority_of_voters_per_pass() -> None:
    # Five voters, three failed: (5 - 1) // 2 = 2 may go, in ID order; the third is refused.
    refused: list[tuple[str, str]] = []
    plan = plan_removals("a", {"a", "b", "c", "d", "e"}, set(),
                         lan(a=ALIVE, b=ALIVE, c=FAILED, d=FAILED, e=FAILED), True, 0, refused)
    assert [r.server_id for r in plan] == ["c", "d"]
    assert refused == [("e", "removing a majority of the voters is not safe")]
    # Two voters, one failed: (2 - 1) // 2 = 0, nothing goes.
    assert plan_removals("a", {"a", "b"}, set(), lan(a=ALIVE, b=FAILED), True, 0) == []


def test_min_quorum_is_a_floor() -> None:
    refused: list[tuple[str, str]] = []
    assert plan_removals("a", {"a", "b", "c"}, set(), lan(a=ALIVE, b=ALIVE, c=FAILED), True, 3, refused) == []
    assert refused == [("c", "it would leave fewer voters than the minimum of 3")]
    plan = plan_removals("a", {"a", "b", "c", "d"}, set(), lan(a=ALIVE, b=ALIVE, c=ALIVE, d=FAILED), True, 3)
    assert [r.server_id for r in plan] == ["d"]


def test_left_removals_count_before_failed_ones() -> None:
    # Four voters, one left and one failed: after the left one, three remain, so one failed may go.
    plan = plan_removals("a", {"a", "b", "c", "d"}, set(), lan(a=ALIVE, b=LEFT, c=ALIVE, d=FAILED), True, 0)
    assert plan == [Removal("b", "b", "left"), Removal("d", "d", "failed")]


def test_never_itself_nor_unknown_servers_and_failed_learners_go_freely() -> None:
    assert plan_removals("a", {"a", "b", "c"}, set(), lan(a=FAILED, b=ALIVE, c=ALIVE), True, 0) == []
    assert plan_removals("a", {"a", "b", "c"}, set(), lan(a=LEFT, b=ALIVE, c=ALIVE), True, 0) == []
    assert plan_removals("a", {"a", "b", "c", "x"}, set(), lan(a=ALIVE, b=ALIVE, c=ALIVE), True, 0) == []
    plan = plan_removals("a", {"a", "b"}, {"l"}, lan(a=ALIVE, b=ALIVE, l=FAILED), True, 0)
    assert plan == [Removal("l", "l", "failed")]


def test_a_failed_server_goes_only_once_its_failure_settled() -> None:
    # Gossip says failed, but the leader has not seen it unhealthy for ServerStabilizationTime.
    servers = lan(a=ALIVE, b=ALIVE, c=ALIVE, d=FAILED, e=LEFT)
    voters = {"a", "b", "c", "d", "e"}
    plan = plan_removals("a", voters, set(), servers, True, 0, settled=lambda sid: False)
    assert plan == [Removal("e", "e", "left")]  # left servers never wait
    plan = plan_removals("a", voters, set(), servers, True, 0, settled=lambda sid: sid == "d")
    assert plan == [Removal("e", "e", "left"), Removal("d", "d", "failed")]
