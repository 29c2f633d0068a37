"""Durable Raft storage: the log and hard state in our own segment files, snapshots in files.

Owns what a server keeps in `data_dir/raft/` and the promise behind every acknowledged write:
`save()` (or `write_db`, its durable half) returns only after the hard state (term, vote,
commit) and the new entries are on disk, in ONE write and ONE `fdatasync` (Raft needs both
before it may answer a vote or an append). A caller that batches the proposals queued during a
save gets group commit.

The log is `raft/wal/`: append-only segment files (format in raft/wal.py: one checksummed frame
per write, preallocated files) and a `LOCK` file whose `flock` makes one process the owner.
Every live entry is also held in memory: the core reads terms and entries far more often than
it writes, so the files are only ever appended to, and read back once, at open.

Why our own files rather than SQLite (issue 21; SQLite in WAL mode was used until then, and an
old `raft/raft.db` is imported at the first open, see `_import_sqlite`): a SQLite transaction
cost 172 µs of CPU for one entry against 61 µs for a write plus fdatasync, on the critical path
of every write on every member (bench/raft_log_write.py, docs/PERFORMANCE.md). The checksummed
frames give what SQLite's WAL gave: a write torn by a crash is dropped whole at open.

Segments and compaction: a segment is filled up to `segment_bytes` and the next one started
(created under a temporary name, preallocated, fsynced, renamed, the directory fsynced), and its
first frame restates the log's bounds and the hard state, so a segment never depends on the
ones before it for those. `compact_prefix` records the new first index (fdatasync) and deletes
the oldest segments whose entries all lie below it; the Raft driver runs its two halves apart
(`compact_memory` on the event loop, `write_compaction` on its log writer thread), and there the
old segments are renamed aside and deleted a bounded piece at a time between later log writes
(`delete_step`). Replay applies the records in order, exactly as `apply_memory` /
`compact_prefix` / `reset` changed the memory image when they ran; a gap between segments (a
crash undid some of a compaction's deletions) is accepted when the durable compaction point lies
past it.

Damage: in the newest segment, a frame that fails its checksum with nothing valid after it is a
write torn by a crash (never acknowledged): it is dropped and zeroed before the next write. A
damaged frame followed by a valid one, or any damage in an older (complete) segment, is
`CorruptStorage` naming the file and offset: an operator decides.

Snapshots are files `<term>-<index>.snap` with a CRC, written atomically (temporary file, fsync,
rename, fsync the directory); the newest that verifies is used.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from proconsul.raft import wal
from proconsul.raft.sqlite_log import read_sqlite_log

logger = logging.getLogger(__name__)

LOG_DIR = "wal"  # the log's directory inside the raft directory
LEGACY_DB = "raft.db"  # the SQLite log of versions before issue 21, imported once
SEGMENT_BYTES = 16 << 20
_SEGMENT_NAME = re.compile(r"^(\d{20})\.wal$")
# A compacted segment deleted in the background is renamed to `<seq>.wal<DOOMED>` (replay never
# reads it; the next open deletes a leftover) and shrunk by this much per step before its unlink.
# Freeing a segment's extents costs about 1 ms per MB on this box under load (ext4, `discard`):
# 16 MB in one unlink held the log writer 7-15 ms, 4 MB steps 2-7 ms, 1 MB steps 0.6-1.1 ms.
DOOMED = ".del"
DELETE_STEP_BYTES = 1 << 20


class CorruptStorage(Exception):
    """Storage is damaged (e.g. a gap in the log); the server needs an operator."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    index: int
    term: int
    kind: int
    data: bytes


@dataclass(frozen=True, slots=True)
class HardState:
    term: int = 0
    vote: str = ""
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int
    term: int
    config: bytes  # the membership configuration at `index`, encoded by the core


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: str) -> None:
    """Create `path` (and parents) and make it 0700: the Raft log and snapshots hold every KV
    value and token the cluster stores, so no other local user may list or read them."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)  # makedirs leaves an existing directory's mode, and umask may widen none


def _private_create(path: str) -> int:
    """Open `path` for writing, created (or truncated) with mode 0600 whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file left by an older version keeps its mode otherwise
    return fd


def atomic_write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with os.fdopen(_private_create(tmp), "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


class LogLocked(Exception):
    """Another process (or another DurableLog in this one) has this Raft log open."""


def raft_log(raft_dir: str, segment_bytes: int = SEGMENT_BYTES) -> DurableLog:
    """The Raft log of a server's raft directory (not opened), importing an old raft.db."""
    return DurableLog(os.path.join(raft_dir, LOG_DIR), os.path.join(raft_dir, LEGACY_DB), segment_bytes)


def log_file_names(raft_dir: str) -> list[str]:
    """The log's files (and directory) relative to `raft_dir`, for `operator raft recover`."""
    names = [LOG_DIR]
    directory = os.path.join(raft_dir, LOG_DIR)
    if os.path.isdir(directory):
        names += [os.path.join(LOG_DIR, n) for n in sorted(os.listdir(directory))]
    return names


class _Segment:
    __slots__ = ("seq", "path", "max_index")

    def __init__(self, seq: int, path: str, max_index: int) -> None:
        self.seq = seq
        self.path = path
        self.max_index = max_index  # highest entry index written into it (0: none)


class DurableLog:
    """The Raft log and hard state in segment files (raft/wal.py), mirrored in memory for reads."""

    def __init__(self, directory: str, import_from: str | None = None, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.path = directory
        self.import_from = import_from
        self.segment_bytes = segment_bytes
        self.records: list[LogRecord] = []
        self._offset = 1  # index of records[0]
        self.hard_state = HardState()
        # What the files hold; `hard_state` may be ahead of it by a commit index only.
        self.durable_hard_state = HardState()
        self.offset_term = 0  # term of the entry at first_index - 1 (the compaction point)
        # (first index, offset term) as the files record them: `compact_memory` moves the
        # memory's ahead of the files until `write_compaction` runs (on the log writer thread,
        # which also starts segments and restates the bounds in their first frame).
        self._durable_bounds = (1, 0)
        self._lock_fd: int | None = None
        self._fd: int | None = None  # the newest segment, written at self._pos
        self._pos = 0
        self._tail_frames = 0  # frames in the newest segment, its meta frame included
        self._segments: list[_Segment] = []
        self._broken: BaseException | None = None
        self._unlink_unsynced = False  # a segment deleted since the directory's last fsync
        # Compacted segments renamed aside, deleted a step at a time by `delete_step` (on the
        # log writer thread, between log writes); `_doomed_renamed`: renames not yet fsynced.
        self._doomed: list[list[Any]] = []  # [path, bytes left]
        self._doomed_renamed = False
        self._doomed_lock = threading.Lock()

    # ------------------------------------------------------------------------------- open/close

    def open(self) -> None:
        new = not os.path.isdir(self.path)
        private_dir(self.path)
        if new:  # the directory's own entry, durable before anything in it is acknowledged
            _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        lock = os.open(os.path.join(self.path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(lock, 0o600)
            # One process owns the log: `operator raft recover` and its inspection, or a second
            # server pointed at this data directory, are refused while a server runs (a process
            # that held the lock and died releases it).
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise LogLocked(f"{self.path}: the Raft log is locked by another process (is a server running on it?)") from None
        except BaseException:
            os.close(lock)
            raise
        self._lock_fd = lock
        try:
            self._open_locked()
        except BaseException:
            self.close()
            raise

    def _open_locked(self) -> None:
        for name in os.listdir(self.path):
            if name.endswith((".wal.tmp", ".wal" + DOOMED)):
                # A segment whose creation a crash interrupted, or a compacted one whose
                # deletion it interrupted.
                os.unlink(os.path.join(self.path, name))
        seqs = sorted(int(m.group(1)) for m in map(_SEGMENT_NAME.match, os.listdir(self.path)) if m)
        legacy = self.import_from
        if legacy is not None and os.path.exists(legacy):
            if not seqs:
                self._import_sqlite(legacy)
                seqs = [1]
            else:
                # Imported already; a crash came before the database was moved aside.
                self._move_aside(legacy)
        if not seqs:
            self._create_segment(1, self._meta_frame())
            seqs = [1]
        self._segments = [_Segment(q, os.path.join(self.path, f"{q:020d}.wal"), 0) for q in seqs]
        self._replay()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _replay(self) -> None:
        records: list[LogRecord] = []
        offset, offset_term, bounds = 1, 0, 1
        hs = HardState()
        newest = len(self._segments) - 1
        scan = None
        for k, seg in enumerate(self._segments):
            with open(seg.path, "rb") as fh:
                data = fh.read()
            scan = wal.scan_segment(data)
            if scan.bad_at is not None and (k < newest or scan.bad_followed):
                raise CorruptStorage(f"{seg.path}: damaged record at offset {scan.bad_at}")
            if k < newest and scan.dirty_end > scan.end:
                raise CorruptStorage(f"{seg.path}: data after the end of the log at offset {scan.end}")
            seg_start = True  # no entry of this segment read yet
            for body in scan.bodies:
                try:
                    for kind, a, b, c, extra in wal.records(body):
                        if kind == wal.T_ENTRY:
                            if seg_start and records and a > records[-1].index + 1:
                                # A gap between segments: compacted segments deleted without a
                                # directory fsync between them, and a crash brought back an
                                # older one. What precedes the gap is below the durable
                                # compaction point, or the bounds check below fails the open.
                                records, offset = [], a
                            seg_start = False
                            if records and a != records[-1].index + 1:
                                raise CorruptStorage(f"{seg.path}: log jumps from index {records[-1].index} to {a}")
                            if not records:
                                offset = a
                            records.append(LogRecord(a, b, c, extra))  # type: ignore[arg-type]
                            seg.max_index = max(seg.max_index, a)
                        elif kind == wal.T_TRUNCATE:
                            if records and a <= records[-1].index:
                                del records[max(a - offset, 0) :]
                        elif kind == wal.T_HARD:
                            hs = HardState(a, extra, b)  # type: ignore[arg-type]
                        elif kind == wal.T_COMPACT:
                            if records:
                                del records[: max(a - offset, 0)]
                            offset = max(offset, a) if records else a
                            bounds, offset_term = a, b
                        else:  # T_RESET
                            records, offset, bounds, offset_term = [], a, a, b
                except wal.BadFrame as exc:
                    raise CorruptStorage(f"{seg.path}: {exc}") from None
        if records and records[0].index != bounds:
            # The first segment left starts past the compaction point its successors record:
            # the entries between are in no file.
            raise CorruptStorage(f"{self.path}: log starts at {records[0].index}, expected {bounds}")
        self.records = records
        self._offset = bounds
        self.offset_term = offset_term
        self._durable_bounds = (bounds, offset_term)
        self.hard_state = self.durable_hard_state = hs
        tail = self._segments[-1]
        fd = os.open(tail.path, os.O_RDWR)
        assert scan is not None
        if scan.dirty_end > scan.end:
            # A torn last write: zeroed, so that no leftover of it can follow the next frame.
            logger.warning("raft: %s: dropped a torn write at offset %d (%d bytes)", tail.path, scan.end,
                           scan.dirty_end - scan.end)
            os.pwrite(fd, bytes(scan.dirty_end - scan.end), scan.end)
            os.fdatasync(fd)
        self._fd, self._pos = fd, scan.end
        self._tail_frames = len(scan.bodies)

    # ------------------------------------------------------------------------------- segments

    def _meta_frame(self) -> bytes:
        """A segment's first frame: the log's durable bounds and the durable hard state."""
        hs = self.durable_hard_state
        first, offset_term = self._durable_bounds
        return self._frame(wal.encode_bounds(wal.T_COMPACT, first, offset_term)
                           + wal.encode_hard(hs.term, hs.vote, hs.commit))

    @staticmethod
    def _frame(body: bytes) -> bytes:
        return wal.frame_header(body) + body

    def _create_segment(self, seq: int, content: bytes) -> str:
        """A new segment holding `content`, durable (file and directory) before it is used."""
        path = os.path.join(self.path, f"{seq:020d}.wal")
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.posix_fallocate(fd, 0, max(self.segment_bytes, len(content)))
            _write_all(fd, [content], 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(self.path)
        self._unlink_unsynced = False  # the fsync made every earlier deletion durable too
        return path

    def _roll(self) -> None:
        seq = self._segments[-1].seq + 1
        meta = self._meta_frame()
        path = self._create_segment(seq, meta)
        fd = os.open(path, os.O_RDWR)
        assert self._fd is not None
        os.close(self._fd)
        self._fd, self._pos = fd, len(meta)
        self._tail_frames = 1
        self._segments.append(_Segment(seq, path, 0))

    def _write_frame(self, body: bytes, max_index: int) -> None:
        """Append one frame to the newest segment and fdatasync it."""
        if self._broken is not None:
            raise CorruptStorage(f"{self.path}: an earlier write failed ({self._broken}); restart the server")
        assert self._fd is not None, "open() first"
        size = wal.FRAME.size + len(body)
        if self._pos + size > self.segment_bytes and self._tail_frames > 1:
            # Full. A segment holding only its meta frame takes the frame however large it is (it
            # grows), so one oversized frame never rolls twice. A segment of hard-state or
            # compaction frames alone (a partitioned server voting for itself term after term)
            # rolls like any other instead of growing without bound.
            self._roll()
        try:
            _write_all(self._fd, [wal.frame_header(body), body], self._pos)
            # After a failed fdatasync the page cache may say the data is written when the disk
            # does not have it: no retry, the log refuses every later write.
            os.fdatasync(self._fd)
        except BaseException as exc:
            self._broken = exc
            raise
        self._pos += size
        self._tail_frames += 1
        seg = self._segments[-1]
        if max_index > seg.max_index:
            seg.max_index = max_index

    def _import_sqlite(self, legacy: str) -> None:
        old = read_sqlite_log(legacy)
        records = [LogRecord(i, t, k, d) for i, t, k, d in old.rows]
        for a, b in zip(records, records[1:]):
            if b.index != a.index + 1:
                raise CorruptStorage(f"{legacy}: log jumps from index {a.index} to {b.index}")
        if records and records[0].index != old.first_index:
            raise CorruptStorage(f"{legacy}: log starts at {records[0].index}, expected {old.first_index}")
        body = [wal.encode_bounds(wal.T_COMPACT, old.first_index, old.offset_term),
                wal.encode_hard(old.term, old.vote, old.commit)]
        frames = [self._frame(b"".join(body))]
        for lo in range(0, len(records), 4096):
            frames.append(self._frame(_encode_entries(records[lo : lo + 4096])))
        self._create_segment(1, b"".join(frames))
        logger.warning("raft: imported %d log entries (indexes %d-%d) and the hard state (term %d, commit %d) "
                       "from %s into %s", len(records), old.first_index, old.first_index + len(records) - 1,
                       old.term, old.commit, legacy, self.path)
        self._move_aside(legacy)

    @staticmethod
    def _move_aside(legacy: str) -> None:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(legacy + suffix):
                os.replace(legacy + suffix, legacy + suffix + ".imported")
        _fsync_dir(os.path.dirname(legacy) or ".")
        logger.warning("raft: %s (imported into the new log) moved aside to %s.imported; it may be deleted",
                       legacy, legacy)

    # ------------------------------------------------------------------------------- queries

    @property
    def first_index(self) -> int:
        return self._offset

    @property
    def last_index(self) -> int:
        return self._offset + len(self.records) - 1

    def get(self, index: int) -> LogRecord | None:
        i = index - self._offset
        if 0 <= i < len(self.records):
            return self.records[i]
        return None

    def slice(self, lo: int, hi: int) -> list[LogRecord]:
        """Records with lo <= index < hi (clamped to what is held)."""
        a = max(lo - self._offset, 0)
        b = max(min(hi - self._offset, len(self.records)), 0)
        return self.records[a:b]

    # ------------------------------------------------------------------------------- writing

    def save(
        self,
        hard_state: HardState | None = None,
        entries: Iterable[LogRecord] = (),
        truncate_from: int | None = None,
    ) -> None:
        """Durably apply, in one write: drop entries >= truncate_from, append `entries`, record
        `hard_state`. Returns after the write is fdatasynced."""
        batch = list(entries)
        truncate_from = self.check_append(batch, truncate_from)
        self.write_db(hard_state, batch, truncate_from)
        self.apply_memory(hard_state, batch, truncate_from)

    def check_append(self, batch: list[LogRecord], truncate_from: int | None) -> int | None:
        """Validate a batch against the log; returns the effective truncation point."""
        if truncate_from is None and batch and batch[0].index <= self.last_index:
            truncate_from = batch[0].index  # overwriting a conflicting tail
        expected = truncate_from if truncate_from is not None else self.last_index + 1
        if batch and self.records and batch[0].index != expected:
            raise ValueError(f"append at {batch[0].index} but the log continues at {expected}")
        return truncate_from

    def write_db(self, hard_state: HardState | None, batch: list[LogRecord], truncate_from: int | None) -> None:
        """The durable half of `save`: one frame, one write, one fdatasync. Safe to run in a
        worker thread: it touches only the files and `durable_hard_state` (the memory image is
        the caller's, in `apply_memory`, and nothing else writes while it runs)."""
        parts = [_encode_entries(batch)] if batch else []
        if truncate_from is not None:
            parts.insert(0, wal.TRUNCATE.pack(wal.T_TRUNCATE, truncate_from))
        if hard_state is not None and hard_state != self.durable_hard_state:
            parts.append(wal.encode_hard(hard_state.term, hard_state.vote, hard_state.commit))
        if parts:
            self._write_frame(b"".join(parts), batch[-1].index if batch else 0)
        if hard_state is not None:
            self.durable_hard_state = hard_state

    def apply_memory(self, hard_state: HardState | None, batch: list[LogRecord], truncate_from: int | None) -> None:
        """The in-memory half of `save`, run on the caller's thread after write_db returned."""
        if truncate_from is not None and truncate_from <= self.last_index:
            del self.records[max(truncate_from - self._offset, 0) :]
        if batch:
            if not self.records:
                self._offset = batch[0].index
            self.records.extend(batch)
        if hard_state is not None:
            self.hard_state = hard_state

    def append(self, records: Iterable[LogRecord]) -> None:
        self.save(entries=records)

    def compact_prefix(self, upto_index: int) -> None:
        """Forget records with index <= upto_index (they are covered by a snapshot): one small
        durable write, then the oldest segments holding only such records are deleted. Both
        halves at once, on the caller's thread; the Raft driver runs them apart (below)."""
        bounds = self.compact_memory(upto_index)
        if bounds is not None:
            self.write_compaction(bounds[0], bounds[1])

    def compact_memory(self, upto_index: int) -> tuple[int, int, list[LogRecord]] | None:
        """The in-memory half of `compact_prefix`: the log's first index moves past
        `upto_index` now. Returns the new bounds (first index, term of the entry before it) for
        `write_compaction`, and the records dropped, for the caller to free: freeing 100,000
        records at once held a loaded server's event loop for 30-80 ms, so the driver frees
        them a slice at a time. None when nothing is dropped.

        Safe before the durable half: the entries dropped are covered by a snapshot file that is
        already durable, so a crash before `write_compaction` only leaves a longer log on disk,
        which recovers as it did before the compaction."""
        if upto_index < self._offset:
            return None
        upto_index = min(upto_index, self.last_index)
        rec = self.get(upto_index)
        offset_term = rec.term if rec is not None else self.offset_term
        records = self.records
        cut = upto_index - self._offset + 1
        # A new list for the records kept (the trailing ones, a few thousand references); the
        # old one keeps only the dropped records, which go to the caller.
        self.records = records[cut:]
        del records[cut:]
        self._offset = upto_index + 1
        self.offset_term = offset_term
        return self._offset, offset_term, records

    def write_compaction(self, first_index: int, offset_term: int, in_steps: bool = False) -> None:
        """The durable half of `compact_prefix`: record the compaction point (one frame, one
        fdatasync), then delete the oldest segments whose entries all lie below it. Touches only
        the files, like `write_db`: the Raft driver runs it on its log writer thread, in order
        with the log writes (a write queued after it waits for it).

        `in_steps`: the segments are only renamed aside here, and `delete_step` deletes them
        later, a piece at a time (the driver's log writer calls it between writes)."""
        self._write_frame(wal.encode_bounds(wal.T_COMPACT, first_index, offset_term), 0)
        self._durable_bounds = (first_index, offset_term)
        if in_steps:
            self._doom_segments_below(first_index)
        else:
            self._drop_segments_below(first_index)

    def reset(self, next_index: int, offset_term: int = 0) -> None:
        """Drop every entry and continue at next_index (after installing a snapshot)."""
        self._write_frame(wal.encode_bounds(wal.T_RESET, next_index, offset_term), 0)
        self._durable_bounds = (next_index, offset_term)
        self.records = []
        self._offset = next_index
        self.offset_term = offset_term
        self._drop_segments_below(next_index)

    def _drop_segments_below(self, first_index: int) -> None:
        """Delete the oldest complete segments whose entries all precede `first_index`. Their
        bounds and hard state are restated by every later segment's first frame, and the
        compaction point they no longer hold was made durable before this runs."""
        while len(self._segments) > 1 and self._segments[0].max_index < first_index:
            if self._unlink_unsynced:
                # Oldest first, each deletion durable before the next: a crash never leaves an
                # old segment whose successor is gone (its entries would not connect to the
                # next one's).
                _fsync_dir(self.path)
            seg = self._segments.pop(0)
            os.unlink(seg.path)
            # Not made durable here: a crash that brings back the newest deleted segment
            # leaves one that directly precedes the oldest kept, which replays as a longer log
            # cut again by the durable compaction point. The directory fsync (10-20 ms on a busy
            # box, on the log writer's path) comes with the next deletion or new segment.
            self._unlink_unsynced = True

    def _doom_segments_below(self, first_index: int) -> None:
        """Rename the segments `_drop_segments_below` would delete to `<seq>.wal.del`, for
        `delete_step`. A rename is 0.04-0.12 ms where a 16 MB segment's unlink took 2.4-20 ms,
        and the unlink's freeing of extents (and, on a file system mounted with `discard`, the
        discard at the journal's next commit) slowed the fdatasyncs of the writes after it.

        Crash safety: the compaction point is durable before this runs. A crash may undo any
        subset of these renames (no directory fsync between them): a segment brought back holds
        only entries below that point, and replay cuts them (at a gap between segments, too).
        No step shortens a renamed file before the directory fsync that makes the renames
        durable, so a crash never brings back a shortened segment under its own name."""
        doomed = []
        while len(self._segments) > 1 and self._segments[0].max_index < first_index:
            seg = self._segments.pop(0)
            size = os.stat(seg.path).st_size
            os.rename(seg.path, seg.path + DOOMED)
            doomed.append([seg.path + DOOMED, size])
        if doomed:
            with self._doomed_lock:
                self._doomed.extend(doomed)
                self._doomed_renamed = True

    def delete_step(self) -> bool:
        """One bounded piece of deleting the renamed segments: the directory fsync that makes
        their renames durable, then per file a `DELETE_STEP_BYTES` truncation or, once it is
        short, its unlink. True while pieces remain. Thread-safe (a lock around the list).

        One system call per piece: on the log writer thread each call that releases the GIL
        waits up to the switch interval (0.5 ms) to take it back from a busy event loop."""
        with self._doomed_lock:
            if not self._doomed:
                return False
            if self._doomed_renamed:
                self._doomed_renamed = False
                try:
                    _fsync_dir(self.path)
                except OSError as exc:
                    # Nothing may be shortened before the renames are durable: the files are
                    # left whole for the next open to delete.
                    logger.warning("raft: compacted segments left for the next open: %s", exc)
                    self._doomed.clear()
                    return False
                return True
            doomed = self._doomed[0]
            path, size = doomed
            try:
                if size > DELETE_STEP_BYTES:
                    doomed[1] = size - DELETE_STEP_BYTES
                    os.truncate(path, doomed[1])
                    return True
                os.unlink(path)
            except FileNotFoundError:  # deleted already (a reopen of the log, in a test)
                pass
            except OSError as exc:
                # Left for the next open to delete: retried after every write, it would only
                # fail again.
                logger.warning("raft: could not delete the compacted segment %s: %s", path, exc)
            self._doomed.pop(0)
            return bool(self._doomed)


def _encode_entries(batch: list[LogRecord]) -> bytes:
    pack = wal.ENTRY.pack
    t = wal.T_ENTRY
    parts: list[bytes] = []
    add = parts.append
    for r in batch:
        add(pack(t, r.index, r.term, r.kind, len(r.data)))
        add(r.data)
    return b"".join(parts)


def _write_all(fd: int, buffers: list[bytes], offset: int) -> None:
    total = sum(len(b) for b in buffers)
    done = os.pwritev(fd, buffers, offset)
    if done < total:  # a short write (rare on a regular file): the rest, in one piece
        rest = b"".join(buffers)[done:]
        while rest:
            n = os.pwrite(fd, rest, offset + done)
            done += n
            rest = rest[n:]

_SNAP_HEADER = struct.Struct(">QQII")  # index, term, config length, crc of config+data


class SnapshotStore:
    """Snapshots as `<term>-<index>.snap` files, written atomically; the newest `retain` kept."""

    def __init__(self, directory: str, retain: int = 2) -> None:
        self.directory = directory
        self.retain = retain

    def save(self, meta: SnapshotMeta, data: bytes) -> str:
        private_dir(self.directory)
        crc = zlib.crc32(data, zlib.crc32(meta.config))
        blob = _SNAP_HEADER.pack(meta.index, meta.term, len(meta.config), crc) + meta.config + data
        path = os.path.join(self.directory, f"{meta.term:020d}-{meta.index:020d}.snap")
        atomic_write(path, blob)
        for old in self._files()[: -self.retain]:
            # A snapshot written by a worker thread may prune at the same time as one installed
            # from the leader on the loop: the other may have removed this file already.
            try:
                os.unlink(old)
            except FileNotFoundError:
                pass
        return path

    def _files(self) -> list[str]:
        if not os.path.isdir(self.directory):
            return []
        names = sorted(
            (n for n in os.listdir(self.directory) if n.endswith(".snap")),
            key=lambda n: tuple(int(p) for p in n[:-5].split("-")[::-1]),
        )
        return [os.path.join(self.directory, n) for n in names]

    def latest(self) -> tuple[SnapshotMeta, bytes] | None:
        """The newest snapshot whose checksum verifies (a damaged newest one falls back)."""
        for path in reversed(self._files()):
            with open(path, "rb") as fh:
                blob = fh.read()
            if len(blob) < _SNAP_HEADER.size:
                continue
            index, term, config_len, crc = _SNAP_HEADER.unpack_from(blob)
            config = blob[_SNAP_HEADER.size : _SNAP_HEADER.size + config_len]
            data = blob[_SNAP_HEADER.size + config_len :]
            if zlib.crc32(data, zlib.crc32(config)) != crc:
                continue
            return SnapshotMeta(index, term, config), data
        return None
