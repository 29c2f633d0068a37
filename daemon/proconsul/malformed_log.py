"""Rate-limited, traceback-free log lines for malformed traffic from the network.

Owns the one logging filter that keeps hostile or broken clients from filling the log: every
record about input the agent refused (aiohttp's "Error handling request" for a request it could
not parse, and our own lines logged with `extra=MALFORMED`) is reduced to one line without a
traceback, and each kind (logger and message template) passes at most once per interval; the
next one that passes says how many were suppressed meanwhile. A fuzzer sending 22,000 bad
requests then costs a few lines per minute, not megabytes of tracebacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

# Pass as `extra=` on a log call about refused peer input to have it rate-limited.
MALFORMED = {"malformed_traffic": True}

_DECISION = "_malformed_decision"  # cached on the record: several handlers share one filter


def _is_malformed(record: logging.LogRecord) -> bool:
    if getattr(record, "malformed_traffic", False):
        return True
    if record.name == "aiohttp.server" and record.exc_info and record.exc_info[1] is not None:
        # Imported here: this leaf module is loaded by the CLI too, which must not pay for aiohttp.
        from aiohttp.http_exceptions import HttpProcessingError

        return isinstance(record.exc_info[1], HttpProcessingError)
    return False


class MalformedTrafficFilter(logging.Filter):
    """Install on every handler (one shared instance); see the module docstring."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] | None = None) -> None:
        super().__init__()
        if clock is None:
            # Imported here so the sans-I/O cores can import MALFORMED from this module.
            import time

            clock = time.monotonic
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        decision = getattr(record, _DECISION, None)
        if decision is not None:
            return bool(decision)
        passed = self._decide(record)
        setattr(record, _DECISION, passed)
        return passed

    def _decide(self, record: logging.LogRecord) -> bool:
        if not _is_malformed(record):
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            # aiohttp's exception text quotes up to 100 bytes of the offending line over two lines.
            detail = " ".join(str(record.exc_info[1]).split())
            message = f"{message}: {type(record.exc_info[1]).__name__}: {detail[:160]}"
        if suppressed:
            message += f" ({suppressed} similar suppressed in the last {self.interval_s:g}s)"
        record.msg, record.args = message, ()
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
