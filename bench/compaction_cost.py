"""What one automatic snapshot's log compaction costs, part by part, at the size a loaded server sees.

Run by hand: `PYTHONPATH=$PWD/daemon .venv/bin/python bench/compaction_cost.py [--entries 130000]
[--keep 10000] [--size 170] [--rounds 3]`.

A `DurableLog` with the default 16 MiB segments is filled with `--entries` entries of `--size`
bytes (about a KV PUT's command; in batches of 500, so the fill is quick), then compacted up to
`entries - keep` as the Raft driver does after a snapshot (`trailing_logs` = `--keep`). Timed
apart (perf_counter), median of `--rounds` fresh logs:
- `memory`: `compact_memory` (the bounds move; the dropped records are handed back);
- `free`: dropping those records all at once (what the loop paid inside `compact_prefix`
  before the driver freed them a slice per loop iteration);
- `frame`: the compaction frame's write and fdatasync;
- `segments`: the old segments' unlinks and directory fsyncs.
Before issue 21's snapstall change all four ran on the event loop in `compact_prefix`; now
`memory` runs on the loop, `free` in slices of 2,048 records, `frame` and `segments` on the
log writer thread.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import tree_daemon  # noqa: F401  (this tree's proconsul, not the venv's)
from proconsul.raft import storage
from proconsul.raft.storage import HardState, LogRecord, raft_log


def one_round(directory: str, entries: int, keep: int, size: int) -> dict[str, float]:
    log = raft_log(directory)
    log.open()
    payload = b"p" * size
    for lo in range(1, entries + 1, 500):
        hi = min(lo + 500, entries + 1)
        # bytes(...) per record: each its own object, as entries decoded from the wire are
        log.save(HardState(1, "a", hi - 1), [LogRecord(i, 1, 0, bytes(payload)) for i in range(lo, hi)])
    times: dict[str, float] = {}
    segments_before = len(log._segments)
    drop = storage.DurableLog._drop_segments_below

    def timed_drop(self: storage.DurableLog, first_index: int) -> None:
        t0 = time.perf_counter()
        drop(self, first_index)
        times["segments"] = (time.perf_counter() - t0) * 1000.0

    storage.DurableLog._drop_segments_below = timed_drop  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        bounds = log.compact_memory(entries - keep)
        times["memory"] = (time.perf_counter() - t0) * 1000.0
        assert bounds is not None
        first, offset_term, dropped = bounds
        t0 = time.perf_counter()
        del dropped[:]
        times["free"] = (time.perf_counter() - t0) * 1000.0
        t0 = time.perf_counter()
        log.write_compaction(first, offset_term)
        times["frame"] = (time.perf_counter() - t0) * 1000.0 - times["segments"]
    finally:
        storage.DurableLog._drop_segments_below = drop  # type: ignore[method-assign]
    times["segments_dropped"] = segments_before - len(log._segments)
    log.close()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=130_000)
    ap.add_argument("--keep", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=170)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rounds = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="compaction_cost.", dir="/tmp") as d:
            rounds.append(one_round(d, args.entries, args.keep, args.size))
    for key in ("memory", "free", "frame", "segments", "segments_dropped"):
        values = [r[key] for r in rounds]
        print(f"{key:17} median {statistics.median(values):8.2f}  all {', '.join(f'{v:.2f}' for v in values)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
