"""Events (`/v1/event/*`, `proconsul event`) and watches (`proconsul watch`, agent `watches`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import consul
from helpers import AgentProcess, proconsul_command, wait_for


def _cli(agent: AgentProcess, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CONSUL_HTTP_ADDR=agent.addr)
    return subprocess.run([proconsul_command(), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_event_fire_list_filters_and_limit(dev_agent: AgentProcess) -> None:
    c = consul.Consul(host="127.0.0.1", port=dev_agent.http_port)
    assert c.event.fire("deploy", "v1")
    status, _, body = dev_agent.http("PUT", "/v1/event/fire/deploy?node=^test-", b"v2")
    fired = json.loads(body)
    assert status == 200 and fired["Name"] == "deploy" and fired["NodeFilter"] == "^test-"
    assert fired["Version"] == 1 and fired["LTime"] == 0 and fired["Payload"] == "djI="
    # Filters that do not select this agent: accepted, not delivered here.
    assert dev_agent.http("PUT", "/v1/event/fire/deploy?node=^other$", b"")[0] == 200
    assert dev_agent.http("PUT", "/v1/event/fire/deploy?service=nosuch", b"")[0] == 200
    status, _, body = dev_agent.http("PUT", "/v1/event/fire/big", b"x" * 600)
    assert status == 500 and b"exceeds configured limit of 512 bytes" in body
    status, _, body = dev_agent.http("PUT", "/v1/event/fire/t?tag=x", b"")
    assert status == 500 and b"Cannot provide tag filter without service filter" in body
    index, events = c.event.list(name="deploy")
    payloads = [e["Payload"] for e in events]
    assert payloads[-2:] == [b"v1", b"v2"] and len([e for e in events if e["Name"] == "deploy"]) >= 2
    assert events[-1]["LTime"] > events[-2]["LTime"] > 0
    # The index is derived from the last event's ID.
    last = events[-1]["ID"].replace("-", "")
    assert int(index) == int(last[0:16], 16) ^ int(last[16:32], 16)


def test_event_list_blocks_until_next_event(dev_agent: AgentProcess) -> None:
    c = consul.Consul(host="127.0.0.1", port=dev_agent.http_port)
    index, _ = c.event.list()
    result: dict[str, object] = {}

    def block() -> None:
        started = time.monotonic()
        result["answer"] = c.event.list(index=index, wait="20s")
        result["took"] = time.monotonic() - started

    t = threading.Thread(target=block)
    t.start()
    time.sleep(0.5)
    c.event.fire("wake", "now")
    t.join(30)
    new_index, events = result["answer"]  # type: ignore[misc]
    assert new_index != index and events[-1]["Name"] == "wake"
    assert 0.3 < result["took"] < 15  # type: ignore[operator]
    # An unchanged index with a short wait times out with the same index.
    again, _ = c.event.list(index=new_index, wait="1s")
    assert again == new_index


def test_event_cli(dev_agent: AgentProcess) -> None:
    r = _cli(dev_agent, "event", "-name=cli-evt", "hello")
    assert r.returncode == 0 and r.stdout.startswith("Event ID: "), r
    r = _cli(dev_agent, "event", "-tag=x", "-name=n")
    assert r.returncode == 1 and "Cannot provide tag filter without service filter." in r.stderr
    r = _cli(dev_agent, "event")
    assert r.returncode == 1 and "Event name must be specified" in r.stderr
    r = _cli(dev_agent, "watch", "-type=event", "-name=cli-evt")
    assert r.returncode == 0
    shown = json.loads(r.stdout)
    assert shown[-1]["Name"] == "cli-evt" and shown[-1]["Payload"] == "aGVsbG8="


def test_watch_prints_consul_shapes(dev_agent: AgentProcess) -> None:
    c = consul.Consul(host="127.0.0.1", port=dev_agent.http_port)
    c.kv.put("watched/a", "1")
    r = _cli(dev_agent, "watch", "-type=key", "-key=watched/a")
    pair = json.loads(r.stdout)
    assert r.returncode == 0 and pair["Key"] == "watched/a" and pair["Value"] == "MQ==" and pair["Session"] == ""
    assert r.stdout.startswith('{\n    "Key"')
    r = _cli(dev_agent, "watch", "-type=keyprefix", "-prefix=watched/")
    assert [p["Key"] for p in json.loads(r.stdout)] == ["watched/a"]
    assert json.loads(_cli(dev_agent, "watch", "-type=key", "-key=watched/none").stdout) is None
    assert "consul" in json.loads(_cli(dev_agent, "watch", "-type=services").stdout)
    assert json.loads(_cli(dev_agent, "watch", "-type=nodes").stdout)[0]["Node"] == "test-node"
    entries = json.loads(_cli(dev_agent, "watch", "-type=service", "-service=consul").stdout)
    assert entries[0]["Service"]["Service"] == "consul"
    checks = json.loads(_cli(dev_agent, "watch", "-type=checks", "-state=passing").stdout)
    assert any(ch["CheckID"] == "serfHealth" for ch in checks)
    r = _cli(dev_agent, "watch", "-type=key")
    assert r.returncode == 1 and "Must specify a single key to watch" in r.stderr
    r = _cli(dev_agent, "watch")
    assert r.returncode == 1 and "Watch type must be specified" in r.stderr


def test_watch_handler_called_once_per_change(dev_agent: AgentProcess, tmp_path: Path) -> None:
    c = consul.Consul(host="127.0.0.1", port=dev_agent.http_port)
    c.kv.put("handled/k", "v0")
    out = tmp_path / "calls"
    handler = f"{sys.executable} -c 'import os,sys; open(\"{out}\", \"a\").write(os.environ[\"CONSUL_INDEX\"] + \" \" + sys.stdin.read())'"
    env = dict(os.environ, CONSUL_HTTP_ADDR=dev_agent.addr)
    proc = subprocess.Popen([proconsul_command(), "watch", "-type=key", "-key=handled/k", handler], env=env)
    try:

        def calls() -> list[dict[str, object]]:
            if not out.exists():
                return []
            return [json.loads(line.split(" ", 1)[1]) for line in out.read_text().splitlines() if line]

        wait_for(lambda: len(calls()) == 1, timeout=30, what="first handler call")
        c.kv.put("handled/k", "v1")
        wait_for(lambda: len(calls()) == 2, timeout=30, what="second handler call")
        c.kv.put("other/key", "unrelated")  # bumps the KV index but not this key
        c.kv.put("handled/k", "v2")
        wait_for(lambda: len(calls()) == 3, timeout=30, what="third handler call")
        time.sleep(1.0)
        seen = calls()
        assert [p["Value"] for p in seen] == ["djA=", "djE=", "djI="], seen
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def test_agent_watches_script_and_http_handlers_reload(tmp_path: Path) -> None:
    out = tmp_path / "script.out"
    script = tmp_path / "handler.sh"
    script.write_text(f"#!/bin/sh\necho \"$CONSUL_INDEX $(cat)\" >> {out}\n")
    script.chmod(0o755)
    received: list[tuple[str, bytes]] = []

    import http.server

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["X-Consul-Index"], body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    hook = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    config = tmp_path / "watches.json"
    config.write_text(json.dumps({"watches": [
        {"type": "key", "key": "cfg/a", "args": [str(script)]},
        {"type": "event", "name": "ping", "handler_type": "http",
         "http_handler_config": {"path": f"http://127.0.0.1:{hook.server_port}/hook", "timeout": "5s"}},
    ]}))
    agent = AgentProcess(f"-config-file={config}").start()
    try:
        c = consul.Consul(host="127.0.0.1", port=agent.http_port)
        wait_for(lambda: out.exists() and "null" in out.read_text(), timeout=30, what="script watch fired on start")
        c.kv.put("cfg/a", "hello")
        wait_for(lambda: "aGVsbG8=" in out.read_text(), timeout=30, what="script watch on change")
        c.event.fire("ping", "p1")
        wait_for(lambda: any(b"cDE=" in body for _, body in received), timeout=30, what="http handler")
        assert all(idx for idx, _ in received)
        # Reload with the script watch gone: further changes reach no script.
        config.write_text(json.dumps({"watches": [{"type": "key", "key": "cfg/b", "args": [str(script)]}]}))
        agent.signal(signal.SIGHUP)
        wait_for(lambda: out.read_text().count("null") >= 2, timeout=30, what="new watch after reload")
        before = out.read_text()
        c.kv.put("cfg/a", "ignored")
        c.kv.put("cfg/b", "seen")
        wait_for(lambda: "c2Vlbg==" in out.read_text(), timeout=30, what="reloaded watch")
        assert "aWdub3JlZA==" not in out.read_text()
        assert out.read_text().startswith(before)
        # A bad watch on reload is refused and the running ones stay.
        config.write_text(json.dumps({"watches": [{"type": "nodes"}]}))
        agent.signal(signal.SIGHUP)
        wait_for(lambda: "Must define a watch handler" in agent.log(), timeout=30, what="reload refused")
        c.kv.put("cfg/b", "still")
        wait_for(lambda: "c3RpbGw=" in out.read_text(), timeout=30, what="old watch still running")
    finally:
        agent.stop()
        hook.shutdown()
