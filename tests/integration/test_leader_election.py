"""Consul's leader-election recipe through py-consul, with several real contender processes.

Checks that at most one live contender believes it leads at any sampled moment, that the
believer is the session the key names, and that after the holder's session is invalidated
(destroyed, or its TTL health check going critical when the holder is killed) another takes over only after the
lock-delay.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import consul
from helpers import AgentProcess, wait_for

KEY = "service/app/leader"
LOCK_DELAY_S = 2
TTL_S = 2
CONTENDER = str(Path(__file__).with_name("leader_contender.py"))


def test_one_leader_and_takeover_after_lock_delay(tmp_path: Path) -> None:
    agent = AgentProcess().start()
    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for i in range(3):
            name = f"node-{i}"
            procs[name] = subprocess.Popen(
                [sys.executable, CONTENDER, str(agent.http_port), KEY, name, str(tmp_path / name),
                 f"{TTL_S}s", f"{LOCK_DELAY_S}s"]
            )

        def beliefs() -> dict[str, dict[str, object]]:
            out = {}
            for name, proc in procs.items():
                path = tmp_path / name
                if proc.poll() is None and path.exists():
                    out[name] = json.loads(path.read_text())
            return out

        def sample() -> tuple[str | None, str]:
            """(the one live believer or None, the key's Session); fails on two believers."""
            seen = beliefs()
            _, entry = c.kv.get(KEY)
            holder = (entry or {}).get("Session") or ""
            leaders = [n for n, b in seen.items() if b["leader"]]
            assert len(leaders) <= 1, f"two leaders at once: {seen}"
            if leaders:
                # The believer's session is the key's holder (unless the key was just released).
                if holder:
                    assert seen[leaders[0]]["session"] == holder, (seen, holder)
            return (leaders[0] if leaders else None), holder

        def settled() -> str | None:
            leader, holder = sample()
            return leader if leader and holder else None

        first = wait_for(settled, timeout=30, what="a leader")
        for _ in range(20):  # a stable period: the same single leader
            assert sample()[0] in (first, None)
            time.sleep(0.05)

        # The holder's session is invalidated (as when its node's checks fail): another takes over.
        holder_session = c.kv.get(KEY)[1]["Session"]
        c.session.destroy(holder_session)
        lost_at = time.monotonic()
        second = None
        while time.monotonic() - lost_at < 30:
            leader, holder = sample()
            if leader and holder and holder != holder_session:
                second = leader
                break
            time.sleep(0.02)
        assert second is not None, "nobody took over"
        assert time.monotonic() - lost_at >= LOCK_DELAY_S - 0.2, "taken over inside the lock-delay"

        # The leader dies (kill -9): its TTL check goes critical, then after the lock-delay another leads.
        procs[second].kill()
        procs[second].wait()
        dead_session = c.kv.get(KEY)[1]["Session"]
        died_at = time.monotonic()
        third = None
        while time.monotonic() - died_at < 60:
            leader, holder = sample()
            if leader and holder and holder != dead_session:
                third = leader
                break
            time.sleep(0.05)
        assert third is not None and third != second
        assert time.monotonic() - died_at >= TTL_S + LOCK_DELAY_S - 0.5
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        agent.stop()
