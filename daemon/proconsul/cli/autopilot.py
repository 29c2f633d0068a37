"""`proconsul operator autopilot get-config | set-config | state`: autopilot from the command line.

Owns these commands' flags, their `/v1/operator/autopilot/...` calls and their output, which
follow `consul operator autopilot ...`: get-config prints one `Name = value` line per field;
set-config reads the configuration, merges the flags given (`-cleanup-dead-servers=true|false`,
`-max-trailing-logs`, `-min-quorum`, `-last-contact-threshold`, `-server-stabilization-time`, and
the Enterprise-only fields, kept without effect) and writes it back with check-and-set, printing
`Configuration updated!` or that it could not be updated atomically; state prints the pretty
layout (or `-format=json`).
"""

from __future__ import annotations

import json
from typing import Any

from proconsul.api_client import APIError
from proconsul.cli.base import HTTP_SERVER, Command, Context, FlagSpec, GroupCommand
from proconsul.durations import format_duration, parse_duration


def _go_bool(text: str) -> bool:
    # Go's strconv.ParseBool, which Consul's BoolValue flag uses.
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f"parse error: {text!r} is not a boolean")


def _uint(text: str) -> int:
    value = int(text, 10)
    if value < 0:
        raise ValueError("parse error")
    return value


def _duration(text: str) -> str:
    return format_duration(parse_duration(text))  # validated here, sent as Consul's string


class OperatorAutopilotCommand(GroupCommand):
    name = "operator autopilot"
    synopsis = "Provides tools for modifying Autopilot configuration"
    usage = """
Usage: proconsul operator autopilot <subcommand> [options]

  The Autopilot operator command is used to interact with Consul's Autopilot
  subsystem. The command can be used to view or modify the current configuration.
"""


class OperatorAutopilotGet(Command):
    name = "operator autopilot get-config"
    synopsis = "Display the current Autopilot configuration"
    http = HTTP_SERVER
    usage = """
Usage: proconsul operator autopilot get-config [options]

  Displays the current Autopilot configuration.
"""

    def run(self, ctx: Context) -> int:
        client = ctx.connect()
        if client is None:
            return 1
        try:
            conf = client.get_json("/v1/operator/autopilot/configuration")
        except APIError as exc:
            ctx.ui.error(f"Error querying Autopilot configuration: {exc}")
            return 1
        ctx.ui.output("\n".join([
            f"CleanupDeadServers = {str(conf['CleanupDeadServers']).lower()}",
            f"LastContactThreshold = {conf['LastContactThreshold']}",
            f"MaxTrailingLogs = {conf['MaxTrailingLogs']}",
            f"MinQuorum = {conf['MinQuorum']}",
            f"ServerStabilizationTime = {conf['ServerStabilizationTime']}",
            f"RedundancyZoneTag = {json.dumps(conf['RedundancyZoneTag'])}",
            f"DisableUpgradeMigration = {str(conf['DisableUpgradeMigration']).lower()}",
            f"UpgradeVersionTag = {json.dumps(conf['UpgradeVersionTag'])}",
        ]))
        return 0


# flag -> (field, parser, example, help)
_SET_FLAGS: list[tuple[str, str, Any, str, str]] = [
    ("cleanup-dead-servers", "CleanupDeadServers", _go_bool, "true|false",
     "Whether the leader takes failed servers out of the Raft configuration (true or false)."),
    ("max-trailing-logs", "MaxTrailingLogs", _uint, "value",
     "How many log entries a server may be behind the leader and still count as healthy."),
    ("min-quorum", "MinQuorum", _uint, "value",
     "The fewest voters the cleanup of failed servers may leave behind."),
    ("last-contact-threshold", "LastContactThreshold", _duration, "value",
     "How long a server may go without hearing from the leader and still count as healthy "
     "(a duration such as 200ms)."),
    ("server-stabilization-time", "ServerStabilizationTime", _duration, "value",
     "How long a server must stay healthy before it becomes a voter, and stay failed before "
     "the cleanup removes it (a duration such as 10s)."),
    ("redundancy-zone-tag", "RedundancyZoneTag", str, "value",
     "Accepted and stored for compatibility; redundancy zones are a Consul Enterprise feature "
     "and have no effect here."),
    ("disable-upgrade-migration", "DisableUpgradeMigration", _go_bool, "true|false",
     "Accepted and stored for compatibility; upgrade migrations are a Consul Enterprise feature "
     "and have no effect here."),
    ("upgrade-version-tag", "UpgradeVersionTag", str, "value",
     "Accepted and stored for compatibility; upgrade migrations are a Consul Enterprise feature "
     "and have no effect here."),
]


class OperatorAutopilotSet(Command):
    name = "operator autopilot set-config"
    synopsis = "Modify the current Autopilot configuration"
    http = HTTP_SERVER
    usage = """
Usage: proconsul operator autopilot set-config [options]

  Modifies the current Autopilot configuration.
"""

    def define(self, spec: FlagSpec) -> None:
        for flag, _, parse, example, help_text in _SET_FLAGS:
            spec.custom(flag, help_text, parse, example)

    def run(self, ctx: Context) -> int:
        client = ctx.connect()
        if client is None:
            return 1
        try:
            conf = client.get_json("/v1/operator/autopilot/configuration")
        except APIError as exc:
            ctx.ui.error(f"Error querying Autopilot configuration: {exc}")
            return 1
        for flag, field_name, _, _, _ in _SET_FLAGS:
            value = ctx.opts.values.get(flag)
            if value is not None:
                conf[field_name] = value
        body = json.dumps(conf).encode()
        try:
            resp = client.put("/v1/operator/autopilot/configuration", [("cas", str(conf.get("ModifyIndex", 0)))], body)
        except APIError as exc:
            ctx.ui.error(f"Error setting Autopilot configuration: {exc}")
            return 1
        if resp.json() is True:
            ctx.ui.output("Configuration updated!")
            return 0
        ctx.ui.output("Configuration could not be atomically updated, please try again")
        return 1


def format_state(state: dict[str, Any]) -> str:
    """Consul's pretty layout of the autopilot state."""
    lines = [
        f"Healthy:                      {str(state.get('Healthy')).lower()}",
        f"Failure Tolerance:            {state.get('FailureTolerance', 0)}",
        f"Optimistic Failure Tolerance: {state.get('OptimisticFailureTolerance', 0)}",
        f"Leader:                       {state.get('Leader', '')}",
        "Voters:",
    ]
    lines += [f"   {v}" for v in state.get("Voters") or []]
    lines.append("Servers:")
    servers = state.get("Servers") or {}
    for sid in sorted(servers):
        s = servers[sid]
        lines += [
            f"   {sid}",
            f"      Name:            {s.get('Name', '')}",
            f"      Address:         {s.get('Address', '')}",
            f"      Version:         {s.get('Version', '')}",
            f"      Status:          {s.get('Status', '')}",
            f"      Node Type:       {s.get('NodeType', '')}",
            f"      Node Status:     {s.get('NodeStatus', '')}",
            f"      Healthy:         {str(s.get('Healthy')).lower()}",
            f"      Last Contact:    {s.get('LastContact', '')}",
            f"      Last Term:       {s.get('LastTerm', 0)}",
            f"      Last Index:      {s.get('LastIndex', 0)}",
        ]
        meta = s.get("Meta") or {}
        if meta:
            lines.append("      Meta")
            lines += [f"         {json.dumps(k)}: {json.dumps(meta[k])}" for k in sorted(meta)]
    return "\n".join(lines)


class OperatorAutopilotState(Command):
    name = "operator autopilot state"
    synopsis = "Display the current Autopilot state"
    http = HTTP_SERVER
    usage = """
Usage: proconsul operator autopilot state [options]

  Displays the current Autopilot state.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.string("format", "Output format {pretty|json}", default="pretty", example="string")

    def run(self, ctx: Context) -> int:
        fmt = ctx.opts.values.get("format") or "pretty"
        if fmt not in ("pretty", "json"):
            ctx.ui.error(f"Invalid formatter {fmt!r}: must be one of pretty, json")
            return 1
        client = ctx.connect()
        if client is None:
            return 1
        try:
            state = client.get_json("/v1/operator/autopilot/state")
        except APIError as exc:
            ctx.ui.error(f"Error querying Autopilot state: {exc}")
            return 1
        ctx.ui.output(json.dumps(state, indent=4) if fmt == "json" else format_state(state))
        return 0


COMMANDS: list[type[Command]] = [OperatorAutopilotCommand, OperatorAutopilotGet, OperatorAutopilotSet,
                                 OperatorAutopilotState]
