"""Autopilot's configuration parsing and rendering and the failure tolerance
(proconsul.server.autopilot_health), as Consul's API shows and accepts them."""

from __future__ import annotations

import pytest
from proconsul.server.autopilot_health import Settings, failure_tolerance, from_fields, parse_body


def test_render_is_consuls_shape_with_go_durations() -> None:
    out = Settings(last_contact_threshold_s=0.2, server_stabilization_time_s=600.0, create_index=4,
                   modify_index=9).render()
    assert out == {"CleanupDeadServers": True, "LastContactThreshold": "200ms", "MaxTrailingLogs": 250,
                   "MinQuorum": 0, "ServerStabilizationTime": "10m0s", "RedundancyZoneTag": "",
                   "DisableUpgradeMigration": False, "UpgradeVersionTag": "", "CreateIndex": 4, "ModifyIndex": 9}


def test_parse_takes_strings_or_nanoseconds_and_zeroes_what_is_left_out() -> None:
    fields = parse_body({"LastContactThreshold": "300ms", "ServerStabilizationTime": 2_000_000_000,
                         "MaxTrailingLogs": 10})
    assert fields["LastContactThreshold"] == pytest.approx(0.3)
    assert fields["ServerStabilizationTime"] == pytest.approx(2.0)
    assert fields["CleanupDeadServers"] is False and fields["MinQuorum"] == 0  # as Consul decodes it
    settings = from_fields(fields, 3, 7)
    assert (settings.max_trailing_logs, settings.create_index, settings.modify_index) == (10, 3, 7)


@pytest.mark.parametrize("body", [
    [], {"CleanupDeadServers": "yes"}, {"MaxTrailingLogs": -1}, {"MinQuorum": 1.5}, {"MinQuorum": True},
    {"LastContactThreshold": "soon"}, {"ServerStabilizationTime": "-1s"}, {"RedundancyZoneTag": 3},
])
def test_bad_bodies_are_refused_with_a_reason(body: object) -> None:
    with pytest.raises(ValueError, match="Error parsing autopilot config"):
        parse_body(body)


def test_failure_tolerance_is_healthy_voters_beyond_a_quorum() -> None:
    assert failure_tolerance(3, 3) == 1
    assert failure_tolerance(2, 3) == 0
    assert failure_tolerance(5, 5) == 2
    assert failure_tolerance(1, 1) == 0
    assert failure_tolerance(0, 3) == 0
