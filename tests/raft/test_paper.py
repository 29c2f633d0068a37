"""The Raft paper's rules (Figure 2, §5), one test each; the docstring quotes the rule.

Each test drives real `RaftNode`s through the in-process harness (tests/sim/raft_sim.py) in
instant mode: every Ready is persisted and every message delivered before the next step.
"""

from __future__ import annotations

import random
from dataclasses import replace

from proconsul.raft.core import (
    Entry,
    EntryKind,
    HardState,
    MemoryStorage,
    Message,
    MsgType,
    RaftNode,
    Role,
)
from raft_sim import Cluster


def set_log(c: Cluster, node: str, terms: list[int], term: int, commit: int = 0) -> None:
    """Give `node` the persisted log `terms` (the term of entries 1..n) and restart it."""
    s = MemoryStorage(c.initial_config)
    s.append([Entry(i + 1, t, EntryKind.NORMAL, f"{i + 1}:{t}".encode())
              for i, t in enumerate(terms)])
    s.set_hard_state(HardState(term, None, commit))
    c.nodes[node].storage = s
    c.crash(node)
    c.restart(node)


def log_terms(c: Cluster, node: str) -> list[int]:
    r = c.raft(node)
    return [r._log.term(i) or 0 for i in range(1, r.last_index + 1)]


def no_prevote(**kw: object) -> dict[str, object]:
    return {"pre_vote": False, "check_quorum": False, **kw}


# ------------------------------------------------------------------------------ §5.1 terms


def test_higher_term_converts_to_follower() -> None:
    """§5.1 / Figure 2 "Rules for Servers": "If RPC request or response contains term T >
    currentTerm: set currentTerm = T, convert to follower"."""
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    a = c.raft("a")
    term = a.term
    a.step(Message(MsgType.APP_RESP, "a", "b", term + 3, index=0))
    assert a.role == Role.FOLLOWER and a.term == term + 3 and a.vote is None


def test_stale_term_request_is_rejected() -> None:
    """§5.1: "If a server receives a request with a stale term number, it rejects the request";
    Figure 2 AppendEntries 1: "Reply false if term < currentTerm"."""
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    b = c.raft("b")
    before = (b.term, b.last_index)
    c.sent.clear()
    b.step(Message(MsgType.APP, "b", "z", b.term - 1, index=b.last_index, log_term=b.term,
                   entries=(Entry(b.last_index + 1, b.term - 1, EntryKind.NORMAL, b"x"),)))
    c.stabilize()
    assert (b.term, b.last_index) == before
    replies = [m for m in c.sent if m.frm == "b" and m.to == "z"]
    assert replies and all(m.term == b.term for m in replies)  # tells the stale leader the term


# ------------------------------------------------------------------------------ §5.2 election


def test_follower_times_out_and_campaigns_within_randomized_timeout() -> None:
    """§5.2: "If a follower receives no communication over a period of time called the election
    timeout, then it ... begins an election"; timeouts are "chosen randomly from a fixed
    interval" ([election_tick, 2*election_tick) here)."""
    for seed in range(20):
        r = RaftNode("a", MemoryStorage(), random.Random(seed), peers=["a", "b", "c"],
                     election_tick=10, **no_prevote())  # type: ignore[arg-type]
        ticks = 0
        while r.role == Role.FOLLOWER:
            r.tick()
            ticks += 1
        assert 10 <= ticks < 20 and r.role == Role.CANDIDATE and r.term == 1 and r.vote == "a"


def test_heartbeats_keep_followers_from_campaigning() -> None:
    """§5.2: "Leaders send periodic heartbeats ... to all followers in order to maintain their
    authority"."""
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    term = c.raft("a").term
    c.tick_all(200)
    assert c.raft("a").role == Role.LEADER and all(c.raft(i).term == term for i in "abc")


def test_vote_once_per_term() -> None:
    """Figure 2 RequestVote 2 / §5.2: "each server will vote for at most one candidate in a given
    term, on a first-come-first-served basis"."""
    c = Cluster(["a", "b", "c"], **no_prevote())
    c.drop = lambda m: m.to == "c" or m.frm == "c"
    c.raft("a").campaign()  # term 1: b votes for a
    c.stabilize()
    c.drop = lambda m: m.to == "a" or m.frm == "a"  # c's term-1 request reaches b only now
    c.raft("c").campaign()
    c.stabilize()
    assert c.raft("b").vote == "a"
    assert c.raft("c").role == Role.CANDIDATE  # b refused: it already voted in term 1


def test_election_safety_split_vote() -> None:
    """Figure 3 Election Safety: "at most one leader can be elected in a given term" (two
    simultaneous candidates in one term; the harness also asserts it on every Ready)."""
    for order in (["a", "b"], ["b", "a"]):
        c = Cluster(["a", "b", "c", "d"], **no_prevote())
        for i in order:
            c.raft(i).campaign()
        c.stabilize()
        leaders = [i for i in c.ids if c.raft(i).role == Role.LEADER]
        assert len(leaders) <= 1
        assert c.raft("a").term == c.raft("b").term == 1


def test_candidate_steps_down_for_leader_of_same_term() -> None:
    """§5.2: "If the AppendEntries RPC is from another server claiming to be leader and the
    leader's term is at least as large as the candidate's current term, then the candidate
    recognizes the leader as legitimate and returns to follower state"."""
    c = Cluster(["a", "b", "c"], **no_prevote())
    c.drop = lambda m: m.to == "b"
    c.raft("b").campaign()
    term = c.raft("b").term
    c.drop = None
    c.fifo.clear()
    b = c.raft("b")
    b.step(Message(MsgType.APP, "b", "a", term, index=0, log_term=0))
    assert b.role == Role.FOLLOWER and b.leader == "a" and b.term == term


# ------------------------------------------------------------------------------ §5.3 replication


def test_entry_committed_on_majority_and_applied_by_followers() -> None:
    """§5.3: "A log entry is committed once the leader that created the entry has replicated it
    on a majority of the servers"; followers apply it once they learn the leader's commit."""
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    c.drop = lambda m: m.to == "c"  # only a and b: still a majority
    p = c.propose("a", b"x")
    c.stabilize()
    assert p is not None and c.raft("a").commit_index >= p.index
    assert c.nodes["b"].fsm[-1] == (p.index, b"x")
    assert c.nodes["c"].fsm == []


def test_log_matching_consistency_check() -> None:
    """§5.3 / Figure 2 AppendEntries 2: "Reply false if log doesn't contain an entry at prevLogIndex
    whose term matches prevLogTerm"."""
    c = Cluster(["a", "b", "c"], **no_prevote())
    set_log(c, "b", [1, 1, 2], term=2)
    b = c.raft("b")
    c.sent.clear()
    b.step(Message(MsgType.APP, "b", "a", 3, index=3, log_term=3,
                   entries=(Entry(4, 3, EntryKind.NORMAL, b"n"),)))
    c.stabilize()
    assert b.last_index == 3
    rej = [m for m in c.sent if m.type == MsgType.APP_RESP and m.frm == "b"]
    assert rej[-1].reject and rej[-1].index == 3


def test_conflicting_entries_are_deleted_and_new_appended() -> None:
    """Figure 2 AppendEntries 3-4: "If an existing entry conflicts with a new one (same index but
    different terms), delete the existing entry and all that follow it"; "Append any new
    entries not already in the log"."""
    c = Cluster(["a", "b", "c"], **no_prevote())
    set_log(c, "b", [1, 1, 2, 2, 2], term=2)
    b = c.raft("b")
    b.step(Message(MsgType.APP, "b", "a", 3, index=2, log_term=1,
                   entries=(Entry(3, 3, EntryKind.NORMAL, b"x"), Entry(4, 3, EntryKind.NORMAL, b"y"))))
    c.stabilize()
    assert log_terms(c, "b") == [1, 1, 3, 3]
    s = c.nodes["b"].storage
    assert [e.term for e in s.entries(1, s.last_index() + 1)] == [1, 1, 3, 3]


def test_log_matching_property_after_divergence() -> None:
    """§5.3 Log Matching: "if two logs contain an entry with the same index and term, then the logs
    are identical in all entries up through the given index"."""
    c = Cluster(["a", "b", "c", "d", "e"], **no_prevote())
    set_log(c, "a", [1, 1, 2, 2], term=2)
    set_log(c, "b", [1, 1, 2], term=2)
    set_log(c, "c", [1, 1, 3, 3, 3], term=3)
    set_log(c, "d", [1], term=1)
    set_log(c, "e", [1, 1], term=1)
    c.elect("c")
    for k in range(3):
        c.propose("c", f"v{k}".encode())
    c.stabilize()
    c.check_log_matching()
    assert len({tuple(log_terms(c, i)) for i in c.ids}) == 1


def test_leader_append_only() -> None:
    """Figure 3 Leader Append-Only: "a leader never overwrites or deletes entries in its log; it only
    appends new entries" (not even when a follower or a stale message disagrees)."""
    c = Cluster(["a", "b", "c"], **no_prevote())
    set_log(c, "a", [1, 2, 2], term=3)
    set_log(c, "b", [1, 3, 3, 3], term=3)
    c.drop = lambda m: m.to == "b" or m.frm == "b"
    c.raft("a").tick()
    c.elect("a")  # term 4 with c's vote
    before = log_terms(c, "a")
    a = c.raft("a")
    # b's divergent entries (and a forged APP at a's own term) must not change a's log.
    a.step(Message(MsgType.APP, "a", "b", a.term, index=1, log_term=1,
                   entries=(Entry(2, 3, EntryKind.NORMAL, b"z"),)))
    c.drop = None
    c.propose("a", b"new")
    c.tick_all(1)  # the probe to b was lost: the next heartbeat response resumes it
    after = log_terms(c, "a")
    assert after[:len(before)] == before and len(after) == len(before) + 1
    assert log_terms(c, "b") == after  # the follower's conflicting suffix was replaced


# ------------------------------------------------------------------------------ §5.4 safety


def test_up_to_date_voting_restriction_last_term() -> None:
    """§5.4.1: "the voter denies its vote if its own log is more up-to-date than that of the
    candidate" - a higher last term wins regardless of length."""
    c = Cluster(["a", "b", "c"], **no_prevote())
    set_log(c, "a", [1, 1, 1, 1], term=2)
    set_log(c, "b", [1, 2], term=2)
    set_log(c, "c", [1, 2], term=2)
    c.raft("a").campaign()
    c.stabilize()
    assert c.raft("a").role != Role.LEADER
    assert c.raft("b").vote is None and c.raft("c").vote is None


def test_up_to_date_voting_restriction_same_term_longer() -> None:
    """§5.4.1: "If the logs end with the same term, then whichever log is longer is more
    up-to-date"."""
    c = Cluster(["a", "b", "c"], **no_prevote())
    set_log(c, "a", [1, 2], term=2)
    set_log(c, "b", [1, 2, 2], term=2)
    set_log(c, "c", [1, 2, 2], term=2)
    c.raft("a").campaign()
    c.stabilize()
    assert c.raft("a").role != Role.LEADER
    c.raft("b").campaign()
    c.stabilize()
    assert c.raft("b").role == Role.LEADER


def test_leader_completeness() -> None:
    """§5.4 Leader Completeness: "If a log entry is committed in a given term, then that entry will
    be present in the logs of the leaders for all higher-numbered terms"."""
    c = Cluster(["a", "b", "c", "d", "e"], **no_prevote())
    c.elect("a")
    c.drop = lambda m: m.to in ("d", "e")  # commit on a, b, c only
    committed = [c.propose("a", f"w{k}".encode()) for k in range(3)]
    c.stabilize()
    top = max(p.index for p in committed if p is not None)
    assert c.raft("a").commit_index >= top
    c.crash("a")
    c.drop = None
    # d and e lack the entries: neither can win, whoever campaigns first.
    for loser in ("d", "e"):
        c.raft(loser).campaign()
        c.stabilize()
        assert c.raft(loser).role != Role.LEADER
    c.raft("c").campaign()
    c.stabilize()
    leader = c.leader()
    assert leader in ("b", "c")
    assert c.raft(leader).last_index >= top and c.raft(leader)._log.term(top) == committed[-1].term  # type: ignore[union-attr]


def test_commit_rule_figure_8() -> None:
    """§5.4.2 and Figure 8: "Raft never commits log entries from previous terms by counting
    replicas. Only log entries from the leader's current term are committed by counting
    replicas". Figure 8 (c)-(d): S1 (term 4) puts its term-2 entry on a majority but must not
    commit it, because S5 (last term 3) can still be elected and overwrite it."""
    ids = ["s1", "s2", "s3", "s4", "s5"]
    c = Cluster(ids, **no_prevote(max_entries_per_msg=1))
    set_log(c, "s1", [1, 2], term=3, commit=1)
    set_log(c, "s2", [1, 2], term=3, commit=1)
    set_log(c, "s3", [1], term=3, commit=1)
    set_log(c, "s4", [1], term=3, commit=1)
    set_log(c, "s5", [1, 3], term=3, commit=1)
    # (c): S1 is elected for term 4 (S5 refuses: its log is more up-to-date) and replicates
    # index 2 (term 2) to S3, but its own term-4 entry (the NOOP at index 3) never leaves.
    c.drop = lambda m: "s5" in (m.to, m.frm)
    c.rewrite = lambda m: replace(m, entries=tuple(e for e in m.entries if e.index < 3))
    c.elect("s1")
    c.stabilize()
    assert log_terms(c, "s3") == [1, 2]  # index 2 is on s1, s2, s3 (and s4): a majority
    assert c.raft("s1").commit_index == 1, "a term-2 entry must not commit by counting in term 4"
    # (d): S1 crashes; S5 is elected (votes of S2, S3, S4) and overwrites index 2 everywhere.
    c.crash("s1")
    c.drop = c.rewrite = None
    c.raft("s5").campaign()  # s5 was cut off at term 3: term 4 is lost (everyone voted for s1)
    c.stabilize()
    c.elect("s5")  # term 5
    c.propose("s5", b"after")
    c.stabilize()
    for i in ["s2", "s3", "s4", "s5"]:
        assert log_terms(c, i)[:2] == [1, 3]
    assert 2 not in c.log or c.log[2][0] == 3  # nobody ever applied the term-2 entry


def test_commit_rule_figure_8_e_current_term_entry_commits_prior() -> None:
    """§5.4.2 / Figure 8 (e): once an entry of the leader's current term is on a majority, it and
    every entry before it are committed - and then S5 can no longer win."""
    ids = ["s1", "s2", "s3", "s4", "s5"]
    c = Cluster(ids, **no_prevote())
    set_log(c, "s1", [1, 2], term=3, commit=1)
    set_log(c, "s2", [1, 2], term=3, commit=1)
    set_log(c, "s3", [1], term=3, commit=1)
    set_log(c, "s4", [1], term=3, commit=1)
    set_log(c, "s5", [1, 3], term=3, commit=1)
    c.drop = lambda m: "s5" in (m.to, m.frm)
    c.elect("s1")
    c.stabilize()
    assert c.raft("s1").commit_index == 3  # the NOOP (term 4) committed index 2 with it
    c.crash("s1")
    c.drop = None
    c.raft("s5").campaign()
    c.stabilize()
    assert c.raft("s5").role != Role.LEADER


def test_state_machine_safety() -> None:
    """§5.4.3 State Machine Safety: "if a server has applied a log entry at a given index to its
    state machine, no other server will ever apply a different log entry for the same index"
    (the harness checks every apply against every other; here leaders change repeatedly)."""
    c = Cluster(["a", "b", "c"], **no_prevote())
    k = 0
    for leader, lagging in [("a", "c"), ("b", "a"), ("c", "b"), ("a", "b")]:
        c.drop = None
        c.elect(leader)
        c.drop = lambda m, lag=lagging: lag in (m.to, m.frm)  # type: ignore[misc]
        for _ in range(3):
            c.propose(leader, f"v{k}".encode())
            k += 1
        c.stabilize()
    c.drop = None
    c.elect("a")
    c.propose("a", b"last")
    c.stabilize()
    assert c.nodes["a"].fsm == c.nodes["b"].fsm == c.nodes["c"].fsm
    assert len(c.nodes["a"].fsm) == k + 1
