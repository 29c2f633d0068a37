"""Per measured run of a `raft_vs_etcd.py` run: the log writers' slow steps and loop lag, per member.

    GC_TRACE=/tmp/tr flock /tmp/bench.lock .venv/bin/python bench/raft_vs_etcd.py ... > /tmp/run.txt
    .venv/bin/python bench/snapshot_writer_report.py /tmp/tr /tmp/run.txt

Reads what `raft_server_wrapper.py` writes under GC_TRACE (`<pid>.lag`, `<pid>.snap`, `<pid>.slow`,
CLOCK_MONOTONIC) and, from the bench's output, each proconsul run's label, p99 and window. Prints a
line per run and member: the largest loop lag, the largest step on the log writer (a log write,
the compaction's file half, a piece of a segment's deletion), the log writes of 5 ms or more, the
snapshots finished in the window and the slowest forwarded batch round trip (the member that
forwards). Answers "was the run's p99 outlier a snapshot's, and which step of it".
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from snapshot_lag_report import parse_run, read_rows

WRITER_STAGES = ("compact_file", "delete_step")


def runs(text: str) -> list[tuple[str, str, float, float]]:
    """(label, p99 and p99.9, start, end) of each proconsul run."""
    out = []
    for m in re.finditer(r"# round (\d+) proconsul (.+?) +c=(\d+) .*?p99 +([\d.]+) +p99\.9 +([\d.]+) ms.* t (\d+\.\d+)-(\d+\.\d+)", text):
        out.append((f"r{m.group(1)} {m.group(2).strip()} c{m.group(3)}", f"p99 {m.group(4)} p99.9 {m.group(5)}",
                    float(m.group(6)), float(m.group(7))))
    return out


def report(trace: Path, text: str) -> None:
    members, _ = parse_run(text)
    data = {}
    for pid in sorted(members):
        lag = [(float(r[0]), float(r[1])) for r in read_rows(trace / f"{pid}.lag")]
        snap = read_rows(trace / f"{pid}.snap")
        slow = read_rows(trace / f"{pid}.slow")
        data[pid] = (lag, snap, slow)
    for label, p99, a, b in runs(text):
        print(f"{label}: {p99} ms")
        for pid, (lag, snap, slow) in data.items():
            def within(t: float, a: float = a, b: float = b) -> bool:
                return a <= t <= b
            lag_max = max((x for t, x in lag if within(t)), default=0.0)
            steps = [(float(r[2]), r[1]) for r in snap if r[1] in WRITER_STAGES and within(float(r[0]))]
            writes = [float(r[2]) for r in slow if r[1] == "write_db" and within(float(r[0]))]
            steps += [(w, "write_db") for w in writes]
            top = max(steps, default=(0.0, "-"))
            fwd = max((float(r[2]) for r in slow if r[1] == "fwd_rtt" and within(float(r[0]))), default=0.0)
            finished = sum(1 for r in snap if r[1] == "finish" and within(float(r[0])))
            deletes = [float(r[2]) for r in snap if r[1] == "delete_step" and within(float(r[0]))]
            print(f"  {members[pid]:13s} lag max {lag_max:5.1f}  writer step max {top[0]:5.1f} ({top[1]})"
                  f"  writes>=5ms {sum(1 for w in writes if w >= 5.0):3d}  snapshots {finished}"
                  + (f"  delete steps {len(deletes)} (max {max(deletes):.1f})" if deletes else "")
                  + (f"  fwd rtt max {fwd:.1f}" if fwd else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace", type=Path, help="the GC_TRACE directory")
    ap.add_argument("run", type=Path, help="raft_vs_etcd.py's output")
    args = ap.parse_args()
    report(args.trace, args.run.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
