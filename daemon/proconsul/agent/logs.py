"""Logging set-up: level names as Consul spells them; stderr, journal, syslog and file outputs.

Owns turning `log_level`, `log_json`, `enable_syslog`, `syslog_facility`, `log_file` and
`log_rotate_*` into handlers on the root logger, and changing the level on reload.

- stderr: plain lines, or JSON with `log_json`. Under systemd (stderr is the journal stream that
  `JOURNAL_STREAM` names) lines go to the journal instead, with structured fields
  (`PRIORITY`, `SYSLOG_IDENTIFIER=proconsul`, `CODE_*`, `LOGGER`, `PROCONSUL_MODULE`) through
  python-systemd when it is importable; without it, stderr lines carry `<N>` priority prefixes
  that journald reads.
- syslog: RFC 3164 datagrams to the local socket, tag `proconsul`, facility `syslog_facility`.
  The socket is `/dev/log`; the environment variable `PROCONSUL_SYSLOG_SOCKET` replaces it (an
  internal knob for tests and unusual hosts; docs/packaging.md).
- file: `log_file` as Consul: a directory (ends in `/` or exists as one) gets `proconsul.log`
  inside; the active file keeps its name and a rotated one is renamed `<name>-<unix-ns>.log`,
  by size (`log_rotate_bytes`) or age (`log_rotate_duration`); `log_rotate_max_files` keeps that
  many rotated files (0 keeps all, -1 keeps none).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
import sys
import threading
import time
from typing import Any

from proconsul.http.monitor import HUB as LOG_MONITORS
from proconsul.malformed_log import MalformedTrafficFilter

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

_LEVELS = {"TRACE": TRACE, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
           "WARNING": logging.WARNING, "ERR": logging.ERROR, "ERROR": logging.ERROR}

SYSLOG_TAG = "proconsul"
SYSLOG_SOCKET_ENV = "PROCONSUL_SYSLOG_SOCKET"
_TEXT_FORMAT = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"

try:  # python-systemd (Debian: python3-systemd); optional, the journal path falls back to stderr
    from systemd import journal as _journal  # type: ignore[import-not-found,import-untyped,unused-ignore]
except ImportError:  # pragma: no cover - depends on the host
    _journal = None


def level_number(name: str) -> int:
    return _LEVELS.get(name.upper(), logging.INFO)


def _syslog_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


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


class _PriorityPrefix(logging.Formatter):
    """`<N>` sd-daemon prefixes so journald files each stderr line at its priority."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_syslog_priority(record.levelno)}>{self.inner.format(record)}"


def under_journal() -> bool:
    """True when stderr is the journal stream systemd connected (sd_journal_stream_fd's check)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream or ":" not in stream:
        return False
    try:
        dev, ino = (int(x) for x in stream.split(":", 1))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return st.st_dev == dev and st.st_ino == ino


class _JournalHandler(logging.Handler):
    """Structured journal entries through python-systemd's `journal.send`."""

    def __init__(self, json_output: bool) -> None:
        super().__init__()
        self.json_output = json_output

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            fields: dict[str, Any] = {
                "PRIORITY": str(_syslog_priority(record.levelno)),
                "SYSLOG_IDENTIFIER": SYSLOG_TAG,
                "LOGGER": record.name,
                "PROCONSUL_MODULE": record.name.split(".")[-1],
                "PROCONSUL_LEVEL": record.levelname,
                "CODE_FILE": record.pathname,
                "CODE_LINE": record.lineno,  # python-systemd formats it as an int
                "CODE_FUNC": record.funcName,
                "THREAD_NAME": record.threadName or "",
            }
            if record.exc_info:
                fields["EXCEPTION_TEXT"] = logging.Formatter().formatException(record.exc_info)
            assert _journal is not None
            _journal.send(message, **fields)
        except Exception:
            self.handleError(record)


class _SyslogHandler(logging.Handler):
    """RFC 3164 datagrams to a local syslog socket, reconnecting when the daemon restarts."""

    def __init__(self, address: str, facility: int) -> None:
        super().__init__()
        self.address = address
        self.facility = facility
        self.sock: socket.socket | None = None
        self._connect()

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            pri = self.facility * 8 + _syslog_priority(record.levelno)
            stamp = time.strftime("%b %d %H:%M:%S", time.localtime(record.created))
            data = f"<{pri}>{stamp} {SYSLOG_TAG}[{os.getpid()}]: {self.format(record)}".encode(errors="replace")
            try:
                assert self.sock is not None
                self.sock.send(data)
            except OSError:  # syslog daemon restarted: reconnect once
                if self.sock is not None:
                    self.sock.close()
                self._connect()
                assert self.sock is not None
                self.sock.send(data)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        super().close()


class RotatingLogFile(logging.Handler):
    """Consul's `log_file` semantics (see the module docstring)."""

    def __init__(self, path: str, rotate_bytes: int = 0, rotate_duration_s: float = 86400.0,
                 max_files: int = 0) -> None:
        super().__init__()
        if path.endswith("/") or os.path.isdir(path):
            path = os.path.join(path, f"{SYSLOG_TAG}.log")
        if not path.endswith(".log"):
            path += ".log"
        self.path = path
        self.rotate_bytes = rotate_bytes
        self.rotate_duration_s = rotate_duration_s if rotate_duration_s > 0 else 86400.0
        self.max_files = max_files
        self._lock = threading.Lock()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._open()

    def _open(self) -> None:
        self.stream = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        self.opened_at = time.monotonic()
        self.size = self.stream.tell()

    def rotated_files(self) -> list[str]:
        directory = os.path.dirname(self.path) or "."
        stem = os.path.basename(self.path)[: -len(".log")]
        out = []
        for name in os.listdir(directory):
            middle = name[len(stem) + 1 : -len(".log")] if name.startswith(stem + "-") and name.endswith(".log") else ""
            if middle.isdigit():
                out.append(os.path.join(directory, name))
        return sorted(out)

    def _rotate(self) -> None:
        self.stream.close()
        os.replace(self.path, f"{self.path[: -len('.log')]}-{time.time_ns()}.log")
        self._open()
        if self.max_files != 0:
            keep = max(self.max_files, 0)
            old = self.rotated_files()
            for name in old[: len(old) - keep]:
                try:
                    os.unlink(name)
                except OSError:
                    pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            with self._lock:
                due = time.monotonic() - self.opened_at >= self.rotate_duration_s
                if self.size and (due or (self.rotate_bytes > 0 and self.size + len(line) > self.rotate_bytes)):
                    self._rotate()
                self.stream.write(line)
                self.stream.flush()
                self.size += len(line.encode("utf-8"))
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        with self._lock:
            self.stream.close()
        super().close()


def setup(
    level: str,
    json_output: bool = False,
    syslog: bool = False,
    facility: str = "LOCAL0",
    log_file: str = "",
    rotate_bytes: int = 0,
    rotate_duration_s: float = 86400.0,
    rotate_max_files: int = 0,
) -> list[str]:
    """Install the handlers; returns warnings (e.g. no syslog socket) for the caller to log."""
    warnings: list[str] = []
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    text: logging.Formatter = _JSONFormatter() if json_output else logging.Formatter(_TEXT_FORMAT)
    if under_journal() and _journal is not None:
        journal_handler = _JournalHandler(json_output)
        # The journal stamps time and priority itself; the message is the module and the text.
        journal_handler.setFormatter(_JSONFormatter() if json_output else logging.Formatter("%(name)s: %(message)s"))
        root.addHandler(journal_handler)
    else:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(_PriorityPrefix(text) if under_journal() else text)
        root.addHandler(stream)
    if syslog:
        address = os.environ.get(SYSLOG_SOCKET_ENV) or "/dev/log"
        code = logging.handlers.SysLogHandler.facility_names.get(
            facility.lower(), logging.handlers.SysLogHandler.LOG_LOCAL0
        )
        try:
            handler = _SyslogHandler(address, code)
        except OSError as exc:
            warnings.append(f"syslog: cannot reach {address}: {exc}; logging without syslog")
        else:
            handler.setFormatter(logging.Formatter("[%(levelname)s] %(name)s: %(message)s"))
            root.addHandler(handler)
    if log_file:
        file_handler = RotatingLogFile(log_file, rotate_bytes, rotate_duration_s, rotate_max_files)
        file_handler.setFormatter(text)
        root.addHandler(file_handler)
    # Refused network input is logged once per kind and interval, never with a traceback.
    malformed = MalformedTrafficFilter()
    for handler in root.handlers:
        handler.addFilter(malformed)
    set_level(level)
    # aiohttp's access log is per request; keep it out of INFO (house rule: no hot-path logging).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return warnings


def setup_from_config(cfg: Any) -> list[str]:
    """`setup` with a RuntimeConfig's logging fields."""
    return setup(
        cfg.log_level,
        cfg.log_json,
        cfg.enable_syslog,
        cfg.syslog_facility,
        cfg.log_file,
        cfg.log_rotate_bytes,
        cfg.log_rotate_duration_s,
        cfg.log_rotate_max_files,
    )


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level_number(level))
    LOG_MONITORS.agent_level_changed(level_number(level))  # a monitor may want more than the agent logs
