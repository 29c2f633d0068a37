"""`proconsul snapshot save|restore|inspect`: back up and restore the servers' state.

Owns these commands and their output, which follows `consul snapshot ...`:
- `save FILE` writes the archive from `GET /v1/snapshot` to `FILE.unverified`, verifies its
  checksums, renames it to FILE and prints `Saved and verified snapshot to index N`;
- `restore FILE` sends the file to `PUT /v1/snapshot` and prints `Restored snapshot`;
- `inspect FILE` reads the archive locally (no agent needed) and prints its metadata and a
  table of record types, counts and sizes (`-format=json` for JSON).
The archive format is `proconsul.server.snapshot`'s.
"""

from __future__ import annotations

import json
import os

from proconsul.api_client import APIError, go_os_error
from proconsul.cli.base import HTTP_NONE, HTTP_SERVER, Command, Context, FlagSpec, GroupCommand, too_many_args
from proconsul.server import snapshot as archive


class SnapshotCommand(GroupCommand):
    name = "snapshot"
    synopsis = "Saves, restores and inspects snapshots of Consul server state"
    usage = """
Usage: proconsul snapshot <subcommand> [options] [args]

  This command has subcommands for saving, restoring, and inspecting the state
  of the Consul servers for disaster recovery. These are atomic, point-in-time
  snapshots which include key/value entries, the service catalog and sessions.

  Create a snapshot:

      $ proconsul snapshot save backup.snap

  Restore a snapshot:

      $ proconsul snapshot restore backup.snap

  Inspect a snapshot:

      $ proconsul snapshot inspect backup.snap
"""


def _one_file(ctx: Context) -> str | None:
    if not ctx.args:
        ctx.ui.error("Missing FILE argument")
        return None
    if len(ctx.args) > 1:
        too_many_args(ctx.ui, len(ctx.args), "1")
        return None
    return ctx.args[0]


class SnapshotSave(Command):
    name = "snapshot save"
    synopsis = "Saves snapshot of Consul server state"
    http = HTTP_SERVER
    usage = """
Usage: proconsul snapshot save [options] FILE

  Retrieves an atomic, point-in-time snapshot of the state of the Consul servers
  which includes key/value entries, service catalog and sessions.

  To create a snapshot from the leader server and save it to "backup.snap":

    $ proconsul snapshot save backup.snap

  To create a potentially stale snapshot from any available server (useful if no
  leader is available):

    $ proconsul snapshot save -stale backup.snap
"""

    def run(self, ctx: Context) -> int:
        path = _one_file(ctx)
        if path is None:
            return 1
        client = ctx.connect()
        if client is None:
            return 1
        client.timeout = max(client.timeout, 300.0)
        try:
            resp = client.request("GET", "/v1/snapshot", read=True)
        except APIError as exc:
            ctx.ui.error(f"Error saving snapshot: {exc}")
            return 1
        unverified = path + ".unverified"
        try:
            fd = os.open(unverified, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(resp.body)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            ctx.ui.error(f"Error writing unverified snapshot file: {go_os_error('open', unverified, exc)}")
            return 1
        try:
            try:
                with open(unverified, "rb") as fh:
                    archive.read(fh.read())
            except archive.SnapshotError as exc:
                ctx.ui.error(f"Error verifying snapshot file: {exc}")
                return 1
            try:
                os.replace(unverified, path)
            except OSError as exc:
                ctx.ui.error(f'Error renaming "{unverified}" to "{path}": {exc.strerror or exc}')
                return 1
        finally:
            if os.path.exists(unverified):
                os.remove(unverified)
        index = resp.headers.get("x-consul-index", "0")
        ctx.ui.output(f"Saved and verified snapshot to index {index}")
        return 0


class SnapshotRestore(Command):
    name = "snapshot restore"
    synopsis = "Restores snapshot of Consul server state"
    http = HTTP_SERVER
    usage = """
Usage: proconsul snapshot restore [options] FILE

  Restores an atomic, point-in-time snapshot of the state of the Consul servers
  which includes key/value entries, service catalog and sessions.

  Restores replace the whole state of every server at once. This command is
  primarily intended to be used when recovering from a disaster, restoring into a
  fresh cluster of servers.

  To restore a snapshot from the file "backup.snap":

    $ proconsul snapshot restore backup.snap
"""

    def run(self, ctx: Context) -> int:
        path = _one_file(ctx)
        if path is None:
            return 1
        client = ctx.connect()
        if client is None:
            return 1
        client.timeout = max(client.timeout, 300.0)
        try:
            with open(path, "rb") as fh:
                blob = fh.read()
        except OSError as exc:
            ctx.ui.error(f"Error opening snapshot file: {go_os_error('open', path, exc)}")
            return 1
        try:
            client.put("/v1/snapshot", body=blob)
        except APIError as exc:
            ctx.ui.error(f"Error restoring snapshot: {exc}")
            return 1
        ctx.ui.output("Restored snapshot")
        return 0


class SnapshotInspect(Command):
    name = "snapshot inspect"
    synopsis = "Displays information about a Consul snapshot file"
    http = HTTP_NONE
    usage = """
Usage: proconsul snapshot inspect [options] FILE

  Displays information about a snapshot file on disk: its metadata and the number
  and size of each type of record in it.

  To inspect the file "backup.snap":

    $ proconsul snapshot inspect backup.snap
"""

    def define(self, spec: FlagSpec) -> None:
        spec.string("format", "Output format {pretty|json}", default="pretty", example="string")

    def run(self, ctx: Context) -> int:
        path = _one_file(ctx)
        if path is None:
            return 1
        fmt = ctx.opts.values.get("format") or "pretty"
        if fmt not in ("pretty", "json"):
            ctx.ui.error(f"Unknown format: {fmt}")
            return 1
        try:
            with open(path, "rb") as fh:
                blob = fh.read()
        except OSError as exc:
            ctx.ui.error(f"Error opening snapshot file: {go_os_error('open', path, exc)}")
            return 1
        try:
            snap = archive.read(blob)
            stats = archive.state_stats(snap.state)
        except archive.SnapshotError as exc:
            ctx.ui.error(f"Error extracting snapshot data: {exc}")
            return 1
        if fmt == "json":
            meta = {k: snap.meta.get(k) for k in ("ID", "Size", "Index", "Term", "Version")}
            out = {
                "Meta": meta,
                "Stats": [{"Name": n, "Sum": size, "Count": c} for n, c, size in stats],
                "TotalSize": sum(s for _, _, s in stats),
            }
            ctx.ui.output(json.dumps(out, indent=3))
            return 0
        ctx.ui.output(archive.format_inspect(snap.meta, stats))
        return 0


COMMANDS: list[type[Command]] = [SnapshotCommand, SnapshotSave, SnapshotRestore, SnapshotInspect]
