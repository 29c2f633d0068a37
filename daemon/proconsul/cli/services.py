"""`proconsul services register|deregister`: manage the local agent's services.

Owns these commands' flags, reading service definitions from config files (JSON or HCL, with
`service` / `services` blocks in config syntax, snake_case keys) and turning them into the agent
API's registration bodies (CamelCase keys) for `PUT /v1/agent/service/register`, and the output
`Registered service: NAME` / `Deregistered service: ID`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from proconsul.api_client import APIError, go_os_error
from proconsul.cli.base import HTTP_SERVER, Command, Context, FlagSpec, GroupCommand
from proconsul.cli.catalog import parse_kv_pairs

# Word-by-word spellings in Consul's Go field names (check_id -> CheckID, grpc_use_tls -> GRPCUseTLS).
_ACRONYMS = {
    "id": "ID",
    "http": "HTTP",
    "tcp": "TCP",
    "udp": "UDP",
    "ttl": "TTL",
    "grpc": "GRPC",
    "tls": "TLS",
    "os": "OS",
    "dns": "DNS",
    "ip": "IP",
    "url": "URL",
    "h2ping": "H2PING",
}
# Keys whose Go names do not follow the word-by-word rule.
_SPECIAL = {"h2ping_use_tls": "H2PingUseTLS", "script_args": "ScriptArgs"}
# Maps whose keys are user data and must not be renamed (their values may still be structures).
_USER_KEYED = {"meta", "node_meta", "header", "tagged_addresses"}
# Of those, the ones whose values are structures to convert too.
_STRUCT_VALUES = {"tagged_addresses"}


class DefinitionError(Exception):
    """A service definition file could not be read or parsed."""


def api_key(key: str) -> str:
    """Config-file spelling -> agent API spelling: `deregister_critical_service_after` ->
    `DeregisterCriticalServiceAfter`. Keys already in CamelCase are kept."""
    if key in _SPECIAL:
        return _SPECIAL[key]
    parts = key.split("_")
    return "".join(_ACRONYMS.get(p.lower(), p[:1].upper() + p[1:]) for p in parts if p)


def to_api(value: Any) -> Any:
    """Convert a config-syntax structure (service, check, weights, ...) to API field names."""
    if isinstance(value, list):
        return [to_api(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        lowered = key.lower()
        if lowered in _USER_KEYED and isinstance(item, dict):
            converted = {k: to_api(v) for k, v in item.items()} if lowered in _STRUCT_VALUES else dict(item)
            out[api_key(key)] = converted
        else:
            out[api_key(key)] = to_api(item)
    return out


def _load_file(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise DefinitionError(go_os_error("open", path, exc)) from None
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise DefinitionError(f"failed to parse {path}: {exc}") from None
    if path.endswith(".hcl"):
        import hcl  # pyhcl; imported here so other commands do not pay for it

        try:
            return hcl.loads(text)
        except ValueError as exc:  # pyhcl reports lexer and parser errors as ValueError
            raise DefinitionError(f"failed to parse {path}: {exc}") from None
    raise DefinitionError(f"file {path!r} has no .json or .hcl extension")


def _expand(paths: list[str]) -> list[str]:
    """Files as given; directories contribute their .json/.hcl files in lexical order (as -config-dir)."""
    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            out += [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith((".json", ".hcl"))]
        else:
            out.append(path)
    return out


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def services_from_files(paths: list[str]) -> list[dict[str, Any]]:
    """Every `service` / `services` definition in the files, as agent API registration bodies."""
    found: list[dict[str, Any]] = []
    for path in _expand(paths):
        doc = _load_file(path)
        if not isinstance(doc, dict):
            raise DefinitionError(f"{path}: top level must be an object")
        for key in ("service", "services"):
            for svc in _as_list(doc.get(key)):
                if not isinstance(svc, dict):
                    raise DefinitionError(f"{path}: {key} must be an object")
                found.append(to_api(svc))
    return found


class ServicesCommand(GroupCommand):
    name = "services"
    synopsis = "Interact with services"
    usage = """
Usage: proconsul services <subcommand> [options] [args]

  Register and deregister services with the local agent.

      $ proconsul services register web.json
      $ proconsul services deregister -id=web
"""


class ServicesRegister(Command):
    name = "services register"
    synopsis = "Register services with the local agent"
    http = HTTP_SERVER
    usage = """
Usage: proconsul services register [options] [FILE...]

  Registers one or more services with the local agent, from service
  definitions in configuration files (JSON or HCL) or from flags. The service
  stays registered until "proconsul services deregister" removes it.

      $ proconsul services register web.json
      $ proconsul services register -name=web -port=8080 -tag=v1
"""

    def define(self, spec: FlagSpec) -> None:
        spec.string("address", "Address of the service to register for flag-based registration.", default="")
        spec.string("id", "ID of the service for flag-based registration; defaults to -name.", default="")
        spec.string("kind", "The service's kind.", default="")
        spec.list(
            "meta",
            "Metadata to set on the service, as key=value. May be given multiple times.",
            example="key=value",
        )
        spec.string("name", "Name of the service to register for flag-based registration.", default="")
        spec.int("port", "Port of the service to register for flag-based registration.")
        spec.string(
            "socket", "Path to a Unix socket for the service (instead of address and port).", default=""
        )
        spec.list("tag", "Tag to add to the service. May be given multiple times.")
        spec.list(
            "tagged-address",
            "Tagged address to set on the service, as key=address[:port]. May be given multiple times.",
            example="key=value",
        )

    def _from_flags(self, ctx: Context) -> dict[str, Any] | str:
        o = ctx.opts
        meta = parse_kv_pairs(o["meta"], "meta")
        if isinstance(meta, str):
            return meta
        tagged = parse_kv_pairs(o["tagged-address"], "tagged-address")
        if isinstance(tagged, str):
            return tagged
        body: dict[str, Any] = {}
        # Empty fields are left out, as the Go client's omitempty does.
        for field_name, flag in (
            ("Kind", "kind"),
            ("ID", "id"),
            ("Name", "name"),
            ("Address", "address"),
            ("SocketPath", "socket"),
        ):
            if o[flag]:
                body[field_name] = o[flag]
        if o["port"]:
            body["Port"] = o["port"]
        if o["tag"]:
            body["Tags"] = list(o["tag"])
        if meta:
            body["Meta"] = meta
        if tagged:
            addrs: dict[str, Any] = {}
            for k, v in tagged.items():
                host, sep, port = v.rpartition(":")
                if sep and port.isdigit() and not host.endswith(":"):
                    addrs[k] = {"Address": host.strip("[]"), "Port": int(port)}
                else:
                    addrs[k] = {"Address": v}
            body["TaggedAddresses"] = addrs
        return body

    def run(self, ctx: Context) -> int:
        o = ctx.opts
        flag_body = self._from_flags(ctx)
        if isinstance(flag_body, str):
            ctx.ui.error(flag_body)
            return 1
        if not ctx.args and not o["name"]:
            ctx.ui.error("Service registration requires at least one argument or flags.")
            return 1
        if ctx.args and o["name"]:
            ctx.ui.error("Service registration requires arguments or -id, not both.")
            return 1
        bodies = [flag_body]
        if ctx.args:
            try:
                bodies = services_from_files(ctx.args)
            except DefinitionError as exc:
                ctx.ui.error(f"Error: {exc}")
                return 1
        client = ctx.connect()
        if client is None:
            return 1
        for body in bodies:
            name = str(body.get("Name", ""))
            try:
                client.put("/v1/agent/service/register", None, json.dumps(body).encode())
            except APIError as exc:
                ctx.ui.error(f'Error registering service "{name}": {exc}')
                return 1
            ctx.ui.output(f"Registered service: {name}")
        return 0


class ServicesDeregister(Command):
    name = "services deregister"
    synopsis = "Deregister services with the local agent"
    http = HTTP_SERVER
    usage = """
Usage: proconsul services deregister [options] [FILE...]

  Deregisters services from the local agent, by the definitions in FILEs
  (their id, or name when there is no id) or by -id. It must run against the
  agent where the service was registered.

      $ proconsul services deregister web.json db.json
      $ proconsul services deregister -id=web
"""

    def define(self, spec: FlagSpec) -> None:
        spec.string("id", "ID to deregister. Must not be set if arguments are given.", default="")

    def run(self, ctx: Context) -> int:
        flag_id = ctx.opts["id"] or ""
        if not ctx.args and not flag_id:
            ctx.ui.error("Service deregistration requires at least one argument or -id.")
            return 1
        if ctx.args and flag_id:
            ctx.ui.error("Service deregistration requires arguments or -id, not both.")
            return 1
        bodies: list[dict[str, Any]] = [{"ID": flag_id}]
        if ctx.args:
            try:
                bodies = services_from_files(ctx.args)
            except DefinitionError as exc:
                ctx.ui.error(f"Error: {exc}")
                return 1
        client = ctx.connect()
        if client is None:
            return 1
        for body in bodies:
            service_id = str(body.get("ID") or body.get("Name") or "")
            if not service_id:
                continue
            try:
                client.put("/v1/agent/service/deregister/" + service_id)
            except APIError as exc:
                ctx.ui.error(f'Error deregistering service "{body.get("Name", "")}": {exc}')
                return 1
            ctx.ui.output(f"Deregistered service: {service_id}")
        return 0


COMMANDS: list[type[Command]] = [ServicesCommand, ServicesRegister, ServicesDeregister]
