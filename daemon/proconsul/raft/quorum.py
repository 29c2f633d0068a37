"""Quorum arithmetic for a single majority configuration: vote tallies and the committed index.

Pure functions over node IDs, with no Raft state, so they can be tested exhaustively.
Only simple majorities: proconsul changes membership one server at a time (dissertation
§4.1), so joint consensus is not needed. Non-voters are never passed in here: callers
give the voter set only, which is how a learner is kept out of every quorum.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping


class VoteResult(enum.Enum):
    PENDING = "pending"  # neither outcome is certain yet
    WON = "won"  # a majority granted
    LOST = "lost"  # a majority can no longer be reached


def majority(n_voters: int) -> int:
    """Smallest number of voters that forms a quorum (n//2 + 1)."""
    return n_voters // 2 + 1


def vote_result(voters: Collection[str], votes: Mapping[str, bool]) -> VoteResult:
    """Tally `votes` (node -> granted) over `voters`; votes from non-voters are ignored.

    An empty voter set can never win: a cluster with no voters must not elect anyone.
    """
    if not voters:
        return VoteResult.LOST
    granted = rejected = 0
    for v in voters:
        got = votes.get(v)
        if got is True:
            granted += 1
        elif got is False:
            rejected += 1
    q = majority(len(voters))
    if granted >= q:
        return VoteResult.WON
    if len(voters) - rejected < q:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[str], acks: Collection[str]) -> bool:
    """True when the voters among `acks` form a majority of `voters`."""
    if not voters:
        return False
    return sum(1 for v in voters if v in acks) >= majority(len(voters))


def committed_index(voters: Collection[str], match: Mapping[str, int]) -> int:
    """Highest index replicated on a majority of `voters` (missing voters count as 0).

    This is the majority's smallest match index: sort descending and take the quorum-th.
    The caller still has to check that the entry there is of the current term (§5.4.2).
    """
    if not voters:
        return 0
    indexes = sorted((match.get(v, 0) for v in voters), reverse=True)
    return indexes[majority(len(voters)) - 1]
