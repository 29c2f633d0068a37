"""`proconsul-sim`: command-line entry point of the simulation harness.

    proconsul-sim run SCENARIO --seed N [--time-limit S] [--out DIR] [--toxiproxy auto|builtin|PATH]
    proconsul-sim schedule SCENARIO --seed N [--time-limit S]   # the nemesis schedule, nothing run
    proconsul-sim list                                          # built-in scenarios

`run` re-executes itself inside a fresh network + mount namespace (`unshare`), so the run's
addresses, the toxiproxy API port and every nftables rule are private to it. Exit codes (see
EXIT_CODES_HELP): 0 every checker decided "valid", 1 a checker found a violation, 2 bad usage
or a harness failure, 3 no violation found but some checker could not decide (Jepsen's
"unknown", which is not "valid": a run nobody could check must not pass).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import netns
from .scenarios import ScenarioError, load, names

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_ERROR = 2
EXIT_UNKNOWN = 3

EXIT_CODES_HELP = """\
exit codes:
  0  every checker decided: no violation
  1  a checker found a violation (result.json names it; `reproduce` replays the run)
  2  bad usage, or a harness failure (the cluster never formed, a fault could not be
     injected, the cluster did not recover after healing)
  3  undecided: no violation found, but a checker could not decide within its budget
     (e.g. the linearizability search ran out of time on some key); not a pass
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="proconsul-sim", description="Chaos runs of real proconsul clusters.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario and check its history", epilog=EXIT_CODES_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("scenario", help="a built-in scenario name or a path to a .toml file")
    run.add_argument("--seed", type=int, required=True, help="seeds the nemesis schedule and the workloads")
    run.add_argument("--time-limit", type=float, default=None, help="seconds of workload (default: the scenario's)")
    run.add_argument("--out", type=Path, default=None, help="result directory (default: sim-results/SCENARIO-seedN)")
    run.add_argument("--toxiproxy", default="auto",
                     help="auto (a toxiproxy-server on PATH, else builtin), builtin, or a server binary path")
    sched = sub.add_parser("schedule", help="print the nemesis schedule a seed gives (runs nothing)")
    sched.add_argument("scenario")
    sched.add_argument("--seed", type=int, required=True)
    sched.add_argument("--time-limit", type=float, default=None)
    sub.add_parser("list", help="list the built-in scenarios")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            for name in names():
                print(f"{name:22} {load(name).description}")
            return EXIT_OK
        scenario = load(args.scenario)
        from .runner import run, schedule_for

        time_limit = args.time_limit if args.time_limit is not None else scenario.time_limit_s
        if args.command == "schedule":
            for fault in schedule_for(scenario, args.seed, time_limit):
                print(f"{fault.start:7.2f}s +{fault.duration:5.2f}s  {fault.kind:18} {json.dumps(fault.params)}")
            return EXIT_OK
    except (ScenarioError, ValueError) as exc:
        print(f"proconsul-sim: {exc}", file=sys.stderr)
        return EXIT_ERROR

    if args.out is None:
        args.out = Path("sim-results") / f"{scenario.name}-seed{args.seed}"
    if not netns.in_private_namespace():
        try:
            return netns.reexec_in_private_namespace(
                [*argv_with_out(argv, args.out.resolve())]
            )
        except netns.NamespaceError as exc:
            print(f"proconsul-sim: {exc}", file=sys.stderr)
            return EXIT_ERROR

    logging.basicConfig(level=logging.INFO, format="%(asctime)s proconsul-sim %(message)s")
    print(f"proconsul-sim: {scenario.name} seed={args.seed} time-limit={time_limit:g}s -> {args.out}", flush=True)
    try:
        result = run(scenario, args.seed, args.out, time_limit, args.toxiproxy)
    except Exception as exc:
        logging.exception("run failed")
        print(f"proconsul-sim: run failed: {exc!r}; logs under {args.out}", file=sys.stderr)
        return EXIT_ERROR
    from .report import summary_lines

    for line in summary_lines(result):
        print(line)
    errors = result["meta"].get("harness_errors") or []
    for err in errors:
        print(f"  harness error: {err}")
    print(f"  result: {args.out / 'result.json'}")
    for line in violation_lines(result):
        print(line)
    code = exit_code(result)
    if code == EXIT_VIOLATION:
        print(f"  VIOLATION: reproduce with `{result['meta']['reproduce']}`")
    elif code == EXIT_UNKNOWN:
        print("  UNDECIDED: a checker ran out of budget (see `unknown_keys` in result.json); not a pass")
    return code


def exit_code(result: dict) -> int:
    """A violation wins over everything; then a harness failure; then an undecided check."""
    if result["valid"] is False:
        return EXIT_VIOLATION
    if result["meta"].get("harness_errors"):
        return EXIT_ERROR
    if result["valid"] is not True:
        return EXIT_UNKNOWN
    return EXIT_OK


def violation_lines(result: dict, limit: int = 3) -> list[str]:
    """One line per failure a checker explained in plain words (the stale reads it found)."""
    lines = []
    for check in result["checks"]:
        for failure in (check.get("details") or {}).get("failures", [])[:limit]:
            if not isinstance(failure, dict):
                continue
            stale = failure.get("stale_read")
            text = stale["summary"] if stale else f"key {failure.get('key')}: {failure.get('why', '')}"
            lines.append(f"  {check['name']}: {text}")
    return lines


def argv_with_out(argv: list[str], out: Path) -> list[str]:
    """The same command line with --out made absolute (the child may not share our cwd)."""
    cleaned: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--out":
            skip = True
            continue
        if arg.startswith("--out="):
            continue
        cleaned.append(arg)
    return [*cleaned, "--out", str(out)]


if __name__ == "__main__":
    sys.exit(main())
