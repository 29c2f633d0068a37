"""Real processes: gossip key rotation across a LAN pool through `/v1/operator/keyring` and
`proconsul keyring`, as an operator does it with Consul.

One server and two clients share key K1; K2 is installed everywhere, made primary, and K1 is
removed. The pool keeps working (a newcomer with K2 joins), every agent's keyring file holds only
K2, and an agent that only has K1 is refused and logged without harming anyone.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

from cluster_helpers import LanCluster, member_statuses
from helpers import AgentProcess, proconsul_command, wait_for


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([proconsul_command(), *args], capture_output=True, text=True, timeout=60)


def _keyring(agent: AgentProcess) -> list[dict[str, object]]:
    status, _, raw = agent.http("GET", "/v1/operator/keyring")
    assert status == 200, raw
    return json.loads(raw)  # type: ignore[no-any-return]


def _lan(agent: AgentProcess) -> dict[str, object]:
    """The LAN pool's entry (the server's WAN pool has its own, listed first)."""
    [entry] = [e for e in _keyring(agent) if not e["WAN"]]
    return entry


def _keygen() -> str:
    run = _cli("keygen")
    assert run.returncode == 0, run
    key = run.stdout.strip()
    assert len(base64.b64decode(key, validate=True)) == 32
    return key


def test_keyring_rotation_on_three_agents(tmp_path: Path) -> None:
    k1, k2 = _keygen(), _keygen()
    assert k1 != k2
    lan = LanCluster(tmp_path, ("c1", "c2"), f"-encrypt={k1}", hosts=5)
    server, c1, c2 = lan.start()
    try:
        everyone = {"srv": 1, "c1": 1, "c2": 1}
        wait_for(lambda: member_statuses(server) == everyone, timeout=60, what=lambda: f"3 members\n{server.log()}")

        # List: the server's WAN pool (itself) and the LAN pool, K1 on all three.
        wait_for(lambda: _lan(c1)["NumNodes"] == 3, timeout=30, what="all three counted")
        wan, entry = _keyring(c1)
        assert wan["WAN"] is True and wan["Datacenter"] == "dc1" and wan["Keys"] == {k1: 1} and wan["NumNodes"] == 1
        assert entry["WAN"] is False and entry["Datacenter"] == "dc1" and entry["Segment"] == ""
        assert entry["Keys"] == {k1: 3} and entry["PrimaryKeys"] == {k1: 3} and entry["NumNodes"] == 3
        run = _cli("keyring", "-list", f"-http-addr={c1.addr}")
        assert run.returncode == 0, run
        assert run.stdout == (f"==> Gathering installed encryption keys...\n\nWAN:\n  {k1} [1/1]\n"
                              f"\ndc1 (LAN):\n  {k1} [3/3]\n")

        # Consul's refusals: the primary key cannot go; an unknown key cannot be used.
        run = _cli("keyring", f"-remove={k1}", f"-http-addr={c2.addr}")
        assert run.returncode == 1 and "3/3 nodes reported failure" in run.stderr, run
        assert "srv: Removing the primary key is not allowed" in run.stderr
        status, _, raw = server.http("PUT", "/v1/operator/keyring", json.dumps({"Key": k2}).encode())
        assert status == 500 and b"Requested key is not in the keyring" in raw, raw
        status, _, raw = server.http("POST", "/v1/operator/keyring", b'{"Key": "not base64!"}')
        assert status == 400, raw
        run = _cli("keyring", "-list", f"-install={k2}", f"-http-addr={c1.addr}")
        assert run.returncode == 1 and "Only a single action is allowed" in run.stderr

        # Rotate: install K2 everywhere, make it primary, remove K1.
        run = _cli("keyring", f"-install={k2}", f"-http-addr={c1.addr}")
        assert run.returncode == 0 and run.stdout == "==> Installing new gossip encryption key...\n", run
        assert _lan(server)["Keys"] == {k1: 3, k2: 3}
        status, _, raw = c2.http("PUT", "/v1/operator/keyring", json.dumps({"Key": k2}).encode())
        assert status == 200, raw
        run = _cli("keyring", "-list-primary", f"-http-addr={server.addr}")
        assert run.returncode == 0, run
        assert run.stdout == (f"==> Gathering installed primary encryption keys...\n\nWAN:\n  {k2} [1/1]\n"
                              f"\ndc1 (LAN):\n  {k2} [3/3]\n")
        status, _, raw = server.http("DELETE", "/v1/operator/keyring", json.dumps({"Key": k1}).encode())
        assert status == 200, raw
        entry = _lan(c2)
        assert entry["Keys"] == {k2: 3} and entry["PrimaryKeys"] == {k2: 3}
        for name in ("srv", "c1", "c2"):
            assert json.loads((tmp_path / name / "serf" / "local.keyring").read_text()) == [k2]

        # The pool keeps talking on K2: a newcomer holding K2 joins and is seen by everyone.
        c3 = lan.add(lan.client("c3", f"-encrypt={k2}", host=4, extra=()))
        wait_for(lambda: member_statuses(c1).get("c3") == 1, timeout=60, what=lambda: f"c3 joined\n{c3.log()}")

        # An agent with only the retired key is refused and logged; nobody crashes.
        old = lan.client("old", host=5)  # the cluster's flags: only K1
        old.wait_for_leader = False
        lan.add(old)
        wait_for(lambda: "no installed key decrypts" in server.log(), timeout=60,
                 what=lambda: f"the refusal logged\n{server.log()}")
        wait_for(lambda: "join LAN failed" in old.log(), timeout=60, what=lambda: f"old failing to join\n{old.log()}")
        assert "old" not in member_statuses(server)
        assert member_statuses(old) == {"old": 1}
        for agent in (server, c1, c2, old):
            assert agent.proc is not None and agent.proc.poll() is None, agent.log()
        assert member_statuses(server) == {"srv": 1, "c1": 1, "c2": 1, "c3": 1}
    finally:
        lan.stop()


def test_keyring_without_encryption_is_reported() -> None:
    agent = AgentProcess().start()
    try:
        status, _, raw = agent.http("GET", "/v1/operator/keyring")
        assert status == 500, raw
        assert b"dc1 (LAN) error: 1/1 nodes reported failure" in raw
        assert b"Keyring is empty (encryption not enabled)" in raw
        status, _, raw = agent.http("POST", "/v1/operator/keyring",
                                    json.dumps({"Key": base64.b64encode(b"k" * 32).decode()}).encode())
        assert status == 500 and b"No keyring to modify (encryption not enabled)" in raw, raw
        run = _cli("keyring", "-list", f"-http-addr={agent.addr}")
        assert run.returncode == 1 and "Keyring is empty" in run.stderr, run
    finally:
        agent.stop()
