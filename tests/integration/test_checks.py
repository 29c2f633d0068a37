"""Health checks, maintenance and anti-entropy against real agent processes.

gRPC (a real grpc.health.v1 server), UDP, alias (local service and another node), unsupported
types, script-check permissions, the deregister-critical reaper, check_update_interval, node and
service maintenance (CLI, `?passing`, DNS, kept across a restart) and anti-entropy (restart,
stray and deleted catalog entries, enable_tag_override). Hidden timing knobs (`ae_interval`,
`check_reap_interval`, `check_deregister_interval_min`) keep the waits short.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from helpers import AgentProcess, proconsul_command, wait_for

SERVER_FLAGS = ("-server", "-bootstrap", "-hcl", "performance { raft_multiplier = 1 }")


def put(agent: AgentProcess, path: str, body: Any = None, expect: int = 200) -> bytes:
    code, _, text = agent.http("PUT", path, json.dumps(body).encode() if body is not None else None)
    assert code == expect, (code, text)
    return text


def get(agent: AgentProcess, path: str) -> Any:
    code, _, text = agent.http("GET", path)
    assert code == 200, (code, text)
    return json.loads(text)


def local_check(agent: AgentProcess, cid: str) -> dict[str, Any] | None:
    return get(agent, "/v1/agent/checks").get(cid)


def catalog_check(agent: AgentProcess, cid: str) -> dict[str, Any] | None:
    for c in get(agent, f"/v1/health/node/{agent.node}"):
        if c["CheckID"] == cid:
            return c
    return None


def wait_status(agent: AgentProcess, cid: str, status: str, timeout: float = 30.0) -> dict[str, Any]:
    return wait_for(
        lambda: (c := local_check(agent, cid)) is not None and c["Status"] == status and c,
        timeout=timeout,
        what=lambda: f"{cid} {status}: {local_check(agent, cid)}",
    )


def cli(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [proconsul_command(), *args, f"-http-addr={agent.addr}"], capture_output=True, text=True, timeout=60
    )


def dig_short(agent: AgentProcess, name: str) -> list[str]:
    binary = shutil.which("dig")
    assert binary, "dig is missing: scripts/setup-env test installs bind9-dnsutils"
    out = subprocess.run(
        [binary, "@127.0.0.1", "-p", str(agent.dns_port), "+tries=1", "+time=5", "+short", name],
        capture_output=True, text=True, timeout=30,
    ).stdout
    return sorted(line for line in out.splitlines() if line and not line.startswith(";"))


def passing_ids(agent: AgentProcess, service: str) -> list[str]:
    return sorted(e["Service"]["ID"] for e in get(agent, f"/v1/health/service/{service}?passing"))


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    a = AgentProcess("-hcl", 'check_reap_interval = "1s"').start()
    try:
        yield a
    finally:
        a.stop()


# --------------------------------------------------------------------------------- runners


def test_grpc_check_against_a_real_health_server(agent: AgentProcess) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    try:
        servicer.set("", serving)
        servicer.set("pkg.Svc", serving)
        put(agent, "/v1/agent/service/register", {
            "Name": "grpc-app", "Port": port,
            "Checks": [
                {"CheckID": "grpc-all", "Name": "all", "GRPC": f"127.0.0.1:{port}", "Interval": "1s"},
                {"CheckID": "grpc-svc", "Name": "svc", "GRPC": f"127.0.0.1:{port}/pkg.Svc", "Interval": "1s",
                 "Timeout": "2s"},
            ],
        })
        assert wait_status(agent, "grpc-svc", "passing")["Output"] == f"gRPC check 127.0.0.1:{port}/pkg.Svc: success"
        wait_status(agent, "grpc-all", "passing")
        servicer.set("pkg.Svc", not_serving)
        out = wait_status(agent, "grpc-svc", "critical")["Output"]
        assert out == f"gRPC 127.0.0.1:{port}/pkg.Svc serving status: NOT_SERVING"
        assert local_check(agent, "grpc-all")["Status"] == "passing"
        servicer.set("pkg.Svc", serving)
        wait_status(agent, "grpc-svc", "passing")
        server.stop(None)
        assert "rpc error: code = Unavailable" in wait_status(agent, "grpc-all", "critical")["Output"]
    finally:
        server.stop(None)
        put(agent, "/v1/agent/service/deregister/grpc-app")


def test_udp_check_refused_is_critical_silence_is_passing(agent: AgentProcess) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listening:
        listening.bind(("127.0.0.1", 0))
        open_port = listening.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        for cid, port in (("udp-open", open_port), ("udp-closed", closed_port)):
            put(agent, "/v1/agent/check/register",
                {"ID": cid, "Name": cid, "UDP": f"127.0.0.1:{port}", "Interval": "1s", "Timeout": "500ms"})
        try:
            assert wait_status(agent, "udp-open", "passing")["Output"] == f"UDP connect 127.0.0.1:{open_port}: Success"
            # Every check starts critical with no output: wait for a probe's own verdict.
            refused = wait_for(
                lambda: (c := local_check(agent, "udp-closed")) is not None and c["Output"] and c,
                what=lambda: f"udp-closed probed: {local_check(agent, 'udp-closed')}",
            )
            assert refused["Status"] == "critical" and refused["Output"].endswith("read: connection refused"), refused
        finally:
            put(agent, "/v1/agent/check/deregister/udp-open")
            put(agent, "/v1/agent/check/deregister/udp-closed")


def test_alias_check_mirrors_a_local_service_and_another_node(agent: AgentProcess) -> None:
    put(agent, "/v1/agent/service/register", {"Name": "aliased", "Check": {"CheckID": "aliased-ttl", "TTL": "600s"}})
    put(agent, "/v1/agent/service/register", {
        "Name": "sidecar", "Check": {"CheckID": "sidecar-alias", "Name": "alias", "AliasService": "aliased"},
    })
    put(agent, "/v1/catalog/register", {
        "Node": "ext-node", "Address": "10.9.9.9",
        "Check": {"CheckID": "ext-check", "Name": "ext", "Status": "passing"},
    })
    # On a service of their own: a critical node-level check here would fail every local alias.
    put(agent, "/v1/agent/service/register", {"Name": "watcher", "Checks": [
        {"CheckID": "node-alias", "Name": "node alias", "AliasNode": "ext-node"},
        {"CheckID": "missing-alias", "Name": "missing", "AliasService": "nope", "AliasNode": "ext-node"},
    ]})
    try:
        assert wait_status(agent, "sidecar-alias", "critical")["Output"].startswith('Aliased check "Service')
        put(agent, "/v1/agent/check/pass/aliased-ttl")
        assert wait_status(agent, "sidecar-alias", "passing")["Output"] == "All checks passing."
        put(agent, "/v1/agent/check/warn/aliased-ttl?note=slow")
        assert "slow" in wait_status(agent, "sidecar-alias", "warning")["Output"]
        assert wait_status(agent, "node-alias", "passing")["Output"] == "All checks passing."
        put(agent, "/v1/catalog/register", {
            "Node": "ext-node", "Address": "10.9.9.9",
            "Check": {"CheckID": "ext-check", "Name": "ext", "Status": "critical", "Output": "down"},
        })
        assert wait_status(agent, "node-alias", "critical")["Output"] == 'Aliased check "ext" failing: down'
        out = wait_status(agent, "missing-alias", "critical")["Output"]
        assert out == "Service nope could not be found on node ext-node"
        put(agent, "/v1/agent/service/deregister/aliased")
        assert "could not be found" in wait_status(agent, "sidecar-alias", "critical")["Output"]
    finally:
        for path in ("service/deregister/sidecar", "service/deregister/watcher"):
            agent.http("PUT", f"/v1/agent/{path}")
        put(agent, "/v1/catalog/deregister", {"Node": "ext-node"})


def test_unsupported_types_are_critical_with_a_reason(agent: AgentProcess) -> None:
    put(agent, "/v1/agent/check/register", {"ID": "svc-unit", "Name": "unit", "OSService": "nginx", "Interval": "5s"})
    put(agent, "/v1/agent/check/register",
        {"ID": "dock", "Name": "dock", "DockerContainerID": "abc", "Args": ["true"], "Interval": "5s"}, expect=500)
    try:
        out = wait_status(agent, "svc-unit", "critical")["Output"]
        assert out == "os_service checks are not supported by proconsul"
    finally:
        put(agent, "/v1/agent/check/deregister/svc-unit")


# ------------------------------------------------------------------------ script permissions


def test_script_checks_need_the_right_setting(tmp_path: Path) -> None:
    config = tmp_path / "checks.json"
    config.write_text(json.dumps({"checks": [{"id": "local-script", "name": "local", "args": ["true"],
                                             "interval": "1s"}]}))
    # enable_local_script_checks: config-file script checks run, API ones are refused (500).
    a = AgentProcess("-enable-local-script-checks", f"-config-file={config}").start()
    try:
        wait_status(a, "local-script", "passing")
        code, _, body = a.http("PUT", "/v1/agent/check/register",
                               json.dumps({"Name": "remote", "Args": ["true"], "Interval": "1s"}).encode())
        assert code == 500
        assert body.decode().strip() == (
            "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true"
        )
        assert local_check(a, "remote") is None
    finally:
        a.stop()
    # enable_script_checks: both.
    a = AgentProcess("-enable-script-checks", f"-config-file={config}").start()
    try:
        wait_status(a, "local-script", "passing")
        put(a, "/v1/agent/check/register", {"Name": "remote", "Args": ["sh", "-c", "exit 1"], "Interval": "1s"})
        wait_status(a, "remote", "warning")
        # A docker check's args are never run on the host.
        put(a, "/v1/agent/check/register",
            {"ID": "dock", "Name": "dock", "DockerContainerID": "abc", "Args": ["true"], "Interval": "1s"})
        assert wait_status(a, "dock", "critical")["Output"] == "docker checks are not supported by proconsul"
    finally:
        a.stop()
    # Neither: the agent refuses to start with the config-file script check, as Consul.
    a = AgentProcess(f"-config-file={config}")
    a.wait_for_leader = False
    a.start()
    assert a.proc is not None and a.proc.wait(60) == 1
    assert "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or " \
           "'enable_local_script_checks' to true" in a.log()
    a.stop()


# ------------------------------------------------------------------- reaper and update interval


def test_deregister_critical_service_after_reaps_the_service(agent: AgentProcess) -> None:
    # The module's agent reaps every second but keeps Consul's 1m minimum: not reaped yet.
    put(agent, "/v1/agent/service/register", {
        "Name": "kept", "Check": {"TTL": "600s", "DeregisterCriticalServiceAfter": "1s"},
    })
    a = AgentProcess("-hcl", 'check_reap_interval = "1s"\ncheck_deregister_interval_min = "1s"').start()
    try:
        put(a, "/v1/agent/service/register", {
            "Name": "doomed", "Check": {"TTL": "600s", "DeregisterCriticalServiceAfter": "2s"},
        })
        put(a, "/v1/agent/service/register", {
            "Name": "healthy", "Check": {"TTL": "600s", "Status": "passing", "DeregisterCriticalServiceAfter": "1s"},
        })
        started = time.monotonic()
        wait_for(lambda: "doomed" not in get(a, "/v1/agent/services"), timeout=20, what="doomed reaped")
        assert time.monotonic() - started > 1.5
        wait_for(lambda: get(a, "/v1/catalog/service/doomed") == [], what="doomed gone from the catalog")
        assert "healthy" in get(a, "/v1/agent/services")
    finally:
        a.stop()
    assert "kept" in get(agent, "/v1/agent/services")
    put(agent, "/v1/agent/service/deregister/kept")


def test_check_update_interval_defers_output_but_not_status() -> None:
    a = AgentProcess("-hcl", 'check_update_interval = "4s"').start()
    try:
        put(a, "/v1/agent/check/register", {"ID": "t", "Name": "t", "TTL": "600s"})
        put(a, "/v1/agent/check/pass/t?note=first")
        wait_for(lambda: (c := catalog_check(a, "t")) and c["Status"] == "passing", timeout=10)
        assert catalog_check(a, "t")["Output"] == "first"
        changed = time.monotonic()
        put(a, "/v1/agent/check/pass/t?note=second")
        assert local_check(a, "t")["Output"] == "second"
        # Written back after interval/2 plus a stagger of up to one interval: 2s to 6s.
        while time.monotonic() - changed < 1.5:
            assert catalog_check(a, "t")["Output"] == "first"
            time.sleep(0.2)
        wait_for(lambda: catalog_check(a, "t")["Output"] == "second", timeout=10, what="output written back")
        assert time.monotonic() - changed < 8
        # A status change goes out at once, with its output.
        put(a, "/v1/agent/check/fail/t?note=third")
        changed = time.monotonic()
        wait_for(lambda: catalog_check(a, "t")["Status"] == "critical", timeout=10)
        assert time.monotonic() - changed < 1.5
        assert catalog_check(a, "t")["Output"] == "third"
    finally:
        a.stop()


# ---------------------------------------------------------------------------- maintenance


def test_maintenance_removes_the_instance_from_passing_and_dns(agent: AgentProcess) -> None:
    for i, sid in enumerate(("maint-1", "maint-2")):
        put(agent, "/v1/agent/service/register", {"Name": "maintweb", "ID": sid, "Address": f"10.0.0.{i + 1}",
                                                  "Check": {"TTL": "600s", "Status": "passing"}})
    try:
        wait_for(lambda: passing_ids(agent, "maintweb") == ["maint-1", "maint-2"], what="both passing")
        wait_for(lambda: dig_short(agent, "maintweb.service.consul") == ["10.0.0.1", "10.0.0.2"])
        run = cli(agent, "maint", "-enable", "-service=maint-1", "-reason=upgrading")
        assert run.returncode == 0 and run.stdout == "Service entered maintenance mode: maint-1\n", run
        wait_for(lambda: passing_ids(agent, "maintweb") == ["maint-2"], what="maint-1 out of ?passing")
        wait_for(lambda: dig_short(agent, "maintweb.service.consul") == ["10.0.0.2"], what="one A record")
        run = cli(agent, "maint")
        assert run.stdout == "Service:\n  ID:     maint-1\n  Reason: upgrading\n\n", run
        # Node maintenance takes every instance on the node out.
        run = cli(agent, "maint", "-enable")
        assert run.stdout == "Node entered maintenance mode\n"
        wait_for(lambda: passing_ids(agent, "maintweb") == [], what="node maintenance")
        wait_for(lambda: dig_short(agent, "maintweb.service.consul") == [], what="no A records")
        listing = cli(agent, "maint").stdout
        assert listing.startswith(f"Node:\n  Name:   {agent.node}\n  Reason: Maintenance mode is enabled for this node")
        assert cli(agent, "maint", "-disable").stdout == "Node left maintenance mode\n"
        assert cli(agent, "maint", "-disable", "-service=maint-1").stdout == "Service left maintenance mode: maint-1\n"
        wait_for(lambda: passing_ids(agent, "maintweb") == ["maint-1", "maint-2"], what="both back")
        wait_for(lambda: dig_short(agent, "maintweb.service.consul") == ["10.0.0.1", "10.0.0.2"])
        assert cli(agent, "maint").stdout == ""
    finally:
        for sid in ("maint-1", "maint-2"):
            put(agent, f"/v1/agent/service/deregister/{sid}")


def test_maint_cli_usage_errors(agent: AgentProcess) -> None:
    for args, message in (
        (("-enable", "-disable"), "Only one of -enable or -disable may be provided"),
        (("-reason=x",), "Reason may only be provided with -enable"),
        (("-service=x",), "Service requires either -enable or -disable"),
    ):
        run = cli(agent, "maint", *args)
        assert run.returncode == 1 and message in run.stderr, run
    run = cli(agent, "maint", "-enable", "-service=unknown")
    assert run.returncode == 1 and "Error enabling service maintenance: Unexpected response code: 404" in run.stderr


# ------------------------------------------------------------- persistence and anti-entropy


def test_registrations_and_maintenance_survive_a_server_restart(tmp_path: Path) -> None:
    data = str(tmp_path / "data")

    def start() -> AgentProcess:
        return AgentProcess(*SERVER_FLAGS, dev=False, data_dir=data).start()

    a = start()
    try:
        put(a, "/v1/agent/service/register", {"Name": "kept", "Port": 81, "Check": {"TTL": "600s"}})
        put(a, "/v1/agent/service/maintenance/kept?enable=true&reason=patching")
        put(a, "/v1/agent/maintenance?enable=true&reason=rack%20move")
        wait_for(lambda: catalog_check(a, "_node_maintenance") is not None,
                 what=lambda: f"node maintenance synced\n{a.log()}")
    finally:
        assert a.stop() == 0
    a = start()
    try:
        assert "kept" in get(a, "/v1/agent/services")
        checks = get(a, "/v1/agent/checks")
        assert checks["_node_maintenance"]["Notes"] == "rack move"
        assert checks["_service_maintenance:kept"]["Notes"] == "patching"
        wait_for(lambda: [e["Service"]["ID"] for e in get(a, "/v1/health/service/kept")] == ["kept"])
        listing = cli(a, "maint").stdout
        assert "Reason: rack move" in listing and "ID:     kept\n  Reason: patching" in listing
        cli(a, "maint", "-disable")
        cli(a, "maint", "-disable", "-service=kept")
    finally:
        a.stop()
    a = start()
    try:
        assert cli(a, "maint").stdout == ""
    finally:
        a.stop()


def test_full_sync_repairs_the_catalog_for_this_node() -> None:
    a = AgentProcess("-hcl", 'ae_interval = "1s"').start()
    try:
        put(a, "/v1/agent/service/register", {"Name": "own", "Port": 80, "Tags": ["a"]})
        put(a, "/v1/agent/service/register", {"Name": "flexible", "Tags": ["v1"], "EnableTagOverride": True})
        wait_for(lambda: get(a, "/v1/catalog/service/own") != [], what="own in the catalog")
        # A stray catalog entry on this node: removed by the next full sync.
        put(a, "/v1/catalog/register", {"Node": a.node, "Address": "127.0.0.1",
                                        "Service": {"Service": "stray", "ID": "stray"}})
        assert get(a, "/v1/catalog/service/stray") != []
        wait_for(lambda: get(a, "/v1/catalog/service/stray") == [], timeout=15, what="stray removed")
        # Deleted behind the agent's back: restored.
        put(a, "/v1/catalog/deregister", {"Node": a.node, "ServiceID": "own"})
        wait_for(lambda: get(a, "/v1/catalog/service/own") != [], timeout=15, what="own restored")
        # Tag edits in the catalog: kept with enable_tag_override, reverted without.
        for sid, override in (("flexible", True), ("own", False)):
            put(a, "/v1/catalog/register", {"Node": a.node, "Address": "127.0.0.1",
                                            "Service": {"Service": sid, "ID": sid, "Tags": ["edited"],
                                                        "EnableTagOverride": override}})
        wait_for(lambda: get(a, "/v1/catalog/service/own")[0]["ServiceTags"] == ["a"], timeout=15)
        time.sleep(2.5)  # more than two full syncs
        assert get(a, "/v1/catalog/service/flexible")[0]["ServiceTags"] == ["edited"]
    finally:
        a.stop()


def test_a_critical_node_check_takes_the_nodes_instances_out(agent: AgentProcess) -> None:
    put(agent, "/v1/catalog/register", {
        "Node": "other", "Address": "10.7.7.7",
        "Service": {"Service": "nodehealth", "ID": "nh"},
        # Not `serfHealth`: the leader deregisters a node carrying that check which is not a
        # gossip member (Consul's reconcile), which would race this test.
        "Check": {"CheckID": "node-alive", "Name": "Node alive", "Status": "passing"},
    })
    try:
        wait_for(lambda: passing_ids(agent, "nodehealth") == ["nh"])
        assert dig_short(agent, "nodehealth.service.consul") == ["10.7.7.7"]
        put(agent, "/v1/catalog/register", {
            "Node": "other", "Address": "10.7.7.7",
            "Check": {"CheckID": "node-alive", "Name": "Node alive", "Status": "critical"},
        })
        wait_for(lambda: passing_ids(agent, "nodehealth") == [])
        assert dig_short(agent, "nodehealth.service.consul") == []
        assert [e["Service"]["ID"] for e in get(agent, "/v1/health/service/nodehealth")] == ["nh"]
    finally:
        put(agent, "/v1/catalog/deregister", {"Node": "other"})


def test_failover_dns_follows_the_role_file(tmp_path: Path) -> None:
    """The issue's example: two Redis instances whose script checks read a role file."""
    roles = {1: tmp_path / "redis-1.role", 2: tmp_path / "redis-2.role"}
    roles[1].write_text("master\n")
    roles[2].write_text("replica\n")
    a = AgentProcess("-enable-script-checks").start()
    try:
        for i, role in roles.items():
            put(a, "/v1/agent/service/register", {
                "Name": "w-master-redis", "ID": f"redis-{i}", "Address": f"10.0.1.{i}", "Port": 6379,
                # Exit 2 (critical): exit 1 would be a warning, which DNS still serves.
                "Check": {"Args": ["sh", "-c", f"grep -q '^master$' {role} || exit 2"], "Interval": "1s"},
            })
        wait_for(lambda: dig_short(a, "w-master-redis.service.consul") == ["10.0.1.1"], what="redis-1 is master")
        roles[1].write_text("replica\n")
        roles[2].write_text("master\n")
        wait_for(lambda: dig_short(a, "w-master-redis.service.consul") == ["10.0.1.2"], timeout=15,
                 what="redis-2 took over")
        assert passing_ids(a, "w-master-redis") == ["redis-2"]
    finally:
        a.stop()
