"""The agent's token file: `acl.enable_token_persistence` keeps tokens set through
`/v1/agent/token/:type` in `<data_dir>/acl-tokens.json` (Consul's name), read back at start-up
so they survive a restart. Config-file tokens are not written; the file wins over them, as in Consul."""

from __future__ import annotations

import json
import logging
import os

logger = logging.getLogger(__name__)

TOKENS_FILE = "acl-tokens.json"
# The file's keys (Consul's) and the agent's token names.
_KEYS = {"default": "default", "agent": "agent", "agent_recovery": "agent_recovery", "dns": "dns"}


def load_persisted_tokens(data_dir: str) -> dict[str, str]:
    if not data_dir:
        return {}
    path = os.path.join(data_dir, TOKENS_FILE)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("agent: ignoring the unreadable token file %s: %s", path, exc)
        return {}
    return {name: str(data[key]) for key, name in _KEYS.items() if isinstance(data, dict) and data.get(key)}


def persist_tokens(data_dir: str, tokens: dict[str, str]) -> None:
    path = os.path.join(data_dir, TOKENS_FILE)
    tmp = path + ".tmp"
    data = {key: tokens[name] for key, name in _KEYS.items() if tokens.get(name)}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # secrets: owner only
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
