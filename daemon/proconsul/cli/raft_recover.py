"""`proconsul operator raft recover`: bring a cluster that lost its majority for good back to life.

Owns the command's flags, its report (what each survivor holds, the new voters, what is kept
and what may be lost), the confirmation prompt and its exit codes; the reasoning and the writing
live in `proconsul.raft.recovery`. It works on stopped servers: `-data-dir` once per survivor
(every survivor's data directory must be reachable from where it runs), after which the
survivors are started again and elect among themselves. See docs/RECOVERY.md.
"""

from __future__ import annotations

import sys

from proconsul.cli.base import HTTP_NONE, Command, Context, FlagSpec
from proconsul.cli.output import columnize
from proconsul.raft import recovery


class OperatorRaftRecover(Command):
    name = "operator raft recover"
    synopsis = "Recover the Raft cluster on its surviving servers after a lost majority"
    http = HTTP_NONE
    usage = """
Usage: proconsul operator raft recover -data-dir=<dir> [-data-dir=<dir> ...] [options]

  Recovers a cluster whose majority of servers is gone for good. Stop every
  surviving server, then run this command once with each survivor's data
  directory. It reads each survivor's Raft log, proposes the most up-to-date
  survivors as the new voters, shows what is kept and what may be lost, and
  after confirmation writes the new configuration to each survivor. Start the
  survivors again and they elect a leader among themselves.

  Writes acknowledged only by the lost servers cannot be recovered. The command
  refuses, unless -force is given, when the chosen voters would drop entries a
  survivor holds that may have been acknowledged.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.list("data-dir", "A stopped survivor's data directory; give it once per survivor.", example="path")
        spec.string("voters", "Comma-separated node IDs of the survivors to keep as voters. Defaults to "
                    "every survivor given.", example="id,id")
        spec.bool("yes", "Do not ask for confirmation.")
        spec.bool("force", "Recover even when the chosen voters would drop entries that may have been "
                  "acknowledged.")
        spec.bool("dry-run", "Print the plan and change nothing.")

    def run(self, ctx: Context) -> int:
        o = ctx.opts.values
        dirs = [d for d in (o.get("data-dir") or []) if d]
        if not dirs:
            ctx.ui.error("Error: at least one -data-dir of a stopped surviving server is required")
            return 1
        voters = [v.strip() for v in (o.get("voters") or "").split(",") if v.strip()] or None
        try:
            survivors = [recovery.inspect(d) for d in dirs]
            p = recovery.plan(survivors, voters)
        except recovery.RecoveryError as exc:
            ctx.ui.error(f"Error: {exc}")
            return 1
        ctx.ui.output(format_plan(p))
        if p.refusals:
            for reason in p.refusals:
                ctx.ui.error(f"Refusing: {reason}.")
            if not o.get("force"):
                ctx.ui.error("Nothing was changed. Choose other -voters, or give -force to accept the loss.")
                return 1
            ctx.ui.error("Going ahead anyway (-force).")
        if o.get("dry-run"):
            ctx.ui.output("Dry run: nothing was changed.")
            return 0
        if not o.get("yes") and not _confirm(ctx):
            ctx.ui.error("Aborted: nothing was changed.")
            return 1
        try:
            written = recovery.apply(p)
        except (recovery.RecoveryError, OSError) as exc:
            ctx.ui.error(f"Error writing the recovery: {exc}")
            return 1
        for d in written:
            ctx.ui.output(f"Wrote the new configuration to {d}")
        ctx.ui.output(f"Start the servers {', '.join(p.voters)} again; they will elect a leader among themselves.")
        excluded = [s.id for s in p.survivors if s.id not in p.voters]
        if excluded:
            ctx.ui.output(f"Servers left out ({', '.join(excluded)}) must have their data directory wiped "
                          "before they join the recovered cluster.")
        return 0


def _confirm(ctx: Context) -> bool:
    stream = ctx.stdin if ctx.stdin is not None else sys.stdin
    ctx.ui.out.write("Type 'yes' to write this configuration to the survivors: ")
    ctx.ui.out.flush()
    line = stream.readline()
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    return str(line).strip().lower() == "yes"


def format_plan(p: recovery.Plan) -> str:
    sep = "\x1f"
    rows = [sep.join(["Node ID", "Term", "Last Term", "Last Index", "Commit Index", "New Voter", "Data Dir"])]
    for s in p.survivors:
        mark = "true" if s.id in p.voters else "false"
        rows.append(sep.join([s.id, str(s.term), str(s.last_term), str(s.last_index), str(s.known_committed),
                              mark, s.source]))
    lines = ["Survivors (most up-to-date first):", columnize(rows, delim=sep), ""]
    lines.append(f"New voters: {', '.join(p.voters)} (new term {p.recovery_term})")
    lines.append(f"Kept: the log of {p.best.id} up to index {p.best.last_index} (term {p.best.last_term}); "
                 "the other voters copy it when a leader is elected.")
    if p.losses:
        lines.append("May be lost (not in the kept log):")
        for loss in p.losses:
            where = "overwritten on" if loss.in_new_configuration else "left behind on"
            known = " (some at or below its commit index: acknowledged)" if loss.known_committed else ""
            lines.append(f"  entries {loss.first}-{loss.last} {where} {loss.server}{known}")
    else:
        lines.append("Lost from the survivors: nothing (every survivor's log is part of the kept log).")
    if p.majority_lost:
        lines.append("Warning: a majority of the old voters is gone; writes they alone acknowledged are on no "
                     "survivor and cannot be recovered or even known.")
    return "\n".join(lines)


COMMANDS: list[type[Command]] = [OperatorRaftRecover]
