"""`proconsul debug`: capture an agent's state over a while into Consul's debug archive layout.

Owns the command, which follows `consul debug`: flags `-duration` (default 5m), `-interval`
(default 30s, and never longer than the duration: proconsul shortens it to the duration when
`-interval` is not given), `-output` (default `consul-debug-<UTC time>`), `-archive` (default
true) and `-capture` (repeatable; default every target: agent, host, members, metrics, logs,
pprof). Both durations must be at least 5s (Consul asks 10s of the duration; proconsul's
profiles are cheap enough to allow 5s).

The archive `<output>.tar.gz` holds one directory `<output>/` with:

- `index.json`: `Version` (1), `AgentVersion`, `Interval`, `Duration`, `Targets`;
- `agent.json` (`/v1/agent/self`), `host.json` (`/v1/agent/host`), `members.json`
  (`/v1/agent/members`, the WAN pool too on a server);
- `metrics.json`: one `/v1/agent/metrics` document per line, taken at the start and then at every
  interval (Consul streams one per second; the layout of a file of JSON documents is the same);
- `consul.log`: every log line at TRACE for the duration (`/v1/agent/monitor`);
- with pprof (served when the agent has `enable_debug`; otherwise skipped with a warning):
  `profile.prof`, a cProfile of the agent's event loop over the duration in `pstats` format
  (`python -m pstats profile.prof`), and per interval `<UTC time>/goroutine.prof`, the stack of
  every asyncio task (`/v1/agent/debug/pprof/*`, see `proconsul.http.debug`).
"""

from __future__ import annotations

import json
import shutil
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

from proconsul.api_client import APIError, Client
from proconsul.cli.base import HTTP_CLIENT, Command, Context, FlagSpec
from proconsul.durations import format_duration, parse_duration

TARGETS = ("metrics", "logs", "pprof", "host", "agent", "members")
MIN_S = 5.0
GRACE_S = 2.0  # Consul's: lets the last interval fall inside the duration
DEFAULT_DURATION_S = 300.0
DEFAULT_INTERVAL_S = 30.0
_TIME_FORMAT = "%Y-%m-%dT%H-%M-%SZ"  # RFC 3339 without colons, which tar reads as a remote host


def _write_json(path: Path, content: Any) -> None:
    path.write_text(json.dumps(content, indent="\t"))


class DebugCommand(Command):
    name = "debug"
    synopsis = "Records a debugging archive for operators"
    http = HTTP_CLIENT
    usage = """
Usage: proconsul debug [options]

  Monitors a Consul agent for the specified period of time, recording
  information about the agent, cluster, and environment to an archive
  written to the current directory.

  Providing diagnostic information can be valuable for debugging the agent,
  but it may contain node names, addresses and configuration: review the
  archive before sharing it.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.list("capture", "One or more types of information to capture. This can be used to capture a subset "
                  "of information, and defaults to capturing everything available. Possible information "
                  f"for capture: {', '.join(TARGETS)}. This can be repeated multiple times.", example="value")
        spec.custom("interval", "The interval in which to capture dynamic information such as telemetry, and "
                    "profiling. Defaults to 30s.", parse_duration, "value")
        spec.custom("duration", "The total time to record information. Defaults to 5m0s.", parse_duration, "value")
        spec.custom("archive", "Boolean value for if the files should be archived and compressed. Setting this to "
                    "false will skip the archive step and leave the directory of information on the current "
                    "path.", _bool, "true|false")
        spec.string("output", "The path to the compressed archive that will be created with the information "
                    "after collection.", example="string")

    def run(self, ctx: Context) -> int:
        if ctx.args:
            ctx.ui.error("debug: Too many arguments provided, expected 0")
            return 1
        v = ctx.opts.values
        duration = DEFAULT_DURATION_S if v.get("duration") is None else float(v["duration"])
        interval = float(v["interval"]) if v.get("interval") is not None else min(DEFAULT_INTERVAL_S, duration)
        archive = True if v.get("archive") is None else bool(v["archive"])
        output = v.get("output") or f"consul-debug-{time.strftime(_TIME_FORMAT, time.gmtime())}"
        capture = list(v.get("capture") or []) or list(TARGETS)
        if duration < MIN_S:
            ctx.ui.error(f"==> Capture validation failed: duration must be longer than {format_duration(MIN_S)}")
            return 1
        if interval < MIN_S:
            ctx.ui.error(f"==> Capture validation failed: interval must be longer than {format_duration(MIN_S)}")
            return 1
        if duration < interval:
            ctx.ui.error(f"==> Capture validation failed: duration ({format_duration(duration)}) must be longer "
                         f"than interval ({format_duration(interval)})")
            return 1
        for target in capture:
            if target not in TARGETS:
                ctx.ui.error(f"==> Capture validation failed: target not found: {target}")
                return 1
        client = ctx.connect()
        if client is None:
            return 1
        try:
            self_info = client.get_json("/v1/agent/self")
        except APIError as exc:
            ctx.ui.error(f"==> Capture validation failed: error querying target agent: {exc}. "
                         "verify connectivity and agent address")
            return 1
        version = str((self_info.get("Config") or {}).get("Version", ""))
        debug_config = self_info.get("DebugConfig") or {}
        if "pprof" in capture and not debug_config.get("EnableDebug"):
            capture.remove("pprof")
            ctx.ui.error("==> [WARN] Unable to capture pprof. Set enable_debug to true on target agent to "
                         "enable profiling.")
        out = Path(output)
        if out.exists():
            ctx.ui.error(f"==> Capture validation failed: output directory already exists: {output}")
            return 1
        out.mkdir(parents=True, mode=0o755)
        archive_name = output + ".tar.gz" if archive else output
        ctx.ui.output("==> Starting debugger and capturing static information...")
        ctx.ui.output(f"     Agent Version: '{version}'")
        ctx.ui.output(f"          Interval: '{format_duration(interval)}'")
        ctx.ui.output(f"          Duration: '{format_duration(duration)}'")
        ctx.ui.output(f"            Output: '{archive_name}'")
        ctx.ui.output(f"           Capture: '{', '.join(capture)}'")

        errors = self._capture_static(client, out, capture, bool(debug_config.get("ServerMode")))
        for err in errors:
            ctx.ui.error(f"==> Static capture failed: {err}")
        if {"metrics", "logs", "pprof"} & set(capture):
            for err in _Dynamic(client, out, capture, duration + GRACE_S, interval, ctx).run():
                ctx.ui.error(f"==> Error encountered during collection: {err}")
        _write_json(out / "index.json", {
            "Version": 1,
            "AgentVersion": version,
            "Interval": format_duration(interval),
            "Duration": format_duration(duration + GRACE_S),
            "Targets": capture,
        })
        if archive:
            try:
                with tarfile.open(archive_name, "w:gz") as tar:
                    tar.add(out, arcname=out.name)
                shutil.rmtree(out)
            except OSError as exc:
                ctx.ui.error(f"==> Archive creation failed: {exc}")
                return 1
        ctx.ui.output(f"     Saved debug archive: {archive_name}")
        return 0

    @staticmethod
    def _capture_static(client: Client, out: Path, capture: list[str], server: bool) -> list[str]:
        errors = []
        reads: dict[str, tuple[str, list[tuple[str, str]]]] = {
            "host": ("/v1/agent/host", []),
            "agent": ("/v1/agent/self", []),
            "members": ("/v1/agent/members", [("wan", "1")] if server else []),  # Consul's Members(wan=true)
        }
        for target, (path, params) in reads.items():
            if target not in capture:
                continue
            try:
                _write_json(out / f"{target}.json", client.get_json(path, params))
            except (APIError, OSError) as exc:
                errors.append(str(exc))
        return errors


def _bool(text: str) -> bool:
    if text.lower() in ("1", "t", "true"):
        return True
    if text.lower() in ("0", "f", "false"):
        return False
    raise ValueError(f"parse error: {text!r} is not a boolean")


class _Dynamic:
    """The captures that last the whole duration, each on its own thread (the client blocks)."""

    def __init__(self, client: Client, out: Path, capture: list[str], duration: float, interval: float,
                 ctx: Context) -> None:
        self.client = client
        self.out = out
        self.capture = capture
        self.duration = duration
        self.interval = interval
        self.ctx = ctx
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._done = threading.Event()

    def _error(self, what: str, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(f"{what}: {exc}")

    def run(self) -> list[str]:
        threads = [threading.Thread(target=self._intervals, daemon=True)]
        if "logs" in self.capture:
            threads.append(threading.Thread(target=self._logs, daemon=True))
        if "pprof" in self.capture:
            threads.append(threading.Thread(target=self._profile, daemon=True))
        for t in threads:
            t.start()
        self._done.wait(self.duration)
        self._done.set()
        for t in threads:
            t.join(timeout=self.duration + 60)
        return self.errors

    def _intervals(self) -> None:
        """Metrics (and task stacks) now and at every interval until the duration ends."""
        count = 0
        while True:
            self.ctx.ui.output(f"==> Beginning capture interval {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} "
                               f"({count})")
            if "metrics" in self.capture:
                try:
                    sample = self.client.get_json("/v1/agent/metrics")
                    with open(self.out / "metrics.json", "a") as f:
                        f.write(json.dumps(sample) + "\n")
                except (APIError, OSError) as exc:
                    self._error("metrics", exc)
            if "pprof" in self.capture:
                try:
                    stacks = self.client.request("GET", "/v1/agent/debug/pprof/goroutine").body
                    folder = self.out / time.strftime(_TIME_FORMAT, time.gmtime())
                    folder.mkdir(exist_ok=True)
                    (folder / "goroutine.prof").write_bytes(stacks)
                except (APIError, OSError) as exc:
                    self._error("goroutine", exc)
            count += 1
            if self._done.wait(self.interval):
                return

    def _logs(self) -> None:
        try:
            stream = self.client.stream("/v1/agent/monitor", [("loglevel", "TRACE")])
        except APIError as exc:
            self._error("logs", exc)
            return
        closer = threading.Thread(target=lambda: (self._done.wait(), stream.close()), daemon=True)
        closer.start()
        with open(self.out / "consul.log", "wb") as f:
            for line in stream:  # ends when the closer shuts the stream at the end of the duration
                f.write(line)
                f.flush()

    def _profile(self) -> None:
        seconds = max(1, int(self.duration - 1))
        client = Client(self.client.settings, timeout=self.duration + 60)
        try:
            resp = client.request("GET", "/v1/agent/debug/pprof/profile", [("seconds", str(seconds))])
            (self.out / "profile.prof").write_bytes(resp.body)
        except (APIError, OSError) as exc:
            self._error("profile", exc)


COMMANDS: list[type[Command]] = [DebugCommand]
