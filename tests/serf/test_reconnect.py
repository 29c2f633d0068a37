"""Serf's reconnect and reap policy (proconsul.serf.reconnect) with an injected clock and RNG, and
the configuration keys that drive it (reconnect_timeout, advertise_reconnect_timeout and the
hidden reconnect_interval)."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
from proconsul import config
from proconsul.config import ConfigError, interfaces, load
from proconsul.gossip.core import Member, MemberState
from proconsul.serf.member import STATUS_ALIVE, STATUS_FAILED, STATUS_LEAVING, STATUS_LEFT, MemberRecord
from proconsul.serf.reconnect import Reconnector, member_timeout, reap, reconnect_candidate

HOUR = 3600.0


def record(name: str, status: int, since: float = 0.0, port: int = 8301, **tags: str) -> MemberRecord:
    host = f"10.0.0.{sum(map(ord, name)) % 250 + 1}"
    return MemberRecord(Member(name, (host, port), dict(tags), 1, MemberState.ALIVE, 0.0), status, since)


def table(*recs: MemberRecord) -> dict[str, MemberRecord]:
    return {rec.member.name: rec for rec in recs}


class FixedRandom(random.Random):
    """random() returns a chosen value; choice() is the ordinary seeded one."""

    def __init__(self, value: float) -> None:
        super().__init__(7)
        self.value = value

    def random(self) -> float:
        return self.value


# --- which failed member to try ----------------------------------------------------------------


def test_nothing_to_try_without_failed_members() -> None:
    records = table(record("me", STATUS_ALIVE), record("b", STATUS_ALIVE), record("gone", STATUS_LEFT))
    assert reconnect_candidate(records, FixedRandom(0.0)) is None


def test_alone_with_one_failed_peer_always_tries_it() -> None:
    # failed / (2 members - 1 failed - 0 left) = 1: even the highest draw tries.
    records = table(record("me", STATUS_ALIVE), record("b", STATUS_FAILED))
    rec = reconnect_candidate(records, FixedRandom(0.999999))
    assert rec is not None and rec.member.name == "b"


def test_probability_is_failed_over_alive_and_left_members_do_not_count() -> None:
    # 4 alive (one of them leaving, still a member), 1 failed, 2 left: 1 / (7 - 1 - 2) = 0.25.
    records = table(
        record("me", STATUS_ALIVE), record("a", STATUS_ALIVE), record("b", STATUS_ALIVE),
        record("c", STATUS_LEAVING), record("f", STATUS_FAILED), record("l1", STATUS_LEFT),
        record("l2", STATUS_LEFT),
    )
    assert reconnect_candidate(records, FixedRandom(0.25)) is not None  # at the edge: tries
    assert reconnect_candidate(records, FixedRandom(0.2501)) is None  # above it: throttled


def test_over_many_passes_each_failed_member_is_tried_about_once_per_interval_cluster_wide() -> None:
    # 20 alive agents each run a pass per interval; with 2 failed members each agent tries with
    # probability 2/20, so the pool makes about 2 attempts per interval, spread over both.
    records = table(*(record(f"n{i:02}", STATUS_ALIVE) for i in range(20)),
                    record("fa", STATUS_FAILED), record("fb", STATUS_FAILED))
    rng = random.Random(1234)
    picks = [reconnect_candidate(records, rng) for _ in range(20 * 500)]
    tried = [p.member.name for p in picks if p is not None]
    assert 800 <= len(tried) <= 1200  # expected 1000 (2 per interval over 500 intervals)
    assert abs(tried.count("fa") - tried.count("fb")) < 150


def test_the_pick_among_failed_members_is_the_rngs_and_reproducible() -> None:
    records = table(record("me", STATUS_ALIVE), *(record(f"f{i}", STATUS_FAILED) for i in range(5)))
    first = [reconnect_candidate(records, random.Random(s)) for s in range(30)]
    again = [reconnect_candidate(dict(reversed(list(records.items()))), random.Random(s)) for s in range(30)]
    assert [r.member.name if r else None for r in first] == [r.member.name if r else None for r in again]
    assert len({r.member.name for r in first if r is not None}) > 1


def test_when_every_other_member_failed_the_zero_guard_still_tries() -> None:
    # Only failed members in the table (we were reaped from our own view): alive = 0 counts as 1.
    records = table(record("f1", STATUS_FAILED), record("f2", STATUS_FAILED))
    assert reconnect_candidate(records, FixedRandom(0.999)) is not None


# --- reaping ------------------------------------------------------------------------------------


def test_failed_members_are_reaped_after_reconnect_timeout_and_not_at_it() -> None:
    records = table(record("me", STATUS_ALIVE, since=0), record("f", STATUS_FAILED, since=100.0))
    assert reap(records, now=100.0 + 8 * HOUR, reconnect_timeout_s=8 * HOUR) == []  # exactly at it
    assert "f" in records
    gone = reap(records, now=100.0 + 8 * HOUR + 0.001, reconnect_timeout_s=8 * HOUR)
    assert [r.member.name for r in gone] == ["f"]
    assert list(records) == ["me"]


def test_left_members_are_kept_for_the_tombstone_time_not_the_reconnect_timeout() -> None:
    records = table(record("l", STATUS_LEFT, since=0.0), record("f", STATUS_FAILED, since=0.0))
    gone = reap(records, now=9 * HOUR, reconnect_timeout_s=8 * HOUR)
    assert [r.member.name for r in gone] == ["f"]
    assert reap(records, now=23 * HOUR, reconnect_timeout_s=8 * HOUR) == []
    assert [r.member.name for r in reap(records, now=24 * HOUR + 1, reconnect_timeout_s=8 * HOUR)] == ["l"]


def test_alive_and_leaving_members_are_never_reaped() -> None:
    records = table(record("a", STATUS_ALIVE, since=0.0), record("g", STATUS_LEAVING, since=0.0))
    assert reap(records, now=1e9, reconnect_timeout_s=1.0, tombstone_timeout_s=1.0) == []
    assert sorted(records) == ["a", "g"]


def test_an_advertised_reconnect_timeout_replaces_ours_for_that_member() -> None:
    records = table(
        record("short", STATUS_FAILED, since=0.0, rc_tm="5s"),
        record("plain", STATUS_FAILED, since=0.0),
        record("left-short", STATUS_LEFT, since=0.0, rc_tm="1m0s"),
    )
    gone = reap(records, now=61.0, reconnect_timeout_s=72 * HOUR)
    # serf applies the override to the left list too (Consul's reconnect override sees both).
    assert [r.member.name for r in gone] == ["left-short", "short"]
    assert list(records) == ["plain"]


@pytest.mark.parametrize("value", ["0", "0s", "soon", ""])
def test_a_zero_or_malformed_advertised_timeout_falls_back_to_ours(value: str) -> None:
    rec = record("x", STATUS_FAILED, rc_tm=value)
    assert member_timeout(rec, 8 * HOUR) == 8 * HOUR


# --- the loop around the policy -------------------------------------------------------------------


def test_a_reconnect_pass_joins_the_failed_members_gossip_address() -> None:
    records = table(record("me", STATUS_ALIVE), record("b", STATUS_FAILED, port=8302))
    joined: list[str] = []

    async def join(addr: str) -> int:
        joined.append(addr)
        return 0  # nobody answered: the member stays failed, the next pass tries again

    rc = Reconnector("LAN", records, join, lambda: 30.0, lambda: 8 * HOUR, rng=FixedRandom(0.5))
    assert asyncio.run(rc.reconnect_once()) is True
    host = records["b"].member.addr[0]
    assert joined == [f"{host}:8302"]
    assert records["b"].status == STATUS_FAILED


def test_a_failing_join_does_not_break_the_loop() -> None:
    async def join(addr: str) -> int:
        raise ConnectionRefusedError(addr)

    records = table(record("me", STATUS_ALIVE), record("b", STATUS_FAILED))
    rc = Reconnector("LAN", records, join, lambda: 30.0, lambda: 8 * HOUR, rng=FixedRandom(0.0))
    assert asyncio.run(rc.reconnect_once()) is True
    assert asyncio.run(Reconnector("LAN", table(record("me", STATUS_ALIVE)), join, lambda: 30.0,
                                   lambda: 8 * HOUR).reconnect_once()) is False


def test_the_reconnect_loop_runs_every_interval() -> None:
    records = table(record("me", STATUS_ALIVE), record("b", STATUS_FAILED))
    attempts: list[str] = []

    async def scenario() -> None:
        async def join(addr: str) -> int:
            attempts.append(addr)
            return 1

        tasks: list[asyncio.Task[None]] = []
        Reconnector("LAN", records, join, lambda: 0.01, lambda: 8 * HOUR, reap_interval_s=3600).start(tasks)
        async with asyncio.timeout(30):
            while len(attempts) < 3:
                await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())
    assert len(attempts) >= 3


def test_a_reap_pass_uses_the_injected_clock_and_reports_each_reaped_member() -> None:
    now = [1000.0]
    records = table(record("me", STATUS_ALIVE), record("f", STATUS_FAILED, since=1000.0))
    reaped: list[str] = []

    async def join(addr: str) -> int:
        return 0

    timeout = [8 * HOUR]
    rc = Reconnector("LAN", records, join, lambda: 30.0, lambda: timeout[0],
                     on_reap=lambda rec: reaped.append(rec.member.name), clock=lambda: now[0])
    now[0] += 8 * HOUR
    assert rc.reap_once() == [] and reaped == []
    now[0] += 1
    assert [r.member.name for r in rc.reap_once()] == ["f"]
    assert reaped == ["f"] and "f" not in records


# --- configuration -------------------------------------------------------------------------------


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interfaces, "hostname", lambda: "testhost")
    monkeypatch.setattr(interfaces, "interface_addresses", lambda: [("lo", "127.0.0.1"), ("eth0", "10.1.2.3")])


def _load(tmp_path: Path, body: dict[str, object], *flags: str) -> config.RuntimeConfig:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(body))
    return load(["-data-dir", str(tmp_path / "d"), "-config-file", str(path), *flags]).config


def _errors(tmp_path: Path, body: dict[str, object], *flags: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, body, *flags)
    return info.value.errors


def test_defaults_match_serf_and_consul(host: None, tmp_path: Path) -> None:
    cfg = _load(tmp_path, {})
    assert cfg.reconnect_interval_s == 30.0
    assert cfg.reconnect_timeout_s == cfg.reconnect_timeout_wan_s == 72 * HOUR
    assert cfg.advertise_reconnect_timeout_s == 0.0


def test_reconnect_keys_parse(host: None, tmp_path: Path) -> None:
    cfg = _load(tmp_path, {"reconnect_timeout": "8h", "reconnect_timeout_wan": "10h",
                           "reconnect_interval": "1s", "advertise_reconnect_timeout": "5m"})
    assert (cfg.reconnect_timeout_s, cfg.reconnect_timeout_wan_s) == (8 * HOUR, 10 * HOUR)
    assert cfg.reconnect_interval_s == 1.0 and cfg.advertise_reconnect_timeout_s == 300.0


def test_reconnect_timeouts_below_eight_hours_are_refused(host: None, tmp_path: Path) -> None:
    errs = _errors(tmp_path, {"reconnect_timeout": "7h59m", "reconnect_timeout_wan": "1h"})
    assert any("reconnect_timeout: reconnect_timeout must be >= 8h" in e for e in errs)
    assert any("reconnect_timeout_wan: reconnect_timeout_wan must be >= 8h" in e for e in errs)


def test_advertise_reconnect_timeout_is_for_clients_only(host: None, tmp_path: Path) -> None:
    errs = _errors(tmp_path, {"advertise_reconnect_timeout": "1m", "server": True})
    assert any("advertise_reconnect_timeout can only be used on a client" in e for e in errs)
    # No 8h floor: a short-lived client may ask to be forgotten quickly.
    assert _load(tmp_path, {"advertise_reconnect_timeout": "5s"}).advertise_reconnect_timeout_s == 5.0


def test_reconnect_interval_must_be_positive(host: None, tmp_path: Path) -> None:
    errs = _errors(tmp_path, {"reconnect_interval": "0s"})
    assert any("reconnect_interval must be positive" in e for e in errs)


def test_a_reload_of_reconnect_settings_reaches_the_pools() -> None:
    """The pools read the agent's config as it is now (not a copy taken at start), and the
    reconnect settings are reloadable, so SIGHUP changes the reconnect loop and the reaper."""
    from dataclasses import replace
    from types import SimpleNamespace

    from proconsul.config import RuntimeConfig, diff
    from proconsul.serf.lan import Membership

    old = RuntimeConfig()
    new = replace(old, reconnect_timeout_s=9 * 3600.0, reconnect_timeout_wan_s=10 * 3600.0, reconnect_interval_s=5.0)
    reloadable, restart = diff(old, new)
    assert sorted(reloadable) == ["reconnect_interval_s", "reconnect_timeout_s", "reconnect_timeout_wan_s"]
    assert restart == []
    agent = SimpleNamespace(config=old)
    pool = object.__new__(Membership)
    pool._config = lambda: agent.config  # how the agent builds its pools
    assert pool.config.reconnect_timeout_s == old.reconnect_timeout_s
    agent.config = new  # what Agent._reload_config does
    assert (pool.config.reconnect_timeout_s, pool.config.reconnect_interval_s) == (9 * 3600.0, 5.0)
