"""The frame every `proconsul` subcommand runs in.

Owns the output channels (`UI`: results to stdout, errors to stderr, as Consul's cli.BasicUi),
flag declaration with help sections (`FlagSpec`, over the shared Go-style parser in `flags.py`),
the `Command` base class, the Consul-style help layout ("HTTP API Options" / "Command Options"),
and the common HTTP flags that turn into an HTTP `Client`.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TextIO

from proconsul.api_client import Client, ClientConfigError, resolve_settings
from proconsul.flags import FlagSet, ParsedFlags

# Returned by a command's run() to ask for its help text and exit 1 (mitchellh/cli's RunResultHelp).
RUN_RESULT_HELP = -18511

# `FlagSpec.int` shadows the builtin inside the class body; annotations there use this name.
_Int = int

HTTP_SECTION = "HTTP API Options"
COMMAND_SECTION = "Command Options"

# Which of Consul's common flag groups a command takes.
HTTP_NONE = "none"
HTTP_CLIENT = "client"  # -http-addr, -token, -token-file and TLS flags
HTTP_SERVER = "server"  # the client flags plus -datacenter and -stale


class UI:
    """stdout for results, stderr for errors; each message gets a trailing newline."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        # Resolve sys.stdout at write time by default so test capture and redirects apply.
        self._out = out
        self._err = err

    @property
    def out(self) -> TextIO:
        return self._out if self._out is not None else sys.stdout

    @property
    def err(self) -> TextIO:
        return self._err if self._err is not None else sys.stderr

    def output(self, message: str) -> None:
        self.out.write(message + "\n")

    def error(self, message: str) -> None:
        self.err.write(message + "\n")

    def output_bytes(self, data: bytes) -> None:
        """Write a value byte for byte (KV values need not be UTF-8)."""
        stream = self.out
        buffer = getattr(stream, "buffer", None)
        if buffer is None:
            stream.write(data.decode("utf-8", "replace") + "\n")
            return
        stream.flush()
        buffer.write(data + b"\n")
        buffer.flush()


@dataclass
class _FlagDoc:
    name: str
    help: str
    example: str  # the `<...>` placeholder in help; "" for booleans
    section: str


def _parse_uint(text: str) -> int:
    """Go's flag.Uint64Var: base prefixes allowed, no sign, at most 64 bits."""
    try:
        value = int(text, 0)
    except ValueError:
        raise ValueError("parse error") from None
    if value < 0 or value >= 1 << 64 or text.lstrip().startswith(("-", "+")):
        raise ValueError("parse error")
    return value


class FlagSpec:
    """Declares a command's flags on a Go-style `FlagSet` and remembers their help text."""

    def __init__(self, name: str) -> None:
        self.flagset = FlagSet(name)
        self.docs: list[_FlagDoc] = []

    def doc(self, name: str, help: str, example: str, section: str) -> None:
        """Document a flag in `-help` (a command that parses it itself, e.g. a custom duration)."""
        self.docs.append(_FlagDoc(name, help, example, section))

    def string(
        self,
        name: str,
        help: str,
        default: str | None = None,
        example: str = "string",
        section: str = COMMAND_SECTION,
    ) -> None:
        self.flagset.string(name, default, help)
        self.doc(name, help, example, section)

    def bool(self, name: str, help: str, default: bool = False, section: str = COMMAND_SECTION) -> None:
        self.flagset.bool(name, default, help)
        self.doc(name, help, "", section)

    def int(self, name: str, help: str, default: int = 0, section: str = COMMAND_SECTION) -> None:
        self.flagset.int(name, default, help)
        self.doc(name, help, "int", section)

    def uint(self, name: str, help: str, default: _Int = 0, section: str = COMMAND_SECTION) -> None:
        self.flagset.custom(name, _parse_uint, default, help)
        self.doc(name, help, "uint", section)

    def custom(
        self, name: str, help: str, parse: Callable[[str], Any], example: str, section: str = COMMAND_SECTION
    ) -> None:
        """A flag converted by `parse` (ValueError: bad value); None when not given."""
        self.flagset.custom(name, parse, None, help)
        self.doc(name, help, example, section)

    def list(self, name: str, help: str, example: str = "value", section: str = COMMAND_SECTION) -> None:
        self.flagset.list(name, help)
        self.doc(name, help, example, section)

    def help_text(self, usage: str) -> str:
        """Consul's flags.Usage layout: usage, then HTTP API and command options, sorted by name."""
        out = [usage.strip(), ""]
        for section in (HTTP_SECTION, COMMAND_SECTION):
            docs = sorted((d for d in self.docs if d.section == section), key=lambda d: d.name)
            if not docs:
                continue
            out += [section, ""]
            for d in docs:
                out.append(f"  -{d.name}=<{d.example}>" if d.example else f"  -{d.name}")
                wrapped = textwrap.wrap(d.help, 67) or [""]
                out += ["     " + line for line in wrapped]
                out.append("")
        return "\n".join(out).rstrip("\n")


def add_http_flags(spec: FlagSpec, kind: str) -> None:
    """Consul's common API flags: client flags always, server flags (-datacenter, -stale) if asked."""
    if kind == HTTP_NONE:
        return
    s = HTTP_SECTION
    spec.string(
        "http-addr",
        "The address and port of the agent's HTTP API, as host:port, http://host:port, "
        "https://host:port or unix:///path. Also CONSUL_HTTP_ADDR. Default 127.0.0.1:8500.",
        example="address",
        section=s,
    )
    spec.string(
        "token",
        "ACL token to use in the request. Also CONSUL_HTTP_TOKEN. If unspecified, "
        "the agent's default token is used.",
        example="value",
        section=s,
    )
    spec.string(
        "token-file",
        "File containing the ACL token to use in the request instead of -token "
        "or CONSUL_HTTP_TOKEN. Also CONSUL_HTTP_TOKEN_FILE.",
        example="value",
        section=s,
    )
    spec.string(
        "ca-file", "Path to a CA file for TLS to the agent. Also CONSUL_CACERT.", example="value", section=s
    )
    spec.string(
        "ca-path",
        "Path to a directory of CA certificates for TLS to the agent. Also CONSUL_CAPATH.",
        example="value",
        section=s,
    )
    spec.string(
        "client-cert",
        "Path to a client certificate for TLS. Also CONSUL_CLIENT_CERT.",
        example="value",
        section=s,
    )
    spec.string(
        "client-key", "Path to a client key for TLS. Also CONSUL_CLIENT_KEY.", example="value", section=s
    )
    spec.string(
        "tls-server-name",
        "The server name to use as the SNI host when connecting via TLS. Also CONSUL_TLS_SERVER_NAME.",
        example="value",
        section=s,
    )
    if kind == HTTP_SERVER:
        spec.string(
            "datacenter",
            "Name of the datacenter to query. Defaults to the datacenter of the queried agent.",
            example="value",
            section=s,
        )
        spec.bool(
            "stale",
            "Permit any server (not only the leader) to answer this read, for lower "
            "latency at the risk of stale data. No effect on writes.",
            section=s,
        )


@dataclass
class Context:
    """One command invocation: parsed flags, positional arguments, output and environment."""

    opts: ParsedFlags
    args: list[str]
    ui: UI
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    stdin: Any = None

    def read_stdin(self) -> bytes:
        stream = self.stdin if self.stdin is not None else sys.stdin
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            return bytes(buffer.read())
        data = stream.read()
        return data.encode() if isinstance(data, str) else bytes(data)

    def _opt(self, name: str) -> Any:
        return self.opts.values.get(name)

    def connect(self) -> Client | None:
        """Build the API client from flags and environment; on failure print Consul's message."""
        try:
            settings = resolve_settings(
                http_addr=self._opt("http-addr"),
                token=self._opt("token"),
                token_file=self._opt("token-file"),
                datacenter=self._opt("datacenter"),
                stale=bool(self._opt("stale")),
                ca_file=self._opt("ca-file"),
                ca_path=self._opt("ca-path"),
                client_cert=self._opt("client-cert"),
                client_key=self._opt("client-key"),
                tls_server_name=self._opt("tls-server-name"),
                environ=dict(self.environ),
            )
            return Client(settings)
        except ClientConfigError as exc:
            self.ui.error(f"Error connecting to Consul agent: {exc}")
            return None


class Command:
    """One subcommand. Subclasses set the class attributes, declare flags, and implement run()."""

    name: ClassVar[str] = ""
    synopsis: ClassVar[str] = ""
    usage: ClassVar[str] = ""
    http: ClassVar[str] = HTTP_NONE

    def define(self, spec: FlagSpec) -> None:
        """Declare command-specific flags (the HTTP flags are added by the runner)."""

    def run(self, ctx: Context) -> int:
        raise NotImplementedError

    def flag_spec(self) -> FlagSpec:
        spec = FlagSpec(self.name)
        add_http_flags(spec, self.http)
        self.define(spec)
        return spec

    def help(self) -> str:
        return self.flag_spec().help_text(self.usage)


class GroupCommand(Command):
    """A parent such as `kv` that only lists its subcommands; running it shows help, exit 1."""

    def run(self, ctx: Context) -> int:
        return RUN_RESULT_HELP


def too_many_args(ui: UI, got: int, expected: str) -> int:
    ui.error(f"Too many arguments (expected {expected}, got {got})")
    return 1
