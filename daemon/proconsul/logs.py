"""Logging set-up: level names as Consul spells them, stderr output, optional syslog.

Owns turning `log_level`, `log_json`, `enable_syslog` and `syslog_facility` into handlers on the
root logger, and changing the level on reload. The host-package issue adds journald fields and
`log_file` rotation here.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from typing import Any

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

_LEVELS = {"TRACE": TRACE, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
           "WARNING": logging.WARNING, "ERR": logging.ERROR, "ERROR": logging.ERROR}


def level_number(name: str) -> int:
    return _LEVELS.get(name.upper(), logging.INFO)


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "@timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "@level": record.levelname.lower(),
            "@module": record.name,
            "@message": record.getMessage(),
        }
        if record.exc_info:
            out["@error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup(level: str, json_output: bool = False, syslog: bool = False, facility: str = "LOCAL0") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    if json_output:
        stream.setFormatter(_JSONFormatter())
    else:
        stream.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
    root.addHandler(stream)
    if syslog and os.path.exists("/dev/log"):
        code = logging.handlers.SysLogHandler.facility_names.get(facility.lower(), logging.handlers.SysLogHandler.LOG_LOCAL0)
        handler = logging.handlers.SysLogHandler(address="/dev/log", facility=code)
        handler.setFormatter(logging.Formatter("proconsul[%(process)d]: [%(levelname)s] %(name)s: %(message)s"))
        root.addHandler(handler)
    set_level(level)
    # aiohttp's access log is per request; keep it out of INFO (house rule: no hot-path logging).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level_number(level))
