"""Durable Raft storage: reopen, atomic hard state + entries, truncation, compaction, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from proconsul.raft.core import Configuration, Snapshot
from proconsul.raft.core import SnapshotMeta as CoreSnapshotMeta
from proconsul.raft.node import DiskStorage
from proconsul.raft.storage import (
    DurableLog,
    HardState,
    LogLocked,
    LogRecord,
    SnapshotMeta,
    SnapshotStore,
    raft_log,
)


def recs(lo: int, hi: int, term: int = 1) -> list[LogRecord]:
    return [LogRecord(i, term, 0, f"entry-{i}".encode()) for i in range(lo, hi)]


def reopen(path: Path) -> DurableLog:
    log = raft_log(str(path))
    log.open()
    return log


def test_append_and_reopen(tmp_path: Path) -> None:
    log = reopen(tmp_path)
    log.append(recs(1, 11))
    log.save(HardState(2, "n1", 10), recs(11, 21, term=2))
    log.close()
    again = reopen(tmp_path)
    assert (again.first_index, again.last_index) == (1, 20)
    assert again.get(15) == LogRecord(15, 2, 0, b"entry-15")
    assert again.slice(5, 8) == recs(5, 8)
    assert again.hard_state == HardState(2, "n1", 10)


def test_hard_state_survives_reopen_whichever_fields_moved(tmp_path: Path) -> None:
    """Every sequence of hard state changes (commit only, vote, term, back to commit only) reads
    back exactly."""
    steps = [HardState(1, "a", 0), HardState(1, "a", 3), HardState(1, "a", 7), HardState(2, "", 7),
             HardState(2, "b", 7), HardState(2, "b", 9), HardState(3, "c", 9), HardState(3, "c", 12)]
    index = 1
    for hs in steps:
        log = reopen(tmp_path)
        log.save(hs, recs(index, index + 2))
        index += 2
        log.close()
        again = reopen(tmp_path)
        assert again.hard_state == hs
        assert again.last_index == index - 1
        again.close()


def test_conflicting_tail_is_replaced(tmp_path: Path) -> None:
    log = reopen(tmp_path)
    log.append(recs(1, 30))
    log.save(entries=recs(10, 13, term=5))  # a new leader overwrites from index 10
    assert log.last_index == 12
    log.close()  # one opener at a time: the log holds its lock while open
    again = reopen(tmp_path)
    assert again.last_index == 12 and again.get(10) == LogRecord(10, 5, 0, b"entry-10")
    assert again.get(9) == LogRecord(9, 1, 0, b"entry-9")
    with pytest.raises(ValueError):
        again.append(recs(20, 21))  # a gap is a bug in the caller


def test_compaction_and_reset(tmp_path: Path) -> None:
    log = reopen(tmp_path)
    log.append(recs(1, 40))
    log.compact_prefix(25)
    assert log.first_index == 26 and log.get(25) is None
    log.close()
    again = reopen(tmp_path)
    assert (again.first_index, again.last_index) == (26, 39)
    again.reset(101)
    again.append(recs(101, 103))
    again.close()
    third = reopen(tmp_path)
    assert (third.first_index, third.last_index) == (101, 102)
    third.compact_prefix(102)
    third.close()
    fourth = reopen(tmp_path)
    assert (fourth.first_index, fourth.last_index) == (103, 102)


def test_a_second_opener_is_refused_while_the_log_is_open(tmp_path: Path) -> None:
    """The open log holds an flock on wal/LOCK: nothing else may open it, in this process or
    another, and it is free again once closed."""
    log = reopen(tmp_path)
    log.append(recs(1, 3))
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from proconsul.raft.storage import raft_log; raft_log(sys.argv[1]).open()",
         str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "locked" in probe.stderr, probe.stderr
    with pytest.raises(LogLocked, match="locked"):
        reopen(tmp_path)
    log.close()
    again = reopen(tmp_path)
    assert again.last_index == 2
    again.close()


def test_snapshots_fall_back_when_newest_is_damaged(tmp_path: Path) -> None:
    snaps = SnapshotStore(str(tmp_path), retain=2)
    snaps.save(SnapshotMeta(10, 1, b"cfg"), b"state-10")
    newest = snaps.save(SnapshotMeta(20, 2, b"cfg"), b"state-20")
    assert snaps.latest() == (SnapshotMeta(20, 2, b"cfg"), b"state-20")
    with open(newest, "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        fh.write(b"X")
    assert snaps.latest() == (SnapshotMeta(10, 1, b"cfg"), b"state-10")
    snaps.save(SnapshotMeta(30, 2, b"cfg"), b"state-30")
    assert len(list(tmp_path.glob("*.snap"))) == 2


def test_acknowledged_saves_survive_kill_9(tmp_path: Path) -> None:
    """A writer reports each index only after save() returned; kill -9 must lose none of them."""
    script = textwrap.dedent(
        f"""
        from proconsul.raft.storage import HardState, LogRecord, raft_log
        log = raft_log({str(tmp_path)!r})
        log.open()
        i = log.last_index + 1
        while True:
            log.save(HardState(1, "me", i), [LogRecord(i, 1, 0, b"x" * 100), LogRecord(i + 1, 1, 0, b"y" * 100)])
            print(i + 1, flush=True)
            i += 2
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked = 0
    for line in proc.stdout:
        acked = int(line)
        if acked >= 300:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log = reopen(tmp_path)
    assert log.last_index >= acked
    assert [r.index for r in log.slice(1, log.last_index + 1)] == list(range(1, log.last_index + 1))
    assert log.hard_state.commit >= acked - 1


def _mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def test_raft_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """The log and snapshots hold every value and token: 0700 directories, 0600 files (issue 13)."""
    from proconsul.raft.node import DiskStorage

    old = os.umask(0o022)
    try:
        raft_dir = tmp_path / "raft"
        raft_dir.mkdir(mode=0o755)
        os.chmod(raft_dir, 0o755)  # as an older version left it
        storage = DiskStorage(str(raft_dir))
        storage.log.append(recs(1, 3))
        path = storage.snapshots.save(SnapshotMeta(2, 1, b"cfg"), b"data")
        storage.log.close()
    finally:
        os.umask(old)
    assert _mode(raft_dir) == 0o700
    assert _mode(raft_dir / "snapshots") == 0o700
    assert _mode(Path(path)) == 0o600
    assert _mode(raft_dir / "wal") == 0o700
    files = list((raft_dir / "wal").iterdir())
    assert len(files) == 2 and all(_mode(p) == 0o600 for p in files), [(p.name, oct(_mode(p))) for p in files]


def test_a_crash_between_the_snapshot_file_and_the_compaction_recovers(tmp_path: Path) -> None:
    """The automatic snapshot writes its file, then the driver compacts the log in memory and
    queues the compaction's frame on its log writer: a crash before that frame leaves the new
    snapshot and the whole log, which a restarted server serves consistently."""
    storage = DiskStorage(str(tmp_path))
    storage.bootstrap(["a"])
    storage.log.save(HardState(1, "a", 100), recs(1, 101))
    snap = Snapshot(CoreSnapshotMeta(80, 1, Configuration(frozenset(["a"]))), b"state at 80")
    storage.write_snapshot_file(snap)
    storage.serve_snapshot(snap)
    assert storage.log.compact_memory(70) is not None
    assert (storage.first_index(), storage.term(70)) == (71, 1)
    storage.log.close()  # the crash: the compaction frame never written

    again = DiskStorage(str(tmp_path))
    assert again.snapshot().meta.index == 80 and again.snapshot().data == b"state at 80"
    assert (again.first_index(), again.last_index()) == (1, 100)
    assert [e.index for e in again.entries(81, 101)] == list(range(81, 101))
    assert again.term(80) == 1
    again.log.close()
