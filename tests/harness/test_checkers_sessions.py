"""The read-your-writes and bounded-staleness checkers on hand-made chaos histories."""

from __future__ import annotations

import json

from history_builders import history, op, random_register_history
from proconsul_sim.checkers import check_bounded_staleness, check_read_your_writes
from proconsul_sim.history import INFO


def ryw(*ops) -> bool | str:
    return check_read_your_writes(history(*ops)).valid


def read(process: int, value, start: float, end: float, mode: str = "default", **extra):
    return op(process, "read", value, start, end, mode=mode, **extra)


# ------------------------------------------------------------------------- read-your-writes


def test_a_process_sees_its_own_write_or_a_later_one():
    assert ryw(op(1, "write", 1, 0, 1), read(1, 1, 2, 3)) is True
    # Another process wrote after the acknowledgement: a later value is fine.
    assert ryw(op(1, "write", 1, 0, 1), op(2, "write", 2, 1.5, 1.8), read(1, 2, 2, 3)) is True
    # A concurrent write's value may be after ours: the history does not prove it older.
    assert ryw(op(2, "write", 2, 0, 5), op(1, "write", 1, 0.5, 1), read(1, 2, 2, 3)) is True


def test_reading_an_older_value_or_nothing_after_an_acknowledged_write_is_a_violation():
    res = check_read_your_writes(history(op(2, "write", 5, 0, 0.5), op(1, "write", 6, 1, 2),
                                         read(1, 5, 3, 4, node="s2")))
    assert res.valid is False
    (failure,) = res.details["failures"]
    assert failure["read"]["index"] == 2 and failure["own_write"]["index"] == 1
    assert failure["read_value_written_by"]["value"] == 5
    assert "process 1 read 5" in failure["summary"] and "through s2" in failure["summary"]
    json.dumps(res.to_json())
    assert ryw(op(1, "write", 6, 1, 2), read(1, None, 3, 4)) is False


def test_only_the_writing_process_and_only_after_the_acknowledgement():
    # Another process may read the old value (that is linearizability's business, with a bound).
    assert ryw(op(2, "write", 5, 0, 0.5), op(1, "write", 6, 1, 2), read(3, 5, 3, 4)) is True
    # A read sent before the acknowledgement arrived may miss the write.
    assert ryw(op(2, "write", 5, 0, 0.5), op(1, "write", 6, 1, 2), read(1, 5, 1.5, 4)) is True
    # An unacknowledged (info) write promises nothing; neither does a failed cas.
    assert ryw(op(2, "write", 5, 0, 0.5), op(1, "write", 6, 1, 2, INFO), read(1, 5, 3, 4)) is True
    assert ryw(op(2, "write", 5, 0, 0.5), op(1, "cas", (5, 6), 1, 2, result=False), read(1, 5, 3, 4)) is True
    # ?consistent and ?stale reads are not judged here (consistent ones are stronger anyway).
    assert ryw(op(2, "write", 5, 0, 0.5), op(1, "write", 6, 1, 2), read(1, 5, 3, 4, mode="stale")) is True


def test_a_successful_cas_orders_its_values():
    # 5 -> 6 by cas, then 6 -> 7 by this process's cas: reading 6 is older than 7 even though
    # every operation overlaps every other one in real time.
    h = [op(2, "write", 5, 0, 10), op(3, "cas", (5, 6), 0.1, 10, result=True),
         op(1, "cas", (6, 7), 0.2, 1, result=True)]
    assert ryw(*h, read(1, 7, 2, 3)) is True
    assert ryw(*h, read(1, 6, 2, 3)) is False
    assert ryw(*h, read(1, 5, 2, 3)) is False  # transitively older
    # Chains through real time and cas together: 4 acknowledged before 5 was sent.
    assert ryw(op(4, "write", 4, 0, 0.05), *h, read(1, 4, 2, 3)) is False


def test_keys_and_processes_are_independent():
    h = [op(1, "write", 1, 0, 1, key="a"), op(2, "write", 2, 1.5, 1.6, key="b"),
         read(1, None, 2, 3, key="b"), read(1, 1, 2, 3, key="a")]
    res = check_read_your_writes(history(*h))
    assert res.valid is True and res.details["reads_after_own_write"] == 1


def test_a_correct_register_history_passes():
    h = random_register_history(3, ops=4000)
    for o in h.ops:
        if o.f == "read":
            o.extra["mode"] = "default"
    res = check_read_your_writes(h)
    assert res.valid is True, res.details["failures"][:2]
    assert res.details["reads_after_own_write"] > 100


# ------------------------------------------------------------------------ bounded staleness


def stale(process: int, value, start: float, end: float, last_contact_ms: int | None):
    extra = {} if last_contact_ms is None else {"last_contact_ms": last_contact_ms}
    return read(process, value, start, end, mode="stale", known_leader=True, **extra)


def test_a_stale_read_may_be_as_old_as_its_last_contact_plus_the_slack():
    writes = [op(1, "write", 1, 0, 1), op(1, "write", 2, 2, 3)]
    # Value 1 was current until 2 was acknowledged at 3 s: a read sent at 8 s saw the register
    # as it was 5+ s before.
    assert check_bounded_staleness(history(*writes, stale(2, 1, 8, 8.1, 6000)), slack_s=0.5).valid is True
    res = check_bounded_staleness(history(*writes, stale(2, 1, 8, 8.1, 100)), slack_s=0.5)
    assert res.valid is False
    assert res.details["failures"][0]["cannot_place"]["value"] == 1
    assert res.details["stale_reads"] == 1 and res.details["max_last_contact_ms"] == 100
    # The slack alone covers a short lag.
    assert check_bounded_staleness(history(*writes, stale(2, 1, 3.5, 3.6, 0)), slack_s=1.0).valid is True


def test_a_stale_read_never_sees_the_future_or_a_value_never_written():
    writes = [op(1, "write", 1, 0, 1), op(1, "write", 2, 5, 6)]
    assert check_bounded_staleness(history(*writes, stale(2, 2, 2, 3, 60_000))).valid is False
    assert check_bounded_staleness(history(*writes, stale(2, 9, 7, 8, 60_000))).valid is False


def test_a_read_without_the_header_gets_the_fallback_bound_and_other_reads_are_ignored():
    writes = [op(1, "write", 1, 0, 1), op(1, "write", 2, 2, 3)]
    assert check_bounded_staleness(history(*writes, stale(2, 1, 4, 4.1, None)),
                                   missing_header_bound_s=3.0).valid is True
    assert check_bounded_staleness(history(*writes, stale(2, 1, 7, 7.1, None)),
                                   missing_header_bound_s=3.0).valid is False
    # A stale default read is not this checker's to judge.
    assert check_bounded_staleness(history(*writes, read(2, 1, 9, 9.1))).valid is True
