"""A snapshot restored from another cluster leaves no ghost server (issue 15, item 2).

The restored catalog carries the other cluster's server node with a passing `serfHealth`; the
leader's reconcile deregisters it because it is not a member of this LAN pool.
"""

from __future__ import annotations

import json

from helpers import AgentProcess, wait_for


def _names(agent: AgentProcess, path: str, key: str) -> list[str]:
    status, _, body = agent.http("GET", path)
    assert status == 200, body
    return sorted(entry[key] for entry in json.loads(body))


def test_a_restored_foreign_server_is_reaped() -> None:
    source = AgentProcess(node="foreign-server").start()
    target = AgentProcess(node="target-server").start()
    try:
        status, _, snapshot = source.http("GET", "/v1/snapshot")
        assert status == 200
        status, _, body = target.http("PUT", "/v1/snapshot", snapshot)
        assert status == 200, body

        def reaped() -> bool:
            return (
                _names(target, "/v1/catalog/nodes", "Node") == ["target-server"]
                and _names(target, "/v1/catalog/service/consul", "Node") == ["target-server"]
            )

        wait_for(reaped, timeout=30, what=lambda: f"the foreign server to be reaped\n{target.log()}")
    finally:
        target.stop()
        source.stop()
