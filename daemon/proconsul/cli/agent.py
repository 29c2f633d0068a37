"""Agent-level commands: `agent`, `members`, `info`, `reload`, `leave`, `validate`, `version`, `keygen`.

Owns their flags, HTTP calls (`/v1/agent/...`) and output, which follow Consul's commands of the
same names: the `members` table (Node Address Status Type Build Protocol DC Partition Segment),
`info`'s `section:` / `\tkey = value` listing, `reload`/`leave` confirmations, `validate`'s
`Configuration is valid!`, and `version`'s text and JSON forms.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import re
import secrets
import urllib.parse
from typing import Any

import proconsul
from proconsul import config
from proconsul.api_client import APIError
from proconsul.cli.base import HTTP_CLIENT, RUN_RESULT_HELP, Command, Context, FlagSpec
from proconsul.cli.output import columnize

# Serf's member status numbers, as /v1/agent/members reports them.
_STATUS = {0: "none", 1: "alive", 2: "leaving", 3: "left", 4: "failed"}
# RPC protocol versions we report, as Consul 1.x does.
RPC_DEFAULT, RPC_MIN, RPC_MAX = 2, 2, 3
# Gossip tag values for role (the Go api's MemberTagValueRoleServer / ...RoleClient).
_ROLE_SERVER, _ROLE_CLIENT = "consul", "node"
# Segment filter meaning "all segments"; the Go client sends it on every members call.
_ALL_SEGMENTS = "_all"


class AgentCommand(Command):
    name = "agent"
    synopsis = "Runs a Consul agent"
    usage = """
Usage: proconsul agent [options]

  Starts the agent and runs until an interrupt is received. The agent
  represents a single node in a cluster.
"""

    def run(self, ctx: Context) -> int:
        # The agent module is heavy (asyncio, raft, gossip); only load it for this command.
        from proconsul.agent.agent import run_agent

        return int(run_agent(list(ctx.args)))


def _tcp_addr(addr: str, port: Any) -> str:
    """Go's net.TCPAddr.String(): IPv6 in brackets."""
    try:
        if isinstance(ipaddress.ip_address(addr), ipaddress.IPv6Address):
            return f"[{addr}]:{port}"
    except ValueError:
        pass
    return f"{addr}:{port}"


def _is_default_partition(p: str) -> bool:
    return p in ("", "default")


class MembersCommand(Command):
    name = "members"
    synopsis = "Lists the members of a Consul cluster"
    http = HTTP_CLIENT
    usage = """
Usage: proconsul members [options]

  Lists the members the agent knows of through gossip. Exits 2 when no member
  matches the filters.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.bool("detailed", "Provides detailed information about nodes.")
        spec.string("filter", "Filter to use with the request.", default="")
        spec.string("partition", "Admin partition to query (accepted for compatibility).", default="")
        spec.string("segment", "Network segment to list (accepted for compatibility).", default=_ALL_SEGMENTS)
        spec.string(
            "status",
            "If provided, output is filtered to only nodes matching the regular expression for status.",
            default=".*",
        )
        spec.bool("wan", "If the agent is in server mode, list the members of the WAN pool instead.")

    def run(self, ctx: Context) -> int:
        o = ctx.opts
        try:
            status_re = re.compile(o["status"])
        except re.error as exc:
            ctx.ui.error(f"Failed to compile status regexp: {exc}")
            return 1
        client = ctx.connect()
        if client is None:
            return 1
        params: list[tuple[str, str]] = []
        if o["segment"]:
            params.append(("segment", o["segment"]))
        if o["wan"]:
            params.append(("wan", "1"))
        if o["filter"]:
            params.append(("filter", o["filter"]))
        if o["partition"]:
            params.append(("partition", o["partition"]))
        try:
            members = client.get_json("/v1/agent/members", params) or []
        except APIError as exc:
            ctx.ui.error(f"Error retrieving members: {exc}")
            return 1
        kept = []
        for m in members:
            tags = dict(m.get("Tags") or {})
            m["Tags"] = tags
            tags.setdefault("ap", "")
            if not tags["ap"]:
                tags["ap"] = "default"
            if _is_default_partition(tags["ap"]):
                if o["segment"] == _ALL_SEGMENTS and tags.get("role") == _ROLE_SERVER:
                    tags["segment"] = "<all>"
                elif not tags.get("segment"):
                    tags["segment"] = "<default>"
            else:
                tags["segment"] = ""
            if status_re.search(self._status(m)):
                kept.append(m)
        if not kept:
            return 2
        kept.sort(key=self._sort_key)
        lines = self._detailed(kept) if o["detailed"] else self._standard(kept)
        ctx.ui.output(columnize(lines, delim="\x1f"))
        return 0

    @staticmethod
    def _status(m: dict[str, Any]) -> str:
        return _STATUS.get(int(m.get("Status", 0) or 0), "unknown")

    @staticmethod
    def _sort_key(m: dict[str, Any]) -> tuple[Any, ...]:
        # Servers first, then the default partition, then by segment, partition and name.
        t = m["Tags"]
        return (
            t.get("role") != _ROLE_SERVER,
            not _is_default_partition(t.get("ap", "")),
            t.get("segment", ""),
            t.get("ap", ""),
            m.get("Name", ""),
        )

    def _standard(self, members: list[dict[str, Any]]) -> list[str]:
        lines = ["Node\x1fAddress\x1fStatus\x1fType\x1fBuild\x1fProtocol\x1fDC\x1fPartition\x1fSegment"]
        for m in members:
            t = m["Tags"]
            addr = _tcp_addr(m.get("Addr", ""), m.get("Port", 0))
            build = t.get("build", "")
            build = build.split(":", 1)[0] if build else "< 0.3"
            role = t.get("role", "")
            kind = {_ROLE_SERVER: "server", _ROLE_CLIENT: "client"}.get(role)
            if kind is None:
                cells = [m.get("Name", ""), addr, self._status(m), "unknown", "", "", "", "", ""]
            else:
                cells = [
                    m.get("Name", ""),
                    addr,
                    self._status(m),
                    kind,
                    build,
                    t.get("vsn", ""),
                    t.get("dc", ""),
                    t.get("ap", ""),
                    t.get("segment", ""),
                ]
            lines.append("\x1f".join(cells))
        return lines

    def _detailed(self, members: list[dict[str, Any]]) -> list[str]:
        lines = ["Node\x1fAddress\x1fStatus\x1fTags"]
        for m in members:
            tags = ",".join(f"{k}={v}" for k, v in sorted(m["Tags"].items()))
            addr = _tcp_addr(m.get("Addr", ""), m.get("Port", 0))
            lines.append("\x1f".join([m.get("Name", ""), addr, self._status(m), tags]))
        return lines


class InfoCommand(Command):
    name = "info"
    synopsis = "Provides debugging information for operators."
    http = HTTP_CLIENT
    usage = """
Usage: proconsul info [options]

  Provides debugging information for operators
"""

    def run(self, ctx: Context) -> int:
        client = ctx.connect()
        if client is None:
            return 1
        try:
            me = client.get_json("/v1/agent/self") or {}
        except APIError as exc:
            ctx.ui.error(f"Error querying agent: {exc}")
            return 1
        stats = me.get("Stats") if isinstance(me, dict) else None
        if not isinstance(stats, dict):
            ctx.ui.error(f"Agent response did not contain 'Stats' key: {me}")
            return 1
        for section in sorted(stats):
            ctx.ui.output(section + ":")
            values = stats[section]
            if not isinstance(values, dict):
                ctx.ui.error(f"Got invalid subkey in stats: {values}")
                return 1
            for key in sorted(values):
                val = values[key]
                shown = val if isinstance(val, str) else json.dumps(val)
                ctx.ui.output(f"\t{key} = {shown}")
        return 0


class ReloadCommand(Command):
    name = "reload"
    synopsis = "Triggers the agent to reload configuration files"
    http = HTTP_CLIENT
    usage = """
Usage: proconsul reload

  Asks the agent to reload its configuration files, like sending it SIGHUP.
  Returns once the reload is triggered, not when it is complete.
"""

    def run(self, ctx: Context) -> int:
        client = ctx.connect()
        if client is None:
            return 1
        try:
            client.put("/v1/agent/reload")
        except APIError as exc:
            ctx.ui.error(f"Error reloading: {exc}")
            return 1
        ctx.ui.output("Configuration reload triggered")
        return 0


class LeaveCommand(Command):
    name = "leave"
    synopsis = "Gracefully leaves the Consul cluster and shuts down"
    http = HTTP_CLIENT
    usage = """
Usage: proconsul leave [options]

  Makes the agent leave the cluster gracefully and shut down.
"""

    def run(self, ctx: Context) -> int:
        if ctx.args:
            ctx.ui.error(f"Error found unexpected args: [{' '.join(ctx.args)}]")
            ctx.ui.output(self.help())
            return 1
        client = ctx.connect()
        if client is None:
            return 1
        try:
            client.put("/v1/agent/leave")
        except APIError as exc:
            ctx.ui.error(f"Error leaving: {exc}")
            return 1
        ctx.ui.output("Graceful leave complete")
        return 0


class ValidateCommand(Command):
    name = "validate"
    synopsis = "Validate config files/directories"
    usage = """
Usage: proconsul validate [options] FILE_OR_DIRECTORY...

  Checks configuration files the way "proconsul agent" would load them,
  without starting an agent: syntax, unknown keys and invalid values.
  Exits 0 if the configuration is valid and 1 if there are problems.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.string(
            "config-format",
            "Config files are in this format irrespective of their extension. Must be 'hcl' or 'json'.",
            default="",
            example="string",
        )
        spec.bool("quiet", "When given, a successful run will produce no output.")

    def run(self, ctx: Context) -> int:
        paths = list(ctx.args)
        if not paths:
            ctx.ui.error("Must specify at least one config file or directory")
            return 1
        fmt = ctx.opts["config-format"] or None
        # config also checks -config-format's value.
        errors, warnings = config.validate_paths_with_warnings(paths, fmt)
        if errors:
            if len(errors) == 1:
                ctx.ui.error(f"Config validation failed: {errors[0]}")
            else:
                # go-multierror's layout, which Consul uses when several checks fail at once.
                listed = "\n\t".join(f"* {e}" for e in errors)
                ctx.ui.error(f"Config validation failed: {len(errors)} errors occurred:\n\t{listed}\n")
            return 1
        if not ctx.opts["quiet"]:
            for warning in warnings:
                ctx.ui.error(warning)
            ctx.ui.output("Configuration is valid!")
        return 0


def _build_date() -> str:
    """When this copy of the package was built/installed: the package file's mtime, RFC 3339 UTC."""
    try:
        ts = os.path.getmtime(proconsul.__file__ or "")
    except OSError:
        ts = 0.0
    return datetime.datetime.fromtimestamp(int(ts), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def version_info() -> dict[str, Any]:
    """The fields of `version -format=json`: Consul's, plus the Consul version we are compatible with."""
    version = proconsul.__version__
    release, _, prerelease = version.partition("-")
    return {
        "Version": release,
        "Revision": getattr(proconsul, "__revision__", ""),
        "Prerelease": prerelease,
        "FullVersion": version,
        "ConsulVersion": proconsul.CONSUL_COMPAT_VERSION,
        "BuildDate": _build_date(),
        "RPC": {"Default": RPC_DEFAULT, "Min": RPC_MIN, "Max": RPC_MAX},
    }


class VersionCommand(Command):
    name = "version"
    synopsis = "Prints the Consul version"
    usage = """
Usage: proconsul version [options]
"""

    def define(self, spec: FlagSpec) -> None:
        spec.string("format", "Output format {pretty|json}", default="pretty", example="string")

    def run(self, ctx: Context) -> int:
        fmt = ctx.opts["format"]
        if fmt not in ("pretty", "json"):
            ctx.ui.error(f"Unknown format: {fmt}")
            return 1
        info = version_info()
        if fmt == "json":
            ctx.ui.output(json.dumps(info, indent=3))
            return 0
        lines = [f"Proconsul v{info['FullVersion']}", f"Compatible with Consul v{info['ConsulVersion']}"]
        if info["Revision"]:
            lines.append(f"Revision {info['Revision']}")
        lines.append(f"Build Date {info['BuildDate']}")
        rpc = info["RPC"]
        extra = ""
        if rpc["Default"] < rpc["Max"]:
            extra = f" (agent will automatically use protocol >{rpc['Default']} when speaking to compatible agents)"
        lines.append(
            f"Protocol {rpc['Default']} spoken by default, understands {rpc['Min']} to {rpc['Max']}{extra}"
        )
        # Consul's text already ends in a newline and its UI adds one more; kept for byte parity.
        ctx.ui.output("\n".join(lines) + "\n")
        return 0


class KeygenCommand(Command):
    name = "keygen"
    synopsis = "Generates a new encryption key"
    usage = """
Usage: proconsul keygen

  Generates a new gossip encryption key (32 random bytes, base64), in the form
  the agent's "encrypt" setting expects.
"""

    def run(self, ctx: Context) -> int:
        ctx.ui.output(base64.b64encode(secrets.token_bytes(32)).decode())
        return 0


class JoinCommand(Command):
    name = "join"
    synopsis = "Tell Consul agent to join cluster"
    http = HTTP_CLIENT
    usage = """
Usage: proconsul join [options] address ...

  Tells a running Consul agent (with "proconsul agent") to join the cluster
  by specifying at least one existing member.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.bool("wan", "Joins a server to another server in the WAN pool.")

    def run(self, ctx: Context) -> int:
        addrs = list(ctx.args)
        if not addrs:
            ctx.ui.error("At least one address to join must be specified.")
            ctx.ui.output(self.help())
            return 1
        client = ctx.connect()
        if client is None:
            return 1
        params = [("wan", "1")] if ctx.opts["wan"] else []
        joined = 0
        for addr in addrs:
            try:
                client.put(f"/v1/agent/join/{urllib.parse.quote(addr, safe='')}", params)
                joined += 1
            except APIError as exc:
                ctx.ui.error(f"Error joining address '{addr}': {exc}")
        if joined == 0:
            ctx.ui.error("Failed to join any nodes.")
            return 1
        ctx.ui.output(f"Successfully joined cluster by contacting {joined} nodes.")
        return 0


class ForceLeaveCommand(Command):
    name = "force-leave"
    synopsis = "Forces a member of the cluster to enter the \"left\" state"
    http = HTTP_CLIENT
    usage = """
Usage: proconsul force-leave [options] name

  Forces a member of a Consul cluster to enter the "left" state. Note
  that if the member is still actually alive, it will eventually rejoin
  the cluster.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.bool("prune", "Remove agent forcibly from list of members")
        spec.bool("wan", "Exclusively leave the agent from the WAN serf pool.")

    def run(self, ctx: Context) -> int:
        if len(ctx.args) != 1:
            ctx.ui.error("A single node name must be specified to force leave.")
            ctx.ui.output(self.help())
            return 1
        client = ctx.connect()
        if client is None:
            return 1
        params = [("prune", "1")] if ctx.opts["prune"] else []
        if ctx.opts["wan"]:
            params.append(("wan", "1"))
        node = ctx.args[0]
        try:
            client.put(f"/v1/agent/force-leave/{urllib.parse.quote(node, safe='')}", params)
        except APIError as exc:
            ctx.ui.error(f"Error force leaving: {exc}")
            return 1
        return 0


COMMANDS: list[type[Command]] = [
    AgentCommand,
    MembersCommand,
    InfoCommand,
    ReloadCommand,
    LeaveCommand,
    JoinCommand,
    ForceLeaveCommand,
    ValidateCommand,
    VersionCommand,
    KeygenCommand,
]

__all__ = ["COMMANDS", "RUN_RESULT_HELP"]
