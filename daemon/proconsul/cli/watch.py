"""`proconsul watch`: print a view of the catalog, KV or events, or run a handler on each change.

Owns the command's flags and messages, which follow `consul watch`: without a handler the
current JSON (Go's four-space indent) is printed once and the command exits; with a handler the
watch runs until interrupted and the handler gets the JSON on stdin and `CONSUL_INDEX` in its
environment on every change (through `$SHELL -c` unless `-shell=false`); a failing handler stops
the watch with exit 1. The watch loop itself is `proconsul.local.watch`.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from proconsul.api_client import APIError
from proconsul.cli.base import HTTP_SERVER, RUN_RESULT_HELP, Command, Context, FlagSpec
from proconsul.flags import parse_bool
from proconsul.local import watch


class WatchCommand(Command):
    name = "watch"
    synopsis = "Watch for changes in Consul"
    http = HTTP_SERVER
    usage = """
Usage: proconsul watch [options] [child...]

  Watches for changes in a given data view from Consul. If a child process
  is specified, it will be invoked with the latest results on changes. Otherwise,
  the latest values are dumped to stdout and the watch terminates.

  Providing the watch type is required, and other parameters may be required
  or supported depending on the watch type.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.string("type", "Specifies the watch type. One of key, keyprefix, services, nodes, "
                    "service, checks, or event.", default="")
        spec.string("key", "Specifies the key to watch. Only for 'key' type.", default="")
        spec.string("prefix", "Specifies the key prefix to watch. Only for 'keyprefix' type.", default="")
        spec.string("service", "Specifies the service to watch. Required for 'service' type, "
                    "optional for 'checks' type.", default="")
        spec.list("tag", "Specifies the service tag(s) to filter on. Optional for 'service' type. "
                  "May be specified multiple times.")
        spec.string("passingonly", "Specifies if only hosts passing all checks are displayed. "
                    "Optional for 'service' type, must be one of `[true|false]`. Defaults false.", default="")
        spec.string("state", "Specifies the states to watch. Optional for 'checks' type.", default="")
        spec.string("name", "Specifies an event name to watch. Only for 'event' type.", default="")
        spec.bool("shell", "Use a shell to run the command (can set a custom shell via the SHELL "
                  "environment variable).", default=True)

    def run(self, ctx: Context) -> int:
        o = ctx.opts
        if not o["type"]:
            ctx.ui.error("Watch type must be specified")
            ctx.ui.error("")
            return RUN_RESULT_HELP
        params: dict[str, Any] = {"type": o["type"]}
        if o.values.get("datacenter"):
            params["datacenter"] = o["datacenter"]
        if o.values.get("token"):
            params["token"] = o["token"]
        for name in ("key", "prefix", "service", "state", "name"):
            if o[name]:
                params[name] = o[name]
        if o.values.get("stale"):
            params["stale"] = True
        if o["tag"]:
            params["tag"] = list(o["tag"])
        if o["passingonly"]:
            try:
                params["passingonly"] = parse_bool(o["passingonly"])
            except ValueError:
                ctx.ui.error(f"Failed to parse passingonly flag: {o['passingonly']}")
                return 1
        try:
            plan = watch.parse(params)
        except watch.WatchError as exc:
            ctx.ui.error(str(exc))
            return 1
        client = ctx.connect()
        if client is None:
            return 1
        try:
            client.get_json("/v1/agent/self")
        except APIError as exc:
            ctx.ui.error(f"Error querying Consul agent: {exc}")
            return 1

        stop = threading.Event()
        status = {"code": 0}
        if not ctx.args:

            def handler(index: int, data: Any) -> None:
                ctx.ui.output(watch.go_json(data, indent=True))
                stop.set()

        else:
            argv = watch.script_command(list(ctx.args), o["shell"])

            def handler(index: int, data: Any) -> None:
                sys.stdout.flush()
                try:
                    code, _ = watch.run_script(argv, index, data, capture=False)
                except OSError as exc:
                    ctx.ui.error(f"Error executing handler: {exc}")
                    code = -1
                if code != 0:
                    if code > 0:
                        ctx.ui.error(f"Error executing handler: exit status {code}")
                    status["code"] = 1
                    stop.set()

        def on_signal(signum: int, frame: Any) -> None:
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            thread = threading.Thread(target=watch.run, args=(plan, client, handler, stop), daemon=True)
            thread.start()
            while not stop.wait(0.2):
                if not thread.is_alive():
                    break
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        return status["code"]


COMMANDS: list[type[Command]] = [WatchCommand]
