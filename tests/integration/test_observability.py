"""Operator observability on a real agent: `/v1/agent/monitor` + `proconsul monitor`,
`/v1/agent/host`, the event-loop profiles and `proconsul debug`'s archive.

The agent logs at INFO; a monitor at DEBUG sees the DEBUG lines a request causes while the agent's
own output stays at INFO. `proconsul debug -duration=5s` is run while requests make log lines,
and every file of the archive is parsed.
"""

from __future__ import annotations

import json
import os
import pstats
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import cli
from helpers import AgentProcess, proconsul_command, wait_for


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    a = AgentProcess("-log-level=info").start()
    try:
        yield a
    finally:
        a.stop()


def _reload(agent: AgentProcess) -> None:
    status, _, body = agent.http("PUT", "/v1/agent/reload")
    assert status == 200, body


def _monitor(agent: AgentProcess, *flags: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([proconsul_command(), "monitor", f"-http-addr={agent.addr}", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True).start()
    return proc, lines


def test_monitor_streams_request_lines_at_its_own_level(agent: AgentProcess) -> None:
    proc, lines = _monitor(agent, "-log-level=debug")
    try:
        def seen() -> bool:
            _reload(agent)  # until the monitor is attached, the lines go nowhere
            # Both lines of one reload: the DEBUG one comes first, the INFO one may still be
            # on its way through the stream when the DEBUG one is read.
            return any("[DEBUG]" in line and "reloadable settings changed" in line for line in lines) and any(
                "[INFO]" in line and "reloaded configuration" in line for line in lines)

        wait_for(seen, timeout=30, what=lambda: f"the reload's DEBUG and INFO lines in the monitor: {lines[-3:]}")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    # The agent itself still logs at INFO.
    assert "reloaded configuration" in agent.log()
    assert "[DEBUG]" not in agent.log()


def test_monitor_json_and_unknown_level(agent: AgentProcess) -> None:
    proc, lines = _monitor(agent, "-log-json")
    try:
        def seen() -> bool:
            _reload(agent)
            return any(line.startswith("{") and "reloaded configuration" in line for line in lines)

        wait_for(seen, timeout=30, what=lambda: f"a JSON line: {lines[-3:]}")
        record = json.loads(next(line for line in lines if "reloaded configuration" in line))
        assert record["@level"] == "info" and record["@module"] and record["@timestamp"]
        assert not any('"@level": "debug"' in line for line in lines)  # DEBUG is below INFO
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    status, _, body = agent.http("GET", "/v1/agent/monitor?loglevel=loud")
    assert status == 400 and body == b"Unknown log level: loud"
    out = cli("monitor", f"-http-addr={agent.addr}", "-log-level=loud")
    assert out.returncode == 1 and "Error starting monitor" in out.stderr and "Unknown log level: loud" in out.stderr


def test_host_has_consul_shape(agent: AgentProcess) -> None:
    before = time.time_ns()
    status, _, body = agent.http("GET", "/v1/agent/host")
    assert status == 200
    host = json.loads(body)
    assert set(host) == {"Memory", "CPU", "Host", "Disk", "CollectionTime", "Errors"}
    assert host["Errors"] is None
    assert before - 60 * 10**9 < host["CollectionTime"] < time.time_ns() + 60 * 10**9
    assert host["Memory"]["total"] > host["Memory"]["free"] > 0 and 0 < host["Memory"]["usedPercent"] < 100
    assert len(host["CPU"]) == os.cpu_count() and host["CPU"][0]["modelName"] is not None
    assert host["Host"]["hostname"] == os.uname().nodename and host["Host"]["os"] == "linux"
    assert host["Host"]["uptime"] > 0 and host["Host"]["procs"] > 1
    assert host["Disk"]["total"] > 0 and host["Disk"]["path"]


def test_debug_archive_files_all_parse(agent: AgentProcess, tmp_path: Path) -> None:
    stop = threading.Event()

    def requests() -> None:
        while not stop.is_set():
            _reload(agent)  # log lines for consul.log
            agent.http("PUT", "/v1/kv/debug/key", b"v")
            stop.wait(0.5)

    worker = threading.Thread(target=requests, daemon=True)
    worker.start()
    output = tmp_path / "bundle"
    try:
        out = cli("debug", "-duration=5s", f"-output={output}", f"-http-addr={agent.addr}", timeout=120)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Saved debug archive: {output}.tar.gz" in out.stdout
    assert not output.exists()  # archived, then removed
    with tarfile.open(f"{output}.tar.gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    root = tmp_path / "x" / "bundle"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    static = ["agent.json", "consul.log", "host.json", "index.json", "members.json", "metrics.json", "profile.prof"]
    assert [f for f in files if "/" not in f] == static
    index = json.loads((root / "index.json").read_text())
    assert index["Version"] == 1 and index["AgentVersion"] and index["Interval"] == "5s"
    assert sorted(index["Targets"]) == ["agent", "host", "logs", "members", "metrics", "pprof"]
    assert json.loads((root / "agent.json").read_text())["Config"]["NodeName"] == agent.node
    # A server's members.json is its WAN pool, as `consul debug` records it (Members(wan=true)).
    assert [m["Name"] for m in json.loads((root / "members.json").read_text())] == [f"{agent.node}.dc1"]
    assert json.loads((root / "host.json").read_text())["Host"]["hostname"] == os.uname().nodename
    samples = [json.loads(line) for line in (root / "metrics.json").read_text().splitlines()]
    assert len(samples) >= 2 and all({"Timestamp", "Gauges", "Counters", "Samples"} <= set(s) for s in samples)
    log = (root / "consul.log").read_text().splitlines()
    assert any("reloaded configuration" in line for line in log) and any("[DEBUG]" in line for line in log)
    stats = pstats.Stats(str(root / "profile.prof"))
    assert stats.total_calls > 0  # type: ignore[attr-defined]
    stacks = [f for f in files if f.endswith("/goroutine.prof")]
    assert len(stacks) >= 2
    for f in stacks:
        text = (root / f).read_text()
        assert text.startswith("tasks: total ") and "Stack for <Task" in text


def test_debug_refusals_and_pprof_needs_enable_debug(tmp_path: Path) -> None:
    quiet = AgentProcess("-hcl", "enable_debug = false").start()
    try:
        assert quiet.http("GET", "/v1/agent/debug/pprof/goroutine")[0] == 404
        out = cli("debug", "-duration=2s", f"-http-addr={quiet.addr}")
        assert out.returncode == 1 and "duration must be longer than 5s" in out.stderr
        out = cli("debug", "-duration=10s", "-interval=20s", f"-http-addr={quiet.addr}")
        assert out.returncode == 1 and "must be longer than interval" in out.stderr
        out = cli("debug", "-duration=5s", "-capture=metrics", "-capture=bogus", f"-http-addr={quiet.addr}")
        assert out.returncode == 1 and "target not found: bogus" in out.stderr
        output = tmp_path / "nopprof"
        out = cli("debug", "-duration=5s", "-archive=false", f"-output={output}", f"-http-addr={quiet.addr}",
                  timeout=120)
        assert out.returncode == 0, out.stderr
        assert "Unable to capture pprof" in out.stderr
        names = sorted(p.name for p in output.iterdir())
        assert "profile.prof" not in names and "index.json" in names and "metrics.json" in names
        assert "pprof" not in json.loads((output / "index.json").read_text())["Targets"]
    finally:
        quiet.stop()


def test_operator_usage_counts_the_catalog(agent: AgentProcess) -> None:
    for body in (b'{"Name": "usage-web", "ID": "usage-web-1", "Port": 80}',
                 b'{"Name": "usage-web", "ID": "usage-web-2", "Port": 81}',
                 b'{"Name": "usage-proxy", "Kind": "connect-proxy", "Port": 82,'
                 b' "Proxy": {"DestinationServiceName": "usage-web"}}'):
        assert agent.http("PUT", "/v1/agent/service/register", body)[0] == 200

    def usage() -> dict:  # type: ignore[type-arg]
        status, headers, body = agent.http("GET", "/v1/operator/usage")
        assert status == 200 and int(headers["X-Consul-Index"]) > 0
        return json.loads(body)  # type: ignore[no-any-return]

    wait_for(lambda: usage()["Usage"]["dc1"]["ServiceInstances"] >= 4, timeout=30, what="services in the catalog")
    body = usage()
    dc = body["Usage"]["dc1"]
    services = json.loads(agent.http("GET", "/v1/catalog/services")[2])
    assert dc["Services"] == len(services) and dc["Nodes"] == 1
    assert dc["ConnectServiceInstances"]["connect-proxy"] == 1
    assert dc["ConnectServiceInstances"]["mesh-gateway"] == 0
    # Billable: every instance but the consul service and the proxy.
    assert dc["BillableServiceInstances"] == dc["ServiceInstances"] - 2
    assert body["KnownLeader"] is True and body["Index"] > 0
