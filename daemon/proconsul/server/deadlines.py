"""One event-loop timer for many deadlines: the parked blocking reads' waits and the HTTP
connections' header and keep-alive deadlines.

Owns a table of deadlines kept in slots of `RESOLUTION_S` (the item alone in its slot, or a set
of them; the slots in a heap) and the single loop timer armed for the earliest slot. At 10,000 watchers a timer per
parked read and two per connection were a third of the objects CPython's collector walks in a
complete scan (each `call_later` is a `TimerHandle`, uvloop's `UVTimer`, a copied `Context` and the
bound method it calls back: docs/PERFORMANCE.md, issue 16); here an item costs a place in a dict
or a set.

An item is any object with a `deadline_expired(now)` method; it is called once, at or after its
due time (at most one slot late), unless removed first. Several items may fall in one slot;
they are called in no particular order, each once. The table is per event loop, created lazily
(`for_loop`).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import weakref
from typing import Any

logger = logging.getLogger(__name__)

# Deadlines are rounded up to this: an item expires at most this much after its due time.
RESOLUTION_S = 0.01


class Deadlines:
    __slots__ = ("_loop", "_slots", "_heap", "_timer", "_timer_slot", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, Any] = {}  # slot -> the item due in it, or a set of them
        self._heap: list[int] = []  # the slots of `_slots`, each once
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot = -1

    def __len__(self) -> int:
        return sum(len(v) if type(v) is set else int(v is not None) for v in self._slots.values())

    @staticmethod
    def slot_of(due: float) -> int:
        return math.ceil(due / RESOLUTION_S)

    def add(self, item: Any, due: float) -> int:
        """Call `item.deadline_expired(now)` once `due` (loop time) has passed. Returns the slot,
        which `remove` needs."""
        slot = math.ceil(due / RESOLUTION_S)
        slots = self._slots
        if slot not in slots:
            # Alone in its slot: no set (most slots hold one item: a set each was a tracked object
            # per parked read).
            slots[slot] = item
            heapq.heappush(self._heap, slot)
            if self._timer is None or slot < self._timer_slot:
                self._arm(slot)
            return slot
        held = slots[slot]
        if type(held) is set:
            held.add(item)
        elif held is None:
            slots[slot] = item
        elif held is not item:
            slots[slot] = {held, item}
        return slot

    def remove(self, item: Any, slot: int) -> None:
        slots = self._slots
        held = slots.get(slot)
        # (An emptied slot stays in the heap, None, until its time comes.)
        if held is item:
            slots[slot] = None
        elif type(held) is set:
            held.discard(item)

    def _arm(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_slot = slot
        self._timer = self._loop.call_at(slot * RESOLUTION_S, self._fire)

    def _fire(self) -> None:
        self._timer = None
        heap = self._heap
        # The loop may run a timer up to its clock resolution early: a slot this close is due.
        limit = math.floor((self._loop.time() + RESOLUTION_S / 2) / RESOLUTION_S)
        due: list[Any] = []
        while heap and heap[0] <= limit:
            held = self._slots.pop(heapq.heappop(heap))
            if type(held) is set:
                due.extend(held)
            elif held is not None:
                due.append(held)
        # Items see the time of the last slot taken, at or past each one's due time, so one that
        # moves its deadline later always lands in a slot after these (never fired again now).
        now = limit * RESOLUTION_S
        for item in due:
            try:
                item.deadline_expired(now)
            except Exception:  # one item's failure must not keep the rest waiting
                logger.exception("deadlines: an expiry failed")
        # (An item that asked for a new deadline meanwhile may have armed the timer for its own
        # slot, not the earliest.)
        if heap and (self._timer is None or self._timer_slot != heap[0]):
            self._arm(heap[0])


_TABLES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = weakref.WeakKeyDictionary()


def for_loop(loop: asyncio.AbstractEventLoop) -> Deadlines:
    """The deadline table of `loop` (one per loop, made on first use)."""
    table = _TABLES.get(loop)
    if table is None:
        table = _TABLES[loop] = Deadlines(loop)
    return table
