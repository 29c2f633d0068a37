"""Durable Raft storage: the log and hard state in SQLite (WAL), snapshots in files.

Owns what a server keeps in `data_dir/raft/` and the promise behind every acknowledged write:
`save()` returns only after the hard state (term, vote, commit) and the new entries are on disk,
in ONE transaction, so one fsync covers both (Raft needs both before it may answer a vote or an
append). A caller that batches the proposals queued during a save gets group commit.

Why SQLite in WAL mode rather than our own segment files (measured in bench/raft_storage.py,
recorded in docs/STORAGE.md): it was as fast or faster per fsync on this machine, it commits the
hard state and the entries atomically (segment files need a log fsync plus an atomic rename of a
state file: three fsyncs), and its write-ahead log is checksummed, so a torn commit after a crash
is rolled back at open instead of by code of ours. Every live entry is also held in memory: the
core reads terms and entries far more often than it writes.

Snapshots are files `<term>-<index>.snap` with a CRC, written atomically (temporary file, fsync,
rename, fsync the directory); the newest that verifies is used.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass


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


# Rows per INSERT statement: 4 parameters each, under SQLite's oldest limit of 999 parameters.
_ROWS_PER_INSERT = 200
_INSERT_SQL: dict[int, str] = {}


def _insert_sql(rows: int) -> str:
    sql = _INSERT_SQL.get(rows)
    if sql is None:
        sql = _INSERT_SQL[rows] = "INSERT INTO log (idx, term, kind, data) VALUES " + ", ".join(["(?, ?, ?, ?)"] * rows)
    return sql


class DurableLog:
    """The Raft log and hard state in one SQLite database, mirrored in memory for reads."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.records: list[LogRecord] = []
        self._offset = 1  # index of records[0]
        self.hard_state = HardState()
        # What the database holds; `hard_state` may be ahead of it by a commit index only.
        self.durable_hard_state = HardState()
        self.offset_term = 0  # term of the entry at first_index - 1 (the compaction point)
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)  # DiskStorage makes it 0700
        # SQLite creates the database 0644 and gives its -wal and -shm files the database's mode,
        # so the file is created 0600 first (and an existing one tightened).
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # One process owns the log: the connection takes SQLite's file locks on first use and
        # never releases them, instead of taking and dropping them around every transaction
        # (6 fcntl calls per write), and, set before WAL mode is entered, keeps the WAL index in
        # its own memory instead of a shared -shm file. Nothing else opens raft.db while its
        # server runs: `operator raft recover` and its inspection refuse a database another
        # process holds open (recovery._raft_paths), a live recovery goes through this very
        # connection, and peers.json is read by the server itself at start. A second opener
        # gets "database is locked" (a process that held the lock and died releases it).
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
        db.execute("CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, term INTEGER, kind INTEGER, data BLOB)")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")
        self._db = db
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self.hard_state = HardState(int(meta.get("term", 0)), str(meta.get("vote", "")), int(meta.get("commit", 0)))
        self.durable_hard_state = self.hard_state
        rows = db.execute("SELECT idx, term, kind, data FROM log ORDER BY idx").fetchall()
        self.records = [LogRecord(i, t, k, bytes(d)) for i, t, k, d in rows]
        for a, b in zip(self.records, self.records[1:]):
            if b.index != a.index + 1:
                raise CorruptStorage(f"{self.path}: log jumps from index {a.index} to {b.index}")
        self._offset = int(meta.get("first_index", 1))
        self.offset_term = int(meta.get("offset_term", 0))
        if self.records and self.records[0].index != self._offset:
            raise CorruptStorage(f"{self.path}: log starts at {self.records[0].index}, expected {self._offset}")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

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
        """Durably apply, in one transaction: drop entries >= truncate_from, append `entries`,
        record `hard_state`. Returns after the commit is fsynced."""
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
        """The durable half of `save`: safe to run in a worker thread (touches only SQLite)."""
        assert self._db is not None, "open() first"
        db = self._db
        db.execute("BEGIN")
        try:
            if truncate_from is not None:
                db.execute("DELETE FROM log WHERE idx >= ?", (truncate_from,))
            # One multi-row INSERT per chunk instead of executemany's statement per row: the
            # sqlite3 module releases the GIL around every step, and this runs in the log-writer
            # thread while the event loop holds the GIL, so each reacquisition could wait a whole
            # switch interval (bench/raft_vs_etcd.py: 1.1 ms per write_db at c=16 vs 0.4 at c=1).
            for lo in range(0, len(batch), _ROWS_PER_INSERT):
                chunk = batch[lo : lo + _ROWS_PER_INSERT]
                db.execute(_insert_sql(len(chunk)), [v for r in chunk for v in (r.index, r.term, r.kind, r.data)])
            durable = self.durable_hard_state
            if hard_state is not None and hard_state != durable:
                if hard_state.term == durable.term and hard_state.vote == durable.vote:
                    # The common case (a batch of entries and the commit index it moved): one
                    # row replaced instead of three.
                    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('commit', ?)", (hard_state.commit,))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?), (?, ?), (?, ?)",
                        ("term", hard_state.term, "vote", hard_state.vote, "commit", hard_state.commit),
                    )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
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
        """Forget records with index <= upto_index (they are covered by a snapshot)."""
        if upto_index < self._offset:
            return
        upto_index = min(upto_index, self.last_index)
        term = self.get(upto_index)
        offset_term = term.term if term is not None else self.offset_term
        assert self._db is not None
        self._db.execute("BEGIN")
        self._db.execute("DELETE FROM log WHERE idx <= ?", (upto_index,))
        self._db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [("first_index", upto_index + 1), ("offset_term", offset_term)],
        )
        self._db.execute("COMMIT")
        del self.records[: upto_index - self._offset + 1]
        self._offset = upto_index + 1
        self.offset_term = offset_term

    def reset(self, next_index: int, offset_term: int = 0) -> None:
        """Drop every entry and continue at next_index (after installing a snapshot)."""
        assert self._db is not None
        self._db.execute("BEGIN")
        self._db.execute("DELETE FROM log")
        self._db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [("first_index", next_index), ("offset_term", offset_term)],
        )
        self._db.execute("COMMIT")
        self.records = []
        self._offset = next_index
        self.offset_term = offset_term


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
