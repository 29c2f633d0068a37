"""The segment log's crash safety: torn tails, damage, segments, compaction, the SQLite upgrade.

Crashes are simulated on the files (what a kill -9 or a power cut can leave: the last write cut
at any byte, the rest zeros or garbage); tests/raft/test_storage.py kills a real writer.
"""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

import pytest
from proconsul.raft import storage as storage_module
from proconsul.raft.storage import CorruptStorage, DurableLog, HardState, LogRecord, raft_log

SMALL = 4096  # bytes per segment: a few dozen entries each, so tests cross segments


def recs(lo: int, hi: int, term: int = 1, size: int = 20) -> list[LogRecord]:
    return [LogRecord(i, term, i % 3, (f"entry-{i}-".encode() * size)[:size]) for i in range(lo, hi)]


def opened(path: Path, segment_bytes: int = SMALL) -> DurableLog:
    log = raft_log(str(path), segment_bytes)
    log.open()
    return log


def image(log: DurableLog) -> tuple[object, ...]:
    return (log.first_index, log.last_index, log.offset_term, log.durable_hard_state, list(log.records))


def segments(path: Path) -> list[Path]:
    return sorted((path / "wal").glob("*.wal"))


@pytest.mark.parametrize("garbage", [b"\0", b"\xa5"])
def test_a_last_write_torn_at_any_byte_reopens_with_the_writes_before_it(tmp_path: Path, garbage: bytes) -> None:
    log = opened(tmp_path)
    log.save(HardState(1, "a", 3), recs(1, 6))
    before = image(log)
    start = log._pos
    log.save(HardState(2, "b", 5), recs(6, 8, term=2))
    end = log._pos
    after = image(log)
    log.close()
    (seg,) = segments(tmp_path)
    data = seg.read_bytes()
    for cut in range(start, end + 1):
        # What reached the disk: the write up to `cut`, then zeros (preallocated) or garbage.
        seg.write_bytes(data[:cut] + garbage * (end - cut) + data[end:])
        again = opened(tmp_path)
        assert image(again) == (after if cut == end else before), cut
        # The torn bytes are gone for good: a shorter write in their place reads back alone.
        again.save(HardState(3, "c", 5), recs(again.last_index + 1, again.last_index + 2, term=3, size=1))
        expected = image(again)
        again.close()
        third = opened(tmp_path)
        assert image(third) == expected, cut
        third.close()


def test_a_damaged_record_with_valid_ones_after_it_is_corruption(tmp_path: Path) -> None:
    log = opened(tmp_path)
    log.save(HardState(1, "a", 0), recs(1, 4))
    middle = log._pos
    log.save(None, recs(4, 7))
    log.save(None, recs(7, 9))
    log.close()
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    data[middle + 20] ^= 0x01  # one bit inside the second write's entries
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptStorage, match=f"{seg.name}: damaged record at offset {middle}"):
        opened(tmp_path)


def test_damage_in_a_complete_segment_is_corruption(tmp_path: Path) -> None:
    log = opened(tmp_path)
    for i in range(1, 120, 5):
        log.save(HardState(1, "a", i), recs(i, i + 5))
    log.close()
    first = segments(tmp_path)[0]
    assert len(segments(tmp_path)) >= 2
    data = bytearray(first.read_bytes())
    end = len(bytes(data).rstrip(b"\0"))
    data[end - 1] ^= 0x40  # the last write of a segment that later ones follow
    first.write_bytes(bytes(data))
    with pytest.raises(CorruptStorage, match=first.name):
        opened(tmp_path)


def test_writes_cross_segments_and_reopen(tmp_path: Path) -> None:
    log = opened(tmp_path)
    for i in range(1, 300, 7):
        log.save(HardState(1, "a", i), recs(i, i + 7, size=60))
    expected = image(log)
    log.close()
    assert len(segments(tmp_path)) > 5
    again = opened(tmp_path)
    assert image(again) == expected and again.last_index == 301
    again.close()


def test_truncate_append_and_reopen_across_segments(tmp_path: Path) -> None:
    log = opened(tmp_path)
    for i in range(1, 200, 10):
        log.save(HardState(1, "a", 0), recs(i, i + 10))
    log.save(HardState(2, "b", 0), recs(35, 40, term=2))  # a new leader's tail replaces 35..200
    assert log.last_index == 39
    expected = image(log)
    log.close()
    again = opened(tmp_path)
    assert image(again) == expected
    assert again.get(34) == recs(34, 35)[0] and again.get(35) == recs(35, 36, term=2)[0]
    again.close()


def test_compaction_drops_old_segments_and_reopens(tmp_path: Path) -> None:
    log = opened(tmp_path)
    for i in range(1, 400, 10):
        log.save(HardState(1, "a", i + 9), recs(i, i + 10))
    many = len(segments(tmp_path))
    log.compact_prefix(300)
    assert (log.first_index, log.offset_term) == (301, 1)
    expected = image(log)
    log.close()
    assert 1 < len(segments(tmp_path)) < many
    again = opened(tmp_path)
    assert image(again) == expected
    again.compact_prefix(400)  # everything: the log is empty and continues at 401
    again.append(recs(401, 403, term=2))
    expected = image(again)
    again.close()
    third = opened(tmp_path)
    assert image(third) == expected and third.first_index == 401
    third.close()


def test_reset_after_a_snapshot_install_drops_everything_before(tmp_path: Path) -> None:
    log = opened(tmp_path)
    for i in range(1, 200, 10):
        log.save(HardState(1, "a", 0), recs(i, i + 10))
    log.reset(1001, 4)
    log.save(HardState(4, "", 1000), recs(1001, 1004, term=4))
    expected = image(log)
    log.close()
    assert len(segments(tmp_path)) == 1
    again = opened(tmp_path)
    assert image(again) == expected and (again.first_index, again.offset_term) == (1001, 4)
    again.close()


def test_a_hard_state_change_alone_is_durable(tmp_path: Path) -> None:
    log = opened(tmp_path)
    log.append(recs(1, 3))
    log.save(HardState(7, "n2", 0))  # a vote: no entries
    log.close()
    again = opened(tmp_path)
    assert again.hard_state == HardState(7, "n2", 0) and again.last_index == 2
    again.close()


def test_hard_state_frames_alone_roll_segments_and_compaction_drops_them(tmp_path: Path) -> None:
    # A partitioned server votes for itself term after term and appends nothing: its newest
    # segment must still roll when full, or it grows for as long as the partition lasts.
    log = opened(tmp_path)
    log.append(recs(1, 4))
    for term in range(2, 400):
        log.save(HardState(term, "self", 0))
    assert len(segments(tmp_path)) > 2
    assert all(seg.stat().st_size <= SMALL for seg in segments(tmp_path))
    log.close()
    again = opened(tmp_path)
    assert again.hard_state == HardState(399, "self", 0) and (again.first_index, again.last_index) == (1, 3)
    again.compact_prefix(3)  # a snapshot covers the entries: every full segment before the newest goes
    again.save(HardState(400, "self", 0))
    expected = image(again)
    again.close()
    assert len(segments(tmp_path)) == 1
    third = opened(tmp_path)
    assert image(third) == expected and third.first_index == 4
    third.close()


def test_an_interrupted_segment_creation_is_ignored(tmp_path: Path) -> None:
    log = opened(tmp_path)
    log.append(recs(1, 5))
    expected = image(log)
    log.close()
    (tmp_path / "wal" / "00000000000000000002.wal.tmp").write_bytes(b"\x07" * 100)
    again = opened(tmp_path)
    assert image(again) == expected
    assert not list((tmp_path / "wal").glob("*.tmp"))
    again.close()


def test_random_operations_read_back_exactly_after_every_reopen(tmp_path: Path) -> None:
    """Seeded: appends, conflicting tails, hard states, compactions, resets and reopens, with
    segments small enough that compaction deletes some while others restate the bounds."""
    rng = random.Random(21)
    log = opened(tmp_path, 2048)
    term = 1
    for step in range(400):
        op = rng.random()
        if op < 0.55:
            n = rng.randint(1, 12)
            lo = log.last_index + 1
            log.save(HardState(term, "v", max(log.first_index - 1, lo - 1)), recs(lo, lo + n, term, rng.randint(0, 60)))
        elif op < 0.7 and log.last_index >= log.first_index:
            term += 1
            lo = rng.randint(max(log.first_index, log.last_index - 15), log.last_index)
            log.save(HardState(term, "w", 0), recs(lo, lo + rng.randint(1, 5), term))
        elif op < 0.8:
            term += rng.randint(0, 1)
            log.save(HardState(term, rng.choice(["", "a", "b"]), log.hard_state.commit))
        elif op < 0.9 and log.last_index >= log.first_index:
            log.compact_prefix(rng.randint(log.first_index, log.last_index))
        elif op < 0.93:
            log.reset(log.last_index + rng.randint(1, 50), term)
        else:
            expected = image(log)
            log.close()
            log = opened(tmp_path, 2048)
            assert image(log) == expected, step
    expected = image(log)
    log.close()
    log = opened(tmp_path, 2048)
    assert image(log) == expected
    log.close()


def _old_raft_db(path: Path, hs: HardState, first: int, offset_term: int, entries: list[LogRecord]) -> None:
    """A raft.db as the SQLite log (before issue 21) wrote it: same schema and pragmas."""
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, term INTEGER, kind INTEGER, data BLOB)")
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO log (idx, term, kind, data) VALUES (?, ?, ?, ?)",
                   [(r.index, r.term, r.kind, r.data) for r in entries])
    db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                   [("term", hs.term), ("vote", hs.vote), ("commit", hs.commit), ("first_index", first),
                    ("offset_term", offset_term)])
    db.execute("COMMIT")
    db.close()


def test_an_old_sqlite_log_is_imported_once_and_moved_aside(tmp_path: Path) -> None:
    entries = recs(51, 5000, term=3)
    _old_raft_db(tmp_path / "raft.db", HardState(4, "n3", 4990), 51, 2, entries)
    log = opened(tmp_path, 1 << 20)
    assert (log.first_index, log.last_index, log.offset_term) == (51, 4999, 2)
    assert log.hard_state == HardState(4, "n3", 4990) and log.records == entries
    log.append(recs(5000, 5002, term=4))
    log.close()
    assert not (tmp_path / "raft.db").exists() and (tmp_path / "raft.db.imported").exists()
    assert all(os.stat(p).st_mode & 0o777 == 0o600 for p in (tmp_path / "wal").iterdir())
    again = opened(tmp_path, 1 << 20)
    assert again.records == entries + recs(5000, 5002, term=4)
    again.close()


def test_an_import_a_crash_cut_short_is_finished_at_the_next_open(tmp_path: Path) -> None:
    """Crash after the imported segment was written, before raft.db was moved aside: the
    segment wins (it is complete: created under a temporary name, renamed once durable)."""
    _old_raft_db(tmp_path / "raft.db", HardState(2, "", 3), 1, 0, recs(1, 4, term=2))
    log = opened(tmp_path)
    log.append(recs(4, 6, term=2))
    log.close()
    os.replace(tmp_path / "raft.db.imported", tmp_path / "raft.db")
    again = opened(tmp_path)
    assert again.last_index == 5 and not (tmp_path / "raft.db").exists()
    again.close()


def test_a_crash_between_a_compactions_memory_and_file_halves_reopens_with_the_longer_log(tmp_path: Path) -> None:
    """The driver moves the log's memory bounds at once and writes the compaction frame later
    on its log writer thread: a crash in between (even after writes that started new segments,
    whose first frame restates the bounds) reopens with the log from the old first index, and
    the frame written afterwards compacts it as the memory said."""
    log = opened(tmp_path)
    for i in range(1, 200, 10):
        log.save(HardState(1, "a", i + 9), recs(i, i + 10))
    bounds = log.compact_memory(150)
    assert bounds is not None
    first, offset_term, dropped = bounds
    assert (first, offset_term) == (151, 1) and [r.index for r in dropped] == list(range(1, 151))
    assert (log.first_index, log.get(150), log.get(151)) == (151, None, recs(151, 152)[0])
    rolled = len(segments(tmp_path))
    for i in range(200, 400, 10):  # new segments while the frame is not written
        log.save(HardState(1, "a", i + 9), recs(i, i + 10))
    assert len(segments(tmp_path)) > rolled
    log.close()  # the crash: the compaction frame never written

    again = opened(tmp_path)
    assert (again.first_index, again.last_index, again.offset_term) == (1, 399, 0)
    assert again.slice(1, 400) == recs(1, 400)
    bounds = again.compact_memory(150)
    assert bounds is not None
    again.write_compaction(bounds[0], bounds[1])
    expected = image(again)
    again.close()
    third = opened(tmp_path)
    assert image(third) == expected and third.first_index == 151
    third.close()


def test_a_crash_between_the_compaction_frame_and_the_segment_deletion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = opened(tmp_path)
    for i in range(1, 300, 10):
        log.save(HardState(1, "a", i + 9), recs(i, i + 10))
    many = len(segments(tmp_path))
    bounds = log.compact_memory(250)
    assert bounds is not None
    with monkeypatch.context() as m:  # the crash comes right after the frame's fdatasync
        m.setattr(DurableLog, "_drop_segments_below", lambda self, first_index: None)
        log.write_compaction(bounds[0], bounds[1])
    expected = image(log)
    log.close()
    assert len(segments(tmp_path)) == many
    again = opened(tmp_path)
    assert image(again) == expected
    again.compact_prefix(260)  # the next compaction deletes what the crash left
    assert len(segments(tmp_path)) < many
    expected = image(again)
    again.close()
    third = opened(tmp_path)
    assert image(third) == expected and third.first_index == 261
    third.close()


def test_a_crash_that_brings_back_the_newest_deleted_segment_reopens_the_same_log(tmp_path: Path) -> None:
    """A compaction deletes old segments oldest first and makes each deletion durable before the
    next, but not the last one: a crash may bring that one back. It directly precedes the oldest
    segment kept, so the log reopens as it was, cut at the durable compaction point."""
    log = opened(tmp_path)
    for i in range(1, 400, 10):
        log.save(HardState(1, "a", i + 9), recs(i, i + 10))
    before = segments(tmp_path)
    kept = {p: p.read_bytes() for p in before}
    log.compact_prefix(300)
    after = segments(tmp_path)
    gone = [p for p in before if p not in after]
    assert len(gone) >= 2
    expected = image(log)
    log.close()
    gone[-1].write_bytes(kept[gone[-1]])  # the newest deletion, lost in the crash
    again = opened(tmp_path)
    assert image(again) == expected
    again.compact_prefix(320)  # deleted again by the next compaction
    assert not gone[-1].exists()
    expected = image(again)
    again.close()
    third = opened(tmp_path)
    assert image(third) == expected
    third.close()


def _filled(path: Path, upto: int = 400) -> DurableLog:
    log = opened(path)
    for i in range(1, upto, 10):
        log.save(HardState(1, "a", i + 9), recs(i, i + 10))
    return log


def doomed(path: Path) -> list[Path]:
    return sorted((path / "wal").glob("*.wal.del"))


def test_a_compaction_in_steps_renames_the_old_segments_aside_then_deletes_them_piece_by_piece(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the Raft driver does: the log writer renames the compacted segments aside (cheap),
    then deletes them a bounded piece per `delete_step` between later writes: first the
    directory fsync that makes the renames durable, then a truncation per step, the unlink last."""
    monkeypatch.setattr(storage_module, "DELETE_STEP_BYTES", 1024)
    log = _filled(tmp_path)
    before = segments(tmp_path)
    bounds = log.compact_memory(300)
    assert bounds is not None
    log.write_compaction(bounds[0], bounds[1], in_steps=True)
    renamed = doomed(tmp_path)
    assert len(renamed) >= 2 and all(Path(str(p)[: -len(".del")]) in before for p in renamed)
    assert all(p not in segments(tmp_path) for p in (Path(str(p)[: -len(".del")]) for p in renamed))
    sizes = {p: p.stat().st_size for p in renamed}
    assert log.delete_step() is True  # the directory fsync: nothing shortened yet
    assert {p: p.stat().st_size for p in renamed} == sizes
    steps = 1
    log.append(recs(400, 405))  # writes go on between the steps
    while log.delete_step():
        steps += 1
        assert steps < 1000
    assert not doomed(tmp_path) and steps > len(renamed) * (SMALL // 1024 - 1)
    expected = image(log)
    log.close()
    again = opened(tmp_path)
    assert image(again) == expected and again.first_index == 301
    again.close()


def test_a_crash_during_a_deletion_in_steps_reopens_the_same_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after some steps leaves a shortened `.wal.del` file (deleted at the next open),
    and may undo any subset of the renames (no directory fsync between them): a segment brought
    back under its own name holds only entries below the durable compaction point, even with a
    gap to the next segment kept, and the log reopens cut at that point."""
    monkeypatch.setattr(storage_module, "DELETE_STEP_BYTES", 1024)
    log = _filled(tmp_path, 600)
    before = segments(tmp_path)
    kept = {p: p.read_bytes() for p in before}
    bounds = log.compact_memory(500)
    assert bounds is not None
    log.write_compaction(bounds[0], bounds[1], in_steps=True)
    renamed = [Path(str(p)[: -len(".del")]) for p in doomed(tmp_path)]
    assert len(renamed) >= 3
    log.delete_step()
    log.delete_step()  # the first renamed segment shortened once
    expected = image(log)
    log.close()
    # The crash: the oldest and a middle rename undone, the others not (a gap between them and
    # after them), the shortened file left as it was.
    renamed[0].write_bytes(kept[renamed[0]])
    renamed[2].write_bytes(kept[renamed[2]])
    again = opened(tmp_path)
    assert image(again) == expected and again.first_index == 501
    assert not doomed(tmp_path)  # the interrupted deletion finished at open
    again.compact_prefix(520)  # the segments brought back go with the next compaction
    assert not renamed[0].exists() and not renamed[2].exists()
    expected = image(again)
    again.close()
    third = opened(tmp_path)
    assert image(third) == expected
    third.close()


def test_a_gap_between_segments_above_the_compaction_point_is_corruption(tmp_path: Path) -> None:
    """Replay accepts a gap between segments only below the durable compaction point: a
    missing segment whose entries the log still needs fails the open."""
    log = _filled(tmp_path)
    log.compact_prefix(50)
    middle = segments(tmp_path)[len(segments(tmp_path)) // 2]
    log.close()
    middle.unlink()
    with pytest.raises(CorruptStorage, match="log starts at"):
        opened(tmp_path)


def test_a_failed_deletion_piece_leaves_the_file_for_the_next_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A piece that fails (an I/O error) is not retried after every later write: the file stays
    renamed aside, the log goes on, and the next open deletes it."""
    monkeypatch.setattr(storage_module, "DELETE_STEP_BYTES", 1024)
    log = _filled(tmp_path)
    bounds = log.compact_memory(300)
    assert bounds is not None
    log.write_compaction(bounds[0], bounds[1], in_steps=True)
    renamed = doomed(tmp_path)
    assert renamed
    assert log.delete_step() is True  # the directory fsync

    def failing(path: str, length: int) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(storage_module.os, "truncate", failing)
        steps = 0
        while log.delete_step():
            steps += 1
            assert steps < 100
    assert doomed(tmp_path) == renamed and log.delete_step() is False
    log.append(recs(400, 405))
    expected = image(log)
    log.close()
    again = opened(tmp_path)
    assert image(again) == expected and not doomed(tmp_path)
    again.close()
