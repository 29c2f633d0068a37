"""A real agent keeps answering with every instance of a service whose health checks mostly fail,
when the service sets a protection threshold, and says so; without one it filters as Consul does.

Four instances of `web` (one node, four ports) with TTL checks; three stay critical. With
`ProtectionThreshold` 0.5 the healthy fraction 0.25 is below it: `?passing` (through py-consul)
and DNS SRV answer all four, the HTTP answer carries the header and the agent logs once. When
enough instances recover, the filter applies again. `api` (no threshold) filters normally.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import consul
from helpers import AgentProcess, wait_for

HEADER = "X-Proconsul-Protection-Threshold-Applied"


def _register(agent: AgentProcess, name: str, port: int, threshold: float | None) -> None:
    service: dict[str, Any] = {
        "Name": name, "ID": f"{name}-{port}", "Port": port,
        "Check": {"CheckID": f"{name}-{port}-ttl", "TTL": "10m"},
    }
    if threshold is not None:
        service["ProtectionThreshold"] = threshold
    code, _, body = agent.http("PUT", "/v1/agent/service/register", json.dumps(service).encode())
    assert code == 200, body


def _pass(agent: AgentProcess, check_id: str) -> None:
    code, _, body = agent.http("PUT", f"/v1/agent/check/pass/{check_id}")
    assert code == 200, body


def _srv_ports(agent: AgentProcess, name: str) -> list[int]:
    binary = shutil.which("dig")
    assert binary, "dig is missing: scripts/setup-env test installs bind9-dnsutils"
    out = subprocess.run(
        [binary, "@127.0.0.1", "-p", str(agent.dns_port), "+tries=1", "+time=5", "+short",
         f"{name}.service.consul", "SRV"],
        capture_output=True, text=True, timeout=30,
    ).stdout
    return sorted(int(line.split()[2]) for line in out.splitlines() if line and not line.startswith(";"))


def test_below_the_threshold_every_instance_is_answered() -> None:
    agent = AgentProcess("-hcl", 'check_update_interval = "0s"').start()
    try:
        api = consul.Consul(host="127.0.0.1", port=agent.http_port)
        ports = [8001, 8002, 8003, 8004]
        for port in ports:
            _register(agent, "web", port, 0.5)
            _register(agent, "api", port, None)
        _pass(agent, "web-8001-ttl")
        _pass(agent, "api-8001-ttl")

        def passing_ports(name: str) -> list[int]:
            _, entries = api.health.service(name, passing=True)
            return sorted(e["Service"]["Port"] for e in entries)

        # The catalog has the four instances (anti-entropy) and the one passing check.
        wait_for(lambda: passing_ports("api") == [8001], timeout=60, what=lambda: passing_ports("api"))
        assert passing_ports("web") == ports
        code, headers, body = agent.http("GET", "/v1/health/service/web?passing")
        assert code == 200 and headers.get(HEADER) == "true", (headers, body)
        assert {e["Service"]["ProtectionThreshold"] for e in json.loads(body)} == {0.5}
        code, headers, _ = agent.http("GET", "/v1/health/service/api?passing")
        assert code == 200 and HEADER not in headers
        # Without ?passing nothing is filtered, so nothing is protected either.
        code, headers, _ = agent.http("GET", "/v1/health/service/web")
        assert code == 200 and HEADER not in headers
        assert _srv_ports(agent, "web") == ports
        assert _srv_ports(agent, "api") == [8001]
        # Logged once per answering component, however many queries it answered meanwhile.
        assert agent.log().count("http: service 'web' is below its protection threshold") == 1
        assert agent.log().count("dns: service 'web' is below its protection threshold") == 1

        # Two of four passing is not below 0.5: the filter applies again.
        _pass(agent, "web-8002-ttl")
        wait_for(lambda: passing_ports("web") == [8001, 8002], timeout=60, what=lambda: passing_ports("web"))
        code, headers, _ = agent.http("GET", "/v1/health/service/web?passing")
        assert code == 200 and HEADER not in headers
        assert wait_for(lambda: _srv_ports(agent, "web") == [8001, 8002], timeout=30,
                        what=lambda: _srv_ports(agent, "web"))
        assert "service 'web' is above its protection threshold again" in agent.log()
    finally:
        agent.stop()


def test_a_threshold_outside_zero_to_one_is_a_400() -> None:
    agent = AgentProcess().start()
    try:
        for bad in (1.5, -0.1, "half"):
            service = {"Name": "web", "ProtectionThreshold": bad}
            code, _, body = agent.http("PUT", "/v1/agent/service/register", json.dumps(service).encode())
            assert code == 400 and b"ProtectionThreshold" in body and b"between 0 and 1" in body, (bad, body)
    finally:
        agent.stop()


def test_the_threshold_is_read_from_config_files() -> None:
    agent = AgentProcess(
        "-hcl", 'service { name = "web"  port = 80  protection_threshold = 0.3 }'
    ).start()
    try:
        code, _, body = agent.http("GET", "/v1/agent/service/web")
        assert code == 200 and json.loads(body)["ProtectionThreshold"] == 0.3, body
    finally:
        agent.stop()
