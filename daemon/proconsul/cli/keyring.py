"""`proconsul keyring -list|-list-primary|-install|-use|-remove`: gossip keys from the command line.

Owns the command's flags, its `/v1/operator/keyring` calls and its output, which follows `consul
keyring`: progress lines prefixed `==> `, then for each pool a blank line, `dc1 (LAN):` (or
`WAN:`), member messages as `  ===> node: message` and keys as `  KEY [installed/total]`. Exactly
one action per run; any member failing or not answering makes the exit code 1.
"""

from __future__ import annotations

import json
from typing import Any

from proconsul.api_client import APIError
from proconsul.cli.base import HTTP_CLIENT, RUN_RESULT_HELP, Command, Context, FlagSpec


def format_pool(entry: dict[str, Any], keys: dict[str, int]) -> str:
    """One pool's block, as Consul's formatResponse lays it out (keys sorted for stable output)."""
    pool = "WAN" if entry.get("WAN") else f"{entry.get('Datacenter', '')} (LAN)"
    if entry.get("Segment"):
        pool += f" [{entry['Segment']}]"
    lines = ["", pool + ":"]
    for name, msg in sorted((entry.get("Messages") or {}).items()):
        lines.append(f"  ===> {name}: {msg}")
    total = entry.get("NumNodes", 0)
    for key, count in sorted(keys.items()):
        lines.append(f"  {key} [{count}/{total}]")
    return "\n".join(lines)


class KeyringCommand(Command):
    name = "keyring"
    synopsis = "Manages gossip layer encryption keys"
    http = HTTP_CLIENT
    usage = """
Usage: proconsul keyring [options]

  Manages encryption keys used for gossip messages. Gossip encryption is
  optional. When enabled, this command may be used to examine active encryption
  keys in the cluster, add new keys, and remove old ones. When combined, this
  functionality provides the ability to perform key rotation cluster-wide,
  without disrupting the cluster.

  All variations of the keyring command return 0 if all nodes reply and there
  are no errors. If any node fails to reply or reports failure, the exit code
  will be 1.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.string("install", "Install a new encryption key. This will broadcast the new key to all members in "
                    "the cluster.", example="string")
        spec.string("use", "Change the primary encryption key, which is used to encrypt messages. The key must "
                    "already be installed before this operation can succeed.", example="string")
        spec.string("remove", "Remove the given key from the cluster. This operation may only be performed on "
                    "keys which are not currently the primary key.", example="string")
        spec.bool("list", "List all keys currently in use within the cluster.")
        spec.bool("list-primary", "List all primary keys currently in use within the cluster.")
        spec.int("relay-factor", "Setting this to a non-zero value will cause nodes to relay their response to "
                 "the operation through this many randomly-chosen other nodes in the cluster. The maximum "
                 "allowed value is 5.")
        spec.bool("local-only", "Setting this to true will force the keyring query to only hit local servers "
                  "(no WAN traffic). This flag can only be set for list queries.")

    def run(self, ctx: Context) -> int:
        values = ctx.opts.values
        install = values.get("install") or ""
        use = values.get("use") or ""
        remove = values.get("remove") or ""
        list_keys = bool(values.get("list"))
        list_primary = bool(values.get("list-primary"))
        actions = [a for a in (list_keys, list_primary, install, use, remove) if a]
        if len(actions) > 1:
            ctx.ui.error("Only a single action is allowed")
            return 1
        if not actions:
            return RUN_RESULT_HELP
        relay = int(values.get("relay-factor") or 0)
        if not 0 <= relay <= 5:
            ctx.ui.error("Error parsing relay factor: Relay factor must be in range: [0, 5]")
            return 1
        local_only = bool(values.get("local-only"))
        if local_only and not (list_keys or list_primary):
            ctx.ui.error("Error validating local-only: local-only can only be set for list requests")
            return 1
        client = ctx.connect()
        if client is None:
            return 1
        params = [("relay-factor", str(relay))] if relay else []
        try:
            if list_keys or list_primary:
                ctx.ui.output("==> Gathering installed primary encryption keys..." if list_primary
                              else "==> Gathering installed encryption keys...")
                if local_only:
                    params.append(("local-only", "true"))
                entries = client.get_json("/v1/operator/keyring", params) or []
                for entry in entries:
                    ctx.ui.output(format_pool(entry, entry.get("PrimaryKeys" if list_primary else "Keys") or {}))
                return 0
            method, key, what = (
                ("POST", install, "Installing new gossip encryption key...") if install
                else ("PUT", use, "Changing primary gossip encryption key...") if use
                else ("DELETE", remove, "Removing gossip encryption key...")
            )
            ctx.ui.output(f"==> {what}")
            client.request(method, "/v1/operator/keyring", params, json.dumps({"Key": key}).encode())
            return 0
        except APIError as exc:
            ctx.ui.error(f"error: {exc}")
            return 1


COMMANDS: list[type[Command]] = [KeyringCommand]
