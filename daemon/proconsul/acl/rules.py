"""The ACL rules language: policy text (HCL or JSON) to a `Rules` value.

Owns what a policy may say, as Consul's rules language does: per-name rules (`key "a/b"`) and
prefix rules (`key_prefix "a/"`) for key, service, node, session, agent, event and query, each with
`policy = "read" | "write" | "deny"` (`"list"` for keys only); and the single-valued `acl`,
`operator`, `keyring`, `mesh` and `peering` (`read` | `write` | `deny`). Text that is not valid
is a `RulesError` whose message is shown to the client (HTTP 400).

`merge` combines several policies into one `Rules` the way Consul's policy merger does: for the
same rule (same resource, same name, same kind) the stronger access wins, deny > write > read >
list.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import hcl
import hcl.api
import hcl.parser

DENY, LIST, READ, WRITE = "deny", "list", "read", "write"
# Precedence when merging the same rule from several policies (Consul's takesPrecedenceOver).
PRECEDENCE = {DENY: 4, WRITE: 3, READ: 2, LIST: 1}

PREFIXED = ("key", "service", "node", "session", "agent", "event", "query")
SINGLE = ("acl", "operator", "keyring", "mesh", "peering")
_ACCESS_PREFIXED = {r: frozenset({READ, WRITE, DENY}) for r in PREFIXED} | {"key": frozenset({LIST, READ, WRITE, DENY})}
_ACCESS_SINGLE = frozenset({READ, WRITE, DENY})
# Attributes a service rule may carry besides `policy`: Connect intentions, accepted and kept
# (proconsul has no Connect, so nothing consults them).
_SERVICE_EXTRA = ("intentions",)


class RulesError(ValueError):
    """Policy text that is not valid ACL rules."""


@dataclass(frozen=True)
class Rules:
    """Parsed rules: resource -> name -> access, for per-name and for prefix rules, plus the
    single-valued resources. Immutable in use (built once, then only read)."""

    exact: dict[str, dict[str, str]] = field(default_factory=dict)
    prefix: dict[str, dict[str, str]] = field(default_factory=dict)
    single: dict[str, str] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (any(self.exact.values()) or any(self.prefix.values()) or self.single)


def _blocks(value: Any, where: str) -> list[tuple[str, Any]]:
    """`key "a" {...}` blocks as (name, body) pairs; pyhcl gives a dict, or a list of dicts
    when one name repeats."""
    items: list[tuple[str, Any]] = []
    parts = value if isinstance(value, list) else [value]
    for part in parts:
        if not isinstance(part, Mapping):
            raise RulesError(f"Failed to parse ACL rules: {where} must be a block of named rules")
        for name, body in part.items():
            items.append((str(name), body))
    return items


def _policy_of(body: Any, resource: str, where: str) -> str:
    bodies = body if isinstance(body, list) else [body]
    policy = ""
    for b in bodies:
        if not isinstance(b, Mapping):
            raise RulesError(f"Failed to parse ACL rules: {where} must be a block")
        for k in b:
            if k != "policy" and not (resource == "service" and k in _SERVICE_EXTRA):
                raise RulesError(f"Failed to parse ACL rules: unknown attribute {k!r} in {where}")
        if "policy" in b:
            policy = b["policy"]
    if not isinstance(policy, str) or policy not in _ACCESS_PREFIXED[resource]:
        raise RulesError(f"Invalid {resource} policy: {policy!r} in {where}")
    return policy


_parser: Any = None


def _load(text: str) -> Any:
    """HCL or JSON text to data, as `hcl.loads` decides, with one parser built once: building
    pyhcl's parser takes ~170 ms, parsing with it a few ms."""
    global _parser
    if not hcl.api.isHcl(text):
        return json.loads(text)
    if _parser is None:
        _parser = hcl.parser.HclParser()
    return _parser.parse(text)


@functools.lru_cache(maxsize=1024)
def parse(text: str) -> Rules:
    """Parse policy text, HCL or JSON; raise RulesError when it is not valid.

    Memoised: every request resolves its token's policies, whose text rarely changes. The
    result is shared, so callers never mutate it (merge builds new tables).
    """
    if not text.strip():
        return Rules()
    try:
        data = _load(text)
    except Exception as exc:  # pyhcl raises ValueError and its own lexer/parser errors
        raise RulesError(f"Failed to parse ACL rules: {exc}") from None
    if not isinstance(data, Mapping):
        raise RulesError("Failed to parse ACL rules: not an object")
    return from_mapping(data)


def from_mapping(data: Mapping[str, Any]) -> Rules:
    exact: dict[str, dict[str, str]] = {}
    prefix: dict[str, dict[str, str]] = {}
    single: dict[str, str] = {}
    for key in sorted(data):
        value = data[key]
        if key in SINGLE:
            if not isinstance(value, str) or value not in _ACCESS_SINGLE:
                raise RulesError(f"Invalid {key} policy: {value!r}")
            single[key] = value
            continue
        resource, _, suffix = key.partition("_")
        if resource not in PREFIXED or suffix not in ("", "prefix"):
            raise RulesError(f"Failed to parse ACL rules: unknown rule type {key!r}")
        target = prefix if suffix else exact
        for name, body in _blocks(value, key):
            target.setdefault(resource, {})
            access = _policy_of(body, resource, f'{key} "{name}"')
            old = target[resource].get(name)
            target[resource][name] = access if old is None else _stronger(old, access)
    return Rules(exact, prefix, single)


def _stronger(a: str, b: str) -> str:
    return a if PRECEDENCE[a] >= PRECEDENCE[b] else b


def merge(all_rules: Iterable[Rules]) -> Rules:
    """One Rules from several: the same rule in two policies keeps the stronger access."""
    exact: dict[str, dict[str, str]] = {}
    prefix: dict[str, dict[str, str]] = {}
    single: dict[str, str] = {}
    for r in all_rules:
        for mine, theirs in ((exact, r.exact), (prefix, r.prefix)):
            for resource, names in theirs.items():
                table = mine.setdefault(resource, {})
                for name, access in names.items():
                    old = table.get(name)
                    table[name] = access if old is None else _stronger(old, access)
        for resource, access in r.single.items():
            old = single.get(resource)
            single[resource] = access if old is None else _stronger(old, access)
    return Rules(exact, prefix, single)


def render_json(rules: Rules) -> str:
    """Rules back as JSON rules text (used for synthetic policies and tests)."""
    out: dict[str, Any] = dict(sorted(rules.single.items()))
    for kind, table in (("", rules.exact), ("_prefix", rules.prefix)):
        for resource in sorted(table):
            out[resource + kind] = {name: {"policy": table[resource][name]} for name in sorted(table[resource])}
    return json.dumps(out, sort_keys=True)
