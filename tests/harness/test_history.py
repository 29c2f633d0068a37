"""History recording: invoke then exactly one outcome, thread safety, JSON round trip."""

from __future__ import annotations

import json
import threading

import pytest
from proconsul_sim.history import FAIL, INFO, INVOKE, OK, History, Op


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_invoke_then_outcomes_record_times_results_and_errors():
    clock = FakeClock()
    h = History(clock)
    w = h.invoke(1, "write", "k", "a", consistency="consistent", node="n2")
    r = h.invoke(2, "read", "k")
    c = h.invoke(3, "cas", "k", ("a", "b"))
    t = h.invoke(4, "write", "k", "z")
    assert w.type == INVOKE and w.start == 0.0 and w.end is None
    clock.now = 0.25
    h.ok(w)
    h.ok(r, "a")
    h.fail(c, "cas index mismatch")
    clock.now = 1.5
    h.info(t, "timeout after 1s")
    assert (w.type, w.value, w.end, w.latency) == (OK, "a", 0.25, 0.25)
    assert w.extra == {"consistency": "consistent", "node": "n2"}
    assert (r.type, r.value) == (OK, "a")
    assert (c.type, c.error, c.value) == (FAIL, "cas index mismatch", ("a", "b"))
    assert (t.type, t.error, t.end) == (INFO, "timeout after 1s", 1.5)
    assert h.ops == [w, r, c, t] and len(h) == 4 and h.completed() == [w, r, c, t]


def test_cas_answer_keeps_the_expected_new_pair():
    h = History(FakeClock())
    c = h.invoke(1, "cas", "k", ("a", "b"))
    h.ok(c, False)
    assert c.value == ("a", "b") and c.extra["result"] is False and c.type == OK


def test_completing_twice_is_an_error():
    h = History(FakeClock())
    op = h.invoke(1, "write", "k", "a")
    h.ok(op)
    with pytest.raises(ValueError, match="completed twice"):
        h.info(op, "late timeout")


def test_default_clock_is_monotonic_seconds_since_creation():
    h = History()
    a = h.invoke(1, "read", "k")
    h.ok(a, None)
    assert 0 <= a.start <= a.end < 60


def test_concurrent_workers_lose_no_operation():
    h = History()

    def worker(p: int) -> None:
        for i in range(500):
            op = h.invoke(p, "add", "s", (p, i))
            (h.ok if i % 3 else h.info)(op, *(() if i % 3 else ("timeout",)))

    threads = [threading.Thread(target=worker, args=(p,)) for p in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(h.ops) == 4000
    assert len({(o.process, o.value) for o in h.ops}) == 4000
    assert all(o.type in (OK, INFO) for o in h.ops)
    starts = [o.start for o in h.ops]
    assert starts == sorted(starts)  # appended in invocation order


def test_json_round_trip_keeps_every_field():
    clock = FakeClock()
    h = History(clock)
    a = h.invoke(1, "cas", "k", (None, "x"), node="n1")
    b = h.invoke(2, "read-all", "s")
    clock.now = 2.0
    h.ok(a)
    h.ok(b, {3, 1, 2})
    data = json.loads(json.dumps(h.to_json()))
    assert data[1]["value"] == [1, 2, 3]  # a set is written sorted
    again = History.from_json(data)
    assert again.ops[0] == Op(1, "cas", "k", (None, "x"), OK, 0.0, 2.0, None, {"node": "n1"})
    assert again.ops[1].value == [1, 2, 3] and again.ops[1].end == 2.0
