"""`proconsul kv get|put|delete|export|import`: the KV store from the command line.

Owns these commands' arguments, HTTP calls (`/v1/kv/...`) and exact output strings, which follow
`consul kv ...` (for example `Success! Data written to: KEY`, `Error! No key exists at: KEY`), and
the export/import JSON format (`[{"key", "flags", "value"(base64)}]`, tab-indented like Go).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from proconsul.api_client import APIError, go_os_error
from proconsul.cli.base import HTTP_SERVER, Command, Context, FlagSpec, GroupCommand, too_many_args
from proconsul.cli.output import go_json_indent, go_path_join, tab_align


def _strip_slash(key: str) -> str:
    # Keys cannot start with "/", but users type "/foo"; Consul quietly drops one leading slash.
    return key.removeprefix("/")


def _value_bytes(pair: dict[str, Any]) -> bytes:
    raw = pair.get("Value")
    return base64.b64decode(raw) if raw else b""


def _detailed(pair: dict[str, Any], b64: bool) -> str:
    value = _value_bytes(pair)
    shown = base64.b64encode(value).decode() if b64 else value.decode("utf-8", "replace")
    return tab_align(
        [
            ("CreateIndex", str(pair.get("CreateIndex", 0))),
            ("Flags", str(pair.get("Flags", 0))),
            ("Key", str(pair.get("Key", ""))),
            ("LockIndex", str(pair.get("LockIndex", 0))),
            ("ModifyIndex", str(pair.get("ModifyIndex", 0))),
            ("Session", pair.get("Session") or "-"),
            ("Value", shown),
        ]
    )


def _read_data_arg(ctx: Context, data: str) -> bytes:
    """`@file` reads a file, `-` reads stdin, anything else is the literal data."""
    if data.startswith("@"):
        path = data[1:]
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise ValueError(f"Failed to read file: {go_os_error('open', path, exc)}") from None
    if data == "-":
        try:
            return ctx.read_stdin()
        except OSError as exc:
            raise ValueError(f"Failed to read stdin: {exc}") from None
    return data.encode()


class KVCommand(GroupCommand):
    name = "kv"
    synopsis = "Interact with the key-value store"
    usage = """
Usage: proconsul kv <subcommand> [options] [args]

  Commands for reading and writing the key-value store: get, put, delete,
  export and import. Run "proconsul kv <subcommand> -h" for a subcommand's
  options.
"""


class KVGet(Command):
    name = "kv get"
    synopsis = "Retrieves or lists data from the KV store"
    http = HTTP_SERVER
    usage = """
Usage: proconsul kv get [options] [KEY_OR_PREFIX]

  Prints the value stored at KEY. A missing key is an error (exit 1); an
  existing key with no data prints an empty line.

      $ proconsul kv get redis/config/connections

  -detailed adds the key's metadata, -recurse lists every key under a prefix
  as key:value, and -keys lists only the key names (up to -separator).
"""

    def define(self, spec: FlagSpec) -> None:
        spec.bool("base64", "Base64 encode the value. The default value is false.")
        spec.bool("detailed", "Print the key's metadata (indexes, flags, session) as well as the value.")
        spec.bool(
            "keys",
            "List the keys that start with the given prefix, not their values. "
            "Commonly combined with -separator.",
        )
        spec.bool("recurse", "Recursively list all keys and values under the given prefix.")
        spec.string(
            "separator",
            'The separator used to group keys with -keys. The default is "/"; '
            "an empty string lists every key.",
            default="/",
        )

    def run(self, ctx: Context) -> int:
        o = ctx.opts
        if len(ctx.args) > 1:
            return too_many_args(ctx.ui, len(ctx.args), "1")
        key = _strip_slash(ctx.args[0] if ctx.args else "")
        if not key and not (o["recurse"] or o["keys"]):
            ctx.ui.error("Error! Missing KEY argument")
            return 1
        client = ctx.connect()
        if client is None:
            return 1
        try:
            if o["keys"]:
                params = [("keys", "")]
                if o["separator"]:
                    params.append(("separator", o["separator"]))
                resp = client.request("GET", "/v1/kv/" + key, params, read=True, allow_404=True)
                for k in (resp.json() or []) if resp.status == 200 else []:
                    ctx.ui.output(k)
                return 0
            if o["recurse"]:
                resp = client.request("GET", "/v1/kv/" + key, [("recurse", "")], read=True, allow_404=True)
                pairs = (resp.json() or []) if resp.status == 200 else []
                for i, pair in enumerate(pairs):
                    if o["detailed"]:
                        ctx.ui.output(_detailed(pair, o["base64"]))
                        if i < len(pairs) - 1:
                            ctx.ui.output("")
                    elif o["base64"]:
                        ctx.ui.output(f"{pair['Key']}:{base64.b64encode(_value_bytes(pair)).decode()}")
                    else:
                        ctx.ui.output_bytes(pair["Key"].encode() + b":" + _value_bytes(pair))
                return 0
            resp = client.request("GET", "/v1/kv/" + key, read=True, allow_404=True)
        except APIError as exc:
            ctx.ui.error(f"Error querying Consul agent: {exc}")
            return 1
        pairs = (resp.json() or []) if resp.status == 200 else []
        if not pairs:
            ctx.ui.error(f"Error! No key exists at: {key}")
            return 1
        if o["detailed"]:
            ctx.ui.output(_detailed(pairs[0], o["base64"]))
        else:
            ctx.ui.output_bytes(_value_bytes(pairs[0]))
        return 0


class KVPut(Command):
    name = "kv put"
    synopsis = "Sets or updates data in the KV store"
    http = HTTP_SERVER
    usage = """
Usage: proconsul kv put [options] KEY [DATA]

  Writes DATA to KEY. DATA may be "@path" to read a file or "-" to read stdin;
  without DATA an empty value is written.

      $ proconsul kv put config/redis/maxconns 5
      $ proconsul kv put config/program/license @license.lic
      $ echo "abcd1234" | proconsul kv put config/program/license -

  -cas with -modify-index performs a check-and-set; -acquire and -release
  take or give up a lock with -session.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.bool("acquire", "Obtain a lock on the key, creating it if needed. Requires -session.")
        spec.bool("base64", "Treat the data as base 64 encoded. The default value is false.")
        spec.bool("cas", "Perform a Check-And-Set operation. Requires -modify-index.")
        spec.uint(
            "flags", "Unsigned integer stored with the pair for the client's own use. The default value is 0."
        )
        spec.uint(
            "modify-index",
            "The ModifyIndex the key must have for -cas to succeed (0 means the key must not exist).",
        )
        spec.bool("release", "Give up the lock on the key. Requires -session, which must hold it.")
        spec.string("session", "Session ID used with -acquire and -release.", default="")

    def run(self, ctx: Context) -> int:
        o = ctx.opts
        args = ctx.args
        if not args:
            ctx.ui.error("Error! Missing KEY argument")
            return 1
        if len(args) > 2:
            ctx.ui.error(f"Error! Too many arguments (expected 1 or 2, got {len(args)})")
            return 1
        key = args[0]
        try:
            data = _read_data_arg(ctx, args[1]) if len(args) == 2 and args[1] else b""
        except ValueError as exc:
            ctx.ui.error(f"Error! {exc}")
            return 1
        if o["base64"]:
            try:
                # Go's decoder skips CR and LF, so `echo ... | kv put -base64 k -` works.
                data = base64.b64decode(data.replace(b"\r", b"").replace(b"\n", b""), validate=True)
            except (binascii.Error, ValueError) as exc:
                ctx.ui.error(f"Error! Cannot base 64 decode data: {exc}")
                return 1
        session = o["session"] or ""
        if (o["acquire"] or o["release"]) and not session:
            ctx.ui.error("Error! Missing -session (required with -acquire and -release)")
            return 1
        if o["cas"] and not o["modify-index"]:
            ctx.ui.error("Must specify -modify-index with -cas!")
            return 1
        client = ctx.connect()
        if client is None:
            return 1
        params: list[tuple[str, str]] = []
        if o["flags"]:
            params.append(("flags", str(o["flags"])))
        if o["cas"]:
            mode = "cas"
            params.append(("cas", str(o["modify-index"])))
        elif o["acquire"]:
            mode = "acquire"
            params.append(("acquire", session))
        elif o["release"]:
            mode = "release"
            params.append(("release", session))
        else:
            mode = "put"
        try:
            resp = client.put("/v1/kv/" + key, params, data)
        except APIError as exc:
            if mode == "cas":
                ctx.ui.error(f"Error! Did not write to {key}: {exc}")
            elif mode == "release":
                # Consul prints the key here rather than the error; kept for script compatibility.
                ctx.ui.error(f"Error! Failed writing data: {key}")
            else:
                ctx.ui.error(f"Error! Failed writing data: {exc}")
            return 1
        ok = resp.body.strip() == b"true"
        if mode == "cas":
            if not ok:
                ctx.ui.error(f"Error! Did not write to {key}: CAS failed")
                return 1
            ctx.ui.output(f"Success! Data written to: {key}")
        elif mode == "acquire":
            if not ok:
                ctx.ui.error("Error! Did not acquire lock")
                return 1
            ctx.ui.output(f"Success! Lock acquired on: {key}")
        elif mode == "release":
            if not ok:
                ctx.ui.error("Error! Did not release lock")
                return 1
            ctx.ui.output(f"Success! Lock released on: {key}")
        else:
            # A plain put ignores the body, as Consul's CLI does.
            ctx.ui.output(f"Success! Data written to: {key}")
        return 0


class KVDelete(Command):
    name = "kv delete"
    synopsis = "Removes data from the KV store"
    http = HTTP_SERVER
    usage = """
Usage: proconsul kv delete [options] KEY_OR_PREFIX

  Deletes KEY. Deleting a key that does not exist succeeds and changes
  nothing. -recurse deletes every key that starts with the prefix.

      $ proconsul kv delete foo
      $ proconsul kv delete -recurse foo
"""

    def define(self, spec: FlagSpec) -> None:
        spec.bool("cas", "Perform a Check-And-Set operation. Requires -modify-index.")
        spec.uint("modify-index", "The ModifyIndex the key must have for -cas to succeed.")
        spec.bool("recurse", "Recursively delete all keys with the path. The default value is false.")

    def run(self, ctx: Context) -> int:
        o = ctx.opts
        if len(ctx.args) > 1:
            return too_many_args(ctx.ui, len(ctx.args), "1")
        key = _strip_slash(ctx.args[0] if ctx.args else "")
        if not key and not o["recurse"]:
            ctx.ui.error("Error! Missing KEY argument")
            return 1
        if o["cas"] and not o["modify-index"]:
            ctx.ui.error(
                "Cannot delete a key that does not exist. Provide a -modify-index greater than than 0."
            )
            return 1
        if o["modify-index"] and not o["cas"]:
            ctx.ui.error("Cannot specify -modify-index without -cas!")
            return 1
        if o["recurse"] and o["cas"]:
            ctx.ui.error("Cannot specify both -cas and -recurse!")
            return 1
        client = ctx.connect()
        if client is None:
            return 1
        if o["recurse"]:
            try:
                client.request("DELETE", "/v1/kv/" + key, [("recurse", "")])
            except APIError as exc:
                ctx.ui.error(f"Error! Did not delete prefix {key}: {exc}")
                return 1
            ctx.ui.output(f"Success! Deleted keys with prefix: {key}")
            return 0
        if o["cas"]:
            try:
                resp = client.request("DELETE", "/v1/kv/" + key, [("cas", str(o["modify-index"]))])
            except APIError as exc:
                ctx.ui.error(f"Error! Did not delete key {key}: {exc}")
                return 1
            if resp.body.strip() != b"true":
                ctx.ui.error(f"Error! Did not delete key {key}: CAS failed")
                return 1
            ctx.ui.output(f"Success! Deleted key: {key}")
            return 0
        try:
            client.request("DELETE", "/v1/kv/" + key)
        except APIError as exc:
            ctx.ui.error(f"Error deleting key {key}: {exc}")
            return 1
        ctx.ui.output(f"Success! Deleted key: {key}")
        return 0


class KVExport(Command):
    name = "kv export"
    synopsis = "Exports a tree from the KV store as JSON"
    http = HTTP_SERVER
    usage = """
Usage: proconsul kv export [KEY_OR_PREFIX]

  Prints every key under the prefix as a JSON array of objects with "key",
  "flags" and base64 "value", the format "proconsul kv import" reads.

      $ proconsul kv export vault
"""

    def run(self, ctx: Context) -> int:
        if len(ctx.args) > 1:
            return too_many_args(ctx.ui, len(ctx.args), "1")
        key = _strip_slash(ctx.args[0] if ctx.args else "")
        client = ctx.connect()
        if client is None:
            return 1
        try:
            resp = client.request("GET", "/v1/kv/" + key, [("recurse", "")], read=True, allow_404=True)
        except APIError as exc:
            ctx.ui.error(f"Error querying Consul agent: {exc}")
            return 1
        pairs = (resp.json() or []) if resp.status == 200 else []
        entries = [
            {"key": p["Key"], "flags": p.get("Flags", 0), "value": p.get("Value") or ""} for p in pairs
        ]
        ctx.ui.output(go_json_indent(entries, "\t"))
        return 0


class KVImport(Command):
    name = "kv import"
    synopsis = "Imports a tree stored as JSON to the KV store"
    http = HTTP_SERVER
    usage = """
Usage: proconsul kv import [options] [DATA]

  Writes the pairs from the JSON that "proconsul kv export" prints. DATA is
  "@path" for a file, "-" for stdin, or the JSON itself.

      $ proconsul kv import @values.json
      $ cat values.json | proconsul kv import -prefix=sub/dir/ -
"""

    def define(self, spec: FlagSpec) -> None:
        spec.string(
            "prefix", "Key prefix for imported data. The default is empty, meaning the root.", default=""
        )

    def run(self, ctx: Context) -> int:
        args = ctx.args
        if not args:
            ctx.ui.error("Error! Missing DATA argument")
            return 1
        if len(args) > 1:
            ctx.ui.error(f"Error! Too many arguments (expected 1, got {len(args)})")
            return 1
        if not args[0]:
            ctx.ui.error("Error! Empty DATA argument")
            return 1
        try:
            raw = _read_data_arg(ctx, args[0])
        except ValueError as exc:
            ctx.ui.error(f"Error! {exc}")
            return 1
        client = ctx.connect()
        if client is None:
            return 1
        try:
            entries = json.loads(raw)
            if entries is None:
                entries = []
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise ValueError("expected a JSON array of objects")
        except ValueError as exc:
            ctx.ui.error(f"Cannot unmarshal data: {exc}")
            return 1
        prefix = ctx.opts["prefix"] or ""
        for entry in entries:
            entry_key = str(entry.get("key", ""))
            try:
                value = base64.b64decode(entry.get("value") or "", validate=True)
            except (binascii.Error, ValueError) as exc:
                ctx.ui.error(f"Error base 64 decoding value for key {entry_key}: {exc}")
                return 1
            key = go_path_join(prefix, entry_key)
            # path.Join drops a trailing "/", but a trailing "/" marks a folder key; keep it.
            if entry_key.endswith("/") and not key.endswith("/"):
                key += "/"
            params = [("flags", str(entry["flags"]))] if entry.get("flags") else []
            try:
                client.put("/v1/kv/" + key, params, value)
            except APIError as exc:
                ctx.ui.error(f"Error! Failed writing data for key {key}: {exc}")
                return 1
            ctx.ui.output(f"Imported: {key}")
        return 0


COMMANDS: list[type[Command]] = [KVCommand, KVGet, KVPut, KVDelete, KVExport, KVImport]
