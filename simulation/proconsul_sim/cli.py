"""`proconsul-sim`: command-line entry point of the simulation harness.

    proconsul-sim run SCENARIO --seed N [--time-limit S] [--out DIR] [--toxiproxy auto|builtin|PATH]
    proconsul-sim schedule SCENARIO --seed N [--time-limit S]   # the nemesis schedule, nothing run
    proconsul-sim list                                          # built-in scenarios

`run` re-executes itself inside a fresh network + mount namespace (`unshare`), so the run's
addresses, the toxiproxy API port and every nftables rule are private to it. Exit codes: 0 no
violation found, 1 a checker found a violation, 2 bad usage or a harness failure.
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="proconsul-sim", description="Chaos runs of real proconsul clusters.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario and check its history")
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
    if result["valid"] is False:
        print(f"  VIOLATION: reproduce with `{result['meta']['reproduce']}`")
        return EXIT_VIOLATION
    return EXIT_ERROR if errors else EXIT_OK


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
