"""Unit tests for the `proconsul` command line against a small fake agent.

The fake agent is an aiohttp app on 127.0.0.1:0 running in a background thread; it answers the
endpoints the CLI calls with Consul-shaped JSON and records every request, so tests check both
what the CLI sends (paths, query, token header) and what it prints (stdout, stderr, exit code).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from proconsul.cli import agent as agent_command
from proconsul.cli import main as cli
from proconsul.cli.output import columnize, go_json_indent, go_path_join, tab_align
from proconsul.cli.services import api_key, to_api

CONSUL_ENV = [
    "CONSUL_HTTP_ADDR",
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_TOKEN_FILE",
    "CONSUL_HTTP_SSL",
    "CONSUL_HTTP_AUTH",
    "CONSUL_HTTP_SSL_VERIFY",
    "CONSUL_CACERT",
    "CONSUL_CAPATH",
    "CONSUL_CLIENT_CERT",
    "CONSUL_CLIENT_KEY",
    "CONSUL_TLS_SERVER_NAME",
]


@dataclass
class Seen:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeAgent:
    """Just enough of the agent's HTTP API for the CLI, with canned catalog and member data."""

    addr: str = ""
    requests: list[Seen] = field(default_factory=list)
    kv: dict[str, dict[str, Any]] = field(default_factory=dict)
    index: int = 10
    members: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    services: dict[str, list[str]] = field(default_factory=dict)
    registered: list[dict[str, Any]] = field(default_factory=list)
    deregistered: list[str] = field(default_factory=list)
    fail: dict[str, tuple[int, str]] = field(default_factory=dict)  # path -> (status, body)

    def last(self, path_prefix: str = "") -> Seen:
        return [r for r in self.requests if r.path.startswith(path_prefix)][-1]

    def put_kv(self, key: str, value: bytes, flags: int = 0, session: str = "") -> None:
        self.index += 1
        old = self.kv.get(key)
        self.kv[key] = {
            "Key": key,
            "Value": value,
            "Flags": flags,
            "CreateIndex": old["CreateIndex"] if old else self.index,
            "ModifyIndex": self.index,
            "LockIndex": (old["LockIndex"] if old else 0) + (1 if session else 0),
            "Session": session or (old["Session"] if old else ""),
        }

    def render(self, e: dict[str, Any]) -> dict[str, Any]:
        out = dict(e)
        out["Value"] = base64.b64encode(e["Value"]).decode() if e["Value"] else None
        if not out["Session"]:
            del out["Session"]
        return out

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Seen(request.method, request.path, list(request.query.items()), dict(request.headers), body)
        )
        if request.path in self.fail:
            status, text = self.fail[request.path]
            return web.Response(status=status, text=text)
        path, q = request.path, request.query
        if path.startswith("/v1/kv/"):
            return self.handle_kv(request.method, path[len("/v1/kv/") :], q, body)
        if path == "/v1/agent/members":
            return web.json_response(self.members)
        if path == "/v1/agent/self":
            return web.json_response(
                {
                    "Config": {"Datacenter": "dc1"},
                    "Stats": {
                        "agent": {"checks": "0", "services": "1"},
                        "raft": {"state": "Leader", "applied_index": "42"},
                        "build": {"version": "0.1.0", "prerelease": ""},
                    },
                }
            )
        if path in ("/v1/agent/reload", "/v1/agent/leave"):
            return web.Response(text="")
        if path == "/v1/agent/service/register":
            self.registered.append(json.loads(body))
            return web.Response(text="")
        if path.startswith("/v1/agent/service/deregister/"):
            self.deregistered.append(path.rsplit("/", 1)[1])
            return web.Response(text="")
        if path == "/v1/catalog/datacenters":
            return web.json_response(["dc1", "dc2"])
        if path == "/v1/catalog/nodes":
            return web.json_response(self.nodes)
        if path.startswith("/v1/catalog/service/"):
            name = path.rsplit("/", 1)[1]
            out = []
            for n in self.nodes:
                if name in n.get("_services", []):
                    out.append({**n, "NodeMeta": n.get("Meta"), "ServiceName": name})
            return web.json_response(out)
        if path == "/v1/catalog/services":
            return web.json_response(self.services)
        if path.startswith("/v1/catalog/node/"):
            name = path.rsplit("/", 1)[1]
            if name != "node1":
                return web.json_response(None)
            return web.json_response(
                {
                    "Node": {"Node": "node1"},
                    "Services": {
                        "web1": {"ID": "web1", "Service": "web", "Tags": ["v2", "a"]},
                        "web2": {"ID": "web2", "Service": "web", "Tags": ["b"]},
                        "db": {"ID": "db", "Service": "db", "Tags": []},
                    },
                }
            )
        return web.Response(status=404, text="not found")

    def handle_kv(self, method: str, key: str, q: Any, body: bytes) -> web.Response:
        if method == "GET":
            if "keys" in q:
                sep = q.get("separator", "")
                keys: list[str] = []
                for k in sorted(self.kv):
                    if not k.startswith(key):
                        continue
                    rest = k[len(key) :]
                    if sep and sep in rest:
                        k = key + rest[: rest.index(sep) + len(sep)]
                    if k not in keys:
                        keys.append(k)
                return web.json_response(keys) if keys else web.Response(status=404)
            if "recurse" in q:
                found = [self.render(self.kv[k]) for k in sorted(self.kv) if k.startswith(key)]
                return web.json_response(found) if found else web.Response(status=404)
            if key in self.kv:
                return web.json_response([self.render(self.kv[key])])
            return web.Response(status=404)
        if method == "PUT":
            flags = int(q.get("flags", "0"))
            if "cas" in q:
                cas = int(q["cas"])
                current = self.kv.get(key)
                if (cas == 0 and current) or (cas and (not current or current["ModifyIndex"] != cas)):
                    return web.Response(text="false")
            if "acquire" in q:
                holder = self.kv.get(key, {}).get("Session")
                if holder and holder != q["acquire"]:
                    return web.Response(text="false")
                self.put_kv(key, body, flags, q["acquire"])
                return web.Response(text="true")
            if "release" in q:
                entry = self.kv.get(key)
                if not entry or entry["Session"] != q["release"]:
                    return web.Response(text="false")
                entry["Session"] = ""
                return web.Response(text="true")
            self.put_kv(key, body, flags)
            return web.Response(text="true")
        if method == "DELETE":
            if "recurse" in q:
                for k in [k for k in self.kv if k.startswith(key)]:
                    del self.kv[k]
                return web.Response(text="true")
            if "cas" in q:
                current = self.kv.get(key)
                if not current or current["ModifyIndex"] != int(q["cas"]):
                    return web.Response(text="false")
            self.kv.pop(key, None)
            return web.Response(text="true")
        return web.Response(status=405)


def _serve(agent: FakeAgent, unix_path: str | None = None) -> Iterator[FakeAgent]:
    """Run the fake agent on its own event loop in a thread for the duration of the `with`."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", agent.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site: web.BaseSite
        if unix_path:
            site = web.UnixSite(runner, unix_path)
        else:
            site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        if not unix_path:
            host, port = runner.addresses[0][:2]
            agent.addr = f"{host}:{port}"
        ready.set()
        # One coroutine from start to cleanup, so a stop request can never be lost between phases.
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield agent
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CONSUL_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAgent]:
    fake = FakeAgent()
    for fake_served in _serve(fake):
        monkeypatch.setenv("CONSUL_HTTP_ADDR", fake_served.addr)
        yield fake_served


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- kv


def test_kv_put_then_get(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "kv", "put", "redis/maxconns", "5") == (
        0,
        "Success! Data written to: redis/maxconns\n",
        "",
    )
    assert agent.kv["redis/maxconns"]["Value"] == b"5"
    assert run(capsys, "kv", "get", "redis/maxconns") == (0, "5\n", "")
    # A leading slash is dropped on reads, as Consul does.
    assert run(capsys, "kv", "get", "/redis/maxconns") == (0, "5\n", "")


def test_kv_get_missing_key_exits_1(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "kv", "get", "nope") == (1, "", "Error! No key exists at: nope\n")


def test_kv_get_missing_argument(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "kv", "get") == (1, "", "Error! Missing KEY argument\n")
    assert run(capsys, "kv", "get", "a", "b") == (1, "", "Too many arguments (expected 1, got 2)\n")
    assert agent.requests == []


def test_kv_put_empty_value_and_get_prints_empty_line(
    agent: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "kv", "put", "flag")[0] == 0
    assert agent.kv["flag"]["Value"] == b""
    assert run(capsys, "kv", "get", "flag") == (0, "\n", "")


def test_kv_get_detailed(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    agent.put_kv("foo", b"bar", flags=42)
    code, out, _ = run(capsys, "kv", "get", "-detailed", "foo")
    assert code == 0
    assert out == (
        "CreateIndex      11\n"
        "Flags            42\n"
        "Key              foo\n"
        "LockIndex        0\n"
        "ModifyIndex      11\n"
        "Session          -\n"
        "Value            bar\n"
    )
    code, out, _ = run(capsys, "kv", "get", "-detailed", "-base64", "foo")
    assert out.endswith("Value            YmFy\n")


def test_kv_get_recurse_and_keys(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    agent.put_kv("app/a", b"1")
    agent.put_kv("app/b/c", b"2")
    agent.put_kv("other", b"3")
    assert run(capsys, "kv", "get", "-recurse", "app") == (0, "app/a:1\napp/b/c:2\n", "")
    assert run(capsys, "kv", "get", "-recurse", "-base64", "app/a") == (0, "app/a:MQ==\n", "")
    assert run(capsys, "kv", "get", "-keys", "app/") == (0, "app/a\napp/b/\n", "")
    assert agent.last("/v1/kv/").query == [("keys", ""), ("separator", "/")]
    assert run(capsys, "kv", "get", "-keys", "-separator=", "app/") == (0, "app/a\napp/b/c\n", "")
    assert agent.last("/v1/kv/").query == [("keys", "")]
    code, out, _ = run(capsys, "kv", "get", "-recurse", "-detailed", "app")
    blocks = out.split("\n\n")
    assert code == 0 and len(blocks) == 2 and blocks[1].startswith("CreateIndex")
    # Nothing under the prefix: no output, success.
    assert run(capsys, "kv", "get", "-recurse", "zzz") == (0, "", "")
    assert run(capsys, "kv", "get", "-keys", "zzz") == (0, "", "")


def test_kv_put_sources_and_flags(
    agent: FakeAgent, capsys: pytest.CaptureFixture[str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "lic"
    f.write_bytes(b"from-file\n")
    assert run(capsys, "kv", "put", "a", f"@{f}")[0] == 0
    assert agent.kv["a"]["Value"] == b"from-file\n"
    monkeypatch.setattr(
        sys, "stdin", types.SimpleNamespace(buffer=types.SimpleNamespace(read=lambda: b"piped"))
    )
    assert run(capsys, "kv", "put", "b", "-")[0] == 0
    assert agent.kv["b"]["Value"] == b"piped"
    assert run(capsys, "kv", "put", "-base64", "-flags=7", "c", "aGVsbG8=")[0] == 0
    assert agent.kv["c"]["Value"] == b"hello" and agent.kv["c"]["Flags"] == 7
    assert ("flags", "7") in agent.last("/v1/kv/c").query
    code, _out, err = run(capsys, "kv", "put", "d", "@/nonexistent/file")
    assert (
        code == 1 and err == "Error! Failed to read file: open /nonexistent/file: no such file or directory\n"
    )
    code, _, err = run(capsys, "kv", "put", "-base64", "e", "!!!")
    assert code == 1 and err.startswith("Error! Cannot base 64 decode data:")
    assert run(capsys, "kv", "put") == (1, "", "Error! Missing KEY argument\n")
    assert run(capsys, "kv", "put", "a", "b", "c") == (
        1,
        "",
        "Error! Too many arguments (expected 1 or 2, got 3)\n",
    )
    # A value that starts with "-" but is not exactly "-" is literal data.
    assert run(capsys, "kv", "put", "f", "-x")[0] == 0 and agent.kv["f"]["Value"] == b"-x"


def test_kv_put_bad_uint_flag(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "kv", "put", "-flags=-1", "k", "v")
    assert code == 1
    assert err.startswith('invalid value "-1" for flag -flags: parse error\n')


def test_kv_put_cas(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    agent.put_kv("k", b"v1")
    index = agent.kv["k"]["ModifyIndex"]
    assert run(capsys, "kv", "put", "-cas", "k", "v2") == (1, "", "Must specify -modify-index with -cas!\n")
    assert run(capsys, "kv", "put", "-cas", "-modify-index=999", "k", "v2") == (
        1,
        "",
        "Error! Did not write to k: CAS failed\n",
    )
    assert run(capsys, "kv", "put", "-cas", f"-modify-index={index}", "k", "v2") == (
        0,
        "Success! Data written to: k\n",
        "",
    )
    assert agent.kv["k"]["Value"] == b"v2"


def test_kv_put_acquire_release(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "kv", "put", "-acquire", "lock", "x") == (
        1,
        "",
        "Error! Missing -session (required with -acquire and -release)\n",
    )
    assert run(capsys, "kv", "put", "-acquire", "-session=s1", "lock", "x") == (
        0,
        "Success! Lock acquired on: lock\n",
        "",
    )
    assert ("acquire", "s1") in agent.last("/v1/kv/lock").query
    assert run(capsys, "kv", "put", "-acquire", "-session=s2", "lock", "x") == (
        1,
        "",
        "Error! Did not acquire lock\n",
    )
    assert run(capsys, "kv", "put", "-release", "-session=s2", "lock") == (
        1,
        "",
        "Error! Did not release lock\n",
    )
    assert run(capsys, "kv", "put", "-release", "-session=s1", "lock") == (
        0,
        "Success! Lock released on: lock\n",
        "",
    )


def test_kv_delete(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    agent.put_kv("a/1", b"")
    agent.put_kv("a/2", b"")
    agent.put_kv("b", b"")
    assert run(capsys, "kv", "delete", "b") == (0, "Success! Deleted key: b\n", "")
    assert "b" not in agent.kv
    # Deleting a missing key succeeds, as in Consul.
    assert run(capsys, "kv", "delete", "b") == (0, "Success! Deleted key: b\n", "")
    assert run(capsys, "kv", "delete", "-recurse", "a/") == (0, "Success! Deleted keys with prefix: a/\n", "")
    assert agent.kv == {}
    assert agent.last().method == "DELETE" and ("recurse", "") in agent.last().query


def test_kv_delete_cas_and_usage_errors(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    agent.put_kv("k", b"v")
    idx = agent.kv["k"]["ModifyIndex"]
    assert run(capsys, "kv", "delete") == (1, "", "Error! Missing KEY argument\n")
    assert run(capsys, "kv", "delete", "-cas", "k")[2] == (
        "Cannot delete a key that does not exist. Provide a -modify-index greater than than 0.\n"
    )
    assert run(capsys, "kv", "delete", "-modify-index=3", "k") == (
        1,
        "",
        "Cannot specify -modify-index without -cas!\n",
    )
    assert run(capsys, "kv", "delete", "-recurse", "-cas", "-modify-index=3", "k") == (
        1,
        "",
        "Cannot specify both -cas and -recurse!\n",
    )
    assert run(capsys, "kv", "delete", "-cas", "-modify-index=999", "k") == (
        1,
        "",
        "Error! Did not delete key k: CAS failed\n",
    )
    assert run(capsys, "kv", "delete", "-cas", f"-modify-index={idx}", "k") == (
        0,
        "Success! Deleted key: k\n",
        "",
    )


def test_kv_export_format(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    agent.put_kv("app/a", b"1", flags=3)
    agent.put_kv("app/<b>", b"")
    code, out, _ = run(capsys, "kv", "export", "app")
    assert code == 0
    assert out == (
        "[\n"
        "\t{\n"
        '\t\t"key": "app/\\u003cb\\u003e",\n'
        '\t\t"flags": 0,\n'
        '\t\t"value": ""\n'
        "\t},\n"
        "\t{\n"
        '\t\t"key": "app/a",\n'
        '\t\t"flags": 3,\n'
        '\t\t"value": "MQ=="\n'
        "\t}\n"
        "]\n"
    )
    assert run(capsys, "kv", "export", "nothing") == (0, "[]\n", "")


def test_kv_import_with_prefix_and_roundtrip(
    agent: FakeAgent, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    data = json.dumps(
        [
            {"key": "x/a", "flags": 5, "value": base64.b64encode(b"A").decode()},
            {"key": "x/dir/", "flags": 0, "value": ""},
        ]
    )
    assert run(capsys, "kv", "import", data) == (0, "Imported: x/a\nImported: x/dir/\n", "")
    assert agent.kv["x/a"]["Value"] == b"A" and agent.kv["x/a"]["Flags"] == 5
    path = tmp_path / "dump.json"
    code, out, _ = run(capsys, "kv", "export", "x")
    path.write_text(out)
    assert run(capsys, "kv", "import", "-prefix=copy", f"@{path}") == (
        0,
        "Imported: copy/x/a\nImported: copy/x/dir/\n",
        "",
    )
    assert agent.kv["copy/x/a"]["Value"] == b"A"
    assert run(capsys, "kv", "import") == (1, "", "Error! Missing DATA argument\n")
    code, _, err = run(capsys, "kv", "import", "{not json")
    assert code == 1 and err.startswith("Cannot unmarshal data: ")
    code, _, err = run(capsys, "kv", "import", '[{"key": "k", "value": "%%%"}]')
    assert code == 1 and err.startswith("Error base 64 decoding value for key k: ")


# ---------------------------------------------------------------- transport, address, token


def test_connection_refused(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = run(capsys, "kv", "get", f"-http-addr=127.0.0.1:{port}", "foo")
    assert code == 1 and out == ""
    assert err == (
        f'Error querying Consul agent: Get "http://127.0.0.1:{port}/v1/kv/foo": '
        f"dial tcp 127.0.0.1:{port}: connect: connection refused\n"
    )
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"127.0.0.1:{port}")
    code, _, err = run(capsys, "members")
    assert code == 1 and err.startswith("Error retrieving members: Get ") and "connection refused" in err


def test_http_addr_flag_overrides_env_and_accepts_scheme(
    agent: FakeAgent, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent.put_kv("k", b"v")
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1")
    assert run(capsys, "kv", "get", f"-http-addr=http://{agent.addr}", "k") == (0, "v\n", "")
    assert run(capsys, "kv", "get", "-http-addr", agent.addr, "k") == (0, "v\n", "")
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"http://{agent.addr}")
    assert run(capsys, "kv", "get", "k") == (0, "v\n", "")
    code, _, err = run(capsys, "kv", "get", "-http-addr=ftp://x:1", "k")
    assert (code, err) == (1, "Error connecting to Consul agent: Unknown protocol scheme: ftp\n")


def test_unix_socket_address(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    sock = str(tmp_path / "agent.sock")
    fake = FakeAgent()
    fake.put_kv("k", b"over-unix")
    for _ in _serve(fake, unix_path=sock):
        assert run(capsys, "kv", "get", f"-http-addr=unix://{sock}", "k") == (0, "over-unix\n", "")


def test_token_sources(
    agent: FakeAgent, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    run(capsys, "catalog", "datacenters")
    assert "X-Consul-Token" not in agent.last().headers
    run(capsys, "catalog", "datacenters", "-token=flag-token")
    assert agent.last().headers["X-Consul-Token"] == "flag-token"
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "env-token")
    run(capsys, "catalog", "datacenters")
    assert agent.last().headers["X-Consul-Token"] == "env-token"
    run(capsys, "catalog", "datacenters", "-token=flag-token")
    assert agent.last().headers["X-Consul-Token"] == "flag-token"
    tf = tmp_path / "token"
    tf.write_text("file-token\n")
    run(capsys, "catalog", "datacenters", f"-token-file={tf}")
    assert agent.last().headers["X-Consul-Token"] == "file-token"
    monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", str(tf))
    run(capsys, "reload")
    assert agent.last().headers["X-Consul-Token"] == "file-token"
    code, _, err = run(capsys, "reload", "-token-file=/nonexistent/tok")
    assert code == 1
    assert err == (
        "Error connecting to Consul agent: Error loading token file: "
        "open /nonexistent/tok: no such file or directory\n"
    )


def test_datacenter_and_stale_params(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    agent.put_kv("k", b"v")
    run(capsys, "kv", "get", "-datacenter=dc2", "-stale", "k")
    assert agent.last().query == [("dc", "dc2"), ("stale", "")]
    # -stale only affects reads.
    run(capsys, "kv", "put", "-datacenter=dc2", "-stale", "k", "v")
    assert agent.last().query == [("dc", "dc2")]


def test_http_error_status_is_reported(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    agent.fail["/v1/agent/reload"] = (500, "boom\n")
    assert run(capsys, "reload") == (1, "", "Error reloading: Unexpected response code: 500 (boom)\n")
    agent.fail["/v1/kv/secret"] = (403, "Permission denied")
    assert run(capsys, "kv", "get", "secret") == (
        1,
        "",
        "Error querying Consul agent: Unexpected response code: 403 (Permission denied)\n",
    )
    agent.fail["/v1/kv/w"] = (500, "no leader")
    assert run(capsys, "kv", "put", "w", "v") == (
        1,
        "",
        "Error! Failed writing data: Unexpected response code: 500 (no leader)\n",
    )


# ---------------------------------------------------------------- members, info, reload, leave


def _member(name: str, addr: str, role: str, status: int = 1, **tags: str) -> dict[str, Any]:
    return {
        "Name": name,
        "Addr": addr,
        "Port": 8301,
        "Status": status,
        "Tags": {"role": role, "dc": "dc1", "build": "0.1.0:abcdef", "vsn": "2", **tags},
    }


def test_members_table(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    agent.members = [
        _member("zeta-client", "10.0.0.3", "node"),
        _member("beta-server", "10.0.0.2", "consul"),
        _member("alpha-server-long-name", "10.0.0.1", "consul", status=4),
        _member("v6", "::1", "node", status=3),
    ]
    code, out, err = run(capsys, "members")
    assert (code, err) == (0, "")
    assert out == (
        "Node                    Address        Status  Type    Build  Protocol  DC   Partition  Segment\n"
        "alpha-server-long-name  10.0.0.1:8301  failed  server  0.1.0  2         dc1  default    <all>\n"
        "beta-server             10.0.0.2:8301  alive   server  0.1.0  2         dc1  default    <all>\n"
        "v6                      [::1]:8301     left    client  0.1.0  2         dc1  default    <default>\n"
        "zeta-client             10.0.0.3:8301  alive   client  0.1.0  2         dc1  default    <default>\n"
    )
    assert agent.last().query == [("segment", "_all")]


def test_members_status_filter_detailed_and_wan(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    agent.members = [_member("a", "10.0.0.1", "consul"), _member("b", "10.0.0.2", "node", status=4)]
    code, out, _ = run(capsys, "members", "-status=fail")
    assert code == 0 and out.splitlines()[1].startswith("b ")
    assert run(capsys, "members", "-status=left") == (2, "", "")
    code, out, _ = run(capsys, "members", "-detailed")
    assert out.splitlines() == [
        "Node  Address        Status  Tags",
        "a     10.0.0.1:8301  alive   ap=default,build=0.1.0:abcdef,dc=dc1,role=consul,segment=<all>,vsn=2",
        "b     10.0.0.2:8301  failed  ap=default,build=0.1.0:abcdef,dc=dc1,role=node,segment=<default>,vsn=2",
    ]
    run(capsys, "members", "-wan")
    assert ("wan", "1") in agent.last().query
    code, _, err = run(capsys, "members", "-status=(")
    assert code == 1 and err.startswith("Failed to compile status regexp: ")


def test_info(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "info") == (
        0,
        (
            "agent:\n\tchecks = 0\n\tservices = 1\nbuild:\n\tprerelease = \n\tversion = 0.1.0\n"
            "raft:\n\tapplied_index = 42\n\tstate = Leader\n"
        ),
        "",
    )


def test_reload_and_leave(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "reload") == (0, "Configuration reload triggered\n", "")
    assert agent.last().method == "PUT" and agent.last().path == "/v1/agent/reload"
    assert run(capsys, "leave") == (0, "Graceful leave complete\n", "")
    assert agent.last().method == "PUT" and agent.last().path == "/v1/agent/leave"
    code, out, err = run(capsys, "leave", "extra")
    assert (
        code == 1
        and err == "Error found unexpected args: [extra]\n"
        and out.startswith("Usage: proconsul leave")
    )


# ---------------------------------------------------------------- catalog


def _nodes() -> list[dict[str, Any]]:
    return [
        {
            "ID": "3a5e2c36-aaaa-bbbb-cccc-1234567890ab",
            "Node": "node1",
            "Address": "10.0.0.1",
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": "10.0.0.1", "wan": "1.2.3.4"},
            "Meta": {"rack": "r1", "env": "prod"},
            "_services": ["web"],
        },
        {
            "ID": "",
            "Node": "a-much-longer-node-name",
            "Address": "10.0.0.22",
            "Datacenter": "dc1",
            "TaggedAddresses": None,
            "Meta": None,
        },
    ]


def test_catalog_nodes(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    agent.nodes = _nodes()
    assert run(capsys, "catalog", "nodes") == (
        0,
        (
            "Node                     ID        Address    DC\n"
            "node1                    3a5e2c36  10.0.0.1   dc1\n"
            "a-much-longer-node-name            10.0.0.22  dc1\n"
        ),
        "",
    )
    code, out, _ = run(capsys, "catalog", "nodes", "-detailed")
    assert out.splitlines()[0].split() == ["Node", "ID", "Address", "DC", "TaggedAddresses", "Meta"]
    assert "lan=10.0.0.1, wan=1.2.3.4" in out and "env=prod, rack=r1" in out
    assert "3a5e2c36-aaaa-bbbb-cccc-1234567890ab" in out
    run(capsys, "catalog", "nodes", "-node-meta=rack=r1", "-near=_agent", "-filter=Node == node1")
    assert agent.last().query == [("node-meta", "rack:r1"), ("near", "_agent"), ("filter", "Node == node1")]
    code, out, _ = run(capsys, "catalog", "nodes", "-service=web")
    assert code == 0 and out.splitlines()[1].startswith("node1 ")
    assert agent.last().path == "/v1/catalog/service/web"
    code, _, err = run(capsys, "catalog", "nodes", "-node-meta=bad")
    assert (
        code == 1 and err == 'invalid value "bad" for flag -node-meta: Missing "=" value in argument: bad\n'
    )


def test_catalog_nodes_empty(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "catalog", "nodes") == (
        0,
        "",
        "No nodes match the given query - try expanding your search.\n",
    )
    assert run(capsys, "catalog", "nodes", "extra") == (1, "", "Too many arguments (expected 0, got 1)\n")


def test_catalog_services_and_datacenters(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    agent.services = {"web": ["v2", "v1"], "consul": [], "db": ["primary"]}
    assert run(capsys, "catalog", "services") == (0, "consul\ndb\nweb\n", "")
    # text/tabwriter layout; the whole block is trimmed, so only the last line loses its padding.
    assert run(capsys, "catalog", "services", "-tags") == (
        0,
        "consul      \ndb          primary\nweb         v1,v2\n",
        "",
    )
    assert run(capsys, "catalog", "services", "-node=node1", "-tags") == (
        0,
        "db       \nweb      a,b,v2\n",
        "",
    )
    assert run(capsys, "catalog", "services", "-node=ghost") == (
        0,
        "",
        "No services match the given query - try expanding your search.\n",
    )
    assert run(capsys, "catalog", "datacenters") == (0, "dc1\ndc2\n", "")


# ---------------------------------------------------------------- services


def test_services_register_from_flags(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(
        capsys,
        "services",
        "register",
        "-name=web",
        "-port=8080",
        "-tag=a",
        "-tag=b",
        "-meta=env=prod",
        "-address=10.0.0.5",
    ) == (0, "Registered service: web\n", "")
    assert agent.registered == [
        {"Name": "web", "Address": "10.0.0.5", "Port": 8080, "Tags": ["a", "b"], "Meta": {"env": "prod"}}
    ]
    assert run(capsys, "services", "register") == (
        1,
        "",
        "Service registration requires at least one argument or flags.\n",
    )


def test_services_register_from_json_and_hcl(
    agent: FakeAgent, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    js = tmp_path / "web.json"
    js.write_text(
        json.dumps(
            {
                "service": {
                    "name": "web",
                    "id": "web-1",
                    "port": 80,
                    "enable_tag_override": True,
                    "meta": {"some_key": "v"},
                    "check": {"http": "http://localhost/health", "interval": "10s", "tls_skip_verify": True},
                }
            }
        )
    )
    hc = tmp_path / "db.hcl"
    hc.write_text(
        'service {\n  name = "db"\n  port = 5432\n  checks = [{ args = ["/bin/true"], interval = "5s" }]\n}\n'
        'service {\n  name = "cache"\n}\n'
    )
    code, out, err = run(capsys, "services", "register", str(js), str(hc))
    assert (code, err) == (0, "")
    assert out == "Registered service: web\nRegistered service: db\nRegistered service: cache\n"
    assert agent.registered[0] == {
        "Name": "web",
        "ID": "web-1",
        "Port": 80,
        "EnableTagOverride": True,
        "Meta": {"some_key": "v"},
        "Check": {"HTTP": "http://localhost/health", "Interval": "10s", "TLSSkipVerify": True},
    }
    assert agent.registered[1]["Checks"] == [{"Args": ["/bin/true"], "Interval": "5s"}]
    code, out, err = run(capsys, "services", "register", "-name=x", str(js))
    assert (code, err) == (1, "Service registration requires arguments or -id, not both.\n")
    bad = tmp_path / "bad.hcl"
    bad.write_text("service {")
    code, _, err = run(capsys, "services", "register", str(bad))
    assert code == 1 and err.startswith(f"Error: failed to parse {bad}:")


def test_services_deregister(agent: FakeAgent, capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    assert run(capsys, "services", "deregister", "-id=web-1") == (0, "Deregistered service: web-1\n", "")
    js = tmp_path / "svc.json"
    js.write_text(json.dumps({"services": [{"name": "a"}, {"name": "b", "id": "b-1"}]}))
    assert run(capsys, "services", "deregister", str(js)) == (
        0,
        "Deregistered service: a\nDeregistered service: b-1\n",
        "",
    )
    assert agent.deregistered == ["web-1", "a", "b-1"]
    assert run(capsys, "services", "deregister") == (
        1,
        "",
        "Service deregistration requires at least one argument or -id.\n",
    )


def test_config_key_translation() -> None:
    assert api_key("deregister_critical_service_after") == "DeregisterCriticalServiceAfter"
    assert api_key("grpc_use_tls") == "GRPCUseTLS"
    assert api_key("docker_container_id") == "DockerContainerID"
    assert api_key("h2ping_use_tls") == "H2PingUseTLS"
    assert api_key("Name") == "Name" and api_key("ID") == "ID"
    converted = to_api({"tagged_addresses": {"lan_ipv4": {"address": "1.2.3.4", "port": 80}}})
    assert converted == {"TaggedAddresses": {"lan_ipv4": {"Address": "1.2.3.4", "Port": 80}}}


# ---------------------------------------------------------------- validate, version, keygen, agent


def _fake_config(
    monkeypatch: pytest.MonkeyPatch, errors: list[str], warnings: list[str] | None = None
) -> list[Any]:
    calls: list[Any] = []
    mod = types.ModuleType("proconsul.config")

    def validate_paths_with_warnings(paths: list[str], fmt: str | None) -> tuple[list[str], list[str]]:
        calls.append((paths, fmt))
        return errors, warnings or []

    mod.validate_paths_with_warnings = validate_paths_with_warnings  # type: ignore[attr-defined]
    monkeypatch.setattr(agent_command, "config", mod)  # the config module `proconsul validate` calls
    return calls


def test_validate(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    calls = _fake_config(monkeypatch, [])
    assert run(capsys, "validate", "/etc/proconsul.d") == (0, "Configuration is valid!\n", "")
    assert calls == [(["/etc/proconsul.d"], None)]
    assert run(capsys, "validate", "-quiet", "-config-format=hcl", "a", "b") == (0, "", "")
    assert calls[-1] == (["a", "b"], "hcl")
    assert run(capsys, "validate") == (1, "", "Must specify at least one config file or directory\n")


def test_validate_failures(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_config(monkeypatch, ["a.json: bind_addr: not an IP"])
    assert run(capsys, "validate", "a.json") == (
        1,
        "",
        "Config validation failed: a.json: bind_addr: not an IP\n",
    )
    _fake_config(monkeypatch, ["a.json: x: bad", "b.hcl: y: bad"])
    assert run(capsys, "validate", "a.json", "b.hcl") == (
        1,
        "",
        "Config validation failed: 2 errors occurred:\n\t* a.json: x: bad\n\t* b.hcl: y: bad\n\n",
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import proconsul

    code, out, _ = run(capsys, "version")
    lines = out.split("\n")
    assert code == 0
    assert lines[0] == f"Proconsul v{proconsul.__version__}"
    assert lines[1] == f"Compatible with Consul v{proconsul.CONSUL_COMPAT_VERSION}"
    assert lines[2].startswith("Build Date ")
    assert lines[3] == (
        "Protocol 2 spoken by default, understands 2 to 3 "
        "(agent will automatically use protocol >2 when speaking to compatible agents)"
    )
    assert out.endswith("\n\n")
    code, out, _ = run(capsys, "version", "-format=json")
    info = json.loads(out)
    assert info["Version"] == proconsul.__version__ and info["RPC"] == {"Default": 2, "Min": 2, "Max": 3}
    assert set(info) >= {"Version", "Revision", "Prerelease", "FullVersion", "BuildDate"}
    assert run(capsys, "version", "-format=xml") == (1, "", "Unknown format: xml\n")
    assert run(capsys, "--version")[1].startswith("Proconsul v")
    assert run(capsys, "-v")[0] == 0


def test_keygen(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keygen")
    assert code == 0 and len(base64.b64decode(out.strip())) == 32
    assert run(capsys, "keygen")[1] != out


def test_agent_delegates(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[list[str]] = []
    mod = types.ModuleType("proconsul.agent.agent")

    def run_agent(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    mod.run_agent = run_agent  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "proconsul.agent.agent", mod)
    import proconsul

    monkeypatch.setattr(proconsul, "agent", mod, raising=False)
    assert cli.main(["agent", "-dev", "-h", "-node=x"]) == 3
    assert seen == [["-dev", "-h", "-node=x"]]


# ---------------------------------------------------------------- dispatch and help


def test_top_level_help_and_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "-h")
    assert code == 0 and err == ""
    assert out.startswith(
        "Usage: proconsul [--version] [--help] <command> [<args>]\n\nAvailable commands are:\n"
    )
    assert "    kv             Interact with the key-value store\n" in out
    assert "kv get" not in out
    assert run(capsys, "help")[0] == 0
    assert run(capsys, "--help")[0] == 0
    code, out2, _ = run(capsys)
    assert code == 127 and out2 == out
    code, out3, _ = run(capsys, "bogus", "x")
    assert code == 127 and out3 == out


def test_group_and_command_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "kv")
    assert code == 1
    assert out.startswith("Usage: proconsul kv <subcommand>")
    assert "\n\nSubcommands:\n    delete    Removes data from the KV store\n" in out
    assert run(capsys, "kv", "-h")[0] == 0
    code, out, _ = run(capsys, "kv", "get", "-h")
    assert code == 0 and out.startswith("Usage: proconsul kv get") and "HTTP API Options" in out
    assert "Command Options\n\n  -base64\n" in out
    # Help flags count anywhere before "--", as with consul.
    assert run(capsys, "kv", "put", "key", "-h")[1].startswith("Usage: proconsul kv put")
    code, out, err = run(capsys, "catalog", "nodes", "-bogus")
    assert code == 1 and err.startswith(
        "flag provided but not defined: -bogus\nUsage: proconsul catalog nodes"
    )
    code, out, _ = run(capsys, "-token=x", "members")
    assert code == 1 and out.startswith("Invalid flags before the subcommand.")


# ---------------------------------------------------------------- formatting helpers


def test_format_helpers() -> None:
    assert columnize(["a|bb|c", "ddd|e|ffff"]) == "a    bb  c\nddd  e   ffff"
    assert columnize(["x| y |z"]) == "x  y  z"
    assert tab_align([("Key", "v"), ("LongerKey", "w")]) == "Key            v\nLongerKey      w"
    assert go_json_indent({"a": "<&>"}, "\t") == '{\n\t"a": "\\u003c\\u0026\\u003e"\n}'
    assert go_path_join("", "a/b") == "a/b"
    assert go_path_join("sub/dir/", "x") == "sub/dir/x"
    assert go_path_join("p", "a/../b/") == "p/b"
    assert go_path_join("", "") == ""
