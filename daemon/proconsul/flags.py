"""Go-style command-line flags, as Consul's commands parse them.

Owns the one flag grammar every proconsul command shares, matching Go's `flag` package:
`-name=value`, `-name value` (not for booleans), one or two dashes, booleans as `-name` or
`-name=false`, `--` ends the flags, and parsing stops at the first positional argument (so flags
come first, as with `consul`). Repeatable flags (`-join`, `-config-file`) accumulate in order, and
the order in which all flags were given is kept because `-config-file` and `-config-dir`
interleave.

It sits at the package's top level, a shared leaf (tests/test_layering.py), not in `cli/`: the
agent's flags are parsed by `config/` (agent_flags.py, load.py), which `agent/` and `cli/` sit
above, and `api_client` parses booleans with it; inside `cli/` every one of those imports would
point upward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}


class FlagError(Exception):
    """The command line is malformed; the message is what Go's flag package would print."""


class HelpRequested(Exception):
    """`-h`, `-help` or `--help` was given; the caller prints usage and exits 0."""


@dataclass
class _Flag:
    name: str
    kind: str  # "string" | "bool" | "int" | "list"
    default: Any
    help: str
    parse: Callable[[str], Any] | None = None


@dataclass
class ParsedFlags:
    """The result of one parse: values by flag name, positional arguments, and what was set."""

    values: dict[str, Any]
    args: list[str]
    # Flags given on the command line, in order, as (name, parsed value); lists appear per use.
    given: list[tuple[str, Any]] = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


def parse_bool(text: str) -> bool:
    """Parse a boolean the way Go's strconv.ParseBool does."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"invalid boolean value {text!r}")


class FlagSet:
    """A set of named flags for one command; `parse(argv)` returns a `ParsedFlags`."""

    def __init__(self, command: str, usage: str = "") -> None:
        self.command = command
        self.usage = usage
        self._flags: dict[str, _Flag] = {}

    def string(self, name: str, default: str | None = None, help: str = "") -> None:
        self._flags[name] = _Flag(name, "string", default, help)

    def bool(self, name: str, default: bool = False, help: str = "") -> None:
        self._flags[name] = _Flag(name, "bool", default, help)

    def int(self, name: str, default: int | None = None, help: str = "") -> None:
        self._flags[name] = _Flag(name, "int", default, help)

    def list(self, name: str, help: str = "") -> None:
        """A repeatable string flag; each use appends."""
        self._flags[name] = _Flag(name, "list", None, help)

    def custom(self, name: str, parse: Callable[[str], Any], default: Any = None, help: str = "") -> None:
        """A flag whose value is converted by `parse`, which raises ValueError on bad input."""
        self._flags[name] = _Flag(name, "custom", default, help, parse)

    def names(self) -> list[str]:
        return sorted(self._flags)

    def help_text(self) -> str:
        lines = [self.usage.rstrip(), ""] if self.usage else []
        for name in sorted(self._flags):
            flag = self._flags[name]
            kind = "" if flag.kind == "bool" else " <value>"
            lines.append(f"  -{name}{kind}")
            if flag.help:
                lines.append(f"     {flag.help}")
        return "\n".join(lines) + "\n"

    def parse(self, argv: list[str]) -> ParsedFlags:
        values: dict[str, Any] = {}
        for name, flag in self._flags.items():
            values[name] = [] if flag.kind == "list" else flag.default
        given: list[tuple[str, Any]] = []
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg == "--":
                i += 1
                break
            if len(arg) < 2 or not arg.startswith("-"):
                break
            body = arg[2:] if arg.startswith("--") else arg[1:]
            if not body or body.startswith("-") or body.startswith("="):
                raise FlagError(f"bad flag syntax: {arg}")
            name, has_value, text = body.partition("=")
            if name in ("h", "help") and name not in self._flags:
                raise HelpRequested(self.help_text())
            flag = self._flags.get(name)
            if flag is None:
                raise FlagError(f"flag provided but not defined: -{name}")
            if flag.kind == "bool":
                if has_value:
                    try:
                        value: Any = parse_bool(text)
                    except ValueError:
                        raise FlagError(f'invalid boolean value "{text}" for -{name}') from None
                else:
                    value = True
            else:
                if not has_value:
                    if i + 1 >= len(argv):
                        raise FlagError(f"flag needs an argument: -{name}")
                    i += 1
                    text = argv[i]
                value = self._convert(flag, text)
            if flag.kind == "list":
                values[name].append(value)
            else:
                values[name] = value
            given.append((name, value))
            i += 1
        return ParsedFlags(values=values, args=list(argv[i:]), given=given)

    @staticmethod
    def _convert(flag: _Flag, text: str) -> Any:
        if flag.kind in ("string", "list"):
            return text
        if flag.kind == "int":
            try:
                return int(text, 0)
            except ValueError:
                raise FlagError(f'invalid value "{text}" for flag -{flag.name}: parse error') from None
        assert flag.parse is not None
        try:
            return flag.parse(text)
        except ValueError as exc:
            raise FlagError(f'invalid value "{text}" for flag -{flag.name}: {exc}') from None
