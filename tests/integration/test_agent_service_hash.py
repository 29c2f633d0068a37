"""Hash-based blocking on `GET /v1/agent/service/:id` (Consul's `?hash=`), on a real agent.

A read with the current ContentHash parks until the service's definition changes, then answers
the new definition and hash; with an unchanged definition it answers the same hash once `?wait`
passes; a check status change alone does not change the hash.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from helpers import AgentProcess, wait_for


def _register(agent: AgentProcess, port: int) -> None:
    body = {"Name": "web", "ID": "web-1", "Port": port, "Check": {"CheckID": "web-ttl", "TTL": "10m"}}
    code, _, out = agent.http("PUT", "/v1/agent/service/register", json.dumps(body).encode())
    assert code == 200, out


def test_hash_blocking_wakes_on_a_change_and_times_out_otherwise() -> None:
    agent = AgentProcess().start()
    try:
        _register(agent, 8080)
        code, headers, body = agent.http("GET", "/v1/agent/service/web-1")
        assert code == 200
        first = json.loads(body)["ContentHash"]
        assert headers["X-Consul-ContentHash"] == first

        # Unchanged (a check status change is not part of the definition): the same hash after ?wait.
        assert agent.http("PUT", "/v1/agent/check/pass/web-ttl")[0] == 200
        started = time.monotonic()
        code, headers, body = agent.http("GET", f"/v1/agent/service/web-1?hash={first}&wait=1s")
        assert code == 200 and json.loads(body)["ContentHash"] == first
        assert time.monotonic() - started >= 0.9  # it did wait (a lower bound only)

        # Parked with the current hash, woken by a new definition.
        answer: dict[str, Any] = {}

        def blocked_read() -> None:
            answer["result"] = agent.http("GET", f"/v1/agent/service/web-1?hash={first}&wait=60s")

        reader = threading.Thread(target=blocked_read)
        reader.start()
        wait_for(lambda: "result" not in answer and reader.is_alive(), timeout=10, what="the read parked")
        _register(agent, 9090)
        reader.join(60)
        assert not reader.is_alive(), "the parked read was not woken by the change"
        code, headers, body = answer["result"]
        new = json.loads(body)
        assert code == 200 and new["Port"] == 9090 and new["ContentHash"] != first
        assert headers["X-Consul-ContentHash"] == new["ContentHash"]
    finally:
        agent.stop()
