"""The run's result.json (counts, verdicts, nemesis timeline) and its latency/throughput PNG."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from history_builders import history, op, random_register_history
from proconsul_sim.checkers import CheckResult, check_cas_register
from proconsul_sim.history import FAIL, INFO, History
from proconsul_sim.plot import plot_run
from proconsul_sim.report import summary_lines, write_result

NEMESIS = [{"name": "partition", "start": 5.0, "end": 12.0, "params": {"groups": [["n1"], ["n2", "n3"]]}},
           {"name": "kill", "start": 2.0, "end": 3.5, "params": {"node": "n2", "signal": 9}},
           {"name": "latency", "start": 15.0, "end": None}]


def test_result_json_has_counts_verdicts_timeline_and_meta(tmp_path):
    h = history(op(1, "write", "a", 0, 1), op(2, "read", "a", 2, 3), op(3, "write", "b", 4, 5, FAIL),
                op(3, "write", "c", 6, 8, INFO), op(4, "add", 1, 0, 1, key="s"),
                op(5, "read", None, 9, None, "invoke"))
    checks = [check_cas_register(h), CheckResult("grow-only-set", "unknown", {"why": "no read"})]
    meta = {"versions": {"proconsul": "0.1.0"}, "nodes": ["n1", "n2", "n3"], "duration_s": 20}
    result = write_result(tmp_path / "run", scenario="kv-partition", seed=42, history=h, checks=checks,
                          nemesis=NEMESIS, meta=meta)
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert on_disk == result
    assert result["scenario"] == "kv-partition" and result["seed"] == 42
    assert result["ops"]["total"] == 6
    assert result["ops"]["by_outcome"] == {"ok": 3, "fail": 1, "info": 1, "invoke": 1}
    assert result["ops"]["by_f"]["write"] == {"ok": 1, "fail": 1, "info": 1, "invoke": 0}
    assert result["verdicts"] == {"cas-register": True, "grow-only-set": "unknown"}
    assert result["valid"] == "unknown"
    assert [n["name"] for n in result["nemesis"]] == ["kill", "partition", "latency"]
    assert result["nemesis"][1] == {"name": "partition", "start": 5.0, "end": 12.0,
                                    "params": {"groups": [["n1"], ["n2", "n3"]]}}
    assert result["nemesis"][2]["end"] is None and result["nemesis"][2]["params"] == {}
    assert result["meta"] == meta
    assert result["latency"]["write"]["count"] == 1 and result["latency"]["write"]["p99_ms"] == 1000
    assert result["span_s"] == {"first_invoke": 0, "last_completion": 8}
    assert any("valid=unknown" in line for line in summary_lines(result))
    # The history is written beside it, and re-checking it offline gives the same verdict.
    again = History.from_json(json.loads((tmp_path / "run" / result["history_file"]).read_text()))
    assert check_cas_register(again).valid is True and len(again.ops) == 6


def test_overall_verdict_false_beats_unknown_and_all_true_is_true(tmp_path):
    h = history()
    def verdict(*vs):
        checks = [CheckResult(f"c{i}", v, {}) for i, v in enumerate(vs)]
        return write_result(tmp_path, scenario="s", seed=1, history=h, checks=checks, nemesis=[], meta={})["valid"]
    assert verdict(True, True) is True
    assert verdict(True, "unknown") == "unknown"
    assert verdict("unknown", False, True) is False
    assert verdict() == "unknown"  # nothing checked is not a pass


def test_failure_details_with_infinite_times_are_strict_json(tmp_path):
    from proconsul_sim.checkers import check_mutex

    h = history(op(1, "acquire", None, 0, 1, key="l"), op(2, "acquire", None, 2, 3, key="l"))
    res = check_mutex(h)
    assert res.valid is False
    write_result(tmp_path, scenario="s", seed=1, history=h, checks=[res], nemesis=[], meta={})
    text = (tmp_path / "result.json").read_text()
    assert "Infinity" not in text and json.loads(text)["valid"] is False


def test_bad_nemesis_entry_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="nemesis entry 0 needs a name and a start"):
        write_result(tmp_path, scenario="s", seed=1, history=history(), checks=[], nemesis=[{"start": 1}],
                     meta={})


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_png_with_latency_throughput_and_nemesis(tmp_path):
    base = random_register_history(3, ops=1500)
    # Stretch it over 20 s, with slow and indeterminate operations inside the partition window.
    ops = []
    for o in base.ops:
        o.start, o.end = o.start * 2, o.end * 2  # about 20 s
        if 5 <= o.start <= 12 and o.type == "ok" and o.process == 2:
            o.type, o.end = INFO, o.start + 1.0
        ops.append(o)
    h = history(*ops)
    path = plot_run(tmp_path / "plots" / "run.png", h, NEMESIS)
    assert path == tmp_path / "plots" / "run.png"
    width, height = _png_size(path)
    assert (width, height) == (1300, 700)
    assert path.stat().st_size > 20_000  # dots, steps and shading, not an empty canvas


def test_plot_of_an_empty_run_is_still_a_png(tmp_path):
    path = plot_run(tmp_path / "empty.png", History(), [])
    assert _png_size(path) == (1300, 700)
