"""Real browser, real cluster: the web UI driven by Playwright through Debian's chromium.

One cluster for the module: three servers (`-bootstrap-expect=3`) and a client agent, every one
with the UI on; the browser talks to the client agent, as an operator's browser would.
- Nodes: `/ui/dc1/nodes` lists every node, with the leader's badge; a node's checks open by
  keyboard.
- Services: a service instance with an HTTP check against a backend the test runs; the backend
  stops and, on the open pages (no reload: blocking queries), the instance turns critical, and so
  does the service on the list, which the health filter and search narrow.
- Key/Value: create, edit (CAS), delete a key, create and delete a folder; a key changed under an
  open editor gives the conflict message and keeps the other writer's value.
- Members (LAN, WAN) and Raft peers; the token page stores a token that requests then carry as
  X-Consul-Token.
- A read the agent refuses (403) says so and links to the token page.
- Two datacenters federated over the WAN: the switcher lists both and shows dc2's services and
  nodes through dc1's agent.
Each page is photographed, into docs/ui/ (which the README links) when PROCONSUL_UI_SCREENSHOTS=docs
is set, else into a temporary directory, so a test run leaves the checkout clean.

Chromium is Debian's (`apt-get install chromium`, scripts/setup-env does it); Playwright never
downloads a browser here.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import Cluster, agent_json, free_subnet
from helpers import REPO, AgentProcess, wait_for
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SHOTS = REPO / "docs" / "ui" if os.environ.get("PROCONSUL_UI_SCREENSHOTS") == "docs" else Path(tempfile.mkdtemp(prefix="ui-shots-"))
# Generous: the machines are small and shared; every wait is on a condition, never a sleep.
DEADLINE_MS = 30_000


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (scripts/setup-env test)"
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(DEADLINE_MS)
    errors: list[str] = []
    opened = context.new_page()
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield opened
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


class UICluster:
    def __init__(self, servers: Cluster, client: AgentProcess) -> None:
        self.servers = servers
        self.client = client

    @property
    def url(self) -> str:
        return self.client.url

    def names(self) -> list[str]:
        return sorted([*(Cluster.name(ip) for ip in self.servers.ips), self.client.node])


@pytest.fixture(scope="module")
def ui_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UICluster]:
    root = tmp_path_factory.mktemp("ui")
    servers = Cluster(root, hcl="ui_config { enabled = true }")
    client = AgentProcess(f"-retry-join={servers.ips[0]}", "-retry-interval=1s", "-ui",
                          dev=False, ip=f"{servers.prefix}.4", node="c4", data_dir=str(root / "c4"))
    try:
        servers.start()
        client.start()
        cluster = UICluster(servers, client)
        wait_for(lambda: sorted(n["Node"] for n in agent_json(client, "GET", "/v1/catalog/nodes")) == cluster.names(),
                 timeout=90, what="every node in the catalog")
        yield cluster
    finally:
        client.stop()
        servers.stop()


def test_nodes_page_lists_every_node_with_the_leader(ui_cluster: UICluster, page: Page) -> None:
    page.goto(f"{ui_cluster.url}/ui/dc1/nodes")
    for name in ui_cluster.names():
        expect(page.locator(f'tr[data-node="{name}"]')).to_have_attribute("data-health", "passing")
    expect(page.locator("#nodes-table tbody tr")).to_have_count(4)
    leader_ip = ui_cluster.servers.leader_ip(ui_cluster.client)
    leader = Cluster.name(leader_ip)
    expect(page.locator(f'tr[data-node="{leader}"] .badge.leader')).to_have_text("Leader")
    expect(page.locator(".badge.leader")).to_have_count(1)
    expect(page.locator("#dc-select option")).to_have_text(["dc1"])
    shot(page, "nodes")

    # Keyboard: the skip link comes first, then a node link opens its checks with Enter.
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.locator('tr[data-node="c4"] a').focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{ui_cluster.url}/ui/dc1/nodes/c4/health-checks")
    expect(page.locator('li[data-check="serfHealth"]')).to_have_attribute("data-status", "passing")
    shot(page, "node-health-checks")
    page.get_by_role("link", name="Service Instances").click()
    expect(page).to_have_url(f"{ui_cluster.url}/ui/dc1/nodes/c4/services")
    expect(page.locator("#node-tab")).to_contain_text("No services on this node.")
    page.get_by_role("link", name="Lock Sessions").click()
    expect(page.locator("#node-tab")).to_contain_text("No lock sessions on this node.")
    # Live: a session made on c4 appears on the open tab.
    status, _, created = ui_cluster.client.http("PUT", "/v1/session/create", b'{"Name": "ui-lock"}')
    assert status == 200, created
    session_id = json.loads(created)["ID"]
    expect(page.locator(f'tr[data-session="{session_id}"]')).to_contain_text("ui-lock")
    ui_cluster.client.http("PUT", f"/v1/session/destroy/{session_id}")

    # A narrow window: still one readable column of controls, the table scrolls on its own.
    page.set_viewport_size({"width": 420, "height": 800})
    page.goto(f"{ui_cluster.url}/ui/dc1/nodes")
    expect(page.locator("#nodes-table tbody tr")).to_have_count(4)
    shot(page, "nodes-narrow")


class Backend:
    """An HTTP backend for a service check: 200 while running; stopped, its port refuses."""

    def __init__(self, ip: str) -> None:
        class Ok(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((ip, 0), Ok)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(30)


def test_instance_turns_critical_when_its_backend_stops(ui_cluster: UICluster, page: Page) -> None:
    client = ui_cluster.client
    backend = Backend(client.ip)
    try:
        body = {"ID": "web-1", "Name": "web", "Tags": ["v1", "http"], "Port": backend.port,
                "Check": {"CheckID": "web-1-http", "Name": "web HTTP",
                          "HTTP": f"http://{client.ip}:{backend.port}/health", "Interval": "1s", "Timeout": "2s"}}
        status, _, reason = client.http("PUT", "/v1/agent/service/register", json.dumps(body).encode())
        assert status == 200, reason

        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(f"{ui_cluster.url}/ui/dc1/services")
        web_row = page.locator('tr[data-service="web"]')
        expect(web_row).to_have_attribute("data-health", "passing")
        expect(web_row).to_contain_text("1 instance")
        expect(web_row).to_contain_text("http")
        expect(page.locator('tr[data-service="consul"]')).to_contain_text("3 instances")
        shot(page, "services")
        page.get_by_role("link", name="web", exact=True).click()
        expect(page).to_have_url(f"{ui_cluster.url}/ui/dc1/services/web/instances")
        instance = page.locator('tr[data-instance="web-1"]')
        expect(instance).to_have_attribute("data-health", "passing")
        expect(instance.locator('li[data-check="web-1-http"]')).to_have_attribute("data-status", "passing")

        # A second tab stays on the services list, to see the summary change live as well.
        list_page = page.context.new_page()
        list_page.goto(f"{ui_cluster.url}/ui/dc1/services")
        listed = list_page.locator('tr[data-service="web"]')
        expect(listed).to_have_attribute("data-health", "passing")

        backend.stop()
        # Neither page is reloaded: their blocking queries bring the change.
        expect(listed).to_have_attribute("data-health", "critical")
        expect(listed).to_contain_text("1 critical")
        list_page.close()
        expect(instance).to_have_attribute("data-health", "critical")
        expect(instance.locator('li[data-check="web-1-http"]')).to_have_attribute("data-status", "critical")
        expect(instance.locator('li[data-check="web-1-http"] pre.output')).not_to_be_empty()
        shot(page, "service-instances")
        # Live by long-polling: after the first read, the page asked with the index it had.
        reads = [u for u in requested if "/v1/health/service/web?" in u]
        assert reads[0].endswith("?dc=dc1") and any("index=" in u and "wait=5m" in u for u in reads[1:]), reads

        page.go_back()
        expect(web_row).to_have_attribute("data-health", "critical")
        page.select_option("#service-health", "critical")
        expect(page.locator("#services-table tbody tr")).to_have_count(1)
        page.select_option("#service-health", "")
        page.fill("#service-search", "cons")
        expect(page.locator("#services-table tbody tr")).to_have_count(1)
        expect(page.locator('tr[data-service="consul"]')).to_be_visible()
    finally:
        backend.stop() if backend.thread.is_alive() else None
        client.http("PUT", "/v1/agent/service/deregister/web-1")


def kv_value(agent: AgentProcess, key: str) -> str | None:
    status, _, body = agent.http("GET", f"/v1/kv/{key}?raw")
    return body.decode() if status == 200 else None


def test_kv_create_edit_conflict_delete(ui_cluster: UICluster, page: Page) -> None:
    client = ui_cluster.client
    page.goto(f"{ui_cluster.url}/ui/dc1/kv/")
    page.get_by_role("link", name="Create key or folder").click()
    expect(page).to_have_url(f"{ui_cluster.url}/ui/dc1/kv/create")
    page.fill("#kv-name", "ui-test/port")
    page.fill("#kv-value", "8080")
    page.get_by_role("button", name="Save").click()
    expect(page).to_have_url(f"{ui_cluster.url}/ui/dc1/kv/")
    expect(page.locator('tr[data-key="ui-test/"]')).to_be_visible()
    assert kv_value(client, "ui-test/port") == "8080"

    # Creating it again does not overwrite it (cas=0).
    page.goto(f"{ui_cluster.url}/ui/dc1/kv/ui-test/create")
    page.fill("#kv-name", "port")
    page.fill("#kv-value", "1")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#kv-create-form .message.error")).to_contain_text("already exists")
    assert kv_value(client, "ui-test/port") == "8080"

    page.goto(f"{ui_cluster.url}/ui/dc1/kv/ui-test/")
    shot(page, "kv")
    page.get_by_role("link", name="port").click()
    expect(page).to_have_url(f"{ui_cluster.url}/ui/dc1/kv/ui-test/port/edit")
    expect(page.locator("#kv-value")).to_have_value("8080")
    page.fill("#kv-value", "9090")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#kv-notice")).to_contain_text("Saved.")
    assert kv_value(client, "ui-test/port") == "9090"

    # Someone else writes the key while the editor is open: the save is refused, not applied.
    assert client.http("PUT", "/v1/kv/ui-test/port", b"changed-underneath")[0] == 200
    page.fill("#kv-value", "mine")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#kv-conflict")).to_contain_text("changed by someone else")
    assert kv_value(client, "ui-test/port") == "changed-underneath"
    expect(page.locator("#kv-value")).to_have_value("mine")
    shot(page, "kv-edit-conflict")
    page.get_by_role("button", name="Load the current value").click()
    expect(page.locator("#kv-value")).to_have_value("changed-underneath")

    page.locator("#kv-delete").click()
    page.locator("#kv-delete").click()  # the second press confirms
    expect(page).to_have_url(f"{ui_cluster.url}/ui/dc1/kv/ui-test/")
    wait_for(lambda: kv_value(client, "ui-test/port") is None, timeout=30, what="the key deleted")

    # A folder: created from the folder page, deleted with everything in it.
    page.goto(f"{ui_cluster.url}/ui/dc1/kv/create")
    page.fill("#kv-name", "ui-folder/")
    page.get_by_role("button", name="Save").click()
    expect(page).to_have_url(f"{ui_cluster.url}/ui/dc1/kv/ui-folder/")
    assert client.http("PUT", "/v1/kv/ui-folder/inner", b"x")[0] == 200
    expect(page.locator('tr[data-key="ui-folder/inner"]')).to_be_visible()  # live: it appears
    page.goto(f"{ui_cluster.url}/ui/dc1/kv/")
    delete = page.get_by_role("button", name="Delete ui-folder/")
    delete.click()
    delete.click()
    expect(page.locator('tr[data-key="ui-folder/"]')).to_have_count(0)
    assert client.http("GET", "/v1/kv/ui-folder/?recurse")[0] == 404


def test_members_and_raft_peers(ui_cluster: UICluster, page: Page) -> None:
    page.goto(f"{ui_cluster.url}/ui/dc1/members")
    for name in ui_cluster.names():
        expect(page.locator(f'#members-lan tr[data-member="{name}"]')).to_have_attribute("data-status", "alive")
    expect(page.locator('#members-lan tr[data-member="c4"]')).to_contain_text("client")
    expect(page.locator("#raft-peers tbody tr")).to_have_count(3)
    expect(page.locator("#raft-peers .badge.leader")).to_have_count(1)
    # The client agent is not in the WAN pool; a server shows the three servers there.
    expect(page.locator("#members-wan")).to_contain_text("not in the WAN pool")
    server = ui_cluster.servers.nodes[ui_cluster.servers.ips[0]]
    page.goto(f"{server.url}/ui/dc1/members")
    expect(page.locator("#members-wan tbody tr")).to_have_count(3)
    shot(page, "members")


def test_token_is_stored_and_sent(ui_cluster: UICluster, page: Page) -> None:
    page.goto(f"{ui_cluster.url}/ui/dc1/acls/tokens")
    expect(page.locator("#token-state")).to_contain_text("No token set")
    page.get_by_label("ACL token (SecretID)").fill("7a1e4c2b-0000-4000-8000-00000000abcd")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#token-notice")).to_contain_text("Token saved")
    shot(page, "token")
    with page.expect_request(lambda r: "/v1/internal/ui/services" in r.url) as sent:
        page.get_by_role("link", name="Services").click()
    assert sent.value.headers.get("x-consul-token") == "7a1e4c2b-0000-4000-8000-00000000abcd"
    page.get_by_role("link", name="Token").click()
    page.get_by_role("button", name="Log out").click()
    with page.expect_request(lambda r: "/v1/internal/ui/nodes" in r.url) as sent:
        page.get_by_role("link", name="Nodes").click()
    assert "x-consul-token" not in sent.value.headers


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, AgentProcess]]:
    """One server per datacenter (dc1 with the UI, dc2), joined over the WAN."""
    root = tmp_path_factory.mktemp("ui-wan")
    prefix = free_subnet(hosts=2)
    ip1, ip2 = f"{prefix}.1", f"{prefix}.2"

    def server(ip: str, dc: str, other: str, *extra: str) -> AgentProcess:
        return AgentProcess("-server", "-bootstrap-expect=1", f"-datacenter={dc}", f"-retry-join-wan={other}",
                            "-retry-interval-wan=1s", "-hcl", "performance { raft_multiplier = 1 }", *extra,
                            dev=False, ip=ip, node=f"srv-{dc}", data_dir=str(root / dc))

    started: list[AgentProcess] = []
    try:
        for agent in (server(ip1, "dc1", ip2, "-ui"), server(ip2, "dc2", ip1)):
            started.append(agent.start())
        dc1, dc2 = started
        wait_for(lambda: sorted(agent_json(dc1, "GET", "/v1/catalog/datacenters")) == ["dc1", "dc2"],
                 timeout=90, what="both datacenters known to dc1")
        yield dc1, dc2
    finally:
        for agent in started:
            agent.stop()


def test_datacenter_switcher(federation: tuple[AgentProcess, AgentProcess], page: Page) -> None:
    dc1, dc2 = federation
    body = {"Name": "only-in-dc2", "Port": 9000}
    assert dc2.http("PUT", "/v1/agent/service/register", json.dumps(body).encode())[0] == 200
    page.goto(f"{dc1.url}/ui/dc1/services")
    expect(page.locator("#dc-select option")).to_have_text(["dc1", "dc2"])
    expect(page.locator('tr[data-service="consul"]')).to_be_visible()
    expect(page.locator('tr[data-service="only-in-dc2"]')).to_have_count(0)
    page.select_option("#dc-select", "dc2")
    # The same section in the other datacenter, read through dc1's agent with ?dc=dc2.
    expect(page).to_have_url(f"{dc1.url}/ui/dc2/services")
    expect(page.locator('tr[data-service="only-in-dc2"]')).to_have_attribute("data-health", "passing")
    page.get_by_role("link", name="Nodes").click()
    expect(page).to_have_url(f"{dc1.url}/ui/dc2/nodes")
    expect(page.locator("#nodes-table tbody tr")).to_have_count(1)
    expect(page.locator('tr[data-node="srv-dc2"]')).to_be_visible()


def test_a_refused_read_points_to_the_token_page(page: Page) -> None:
    # A 403 as an ACL denial gives it, here from http_config.block_endpoints.
    agent = AgentProcess("-hcl", 'http_config { block_endpoints = ["/v1/internal/ui/services"] }').start()
    try:
        page.goto(f"{agent.url}/ui/dc1/services")
        expect(page.locator("#status")).to_contain_text("Services: permission denied.")
        page.locator("#status").get_by_role("link", name="Log in with a token").click()
        expect(page).to_have_url(f"{agent.url}/ui/dc1/acls/tokens")
        expect(page.get_by_label("ACL token (SecretID)")).to_be_focused()
    finally:
        agent.stop()


def _api(agent: AgentProcess, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{agent.url}{path}", data=data, method=method, headers={"X-Consul-Token": token})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def test_a_token_on_a_deny_cluster_sees_only_what_it_may_read(page: Page) -> None:
    management = "5f0c7a3e-1b2d-4c5e-8f90-a1b2c3d4e5f6"
    agent = AgentProcess(
        "-hcl", f'acl {{ enabled = true  default_policy = "deny"  tokens {{ initial_management = "{management}" }} }}'
    ).start()
    try:
        wait_for(lambda: _api(agent, "GET", "/v1/acl/token/self", management)[0] == 200, timeout=60,
                 what="the initial management token")
        for name, port in (("web", 8080), ("db", 5432)):
            status, out = _api(agent, "PUT", "/v1/agent/service/register", management, {"Name": name, "Port": port})
            assert status == 200, out
        status, policy = _api(agent, "PUT", "/v1/acl/policy", management, {
            "Name": "web-reader", "Rules": 'service "web" { policy = "read" }\nnode_prefix "" { policy = "read" }',
        })
        assert status == 200, policy
        status, token = _api(agent, "PUT", "/v1/acl/token", management, {"Policies": [{"Name": "web-reader"}]})
        assert status == 200, token
        wait_for(lambda: {s for s in (_api(agent, "GET", "/v1/catalog/services", management)[1] or {})}
                 >= {"web", "db"}, timeout=60, what="both services in the catalog")

        # Anonymous (deny): the services list is filtered down to nothing it may read.
        page.goto(f"{agent.url}/ui/dc1/services")
        expect(page.locator('tr[data-service="web"]')).to_have_count(0)
        page.goto(f"{agent.url}/ui/dc1/acls/tokens")
        page.get_by_label("ACL token (SecretID)").fill(token["SecretID"])
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#token-notice")).to_contain_text("Token saved")
        page.get_by_role("link", name="Services").click()
        expect(page.locator('tr[data-service="web"]')).to_be_visible()
        expect(page.locator('tr[data-service="db"]')).to_have_count(0)
        shot(page, "services-with-token")
    finally:
        agent.stop()
