"""`proconsul lock` with real processes: mutual exclusion, semaphores, and a lost lock."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import consul
import pytest
from helpers import AgentProcess, proconsul_command, wait_for

# The child: log "start"/"end" with timestamps around a short critical section.
CHILD = r"""
import os, sys, time
log, name, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
assert os.environ.get("CONSUL_LOCK_HELD") == "true"
def note(what):
    with open(log, "a") as fh:
        fh.write(f"{what} {name} {time.time():.6f}\n")
note("start")
time.sleep(hold)
note("end")
"""

# A child that notes SIGTERM and exits cleanly on it.
TRAPPING_CHILD = r"""
import signal, sys, time
out = sys.argv[1]
def term(signum, frame):
    open(out, "w").write("TERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
open(out + ".started", "w").write("up")
while True:
    time.sleep(0.1)
"""


def _lock(agent: AgentProcess, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, CONSUL_HTTP_ADDR=agent.addr)
    return subprocess.Popen(
        [proconsul_command(), "lock", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _intervals(log: Path) -> list[tuple[float, float, str]]:
    starts: dict[str, float] = {}
    out = []
    for line in log.read_text().splitlines():
        what, name, ts = line.split()
        if what == "start":
            starts[name] = float(ts)
        else:
            out.append((starts.pop(name), float(ts), name))
    assert not starts, f"unfinished critical sections: {starts}"
    return sorted(out)


def _max_concurrency(intervals: list[tuple[float, float, str]]) -> int:
    points = sorted([(s, 1) for s, _, _ in intervals] + [(e, -1) for _, e, _ in intervals])
    level = best = 0
    for _, delta in points:
        level += delta
        best = max(best, level)
    return best


def test_lock_mutual_exclusion_under_contention(dev_agent: AgentProcess, tmp_path: Path) -> None:
    log = tmp_path / "intervals.log"
    procs = [
        _lock(dev_agent, "-shell=false", "locks/mutex", sys.executable, "-c", CHILD, str(log), f"p{i}", "0.4")
        for i in range(5)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    intervals = _intervals(log)
    assert len(intervals) == 5
    assert _max_concurrency(intervals) == 1, intervals
    for (_, end, _), (start, _, _) in zip(intervals, intervals[1:]):
        assert end <= start
    # The lock key is left behind only if in use; all done, cleanup removed it.
    c = consul.Consul(host="127.0.0.1", port=dev_agent.http_port)
    assert c.kv.get("locks/mutex/.lock")[1] is None


def test_lock_key_layout_is_consuls(dev_agent: AgentProcess, tmp_path: Path) -> None:
    marker = tmp_path / "held"
    p = _lock(dev_agent, "-shell=false", "layout/app", sys.executable, "-c", TRAPPING_CHILD, str(marker))
    try:
        wait_for(lambda: Path(str(marker) + ".started").exists(), timeout=30, what="child started")
        c = consul.Consul(host="127.0.0.1", port=dev_agent.http_port)
        _, entry = c.kv.get("layout/app/.lock")
        assert entry["Flags"] == 0x2DDCCBC058A50C18 and entry["Session"]
        _, session = c.session.info(entry["Session"])
        assert session["Name"].startswith(f"Consul lock for '{sys.executable} -c ")
        assert session["Name"].endswith(f"{marker}' at 'layout/app'")
        assert session["TTL"] == "15s" and session["Behavior"] == "release"
    finally:
        p.terminate()
        p.communicate(timeout=30)


def test_semaphore_allows_two_of_three(dev_agent: AgentProcess, tmp_path: Path) -> None:
    log = tmp_path / "sem.log"
    procs = [
        _lock(dev_agent, "-n=2", "-shell=false", "sem/pool", sys.executable, "-c", CHILD, str(log), f"s{i}", "1.5")
        for i in range(3)
    ]
    c = consul.Consul(host="127.0.0.1", port=dev_agent.http_port)

    def two_holders() -> bool:
        _, entry = c.kv.get("sem/pool/.lock")
        if entry is None:
            return False
        lock = json.loads(entry["Value"])
        ok = entry["Flags"] == 0xE0F69A2BAA414DE0 and lock["Limit"] == 2 and len(lock["Holders"]) == 2
        return ok and len(c.kv.get("sem/pool/", recurse=True)[1]) == 4  # .lock + 3 contender keys

    wait_for(two_holders, timeout=30, what="two semaphore holders")
    _, pairs = c.kv.get("sem/pool/", recurse=True)
    contenders = [p for p in pairs if not p["Key"].endswith("/.lock")]
    assert len(contenders) == 3 and all(p["Session"] and p["Flags"] == 0xE0F69A2BAA414DE0 for p in contenders)
    assert {p["Key"] for p in contenders} == {f"sem/pool/{p['Session']}" for p in contenders}
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    intervals = _intervals(log)
    assert len(intervals) == 3
    assert _max_concurrency(intervals) == 2, intervals
    assert c.kv.get("sem/pool/", recurse=True)[1] is None


def test_child_signalled_when_session_destroyed(dev_agent: AgentProcess, tmp_path: Path) -> None:
    marker = tmp_path / "signalled"
    p = _lock(dev_agent, "-shell=false", "-verbose", "lost/app", sys.executable, "-c", TRAPPING_CHILD, str(marker))
    try:
        wait_for(lambda: Path(str(marker) + ".started").exists(), timeout=30, what="child started")
        c = consul.Consul(host="127.0.0.1", port=dev_agent.http_port)
        _, entry = c.kv.get("lost/app/.lock")
        started = time.monotonic()
        c.session.destroy(entry["Session"])
        wait_for(marker.exists, timeout=30, what="child got SIGTERM")
        assert marker.read_text() == "TERM"
        out, _ = p.communicate(timeout=30)
        assert time.monotonic() - started < 20
        assert p.returncode == 0, out
        assert "Lock lost, killing child" in out
    finally:
        if p.poll() is None:
            p.kill()


def test_timeout_and_child_exit_code(dev_agent: AgentProcess, tmp_path: Path) -> None:
    marker = tmp_path / "holder"
    holder = _lock(dev_agent, "-shell=false", "busy/app", sys.executable, "-c", TRAPPING_CHILD, str(marker))
    try:
        wait_for(lambda: Path(str(marker) + ".started").exists(), timeout=30, what="holder started")
        waiter = _lock(dev_agent, "-timeout=1s", "busy/app", "true")
        out, _ = waiter.communicate(timeout=30)
        assert waiter.returncode == 1
        assert "Shutdown triggered or timeout during lock acquisition" in out
    finally:
        holder.terminate()
        holder.communicate(timeout=30)
    failing = _lock(dev_agent, "-child-exit-code", "code/app", "exit 3")
    failing.communicate(timeout=30)
    assert failing.returncode == 2
    plain = _lock(dev_agent, "code/app", "exit 3")
    plain.communicate(timeout=30)
    assert plain.returncode == 0


def test_lock_usage_errors(dev_agent: AgentProcess) -> None:
    for args, needle in (
        (["onlyprefix"], "Key prefix and child command must be specified"),
        (["-n=0", "p", "true"], "Lock holder limit must be positive"),
    ):
        p = _lock(dev_agent, *args)
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 1 and needle in out


@pytest.mark.parametrize("value", [b"not-a-lock"])
def test_conflicting_key_is_refused(dev_agent: AgentProcess, value: bytes) -> None:
    c = consul.Consul(host="127.0.0.1", port=dev_agent.http_port)
    c.kv.put("conflict/app/.lock", value)
    p = _lock(dev_agent, "conflict/app", "true")
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 1 and "Existing key does not match lock use" in out
    assert base64.b64encode(value)
