"""`proconsul-sim`'s exit codes: a violation, a harness failure and an undecided check are three
different, non-zero answers, so a CI run nobody could check never passes silently."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from proconsul_sim.checkers import CheckResult
from proconsul_sim.cli import EXIT_ERROR, EXIT_OK, EXIT_UNKNOWN, EXIT_VIOLATION, exit_code, violation_lines
from proconsul_sim.history import History
from proconsul_sim.report import write_result


def result_with(tmp_path: Path, verdicts: list[bool | str], harness_errors: list[str] | None = None) -> dict:
    checks = [CheckResult(f"check-{i}", v, {"failures": [{"key": "k", "why": "it read 1"}] if v is False else []})
              for i, v in enumerate(verdicts)]
    return write_result(tmp_path, scenario="s", seed=1, history=History(clock=lambda: 0.0), checks=checks,
                        nemesis=[], meta={"harness_errors": harness_errors or []})


def test_exit_code_of_each_outcome(tmp_path: Path) -> None:
    assert exit_code(result_with(tmp_path, [True, True])) == EXIT_OK == 0
    assert exit_code(result_with(tmp_path, [True, False])) == EXIT_VIOLATION == 1
    assert exit_code(result_with(tmp_path, [True, "unknown"])) == EXIT_UNKNOWN == 3
    assert exit_code(result_with(tmp_path, [True], ["cluster did not recover"])) == EXIT_ERROR == 2
    # A violation found is reported even when another check is undecided or the harness erred.
    assert exit_code(result_with(tmp_path, ["unknown", False], ["x"])) == EXIT_VIOLATION
    # No checker at all decided nothing: not a pass.
    assert exit_code(result_with(tmp_path, [])) == EXIT_UNKNOWN
    assert violation_lines(result_with(tmp_path, [False])) == ["  check-0: key k: it read 1"]


def test_run_help_documents_the_exit_codes() -> None:
    script = Path(sys.executable).parent / "proconsul-sim"
    proc = subprocess.run([str(script), "run", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "exit codes:" in proc.stdout
    for line in ("0  every checker decided", "1  a checker found a violation", "2  bad usage",
                 "3  undecided"):
        assert line in proc.stdout, proc.stdout
