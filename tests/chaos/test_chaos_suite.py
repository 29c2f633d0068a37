"""The CI chaos suite: five scenarios through the real `proconsul-sim` console script, each a
real cluster of `proconsul agent` processes in network namespaces behind toxiproxy proxies,
plus the self-test that proves the linearizability checker catches a real bug.

Seeds are fixed so a failure is reproducible (`CHAOS_SEED=N` tries another); each run's
directory (result.json, history.json, plot.png, node logs) is kept under pytest's tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SEED = int(os.environ.get("CHAOS_SEED", "1"))
# About 40 s of workload each keeps the suite near six minutes on two cores.
TIME_LIMIT_S = os.environ.get("CHAOS_TIME_LIMIT", "40")
CI_SCENARIOS = ["leader-isolation", "minority-partition", "one-way-partition", "latency-jitter", "kill-leader"]


def sim_command() -> str:
    script = Path(sys.executable).parent / "proconsul-sim"
    assert script.exists(), f"{script} is missing: pip install -e '.[test]'"
    return str(script)


def agents_started_under(out: Path) -> list[int]:
    """Pids of live processes whose command line names the run's directory (its agents)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(out) in cmdline and "agent" in cmdline:
            pids.append(int(proc.name))
    return pids


def run_scenario(name: str, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    proc = subprocess.run(
        [sim_command(), "run", name, "--seed", str(SEED), "--time-limit", TIME_LIMIT_S, "--out", str(out), *extra],
        capture_output=True, text=True, timeout=600,
    )
    leftovers = agents_started_under(out)
    assert not leftovers, f"agents of the run survived it: {leftovers}"
    result_file = out / "result.json"
    assert result_file.exists(), f"no result.json (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc, json.loads(result_file.read_text())


@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", CI_SCENARIOS)
def test_scenario_has_no_violation(scenario: str, tmp_path: Path) -> None:
    out = tmp_path / scenario
    proc, result = run_scenario(scenario, out)
    context = f"{proc.stdout}\n{proc.stderr}\nresult: {out / 'result.json'}"
    assert proc.returncode == 0, context
    assert result["valid"] is True, context
    assert result["verdicts"] and all(v is True for v in result["verdicts"].values()), result["verdicts"]
    assert not result["meta"]["harness_errors"], result["meta"]["harness_errors"]
    # The nemesis really acted, and the workloads really ran through it.
    assert result["nemesis"] and all(n["end"] is not None for n in result["nemesis"]), result["nemesis"]
    assert all("error" not in n["params"] for n in result["nemesis"]), result["nemesis"]
    assert result["ops"]["by_outcome"]["ok"] > 200, result["ops"]
    assert {"linearizable-kv", "grow-only-set"} <= set(result["verdicts"])
    for name in ("history.json", "plot.png", "nodes/s1/agent.log", "toxiproxy.log"):
        assert (out / name).exists(), name


@pytest.mark.timeout(600)
def test_broken_build_is_caught_by_the_linearizability_checker(tmp_path: Path) -> None:
    """With `unsafe_follower_local_reads` an isolated follower answers default reads from its
    own, stale store: the checker must report it and the run must exit non-zero."""
    out = tmp_path / "broken"
    proc, result = run_scenario("broken-follower-reads", out)
    context = f"{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 1, context
    assert result["valid"] is False
    assert result["verdicts"]["linearizable-kv"] is False, result["verdicts"]
    check = next(c for c in result["checks"] if c["name"] == "linearizable-kv")
    assert check["details"]["failures"], check["details"]
    assert "VIOLATION: reproduce with `proconsul-sim run broken-follower-reads --seed" in proc.stdout
    assert result["nemesis"][0]["name"] == "isolate-follower"


def test_same_seed_same_schedule() -> None:
    def schedule(seed: int) -> str:
        proc = subprocess.run([sim_command(), "schedule", "soak", "--seed", str(seed)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    first = schedule(7)
    assert first.count("\n") >= 10
    assert schedule(7) == first
    assert schedule(8) != first


def test_unknown_scenario_and_bad_file_are_clear_errors(tmp_path: Path) -> None:
    proc = subprocess.run([sim_command(), "run", "no-such-scenario", "--seed", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "no scenario 'no-such-scenario'" in proc.stderr and "leader-isolation" in proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('servers = 3\n[nemesis]\nkinds = ["meteor-strike"]\n')
    proc = subprocess.run([sim_command(), "schedule", str(bad), "--seed", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "meteor-strike" in proc.stderr and "nemesis.kinds" in proc.stderr
