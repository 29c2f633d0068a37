"""Anti-entropy against a real agent: a TTL check passed right after its registration.

The pass lands while the registration may still be on its way to the catalog; the catalog must
follow within a sync round, not a full-sync interval (60 s) later (issue 15, item 1).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import AgentProcess, wait_for

# Much shorter than the 60 s full-sync interval, generous for a loaded machine.
DEADLINE_S = 15.0


def _catalog_status(agent: AgentProcess, path: str, check_id: str) -> str:
    status, _, body = agent.http("GET", path)
    assert status == 200, body
    for entry in json.loads(body):
        checks = entry["Checks"] if "Checks" in entry else [entry]
        for check in checks:
            if check["CheckID"] == check_id:
                return str(check["Status"])
    return ""


@pytest.fixture
def server_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """A one-server Raft cluster: catalog writes take an fsync, so a pass lands mid-sync."""
    agent = AgentProcess(
        "-server",
        "-bootstrap",
        "-hcl",
        "performance { raft_multiplier = 1 }",
        dev=False,
        data_dir=str(tmp_path / "data"),
    ).start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.mark.parametrize("kind", ["dev", "server"])
def test_ttl_pass_right_after_registration_reaches_the_catalog(
    kind: str, request: pytest.FixtureRequest
) -> None:
    dev_agent: AgentProcess = request.getfixturevalue("dev_agent" if kind == "dev" else "server_agent")
    for i in range(5):
        name = f"ttl-web-{i}"
        reg = {"Name": name, "Port": 8080 + i, "Check": {"TTL": "60s"}}
        status, _, body = dev_agent.http("PUT", "/v1/agent/service/register", json.dumps(reg).encode())
        assert status == 200, body
        status, _, body = dev_agent.http("PUT", f"/v1/agent/check/pass/service:{name}")
        assert status == 200, body
        local = json.loads(dev_agent.http("GET", "/v1/agent/checks")[2])
        assert local[f"service:{name}"]["Status"] == "passing"
        _wait_passing(dev_agent, name)


def _wait_passing(agent: AgentProcess, name: str) -> None:
    def passing() -> bool:
        check_id = f"service:{name}"
        by_node = _catalog_status(agent, f"/v1/health/node/{agent.node}", check_id)
        by_service = _catalog_status(agent, f"/v1/health/service/{name}?passing", check_id)
        return by_node == by_service == "passing"

    wait_for(
        passing, timeout=DEADLINE_S, what=lambda: f"the catalog to show service:{name} passing\n{agent.log()}"
    )
