"""The `proconsul` command line against a real dev agent, as an operator types it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import AgentProcess, proconsul_command


def run(agent: AgentProcess | None, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    if agent is not None:
        full_env["CONSUL_HTTP_ADDR"] = agent.addr
    full_env.update(env or {})
    return subprocess.run([proconsul_command(), *args], input=stdin, capture_output=True, text=True,
                          env=full_env, timeout=60)


def test_kv_put_get_delete(dev_agent: AgentProcess) -> None:
    r = run(dev_agent, "kv", "put", "cli/greeting", "hello")
    assert r.returncode == 0 and r.stdout.strip() == "Success! Data written to: cli/greeting"
    r = run(dev_agent, "kv", "get", "cli/greeting")
    assert (r.returncode, r.stdout) == (0, "hello\n")
    r = run(dev_agent, "kv", "get", "-detailed", "cli/greeting")
    assert "ModifyIndex" in r.stdout and "hello" in r.stdout
    r = run(dev_agent, "kv", "delete", "cli/greeting")
    assert r.returncode == 0 and "Deleted key: cli/greeting" in r.stdout
    r = run(dev_agent, "kv", "get", "cli/greeting")
    assert r.returncode == 1 and "No key exists at: cli/greeting" in r.stderr


def test_kv_cas_failure_exits_1(dev_agent: AgentProcess) -> None:
    run(dev_agent, "kv", "put", "cli/cas", "a")
    r = run(dev_agent, "kv", "put", "-cas", "-modify-index=1", "cli/cas", "b")
    assert r.returncode == 1 and "CAS failed" in r.stderr


def test_kv_export_import_roundtrip(dev_agent: AgentProcess) -> None:
    run(dev_agent, "kv", "put", "exp/a", "1")
    run(dev_agent, "kv", "put", "exp/b", "2")
    r = run(dev_agent, "kv", "export", "exp/")
    exported = json.loads(r.stdout)
    assert [e["key"] for e in exported] == ["exp/a", "exp/b"]
    run(dev_agent, "kv", "delete", "-recurse", "exp/")
    r = run(dev_agent, "kv", "import", "-", stdin=r.stdout)
    assert r.returncode == 0 and "Imported: exp/b" in r.stdout
    assert run(dev_agent, "kv", "get", "exp/b").stdout == "2\n"


def test_http_addr_flag_and_env(dev_agent: AgentProcess) -> None:
    run(dev_agent, "kv", "put", "cli/addr", "x")
    r = run(None, "kv", "get", f"-http-addr={dev_agent.addr}", "cli/addr", env={"CONSUL_HTTP_ADDR": "127.0.0.1:1"})
    assert r.stdout == "x\n"
    r = run(None, "kv", "get", "cli/addr", env={"CONSUL_HTTP_ADDR": "127.0.0.1:1"})
    assert r.returncode == 1 and "Error querying Consul agent" in r.stderr


def test_members_and_catalog(dev_agent: AgentProcess) -> None:
    r = run(dev_agent, "members")
    assert r.returncode == 0
    header, row = r.stdout.splitlines()[:2]
    assert header.split()[:4] == ["Node", "Address", "Status", "Type"]
    assert row.split()[0] == "test-node" and "alive" in row and "server" in row
    assert run(dev_agent, "catalog", "datacenters").stdout == "dc1\n"
    assert "test-node" in run(dev_agent, "catalog", "nodes").stdout
    assert "consul" in run(dev_agent, "catalog", "services").stdout.split()


def test_services_register_from_file_and_deregister(dev_agent: AgentProcess, tmp_path: Path) -> None:
    path = tmp_path / "web.hcl"
    path.write_text('service {\n  name = "cli-web"\n  id = "cli-web-1"\n  port = 8081\n  tags = ["blue"]\n}\n')
    r = run(dev_agent, "services", "register", str(path))
    assert r.returncode == 0 and "Registered service: cli-web" in r.stdout
    services = json.loads(dev_agent.http("GET", "/v1/agent/services")[2])
    assert services["cli-web-1"]["Tags"] == ["blue"]
    r = run(dev_agent, "services", "deregister", "-id=cli-web-1")
    assert r.returncode == 0 and "Deregistered service: cli-web-1" in r.stdout


def test_info_version_keygen(dev_agent: AgentProcess) -> None:
    r = run(dev_agent, "info")
    assert "raft:" in r.stdout and "state = Leader" in r.stdout
    assert run(None, "version").stdout.startswith("Proconsul v")
    key = run(None, "keygen").stdout.strip()
    import base64

    assert len(base64.b64decode(key)) == 32


def test_validate_reports_every_error_with_file_and_key(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "a.json").write_text(json.dumps({"data_dir": "/tmp/x", "datacenter": "east", "bind_addr": "127.0.0.1"}))
    r = run(None, "validate", str(good))
    assert r.returncode == 0 and "Configuration is valid!" in r.stdout
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.hcl").write_text('data_dir = "/tmp/x"\nports { http = "eighty" }\nbogus_key = 1\n')
    r = run(None, "validate", str(bad))
    assert r.returncode == 1
    assert "ports.http" in r.stderr and "bogus_key" in r.stderr and "a.hcl" in r.stderr


def test_agent_refuses_invalid_config(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"ports": {"http": "x"}, "unknown": True}))
    r = subprocess.run([proconsul_command(), "agent", "-dev", f"-config-dir={tmp_path}"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert "bad.json" in r.stderr and "ports.http" in r.stderr and "unknown" in r.stderr


def test_reload_and_leave(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "svc.json").write_text(json.dumps({"service": {"name": "from-file", "port": 1}}))
    agent = AgentProcess(f"-config-dir={conf}").start()
    try:
        assert "from-file" in json.loads(agent.http("GET", "/v1/agent/services")[2])
        (conf / "svc.json").write_text(json.dumps({"service": {"name": "reloaded", "port": 2}}))
        r = run(agent, "reload")
        assert r.returncode == 0 and "Configuration reload triggered" in r.stdout
        services = json.loads(agent.http("GET", "/v1/agent/services")[2])
        assert "reloaded" in services and "from-file" not in services
        r = run(agent, "leave")
        assert r.returncode == 0 and "Graceful leave complete" in r.stdout
        assert agent.proc is not None
        assert agent.proc.wait(timeout=30) == 0
    finally:
        agent.stop()


@pytest.mark.parametrize("args", [["kv"], ["bogus-command"]])
def test_usage_errors_exit_nonzero(args: list[str]) -> None:
    assert run(None, *args).returncode != 0
