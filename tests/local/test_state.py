"""Local state: persistence of API registrations and anti-entropy against a real store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proconsul.local.state import LocalState
from proconsul.server.rpc import Server
from proconsul.server.single import SingleNodeLog
from proconsul.state import commands
from proconsul.state.fsm import FSM
from proconsul.state.records import ServiceInstance
from proconsul.state.store import Store
from proconsul.structs import HEALTH_CRITICAL, CheckDefinition, decode_check, decode_service


def _local(data_dir: Path | None) -> LocalState:
    return LocalState("n1", "11111111-2222-3333-4444-555555555555", "127.0.0.1", "dc1", {"rack": "a"},
                      str(data_dir) if data_dir else None)


def test_api_registrations_survive_a_restart(tmp_path: Path) -> None:
    first = _local(tmp_path)
    first.add_service(decode_service({"Name": "web", "Port": 80, "Check": {"TTL": "10s"}}))
    first.add_check(decode_check({"Name": "disk", "HTTP": "http://127.0.0.1:1/", "Interval": "5s"}))
    first.add_check(CheckDefinition(id="_service_maintenance:web", name="Service Maintenance Mode",
                                    service_id="web", status=HEALTH_CRITICAL, type="maintenance"))
    first.add_service(decode_service({"Name": "gone"}))
    first.remove_service("gone")
    second = _local(tmp_path)
    assert second.load_persisted() == []
    assert sorted(second.services) == ["web"]
    assert sorted(second.checks) == ["_service_maintenance:web", "disk", "service:web"]
    assert second.checks["_service_maintenance:web"].status == HEALTH_CRITICAL
    assert second.checks["disk"].definition.interval_s == 5.0


def test_persisted_registrations_are_private(tmp_path: Path) -> None:
    local = _local(tmp_path)
    local.add_service(decode_service({"Name": "web", "Port": 80, "Check": {"TTL": "10s"}}))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_full_sync_removes_unknown_entries_and_restores_missing_ones() -> None:
    async def scenario() -> None:
        store = Store()
        log = SingleNodeLog(FSM(store), "127.0.0.1:8300", "id", "n1")
        server = Server(store, log, "dc1")
        local = _local(None)
        local.add_service(decode_service({"Name": "web", "Port": 80}))
        await local.sync_full(server)
        assert [s.id for s in store.service_instances("web")] == ["web"]
        # Someone registers a stray service on our node through the catalog, and deletes ours.
        await server.write(commands.Register(local.node_record(), ServiceInstance("n1", "stray", "stray")))
        await server.write(commands.Deregister("n1", service_id="web"))
        await local.sync_full(server)
        assert store.service_instances("stray") == []
        assert [s.id for s in store.service_instances("web")] == ["web"]
        assert store.nodes["n1"].meta["rack"] == "a"

    asyncio.run(scenario())
