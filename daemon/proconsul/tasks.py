"""Stopping the background tasks a component owns, waiting in them without losing a stop, and
announcing work that deliberately holds the event loop.

Components keep their loops in a list of tasks and, when they stop, cancel them and wait for
each to end: :func:`cancel_and_wait` is that shutdown, written once. Their loops wait for an
event or a timeout with :func:`wait_event`, because `asyncio.wait_for` on Python 3.11 drops a
cancellation that arrives just as the event is set (CPython gh-86296): the loop goes round
again, and its owner's stop hangs until the next timeout, or for ever.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until `event` is set or `timeout_s` passes; True if it was set.

    A cancellation always propagates (see the module docstring).
    """
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(max(0.0, timeout_s)):
            await event.wait()
        return True
    except TimeoutError:
        return False


# Work that holds the event loop on purpose (a snapshot restore replaces the whole state in one
# go): token -> (what, monotonic start). Read from the systemd watchdog's thread, hence the lock.
_blocking_lock = threading.Lock()
_blocking: dict[int, tuple[str, float]] = {}
_blocking_ids = itertools.count()


@contextmanager
def blocking_work(what: str) -> Iterator[None]:
    """Mark a stretch of work that keeps the event loop busy for a long time by design, so the
    systemd watchdog is pet from its own thread meanwhile (`proconsul.agent.systemd`) instead of
    restarting a healthy server in the middle of a large restore."""
    token = next(_blocking_ids)
    with _blocking_lock:
        _blocking[token] = (what, time.monotonic())
    try:
        yield
    finally:
        with _blocking_lock:
            _blocking.pop(token, None)


def blocking_work_in_progress() -> tuple[str, float] | None:
    """The oldest declared blocking work still running: (what, seconds so far), or None."""
    with _blocking_lock:
        if not _blocking:
            return None
        what, start = min(_blocking.values(), key=lambda item: item[1])
    return what, time.monotonic() - start


# Threads building a large long-lived structure with the cyclic collector paused (see below).
_collector_lock = threading.Lock()
_collector_pausers = 0


@contextmanager
def collector_paused() -> Iterator[None]:
    """Build a large long-lived structure (a decoded snapshot, in a worker thread) without the
    cyclic garbage collector's full passes, then move everything alive into its permanent
    generation (`gc.freeze`).

    Decoding a second copy of a 10,000-node state triggered several full collections, each run
    by whichever thread allocated, holding the GIL: 0.3-1.9 s loop stalls on a loaded 2-core box
    (issue 16). Frozen objects are still freed by reference counting (records hold no cycles);
    later full passes then skip the state and stay short. Concurrent uses nest.
    """
    global _collector_pausers
    with _collector_lock:
        _collector_pausers += 1
        gc.disable()
    try:
        yield
    finally:
        with _collector_lock:
            _collector_pausers -= 1
            if _collector_pausers == 0:
                gc.freeze()
                gc.enable()
