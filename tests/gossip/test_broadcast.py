"""Transmit-limited broadcast queue: limits, invalidation, ordering and packing."""

from __future__ import annotations

import pytest
from proconsul.gossip.broadcast import EVENT, MEMBERLIST, QUERY, TransmitLimitedQueue, retransmit_limit


@pytest.mark.parametrize(
    ("mult", "n", "limit"),
    [(4, 0, 0), (4, 1, 4), (4, 9, 4), (4, 10, 8), (4, 99, 8), (4, 100, 12), (3, 10_000, 15), (2, 5, 2)],
)
def test_retransmit_limit_is_mult_times_ceil_log10(mult: int, n: int, limit: int) -> None:
    assert retransmit_limit(mult, n) == limit


def test_each_broadcast_is_sent_its_limit_then_dropped() -> None:
    q = TransmitLimitedQueue(retransmit_mult=2)
    h = q.queue(b"a", key="n1")
    sends = 0
    while q.pending(h):
        assert q.get(overhead=3, limit=1400, num_nodes=5) == [b"a"]
        sends += 1
    assert sends == retransmit_limit(2, 5) == 2
    assert len(q) == 0
    assert q.get(3, 1400, 5) == []


def test_newer_message_about_same_member_replaces_older() -> None:
    q = TransmitLimitedQueue(4)
    old = q.queue(b"alive-1", key="n1")
    q.queue(b"other", key="n2")
    new = q.queue(b"suspect-1", key="n1")
    assert not q.pending(old) and q.pending(new)
    assert sorted(q.get(0, 1400, 3)) == [b"other", b"suspect-1"]


def test_unkeyed_messages_never_invalidate_each_other() -> None:
    q = TransmitLimitedQueue(4)
    q.queue(b"e1")
    q.queue(b"e2")
    assert len(q) == 2


def test_fewest_transmits_first_then_newest() -> None:
    q = TransmitLimitedQueue(10)
    q.queue(b"old", key="a")
    assert q.get(0, 3, 3) == [b"old"]  # room for one only: old now has 1 transmit
    q.queue(b"mid", key="b")
    q.queue(b"new", key="c")
    # Fresh ones (0 transmits) go before "old"; among them the newest first.
    assert q.get(0, 6, 3) == [b"new", b"mid"]
    q.queue(b"fresh", key="d")
    # Now all but "fresh" were sent once: fresh first, then the rest newest first.
    assert q.get(0, 100, 3) == [b"fresh", b"new", b"mid", b"old"]


def test_packing_respects_space_and_skips_to_smaller_ones() -> None:
    q = TransmitLimitedQueue(4)
    q.queue(b"x" * 10, key="small-old")
    q.queue(b"y" * 100, key="big-new")
    got = q.get(overhead=3, limit=50, num_nodes=3)
    assert got == [b"x" * 10]  # the big one did not fit; the smaller, older one still went
    assert sum(len(m) + 3 for m in got) <= 50
    assert q.get(3, 0, 3) == []


def test_prune_keeps_the_least_sent() -> None:
    q = TransmitLimitedQueue(10)
    q.queue(b"a", key="a")
    q.get(0, 1, 3)
    hb = q.queue(b"b", key="b")
    hc = q.queue(b"c", key="c")
    q.prune(2)
    assert len(q) == 2 and q.pending(hb) and q.pending(hc)
    q.reset()
    assert len(q) == 0


def test_depth_per_kind_follows_queueing_replacement_and_removal() -> None:
    q = TransmitLimitedQueue(retransmit_mult=1)
    q.queue(b"alive-a", key="a")
    q.queue(b"alive-a2", key="a")  # replaces: still one
    q.queue(b"event", kind=EVENT)
    q.queue(b"query", kind=QUERY)
    assert (q.depth(MEMBERLIST), q.depth(EVENT), q.depth(QUERY)) == (1, 1, 1)
    q.get(overhead=0, limit=1000, num_nodes=1)  # one transmit each is the limit with one node
    assert (q.depth(MEMBERLIST), q.depth(EVENT), q.depth(QUERY)) == (0, 0, 0)
    q.queue(b"event", kind=EVENT)
    q.queue(b"event2", kind=EVENT)
    q.prune(1)
    assert q.depth(EVENT) == 1
    q.reset()
    assert q.depth(EVENT) == 0
