"""Client server choice (Consul's router manager policy) with an injected RNG and clock."""

from __future__ import annotations

import random

import pytest
from proconsul.server.server_manager import MIN_REUSE_S, ServerList, rebalance_interval


class FixedRandom(random.Random):
    """random() always returns ``value``; shuffle reverses, so the effect is visible."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value

    def shuffle(self, x: list[str]) -> None:  # type: ignore[override]
        x.reverse()


def test_interval_has_a_floor_with_jitter() -> None:
    assert rebalance_interval(3, 10, FixedRandom(0.0)) == MIN_REUSE_S
    assert rebalance_interval(3, 10, FixedRandom(1.0)) == pytest.approx(MIN_REUSE_S * 1.5)


def test_interval_grows_with_cluster_size() -> None:
    # 3 servers take 192 new connections/s; 100,000 members need 520 s to rotate through.
    assert rebalance_interval(3, 100_000, FixedRandom(0.0)) == pytest.approx(100_000 / 192)
    assert rebalance_interval(0, 100, FixedRandom(0.0)) == MIN_REUSE_S  # no servers: no division by zero


def test_first_look_shuffles_then_sticks_until_the_timer() -> None:
    servers = ServerList(FixedRandom(0.0))
    servers.update(["a", "b", "c"])
    assert servers.maybe_rebalance(now=10.0, num_members=5)
    assert servers.candidates() == ["c", "b", "a"]
    assert servers.next_rebalance == 10.0 + MIN_REUSE_S
    assert not servers.maybe_rebalance(now=10.0 + MIN_REUSE_S - 0.001, num_members=5)
    assert servers.candidates() == ["c", "b", "a"]
    assert servers.maybe_rebalance(now=10.0 + MIN_REUSE_S, num_members=5)
    assert servers.candidates() == ["a", "b", "c"]


def test_failed_head_goes_to_the_end_others_do_not_move() -> None:
    servers = ServerList(FixedRandom(0.0))
    servers.update(["a", "b", "c"])
    servers.notify_failed("a")
    assert servers.candidates() == ["b", "c", "a"]
    servers.notify_failed("c")  # not the head: the order stays
    assert servers.candidates() == ["b", "c", "a"]
    lone = ServerList(FixedRandom(0.0))
    lone.update(["only"])
    lone.notify_failed("only")
    assert lone.candidates() == ["only"]


def test_gossip_updates_add_at_the_end_and_drop_gone_servers() -> None:
    servers = ServerList(FixedRandom(0.0))
    servers.update(["a", "b", "c"])
    servers.notify_failed("a")  # b, c, a
    servers.update(["a", "c", "d"])  # b failed or left; d joined
    assert servers.candidates() == ["c", "a", "d"]
    servers.update([])
    assert servers.candidates() == [] and not servers.maybe_rebalance(1e9, 3)
