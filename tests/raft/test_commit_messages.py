"""How a leader tells followers the commit index: at once (the default), or deferred
(`RaftNode(defer_commit=True)`, what the driver runs) so it rides on the next entries.

Driven through the in-process harness (tests/sim/raft_sim.py) in instant mode; every message
handed to the network is in `Cluster.sent`.
"""

from __future__ import annotations

from proconsul.raft.core import MsgType
from raft_sim import Cluster


def _apps(c: Cluster, to: str) -> list:
    return [m for m in c.sent if m.type == MsgType.APP and m.to == to]


def _one_write_round(c: Cluster, data: bytes) -> None:
    """Propose on the leader `a` and deliver until quiet (FIFO)."""
    c.sent.clear()
    assert c.propose("a", data) is not None
    c.stabilize()


def test_eager_commit_one_commit_message_per_follower() -> None:
    """Default mode: each follower gets the entry, then exactly one AppendEntries with the commit
    (before, the follower whose answer committed the entry got it twice)."""
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    _one_write_round(c, b"x")
    for f in ("b", "c"):
        apps = _apps(c, f)
        assert [len(m.entries) for m in apps] == [1, 0], apps
        assert apps[1].commit == c.raft("a").commit_index
        assert c.raft(f).commit_index == c.raft("a").commit_index
    assert len(c.nodes["b"].fsm) == len(c.nodes["c"].fsm) == 1


def test_deferred_commit_rides_on_the_next_entries() -> None:
    c = Cluster(["a", "b", "c"], defer_commit=True)
    c.elect("a")
    c.raft("a").flush_commit()  # the new term's NOOP commit, told at once
    c.stabilize()
    lead = c.raft("a")
    assert not lead.commit_unsent()

    _one_write_round(c, b"w1")
    first = lead.commit_index
    # The leader committed and applied w1 (its writer is answered) without any commit-only
    # message: each follower got one AppendEntries and answered it once.
    for f in ("b", "c"):
        apps = _apps(c, f)
        assert [len(m.entries) for m in apps] == [1], apps
        assert len([m for m in c.sent if m.frm == f and m.type == MsgType.APP_RESP]) == 1
        assert c.raft(f).commit_index < first  # not told yet
    assert [d for _, d in c.nodes["a"].fsm] == [b"w1"]
    assert c.nodes["b"].fsm == [] and c.nodes["c"].fsm == []
    assert lead.commit_unsent()

    # The next write's AppendEntries carries w1's commit: the followers apply w1 with it.
    _one_write_round(c, b"w2")
    for f in ("b", "c"):
        apps = _apps(c, f)
        assert len(apps) == 1 and len(apps[0].entries) == 1 and apps[0].commit >= first
        assert c.raft(f).commit_index == first
        assert [d for _, d in c.nodes[f].fsm] == [b"w1"]
    assert lead.commit_unsent()  # w2's commit is the one waiting now

    # flush_commit: one commit-only message to each follower, then nothing is unsent.
    c.sent.clear()
    lead.flush_commit()
    c.stabilize()
    for f in ("b", "c"):
        apps = _apps(c, f)
        assert [len(m.entries) for m in apps] == [0] and apps[0].commit == lead.commit_index
        assert [d for _, d in c.nodes[f].fsm] == [b"w1", b"w2"]
    assert not lead.commit_unsent()
    # Nothing more to tell: a second flush sends nothing.
    c.sent.clear()
    lead.flush_commit()
    c.stabilize()
    assert not [m for m in c.sent if m.type == MsgType.APP]


def test_deferred_commit_reaches_followers_with_a_heartbeat() -> None:
    """Without another write or a flush, the leader's heartbeat carries the commit index."""
    c = Cluster(["a", "b", "c"], defer_commit=True, heartbeat_tick=1)
    c.elect("a")
    _one_write_round(c, b"w1")
    lead = c.raft("a")
    assert c.raft("b").commit_index < lead.commit_index
    c.tick("a")
    c.stabilize()
    assert not lead.commit_unsent()
    for f in ("b", "c"):
        assert c.raft(f).commit_index == lead.commit_index
        assert [d for _, d in c.nodes[f].fsm] == [b"w1"]


def test_deferred_commit_is_never_a_follower_answer_or_a_lost_write() -> None:
    """The leader's own commit (what acknowledges a write) does not wait for any flush, and a
    follower that becomes leader commits what it had with its first entry."""
    c = Cluster(["a", "b", "c"], defer_commit=True)
    c.elect("a")
    c.raft("a").flush_commit()
    c.stabilize()
    for k in range(5):
        _one_write_round(c, f"w{k}".encode())
    assert [d for _, d in c.nodes["a"].fsm] == [f"w{k}".encode() for k in range(5)]
    assert c.raft("b").commit_index < c.raft("a").commit_index
    c.crash("a")
    for f in ("b", "c"):  # out of the old leader's lease, without campaigning on their own
        c.raft(f)._election_elapsed = c.raft(f).election_tick
    c.elect("b")
    c.raft("b").flush_commit()
    c.stabilize()
    for f in ("b", "c"):
        assert [d for _, d in c.nodes[f].fsm] == [f"w{k}".encode() for k in range(5)]
