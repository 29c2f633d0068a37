"""`proconsul maint`: list, enable or disable node and service maintenance on the local agent.

Owns the command's flags and Consul's texts: without -enable/-disable it lists what is in
maintenance (from the agent's `_node_maintenance` and `_service_maintenance:<id>` checks);
with them it calls `PUT /v1/agent/maintenance` or `/v1/agent/service/maintenance/<id>` and
prints "Node entered maintenance mode", "Service left maintenance mode: <id>" and so on.
"""

from __future__ import annotations

from proconsul.api_client import APIError
from proconsul.cli.base import HTTP_CLIENT, Command, Context, FlagSpec

NODE_MAINT_CHECK_ID = "_node_maintenance"
SERVICE_MAINT_PREFIX = "_service_maintenance:"


class Maint(Command):
    name = "maint"
    synopsis = "Controls node or service maintenance mode"
    http = HTTP_CLIENT
    usage = """
Usage: proconsul maint [options]

  Places a node or service into maintenance mode. During maintenance mode,
  the node or service will be excluded from all queries through the DNS
  or API interfaces, effectively taking it out of the pool of available
  nodes. This is done by registering an additional critical health check.

  When enabling maintenance mode for a node or service, you may optionally
  specify a reason string. This string will appear in the "Notes" field
  of the critical health check which is registered against the node or
  service. If no reason is provided, a default value will be used.

  Maintenance mode is persistent, and will be restored in the event of an
  agent restart. It is therefore required to disable maintenance mode on
  a given node or service before it will be placed back into the pool.

  By default, we operate on the node as a whole. By specifying the
  "-service" argument, this behavior can be changed to enable or disable
  only a specific service.

  If no arguments are given, the agent's maintenance status will be shown.
  This will return blank if nothing is currently under maintenance.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.bool("enable", "Enable maintenance mode.")
        spec.bool("disable", "Disable maintenance mode.")
        spec.string("reason", "Text describing the maintenance reason.", default="")
        spec.string(
            "service",
            "Control maintenance mode for a specific service ID.",
            default="",
        )

    def run(self, ctx: Context) -> int:
        o = ctx.opts
        enable, disable = bool(o["enable"]), bool(o["disable"])
        reason, service = o["reason"] or "", o["service"] or ""
        if enable and disable:
            ctx.ui.error("Only one of -enable or -disable may be provided")
            return 1
        if not enable and reason:
            ctx.ui.error("Reason may only be provided with -enable")
            return 1
        if not enable and not disable and service:
            ctx.ui.error("Service requires either -enable or -disable")
            return 1
        client = ctx.connect()
        if client is None:
            return 1
        try:
            node_name = client.get_json("/v1/agent/self")["Config"]["NodeName"]
        except (APIError, KeyError, TypeError) as exc:
            ctx.ui.error(f"Error querying Consul agent: {exc}")
            return 1
        if not enable and not disable:
            try:
                checks = client.get_json("/v1/agent/checks")
            except APIError as exc:
                ctx.ui.error(f"Error getting checks: {exc}")
                return 1
            for cid in sorted(checks):
                check = checks[cid]
                if cid == NODE_MAINT_CHECK_ID:
                    ctx.ui.output("Node:")
                    ctx.ui.output("  Name:   " + node_name)
                    ctx.ui.output("  Reason: " + check.get("Notes", ""))
                    ctx.ui.output("")
                elif cid.startswith(SERVICE_MAINT_PREFIX):
                    ctx.ui.output("Service:")
                    ctx.ui.output("  ID:     " + check.get("ServiceID", ""))
                    ctx.ui.output("  Reason: " + check.get("Notes", ""))
                    ctx.ui.output("")
            return 0
        verb = "enabling" if enable else "disabling"
        params = [("enable", "true" if enable else "false")]
        if enable and reason:
            params.append(("reason", reason))
        if not service:
            try:
                client.put("/v1/agent/maintenance", params)
            except APIError as exc:
                ctx.ui.error(f"Error {verb} node maintenance: {exc}")
                return 1
            ctx.ui.output("Node entered maintenance mode" if enable else "Node left maintenance mode")
            return 0
        try:
            client.put("/v1/agent/service/maintenance/" + service, params)
        except APIError as exc:
            ctx.ui.error(f"Error {verb} service maintenance: {exc}")
            return 1
        ctx.ui.output(f"Service {'entered' if enable else 'left'} maintenance mode: {service}")
        return 0


COMMANDS: list[type[Command]] = [Maint]
