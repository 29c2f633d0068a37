"""The malformed-traffic log filter: one line per kind and interval, never a traceback."""

from __future__ import annotations

import logging
import sys

from aiohttp.http_exceptions import LineTooLong
from proconsul.malformed_log import MALFORMED, MalformedTrafficFilter


def _record(msg: str, *args: object, name: str = "proconsul.gossip.core", exc: BaseException | None = None,
            extra: dict[str, object] | None = None, level: int = logging.WARNING) -> logging.LogRecord:
    exc_info = None
    if exc is not None:
        try:
            raise exc
        except BaseException:
            exc_info = sys.exc_info()
    record = logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)
    for key, value in (extra or {}).items():
        setattr(record, key, value)
    return record


def test_each_kind_passes_once_per_interval_and_counts_the_rest() -> None:
    now = [0.0]
    filt = MalformedTrafficFilter(interval_s=10.0, clock=lambda: now[0])
    template = "gossip: dropping packet from %s:%d: %s"
    passed = [filt.filter(_record(template, "127.0.0.1", i, "junk", extra=MALFORMED)) for i in range(100)]
    assert passed == [True] + [False] * 99
    # Another kind is not held back by the first.
    assert filt.filter(_record("raft: dropping undecodable message: %s", "x", extra=MALFORMED))
    # Ordinary records always pass, untouched.
    assert all(filt.filter(_record("agent: synced %d", i)) for i in range(5))
    now[0] = 10.0
    summary = _record(template, "127.0.0.1", 1000, "junk", extra=MALFORMED)
    assert filt.filter(summary)
    assert summary.getMessage() == "gossip: dropping packet from 127.0.0.1:1000: junk (99 similar suppressed in the last 10s)"


def test_aiohttp_bad_request_errors_become_one_line_without_traceback() -> None:
    filt = MalformedTrafficFilter(interval_s=60.0, clock=lambda: 0.0)
    first = _record("Error handling request from %s", "127.0.0.1", name="aiohttp.server", level=logging.ERROR,
                    exc=LineTooLong("/" + "a" * 100_000, "8190"))
    assert filt.filter(first)
    assert first.exc_info is None and first.levelname == "WARNING"
    text = logging.Formatter().format(first)
    assert "\n" not in text and "Traceback" not in text and len(text) < 400, text
    assert text.startswith("Error handling request from 127.0.0.1: LineTooLong"), text
    # A second handler sees the same decision; the next such record is suppressed.
    assert filt.filter(first)
    again = _record("Error handling request from %s", "127.0.0.1", name="aiohttp.server", level=logging.ERROR,
                    exc=LineTooLong("/b", "8190"))
    assert not filt.filter(again)
    # An unexpected exception in aiohttp is not malformed traffic: kept with its traceback.
    bug = _record("Error handling request", name="aiohttp.server", level=logging.ERROR, exc=KeyError("x"))
    assert filt.filter(bug) and bug.exc_info is not None
