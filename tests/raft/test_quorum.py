"""Quorum arithmetic (proconsul.raft.quorum): exhaustive over small clusters, plus properties."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from proconsul.raft.quorum import VoteResult, committed_index, has_quorum, majority, vote_result


def test_majority() -> None:
    assert [majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


def test_vote_result_exhaustive() -> None:
    """Every assignment of granted/rejected/missing for 1..5 voters, against a brute-force count."""
    for n in range(1, 6):
        voters = [f"n{i}" for i in range(n)]
        for outcome in itertools.product([True, False, None], repeat=n):
            votes = {v: o for v, o in zip(voters, outcome, strict=True) if o is not None}
            granted = sum(1 for o in outcome if o is True)
            pending = sum(1 for o in outcome if o is None)
            q = n // 2 + 1
            want = (VoteResult.WON if granted >= q
                    else VoteResult.LOST if granted + pending < q else VoteResult.PENDING)
            assert vote_result(voters, votes) == want, (n, outcome)


def test_votes_of_non_voters_do_not_count() -> None:
    assert vote_result(["a", "b", "c"], {"a": True, "x": True, "y": True}) == VoteResult.PENDING
    assert vote_result(["a", "b", "c"], {"a": True, "b": True, "x": False}) == VoteResult.WON


def test_empty_config_never_wins() -> None:
    assert vote_result([], {"a": True}) == VoteResult.LOST
    assert not has_quorum([], ["a"])
    assert committed_index([], {"a": 5}) == 0


def test_committed_index_examples() -> None:
    assert committed_index(["a"], {"a": 7}) == 7
    assert committed_index(["a", "b", "c"], {"a": 5, "b": 3, "c": 1}) == 3
    assert committed_index(["a", "b", "c"], {"a": 5}) == 0  # missing voters count as 0
    assert committed_index(["a", "b", "c", "d"], {"a": 9, "b": 8, "c": 2, "d": 1}) == 2
    # a non-voter with a high match index does not help
    assert committed_index(["a", "b", "c"], {"a": 9, "x": 9, "b": 1, "c": 1}) == 1


@given(st.dictionaries(st.sampled_from("abcdefg"), st.integers(0, 50), min_size=1))
def test_committed_index_is_on_a_majority_and_maximal(match: dict[str, int]) -> None:
    voters = sorted(match)
    idx = committed_index(voters, match)
    on = [v for v in voters if match[v] >= idx]
    assert has_quorum(voters, on)
    # nothing higher is on a majority
    assert not has_quorum(voters, [v for v in voters if match[v] >= idx + 1])


@given(st.lists(st.sampled_from("abcdefg"), unique=True, min_size=1),
       st.lists(st.sampled_from("abcdefgxyz"), unique=True))
def test_has_quorum_matches_count(voters: list[str], acks: list[str]) -> None:
    assert has_quorum(voters, acks) == (len(set(voters) & set(acks)) > len(voters) // 2)
