"""`proconsul monitor [-log-level=<level>] [-log-json]`: stream an agent's log lines.

Owns the command, which follows `consul monitor`: it attaches to `/v1/agent/monitor` and prints
each line as it arrives until interrupted (SIGINT or SIGTERM: exit 0). When the agent ends the
stream it says `Remote side ended the monitor! ...` and exits 1; an unknown level is the agent's
400, reported as `Error starting monitor: ...`.
"""

from __future__ import annotations

import signal
from types import FrameType

from proconsul.api_client import APIError
from proconsul.cli.base import HTTP_CLIENT, Command, Context, FlagSpec


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted()


class MonitorCommand(Command):
    name = "monitor"
    synopsis = "Stream logs from a Consul agent"
    http = HTTP_CLIENT
    usage = """
Usage: proconsul monitor [options]

  Shows recent log messages of a Consul agent, and attaches to the agent,
  outputting log messages as they occur in real time. The monitor lets you
  listen for log levels that may be filtered out of the Consul agent. For
  example your agent may only be logging at INFO level, but with the monitor
  you can see the DEBUG level logs.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.string("log-level", "Log level of the agent.", default="INFO", example="string")
        spec.bool("log-json", "Output logs in JSON format.")

    def run(self, ctx: Context) -> int:
        client = ctx.connect()
        if client is None:
            return 1
        params = [("loglevel", ctx.opts.values.get("log-level") or "INFO")]
        if ctx.opts.values.get("log-json"):
            params.append(("logjson", "true"))
        previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            try:
                stream = client.stream("/v1/agent/monitor", params)
            except APIError as exc:
                ctx.ui.error(f"Error starting monitor: {exc}")
                return 1
            try:
                for raw in stream:  # ends when the agent ends the stream or the connection breaks
                    ctx.ui.output(raw.decode("utf-8", "replace").rstrip("\n"))
                    getattr(ctx.ui.out, "flush", lambda: None)()
            finally:
                stream.close()
            ctx.ui.output("Remote side ended the monitor! This usually means that the\n"
                          "remote side has exited or crashed.")
            return 1
        except _Interrupted:
            return 0
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


COMMANDS: list[type[Command]] = [MonitorCommand]
