"""Stopping the background tasks a component owns.

Components keep their loops in a list of tasks and, when they stop, cancel them and wait for
each to end: :func:`cancel_and_wait` is that shutdown, written once.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel every task in `tasks`, then wait for each to finish.

    What a task ends with (its cancellation, or an error it raised meanwhile) is dropped: its
    owner is stopping and has nothing left to do with it. The list is walked as it stands, so a
    task appended while an earlier one is awaited is awaited too.
    """
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
