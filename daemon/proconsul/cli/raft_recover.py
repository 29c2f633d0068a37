"""`proconsul operator raft recover`: bring a cluster that lost its majority for good back to life.

Owns the command's flags, its report (what each survivor holds, the new voters, what is kept
and what may be lost), the confirmation prompt and its exit codes; the reasoning and the writing
live in `proconsul.raft.recovery`. Two modes, one plan: on running servers, `-server` once per
survivor's HTTP address (`/v1/operator/raft/recover` on each reads its state and installs the
plan), after which the command waits for them to elect a leader; on stopped servers, `-data-dir`
once per survivor (every survivor's data directory must be reachable from where it runs), after
which the survivors are started again. See docs/RECOVERY.md.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from proconsul.api_client import APIError, Client, ClientConfigError, resolve_settings
from proconsul.cli.base import HTTP_CLIENT, Command, Context, FlagSpec
from proconsul.cli.output import columnize
from proconsul.durations import parse_duration
from proconsul.raft import recovery

RECOVER_PATH = "/v1/operator/raft/recover"


class OperatorRaftRecover(Command):
    name = "operator raft recover"
    synopsis = "Recover the Raft cluster on its surviving servers after a lost majority"
    http = HTTP_CLIENT  # -token, -token-file and the TLS flags apply to every -server
    usage = """
Usage: proconsul operator raft recover -server=<addr> [-server=<addr> ...] [options]
       proconsul operator raft recover -data-dir=<dir> [-data-dir=<dir> ...] [options]

  Recovers a cluster whose majority of servers is gone for good. It reads each
  survivor's Raft log position, proposes the most up-to-date survivors as the
  new voters, shows what is kept and what may be lost, and after confirmation
  writes the new configuration to each survivor.

  With -server (once per surviving server's HTTP address) the survivors keep
  running. None of them may have a leader. Each one installs the new
  configuration, and the command waits until they have elected a leader among
  themselves. This needs operator:write when ACLs are enabled.

  With -data-dir (once per stopped survivor's data directory), stop every
  survivor first and start them again afterwards; they elect a leader among
  themselves.

  Writes acknowledged only by the lost servers cannot be recovered. The command
  refuses, unless -force is given, when the chosen voters would drop entries a
  survivor holds that may have been acknowledged.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.list("server", "A running survivor's HTTP API address (host:port or http(s)://host:port); give it "
                  "once per survivor.", example="address")
        spec.list("data-dir", "A stopped survivor's data directory; give it once per survivor.", example="path")
        spec.string("voters", "Comma-separated node IDs of the survivors to keep as voters. Defaults to "
                    "every survivor given.", example="id,id")
        spec.bool("yes", "Do not ask for confirmation.")
        spec.bool("force", "Recover even when the chosen voters would drop entries that may have been "
                  "acknowledged.")
        spec.bool("dry-run", "Print the plan and change nothing.")
        spec.string("timeout", "With -server: how long to wait for the survivors to elect a leader. "
                    "Defaults to 60s.", example="duration")

    def run(self, ctx: Context) -> int:
        o = ctx.opts.values
        dirs = [d for d in (o.get("data-dir") or []) if d]
        servers = [a for a in (o.get("server") or []) if a]
        if dirs and servers:
            ctx.ui.error("Error: give either -server (running survivors) or -data-dir (stopped ones), not both")
            return 1
        if not dirs and not servers:
            ctx.ui.error("Error: at least one -server of a running surviving server, or -data-dir of a stopped "
                         "one, is required")
            return 1
        try:
            timeout_s = parse_duration(o.get("timeout") or "60s")
        except ValueError as exc:
            ctx.ui.error(f"Error: invalid -timeout: {exc}")
            return 1
        voters = [v.strip() for v in (o.get("voters") or "").split(",") if v.strip()] or None
        clients: dict[str, Client] = {}
        try:
            if servers:
                clients = {addr: _client(ctx, addr) for addr in servers}
                survivors = [_live_state(addr, client) for addr, client in clients.items()]
            else:
                survivors = [recovery.inspect(d) for d in dirs]
            p = recovery.plan(survivors, voters)
        except (recovery.RecoveryError, ClientConfigError) as exc:
            ctx.ui.error(f"Error: {exc}")
            return 1
        ctx.ui.output(format_plan(p, "HTTP Address" if servers else "Data Dir"))
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
        excluded = [s.id for s in p.survivors if s.id not in p.voters]
        if servers:
            return _apply_live(ctx, p, clients, timeout_s, excluded)
        try:
            written = recovery.apply(p)
        except (recovery.RecoveryError, OSError) as exc:
            ctx.ui.error(f"Error writing the recovery: {exc}")
            return 1
        for d in written:
            ctx.ui.output(f"Wrote the new configuration to {d}")
        ctx.ui.output(f"Start the servers {', '.join(p.voters)} again; they will elect a leader among themselves.")
        if excluded:
            ctx.ui.output(f"Servers left out ({', '.join(excluded)}) must have their data directory wiped "
                          "before they join the recovered cluster.")
        return 0


def _client(ctx: Context, addr: str) -> Client:
    o = ctx.opts.values
    settings = resolve_settings(
        http_addr=addr, token=o.get("token"), token_file=o.get("token-file"), ca_file=o.get("ca-file"),
        ca_path=o.get("ca-path"), client_cert=o.get("client-cert"), client_key=o.get("client-key"),
        tls_server_name=o.get("tls-server-name"), environ=dict(ctx.environ),
    )
    return Client(settings)


def _live_state(addr: str, client: Client) -> recovery.SurvivorState:
    try:
        raw: Any = client.request("GET", RECOVER_PATH).json()
    except APIError as exc:
        raise recovery.RecoveryError(f"reading the Raft state of {addr}: {exc}") from None
    if isinstance(raw, dict) and raw.get("Leader"):
        raise recovery.RecoveryError(
            f"{addr} ({raw.get('NodeName') or raw.get('ID')}) follows the leader {raw['Leader']} at "
            f"{raw.get('LeaderAddress') or '?'}: this cluster has a leader, so there is nothing to recover")
    return recovery.SurvivorState.from_json(raw, addr)


def _apply_live(ctx: Context, p: recovery.Plan, clients: dict[str, Client], timeout_s: float,
                excluded: list[str]) -> int:
    marker = p.marker()  # one marker (one creation time) for every survivor
    done: list[str] = []
    for s in p.survivors:
        if s.id not in p.voters:
            continue
        body = json.dumps(recovery.marker_to_json(marker, s)).encode()
        try:
            clients[s.source].request("PUT", RECOVER_PATH, body=body)
        except APIError as exc:
            ctx.ui.error(f"Error installing the recovery on {s.source}: {exc}")
            if done:
                ctx.ui.error(f"Already installed on {', '.join(done)}: they wait for the kept log. Fix the "
                             "problem and run recover again on every survivor.")
            return 1
        done.append(s.source)
        ctx.ui.output(f"Installed the new configuration on {s.source} ({s.id})")
    voters = [s for s in p.survivors if s.id in p.voters]
    deadline = time.monotonic() + timeout_s
    leader = ""
    while not leader:
        for s in voters:
            try:
                leader = clients[s.source].request("GET", "/v1/status/leader").json() or ""
            except APIError:
                continue
            if leader:
                break
        if leader or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if excluded:
        ctx.ui.output(f"Servers left out ({', '.join(excluded)}) still run the old configuration: stop them "
                      "and wipe their data directory before they join the recovered cluster.")
    if not leader:
        ctx.ui.error(f"Error: no leader elected within {timeout_s:g}s; see the survivors' logs "
                     f"(the one holding the kept log, {p.best.id}, must be up)")
        return 1
    ctx.ui.output(f"Leader elected: {leader}")
    return 0


def _confirm(ctx: Context) -> bool:
    stream = ctx.stdin if ctx.stdin is not None else sys.stdin
    ctx.ui.out.write("Type 'yes' to write this configuration to the survivors: ")
    ctx.ui.out.flush()
    line = stream.readline()
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    return str(line).strip().lower() == "yes"


def format_plan(p: recovery.Plan, source_label: str = "Data Dir") -> str:
    sep = "\x1f"
    rows = [sep.join(["Node ID", "Term", "Last Term", "Last Index", "Commit Index", "New Voter", source_label])]
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
