"""GracefulLeave's steps and bounds, on stand-in agent parts (the real processes are in
tests/integration/test_graceful_leave.py): who leaves Raft, the order of the steps, the drain
only on servers, and the graceful timeout."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from proconsul.agent import leave as leavemod
from proconsul.agent.leave import GracefulLeave


class Steps:
    def __init__(self) -> None:
        self.done: list[str] = []


def _leave(steps: Steps, *, server: bool, voters: tuple[str, ...] = (), gossip_hangs: bool = False,
           remove_fails: bool | int = False, drain_s: float = 0.0, leader: bool = False) -> GracefulLeave:
    """`remove_fails`: True refuses every removal; a number refuses that many, then accepts."""
    refusals = [0]

    async def remove_peer(peer_id: str = "", address: str = "") -> None:
        steps.done.append(f"raft-remove:{peer_id}")
        if remove_fails is True or refusals[0] < int(remove_fails):
            refusals[0] += 1
            raise RuntimeError("raft: cannot remove me: leader has not committed an entry of its term yet")

    async def gossip_leave() -> None:
        steps.done.append("gossip-leave")
        if gossip_hangs:
            await asyncio.Event().wait()

    async def transfer_leadership(timeout_s: float) -> str | None:
        steps.done.append("transfer")
        return "a"

    raft = None
    if server:
        config = SimpleNamespace(voters=set(voters), members=lambda: sorted(voters))
        raft = SimpleNamespace(core=SimpleNamespace(config=config), is_leader=lambda: leader, tick_s=0.1,
                               election_tick=10, transfer_leadership=transfer_leadership)
    return GracefulLeave(
        "me",
        SimpleNamespace(server=server, performance=SimpleNamespace(leave_drain_time_s=drain_s)),
        lan=SimpleNamespace(leave=gossip_leave),
        raft=raft,
        remove_peer=lambda peer_id: remove_peer(peer_id=peer_id),
    )


def test_a_server_among_others_leaves_raft_before_gossip() -> None:
    steps = Steps()
    leave = _leave(steps, server=True, voters=("me", "a", "b"))
    assert asyncio.run(leave.run()) is True
    assert steps.done == ["raft-remove:me", "gossip-leave"]
    assert leave.done.is_set() and leave.completed


def test_a_leader_hands_leadership_over_before_its_removal() -> None:
    steps = Steps()
    assert asyncio.run(_leave(steps, server=True, voters=("me", "a", "b"), leader=True).run())
    assert steps.done == ["transfer", "raft-remove:me", "gossip-leave"]


def test_the_last_server_and_clients_only_leave_gossip() -> None:
    last, client = Steps(), Steps()
    assert asyncio.run(_leave(last, server=True, voters=("me",)).run())
    assert asyncio.run(_leave(client, server=False).run())
    assert last.done == ["gossip-leave"] and client.done == ["gossip-leave"]


def test_a_failed_raft_removal_still_leaves_gossip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leavemod, "RAFT_REMOVE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(leavemod, "RAFT_REMOVE_RETRY_S", 0.01)
    steps = Steps()
    assert asyncio.run(_leave(steps, server=True, voters=("me", "a"), remove_fails=True).run())
    assert steps.done[-1] == "gossip-leave"
    assert set(steps.done[:-1]) == {"raft-remove:me"} and len(steps.done) > 2  # retried until the deadline


def test_a_refused_raft_removal_is_retried_until_accepted(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    # Right after a leadership transfer the new leader refuses configuration changes until it
    # has committed an entry of its term; the leaving server must not give up on the first no.
    monkeypatch.setattr(leavemod, "RAFT_REMOVE_RETRY_S", 0.01)
    steps = Steps()
    caplog.set_level("INFO")
    assert asyncio.run(_leave(steps, server=True, voters=("me", "a"), remove_fails=3).run())
    assert steps.done == ["raft-remove:me"] * 4 + ["gossip-leave"]
    assert "left the Raft configuration" in caplog.text


def test_only_servers_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, *args: Any) -> Any:
        slept.append(delay)
        return await real_sleep(0)

    monkeypatch.setattr(leavemod.asyncio, "sleep", sleep)
    asyncio.run(_leave(Steps(), server=False, drain_s=5.0).run())
    assert slept == []
    asyncio.run(_leave(Steps(), server=True, voters=("me",), drain_s=5.0).run())
    assert slept == [5.0]


def test_past_the_graceful_timeout_the_leave_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leavemod, "GRACEFUL_LEAVE_TIMEOUT_S", 0.2)
    steps = Steps()
    leave = _leave(steps, server=False, gossip_hangs=True)
    assert asyncio.run(leave.run()) is False
    assert leave.done.is_set() and not leave.completed
