"""The toxiproxy-compatible server as a user runs it: `python -m proconsul_sim.toxiproxy` on port 8474
of a random 127.x.y.z address, driven through the toxiproxy-python client and raw HTTP (requests),
with real TCP clients through its proxies to an echo server.

Statuses, messages and JSON shapes are toxiproxy's (api.go, v2.12); timing checks are lower bounds.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import toxiproxy
from helpers import wait_for
from proconsul_sim.toxiproxy import find_real_toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import NotFound, ProxyExists

API_PORT = 8474
DEADLINE_S = 30.0


@dataclass
class ServerProcess:
    address: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.address}:{API_PORT}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def answers(self) -> bool:
        assert self.proc.poll() is None, f"toxiproxy server exited:\n{self.log()}"
        return requests.get(f"{self.url}/version", timeout=5).status_code == 200

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"toxiproxy server ignored signal {signum}:\n{self.log()}") from None


def _random_loopback() -> str:
    rng = random.SystemRandom()
    return f"127.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}.{rng.randrange(2, 255)}"


def start_server(tmp_path: Path, *extra: str, go_style_flags: bool = False) -> ServerProcess:
    """A server process on port 8474 of a random loopback address (retrying if the address is taken)."""
    for attempt in range(5):
        address = _random_loopback()
        log_path = tmp_path / f"toxiproxy-{address}-{attempt}.log"
        flags = (
            ["-host", address, "-port", str(API_PORT)]
            if go_style_flags
            else ["--host", address, "--port", str(API_PORT)]
        )
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "proconsul_sim.toxiproxy", *flags, *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = ServerProcess(address, proc, log_path)
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get(f"{server.url}/version", timeout=5).status_code == 200:
                    return server
            except requests.ConnectionError:
                time.sleep(0.05)
        if proc.poll() is None:
            server.stop()
            raise AssertionError(f"toxiproxy server never answered:\n{server.log()}")
        if "address already in use" not in server.log().lower():
            raise AssertionError(f"toxiproxy server exited with {proc.returncode}:\n{server.log()}")
    raise AssertionError("no free 127.x.y.z address for port 8474")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(tmp_path_factory.mktemp("toxiproxy"))
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def echo(server: ServerProcess) -> Iterator[str]:
    """An echo server on the toxiproxy server's loopback address; yields "host:port"."""
    with _EchoServer((server.address, 0), _EchoHandler) as echo_server:
        thread = threading.Thread(target=echo_server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"{server.address}:{echo_server.server_address[1]}"
        finally:
            echo_server.shutdown()
            thread.join(DEADLINE_S)


@pytest.fixture
def api(server: ServerProcess) -> Iterator[str]:
    """The server's base URL, with toxiproxy-python pointed at it; every proxy is deleted afterwards."""
    toxiproxy.Toxiproxy().update_api_consumer(server.address, API_PORT)
    yield server.url
    for name in requests.get(f"{server.url}/proxies", timeout=DEADLINE_S).json():
        requests.delete(f"{server.url}/proxies/{name}", timeout=DEADLINE_S)


def _address(listen: str) -> tuple[str, int]:
    host, port = listen.rsplit(":", 1)
    return host, int(port)


def _round_trip(listen: str, payload: bytes) -> bytes:
    with socket.create_connection(_address(listen), timeout=DEADLINE_S) as sock:
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            data = sock.recv(65536)
            if not data:
                break
            received += data
        return received


def _refused(listen: str) -> bool:
    try:
        socket.create_connection(_address(listen), timeout=DEADLINE_S).close()
    except ConnectionRefusedError:
        return True
    return False


def test_version_and_running(api: str) -> None:
    client = toxiproxy.Toxiproxy()
    assert client.running()
    assert json.loads(client.version()) == {"version": "2.12.0-proconsul"}
    response = requests.get(f"{api}/version", timeout=DEADLINE_S)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")


def test_proxy_lifecycle_through_toxiproxy_python(api: str, echo: str, server: ServerProcess) -> None:
    client = toxiproxy.Toxiproxy()
    proxy = client.create(upstream=echo, name="kv", listen=f"{server.address}:0")
    host, port = _address(proxy.listen)
    assert host == server.address and port != 0  # port 0 got an OS-chosen port, reported back
    assert proxy.enabled is True
    assert list(client.proxies()) == ["kv"]
    assert client.get_proxy("kv").upstream == echo
    assert _round_trip(proxy.listen, b"hello") == b"hello"
    with pytest.raises(ProxyExists):
        client.create(upstream=echo, name="kv")

    proxy.add_toxic(type="latency", attributes={"latency": 300})
    toxic = proxy.get_toxic("latency_downstream")
    assert (toxic.type, toxic.stream, toxic.toxicity) == ("latency", "downstream", 1.0)
    assert toxic.attributes == {"latency": 300, "jitter": 0}
    started = time.monotonic()
    assert _round_trip(proxy.listen, b"slow") == b"slow"
    assert time.monotonic() - started >= 0.29
    assert proxy.destroy_toxic("latency_downstream")
    assert proxy.toxics() == {}

    with proxy.down():
        assert client.get_proxy("kv").enabled is False
        assert _refused(proxy.listen)
    assert client.get_proxy("kv").enabled is True
    assert client.get_proxy("kv").listen == proxy.listen  # re-enabled on the same address
    assert _round_trip(proxy.listen, b"back") == b"back"

    proxy.add_toxic(type="timeout", stream="upstream", attributes={"timeout": 0})
    proxy.disable()
    assert client.reset()  # re-enables every proxy and removes every toxic
    assert client.get_proxy("kv").enabled is True and proxy.toxics() == {}
    assert _round_trip(proxy.listen, b"reset") == b"reset"

    assert client.destroy(proxy)
    assert client.get_proxy("kv") is None
    assert _refused(proxy.listen)
    with pytest.raises(NotFound):
        APIConsumer.get("/proxies/kv")


def _error(response: requests.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"error": message, "status": status}


def test_raw_http_shapes_and_status_codes(api: str, echo: str, server: ServerProcess) -> None:
    listen = f"{server.address}:0"
    created = requests.post(
        f"{api}/proxies", json={"name": "db", "listen": listen, "upstream": echo}, timeout=30
    )
    assert created.status_code == 201, created.text
    proxy = created.json()
    assert list(proxy) == ["name", "listen", "upstream", "enabled", "toxics"]
    assert (proxy["name"], proxy["upstream"], proxy["enabled"], proxy["toxics"]) == ("db", echo, True, [])
    assert requests.get(f"{api}/proxies/db", timeout=30).json() == proxy
    assert requests.get(f"{api}/proxies", timeout=30).json() == {"db": proxy}

    _error(
        requests.post(f"{api}/proxies", json={"upstream": echo}, timeout=30),
        400,
        "missing required field: name",
    )
    _error(
        requests.post(f"{api}/proxies", json={"name": "x"}, timeout=30),
        400,
        "missing required field: upstream",
    )
    assert requests.post(f"{api}/proxies", data=b"{nope", timeout=30).status_code == 400
    assert (
        requests.post(
            f"{api}/proxies", json={"name": "x", "upstream": echo, "enabled": "yes"}, timeout=30
        ).status_code
        == 400
    )
    duplicate = {"name": "db", "listen": listen, "upstream": echo}
    _error(requests.post(f"{api}/proxies", json=duplicate, timeout=30), 409, "proxy already exists")
    in_use = requests.post(
        f"{api}/proxies", json={"name": "clash", "listen": proxy["listen"], "upstream": echo}, timeout=30
    )
    assert in_use.status_code == 500 and "address already in use" in in_use.json()["error"], in_use.text
    _error(requests.get(f"{api}/proxies/nope", timeout=30), 404, "proxy not found")
    _error(requests.delete(f"{api}/proxies/nope", timeout=30), 404, "proxy not found")
    _error(requests.post(f"{api}/proxies/nope", json={"enabled": False}, timeout=30), 404, "proxy not found")
    _error(requests.get(f"{api}/proxies/nope/toxics", timeout=30), 404, "proxy not found")
    _error(
        requests.post(f"{api}/proxies/nope/toxics", json={"type": "latency"}, timeout=30),
        404,
        "proxy not found",
    )
    browser = requests.get(f"{api}/proxies", headers={"User-Agent": "Mozilla/5.0"}, timeout=30)
    assert browser.status_code == 403

    toxics = f"{api}/proxies/db/toxics"
    latency = requests.post(toxics, json={"type": "latency"}, timeout=30)
    assert latency.status_code == 200, latency.text  # toxiproxy answers a created toxic with 200
    assert latency.json() == {
        "attributes": {"latency": 0, "jitter": 0},
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1.0,
    }
    upstream_toxic = {
        "name": "cut",
        "type": "limit_data",
        "stream": "upstream",
        "toxicity": 0.5,
        "attributes": {"bytes": 9},
    }
    assert requests.post(toxics, json=upstream_toxic, timeout=30).json() == {
        **upstream_toxic,
        "attributes": {"bytes": 9},
    }
    _error(requests.post(toxics, json={"type": "latency", "stream": "sideways"}, timeout=30), 400,
           "stream was invalid, can be either upstream or downstream")  # fmt: skip
    _error(requests.post(toxics, json={"type": "gremlin"}, timeout=30), 400, "invalid toxic type")
    _error(requests.post(toxics, json={"type": "latency"}, timeout=30), 409, "toxic already exists")
    _error(
        requests.post(toxics, json={"name": "cut", "type": "timeout"}, timeout=30),
        409,
        "toxic already exists",
    )
    bad_attribute = requests.post(
        toxics, json={"type": "bandwidth", "attributes": {"rate": "fast"}}, timeout=30
    )
    assert bad_attribute.status_code == 400 and bad_attribute.json()["error"].startswith("bad request body")
    # Upstream toxics are listed first, then downstream ones, each in the order they were added.
    assert [t["name"] for t in requests.get(toxics, timeout=30).json()] == ["cut", "latency_downstream"]
    assert [t["name"] for t in requests.get(f"{api}/proxies/db", timeout=30).json()["toxics"]] == [
        "cut",
        "latency_downstream",
    ]

    # Updates merge attributes (PATCH, and the older POST) and may change toxicity only.
    patched = requests.patch(f"{toxics}/latency_downstream", json={"attributes": {"jitter": 5}}, timeout=30)
    assert patched.status_code == 200 and patched.json()["attributes"] == {"latency": 0, "jitter": 5}
    posted = requests.post(
        f"{toxics}/latency_downstream", json={"toxicity": 0.25, "attributes": {"latency": 40}}, timeout=30
    )
    assert posted.json()["attributes"] == {"latency": 40, "jitter": 5} and posted.json()["toxicity"] == 0.25
    assert requests.get(f"{toxics}/latency_downstream", timeout=30).json() == posted.json()
    _error(requests.get(f"{toxics}/nope", timeout=30), 404, "toxic not found")
    _error(requests.patch(f"{toxics}/nope", json={}, timeout=30), 404, "toxic not found")
    _error(requests.delete(f"{toxics}/nope", timeout=30), 404, "toxic not found")

    deleted = requests.delete(f"{toxics}/cut", timeout=30)
    assert deleted.status_code == 204 and deleted.content == b""
    assert requests.post(f"{api}/reset", timeout=30).status_code == 204
    assert requests.get(toxics, timeout=30).json() == []
    gone = requests.delete(f"{api}/proxies/db", timeout=30)
    assert gone.status_code == 204 and gone.content == b""
    assert requests.get(f"{api}/proxies", timeout=30).json() == {}


def test_update_moves_and_disables_a_proxy(api: str, echo: str, server: ServerProcess) -> None:
    first = requests.post(
        f"{api}/proxies", json={"name": "m", "listen": f"{server.address}:0", "upstream": echo}, timeout=30
    )
    old_listen = first.json()["listen"]
    moved = requests.patch(f"{api}/proxies/m", json={"listen": f"{server.address}:0"}, timeout=30)
    assert moved.status_code == 200, moved.text
    new_listen = moved.json()["listen"]
    assert new_listen != old_listen and moved.json()["enabled"] is True
    assert _refused(old_listen)
    assert _round_trip(new_listen, b"moved") == b"moved"

    with socket.create_connection(_address(new_listen), timeout=DEADLINE_S) as open_connection:
        assert (
            requests.post(f"{api}/proxies/m", json={"enabled": False}, timeout=30).json()["enabled"] is False
        )
        try:
            assert open_connection.recv(1) == b""  # disabling closed the open connection
        except ConnectionResetError:
            pass
    assert _refused(new_listen)
    assert (
        requests.patch(f"{api}/proxies/m", json={"enabled": True}, timeout=30).json()["listen"] == new_listen
    )
    assert _round_trip(new_listen, b"up") == b"up"


def test_populate_creates_keeps_and_replaces(api: str, echo: str, server: ServerProcess) -> None:
    listen = f"{server.address}:0"
    body = [
        {"name": "a", "listen": listen, "upstream": echo},
        {"name": "b", "listen": listen, "upstream": echo, "enabled": False},
    ]
    populated = requests.post(f"{api}/populate", json=body, timeout=30)
    assert populated.status_code == 201, populated.text
    proxies = populated.json()["proxies"]
    assert [(p["name"], p["enabled"]) for p in proxies] == [("a", True), ("b", False)]
    a_listen = proxies[0]["listen"]
    assert _round_trip(a_listen, b"a") == b"a"

    requests.post(f"{api}/proxies/a/toxics", json={"type": "slow_close"}, timeout=30)
    same = [{"name": "a", "listen": a_listen, "upstream": echo}]
    kept = requests.post(f"{api}/populate", json=same, timeout=30).json()["proxies"][0]
    assert kept["listen"] == a_listen and [t["type"] for t in kept["toxics"]] == ["slow_close"]  # untouched

    other_upstream = f"{server.address}:1"
    replaced = requests.post(
        f"{api}/populate", json=[{"name": "a", "listen": a_listen, "upstream": other_upstream}], timeout=30
    )
    assert replaced.status_code == 201
    assert (
        replaced.json()["proxies"][0]["upstream"] == other_upstream
        and replaced.json()["proxies"][0]["toxics"] == []
    )

    invalid = requests.post(
        f"{api}/populate", json=[{"name": "c", "upstream": echo}, {"upstream": echo}], timeout=30
    )
    assert invalid.status_code == 400
    assert invalid.json() == {
        "error": "missing required field: name at proxy 2",
        "status": 400,
        "proxies": None,
    }
    assert sorted(requests.get(f"{api}/proxies", timeout=30).json()) == ["a", "b"]  # nothing created
    assert requests.post(f"{api}/populate", data=b"{}", timeout=30).status_code == 400


def test_go_style_flags_config_file_and_sigint(tmp_path: Path) -> None:
    upstream = f"127.0.0.1:{_closed_port()}"
    config = tmp_path / "proxies.json"
    config.write_text(json.dumps([{"name": "from_config", "listen": "127.0.0.1:0", "upstream": upstream}]))
    process = start_server(tmp_path, "-config", str(config), go_style_flags=True)
    try:
        proxies = wait_for(lambda: requests.get(f"{process.url}/proxies", timeout=5).json(), what=process.log)
        assert list(proxies) == ["from_config"] and proxies["from_config"]["upstream"] == upstream
        assert "listening on" in process.log()
    finally:
        assert process.stop(signal.SIGINT) == 0, process.log()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_find_real_toxiproxy_looks_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_real_toxiproxy() is None
    binary = tmp_path / "toxiproxy-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert find_real_toxiproxy() == str(binary)
