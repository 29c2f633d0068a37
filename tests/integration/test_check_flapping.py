"""A real agent holds a flapping HTTP check critical and releases it once the target is stable.

The target is a tiny HTTP server on loopback whose answer alternates 200/500 on every request (as
a service restarting in a loop would), then stays 200. With `check_flap_detection` on, the
catalog and DNS see one steady critical instead of a status that changes every interval; a
second check on the same target with `"FlapDetection": false` keeps reporting each result.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from helpers import AgentProcess, wait_for


class Target:
    """Answers 200 and 500 alternately (counted per path, so each check sees the alternation) while
    `flapping`, 200 afterwards."""

    def __init__(self) -> None:
        self.flapping = True
        self.counts: dict[str, int] = {}
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                n = target.counts[self.path] = target.counts.get(self.path, 0) + 1
                code = 500 if target.flapping and n % 2 else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def target() -> Iterator[Target]:
    t = Target()
    yield t
    t.server.shutdown()


def catalog_checks(agent: AgentProcess) -> dict[str, dict[str, Any]]:
    code, _, body = agent.http("GET", "/v1/health/service/web")
    assert code == 200, body
    return {c["CheckID"]: c for entry in json.loads(body) for c in entry["Checks"]}


def test_flapping_check_is_held_critical_then_released(target: Target) -> None:
    agent = AgentProcess("-hcl", "check_flap_detection { window = 8  high_threshold = 0.5  low_threshold = 0.25 }",
                         "-hcl", 'check_update_interval = "0s"').start()
    try:
        service = {
            "Name": "web", "Port": 80,
            "Checks": [
                {"CheckID": "held", "Name": "held", "HTTP": f"{target.url}/held", "Interval": "1s"},
                {"CheckID": "raw", "Name": "raw", "HTTP": f"{target.url}/raw", "Interval": "1s",
                 "FlapDetection": False},
            ],
        }
        code, _, body = agent.http("PUT", "/v1/agent/service/register", json.dumps(service).encode())
        assert code == 200, body

        held = wait_for(lambda: (c := catalog_checks(agent).get("held")) and "flapping" in c["Output"] and c,
                        timeout=90, what=lambda: f"the held check flapping: {catalog_checks(agent)}")
        assert held["Status"] == "critical"
        assert held["Output"].startswith("flapping: state changed in ")
        # While held, it stays critical whatever the target answers; the raw check still flips.
        raw_seen: set[str] = set()

        def both_seen_and_held() -> bool:
            checks = catalog_checks(agent)
            assert checks["held"]["Status"] == "critical", checks["held"]
            raw_seen.add(checks["raw"]["Status"])
            return raw_seen == {"passing", "critical"}

        wait_for(both_seen_and_held, timeout=60, interval=0.2, what=lambda: f"raw results {raw_seen}")

        target.flapping = False
        released = wait_for(lambda: (c := catalog_checks(agent)["held"])["Status"] == "passing" and c,
                            timeout=90, what=lambda: f"the held check released: {catalog_checks(agent)}")
        assert "flapping" not in released["Output"]
        assert "check held stopped flapping" in agent.log()
        assert "check held started flapping" in agent.log()
    finally:
        agent.stop()


def test_the_block_is_validated() -> None:
    agent = AgentProcess("-hcl", "check_flap_detection { window = 1  high_threshold = 0.2  low_threshold = 0.5 }")
    try:
        with pytest.raises(AssertionError) as failed:
            agent.start()
        log = str(failed.value)
        assert "check_flap_detection.window must be at least 2" in log
        assert "low_threshold <= high_threshold" in log
    finally:
        agent.stop()
