"""Real processes: the web UI's serving rules and its `/v1/internal/ui/*` reads, over HTTP.

- `-dev` (and `-ui`) serve the UI under `/ui/`: `/` and `/ui` answer 301 to `/ui/`; any path under
  it that is not a file answers index.html (deep links), assets answer with their types, a
  missing asset and a path escaping the directory are 404s.
- Disabled (no `-ui`, `ui_config.enabled = false`): `/ui/...` is a 404 and `/` says so in text.
- `ui_config.content_path` moves everything (and the page's `<base href>`); `/` is the UI itself.
- `ui_config.dir` serves that directory instead of the shipped assets.
- `/v1/internal/ui/services` and `/v1/internal/ui/nodes`: Consul's summary shapes, blocking.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from helpers import AgentProcess, wait_for


def raw_get(agent: AgentProcess, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """A request with the path sent exactly as given (no client-side normalisation, no redirects)."""
    conn = http.client.HTTPConnection(agent.ip, agent.http_port, timeout=30)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture()
def started() -> Iterator[list[AgentProcess]]:
    agents: list[AgentProcess] = []
    yield agents
    for agent in agents:
        agent.stop()


def start(started: list[AgentProcess], *args: str, **kwargs: object) -> AgentProcess:
    agent = AgentProcess(*args, **kwargs)  # type: ignore[arg-type]
    started.append(agent)
    return agent.start()


def test_dev_agent_serves_the_ui(started: list[AgentProcess]) -> None:
    agent = start(started)
    status, headers, _ = raw_get(agent, "/")
    assert (status, headers["Location"]) == (301, "/ui/")
    status, headers, _ = raw_get(agent, "/ui")
    assert (status, headers["Location"]) == (301, "/ui/")
    status, headers, body = raw_get(agent, "/ui/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<base href="/ui/">' in body and b"assets/js/main.js" in body
    # Deep links of Consul's URL scheme all answer the page; the client routes them.
    for deep in ("/ui/dc1/services", "/ui/dc1/services/web/instances", "/ui/dc1/nodes/n1/health-checks",
                 "/ui/dc1/kv/app/config/", "/ui/dc1/kv/app/port/edit"):
        status, _, page = raw_get(agent, deep)
        assert (status, page) == (200, body), deep
    status, headers, css = raw_get(agent, "/ui/assets/app.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css") and b"--accent" in css
    status, headers, _ = raw_get(agent, "/ui/assets/js/main.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    status, _, _ = raw_get(agent, "/ui/assets/js/missing.js")
    assert status == 404
    status, _, _ = raw_get(agent, "/ui/assets/../../__init__.py")
    assert status == 404
    status, _, _ = raw_get(agent, "/ui/assets/%2e%2e/%2e%2e/__init__.py")
    assert status == 404
    status, _, head = raw_get(agent, "/ui/dc1/nodes", method="HEAD")
    assert (status, head) == (200, b"")


def test_ui_flag_enables_a_server_without_dev(started: list[AgentProcess], tmp_path: Path) -> None:
    agent = start(started, "-server", "-bootstrap", "-ui", dev=False, data_dir=str(tmp_path / "d"))
    status, _, body = raw_get(agent, "/ui/dc1/nodes")
    assert status == 200 and b'<base href="/ui/">' in body


def test_disabled_ui_is_404(started: list[AgentProcess], tmp_path: Path) -> None:
    agent = start(started, "-server", "-bootstrap", dev=False, data_dir=str(tmp_path / "d"))
    for path in ("/ui/", "/ui", "/ui/dc1/nodes", "/ui/assets/app.css"):
        status, _, _ = raw_get(agent, path)
        assert status == 404, path
    status, _, body = raw_get(agent, "/")
    assert status == 200 and b"UI disabled" in body
    # Turned off explicitly under -dev, too.
    dev = start(started, "-hcl", "ui_config { enabled = false }")
    assert raw_get(dev, "/ui/")[0] == 404


def test_content_path(started: list[AgentProcess]) -> None:
    agent = start(started, "-hcl", 'ui_config { content_path = "/console" }')
    status, headers, _ = raw_get(agent, "/")
    assert (status, headers["Location"]) == (301, "/console/")
    status, _, body = raw_get(agent, "/console/dc1/services")
    assert status == 200 and b'<base href="/console/">' in body
    assert raw_get(agent, "/console/assets/app.css")[0] == 200
    assert raw_get(agent, "/ui/")[0] == 404


def test_content_path_at_root_leaves_the_api_alone(started: list[AgentProcess]) -> None:
    agent = start(started, "-ui-content-path=/")
    status, _, body = raw_get(agent, "/")
    assert status == 200 and b'<base href="/">' in body
    assert raw_get(agent, "/dc1/nodes")[0] == 200
    status, _, leader = raw_get(agent, "/v1/status/leader")
    assert status == 200 and json.loads(leader)
    assert raw_get(agent, "/v1/no/such/endpoint")[0] == 404


def test_custom_dir(started: list[AgentProcess], tmp_path: Path) -> None:
    custom = tmp_path / "custom-ui"
    (custom / "assets").mkdir(parents=True)
    (custom / "index.html").write_text("<html><body>custom build at __CONTENT_PATH__</body></html>")
    (custom / "assets" / "x.css").write_text("body{}")
    agent = start(started, f"-ui-dir={custom}")
    status, _, body = raw_get(agent, "/ui/dc1/services")
    assert status == 200 and body == b"<html><body>custom build at /ui/</body></html>"
    assert raw_get(agent, "/ui/assets/x.css")[2] == b"body{}"
    assert raw_get(agent, "/ui/assets/app.css")[0] == 404  # the shipped assets are not mixed in
    # A new build dropped into the directory is served without a restart.
    (custom / "index.html").write_text("<html><body>rebuilt</body></html>")
    assert raw_get(agent, "/ui/")[2] == b"<html><body>rebuilt</body></html>"


def _get_json(agent: AgentProcess, path: str) -> tuple[dict[str, str], object]:
    status, headers, body = agent.http("GET", path)
    assert status == 200, body
    return headers, json.loads(body)


def test_internal_ui_summaries(started: list[AgentProcess]) -> None:
    agent = start(started, node="ui-node")
    for sid, tags in (("web-1", ["blue"]), ("web-2", ["green"])):
        body = {"ID": sid, "Name": "web", "Tags": tags, "Port": 80,
                "Checks": [{"CheckID": f"{sid}-ttl", "Name": "ttl", "TTL": "10m"}]}
        assert agent.http("PUT", "/v1/agent/service/register", json.dumps(body).encode())[0] == 200
    assert agent.http("PUT", "/v1/agent/check/pass/web-1-ttl")[0] == 200
    assert agent.http("PUT", "/v1/agent/check/warn/web-2-ttl")[0] == 200

    def web_summary() -> dict[str, object] | None:
        _, services = _get_json(agent, "/v1/internal/ui/services")
        found = [s for s in services if s["Name"] == "web"]  # type: ignore[union-attr, index]
        return found[0] if found and found[0]["ChecksWarning"] == 1 else None  # type: ignore[index]

    web = wait_for(web_summary, timeout=30, what="the web summary with its warning")
    # Both instances' own checks and the node's serfHealth, counted once.
    assert web["InstanceCount"] == 2 and web["Nodes"] == ["ui-node"] and web["Tags"] == ["blue", "green"]
    assert (web["ChecksPassing"], web["ChecksWarning"], web["ChecksCritical"]) == (2, 1, 0)
    assert web["Datacenter"] == "dc1"

    headers, nodes = _get_json(agent, "/v1/internal/ui/nodes")
    (node,) = [n for n in nodes if n["Node"] == "ui-node"]  # type: ignore[union-attr, index]
    assert sorted(s["ID"] for s in node["Services"]) == ["consul", "web-1", "web-2"]
    assert {c["CheckID"] for c in node["Checks"]} == {"serfHealth", "web-1-ttl", "web-2-ttl"}
    assert node["Address"] == "127.0.0.1" and node["Datacenter"] == "dc1"

    # Blocking: a read at the current index returns when a check changes, with the change.
    index = int(headers["X-Consul-Index"])
    answer: dict[str, object] = {}

    def block() -> None:
        answer["result"] = _get_json(agent, f"/v1/internal/ui/services?index={index}&wait=60s")

    reader = threading.Thread(target=block)
    reader.start()
    # Whether the read is parked yet or not, its index predates the change: it answers with it.
    assert agent.http("PUT", "/v1/agent/check/fail/web-1-ttl")[0] == 200
    reader.join(60)
    assert not reader.is_alive()
    new_headers, services = answer["result"]  # type: ignore[misc]
    assert int(new_headers["X-Consul-Index"]) > index
    (web,) = [s for s in services if s["Name"] == "web"]
    assert web["ChecksCritical"] == 1

    # ?filter over the summaries' fields, as Consul's UI endpoints take it.
    _, only_web = _get_json(agent, "/v1/internal/ui/services?filter=" + quote('Name == "web" and Kind == ""'))
    assert [s["Name"] for s in only_web] == ["web"]  # type: ignore[union-attr, index]
    _, tagged = _get_json(agent, "/v1/internal/ui/services?filter=" + quote('"green" in Tags'))
    assert [s["Name"] for s in tagged] == ["web"]  # type: ignore[union-attr, index]
    _, dump = _get_json(agent, "/v1/internal/ui/nodes?filter=" + quote('Node == "ui-node"'))
    assert [n["Node"] for n in dump] == ["ui-node"]  # type: ignore[union-attr, index]
    status, _, reason = agent.http("GET", "/v1/internal/ui/services?filter=" + quote("Name =="))
    assert status == 400 and reason.startswith(b"Failed to create boolean expression evaluator"), reason
