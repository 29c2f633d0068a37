"""Event-loop lag around each automatic Raft snapshot of a `raft_vs_etcd.py` run, per member.

    GC_TRACE=/tmp/tr flock /tmp/bench.lock .venv/bin/python bench/raft_vs_etcd.py ... | tee /tmp/run.txt
    .venv/bin/python bench/snapshot_lag_report.py /tmp/tr /tmp/run.txt

Reads what `raft_server_wrapper.py` writes under GC_TRACE (`<pid>.lag`, `<pid>.gc`, `<pid>.snap`,
all on CLOCK_MONOTONIC) and, from the bench's output, which pid is which member and the measured
windows of the proconsul runs (the "t <start>-<end>" of each round line). Prints, per member:
- each snapshot's stages (view on the loop, encode in its thread, finish and compaction on the
  loop, and where the tree has it the compaction's file half on the log writer thread) and the largest loop lag while it encoded and in the 0.3 s after it finished;
- the loop lag's p99 and max over the measured proconsul windows, and the max inside them
  within 0.3 s of a snapshot against the max elsewhere;
- the collections of generation 2 and their pauses in the measured windows.
The lag monitor's sample is written when the late wake-up happens, so a stall shows at its end.
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

AFTER_S = 0.3  # how long after a snapshot's finish a stall is blamed on it


def read_rows(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def parse_run(text: str) -> tuple[dict[int, str], list[tuple[float, float]]]:
    members: dict[int, str] = {}
    m = re.search(r"# proconsul \[(.*?)\] leader (\S+) pids \[(.*?)\]", text)
    if m:
        ips = [x.strip(" '") for x in m.group(1).split(",")]
        pids = [int(x) for x in m.group(3).split(",")]
        for n, (ip, pid) in enumerate(zip(ips, pids), 1):
            members[pid] = f"s{n}" + (" (leader)" if ip == m.group(2) else "")
    windows = [(float(a), float(b)) for a, b in re.findall(r"# round \d+ proconsul .* t (\d+\.\d+)-(\d+\.\d+)", text)]
    return members, windows


def inside(t: float, windows: list[tuple[float, float]]) -> bool:
    return any(a <= t <= b for a, b in windows) if windows else True


def report(trace: Path, run_text: str) -> None:
    members, windows = parse_run(run_text)
    pids = sorted(members) or sorted(int(p.stem) for p in trace.glob("*.lag"))
    for pid in pids:
        lag = [(float(t), float(ms)) for t, ms in read_rows(trace / f"{pid}.lag")]
        snaps = read_rows(trace / f"{pid}.snap")
        gcs = [(float(r[0]), int(r[1]), float(r[2])) for r in read_rows(trace / f"{pid}.gc")]
        name = members.get(pid, str(pid))
        print(f"== {name} pid {pid}")
        finishes: list[float] = []
        file_halves: list[float] = []
        current: dict[str, float] = {}
        for row in snaps:
            t, stage, ms = float(row[0]), row[1], float(row[2])
            if stage == "encode":
                current["encode"] = ms
                current["enc_from"] = float(row[3])
                current["enc_to"] = t
            elif stage == "compact_file":  # on the log writer thread, around its snapshot's finish
                file_halves.append(ms)
            elif stage in ("begin", "compact", "segments"):
                current[stage] = current.get(stage, 0.0) + ms
                current.setdefault(stage + "_at", t)
            elif stage == "finish":
                start = t - ms / 1000.0
                during = [x for tt, x in lag if current.get("enc_from", t) <= tt <= current.get("enc_to", t)]
                after = [x for tt, x in lag if start <= tt <= t + AFTER_S]
                print(f"  snapshot done {t:.3f} {'in a run' if inside(t, windows) else 'between runs'}: "
                      f"view {current.get('begin', 0):.1f} ms, encode {current.get('encode', 0):.1f} ms "
                      f"(lag max {max(during, default=0):.1f}), finish {ms:.1f} ms (compact "
                      f"{current.get('compact', 0):.1f}, segments {current.get('segments', 0):.1f}); "
                      f"lag max in the {AFTER_S} s after: {max(after, default=0):.1f} ms")
                finishes.append(t)
                current = {}
        if file_halves:
            print(f"  compactions' file halves on the log writer thread: {', '.join(f'{x:.1f}' for x in file_halves)} ms")
        measured = [(tt, x) for tt, x in lag if inside(tt, windows)]
        values = [x for _, x in measured]
        near = [x for tt, x in measured if any(f - 0.2 <= tt <= f + AFTER_S for f in finishes)]
        away = [x for tt, x in measured if not any(f - 0.2 <= tt <= f + AFTER_S for f in finishes)]
        full = [(t, ms) for t, gen, ms in gcs if gen == 2 and inside(t, windows)]
        if values:
            print(f"  measured windows: {len(values)} lag samples, p50 {statistics.median(values):.2f} "
                  f"p99 {pct(values, 0.99):.2f} p99.9 {pct(values, 0.999):.2f} max {max(values):.1f} ms; "
                  f"max near a snapshot {max(near, default=0):.1f}, elsewhere {max(away, default=0):.1f} ms; "
                  f"gen-2 collections {len(full)} (max {max((ms for _, ms in full), default=0):.1f} ms)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace", type=Path, help="the GC_TRACE directory")
    ap.add_argument("run", type=Path, help="raft_vs_etcd.py's output")
    args = ap.parse_args()
    report(args.trace, args.run.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
