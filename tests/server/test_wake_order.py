"""server/rpc.py's wake-up order: a shared answer wakes its awaiting readers (forwarded calls'
handlers among them) before the fast path's ParkedReads, whatever order they joined in."""

from __future__ import annotations

import asyncio
from typing import Any

from proconsul.server.rpc import WAKE_BATCH, ParkedRead, wake_in_batches, wake_order


async def test_a_future_that_joined_after_many_parked_reads_is_woken_in_the_first_batch() -> None:
    loop = asyncio.get_running_loop()
    answered: list[int] = []

    def on_done(k: int, _outcome: Any) -> None:
        answered.append(k)

    readers = [ParkedRead(None, on_done, k) for k in range(3 * WAKE_BATCH)]  # type: ignore[arg-type]
    late: asyncio.Future[None] = loop.create_future()
    table: dict[Any, None] = dict.fromkeys([*readers[:WAKE_BATCH], late, *readers[WAKE_BATCH:]])
    order = wake_order(table)
    assert order[0] is late and order[1:] == readers
    wake_in_batches(order)
    assert late.done()  # first batch, at once
    assert answered == list(range(WAKE_BATCH - 1))  # the rest of the first batch, in order
    while len(answered) < len(readers):
        await asyncio.sleep(0)
    assert answered == list(range(len(readers)))  # every reader, once, in joining order


def test_without_futures_the_order_is_the_tables() -> None:
    readers = [ParkedRead(None, lambda *_: None) for _ in range(5)]  # type: ignore[arg-type]
    assert wake_order(dict.fromkeys(readers)) == readers
