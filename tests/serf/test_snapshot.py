"""serf's snapshot rules: replay to the peers last known alive; a leave forgets them unless
rejoin_after_leave; nothing is recorded after a leave; compaction keeps the live entries."""

from __future__ import annotations

from pathlib import Path

import pytest
from proconsul.serf import snapshot as serf_snapshot
from proconsul.serf.snapshot import Snapshot


def test_replay_gives_the_peers_last_alive(tmp_path: Path) -> None:
    snap = Snapshot(str(tmp_path), rejoin_after_leave=False)
    snap.member_alive("me", "10.0.0.1", 8301)
    snap.member_alive("a", "10.0.0.2", 8301)
    snap.member_alive("b", "10.0.0.3", 8301)
    snap.member_gone("a")
    snap.member_alive("c", "::1", 8301)
    snap.close()
    again = Snapshot(str(tmp_path), rejoin_after_leave=False)
    assert again.previous_peers("me") == [("b", "10.0.0.3:8301"), ("c", "[::1]:8301")]
    assert (tmp_path / "serf" / "local.snapshot").read_text().splitlines()[:2] == [
        "alive: me 10.0.0.1:8301", "alive: a 10.0.0.2:8301"]


def test_leave_forgets_peers_unless_rejoin_after_leave(tmp_path: Path) -> None:
    snap = Snapshot(str(tmp_path), rejoin_after_leave=False)
    snap.member_alive("a", "10.0.0.2", 8301)
    snap.leave()
    snap.member_alive("late", "10.0.0.9", 8301)  # after a leave nothing is recorded
    snap.close()
    assert Snapshot(str(tmp_path), rejoin_after_leave=False).previous_peers("me") == []
    assert Snapshot(str(tmp_path), rejoin_after_leave=True).previous_peers("me") == [("a", "10.0.0.2:8301")]
    # Peers that join after the restart count again.
    snap = Snapshot(str(tmp_path), rejoin_after_leave=False)
    snap.member_alive("b", "10.0.0.3", 8301)
    snap.close()
    assert Snapshot(str(tmp_path), rejoin_after_leave=False).previous_peers("me") == [("b", "10.0.0.3:8301")]


def test_unknown_and_torn_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "serf" / "local.snapshot"
    path.parent.mkdir()
    path.write_text("alive: a 10.0.0.2:8301\nclock: 7\nbogus line\nalive: b 10.0.0.3:83")
    assert Snapshot(str(tmp_path), rejoin_after_leave=False).previous_peers("me") == [("a", "10.0.0.2:8301")]


def test_compaction_keeps_live_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serf_snapshot, "MIN_COMPACT_SIZE", 200)
    snap = Snapshot(str(tmp_path), rejoin_after_leave=False)
    for _ in range(50):
        snap.member_alive("flappy", "10.0.0.5", 8301)
        snap.member_gone("flappy")
    snap.member_alive("steady", "10.0.0.6", 8301)
    snap.close()
    assert (tmp_path / "serf" / "local.snapshot").stat().st_size < 400
    assert Snapshot(str(tmp_path), rejoin_after_leave=False).previous_peers("me") == [("steady", "10.0.0.6:8301")]


def test_event_and_query_clocks_survive_replay_and_compaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = Snapshot(str(tmp_path), rejoin_after_leave=False)
    assert (snap.event_clock, snap.query_clock) == (0, 0)
    snap.event_seen(4)
    snap.event_seen(9)
    snap.event_seen(6)  # older than what was seen: nothing to record
    snap.query_seen(3)
    snap.close()
    text = (tmp_path / "serf" / "local.snapshot").read_text()
    assert text == "event-clock: 4\nevent-clock: 9\nquery-clock: 3\n"
    again = Snapshot(str(tmp_path), rejoin_after_leave=False)
    assert (again.event_clock, again.query_clock) == (9, 3)
    # Compaction keeps the clocks with the live entries.
    monkeypatch.setattr(serf_snapshot, "MIN_COMPACT_SIZE", 200)
    for _ in range(20):
        again.member_alive("flappy", "10.0.0.5", 8301)
        again.member_gone("flappy")
    again.close()
    assert "event-clock: 9\nquery-clock: 3\n" in (tmp_path / "serf" / "local.snapshot").read_text()
    third = Snapshot(str(tmp_path), rejoin_after_leave=False)
    assert (third.event_clock, third.query_clock) == (9, 3)
    third.close()


def test_a_bad_clock_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "serf" / "local.snapshot"
    path.parent.mkdir()
    path.write_text("event-clock: x\nevent-clock: 5\nquery-clock: \n")
    snap = Snapshot(str(tmp_path), rejoin_after_leave=False)
    assert (snap.event_clock, snap.query_clock) == (5, 0)
