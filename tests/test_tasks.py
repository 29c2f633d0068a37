"""The shared task helpers: a stop never lost, whatever the interleaving."""

from __future__ import annotations

import asyncio

import pytest
from proconsul.tasks import cancel_and_wait, wait_event


async def _loop_until_cancelled(event: asyncio.Event, rounds: list[int]) -> None:
    while True:
        await wait_event(event, 3600)
        event.clear()
        rounds.append(1)


async def test_wait_event_reports_set_and_timeout() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True
    assert await wait_event(asyncio.Event(), -1) is False


@pytest.mark.parametrize("yields_before_cancel", range(4))
async def test_a_cancel_racing_the_event_still_stops_the_loop(yields_before_cancel: int) -> None:
    # The event is set and the task cancelled in the same loop iteration, after the task reached
    # its wait in different steps. asyncio.wait_for on 3.11 drops the cancellation in exactly this
    # interleaving, and the loop below then sleeps for an hour.
    event = asyncio.Event()
    rounds: list[int] = []
    task = asyncio.get_running_loop().create_task(_loop_until_cancelled(event, rounds))
    for _ in range(yields_before_cancel):
        await asyncio.sleep(0)
    event.set()
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.done(), "the cancellation was lost: the loop went round again"
    assert task.cancelled()
    await cancel_and_wait([task])

