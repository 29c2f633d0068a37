"""RaftNode beyond the paper's basics: pre-vote, check-quorum and lease, back-off, pipelining and
batching, snapshots, membership, leadership transfer, ReadIndex and the Ready contract.

Driven through the in-process harness (tests/sim/raft_sim.py) in instant mode.
"""

from __future__ import annotations

import random

import pytest
from proconsul.raft.core import (
    ConfChange,
    ConfChangeOp,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    MemoryStorage,
    Message,
    MsgType,
    NotLeader,
    ProposalRejected,
    RaftError,
    RaftNode,
    Role,
)
from raft_sim import Cluster


def set_log(c: Cluster, node: str, terms: list[int], term: int, commit: int = 0) -> None:
    s = MemoryStorage(c.initial_config)
    s.append([Entry(i + 1, t, EntryKind.NORMAL, f"{i + 1}:{t}".encode()) for i, t in enumerate(terms)])
    s.set_hard_state(HardState(term, None, commit))
    c.nodes[node].storage = s
    c.crash(node)
    c.restart(node)


# ------------------------------------------------------------------------------ pre-vote


def test_prevote_partitioned_node_does_not_disrupt_leader() -> None:
    """A node cut off for many election timeouts rejoins without bumping anyone's term (§9.6)."""
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    term = c.raft("a").term
    c.isolate("c")
    c.tick_all(100)  # c keeps pre-voting and failing; its term never moves
    assert c.raft("c").term == term and c.raft("c").role == Role.PRE_CANDIDATE
    c.heal()
    c.tick_all(5)
    assert c.raft("a").role == Role.LEADER and all(c.raft(i).term == term for i in "abc")
    assert c.raft("c").leader == "a"


def test_without_prevote_rejoining_node_disrupts() -> None:
    """The contrast: without pre-vote and check-quorum, the rejoining node forces a new term."""
    c = Cluster(["a", "b", "c"], pre_vote=False, check_quorum=False)
    c.elect("a")
    term = c.raft("a").term
    c.isolate("c")
    c.tick_all(100)
    assert c.raft("c").term > term + 3
    c.heal()
    c.tick_all(50)
    assert c.raft("a").term > term


def test_prevote_persists_nothing() -> None:
    """A pre-candidate changes neither term nor vote: its Ready carries no hard state."""
    r = RaftNode("a", MemoryStorage(Configuration(frozenset("abc"))), random.Random(1))
    r.campaign()
    rd = r.ready()
    assert rd is not None and r.role == Role.PRE_CANDIDATE
    assert rd.hard_state is None and {m.type for m in rd.messages} == {MsgType.PRE_VOTE}
    assert all(m.term == 1 for m in rd.messages) and r.term == 0


# ------------------------------------------------------------------------------ check quorum, lease


def test_check_quorum_leader_steps_down_when_isolated() -> None:
    c = Cluster(["a", "b", "c"], election_tick=10)
    c.elect("a")
    c.isolate("a")
    for _ in range(9):
        c.tick("a")
    assert c.raft("a").role == Role.LEADER
    c.tick("a", 12)
    assert c.raft("a").role == Role.FOLLOWER and c.raft("a").leader is None


def test_check_quorum_leader_stays_with_quorum() -> None:
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    c.isolate("c")
    c.tick_all(50)
    assert c.raft("a").role == Role.LEADER


def test_lease_follower_ignores_higher_term_vote_request() -> None:
    """With check-quorum, a follower that heard from its leader within the election timeout
    ignores vote requests entirely: no term bump, no reply."""
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    b = c.raft("b")
    term = b.term
    c.sent.clear()
    b.step(Message(MsgType.VOTE, "b", "c", term + 5, index=100, log_term=term + 4))
    c.stabilize()
    assert b.term == term and b.vote == "a" and not [m for m in c.sent if m.frm == "b"]
    # Once the lease expires (no leader contact for an election timeout) it does answer.
    c.isolate("a")
    c.tick("b", 10)
    b.step(Message(MsgType.VOTE, "b", "c", term + 5, index=100, log_term=term + 4))
    assert b.term == term + 5 and b.vote == "c"


def test_one_way_partition_leader_cannot_hear_steps_down_then_stable() -> None:
    """a can send but not receive: check-quorum makes it step down; the lease and pre-vote then
    let one of the others lead, and a (which still hears them) follows."""
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    c.cut("b", "a", one_way=True)
    c.cut("c", "a", one_way=True)
    c.tick_all(60)
    leader = c.leader()
    assert leader in ("b", "c")
    c.heal()
    c.tick_all(30)
    assert c.leader() == leader


# ------------------------------------------------------------------------------ replication


def test_conflict_backoff_in_one_round_trip() -> None:
    """A follower with a long divergent suffix is repaired after one rejection, thanks to the hint."""
    c = Cluster(["a", "b", "c"], pre_vote=False, check_quorum=False)
    set_log(c, "a", [1, 1, 1, 4, 4, 4, 4], term=4)
    set_log(c, "c", [1, 1, 1, 4, 4, 4, 4], term=4)
    set_log(c, "b", [1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3], term=3)
    c.sent.clear()
    c.elect("a")
    rejects = [m for m in c.sent if m.type == MsgType.APP_RESP and m.frm == "b" and m.reject]
    assert len(rejects) == 1
    assert [e.term for e in c.nodes["b"].storage.entries(1, 9)] == [1, 1, 1, 4, 4, 4, 4, 5]


def test_short_follower_backs_off_to_its_last_index() -> None:
    c = Cluster(["a", "b", "c"], pre_vote=False, check_quorum=False)
    set_log(c, "a", [1] * 30, term=1)
    set_log(c, "c", [1] * 30, term=1)
    set_log(c, "b", [1] * 3, term=1)
    c.sent.clear()
    c.elect("a")
    rejects = [m for m in c.sent if m.type == MsgType.APP_RESP and m.frm == "b" and m.reject]
    assert len(rejects) == 1 and rejects[0].reject_hint == 3
    assert c.raft("b").last_index == 31


def test_batching_many_proposals_one_message() -> None:
    """Proposals made before ready() go out as one AppendEntries per follower."""
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    c.sent.clear()
    for k in range(50):
        c.propose("a", f"v{k}".encode())
    c.process_ready("a")
    apps = [m for m in c.sent if m.type == MsgType.APP]
    assert len(apps) == 2 and all(len(m.entries) == 50 for m in apps)


def test_pipelining_bounded_inflight_and_batch_size() -> None:
    c = Cluster(["a", "b", "c"], max_entries_per_msg=10, max_inflight=3)
    c.elect("a")
    c.sent.clear()
    for k in range(100):
        c.propose("a", f"v{k}".encode())
    c.process_ready("a")  # no acks yet: at most 3 messages of 10 entries per follower
    to_b = [m for m in c.sent if m.type == MsgType.APP and m.to == "b"]
    assert len(to_b) == 3 and [len(m.entries) for m in to_b] == [10, 10, 10]
    assert [m.index for m in to_b] == [to_b[0].index, to_b[0].index + 10, to_b[0].index + 20]
    c.stabilize()
    assert c.raft("b").commit_index == c.raft("a").last_index == c.raft("a").commit_index
    assert len(c.nodes["c"].fsm) == 100


def test_lost_message_in_replicate_state_recovers() -> None:
    c = Cluster(["a", "b", "c"], max_inflight=2)
    c.elect("a")
    c.drop = lambda m: m.type == MsgType.APP and m.to == "b"
    for k in range(5):
        c.propose("a", f"v{k}".encode())
        c.stabilize()
    c.drop = None
    c.tick_all(3)
    assert c.raft("b").commit_index == c.raft("a").commit_index


# ------------------------------------------------------------------------------ snapshots


def test_snapshot_install_for_far_behind_follower() -> None:
    c = Cluster(["a", "b", "c"], snapshot_threshold=10)
    c.trailing_logs = 2
    c.elect("a")
    c.isolate("c")
    for k in range(40):
        c.propose("a", f"v{k}".encode())
        c.stabilize()
    s = c.nodes["a"].storage
    assert s.snapshot_meta().index >= 30 and s.first_index() > 5  # compacted
    c.sent.clear()
    c.heal()
    c.tick_all(3)
    snaps = [m for m in c.sent if m.type == MsgType.SNAP and m.to == "c"]
    assert len(snaps) == 1
    c.propose("a", b"after")
    c.tick_all(2)
    assert c.nodes["c"].fsm == c.nodes["a"].fsm and c.nodes["c"].fsm[-1][1] == b"after"
    assert c.nodes["c"].storage.snapshot_meta().index == snaps[0].snapshot.meta.index  # type: ignore[union-attr]


def test_lost_snapshot_is_resent() -> None:
    c = Cluster(["a", "b", "c"], snapshot_threshold=5)
    c.trailing_logs = 0
    c.elect("a")
    c.isolate("c")
    for k in range(20):
        c.propose("a", f"v{k}".encode())
        c.stabilize()
    c.heal()
    c.drop = lambda m: m.type == MsgType.SNAP
    c.tick_all(3)
    c.drop = None
    c.tick_all(15)
    assert c.nodes["c"].fsm == c.nodes["a"].fsm


def test_snapshot_due_and_make_snapshot() -> None:
    s = MemoryStorage(Configuration(frozenset("a")))
    r = RaftNode("a", s, random.Random(0), snapshot_threshold=3)
    r.campaign()
    for k in range(4):
        r.propose(b"x%d" % k)
    for _ in range(3):
        rd = r.ready()
        if rd is None:
            break
        s.append(rd.entries)
        r.advance(rd)
    assert r.snapshot_due() == 5
    snap = r.make_snapshot(5, b"state")
    assert (snap.meta.index, snap.meta.term, snap.meta.config.voters) == (5, 1, {"a"})
    s.create_snapshot(snap)
    s.compact(5)
    assert r.snapshot_due() is None and s.first_index() == 6


def test_restart_from_storage() -> None:
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    for k in range(5):
        c.propose("a", f"v{k}".encode())
    c.stabilize()
    term = c.raft("b").term
    c.crash("b")
    c.restart("b")
    b = c.raft("b")
    assert b.term == term and b.vote == "a" and b.last_index == c.raft("a").last_index
    assert b.applied_index == 0  # the FSM replays the log after a restart without snapshot
    c.tick_all(2)
    assert c.nodes["b"].fsm == c.nodes["a"].fsm


# ------------------------------------------------------------------------------ membership


def test_add_nonvoter_then_promote() -> None:
    c = Cluster(["a", "b", "c", "d"], voters=["a", "b", "c"])
    c.elect("a")
    c.propose("a", b"before")
    c.stabilize()
    assert c.conf_change("a", ConfChangeOp.ADD_NONVOTER, "d") is not None
    c.tick_all(3)
    assert c.nodes["d"].fsm == c.nodes["a"].fsm
    assert c.raft("d").config.learners == {"d"}
    # a non-voter never campaigns
    c.tick("d", 100)
    assert c.raft("d").role == Role.FOLLOWER
    # and does not count for quorum: with b and c down, d's ack does not commit
    c.isolate("b")
    c.isolate("c")
    p = c.propose("a", b"x")
    c.stabilize()
    assert p is not None and c.raft("a").commit_index < p.index
    c.heal()
    c.tick_all(2)
    assert c.conf_change("a", ConfChangeOp.PROMOTE, "d") is not None
    c.stabilize()
    assert c.raft("a").config.voters == {"a", "b", "c", "d"}
    c.isolate("a")
    c.tick_all(40)
    assert c.leader() in ("b", "c", "d")


def test_conf_change_one_at_a_time_and_effective_when_appended() -> None:
    c = Cluster(["a", "b", "c", "d"], voters=["a", "b", "c"])
    c.elect("a")
    c.drop = lambda m: m.type == MsgType.APP_RESP  # nothing commits
    assert c.conf_change("a", ConfChangeOp.ADD_VOTER, "d") is not None
    c.stabilize()
    # in force on every server that appended it, although uncommitted
    assert c.raft("b").config.voters == {"a", "b", "c", "d"}
    with pytest.raises(ProposalRejected):
        c.raft("a").propose_conf_change(ConfChange(ConfChangeOp.REMOVE, "b"))
    c.drop = None
    c.tick_all(3)
    assert c.conf_change("a", ConfChangeOp.REMOVE, "b") is not None


def test_uncommitted_conf_change_is_reverted_on_truncation() -> None:
    """A server uses the latest configuration in its log; when that entry is truncated away by a
    new leader, the server falls back to the previous one (dissertation §4.1)."""
    c = Cluster(["a", "b", "c", "d"], voters=["a", "b", "c"], pre_vote=False, check_quorum=False)
    c.elect("a")
    c.tick_all(1)
    c.drop = lambda m: m.frm == "a"  # a's conf entry never leaves a
    c.conf_change("a", ConfChangeOp.ADD_VOTER, "d")
    c.stabilize()
    assert c.raft("a").config.voters == {"a", "b", "c", "d"}
    c.crash("a")
    c.drop = None
    c.elect("b")
    c.propose("b", b"overwrites a's conf entry")
    c.stabilize()
    c.restart("a")
    c.tick_all(2)
    assert c.raft("a").config.voters == {"a", "b", "c"}
    assert c.raft("a").last_index == c.raft("b").last_index


def test_remove_follower_and_leader_steps_down_when_removed() -> None:
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    assert c.conf_change("a", ConfChangeOp.REMOVE, "c") is not None
    c.tick_all(2)
    assert c.raft("a").config.voters == {"a", "b"}
    assert c.conf_change("a", ConfChangeOp.REMOVE, "a") is not None
    c.tick_all(2)
    assert c.raft("a").role == Role.FOLLOWER and not c.raft("a").promotable()
    c.tick_all(40)
    assert c.leader() == "b"
    # c and a are out: neither ever disrupts b
    assert c.raft("b").role == Role.LEADER


def test_cannot_remove_last_voter() -> None:
    c = Cluster(["a"])
    c.elect("a")
    c.tick_all(1)
    with pytest.raises(ProposalRejected):
        c.raft("a").propose_conf_change(ConfChange(ConfChangeOp.REMOVE, "a"))


# ------------------------------------------------------------------------------ leadership transfer


def test_leadership_transfer() -> None:
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    c.raft("a").transfer_leadership("b")
    c.stabilize()
    assert c.leader() == "b" and c.raft("a").role == Role.FOLLOWER


def test_leadership_transfer_to_lagging_node_catches_it_up_first() -> None:
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    c.drop = lambda m: m.to == "c"
    for k in range(5):
        c.propose("a", f"v{k}".encode())
    c.stabilize()
    c.drop = None
    c.raft("a").transfer_leadership("c")
    with pytest.raises(ProposalRejected):
        c.raft("a").propose(b"during")
    c.tick_all(3)
    assert c.leader() == "c"
    assert len(c.nodes["c"].fsm) == 5


def test_leadership_transfer_times_out() -> None:
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    c.isolate("c")
    c.raft("a").transfer_leadership("c")
    c.tick_all(25)
    assert c.leader() == "a"
    assert c.propose("a", b"ok again") is not None


# ------------------------------------------------------------------------------ ReadIndex


def test_read_index_confirmed_by_heartbeat_quorum() -> None:
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    c.propose("a", b"w")
    c.stabilize()
    commit = c.raft("a").commit_index
    ctx = c.read("a")
    c.stabilize()
    assert c.read_results == [("a", commit, ctx)]


def test_read_index_not_confirmed_without_quorum() -> None:
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    c.isolate("a")
    c.read("a")
    c.stabilize()
    assert c.read_results == []


def test_read_index_waits_for_leaders_first_commit() -> None:
    c = Cluster(["a", "b", "c"])
    c.drop = lambda m: m.type == MsgType.APP_RESP
    c.elect("a")
    ctx = c.read("a")
    c.stabilize()
    assert c.read_results == []
    c.drop = None
    c.tick_all(2)
    assert [r[2] for r in c.read_results] == [ctx]
    assert c.read_results[0][1] == c.raft("a").commit_index


def test_read_index_on_follower_raises_not_leader() -> None:
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    with pytest.raises(NotLeader) as e:
        c.raft("b").read_index(b"x")
    assert e.value.leader_hint == "a"


def test_single_node_read_index_is_immediate() -> None:
    c = Cluster(["a"])
    c.elect("a")
    c.stabilize()
    c.read("a")
    c.stabilize()
    assert len(c.read_results) == 1


# ------------------------------------------------------------------------------ Ready contract


def test_follower_ack_is_never_an_early_message() -> None:
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    c.propose("a", b"x")
    c.process_ready("a")
    c.stabilize()
    for i in ("b", "c"):
        r = c.raft(i)
        r.step(Message(MsgType.APP, i, "a", r.term, index=r.last_index, log_term=r.term,
                       entries=(Entry(r.last_index + 1, r.term, EntryKind.NORMAL, b"y"),),
                       commit=r.commit_index))
        rd = r.ready()
        assert rd is not None and rd.entries and not rd.early_messages
        assert [m.type for m in rd.messages] == [MsgType.APP_RESP]
        r.advance(rd)


def test_leader_replication_is_early_but_not_in_a_term_changing_ready() -> None:
    s = MemoryStorage(Configuration(frozenset("ab")))
    r = RaftNode("a", s, random.Random(0), pre_vote=False)
    r.campaign()
    r.step(Message(MsgType.VOTE_RESP, "a", "b", 1))
    assert r.role == Role.LEADER
    rd = r.ready()
    assert rd is not None and rd.hard_state is not None and rd.hard_state.term == 1
    assert not rd.early_messages  # term 1 is not durable yet: everything waits for the fsync
    s.append(rd.entries)
    r.advance(rd)
    r.step(Message(MsgType.APP_RESP, "a", "b", 1, index=1))  # b acks the NOOP: replicate state
    rd = r.ready()
    assert rd is not None
    r.advance(rd)
    r.propose(b"x")
    rd = r.ready()
    assert rd is not None and rd.hard_state is None
    assert [m.type for m in rd.early_messages] == [MsgType.APP] and not rd.messages


def test_leader_counts_its_own_log_only_once_durable() -> None:
    """With early messages, a leader in a 3-node cluster needs 2 follower acks until its own
    write is reported durable by advance()."""
    s = MemoryStorage(Configuration(frozenset("abc")))
    r = RaftNode("a", s, random.Random(0), pre_vote=False)
    r.campaign()
    r.step(Message(MsgType.VOTE_RESP, "a", "b", 1))
    rd = r.ready()
    assert rd is not None
    s.append(rd.entries)
    r.advance(rd)
    p = r.propose(b"x")
    rd = r.ready()  # not persisted yet
    assert rd is not None
    r.step(Message(MsgType.APP_RESP, "a", "b", 1, index=p.index))
    assert r.commit_index < p.index
    s.append(rd.entries)
    r.advance(rd)
    assert r.commit_index == p.index


def test_ready_must_be_advanced_before_the_next() -> None:
    r = RaftNode("a", MemoryStorage(Configuration(frozenset("a"))), random.Random(0))
    r.campaign()
    rd = r.ready()
    assert rd is not None
    with pytest.raises(RaftError):
        r.ready()
    r.advance(rd)


def test_stale_leader_learns_new_term_from_append_response() -> None:
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    c.isolate("a")
    c.tick_all(30)  # b or c takes over; a steps down by check-quorum meanwhile
    new = c.leader()
    assert new in ("b", "c")
    c.heal()
    c.tick_all(3)
    assert c.raft("a").leader == new and c.raft("a").term == c.raft(new).term


def test_not_leader_carries_hint() -> None:
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    with pytest.raises(NotLeader) as e:
        c.raft("c").propose(b"x")
    assert e.value.leader_hint == "a"
