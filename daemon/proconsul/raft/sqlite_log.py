"""Reading the Raft log of versions before issue 21 (`raft/raft.db`, SQLite) for the upgrade.

Owns the old database's schema, read only: `storage.DurableLog` imports what it holds into the
segment log once, then moves the database aside. Nothing writes this format any more.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SqliteLog:
    term: int
    vote: str
    commit: int
    first_index: int
    offset_term: int
    rows: list[tuple[int, int, int, bytes]]  # (index, term, kind, data), by index


def read_sqlite_log(path: str) -> SqliteLog:
    """Everything an old `raft.db` holds (its WAL, if any, is read and checkpointed by SQLite)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        meta: dict[str, str | int] = {}
        if "meta" in tables:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        rows = []
        if "log" in tables:
            rows = [(int(i), int(t), int(k), bytes(d)) for i, t, k, d in db.execute(
                "SELECT idx, term, kind, data FROM log ORDER BY idx")]
    finally:
        db.close()
    return SqliteLog(int(meta.get("term", 0)), str(meta.get("vote", "")), int(meta.get("commit", 0)),
                     int(meta.get("first_index", 1)), int(meta.get("offset_term", 0)), rows)
