"""Raft log storage compared: proconsul's DurableLog against naive segment-file designs.

Run by hand: `.venv/bin/python bench/raft_storage.py [--seconds 4] [--rounds 3]`. Each round
persists what a Raft `Ready` needs, hard state (term, vote, commit) plus a batch of 256-byte
entries, durably, in batches of 1 and 16:
- `durable-log`: proconsul.raft.storage.DurableLog, one write + fdatasync per batch (SQLite WAL,
  one transaction per batch, before issue 21: bench/raft_log_write.py compares the two);
- `segments`: an append-only segment file with fdatasync per batch, plus the hard state written
  atomically to its own file (write, fsync, rename, fsync dir), as a segment design must;
- `segments-nohs`: the segment file alone, the best case for segments (no hard state).
Rounds alternate the order to spread the machine's noise. Results go to docs/STORAGE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import tree_daemon  # noqa: E402,F401  (this tree's proconsul, not the venv's)
from proconsul.raft.storage import HardState, LogRecord, atomic_write, raft_log

PAYLOAD = b"x" * 256


def bench_durable_log(directory: str, batch: int, seconds: float) -> float:
    log = raft_log(directory)
    log.open()
    index, batches = 1, 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        entries = [LogRecord(index + i, 1, 0, PAYLOAD) for i in range(batch)]
        log.save(HardState(1, "me", index + batch - 1), entries)
        index += batch
        batches += 1
    elapsed = time.perf_counter() - start
    log.close()
    return batches / elapsed


def _bench_segments(directory: str, batch: int, seconds: float, hard_state: bool) -> float:
    fd = os.open(os.path.join(directory, "log.seg"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    index, batches = 1, 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        os.write(fd, b"".join(index.to_bytes(8, "big") + PAYLOAD for _ in range(batch)))
        os.fdatasync(fd)
        if hard_state:
            atomic_write(os.path.join(directory, "state"), json.dumps([1, "me", index]).encode())
        index += batch
        batches += 1
    elapsed = time.perf_counter() - start
    os.close(fd)
    return batches / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    formats = {
        "durable-log": bench_durable_log,
        "segments": lambda d, b, s: _bench_segments(d, b, s, True),
        "segments-nohs": lambda d, b, s: _bench_segments(d, b, s, False),
    }
    print(f"{'format':14} {'batch':>5} {'batches/s (median)':>19} {'entries/s':>10} {'vs ours':>9}")
    for batch in (1, 16):
        runs: dict[str, list[float]] = {name: [] for name in formats}
        for r in range(args.rounds):
            order = list(formats) if r % 2 == 0 else list(reversed(formats))
            for name in order:
                with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
                    runs[name].append(formats[name](d, batch, args.seconds))
        base = statistics.median(runs["durable-log"])
        for name, values in runs.items():
            med = statistics.median(values)
            print(f"{name:14} {batch:>5} {med:>19.0f} {med * batch:>10.0f} {med / base:>8.2f}x")


if __name__ == "__main__":
    main()
