"""The `proconsul` command line: finds the subcommand and runs it, as `consul` does.

Owns dispatch only: the command table, nested names (`kv get`), the top-level help and its exit
codes, `-h`/`-help`/`--help` anywhere before `--` (command help, exit 0), `-v`/`--version`, and
turning flag errors into a message plus the command's help (exit 1). The commands themselves live
in `cli_agent`, `cli_kv`, `cli_catalog` and `cli_services`; they are thin clients of the local
agent's HTTP API, except `agent` (runs the daemon), `validate`, `version` and `keygen`.

Exit codes follow Consul (mitchellh/cli): 0 success, 1 error or bad usage, 2 for `members` with
no match, 127 for a missing or unknown command; `proconsul help` prints the list and exits 0.
"""

from __future__ import annotations

import sys

from proconsul.cli import acl as cli_acl
from proconsul.cli import agent as cli_agent
from proconsul.cli import autopilot as cli_autopilot
from proconsul.cli import catalog as cli_catalog
from proconsul.cli import debug as cli_debug
from proconsul.cli import event as cli_event
from proconsul.cli import keyring as cli_keyring
from proconsul.cli import kv as cli_kv
from proconsul.cli import lock as cli_lock
from proconsul.cli import maint as cli_maint
from proconsul.cli import monitor as cli_monitor
from proconsul.cli import operator as cli_operator
from proconsul.cli import raft_recover as cli_raft_recover
from proconsul.cli import rtt as cli_rtt
from proconsul.cli import services as cli_services
from proconsul.cli import snapshot as cli_snapshot
from proconsul.cli import tls as cli_tls
from proconsul.cli import watch as cli_watch
from proconsul.cli.base import RUN_RESULT_HELP, UI, Command, Context, GroupCommand
from proconsul.flags import FlagError, HelpRequested, ParsedFlags

_HELP_FLAGS = ("-h", "-help", "--help")
_VERSION_FLAGS = ("-v", "-version", "--version")
# mitchellh/cli's exit code for "no such command".
EXIT_UNKNOWN_COMMAND = 127


def commands() -> dict[str, Command]:
    """Every subcommand by its full name (`kv get`)."""
    table: dict[str, Command] = {}
    for module in (cli_acl, cli_agent, cli_kv, cli_catalog, cli_services, cli_operator, cli_raft_recover,
                   cli_autopilot, cli_snapshot, cli_maint, cli_event, cli_lock, cli_watch, cli_rtt, cli_keyring,
                   cli_tls, cli_monitor, cli_debug):
        for cls in module.COMMANDS:
            table[cls.name] = cls()
    return table


def top_help(table: dict[str, Command]) -> str:
    """The command list, laid out as mitchellh/cli's BasicHelpFunc does."""
    names = sorted(n for n in table if " " not in n)
    width = max(len(n) for n in names)
    lines = ["Usage: proconsul [--version] [--help] <command> [<args>]", "", "Available commands are:"]
    lines += [f"    {n.ljust(width)}    {table[n].synopsis}" for n in names]
    return "\n".join(lines) + "\n"


def command_help(table: dict[str, Command], name: str) -> str:
    """A command's help, followed by its subcommands for a group such as `kv`."""
    text = table[name].help()
    subs = sorted(n for n in table if n.startswith(name + " ") and " " not in n[len(name) + 1 :])
    if subs:
        width = max(len(n) for n in subs)
        text += "\n\nSubcommands:"
        for full in subs:
            short = full[len(name) + 1 :]
            text += f"\n    {short + ' ' * (width - len(full))}    {table[full].synopsis}"
    return text


def _split(args: list[str], table: dict[str, Command]) -> tuple[str, list[str], list[str], bool, bool]:
    """Find (command name, its args, stray flags before it, help asked, version asked).

    As mitchellh/cli does: help flags count anywhere before `--`; version flags and other flags
    only before the command; the longest registered name matching the leading words wins.
    """
    name = ""
    sub_args: list[str] = []
    top_flags: list[str] = []
    is_help = is_version = False
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg in _HELP_FLAGS:
            is_help = True
            continue
        if name:
            continue
        if arg in _VERSION_FLAGS:
            is_version = True
            continue
        if arg.startswith("-"):
            top_flags.append(arg)
            continue
        if arg == "":
            continue
        name, used = arg, 1
        for n in range(len(args) - i, 1, -1):
            candidate = " ".join(args[i : i + n])
            if candidate in table:
                name, used = candidate, n
                break
        sub_args = args[i + used :]
    if name and is_help:
        # Help flags are consumed by the dispatcher, not passed to the command.
        cut = sub_args.index("--") if "--" in sub_args else len(sub_args)
        sub_args = [a for a in sub_args[:cut] if a not in _HELP_FLAGS] + sub_args[cut:]
    return name, sub_args, top_flags, is_help, is_version


def run_command(cmd: Command, argv: list[str], ui: UI) -> int:
    """Parse the command's flags and run it; flag errors print the message and help (exit 1)."""
    spec = cmd.flag_spec()
    try:
        parsed = spec.flagset.parse(argv)
    except HelpRequested:
        ui.output(spec.help_text(cmd.usage))
        return 0
    except FlagError as exc:
        ui.error(str(exc))
        ui.error(spec.help_text(cmd.usage))
        return 1
    return cmd.run(Context(opts=parsed, args=parsed.args, ui=ui))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `proconsul` script: returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    ui = UI()
    table = commands()
    # `agent` owns its whole command line (including -h), so hand it over untouched.
    if args and args[0] == "agent":
        return table["agent"].run(Context(opts=ParsedFlags(values={}, args=[]), args=args[1:], ui=ui))
    name, sub_args, top_flags, is_help, is_version = _split(args, table)
    if is_version and not name:
        name, sub_args = "version", []
    if name == "help":
        ui.output(top_help(table))
        return 0
    if not name:
        ui.output(top_help(table))
        return 0 if is_help else EXIT_UNKNOWN_COMMAND
    if name not in table:
        ui.output(top_help(table))
        return EXIT_UNKNOWN_COMMAND
    if is_help:
        ui.output(command_help(table, name))
        return 0
    if top_flags:
        ui.output(
            "Invalid flags before the subcommand. If these flags are for\n"
            "the subcommand, please put them after the subcommand.\n"
        )
        ui.output(command_help(table, name))
        return 1
    cmd = table[name]
    code = run_command(cmd, sub_args, ui) if not isinstance(cmd, GroupCommand) else RUN_RESULT_HELP
    if code == RUN_RESULT_HELP:
        ui.output(command_help(table, name))
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
