"""server/deadlines.py: one loop timer for many deadlines, driven by a fake loop (deterministic)."""

from __future__ import annotations

import heapq
from typing import Any

from proconsul.server.deadlines import RESOLUTION_S, Deadlines


class _Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """`time()` and `call_at()`: timers run when `advance` passes their time, in time order."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._timers: list[tuple[float, int, Any, _Handle]] = []
        self._seq = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any) -> _Handle:
        handle = _Handle()
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, callback, handle))
        return handle

    def pending(self) -> int:
        return sum(1 for t in self._timers if not t[3].cancelled)

    def advance(self, to: float) -> None:
        while self._timers and self._timers[0][0] <= to:
            when, _, callback, handle = heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            self.now = max(self.now, when)
            callback()
        self.now = to


class Item:
    def __init__(self, loop: FakeLoop, due: float, log: list[tuple[str, float]], name: str) -> None:
        self.loop, self.due, self.log, self.name = loop, due, log, name
        self.then: Any = None  # called on expiry (to ask for another deadline)

    def deadline_expired(self, now: float) -> None:
        self.log.append((self.name, self.loop.time()))
        assert now >= self.due
        if self.then is not None:
            self.then(self)


def test_each_item_expires_once_at_or_after_its_due_time_and_removed_ones_never() -> None:
    loop = FakeLoop()
    table = Deadlines(loop)  # type: ignore[arg-type]
    log: list[tuple[str, float]] = []
    items = [Item(loop, loop.now + d, log, f"i{k}") for k, d in enumerate([5.0, 0.5, 0.5, 0.004, 3.0, 3.0001, 9.0])]
    slots = {it.name: table.add(it, it.due) for it in items}
    table.remove(items[4], slots["i4"])
    table.remove(items[6], slots["i6"])
    assert len(table) == 5
    assert loop.pending() == 1  # one loop timer, whatever the number of deadlines
    loop.advance(loop.now + 20)
    names = [n for n, _ in log]
    assert sorted(names) == ["i0", "i1", "i2", "i3", "i5"]
    assert names.index("i3") < names.index("i1") < names.index("i5") < names.index("i0")
    due = {it.name: it.due for it in items}
    for name, at in log:
        assert due[name] <= at <= due[name] + RESOLUTION_S
    assert len(table) == 0 and loop.pending() == 0


def test_an_item_moving_its_deadline_later_while_expiring_does_not_delay_earlier_ones() -> None:
    # (The table once armed its timer for such an item's far slot, leaving an earlier slot waiting.)
    loop = FakeLoop()
    table = Deadlines(loop)  # type: ignore[arg-type]
    log: list[tuple[str, float]] = []
    mover = Item(loop, loop.now + 0.3, log, "mover")
    mover.then = lambda it: table.add(it, it.loop.time() + 86400.0)
    early = Item(loop, loop.now + 2.0, log, "early")
    table.add(mover, mover.due)
    table.add(early, early.due)
    loop.advance(loop.now + 10)
    assert [n for n, _ in log] == ["mover", "early"]
    assert log[1][1] <= early.due + RESOLUTION_S


def test_an_item_re_added_to_a_due_slot_while_firing_expires_on_the_next_timer_not_in_a_loop() -> None:
    loop = FakeLoop()
    table = Deadlines(loop)  # type: ignore[arg-type]
    log: list[tuple[str, float]] = []
    again = Item(loop, loop.now + 1.0, log, "again")
    # Asks for a deadline already due: it must come back once, from a new timer.
    again.then = lambda it: (setattr(it, "then", None), table.add(it, it.loop.time() - 1.0))
    table.add(again, again.due)
    loop.advance(loop.now + 5)
    assert [n for n, _ in log] == ["again", "again"]


def test_many_items_in_one_slot_and_an_item_added_twice_expire_once_each() -> None:
    loop = FakeLoop()
    table = Deadlines(loop)  # type: ignore[arg-type]
    log: list[tuple[str, float]] = []
    due = loop.now + 1.0
    items = [Item(loop, due, log, f"i{k}") for k in range(50)]
    slot = 0
    for it in items:
        slot = table.add(it, due)
    table.add(items[0], due)  # already there: still once
    table.remove(items[1], slot)
    assert len(table) == 49
    loop.advance(due + 1)
    assert sorted(n for n, _ in log) == sorted(f"i{k}" for k in range(50) if k != 1)
