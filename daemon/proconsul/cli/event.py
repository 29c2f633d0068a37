"""`proconsul event`: fire a user event through the local agent (`PUT /v1/event/fire/:name`).

Owns the command's checks and messages, which follow `consul event`: a name is required, the
filters must compile as regular expressions, a tag filter needs a service filter, at most one
payload argument, and success prints `Event ID: <id>`.
"""

from __future__ import annotations

import re

from proconsul.api_client import APIError
from proconsul.cli.base import HTTP_SERVER, RUN_RESULT_HELP, Command, Context, FlagSpec


class EventCommand(Command):
    name = "event"
    synopsis = "Fire a new event"
    http = HTTP_SERVER
    usage = """
Usage: proconsul event [options] [payload]

  Dispatches a custom user event across a datacenter. An event must provide
  a name, but a payload is optional. Events support filtering using regular
  expressions on node name, service, and tag definitions.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.string("name", "Name of the event.", default="")
        spec.string("node", "Regular expression to filter on node names.", default="")
        spec.string("service", "Regular expression to filter on service instances.", default="")
        spec.string(
            "tag", "Regular expression to filter on service tags. Must be used with -service.", default=""
        )

    def run(self, ctx: Context) -> int:
        o = ctx.opts
        if not o["name"]:
            ctx.ui.error("Event name must be specified")
            ctx.ui.error("")
            return RUN_RESULT_HELP
        for kind in ("node", "service", "tag"):
            if o[kind]:
                try:
                    re.compile(o[kind])
                except re.error as exc:
                    ctx.ui.error(f"Failed to compile {kind} filter regexp: {exc}")
                    return 1
        if o["tag"] and not o["service"]:
            ctx.ui.error("Cannot provide tag filter without service filter.")
            return 1
        if len(ctx.args) > 1:
            ctx.ui.error("Too many command line arguments.")
            ctx.ui.error("")
            return RUN_RESULT_HELP
        payload = ctx.args[0].encode() if ctx.args else b""
        client = ctx.connect()
        if client is None:
            return 1
        try:
            client.get_json("/v1/agent/self")
        except APIError as exc:
            ctx.ui.error(f"Error querying Consul agent: {exc}")
            return 1
        params = [(k, o[k]) for k in ("node", "service", "tag") if o[k]]
        try:
            answer = client.put("/v1/event/fire/" + o["name"], params, payload).json()
        except APIError as exc:
            ctx.ui.error(f"Error firing event: {exc}")
            return 1
        ctx.ui.output(f"Event ID: {answer['ID']}")
        return 0


COMMANDS: list[type[Command]] = [EventCommand]
