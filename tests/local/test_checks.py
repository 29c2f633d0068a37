"""Check runner logic without processes: flap thresholds, output deferral, the reaper, alias rules."""

from __future__ import annotations

import asyncio
import random
import sys

import pytest
from proconsul.local.checks import GRPC_EXTRA_MISSING, CheckRunner, StatusHandler
from proconsul.local.state import LocalState
from proconsul.structs import HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING, CheckDefinition, decode_service


def _handler(**kw: int) -> tuple[StatusHandler, list[str]]:
    seen: list[str] = []
    d = CheckDefinition(id="c", name="c", type="http", **kw)
    return StatusHandler(d, lambda cid, status, out: seen.append(status)), seen


def test_status_handler_reports_the_first_result_then_applies_thresholds() -> None:
    h, seen = _handler(success_before_passing=2, failures_before_critical=3)
    h.update(HEALTH_CRITICAL, "")  # the counters start at their thresholds: reported at once
    assert seen == [HEALTH_CRITICAL]
    h.update(HEALTH_PASSING, "")
    assert seen == [HEALTH_CRITICAL]
    h.update(HEALTH_PASSING, "")
    assert seen == [HEALTH_CRITICAL, HEALTH_PASSING]
    h.update(HEALTH_CRITICAL, "")
    h.update(HEALTH_CRITICAL, "")
    assert seen[-1] == HEALTH_PASSING
    h.update(HEALTH_CRITICAL, "")
    assert seen[-1] == HEALTH_CRITICAL


def test_status_handler_warning_counts_as_success_and_failures_warn_first() -> None:
    h, seen = _handler(success_before_passing=0, failures_before_warning=1, failures_before_critical=3)
    h.update(HEALTH_PASSING, "")
    h.update(HEALTH_WARNING, "")
    assert seen == [HEALTH_PASSING, HEALTH_WARNING]
    h.update(HEALTH_CRITICAL, "")
    h.update(HEALTH_CRITICAL, "")
    assert seen[2:] == [HEALTH_WARNING, HEALTH_WARNING]
    h.update(HEALTH_CRITICAL, "")
    assert seen[-1] == HEALTH_CRITICAL


def _local() -> LocalState:
    return LocalState("n1", "11111111-2222-3333-4444-555555555555", "127.0.0.1", "dc1", {}, None)


def test_output_only_changes_are_written_back_later_status_changes_at_once() -> None:
    async def scenario() -> None:
        changes: list[int] = []
        interval = [0.2]
        local = LocalState("n1", "11111111-2222-3333-4444-555555555555", "127.0.0.1", "dc1", {}, None,
                           on_change=lambda: changes.append(1), check_update_interval=lambda: interval[0])
        local.add_check(CheckDefinition(id="t", name="t", type="ttl", ttl_s=60))
        local.checks["t"].in_sync = True
        changes.clear()
        local.update_check("t", HEALTH_CRITICAL, "new output")
        assert changes == [] and local.checks["t"].deferred_output and local.checks["t"].in_sync
        local.update_check("t", HEALTH_CRITICAL, "newer output")  # one pending write-back only
        await asyncio.sleep(0.35)  # interval/2 + up to one interval
        assert changes == [1] and not local.checks["t"].in_sync
        local.checks["t"].in_sync = True
        local.update_check("t", HEALTH_PASSING, "newer output")
        assert changes == [1, 1] and not local.checks["t"].in_sync
        interval[0] = 0.0  # 0: every change at once (read at each change, as a reload would set it)
        local.update_check("t", HEALTH_PASSING, "again")
        assert changes == [1, 1, 1]

    asyncio.run(scenario())


def test_reaper_respects_timeout_and_minimum() -> None:
    now = [100.0]
    local = _local()
    local.clock = lambda: now[0]
    local.add_service(decode_service({"Name": "web", "Check": {"TTL": "60s", "DeregisterCriticalServiceAfter": "10s"}}))
    local.add_service(decode_service({"Name": "db", "Check": {"TTL": "60s", "Status": "passing",
                                                             "DeregisterCriticalServiceAfter": "10s"}}))
    now[0] = 105.0
    assert local.critical_services_to_reap(1.0) == []
    now[0] = 111.0
    assert local.critical_services_to_reap(1.0) == ["web"]
    assert local.critical_services_to_reap(60.0) == []  # Consul's 1m floor
    local.update_check("service:web", HEALTH_PASSING, "")
    assert local.critical_services_to_reap(1.0) == []
    local.update_check("service:web", HEALTH_CRITICAL, "")
    now[0] = 125.0
    assert local.critical_services_to_reap(1.0) == ["web"]


def test_alias_rules_follow_consul() -> None:
    d = CheckDefinition(id="a", name="a", type="alias", alias_service="web", alias_node="n2")
    runner = CheckRunner(d, lambda *a: None, None, random.Random(), False)

    def chk(cid: str, status: str, service: str = "", node: str = "n2") -> dict[str, str]:
        return {"Node": node, "CheckID": cid, "Name": cid, "Status": status, "Output": "o", "ServiceID": service}

    assert runner._alias_result([], True) == (HEALTH_PASSING, "No checks found.")
    assert runner._alias_result([], False)[0] == HEALTH_CRITICAL
    assert runner._alias_result([chk("x", HEALTH_PASSING, "web")], None) == (HEALTH_PASSING, "All checks passing.")
    # Node-level checks count; other services' checks and other nodes do not.
    assert runner._alias_result([chk("x", HEALTH_PASSING, "web"), chk("serfHealth", HEALTH_WARNING)], None)[0] == HEALTH_WARNING
    assert runner._alias_result([chk("x", HEALTH_PASSING, "web"), chk("y", HEALTH_CRITICAL, "db")], None)[0] == HEALTH_PASSING
    assert runner._alias_result([chk("x", HEALTH_PASSING, "web"), chk("y", HEALTH_CRITICAL, node="n3")], None)[0] == HEALTH_PASSING
    worst = runner._alias_result([chk("w", HEALTH_WARNING, "web"), chk("c", HEALTH_CRITICAL, "web")], None)
    assert worst == (HEALTH_CRITICAL, 'Aliased check "c" failing: o')


def test_a_grpc_check_without_the_grpc_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "grpc", None)  # what `import grpc` finds without grpcio installed
    d = CheckDefinition(id="g", name="g", type="grpc", grpc="127.0.0.1:1", interval_s=10)
    runner = CheckRunner(d, lambda *a: None, None, random.Random(), False)
    status, output = asyncio.run(runner._probe_once())
    assert status == HEALTH_CRITICAL
    assert output.startswith(GRPC_EXTRA_MISSING) and "proconsul[grpc]" in output
