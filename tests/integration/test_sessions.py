"""Sessions and KV locks on a real dev agent, through py-consul and raw HTTP."""

from __future__ import annotations

import json

import consul
import pytest
from helpers import AgentProcess, wait_for


@pytest.fixture()
def c(dev_agent: AgentProcess) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=dev_agent.http_port)


def test_session_lifecycle(c: consul.Consul) -> None:
    sid = c.session.create(name="worker", lock_delay=0)
    _, info = c.session.info(sid)
    assert info["Name"] == "worker" and info["Node"] == "test-node"
    assert info["NodeChecks"] == ["serfHealth"] and info["Behavior"] == "release"
    assert info["LockDelay"] == 0
    _, listed = c.session.list()
    assert sid in [s["ID"] for s in listed]
    _, on_node = c.session.node("test-node")
    assert sid in [s["ID"] for s in on_node]
    assert c.session.renew(sid)["ID"] == sid
    assert c.session.destroy(sid) is True
    _, info = c.session.info(sid)
    assert info is None


def test_lock_acquire_release_and_contention(c: consul.Consul) -> None:
    first = c.session.create(name="a", lock_delay=0)
    second = c.session.create(name="b", lock_delay=0)
    assert c.kv.put("service/app/leader", "first", acquire=first) is True
    assert c.kv.put("service/app/leader", "second", acquire=second) is False
    _, entry = c.kv.get("service/app/leader")
    assert entry["Session"] == first and entry["LockIndex"] == 1 and entry["Value"] == b"first"
    assert c.kv.put("service/app/leader", "x", release=second) is False
    assert c.kv.put("service/app/leader", "first", release=first) is True
    _, entry = c.kv.get("service/app/leader")
    assert "Session" not in entry
    assert c.kv.put("service/app/leader", "second", acquire=second) is True
    _, entry = c.kv.get("service/app/leader")
    assert entry["LockIndex"] == 2
    c.session.destroy(first)
    c.session.destroy(second)


def test_invalidation_releases_locks_and_lock_delay_applies(c: consul.Consul) -> None:
    holder = c.session.create(name="holder", lock_delay=60)
    other = c.session.create(name="other", lock_delay=0)
    assert c.kv.put("locks/delayed", "x", acquire=holder)
    c.session.destroy(holder)
    _, entry = c.kv.get("locks/delayed")
    assert "Session" not in entry
    # Within the 60s lock-delay nobody may take the lock.
    assert c.kv.put("locks/delayed", "y", acquire=other) is False
    c.session.destroy(other)


def test_delete_behavior_removes_keys(c: consul.Consul) -> None:
    sid = c.session.create(behavior="delete", lock_delay=0)
    assert c.kv.put("ephemeral/node-1", "up", acquire=sid)
    c.session.destroy(sid)
    _, entry = c.kv.get("ephemeral/node-1")
    assert entry is None


def test_session_bound_to_failing_check_is_invalidated(c: consul.Consul) -> None:
    c.agent.check.register("session-guard", check=consul.Check.ttl("60s"), check_id="guard")
    c.agent.check.ttl_pass("guard")

    def guard_passing_in_catalog() -> bool:
        _, checks = c.health.node("test-node")
        return any(ch["CheckID"] == "guard" and ch["Status"] == "passing" for ch in checks)

    # The agent syncs check results to the catalog asynchronously (anti-entropy), as Consul does.
    wait_for(guard_passing_in_catalog, timeout=30, what="guard passing in the catalog")
    sid = c.session.create(checks=["serfHealth", "guard"], lock_delay=0)
    assert c.kv.put("guarded/lock", "x", acquire=sid)
    c.agent.check.ttl_fail("guard")
    wait_for(lambda: c.session.info(sid)[1] is None, timeout=30, what="session invalidated by critical check")
    _, entry = c.kv.get("guarded/lock")
    assert "Session" not in entry
    c.agent.check.deregister("guard")


def test_bad_session_requests(dev_agent: AgentProcess) -> None:
    for body, needle in (
        (b'{"Behavior": "explode"}', b"Behavior"),
        (b'{"TTL": "1s"}', b"TTL"),
        (b'{"LockDelay": "2m"}', b"LockDelay"),
        (b'{"Checks": ["no-such-check"]}', b"no-such-check"),
    ):
        status, _, answer = dev_agent.http("PUT", "/v1/session/create", body)
        assert status in (400, 500) and needle in answer, (body, status, answer)
    status, _, _ = dev_agent.http("PUT", "/v1/session/renew/00000000-0000-0000-0000-000000000000")
    assert status == 404
    status, _, answer = dev_agent.http("PUT", "/v1/kv/k?acquire=00000000-0000-0000-0000-000000000000", b"x")
    assert status == 500 and b"invalid session" in answer


def test_ttl_session_expires_without_renewal(tmp_path: object) -> None:
    agent = AgentProcess("-hcl", 'session_ttl_min = "1s"').start()
    try:
        status, _, body = agent.http("PUT", "/v1/session/create", json.dumps({"TTL": "1s", "LockDelay": "0s"}).encode())
        assert status == 200, body
        sid = json.loads(body)["ID"]
        assert agent.http("PUT", f"/v1/kv/ttl-lock?acquire={sid}", b"x")[2] == b"true"

        def gone() -> bool:
            return json.loads(agent.http("GET", f"/v1/session/info/{sid}")[2]) == []

        wait_for(gone, timeout=60, what="TTL session to expire")
        entry = json.loads(agent.http("GET", "/v1/kv/ttl-lock")[2])[0]
        assert "Session" not in entry
    finally:
        agent.stop()
