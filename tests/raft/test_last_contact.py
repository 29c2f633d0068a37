"""A follower's last contact with the leader counts only once it applied what the leader knew.

`X-Consul-LastContact` and `?max_stale` rest on it. Consul counts any AppendEntries as contact,
so a follower that rejoins after a partition says "0 ms" while it still serves the data of
before the partition (the chaos harness's bounded-staleness checker found this here too).
The leader puts its real commit index in each heartbeat (`index`), and the driver counts a
leader message as contact only once its applied index reached that commit.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from proconsul.raft.core import Message, MsgType
from proconsul.raft.node import NEVER_CONTACTED_MS, RaftServer
from raft_sim import Cluster


class _NoFSM:
    def apply(self, index: int, data: bytes, proposed: Any = None) -> None:
        return None


def _follower(tmp_path: Path, applied: int) -> RaftServer:
    raft = RaftServer("b", "b", "127.0.0.1:8300", _NoFSM(), str(tmp_path), tick_s=0.05)  # type: ignore[arg-type]
    raft.applied_index = applied
    return raft


def test_heartbeats_carry_the_uncapped_commit_index() -> None:
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    c.isolate("c")
    for k in range(5):
        c.propose("a", f"v{k}".encode())
        c.stabilize()
    c.sent.clear()
    c.heal()
    c.tick_all(1)
    beats = [m for m in c.sent if m.type == MsgType.HEARTBEAT and m.to == "c"]
    assert beats, "no heartbeat to the rejoining follower"
    committed = c.nodes["a"].raft.commit_index
    # The commit field stays capped at what the follower matches; `index` says the truth.
    assert all(m.index == committed and m.commit <= m.index for m in beats)
    assert any(m.commit < committed for m in beats)


def test_a_lagging_follower_is_not_in_contact_until_it_applied_the_leaders_commit(tmp_path: Path) -> None:
    raft = _follower(tmp_path, applied=10)
    raft._heard_from_leader(Message(MsgType.HEARTBEAT, "b", "a", 3, index=50, commit=10))
    assert raft.last_contact_ms() == NEVER_CONTACTED_MS  # data of an unknown age, still
    raft._heard_from_leader(Message(MsgType.APP, "b", "a", 3, index=10, commit=50))
    raft.applied_index = 49
    raft._caught_up_with_leader()
    assert raft.last_contact_ms() == NEVER_CONTACTED_MS
    raft.applied_index = 50
    raft._caught_up_with_leader()
    assert raft.last_contact_ms() < 1000 and not raft._contact_pending


def test_contact_is_dated_by_the_message_not_by_the_catch_up(tmp_path: Path) -> None:
    raft = _follower(tmp_path, applied=10)
    raft._heard_from_leader(Message(MsgType.HEARTBEAT, "b", "a", 3, index=20, commit=10))
    raft._contact_pending[0] = (20, time.monotonic() - 5.0)  # the leader said so 5 s ago
    raft.applied_index = 20
    raft._caught_up_with_leader()
    assert 4500 <= raft.last_contact_ms() < 60_000  # the data is as of that message, 5 s old


def test_an_up_to_date_follower_is_in_contact_at_once_and_old_leaders_still_count(tmp_path: Path) -> None:
    raft = _follower(tmp_path, applied=30)
    # A leader of an older version sends no `index` in heartbeats: its capped commit is used.
    raft._heard_from_leader(Message(MsgType.HEARTBEAT, "b", "a", 3, index=0, commit=30))
    assert raft.last_contact_ms() < 1000 and not raft._contact_pending


def test_a_long_catch_up_keeps_a_bounded_and_conservative_backlog(tmp_path: Path) -> None:
    raft = _follower(tmp_path, applied=0)
    first = time.monotonic()
    for commit in range(1, 500):
        raft._heard_from_leader(Message(MsgType.HEARTBEAT, "b", "a", 3, index=commit, commit=0))
    assert len(raft._contact_pending) <= 65
    raft.applied_index = 499
    raft._caught_up_with_leader()
    # Folding never dates the data later than a message that knew the commit it waited for.
    assert raft._last_leader_contact >= first and not raft._contact_pending
